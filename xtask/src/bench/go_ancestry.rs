//! What goroutine ancestry costs the Go program it is attached to. Its uprobe runs at every
//! goroutine creation (a trap into the kernel, a user stack walk, an LRU map update), and at each
//! connect of that process the probe copies the connecting goroutine's spawns into the record.
//! The test program `spawner` (tests/helpers/go/spawner) times, in-process, N goroutine
//! creations (each checked, its stack grown and moved) and M dials each made from a new
//! goroutine (as gRPC and net/http dial), three ways, interleaved: untraced; under the live view
//! with ancestry off (`--go-ancestry off`: the TCP probes alone); and with ancestry attached to
//! it (`--go-ancestry on`).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::Spread,
    report::{Section, Table},
};
use crate::{cargo, cmd};

/// Interleaved epochs (each runs the three variants once).
const EPOCHS: usize = 3;
const GOROUTINES: u64 = 200_000;
const DIALS: u64 = 2_000;
const SMOKE_GOROUTINES: u64 = 5_000;
const SMOKE_DIALS: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Untraced,
    AncestryOff,
    AncestryOn,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Untraced, Variant::AncestryOff, Variant::AncestryOn];

    fn label(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::AncestryOff => "live view, --go-ancestry off",
            Variant::AncestryOn => "live view, ancestry attached (--go-ancestry on)",
        }
    }
}

/// One run: nanoseconds per goroutine and per dial, and what leaktrace recorded.
struct Run {
    ns_per_goroutine: f64,
    ns_per_dial: f64,
    goroutines_recorded: Option<u64>,
}

