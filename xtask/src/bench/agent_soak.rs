//! What `leaktrace agent` costs its node over time, and whether its memory stays flat: the agent
//! (all processes, default settings) runs through minutes of connection churn (`loadgen run` at
//! a fixed rate) plus a slow leak (`loadgen leak`), scraped like Prometheus would, while its RSS
//! (`VmRSS`) and CPU time (`/proc/PID/task/*/schedstat`) are sampled from /proc.
use std::{
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Bench,
    children::{Running, Stdout},
    figures::{bytes, thousands},
    report::{Section, Table, Target},
};

/// The soak: how long, how often sampled (and scraped), the churn and the leak rates.
struct Plan {
    seconds: u64,
    sample_every: Duration,
    churn_per_s: u32,
    leak_per_s: u32,
    /// Samples before this are the warm-up (caches and maps filling).
    warm_up: Duration,
}

const FULL: Plan = Plan {
    seconds: 240,
    sample_every: Duration::from_secs(20),
    churn_per_s: 1000,
    leak_per_s: 2,
    warm_up: Duration::from_secs(60),
};
const SMOKE: Plan = Plan {
    seconds: 6,
    sample_every: Duration::from_secs(1),
    churn_per_s: 200,
    leak_per_s: 2,
    warm_up: Duration::from_secs(2),
};
/// RSS may grow this much from the end of the warm-up to the end of the soak and still be flat.
const FLAT_RATIO: f64 = 1.10;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample of the agent.
struct Sample {
    at_s: f64,
    rss_bytes: f64,
    /// Of which anonymous memory (the heap), and mapped files (binaries, debug information).
    rss_anon_bytes: f64,
    rss_file_bytes: f64,
    /// Share of one core over the interval before it.
    cpu: f64,
    live: f64,
    tracked: f64,
    call_sites: f64,
    /// Processes the symbolizer has seen (each new executable costs its symbols).
    processes: f64,
    lost: f64,
}

pub fn section(bench: &Bench) -> Result<Section> {
    let plan = if bench.options.smoke { &SMOKE } else { &FULL };
    let mut agent = start_agent(bench)?;
    let address = listening_address(&mut agent)?;
    let http: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let scrape = |what: &str| -> Result<String> {
        let url = format!("http://{address}/metrics");
        http.get(&url)
            .call()
            .and_then(|response| response.into_body().read_to_string())
            .with_context(|| format!("scraping {url} ({what})"))
    };

    let duration = plan.seconds.to_string();
    let mut leak = Running::spawn(
        "loadgen leak",
        Command::new(&bench.bins.loadgen).args(["leak", "--rate", &plan.leak_per_s.to_string(), "--duration", &duration]),
        Stdout::Lines,
    )?;
    leak.wait_line(READY_TIMEOUT, "`listening`", |line| line.contains(r#""type":"listening""#))?;
    let churn = Running::spawn(
        "loadgen run",
        Command::new(&bench.bins.loadgen).args(["run", "--rate", &plan.churn_per_s.to_string(), "--duration", &duration]),
        Stdout::Lines,
    )?;

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut cpu_before = agent.cpu_time()?;
    let mut at_before = started;
    while started.elapsed() < Duration::from_secs(plan.seconds) {
        thread::sleep(plan.sample_every.min(Duration::from_secs(plan.seconds).saturating_sub(started.elapsed())));
        let metrics = scrape("a sample")?;
        let (cpu_now, now) = (agent.cpu_time()?, Instant::now());
        let cpu = (cpu_now - cpu_before).as_secs_f64() / (now - at_before).as_secs_f64();
        (cpu_before, at_before) = (cpu_now, now);
        let value = |name: &str| metric(&metrics, name).with_context(|| format!("/metrics has no {name}"));
        let memory = Memory::of(agent.pid())?;
        samples.push(Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_bytes: memory.rss,
            rss_anon_bytes: memory.anon,
            rss_file_bytes: memory.file,
            cpu,
            live: value("leaktrace_live_connections")?,
            tracked: value("leaktrace_tracker_connections")?,
            call_sites: value("leaktrace_tracker_call_sites")?,
            processes: value("leaktrace_symbolizer_processes_noted_total")?,
            lost: value("leaktrace_events_lost_total")?,
        });
    }

    let churned = churn.wait(STOP_TIMEOUT)?;
    if !churned.success {
        bail!("loadgen run failed ({})", churned.status);
    }
    let leaked = leak.close_stdin_and_wait(STOP_TIMEOUT)?;
    if !leaked.success {
        bail!("loadgen leak failed ({})", leaked.status);
    }
    let stopped = agent.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT)?;
    if !stopped.success {
        bail!("leaktrace agent did not stop cleanly at SIGTERM ({})", stopped.status);
    }
    summarize(plan, &samples)
}

