//! Events produced, received and lost at fixed connection rates (10k and 50k conn/s) and at
//! the machine's saturation, under `leaktrace events` as shipped (all processes, default
//! settings): the final `{"type":"counters",...}` line of its stream, read by a reader that
//! keeps up (everything else it writes is discarded).
use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::thousands,
    report::{Section, Table, Target},
    rig,
};

/// `None`: saturating.
const RATES: [Option<f64>; 3] = [Some(10_000.0), Some(50_000.0), None];
/// The rate of the target: 0 events lost at 50k conn/s.
const TARGET_RATE: f64 = 50_000.0;
/// A fixed-rate run counts as at its rate when it reached this share of it.
const REACHED: f64 = 0.95;

pub fn section(bench: &Bench) -> Result<Section> {
    let mut table = Table::new(&[
        "rate asked",
        "conn/s reached",
        "connections",
        "events produced",
        "received",
        "lost",
        "events per connection",
    ]);
    let mut targets = Vec::new();
    let mut saturation = None;
    let mut at_target = None;
    for rate in RATES {
        let mut args = vec!["--duration".to_string(), bench.load_seconds()];
        if let Some(rate) = rate {
            args.extend(["--rate".to_string(), format!("{rate}")]);
        }
        let (load, counters) = traced_load(bench, &args)?;
        let number = |key: &str| {
            counters
                .get(key)
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        let (produced, received, lost) = (number("produced"), number("received"), number("lost"));
        table.row(vec![
            rate.map_or("saturating".into(), thousands),
            thousands(load.conn_per_s),
            thousands(load.connections),
            thousands(produced),
            thousands(received),
            thousands(lost),
            format!("{:.1}", produced / load.connections),
        ]);
        match rate {
            Some(r) if r == TARGET_RATE => at_target = Some((load.conn_per_s, lost)),
            None => saturation = Some((load.conn_per_s, lost)),
            _ => {}
        }
    }
    if let (Some((reached, lost)), Some((max_rate, max_lost))) = (at_target, saturation) {
        let rate_reached = reached >= REACHED * TARGET_RATE;
        targets.push(Target {
            goal: "0 events lost at 50k conn/s with default settings".into(),
            measured: format!(
                "{} lost at {} conn/s; {} lost saturating at {} conn/s",
                thousands(lost),
                thousands(reached),
                thousands(max_lost),
                thousands(max_rate)
            ),
            met: rate_reached.then_some(lost == 0.0),
            limit: if !rate_reached {
                Some(format!(
                    "this machine does not reach 50k conn/s traced (the load saturates at {} conn/s): \
                     the target is not decided here",
                    thousands(max_rate)
                ))
            } else if lost > 0.0 {
                Some("the reader does not keep up with the default ring buffer (8 MiB) and drain interval".into())
            } else {
                None
            },
        });
    }
    Ok(Section {
        title: "Events at fixed connection rates".into(),
        what: format!(
            "`leaktrace events` (all processes, default settings, stdout read and discarded but for its last lines) while \
             `loadgen run --duration {} [--rate R]` runs at 10k conn/s, 50k conn/s and saturating. Events also count \
             other processes' connections, which the probes see too.",
            bench.load_seconds()
        ),
        table,
        targets,
        notes: Vec::new(),
        figures: Vec::new(),
    })
}

/// One load under `leaktrace events`: the load's result and the stream's final counters.
fn traced_load(bench: &Bench, args: &[String]) -> Result<(rig::LoadResult, Value)> {
    let mut command = Command::new(&bench.bins.leaktrace);
    command.arg("events").env("RUST_LOG", "leaktrace=info");
    let mut tracer = Running::spawn("leaktrace events", &mut command, Stdout::Tail)?;
    tracer.wait_stderr(
        Duration::from_secs(60),
        "that its probes are attached",
        |line| line.contains("attached to"),
    )?;
    let load = rig::run_load(&bench.bins, args);
    let finished = tracer.signal_and_wait(libc::SIGINT, Duration::from_secs(60))?;
    let load = load?;
    if !finished.success {
        bail!("leaktrace events failed ({})", finished.status);
    }
    let counters = rig::last_json(&finished, "counters")
        .context("leaktrace events ended without its counters line")?;
    Ok((load, counters))
}
