//! `leaktrace events`: every decoded kernel event as a JSON line, until Ctrl-C, SIGTERM or
//! `--duration`; then the probes are detached, the buffer drained, and the counters written
//! to stderr and as the stream's `counters` line, before its `end` line. The stream opens with
//! a `start` line: it is a recording `leaktrace replay` reads.
use std::io::{self, Write};

use tokio::signal::unix::{SignalKind, signal};

use super::clock::{monotonic_ns, sleep_until};
use crate::{
    cli::{EventsArgs, run_duration},
    container::{self, events::EventFilter},
    event::Event,
    kernel::{KernelCounters, Tracer, Transitions},
    pyruntime::policy::PythonPolicy,
    recording::{Mark, RECORDING_VERSION, write_line},
};

pub async fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let options = args.trace.to_options(Transitions::All)?;
    let duration = run_duration(args.duration)?;
    let (pod_names, workload_filter) = args.containers.from_environment()?;
    let max_sockets = options.max_sockets as usize;
    let mut tracer = Tracer::start(options)?;
    // CPython processes' opens carry their Python frames (raw: code objects and instructions).
    let mut python = PythonPolicy::new(Default::default(), tracer.options());
    python.scan(&mut tracer);
    let mut exits_checked = std::time::Instant::now();
    // Containers are only looked up when the stream is filtered by them.
    let mut filter = if workload_filter.is_empty() {
        None
    } else {
        Some(EventFilter::new(container::start(&pod_names).await, workload_filter, max_sockets))
    };
    let start = Mark::Start { ts_ns: monotonic_ns(), version: RECORDING_VERSION };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut batch = Vec::new();
    match write_line(&mut out, &start).and_then(|()| out.flush()) {
        Err(err) if super::is_broken_pipe(&err) => return Ok(()),
        result => result?,
    }

    loop {
        let stop = tokio::select! {
            read = tracer.next_batch(&mut batch) => { read?; false }
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
            () = sleep_until(deadline) => true,
        };
        for open in batch.iter().filter_map(Event::open) {
            python.on_open(&open.owner, Some(&mut tracer));
        }
        if exits_checked.elapsed() >= std::time::Duration::from_secs(1) {
            python.detach_exited(&mut tracer);
            exits_checked = std::time::Instant::now();
        }
        if !write_events(&mut out, &mut batch, filter.as_mut())? {
            return Ok(());
        }
        if stop {
            break;
        }
    }
    let counters = tracer.finish(&mut batch)?;
    if !write_events(&mut out, &mut batch, filter.as_mut())? {
        return Ok(());
    }
    let end = Mark::End { ts_ns: monotonic_ns() };
    if let Err(err) = write_line(&mut out, &Mark::Counters(counters))
        .and_then(|()| write_line(&mut out, &end))
        .and_then(|()| out.flush())
        && !super::is_broken_pipe(&err)
    {
        return Err(err.into());
    }
    report_counters(&counters);
    Ok(())
}

/// Writes (those `filter` keeps) and clears a batch. `false` when stdout was closed by its reader.
fn write_events(out: &mut impl Write, batch: &mut Vec<Event>, filter: Option<&mut EventFilter>) -> anyhow::Result<bool> {
    if let Some(filter) = filter {
        batch.retain(|event| filter.keep(event));
    }
    let result = batch
        .drain(..)
        .try_for_each(|event| write_line(&mut *out, &event))
        .and_then(|()| out.flush());
    match result {
        Ok(()) => Ok(true),
        Err(err) if super::is_broken_pipe(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

pub fn report_counters(counters: &KernelCounters) {
    eprintln!(
        "leaktrace: {} events produced, {} received, {} lost (ring buffer full){}",
        counters.produced,
        counters.received,
        counters.lost,
        if counters.balanced() { "" } else { " [UNBALANCED: please report]" }
    );
    let extra = [
        (counters.socket_map_full, "sockets untracked (socket map full: raise --max-sockets)"),
        (counters.stack_failures, "opens without a user stack"),
        (counters.undecodable, "undecodable records"),
        (counters.accept_untracked, "accepted sockets born before tracing started"),
        (counters.accept_unresolved, "accepts whose socket could not be resolved"),
        (counters.transitions_missed, "state transitions missed by every hook"),
        (counters.goroutines_recorded, "goroutine creations recorded for goroutine ancestry"),
        (counters.goroutines_unrecorded, "goroutine creations that could not be recorded"),
        (counters.python_walks, "opens with their thread's Python frames"),
        (counters.python_walks_failed, "opens in Python processes whose Python frames could not be taken"),
    ];
    for (count, what) in extra {
        if count > 0 {
            eprintln!("leaktrace: {count} {what}");
        }
    }
    if counters.lost > 0 {
        eprintln!("hint: raise --ring-buffer-kib or lower --drain-interval-ms to lose fewer events");
    }
}
