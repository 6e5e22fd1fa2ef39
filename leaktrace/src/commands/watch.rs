//! The live view (leaktrace's default command): trace, track, and show per call site the
//! connections opened and never closed, refreshed every `--interval`; at Ctrl-C, SIGTERM or
//! `--duration`, detach, drain, and print the final report. Returns whether leaks were found.
use std::{fs::File, io::BufWriter};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    clock::{monotonic_ns, sleep_until},
    events::report_counters,
    view::View,
};
use crate::{
    cli::{WatchArgs, parse_duration, seconds},
    container::{self, Containers},
    event::Event,
    goruntime::policy::AncestryPolicy,
    kernel::{Tracer, Transitions},
    recording::{self, Mark, RECORDING_VERSION},
    report::{LiveResolver, Report},
    symbolize::Symbolizer,
    tracker::{Filter, Limits, Tracker},
};

pub async fn run(args: &WatchArgs) -> anyhow::Result<bool> {
    let options = args.trace.to_options(Transitions::Essential)?;
    let thresholds = args.judge.thresholds()?;
    let interval = args.view.interval()?;
    let inventory_interval = seconds("inventory-interval", args.inventory_interval)?;
    let go_ancestry_max_rate = args.go_ancestry_max_rate()?;
    let duration = parse_duration(args.duration)?;
    let (pod_names, workload_filter) = args.containers.from_environment()?;
    // The kernel applies pid, port and cgroup filters to events; the tracker applies them again
    // to seeded connections (no probe saw those), and the process name to everything.
    let filter = Filter {
        pids: options.pids.clone(),
        comms: args.judge.comms.clone(),
        ports: options.ports.clone(),
        cgroups: options.cgroups.clone(),
    };
    let mut recorder = match &args.record {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("--record {}: cannot create the file", path.display()))?,
        )),
        None => None,
    };

    let mut tracer = Tracer::start(options)?;
    let started_ns = monotonic_ns();
    let symbolizer = Symbolizer::spawn();
    let containers = container::start(&pod_names).await;
    let resolver = LiveResolver { symbolizer: &symbolizer, containers: &containers };
    let mut tracker = Tracker::new(thresholds.clone(), Limits::default(), filter, started_ns);
    let mut ancestry = AncestryPolicy::new(args.go_ancestry, go_ancestry_max_rate, started_ns);
    let mut session =
        Session { tracker: &mut tracker, recorder: &mut recorder, symbolizer: &symbolizer, containers: &containers };
    session.mark(&Mark::Start { ts_ns: started_ns, version: RECORDING_VERSION })?;
    let mut view = View::new(args.view.format, args.view.top);

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut inventories =
        super::inventory::Inventories::start(inventory_interval, !args.no_seed, !args.trace.cgroups.is_empty())?;
    let mut batch = Vec::new();

    loop {
        tokio::select! {
            read = tracer.next_batch(&mut batch) => {
                read?;
                session.apply(&mut batch)?;
            }
            _ = refresh.tick() => {
                let now = monotonic_ns();
                session.tracker.expire(now);
                let snapshot = session.tracker.snapshot(now);
                let mut report = Report::new(&snapshot, Some(tracer.counters()?), &thresholds, &resolver);
                ancestry.after_report(&mut report, &mut tracer, now);
                report.retain_workloads(&workload_filter);
                view.refresh(&report)?;
            }
            inventory = inventories.next() => {
                // Every event produced before the inventory was taken is applied first, so a
                // CLOSE still in the ring buffer is not mistaken for a socket gone unseen.
                tracer.drain_now(&mut batch);
                session.apply(&mut batch)?;
                session.inventory(inventory?)?;
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = sleep_until(deadline) => break,
        }
    }

    let counters = tracer.finish(&mut batch)?;
    session.apply(&mut batch)?;
    let end_ns = monotonic_ns();
    session.mark(&Mark::Counters(counters))?;
    session.mark(&Mark::End { ts_ns: end_ns })?;
    if let Some(recorder) = &mut recorder {
        std::io::Write::flush(recorder).context("--record: writing the recording")?;
    }
    containers.flush();
    let mut report = Report::new(&tracker.snapshot(end_ns), Some(counters), &thresholds, &resolver);
    ancestry.annotate(&mut report);
    report.retain_workloads(&workload_filter);
    view.finish(&report)?;
    report_counters(&counters);
    Ok(report.leaks() > 0)
}

/// The tracker and the recording, fed together so a replay sees exactly what the tracker saw.
struct Session<'a> {
    tracker: &'a mut Tracker,
    recorder: &'a mut Option<BufWriter<File>>,
    symbolizer: &'a Symbolizer,
    containers: &'a Containers,
}

impl Session<'_> {
    fn apply(&mut self, batch: &mut Vec<Event>) -> anyhow::Result<()> {
        for event in batch.drain(..) {
            if let Some(open) = event.open() {
                // At the first sight of a process: capture its mappings and its cgroup while it runs.
                self.symbolizer.note_process(open.owner.pid, open.owner.process_start_ns);
                self.containers.note_process(open.owner.pid, open.owner.process_start_ns, open.owner.cgroup_id);
            }
            self.tracker.apply(&event);
            if let Some(recorder) = self.recorder.as_mut() {
                recording::write_line(recorder, &event).context("--record: writing the recording")?;
            }
        }
        Ok(())
    }

    fn mark(&mut self, mark: &Mark) -> anyhow::Result<()> {
        if let Some(recorder) = self.recorder.as_mut() {
            recording::write_line(recorder, mark).context("--record: writing the recording")?;
        }
        Ok(())
    }

    fn inventory(&mut self, taken: super::inventory::Taken) -> anyhow::Result<()> {
        match taken {
            super::inventory::Taken::Seed(inventory) => {
                for owner in inventory.sockets.iter().filter_map(|socket| socket.owner.as_ref()) {
                    self.containers.note_process(owner.pid, owner.start_ns, owner.cgroup_id);
                }
                self.tracker.seed(&inventory);
                self.mark(&Mark::Seed(inventory))
            }
            super::inventory::Taken::Later(inventory) => {
                self.tracker.observe(&inventory);
                self.mark(&Mark::Inventory(inventory))
            }
        }
    }
}

