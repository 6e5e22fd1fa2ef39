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

/// The target: all programs together, per connection.
const TARGET_NS_PER_CONN: f64 = 1000.0;

/// Run time and run count of one program.
#[derive(Clone, Copy, Default)]
struct Runs {
    time_ns: f64,
    count: f64,
}

/// The probes' settings measured side by side: what the live view ships, what `leaktrace
/// events` ships, and the live view's without user stacks (what the stack walk costs).
/// Paused, every program returns at its first check: what is left is the statistics' own cost
/// (a clock read per run) and the dispatch, the floor under every other row.
const SETTINGS: [(&str, &[&str]); 4] = [
    ("live view (essential transitions)", &["--transitions", "essential"]),
    ("`events` (all transitions)", &["--transitions", "all"]),
    ("live view, no user stacks", &["--transitions", "essential", "--no-user-stacks"]),
    ("paused (the floor: statistics and dispatch)", &["--paused"]),
];

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
    let mut runs: Vec<Vec<Vec<Measured>>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    let mut final_counters = String::new();
    for round in 0..rounds {
        for offset in 0..SETTINGS.len() {
            let index = (round + offset) % SETTINGS.len();
            let (by_close, counters) = measure_settings(bench, SETTINGS[index].1)?;
            say!("bench: round {}/{rounds} {}: {:.0} ns per connection", round + 1, SETTINGS[index].0, by_close[0].ns_per_conn);
            if index == 0 {
                final_counters = counters;
            }
            runs[index].push(by_close);
        }
    }
    for (index, (label, _)) in SETTINGS.iter().enumerate() {
        for (close_index, close) in CLOSES.iter().enumerate() {
            let mut by_round: Vec<&Measured> = runs[index].iter().map(|round| &round[close_index]).collect();
            by_round.sort_by(|a, b| a.ns_per_conn.total_cmp(&b.ns_per_conn));
            let measured = by_round[by_round.len() / 2];
            let spread = if by_round.len() > 1 {
                format!(" ({:.0}–{:.0})", by_round[0].ns_per_conn, by_round[by_round.len() - 1].ns_per_conn)
            } else {
                String::new()
            };
            // Per program for the shipped live view; the other settings' totals suffice.
            if index == 0 {
                for (name, ns_per_run, per_conn) in &measured.programs {
                    table.row(vec![
                        (*label).into(),
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
                (*label).into(),
                (*close).into(),
                "**all programs**".into(),
                String::new(),
                format!("{:.2}", measured.runs_per_conn),
                format!("**{:.0}**{spread}", measured.ns_per_conn),
                format!("{:.1}", measured.events_per_conn),
            ]);
            totals.insert((index, *close), measured.ns_per_conn);
            if index == 0 {
                notes.push(format!(
                    "{close} close, the live view's median round: {} connections at {} conn/s.",
                    thousands(measured.connections),
                    thousands(measured.conn_per_s)
                ));
            }
        }
    }
    notes.push(format!("Final counters of the live view's last round: {final_counters}."));
    let shipped = totals.get(&(0, "normal")).copied().unwrap_or(f64::NAN);
    let stackless = totals.get(&(2, "normal")).copied().unwrap_or(f64::NAN);
    let floor = totals.get(&(3, "normal")).copied().unwrap_or(f64::NAN);
    notes.push(format!(
        "Paused, the programs still cost {floor:.0} ns per connection by these statistics (normal close): the kernel's \
         clock reads around each run and the dispatch, which the statistics add to every row. Above that floor the \
         live view's probes cost {:.0} ns per connection.",
        shipped - floor
    ));
    notes.push(format!(
        "The user stacks (one walk per open: the client's connect and the server's accept) account for \
         {:.0} of the live view's {shipped:.0} ns per connection (normal close): the difference to the run without \
         them.",
        shipped - stackless
    ));
    targets.push(Target {
        goal: format!("kernel cost per connection, all programs together: <= {TARGET_NS_PER_CONN:.0} ns"),
        measured: format!(
            "{shipped:.0} ns (live view, normal close; {:.0} ns above the statistics' floor; {stackless:.0} ns \
             without user stacks)",
            shipped - floor
        ),
        met: Some(shipped <= TARGET_NS_PER_CONN),
        limit: (shipped > TARGET_NS_PER_CONN).then(|| {
            format!(
                "the user stack walk at each open ({:.0} ns of it, two opens per loopback connection); without it, \
                 {stackless:.0} ns are left, {floor:.0} of them the statistics' floor: the socket map (an insert at \
                 each birth, a lookup at each transition, a delete at each CLOSE), the reads of the socket, and a \
                 ring-buffer record per reported transition",
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
fn measure_settings(bench: &Bench, args: &[&str]) -> Result<(Vec<Measured>, String)> {
    let mut trace_args = vec!["trace", "--run-time-stats"];
    trace_args.extend_from_slice(args);
    let mut trace = rig::start_bench_trace(&bench.bins, &trace_args)?;
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
        let load = rig::run_load(
            &bench.bins,
            &["--duration".into(), bench.load_seconds(), "--close".into(), close.into()],
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
