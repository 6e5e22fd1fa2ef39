//! How soon the live view calls a leak a leak (issue 5: "leak verdict within 10 s of a leak
//! starting at 20 connections/s"). `loadgen leak` opens 20 connections a second to itself and
//! closes none while `leaktrace --format jsonl --interval 0.25 --pid PID --port PORT` watches
//! it; the latency runs from the leak's first connect (loadgen's CLOCK_MONOTONIC stamp) to the
//! moment the first report in which loadgen's connect-side call site is `leak` is read here.
//! In the incident variant the leak has been running for a while when leaktrace starts (those
//! connections are born before start), and the latency runs from leaktrace's start.
//!
//! loadgen listens first and leaks only when told (`--wait-for-start`), so leaktrace can filter
//! on its pid and port, known by then: no other process's connections reach these reports, and
//! no port is picked here and freed for someone else to take before loadgen binds it.
use std::{
    collections::BTreeMap,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::Spread,
    report::{Section, Table, Target},
    rig,
};

/// The issue's leak rate and its target.
const RATE: f64 = 20.0;
const TARGET_S: f64 = 10.0;
/// Runs of each variant (interleaved, so the machine's drift falls on both alike).
const RUNS: usize = 5;
/// How long the leak runs before leaktrace starts in the incident variant.
const INCIDENT_LEAD: Duration = Duration::from_secs(5);
const SMOKE_INCIDENT_LEAD: Duration = Duration::from_secs(1);
/// A run without a verdict this long after its clock started counts as missed.
const PATIENCE: Duration = Duration::from_secs(20);
/// The leak runs this much longer than a run needs, so it is still open while leaktrace makes
/// its final report.
const LEAK_MARGIN: Duration = Duration::from_secs(10);
/// leaktrace's report interval (seconds): the latency is read at this resolution.
const INTERVAL: &str = "0.25";
/// How long leaktrace may take to attach its probes, and to detach and exit.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// leaktrace attached first, then the leak starts.
    Fresh,
    /// The leak runs for a while, then leaktrace starts.
    Incident,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Fresh => "leak starts under leaktrace",
            Self::Incident => "leaktrace starts on a leak already running",
        }
    }

    fn lead(self, smoke: bool) -> Duration {
        match (self, smoke) {
            (Self::Fresh, _) => Duration::ZERO,
            (Self::Incident, false) => INCIDENT_LEAD,
            (Self::Incident, true) => SMOKE_INCIDENT_LEAD,
        }
    }
}

/// One run's outcome.
struct Run {
    /// From the clock's start to the verdict being read; `None`: none within [`PATIENCE`].
    latency_s: Option<f64>,
    /// The rule that decided (the first finding).
    rule: Option<String>,
    /// Connections leaktrace saw loadgen open at its connect call site, by the verdict.
    opened: u64,
    /// loadgen's connect-side connections born before start, live at the verdict.
    born_before_start: u64,
    /// From leaktrace's spawn to its probes attached.
    attach_s: f64,
    /// The thresholds leaktrace judged by (from its report).
    thresholds: Option<Value>,
}