pub fn section(bench: &Bench) -> Result<Section> {
    let smoke = bench.options.smoke;
    let (epochs, goroutines, dials) = if smoke { (1, SMOKE_GOROUTINES, SMOKE_DIALS) } else { (EPOCHS, GOROUTINES, DIALS) };
    let spawner = build_spawner()?;
    let mut runs: Vec<Vec<Run>> = Variant::ALL.iter().map(|_| Vec::new()).collect();
    for epoch in 0..epochs {
        for (index, &variant) in Variant::ALL.iter().enumerate() {
            let run = measure(bench, &spawner, variant, goroutines, dials)
                .with_context(|| format!("{}, epoch {}", variant.label(), epoch + 1))?;
            say!(
                "bench: go ancestry, {}: {:.2} us per goroutine, {:.1} us per dial",
                variant.label(),
                run.ns_per_goroutine / 1e3,
                run.ns_per_dial / 1e3
            );
            runs[index].push(run);
        }
    }
    let median = |series: &[Run], figure: fn(&Run) -> f64| Spread::of(&series.iter().map(figure).collect::<Vec<_>>());
    let base_goroutine = median(&runs[0], |r| r.ns_per_goroutine).map(|s| s.median);
    let base_dial = median(&runs[0], |r| r.ns_per_dial).map(|s| s.median);
    let mut table = Table::new(&[
        "variant",
        "µs per goroutine created: median (p25–p75)",
        "added per goroutine",
        "µs per dial from a new goroutine",
        "added per dial",
        "goroutines recorded",
    ]);
    for (&variant, series) in Variant::ALL.iter().zip(&runs) {
        let goroutine = median(series, |r| r.ns_per_goroutine);
        let dial = median(series, |r| r.ns_per_dial);
        let added = |spread: Option<Spread>, base: Option<f64>| match (spread, base) {
            (Some(s), Some(base)) if variant != Variant::Untraced => format!("{:+.2} µs", (s.median - base) / 1e3),
            _ => "–".into(),
        };
        table.row(vec![
            variant.label().into(),
            goroutine.map_or("–".into(), |s| s.show(|ns| format!("{:.2}", ns / 1e3))),
            added(goroutine, base_goroutine),
            dial.map_or("–".into(), |s| s.show(|ns| format!("{:.1}", ns / 1e3))),
            added(dial, base_dial),
            series
                .iter()
                .map(|r| r.goroutines_recorded.map_or("–".into(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    Ok(Section {
        title: "Goroutine ancestry".into(),
        what: format!(
            "`spawner -goroutines {goroutines} -dials {dials}` (tests/helpers/go/spawner, Debian's Go): {goroutines} \
             goroutines created and checked in batches of 1000, then {dials} loopback dials one after another, each \
             from a new goroutine, timed by the program itself; untraced, and under `leaktrace --pid PID` with \
             `--go-ancestry off` and `on` (with `--go-ancestry-max-rate 1e9`, so that ancestry stays attached at \
             any rate), {epochs} interleaved epoch(s)."
        ),
        table,
        targets: Vec::new(),
        notes: vec![
            "Only the processes ancestry is attached to pay the per-goroutine cost: the uprobe is scoped to each \
             process, `auto` attaches it only to Go processes whose connect stacks have no application frame, and a \
             process creating more goroutines per second than `--go-ancestry-max-rate` (2000 by default: a few percent \
             of a core at the cost measured here) is detached again. A dial from a new goroutine creates two \
             goroutines in this process (the dialing one, and the handler of the spawner's own loopback server), \
             both recorded, and copies the spawner's stack into the connect's record."
                .into(),
        ],
        figures: Vec::new(),
    })
}

/// Builds the spawner with Debian's Go into target/bench.
fn build_spawner() -> Result<PathBuf> {
    if cmd::which("go").is_none() {
        bail!("the goroutine ancestry rows need Go to build their test program\nfix: cargo xtask setup --test-deps (installs golang-go)");
    }
    let root = cargo::workspace_root();
    let binary = cargo::target_dir().join("bench/spawner");
    let mut go = Command::new("go");
    go.args(["build", "-buildvcs=false", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(root.join("tests/helpers/go/spawner"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0");
    cmd::run(&mut go).context("building tests/helpers/go/spawner failed")?;
    Ok(binary)
}

fn measure(bench: &Bench, spawner: &Path, variant: Variant, goroutines: u64, dials: u64) -> Result<Run> {
    let mut program = Running::spawn(
        "spawner",
        Command::new(spawner).args(["-goroutines", &goroutines.to_string(), "-dials", &dials.to_string()]),
        Stdout::Lines,
    )?;
    program.wait_line(TIMEOUT, "ready", |line| line == "ready")?;
    let pid = program.pid();
    let mut tracer = match variant {
        Variant::Untraced => None,
        Variant::AncestryOff | Variant::AncestryOn => {
            let mode = if variant == Variant::AncestryOn { "on" } else { "off" };
            let mut command = Command::new(&bench.bins.leaktrace);
            command
                .args(["--format", "jsonl", "--interval", "0.2", "--pid", &pid.to_string(), "--go-ancestry", mode])
                // The cost per goroutine is what is measured here, at any rate.
                .args(["--go-ancestry-max-rate", "1e9"])
                .env("RUST_LOG", "leaktrace=info");
            let mut tracer = Running::spawn("leaktrace", &mut command, Stdout::Lines)?;
            tracer.wait_line(TIMEOUT, "its first report", |_| true)?;
            Some(tracer)
        }
    };
    program.send_line("connect")?;
    program.wait_line(TIMEOUT, "connected", |line| line == "connected")?;
    if let (Some(tracer), Variant::AncestryOn) = (tracer.as_mut(), variant) {
        tracer.wait_stderr(TIMEOUT, "that ancestry is attached", |line| {
            line.contains(&format!("goroutine ancestry attached to pid {pid}"))
        })?;
    }
    program.send_line("go")?;
    let checked = program.wait_line(TIMEOUT, "its goroutines checked", |line| line.starts_with("checked ") || line.starts_with("wrong "))?;
    let goroutine_ns = timed(&checked, "checked", goroutines)?;
    let dialed = program.wait_line(TIMEOUT, "its dials", |line| line.starts_with("dialed "))?;
    let dial_ns = timed(&dialed, "dialed", dials)?;
    let ended = program.close_stdin_and_wait(TIMEOUT)?;
    if !ended.success {
        bail!("spawner failed ({})", ended.status);
    }
    let goroutines_recorded = match tracer {
        Some(tracer) => {
            let finished = tracer.signal_and_wait(libc::SIGINT, TIMEOUT)?;
            let last: Option<Value> = finished.lines.iter().rev().find_map(|line| serde_json::from_str(line).ok());
            last.as_ref().and_then(|report| report.pointer("/events/goroutines_recorded")).and_then(Value::as_u64)
        }
        None => None,
    };
    if variant == Variant::AncestryOn && goroutines_recorded.is_none_or(|n| n < goroutines) {
        bail!("ancestry was attached, but only {goroutines_recorded:?} of {goroutines} goroutine creations were recorded");
    }
    Ok(Run { ns_per_goroutine: goroutine_ns, ns_per_dial: dial_ns, goroutines_recorded })
}

/// Nanoseconds per operation from `checked N in T ns`.
fn timed(line: &str, verb: &str, count: u64) -> Result<f64> {
    let total: f64 = line
        .strip_prefix(&format!("{verb} {count} in "))
        .and_then(|rest| rest.strip_suffix(" ns"))
        .and_then(|ns| ns.parse().ok())
        .with_context(|| format!("spawner printed {line:?}, expected \"{verb} {count} in T ns\""))?;
    Ok(total / count as f64)
}