fn start_agent(bench: &Bench) -> Result<Running> {
    let mut command = Command::new(&bench.bins.leaktrace);
    command.args(["agent", "--listen", "127.0.0.1:0"]).env("RUST_LOG", "leaktrace=info");
    Running::spawn("leaktrace agent", &mut command, Stdout::Null)
}

/// The address the agent logs once it listens; returns once it is also ready.
fn listening_address(agent: &mut Running) -> Result<String> {
    let found = Mutex::new(None);
    agent.wait_stderr(READY_TIMEOUT, "where it listens", |line| match line.split_once(" on http://") {
        Some((_, address)) => {
            *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(address.trim().to_string());
            true
        }
        None => false,
    })?;
    agent.wait_stderr(READY_TIMEOUT, "that it is ready", |line| line.contains("agent: ready"))?;
    found.into_inner().unwrap_or_else(|p| p.into_inner()).context("the agent's address line had no address")
}

/// An unlabeled sample's value in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A process's resident memory, from /proc/PID/status, in bytes.
struct Memory {
    rss: f64,
    anon: f64,
    file: f64,
}

impl Memory {
    fn of(pid: i32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{path} has no {name}"))?;
            Ok(kib * 1024.0)
        };
        Ok(Self { rss: field("VmRSS")?, anon: field("RssAnon")?, file: field("RssFile")? })
    }
}

fn summarize(plan: &Plan, samples: &[Sample]) -> Result<Section> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        bail!("the soak took no sample");
    };
    let warm = samples.iter().find(|sample| sample.at_s >= plan.warm_up.as_secs_f64()).unwrap_or(first);
    let mut table = Table::new(&[
        "time",
        "agent RSS",
        "of which heap (anon)",
        "of which files",
        "agent CPU (share of one core)",
        "live connections",
        "connections tracked",
        "call sites",
        "processes seen",
        "events lost",
    ]);
    for sample in samples {
        table.row(vec![
            format!("{:.0} s", sample.at_s),
            bytes(sample.rss_bytes),
            bytes(sample.rss_anon_bytes),
            bytes(sample.rss_file_bytes),
            format!("{:.1}%", sample.cpu * 100.0),
            thousands(sample.live),
            thousands(sample.tracked),
            thousands(sample.call_sites),
            thousands(sample.processes),
            thousands(sample.lost),
        ]);
    }
    let growth = last.rss_bytes / warm.rss_bytes;
    let mean_cpu = samples.iter().map(|sample| sample.cpu).sum::<f64>() / samples.len() as f64;
    let flat = growth <= FLAT_RATIO;
    Ok(Section {
        title: "The agent over time".into(),
        what: format!(
            "`leaktrace agent` (all processes, default settings) for {} s while `loadgen run --rate {}` churns \
             connections (connect, request, response, close) and `loadgen leak --rate {}` leaks {} a second; every \
             {} s its RSS (`VmRSS`) and CPU time (schedstat, all threads) are read from /proc and `/metrics` is \
             scraped, as Prometheus would.",
            plan.seconds,
            plan.churn_per_s,
            plan.leak_per_s,
            plan.leak_per_s,
            plan.sample_every.as_secs()
        ),
        table,
        targets: vec![Target {
            goal: format!(
                "agent memory flat under churn plus a slow leak: RSS at the end within {:.0}% of RSS after the \
                 warm-up",
                (FLAT_RATIO - 1.0) * 100.0
            ),
            measured: format!(
                "{} after {:.0} s, {} at {:.0} s ({:+.1}%); CPU {:.1}% of one core on average",
                bytes(warm.rss_bytes),
                warm.at_s,
                bytes(last.rss_bytes),
                last.at_s,
                (growth - 1.0) * 100.0,
                mean_cpu * 100.0
            ),
            met: Some(flat),
            limit: (!flat).then(|| {
                if last.processes > warm.processes {
                    format!(
                        "the symbols of the executables that started on the host meanwhile: the symbolizer saw {} \
                         processes after the warm-up, {} at the end (mapped binaries and their parsed debug \
                         information); see the table for memory between their arrivals",
                        warm.processes, last.processes
                    )
                } else {
                    "the tracker's and symbolizer's tables filling up to their limits (README, What the tracker \
                     keeps); a longer soak tells a filling cache from a leak"
                        .into()
                }
            }),
        }],
        notes: vec![
            format!(
                "The leak's connections stay live (both ends traced): \"live connections\" grows by about {} a \
                 second while the tracker's other tables stay bounded: closed connections are forgotten at once, quiet \
                 call sites after 10 minutes.",
                2 * plan.leak_per_s
            ),
            "The agent traces every process of the host, as on a node: \"processes seen\" counts those the \
             symbolizer captured, each new executable costing its symbols (mapped files, parsed debug information). \
             On a host where other programs start and stop during the soak, memory follows them, not the churn."
                .into(),
        ],
        figures: Vec::new(),
    })
}