pub fn section(bench: &Bench) -> Result<Section> {
    let smoke = bench.options.smoke;
    let runs = if smoke { 1 } else { RUNS };
    let variants = [Variant::Fresh, Variant::Incident];
    let mut measured: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (index, &variant) in variants.iter().enumerate() {
            let outcome = measure(bench, variant)
                .with_context(|| format!("{}, run {}", variant.label(), run + 1))?;
            say!(
                "bench: {} run {}/{runs}: {}, {}, {} opened by then, {} born before start",
                variant.label(),
                run + 1,
                outcome.latency_s.map_or_else(
                    || format!("no verdict within {}", seconds(PATIENCE.as_secs_f64())),
                    seconds
                ),
                outcome.rule.as_deref().unwrap_or("no rule"),
                outcome.opened,
                outcome.born_before_start
            );
            measured[index].push(outcome);
        }
    }

    let mut table = Table::new(&[
        "variant",
        "clock starts at",
        "`leak` verdict after: median",
        "min–max",
        "each run (s)",
        "deciding rule",
        "opened by then (seen by leaktrace)",
        "born before start, live",
        "leaktrace attached after",
    ]);
    let mut targets = Vec::new();
    for (&variant, series) in variants.iter().zip(&measured) {
        let latencies: Vec<f64> = series.iter().filter_map(|r| r.latency_s).collect();
        let spread = Spread::of(&latencies);
        let missed = series.len() - latencies.len();
        let attach = Spread::of(&series.iter().map(|r| r.attach_s).collect::<Vec<_>>());
        table.row(vec![
            variant.label().into(),
            match variant {
                Variant::Fresh => "the leak's first connect".into(),
                Variant::Incident => format!(
                    "leaktrace's start, {} into the leak",
                    seconds(variant.lead(smoke).as_secs_f64())
                ),
            },
            spread.map_or("–".into(), |s| seconds(s.median)),
            spread.map_or("–".into(), |s| format!("{:.2}–{}", s.min, seconds(s.max))),
            series
                .iter()
                .map(|r| r.latency_s.map_or("none".into(), |s| format!("{s:.2}")))
                .collect::<Vec<_>>()
                .join(", "),
            tally(series.iter().map(|r| r.rule.as_deref().unwrap_or("none"))),
            list(series.iter().map(|r| r.opened)),
            list(series.iter().map(|r| r.born_before_start)),
            attach.map_or("–".into(), |s| seconds(s.median)),
        ]);
        if variant == Variant::Fresh {
            targets.push(Target {
                goal: "leak verdict within 10 s of a leak starting at 20 connections/s".into(),
                measured: match spread {
                    Some(s) if missed == 0 => format!(
                        "every run (the max) within {}: median {}, max {} over {} run(s)",
                        seconds(TARGET_S),
                        seconds(s.median),
                        seconds(s.max),
                        s.samples
                    ),
                    _ => format!(
                        "{missed} of {} run(s) without a verdict within {}",
                        series.len(),
                        seconds(PATIENCE.as_secs_f64())
                    ),
                },
                met: Some(missed == 0 && spread.is_some_and(|s| s.max <= TARGET_S)),
                limit: (missed > 0 || spread.is_some_and(|s| s.max > TARGET_S)).then(|| {
                    "the leak rules' thresholds (README, Verdicts; the values under the table): no leak rule holds \
                     before they are met"
                        .into()
                }),
            });
        }
    }
    let thresholds = measured
        .iter()
        .flatten()
        .find_map(|r| r.thresholds.as_ref())
        .map(describe_thresholds);
    let mut notes = vec![
        "The latency is read when xtask reads the report line (CLOCK_MONOTONIC, the clock of loadgen's stamp and of \
         leaktrace's events), so it includes up to one report interval (0.25 s). \"Opened by then\" counts what \
         leaktrace saw at loadgen's connect call site. Connections born before start are a call site of their own \
         (no stack, no open seen, so no growth): in the incident variant only the connections opened since \
         leaktrace started can make the verdict."
            .to_string(),
    ];
    notes.extend(thresholds);
    Ok(Section {
        title: "Time to a leak verdict".into(),
        what: format!(
            "`loadgen leak --rate {RATE}` (a client opening {RATE} connections/s to a server in the same process over \
             loopback, closing none) under `leaktrace --format jsonl --interval {INTERVAL} --pid PID --port PORT` \
             (default thresholds), {runs} run(s) of each variant, interleaved: the time until the first report in \
             which loadgen's connect-side call site has verdict `leak`. leaktrace is stopped with SIGINT and must \
             exit with status 1 (leaks found)."
        ),
        table,
        targets,
        notes,
        figures: Vec::new(),
    })
}

