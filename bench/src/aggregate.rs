//! `leaktrace-bench aggregate`: the aggregator alone (`leaktrace::tracker::Tracker`), without
//! a kernel, on a synthetic stream built in memory before anything is timed.
//!
//! - the rate run: every event through `Tracker::apply` on this thread, with an `expire` and a
//!   `snapshot` once per second of stream time, as the live view does each refresh; events per
//!   second of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID: "per core") and of wall time;
//! - `--live N`: N opens that stay live, then the tracker's heap per live connection (a
//!   counting global allocator) and the resident set's growth, and whether all N are tracked.
//!
//! Each run prints one JSON line.
mod heap;
mod stream;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use leaktrace::{
    event::Event,
    tracker::{Filter, Limits, Thresholds, Tracker},
};
use serde::Serialize;

use crate::print_line;

use stream::{Rng, Shape, Stream, World};

const S: u64 = 1_000_000_000;
/// Where stream time starts (CLOCK_MONOTONIC ns, as if the host had been up for an hour).
const STREAM_START_NS: u64 = 3_600 * S;

#[derive(Args)]
pub struct AggregateArgs {
    /// Events in the stream of the rate run.
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Instead of the rate run: this many opens that stay live, then the tracker's memory per
    /// live connection.
    #[arg(long)]
    live: Option<usize>,
    /// Processes the connections come from.
    #[arg(long, default_value_t = 300)]
    processes: usize,
    /// Distinct call sites (user stacks of 10-30 frames, each connect or accept).
    #[arg(long, default_value_t = 3_000)]
    sites: usize,
    /// Connections opened per second of stream time (sets how many events fall between two
    /// refreshes of the live view).
    #[arg(long, default_value_t = 50_000)]
    conn_per_s: u64,
    /// Times the rate run is repeated over the same stream, each with a fresh tracker; the
    /// median pass (by CPU time) is reported, every pass's CPU time beside it.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Seed of the stream: the same seed gives the same stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Serialize)]
struct RateRun {
    r#type: &'static str,
    events: usize,
    connections_opened: u64,
    processes: usize,
    sites: usize,
    stream_s: f64,
    /// `expire` + `snapshot` pairs run, one per second of stream time.
    refreshes: u64,
    /// The CPU time of every pass, in the order run.
    passes_cpu_s: Vec<f64>,
    /// The median pass:
    cpu_s: f64,
    apply_cpu_s: f64,
    refresh_cpu_s: f64,
    wall_s: f64,
    /// Events per second of this thread's CPU time, refreshes included.
    events_per_cpu_s: f64,
    /// The same without the refreshes: `apply` alone.
    apply_events_per_cpu_s: f64,
    events_per_wall_s: f64,
    live_at_end: usize,
    sites_at_end: usize,
    generate_s: f64,
}

#[derive(Serialize)]
struct LiveRun {
    r#type: &'static str,
    connections: usize,
    events: usize,
    /// Connections the tracker holds after the opens (and an expire).
    tracked: usize,
    /// The sum of the snapshot's per-site live counts.
    snapshot_live: u64,
    sites: usize,
    processes: usize,
    /// Heap bytes the tracker holds (allocated minus freed while it was filled).
    tracker_bytes: u64,
    bytes_per_connection: f64,
    rss_growth_bytes: u64,
    rss_per_connection: f64,
    apply_cpu_s: f64,
}

pub fn run(args: &AggregateArgs) -> Result<()> {
    if args.processes == 0 || args.sites == 0 || args.conn_per_s == 0 || args.passes == 0 {
        bail!("--processes, --sites, --conn-per-s and --passes must be positive");
    }
    let shape = Shape {
        processes: args.processes,
        sites: args.sites,
        conn_per_s: args.conn_per_s,
        seed: args.seed,
    };
    match args.live {
        Some(0) => bail!("--live must be positive"),
        Some(live) => print_line(&live_run(&shape, live)?),
        None if args.events == 0 => bail!("--events must be positive"),
        None => print_line(&rate_run(&shape, args.events, args.passes)?),
    }
}

fn tracker() -> Tracker {
    Tracker::new(
        Thresholds::default(),
        Limits::default(),
        Filter::default(),
        STREAM_START_NS,
    )
}

/// What one pass of the rate run took.
struct Pass {
    apply_cpu: Duration,
    refresh_cpu: Duration,
    refreshes: u64,
    wall: Duration,
    live_at_end: usize,
    sites_at_end: usize,
}

impl Pass {
    fn cpu(&self) -> Duration {
        self.apply_cpu + self.refresh_cpu
    }
}

fn rate_run(shape: &Shape, events: usize, passes: usize) -> Result<RateRun> {
    let generating = Instant::now();
    let mut rng = Rng::new(shape.seed);
    let world = World::new(shape, &mut rng);
    let mut stream = Stream::new(&world, shape, STREAM_START_NS);
    let events = stream.take(events);
    let generate_s = generating.elapsed().as_secs_f64();

    let mut runs = Vec::with_capacity(passes);
    for _ in 0..passes {
        runs.push(time_pass(&events)?);
    }
    let passes_cpu_s = runs.iter().map(|p| p.cpu().as_secs_f64()).collect();
    runs.sort_by_key(Pass::cpu);
    let median = &runs[runs.len() / 2];

    let last_ns = events.last().map_or(STREAM_START_NS, |e| e.ts_ns);
    let cpu_s = median.cpu().as_secs_f64();
    let apply_cpu_s = median.apply_cpu.as_secs_f64();
    let wall_s = median.wall.as_secs_f64();
    let count = events.len() as f64;
    Ok(RateRun {
        r#type: "rate",
        events: events.len(),
        connections_opened: stream.opened,
        processes: world.processes(),
        sites: world.sites(),
        stream_s: (last_ns - STREAM_START_NS) as f64 / S as f64,
        refreshes: median.refreshes,
        passes_cpu_s,
        cpu_s,
        apply_cpu_s,
        refresh_cpu_s: median.refresh_cpu.as_secs_f64(),
        wall_s,
        events_per_cpu_s: count / cpu_s,
        apply_events_per_cpu_s: count / apply_cpu_s,
        events_per_wall_s: count / wall_s,
        live_at_end: median.live_at_end,
        sites_at_end: median.sites_at_end,
        generate_s,
    })
}

/// Every event through a fresh tracker, with the live view's refresh once per stream second.
fn time_pass(events: &[Event]) -> Result<Pass> {
    let mut tracker = tracker();
    let mut next_refresh_ns = STREAM_START_NS + S;
    let (mut apply_cpu, mut refresh_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut refreshes = 0u64;
    let wall = Instant::now();
    let mut segment_start = thread_cpu_time()?;
    for event in events {
        if event.ts_ns >= next_refresh_ns {
            let refresh_start = thread_cpu_time()?;
            apply_cpu += refresh_start.saturating_sub(segment_start);
            tracker.expire(next_refresh_ns);
            let snapshot = tracker.snapshot(next_refresh_ns);
            std::hint::black_box(&snapshot);
            drop(snapshot);
            segment_start = thread_cpu_time()?;
            refresh_cpu += segment_start.saturating_sub(refresh_start);
            refreshes += 1;
            next_refresh_ns += S;
        }
        tracker.apply(event);
    }
    apply_cpu += thread_cpu_time()?.saturating_sub(segment_start);
    let wall = wall.elapsed();
    let last_ns = events.last().map_or(STREAM_START_NS, |e| e.ts_ns);
    Ok(Pass {
        apply_cpu,
        refresh_cpu,
        refreshes,
        wall,
        live_at_end: tracker.live_connections(),
        sites_at_end: tracker.snapshot(last_ns).sites.len(),
    })
}

fn live_run(shape: &Shape, connections: usize) -> Result<LiveRun> {
    heap::count_from_now();
    let mut rng = Rng::new(shape.seed);
    let world = World::new(shape, &mut rng);
    let events = stream::live_opens(
        &world,
        connections,
        shape.conn_per_s,
        STREAM_START_NS,
        shape.seed,
    );

    let (heap_before, rss_before) = (heap::live_bytes(), heap::resident_bytes()?);
    let cpu_before = thread_cpu_time()?;
    let mut tracker = tracker();
    for event in &events {
        tracker.apply(event);
    }
    let apply_cpu = thread_cpu_time()?.saturating_sub(cpu_before);
    let last_ns = events.last().map_or(STREAM_START_NS, |e| e.ts_ns);
    // What the live view would do next: forget what is stale, which must not be a live one.
    tracker.expire(last_ns + S);
    let (heap_after, rss_after) = (heap::live_bytes(), heap::resident_bytes()?);

    let snapshot = tracker.snapshot(last_ns + S);
    let snapshot_live = snapshot.sites.iter().map(|site| site.facts.live).sum();
    let tracker_bytes = heap_after.wrapping_sub(heap_before) as u64;
    let rss_growth = rss_after.saturating_sub(rss_before);
    Ok(LiveRun {
        r#type: "live",
        connections,
        events: events.len(),
        tracked: tracker.live_connections(),
        snapshot_live,
        sites: snapshot.sites.len(),
        processes: snapshot.processes.len(),
        tracker_bytes,
        bytes_per_connection: tracker_bytes as f64 / connections as f64,
        rss_growth_bytes: rss_growth,
        rss_per_connection: rss_growth as f64 / connections as f64,
        apply_cpu_s: apply_cpu.as_secs_f64(),
    })
}

/// CPU time this thread has run (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_time() -> Result<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}
