//! What each probe costs in the kernel, from the kernel's own BPF run-time statistics
//! (BPF_ENABLE_STATS, held by the tracer process for this section only: the kernel turns them
//! off again when it exits): ns per run and runs per connection of every program, under the
//! saturating loop with a normal close and with an RST close, for the live view's settings and,
//! side by side, `events`' (every transition sent) and the live view's without user stacks
//! (what the stack walk costs). The probes see every process, so the runs other processes
//! cause during the load are estimated from an idle window first and taken off.
use std::{collections::BTreeMap, thread, time::Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{
    Bench,
    figures::thousands,
    report::{Section, Table, Target},
    rig,
};

/// The target: all programs together, per connection, above the statistics' floor.
const TARGET_NS_PER_CONN: f64 = 4000.0;

/// Run time and run count of one program.
#[derive(Clone, Copy, Default)]
struct Runs {
    time_ns: f64,
    count: f64,
}

/// One way of running the probes and the load, measured side by side with the others.
struct Setting {
    label: String,
    /// `leaktrace-bench trace` arguments after `--run-time-stats`.
    trace: &'static [&'static str],
    /// loadgen's threads all kept on CPU 0: both ends of every connection, and so every probe
    /// run, on one CPU, where no map, ring buffer or socket is shared with another CPU.
    one_cpu: bool,
    /// Run by the `--baseline` commit's `leaktrace-bench`.
    baseline: bool,
}

impl Setting {
    fn new(label: &str, trace: &'static [&'static str]) -> Self {
        Self { label: label.into(), trace, one_cpu: false, baseline: false }
    }
}

const LIVE_VIEW: &[&str] = &["--transitions", "essential"];

/// The probes' settings measured side by side: what the live view ships, what `leaktrace
/// events` ships, and the live view's without user stacks (what the stack walk costs).
/// Paused, every program returns at its first check: what is left is the statistics' own cost
/// (a clock read per run) and the dispatch, the floor under every other row. The live view
/// with the load on one CPU shows what sharing between CPUs costs the probes; with a
/// `--baseline`, its probes run with the live view's settings last.
fn settings(bench: &Bench) -> Vec<Setting> {
    let mut settings = vec![
        Setting::new("live view (essential transitions)", LIVE_VIEW),
        Setting::new("`events` (all transitions)", &["--transitions", "all"]),
        Setting::new("live view, no user stacks", &["--transitions", "essential", "--no-user-stacks"]),
        Setting::new("paused (the floor: statistics and dispatch)", &["--paused"]),
        Setting { one_cpu: true, ..Setting::new("live view, the load on one CPU", LIVE_VIEW) },
    ];
    if let Some(baseline) = &bench.bins.baseline {
        settings.push(Setting {
            baseline: true,
            ..Setting::new(&format!("live view, the probes of {} (baseline)", baseline.rev), LIVE_VIEW)
        });
    }
    settings
}

/// Indexes in [`settings`] the notes compare.
const SHIPPED: usize = 0;
const STACKLESS: usize = 2;
const FLOOR: usize = 3;
const ONE_CPU: usize = 4;
const BASELINE: usize = 5;

const CLOSES: [&str; 2] = ["normal", "rst"];

/// Interleaved rounds of every setting (a smoke run: one).
const ROUNDS: usize = 3;

/// One settings' measurement under one close mode.
struct Measured {
    /// `program (hook)` -> (ns per run, runs per connection).
    programs: Vec<(String, f64, f64)>,
    ns_per_conn: f64,
    runs_per_conn: f64,
    events_per_conn: f64,
    connections: f64,
    conn_per_s: f64,
}