/// One run of `variant`.
fn measure(bench: &Bench, variant: Variant) -> Result<Run> {
    let lead = variant.lead(bench.options.smoke);
    // Long enough for a missed verdict to be seen as one, and to outlast leaktrace's final
    // report; the leak is stopped (stdin closed) as soon as the run has what it needs.
    let leak_seconds = (lead + PATIENCE + LEAK_MARGIN).as_secs_f64();
    let mut command = Command::new(&bench.bins.loadgen);
    command.args([
        "leak",
        "--rate",
        &RATE.to_string(),
        "--duration",
        &leak_seconds.to_string(),
    ]);
    if variant == Variant::Fresh {
        command.arg("--wait-for-start");
    }
    let mut leak = Running::spawn("loadgen leak", &mut command, Stdout::Lines)?;
    let listening = json_line(&mut leak, "listening")?;
    let port = listening
        .get("port")
        .and_then(Value::as_u64)
        .with_context(|| format!("loadgen's `listening` line has no port: {listening}"))?;
    let pid = leak.pid();

    let (mut tracer, attach_s, clock_start_ns) = match variant {
        Variant::Fresh => {
            let (tracer, attach_s) = start_leaktrace(bench, pid, port)?;
            leak.send_line("start")?;
            (tracer, attach_s, leak_started_ns(&mut leak)?)
        }
        Variant::Incident => {
            let started_ns = leak_started_ns(&mut leak)?;
            let lead_ns = lead.as_nanos() as u64;
            thread::sleep(Duration::from_nanos(
                (started_ns + lead_ns).saturating_sub(monotonic_ns()),
            ));
            let start_ns = monotonic_ns();
            let (tracer, attach_s) = start_leaktrace(bench, pid, port)?;
            (tracer, attach_s, start_ns)
        }
    };

    let verdict = wait_for_verdict(&mut tracer, pid, clock_start_ns)?;
    let stopped = tracer.signal_and_wait(libc::SIGINT, STOP_TIMEOUT)?;
    if verdict.is_some() && stopped.exit_code != Some(rig::LEAKS_FOUND_EXIT_CODE) {
        bail!(
            "leaktrace found the leak but ended with {}, not exit status {} (leaks found, the documented exit status)",
            stopped.status,
            rig::LEAKS_FOUND_EXIT_CODE
        );
    }
    let ended = leak.close_stdin_and_wait(STOP_TIMEOUT)?;
    if !ended.success {
        bail!("loadgen leak failed ({}); its error is above", ended.status);
    }
    if !ended
        .lines
        .iter()
        .any(|l| l.contains(r#""type":"leak_ended""#))
    {
        bail!("loadgen leak ended without its `leak_ended` line");
    }

    let Some((read_ns, report)) = verdict else {
        return Ok(Run {
            latency_s: None,
            rule: None,
            opened: 0,
            born_before_start: 0,
            attach_s,
            thresholds: None,
        });
    };
    let site =
        leaking_connect_site(&report, pid).context("the verdict's report lost its call site")?;
    let born_before_start = connect_sites(&report, pid)
        .filter(|s| s.get("born_before_start").and_then(Value::as_bool) == Some(true))
        .filter_map(|s| s.get("live").and_then(Value::as_u64))
        .sum();
    Ok(Run {
        latency_s: Some(read_ns.saturating_sub(clock_start_ns) as f64 / 1e9),
        rule: site
            .pointer("/findings/0/rule")
            .and_then(Value::as_str)
            .map(str::to_string),
        opened: site.get("opened").and_then(Value::as_u64).unwrap_or(0),
        born_before_start,
        attach_s,
        thresholds: report.get("thresholds").cloned(),
    })
}

/// `leaktrace` (the live view) on loadgen's pid and port, once its probes are attached; and how
/// long attaching took.
fn start_leaktrace(bench: &Bench, pid: i32, port: u64) -> Result<(Running, f64)> {
    let mut command = Command::new(&bench.bins.leaktrace);
    command
        .args(["--format", "jsonl", "--interval", INTERVAL])
        .args(["--pid", &pid.to_string(), "--port", &port.to_string()])
        .env("RUST_LOG", "leaktrace=info");
    let spawned = Instant::now();
    let mut tracer = Running::spawn("leaktrace", &mut command, Stdout::Lines)?;
    // It logs each probe's hook once they are all attached.
    tracer.wait_stderr(ATTACH_TIMEOUT, "that its probes are attached", |line| {
        line.contains("attached to")
    })?;
    Ok((tracer, spawned.elapsed().as_secs_f64()))
}

/// Reads leaktrace's reports until one has loadgen's connect call site at `leak`: when it was
/// read (CLOCK_MONOTONIC ns) and the report. `None` if none came within [`PATIENCE`] of
/// `clock_start_ns`.
fn wait_for_verdict(
    tracer: &mut Running,
    pid: i32,
    clock_start_ns: u64,
) -> Result<Option<(u64, Value)>> {
    let deadline_ns = clock_start_ns + PATIENCE.as_nanos() as u64;
    let left = Duration::from_nanos(deadline_ns.saturating_sub(monotonic_ns()));
    let read = tracer.wait_line(
        left,
        "a report with loadgen's connect call site at `leak`",
        |line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|report| leaking_connect_site(&report, pid).is_some())
        },
    );
    let read_ns = monotonic_ns();
    match read {
        Ok(line) => Ok(Some((read_ns, serde_json::from_str(&line)?))),
        Err(_) if read_ns >= deadline_ns => Ok(None),
        Err(err) => Err(err),
    }
}

