//! Throughput and CPU per connection of the saturating loop (loadgen: connect, request,
//! response, close), untraced and under each tracer, in interleaved epochs: every epoch runs
//! each variant once, in an order rotated per epoch, so that the machine's drift (other
//! people's builds and tests) falls on all variants alike. Ratios are taken within an epoch
//! (variant / untraced of the same epoch), then summarized over epochs.
use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Bench,
    figures::{Spread, thousands},
    report::{Section, Table, Target},
    rig::{self, Tracer, TracerKind},
};

const VARIANTS: [TracerKind; 6] = [
    TracerKind::Untraced,
    TracerKind::LiveView,
    TracerKind::Events,
    TracerKind::Reader,
    TracerKind::Paused,
    TracerKind::Bpftrace,
];

/// The target: traced / untraced throughput under the live view, stacks on.
const TARGET_RATIO: f64 = 0.90;

struct Sample {
    conn_per_s: f64,
    load_cpu_us: f64,
    tracer_cpu_us: f64,
}

pub fn section(bench: &Bench) -> Result<Section> {
    let epochs = bench.options.epochs;
    // The baseline's live view, when there is one, right after this commit's.
    let mut variants = VARIANTS.to_vec();
    if bench.bins.baseline.is_some() {
        variants.insert(2, TracerKind::BaselineLiveView);
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    let mut others = BTreeSet::new();
    let mut measurements_with_others = 0;
    for epoch in 0..epochs {
        for offset in 0..variants.len() {
            let index = (epoch + offset) % variants.len();
            let seen = rig::other_tracers(&bench.bins)?;
            measurements_with_others += usize::from(!seen.is_empty());
            others.extend(seen);
            let sample = measure(bench, variants[index])?;
            say!(
                "bench: epoch {}/{epochs} {}: {} conn/s",
                epoch + 1,
                variants[index].label(),
                thousands(sample.conn_per_s)
            );
            samples[index].push(sample);
        }
    }

    let untraced = &samples[0];
    let mut table = Table::new(&[
        "variant",
        "conn/s, median (IQR)",
        "ratio to untraced, median (IQR)",
        "ratio min–max",
        "CPU µs/conn: loadgen",
        "tracer",
        "total",
    ]);
    let mut traced_ratio = None;
    let mut baseline_ratio = None;
    for (kind, series) in variants.iter().zip(&samples) {
        let rate = Spread::of(&series.iter().map(|s| s.conn_per_s).collect::<Vec<_>>());
        let ratios: Vec<f64> = series
            .iter()
            .zip(untraced)
            .map(|(s, u)| s.conn_per_s / u.conn_per_s)
            .collect();
        let ratio = Spread::of(&ratios);
        let median = |values: Vec<f64>| Spread::of(&values).map_or(f64::NAN, |s| s.median);
        let load_cpu = median(series.iter().map(|s| s.load_cpu_us).collect());
        let tracer_cpu = median(series.iter().map(|s| s.tracer_cpu_us).collect());
        let total_cpu = median(
            series
                .iter()
                .map(|s| s.load_cpu_us + s.tracer_cpu_us)
                .collect(),
        );
        if *kind == TracerKind::LiveView {
            traced_ratio = ratio;
        }
        if *kind == TracerKind::BaselineLiveView {
            baseline_ratio = ratio;
        }
        table.row(vec![
            kind.label().to_string(),
            rate.map_or("-".into(), |r| r.show(thousands)),
            ratio.map_or("-".into(), |r| r.show(|v| format!("{v:.3}"))),
            ratio.map_or("-".into(), |r| format!("{:.3}–{:.3}", r.min, r.max)),
            format!("{load_cpu:.1}"),
            format!("{tracer_cpu:.1}"),
            format!("{total_cpu:.1}"),
        ]);
    }

    let mut notes = vec![
        "The reference script (`xtask/src/bench/reference.bt`) does leaktrace's job in bpftrace with tracepoints \
         only: an open with its owner and user stack (kept in a kernel map: bpftrace 0.17 prints stacks only \
         symbolized), every later transition of a tracked socket printed to userspace."
            .to_string(),
    ];
    if !others.is_empty() {
        notes.push(format!(
            "Other people's tracing programs were loaded before {measurements_with_others} of the {} measurements \
             and ran on these connections too, widening the spread: {}.",
            epochs * variants.len(),
            others.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if let (Some(baseline), Some(now), Some(then)) = (&bench.bins.baseline, traced_ratio, baseline_ratio) {
        notes.push(format!(
            "The baseline is commit {}, built and measured in the same epochs: its live view keeps {:.3} of \
             untraced throughput (median), this commit's {:.3}.",
            baseline.rev, then.median, now.median
        ));
    }
    let targets = traced_ratio
        .map(|ratio| Target {
            goal: format!("traced / untraced throughput on the saturating loop, stacks on: >= {TARGET_RATIO}"),
            measured: format!("{:.3} (IQR {:.3}–{:.3})", ratio.median, ratio.p25, ratio.p75),
            met: Some(ratio.median >= TARGET_RATIO),
            limit: (ratio.median < TARGET_RATIO).then(|| {
                "the probes' kernel cost (the loop runs in the kernel's context; see the kernel cost per \
                 program below, most of it sharing between the CPUs) and, on 2 cores shared with the load, the \
                 tracer's own CPU; compare the reader-only and paused rows"
                    .to_string()
            }),
        })
        .into_iter()
        .collect();
    Ok(Section {
        title: "Throughput, traced and untraced".into(),
        what: format!(
            "`loadgen run --duration {s}` (2 client threads, 4 server ports with a thread each, 64-byte request and \
             response, the client closes first) in a private network namespace, saturating; {epochs} interleaved epochs \
             of the {n} variants, each epoch in a rotated order, each measured run after an unmeasured one of \
             {WARM_UP} s under the same tracer and once the tracer has settled (at least {least} s, then under {quiet} ms \
             of CPU in {tick} ms, at most {limit} s in all): its one-time work at a new binary, such as reading its \
             symbols, falls outside the window, as for a tracer that has been running. Every tracer traces all \
             processes with its \
             default settings. CPU is loadgen's (getrusage, includes the probes, which run in its context) and the tracer \
             process's during the load window (schedstat), per connection.",
            s = bench.load_seconds(),
            n = variants.len(),
            least = SETTLE_AT_LEAST.as_secs_f64(),
            quiet = SETTLED_CPU.as_millis(),
            tick = SETTLE_TICK.as_millis(),
            limit = SETTLE_LIMIT.as_secs(),
        ),
        table,
        targets,
        notes,
        figures: Vec::new(),
    })
}

/// An unmeasured load run before each measured one, with the tracer already running: a tracer's
/// one-time work at its first sight of a binary (its symbols, its Go tables, its mappings)
/// then falls outside the window, as it does for a tracer that has been running for a while.
/// Every variant gets it, the untraced one too.
const WARM_UP: &str = "0.5";

/// After the warm-up a tracer still has to name what it saw: the live view does it at its next
/// refresh (every second), reading the new binary's DWARF (tens of milliseconds of CPU). The
/// measured run starts after [`SETTLE_AT_LEAST`], once the tracer uses less than
/// [`SETTLED_CPU`] in a [`SETTLE_TICK`], or after [`SETTLE_LIMIT`].
const SETTLE_AT_LEAST: Duration = Duration::from_millis(1200);
const SETTLE_TICK: Duration = Duration::from_millis(100);
const SETTLED_CPU: Duration = Duration::from_millis(2);
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Waits until `tracer` has settled after the warm-up (see [`SETTLE_AT_LEAST`]).
fn settle(tracer: &Tracer) -> Result<()> {
    let started = Instant::now();
    thread::sleep(SETTLE_AT_LEAST);
    let mut last = tracer.cpu_time()?;
    while started.elapsed() < SETTLE_LIMIT {
        thread::sleep(SETTLE_TICK);
        let now = tracer.cpu_time()?;
        if now.saturating_sub(last) < SETTLED_CPU {
            break;
        }
        last = now;
    }
    Ok(())
}

fn measure(bench: &Bench, kind: TracerKind) -> Result<Sample> {
    let tracer = Tracer::start(&bench.bins, kind)?;
    rig::run_load(&bench.bins, &["--duration".into(), WARM_UP.into()])?;
    settle(&tracer)?;
    let before = tracer.cpu_time()?;
    let load = rig::run_load(&bench.bins, &["--duration".into(), bench.load_seconds()]);
    let tracer_cpu = tracer.cpu_time()?.saturating_sub(before);
    tracer.stop()?;
    let load = load?;
    let per_conn = |seconds: f64| seconds * 1e6 / load.connections;
    Ok(Sample {
        conn_per_s: load.conn_per_s,
        load_cpu_us: per_conn(load.cpu_s),
        tracer_cpu_us: per_conn(tracer_cpu.as_secs_f64()),
    })
}