pub fn section(bench: &Bench) -> Result<Section> {
    let mut table = Table::new(&[
        "settings",
        "close",
        "program (hook)",
        "ns per run",
        "runs per connection",
        "ns per connection",
        "events per connection",
    ]);
    let mut notes = Vec::new();
    let mut targets = Vec::new();
    let mut totals = BTreeMap::new();
    // Interleaved rounds, each running every setting in a rotated order, so that the machine's
    // drift falls on all settings alike; each row is its round of median cost.
    let rounds = if bench.options.smoke { 1 } else { ROUNDS };
    let settings = settings(bench);
    let mut runs: Vec<Vec<Vec<Measured>>> = settings.iter().map(|_| Vec::new()).collect();
    let mut final_counters = String::new();
    for round in 0..rounds {
        for offset in 0..settings.len() {
            let index = (round + offset) % settings.len();
            let (by_close, counters) = measure_settings(bench, &settings[index])?;
            say!("bench: round {}/{rounds} {}: {:.0} ns per connection", round + 1, settings[index].label, by_close[0].ns_per_conn);
            if index == 0 {
                final_counters = counters;
            }
            runs[index].push(by_close);
        }
    }
    for (index, Setting { label, .. }) in settings.iter().enumerate() {
        for (close_index, close) in CLOSES.iter().enumerate() {
            let mut by_round: Vec<&Measured> = runs[index].iter().map(|round| &round[close_index]).collect();
            by_round.sort_by(|a, b| a.ns_per_conn.total_cmp(&b.ns_per_conn));
            let measured = by_round[by_round.len() / 2];
            let spread = if by_round.len() > 1 {
                format!(" ({:.0}–{:.0})", by_round[0].ns_per_conn, by_round[by_round.len() - 1].ns_per_conn)
            } else {
                String::new()
            };
            // Per program for the shipped live view, on both CPUs and on one; the other settings'
            // totals suffice.
            if index == SHIPPED || index == ONE_CPU {
                for (name, ns_per_run, per_conn) in &measured.programs {
                    table.row(vec![
                        label.clone(),
                        (*close).into(),
                        name.clone(),
                        format!("{ns_per_run:.0}"),
                        format!("{per_conn:.2}"),
                        format!("{:.0}", ns_per_run * per_conn),
                        String::new(),
                    ]);
                }
            }
            table.row(vec![
                label.clone(),
                (*close).into(),
                "**all programs**".into(),
                String::new(),
                format!("{:.2}", measured.runs_per_conn),
                format!("**{:.0}**{spread}", measured.ns_per_conn),
                format!("{:.1}", measured.events_per_conn),
            ]);
            totals.insert((index, *close), measured.ns_per_conn);
            if index == SHIPPED {
                notes.push(format!(
                    "{close} close, the live view's median round: {} connections at {} conn/s.",
                    thousands(measured.connections),
                    thousands(measured.conn_per_s)
                ));
            }
        }
    }
    notes.push(format!("Final counters of the live view's last round: {final_counters}."));
    let total = |index: usize| totals.get(&(index, "normal")).copied().unwrap_or(f64::NAN);
    let (shipped, stackless, floor, one_cpu) = (total(SHIPPED), total(STACKLESS), total(FLOOR), total(ONE_CPU));
    let above_floor = shipped - floor;
    notes.push(format!(
        "Paused, the programs still cost {floor:.0} ns per connection by these statistics (normal close): the kernel's \
         clock reads around each run and the dispatch, which the statistics add to every row. Above that floor the \
         live view's probes cost {above_floor:.0} ns per connection."
    ));
    notes.push(format!(
        "The user stacks (one walk per open: the client's connect and the server's accept) account for \
         {:.0} of the live view's {shipped:.0} ns per connection (normal close): the difference to the run without \
         them.",
        shipped - stackless
    ));
    notes.push(format!(
        "With loadgen kept on one CPU, the same probes cost {one_cpu:.0} ns per connection against {shipped:.0} with \
         the load on both CPUs (normal close): {:.0} ns per connection is what the probes pay for sharing between \
         CPUs: the one ring buffer (its lock and positions), the socket map's buckets and entries, and the socket's \
         own cache lines, which the other CPU's half of the connection last wrote.",
        shipped - one_cpu
    ));
    if let Some(baseline) = &bench.bins.baseline {
        let then = total(BASELINE);
        notes.push(format!(
            "The baseline is commit {}, its probes built and measured in the same rounds: {then:.0} ns per \
             connection, {:.0} above the floor (normal close); this commit's {shipped:.0}, {above_floor:.0} above \
             the floor: {:.2} of the baseline's cost above the floor.",
            baseline.rev,
            then - floor,
            above_floor / (then - floor)
        ));
    }
    targets.push(Target {
        goal: format!(
            "kernel cost per connection, all programs together, above the statistics' floor: <= {TARGET_NS_PER_CONN:.0} ns"
        ),
        measured: format!(
            "{above_floor:.0} ns above the floor of {floor:.0} (live view, normal close: {shipped:.0} ns in all; \
             {stackless:.0} ns without user stacks; {one_cpu:.0} ns with the load on one CPU)"
        ),
        met: Some(above_floor <= TARGET_NS_PER_CONN),
        limit: (above_floor > TARGET_NS_PER_CONN).then(|| {
            format!(
                "sharing between the two CPUs ({:.0} ns of it: the same probes cost that much less with the load on \
                 one CPU): they read sockets and socket-map entries last written on the other CPU (a ring buffer \
                 per CPU, tried, took 2% off; socket-local storage, tried, cost more: see \"Reading these \
                 figures\"); then the user stack walks ({:.0} ns)",
                shipped - one_cpu,
                shipped - stackless
            )
        }),
    });
    Ok(Section {
        title: "Kernel cost per program".into(),
        what: format!(
            "`leaktrace-bench trace --run-time-stats` (the shipped probes and reader, all processes) with each of \
             the settings in the table, while `loadgen run --duration {}` saturates, once per close mode; \
             `run_time_ns` and `run_cnt` of each program from BPF_OBJ_GET_INFO_BY_FD. These cover the programs' own \
             instructions and helpers, not the kernel's dispatch to them (a classic tracepoint also formats its \
             record first). Events per connection are the records received during the load. {} interleaved \
             rounds of the settings, each in a rotated order; each row is the setting's median round, the total's \
             min–max over rounds in parentheses.",
            bench.load_seconds(),
            if bench.options.smoke { 1 } else { ROUNDS },
        ),
        table,
        targets,
        notes,
        figures: Vec::new(),
    })
}

