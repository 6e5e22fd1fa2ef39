//! `leaktrace-bench trace`: the real probes, hosted the way leaktrace hosts them (a tokio
//! current-thread runtime draining the ring buffer in batches and decoding every record), plus
//! what the benchmarks need: attach them paused (the "probes loaded but disabled" row), BPF
//! run-time statistics, snapshots of the counters, per-program cost and map memory, and a CPython
//! process registered for Python frames on request (`python PID`).
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use leaktrace::{
    event::{Event, EventBody},
    kernel::{AttachedHook, KernelCounters, MapMemory, ProgramStats, RunTimeStats, Tracer, Transitions},
    pyruntime::{self, Detection},
    symbolize::capture::process_start_ns,
};
use serde::Serialize;

use crate::print_line;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    signal::unix::{SignalKind, signal},
};

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    trace: leaktrace::cli::TraceArgs,
    /// Attach the probes paused (their runtime switch off): each returns at its first
    /// instruction, so only the cost of calling attached programs remains.
    #[arg(long)]
    paused: bool,
    /// Turn on BPF run-time statistics (run time and count per program) while tracing.
    #[arg(long)]
    run_time_stats: bool,
    /// Take no user stack at opens: what is left is what the stack walk does not cost.
    #[arg(long)]
    no_user_stacks: bool,
}

/// Events received, by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct EventCounts {
    connect: u64,
    accept: u64,
    state: u64,
}

impl EventCounts {
    fn add(&mut self, batch: &[Event]) {
        for event in batch {
            match event.body {
                EventBody::Connect(_) => self.connect += 1,
                EventBody::Accept(_) => self.accept += 1,
                EventBody::State(_) => self.state += 1,
            }
        }
    }
}

#[derive(Serialize)]
struct Ready<'a> {
    r#type: &'static str,
    hooks: Vec<Hook<'a>>,
    paused: bool,
}

#[derive(Serialize)]
struct Hook<'a> {
    program: &'a str,
    hook: &'a str,
}

/// A `snapshot` or the `final` line.
#[derive(Serialize)]
struct Report {
    r#type: &'static str,
    events: EventCounts,
    counters: KernelCounters,
    programs: Vec<ProgramStats>,
    maps: Vec<MapMemory>,
    /// Entries of the kernel's socket map (`snapshot sockets` only: a walk of the map).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracked_sockets: Option<u64>,
    /// This process's CPU time and peak resident memory so far.
    cpu_user_s: f64,
    cpu_sys_s: f64,
    max_rss_kib: u64,
}

pub fn run(args: &TraceArgs) -> Result<()> {
    // The live view's settings unless told otherwise: it is what users leave running.
    let mut options = args.trace.to_options(Transitions::Essential)?;
    options.user_stacks = !args.no_user_stacks;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let mut tracer = Tracer::start(options)?;
        if args.paused {
            tracer.set_probes_enabled(false)?;
        }
        let _stats = args.run_time_stats.then(RunTimeStats::enable).transpose()?;
        print_line(&Ready { r#type: "ready", hooks: hooks(tracer.hooks()), paused: args.paused })?;

        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut commands = BufReader::new(tokio::io::stdin()).lines();
        let mut batch = Vec::new();
        let mut seen = EventCounts::default();
        loop {
            tokio::select! {
                read = tracer.next_batch(&mut batch) => {
                    read?;
                    seen.add(&batch);
                    batch.clear();
                }
                line = commands.next_line() => match line.context("reading commands on stdin")?.as_deref().map(str::trim) {
                    Some("snapshot") => print_line(&report("snapshot", &tracer, seen, tracer.counters()?, false)?)?,
                    Some("snapshot sockets") => print_line(&report("snapshot", &tracer, seen, tracer.counters()?, true)?)?,
                    Some("stop") | None => break,
                    Some(command) if command.starts_with("python ") => {
                        print_line(&attach_python(&mut tracer, command.trim_start_matches("python ").trim()))?
                    }
                    Some(other) => eprintln!("leaktrace-bench: unknown command {other:?} (snapshot, snapshot sockets, python PID, stop)"),
                },
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // Program and map figures while they are loaded; the counters once the probes are
        // detached and the buffer drained, when they balance.
        let mut last = report("final", &tracer, seen, KernelCounters::default(), false)?;
        let counters = tracer.finish(&mut batch)?;
        last.events.add(&batch);
        last.counters = counters;
        print_line(&last)
    })
}

/// The answer to `python PID`: whether the process's Python frames are walked from now on.
#[derive(Serialize)]
struct PythonAttached {
    r#type: &'static str,
    pid: String,
    /// The CPython version found, when attached.
    version: Option<String>,
    /// Why not, when not.
    error: Option<String>,
}

/// Detects CPython in process `pid` and registers it for Python frames.
fn attach_python(tracer: &mut Tracer, pid: &str) -> PythonAttached {
    let attach = |tracer: &mut Tracer| -> Result<String> {
        let pid: u32 = pid.parse().with_context(|| format!("python {pid:?}: not a pid"))?;
        let Detection::Python(found) = pyruntime::detect(pid)? else {
            anyhow::bail!("pid {pid} is no CPython leaktrace can walk");
        };
        let start = process_start_ns(pid).with_context(|| format!("pid {pid} exited"))?;
        tracer.attach_python(pid, found.layout.offsets(found.runtime, start))?;
        Ok(found.version.to_string())
    };
    match attach(tracer) {
        Ok(version) => PythonAttached { r#type: "python", pid: pid.into(), version: Some(version), error: None },
        Err(err) => PythonAttached { r#type: "python", pid: pid.into(), version: None, error: Some(format!("{err:#}")) },
    }
}

fn hooks(hooks: &[AttachedHook]) -> Vec<Hook<'_>> {
    hooks
        .iter()
        .map(|h| Hook {
            program: h.program,
            hook: &h.hook,
        })
        .collect()
}

fn report(
    kind: &'static str,
    tracer: &Tracer,
    events: EventCounts,
    counters: KernelCounters,
    sockets: bool,
) -> Result<Report> {
    let (cpu_user, cpu_sys, max_rss_kib) = own_usage()?;
    Ok(Report {
        r#type: kind,
        events,
        counters,
        programs: tracer.program_stats()?,
        maps: tracer.map_memory()?,
        tracked_sockets: sockets.then(|| tracer.tracked_sockets()).transpose()?,
        cpu_user_s: cpu_user.as_secs_f64(),
        cpu_sys_s: cpu_sys.as_secs_f64(),
        max_rss_kib,
    })
}

/// (user, system, peak RSS in KiB) of this process, from getrusage.
fn own_usage() -> Result<(Duration, Duration, u64)> {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_SELF)");
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        time(usage.ru_utime),
        time(usage.ru_stime),
        usage.ru_maxrss as u64,
    ))
}