/// loadgen's connect-side call sites in a report.
fn connect_sites(report: &Value, pid: i32) -> impl Iterator<Item = &Value> {
    report
        .get("call_sites")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |site| {
            site.get("pid").and_then(Value::as_i64) == Some(i64::from(pid))
                && site.get("direction").and_then(Value::as_str) == Some("connect")
        })
}

/// loadgen's traced (not born before start) connect call site, if its verdict is `leak`.
fn leaking_connect_site(report: &Value, pid: i32) -> Option<&Value> {
    connect_sites(report, pid).find(|site| {
        site.get("born_before_start").and_then(Value::as_bool) == Some(false)
            && site.get("verdict").and_then(Value::as_str) == Some("leak")
    })
}

/// The next stdout line of loadgen that is a JSON object of type `kind`.
fn json_line(leak: &mut Running, kind: &str) -> Result<Value> {
    let wanted = format!(r#""type":"{kind}""#);
    let line = leak.wait_line(Duration::from_secs(30), &format!("`{kind}`"), |line| {
        line.contains(&wanted)
    })?;
    serde_json::from_str(&line)
        .with_context(|| format!("loadgen's `{kind}` line is not JSON: {line}"))
}

/// The CLOCK_MONOTONIC ns of the leak's first connect.
fn leak_started_ns(leak: &mut Running) -> Result<u64> {
    let started = json_line(leak, "leak_started")?;
    started
        .get("monotonic_ns")
        .and_then(Value::as_u64)
        .with_context(|| format!("loadgen's `leak_started` line has no monotonic_ns: {started}"))
}

/// The leak rules' thresholds of these runs, as leaktrace reported them.
fn describe_thresholds(thresholds: &Value) -> String {
    let value = |key: &str| thresholds.get(key).map_or("?".into(), Value::to_string);
    format!(
        "leaktrace judged by (its report's `thresholds`): min_age {} s, window {} s, leak_growth {}, \
         leak_rising_seconds {}, leak_max_close_ratio {}. Neither leak rule holds before some connection is older \
         than min_age, nor before opens fall in leak_rising_seconds distinct seconds (README, Verdicts): those set \
         the floor of this latency.",
        value("min_age"),
        value("window"),
        value("leak_growth"),
        value("leak_rising_seconds"),
        value("leak_max_close_ratio")
    )
}

/// `rule (n of N)` for each distinct rule.
fn tally<'a>(rules: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    for rule in rules {
        *counts.entry(rule).or_default() += 1;
        total += 1;
    }
    counts
        .iter()
        .map(|(rule, n)| format!("{rule} ({n} of {total})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(values: impl Iterator<Item = u64>) -> String {
    values.map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

fn seconds(value: f64) -> String {
    format!("{value:.2} s")
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of loadgen's stamp and leaktrace's events.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