/// Runs the probes with `args`, an idle window, then the load once per close mode. Returns a
/// measurement per close mode and the final counters.
fn measure_settings(bench: &Bench, setting: &Setting) -> Result<(Vec<Measured>, String)> {
    let mut trace_args = vec!["trace", "--run-time-stats"];
    trace_args.extend_from_slice(setting.trace);
    let binary = match (&bench.bins.baseline, setting.baseline) {
        (Some(baseline), true) => &baseline.bench,
        _ => &bench.bins.bench,
    };
    let mut trace = rig::start_bench_trace(binary, &trace_args)?;
    let idle_start = Instant::now();
    let before_idle = programs(&rig::snapshot(&mut trace, "snapshot")?)?;
    thread::sleep(std::time::Duration::from_secs_f64(bench.options.seconds.min(2.0)));
    let after_idle = programs(&rig::snapshot(&mut trace, "snapshot")?)?;
    let idle_seconds = idle_start.elapsed().as_secs_f64();
    let background = delta(&after_idle, &before_idle);

    let mut measured = Vec::new();
    for close in CLOSES {
        let before_snapshot = rig::snapshot(&mut trace, "snapshot")?;
        let before = programs(&before_snapshot)?;
        let load = rig::run_load_on(
            &bench.bins,
            &["--duration".into(), bench.load_seconds(), "--close".into(), close.into()],
            setting.one_cpu.then_some(0),
        )?;
        let after_snapshot = rig::snapshot(&mut trace, "snapshot")?;
        let after = programs(&after_snapshot)?;
        let mut result = Measured {
            programs: Vec::new(),
            ns_per_conn: 0.0,
            runs_per_conn: 0.0,
            events_per_conn: (events_received(&after_snapshot) - events_received(&before_snapshot))
                / load.connections,
            connections: load.connections,
            conn_per_s: load.conn_per_s,
        };
        for (name, runs) in delta(&after, &before) {
            // Runs other processes caused meanwhile, at the idle window's rate.
            let others = background.get(&name).map_or(0.0, |bg| bg.count / idle_seconds * load.seconds);
            let per_conn = (runs.count - others).max(0.0) / load.connections;
            let ns_per_run = if runs.count > 0.0 { runs.time_ns / runs.count } else { 0.0 };
            result.ns_per_conn += ns_per_run * per_conn;
            result.runs_per_conn += per_conn;
            result.programs.push((name, ns_per_run, per_conn));
        }
        measured.push(result);
    }
    let last = rig::finish_bench_trace(trace)?;
    let counters = last.get("counters").map(Value::to_string).unwrap_or_default();
    Ok((measured, counters))
}

/// Records received so far, over every kind, from a snapshot's `events`.
fn events_received(snapshot: &Value) -> f64 {
    snapshot
        .get("events")
        .and_then(Value::as_object)
        .map_or(0.0, |kinds| kinds.values().filter_map(Value::as_f64).sum())
}

/// `program (hook)` -> runs, from a snapshot's `programs`.
fn programs(snapshot: &Value) -> Result<BTreeMap<String, Runs>> {
    let list = snapshot
        .get("programs")
        .and_then(Value::as_array)
        .context("a snapshot without programs")?;
    Ok(list
        .iter()
        .map(|p| {
            let text = |key: &str| {
                p.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            let number = |key: &str| p.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            (
                format!("{} ({})", text("program"), text("hook")),
                Runs {
                    time_ns: number("run_time_ns"),
                    count: number("run_count"),
                },
            )
        })
        .collect())
}

fn delta(
    after: &BTreeMap<String, Runs>,
    before: &BTreeMap<String, Runs>,
) -> BTreeMap<String, Runs> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                Runs {
                    time_ns: a.time_ns - b.time_ns,
                    count: a.count - b.count,
                },
            )
        })
        .collect()
}
