//! What the live view and the agent share: the probes, the tracker, the recording and the
//! symbolizer, fed together from the ring buffer and the socket inventories, and a report of
//! them on demand. The commands own only their outputs and their stopping rules.
use std::{fs::File, io::BufWriter, path::Path, time::Duration};

use anyhow::Context;

use super::{
    clock::monotonic_ns,
    inventory::{Inventories, Taken},
};
use crate::{
    cli::{ContainerArgs, GoAncestryArgs, JudgeArgs, LimitArgs, TraceArgs},
    container::{self, Containers, WorkloadFilter},
    event::Event,
    goruntime::policy::{AncestryMode, AncestryPolicy},
    kernel::{KernelCounters, Tracer, TracerOptions, Transitions},
    pyruntime::policy::PythonPolicy,
    recording::{self, Mark, RECORDING_VERSION},
    report::{LiveResolver, Report},
    symbolize::Symbolizer,
    tracker::{Filter, Thresholds, Tracker},
};

/// How a live session is set up, from the command line.
pub struct LiveOptions<'a> {
    pub trace: &'a TraceArgs,
    pub judge: &'a JudgeArgs,
    pub limits: &'a LimitArgs,
    pub go: &'a GoAncestryArgs,
    pub containers: &'a ContainerArgs,
    pub record: Option<&'a Path>,
    pub seed: bool,
    pub inventory_interval: Duration,
}

/// What one [`Live::step`] did.
pub enum Stepped {
    /// A batch of events was applied (possibly empty: the drain timer).
    Events,
    /// A socket inventory was applied.
    Inventory,
    /// Taking a socket inventory failed; nothing was applied. The session goes on: the next
    /// inventory is taken at the usual interval.
    InventoryFailed(anyhow::Error),
}

/// The probes attached, the tracker fed, the recording written.
pub struct Live {
    tracer: Tracer,
    tracker: Tracker,
    recorder: Option<BufWriter<File>>,
    symbolizer: Symbolizer,
    containers: Containers,
    /// `--container`, `--pod`, `--namespace`: applied to each report.
    workload_filter: WorkloadFilter,
    inventories: Inventories,
    thresholds: Thresholds,
    ancestry: AncestryPolicy,
    go_ancestry: AncestryMode,
    /// Which CPython processes get their Python frames walked.
    python: PythonPolicy,
    batch: Vec<Event>,
    inventories_taken: u64,
    inventories_failed: u64,
}

impl Live {
    /// Validates the options, attaches the probes, starts the container resolver (watching this
    /// node's pods in a cluster) and the inventories.
    pub async fn start(options: &LiveOptions<'_>) -> anyhow::Result<Self> {
        let tracer_options = options.trace.to_options(Transitions::Essential)?;
        let thresholds = options.judge.thresholds()?;
        let go_ancestry_max_rate = options.go.go_ancestry_max_rate()?;
        let (pod_names, workload_filter) = options.containers.from_environment()?;
        // The kernel applies pid, port and cgroup filters to events; the tracker applies them
        // again to seeded connections (no probe saw those), and the process name to everything.
        let filter = Filter {
            pids: tracer_options.pids.clone(),
            comms: options.judge.comms.clone(),
            ports: tracer_options.ports.clone(),
            cgroups: tracer_options.cgroups.clone(),
        };
        // Checked before the probes load, created after: a load that fails leaves a previous
        // recording of that name whole.
        if let Some(path) = options.record {
            crate::export::check_writable("--record", path)?;
        }
        let mut tracer = Tracer::start(tracer_options)?;
        let recorder = match options.record {
            Some(path) => Some(BufWriter::new(
                File::create(path).with_context(|| format!("--record {}: cannot create the file", path.display()))?,
            )),
            None => None,
        };
        let started_ns = monotonic_ns();
        let symbolizer = Symbolizer::spawn();
        let mut python = PythonPolicy::new(symbolizer.python_names().clone(), tracer.options());
        python.scan(&mut tracer);
        let containers = container::start(&pod_names).await;
        let tracker = Tracker::new(thresholds.clone(), options.limits.limits()?, filter, started_ns);
        let inventories =
            Inventories::start(options.inventory_interval, options.seed, !options.trace.cgroups.is_empty())?;
        let mut live = Self {
            tracer,
            tracker,
            recorder,
            symbolizer,
            containers,
            workload_filter,
            inventories,
            thresholds,
            ancestry: AncestryPolicy::new(options.go.go_ancestry, go_ancestry_max_rate, started_ns),
            go_ancestry: options.go.go_ancestry,
            python,
            batch: Vec::new(),
            inventories_taken: 0,
            inventories_failed: 0,
        };
        mark(&mut live.recorder, &Mark::Start { ts_ns: started_ns, version: RECORDING_VERSION })?;
        Ok(live)
    }

    /// Waits for the next batch of events or the next inventory, and applies it. Cancel-safe:
    /// nothing is lost when another branch of a `select!` wins.
    pub async fn step(&mut self) -> anyhow::Result<Stepped> {
        tokio::select! {
            read = self.tracer.next_batch(&mut self.batch) => {
                read?;
                self.apply_batch()?;
                Ok(Stepped::Events)
            }
            inventory = self.inventories.next() => {
                // Every event produced before the inventory was taken is applied first, so a
                // CLOSE still in the ring buffer is not mistaken for a socket gone unseen.
                self.tracer.drain_now(&mut self.batch);
                self.apply_batch()?;
                match inventory {
                    Ok(taken) => {
                        self.inventory(taken)?;
                        self.inventories_taken += 1;
                        Ok(Stepped::Inventory)
                    }
                    Err(err) => {
                        self.inventories_failed += 1;
                        Ok(Stepped::InventoryFailed(err))
                    }
                }
            }
        }
    }

    /// The report now: call sites quiet past their time are forgotten first, and goroutine
    /// ancestry is attached where the report shows the need (see [`AncestryPolicy`]).
    pub fn report(&mut self) -> anyhow::Result<Report> {
        let now = monotonic_ns();
        self.tracker.expire(now);
        let counters = self.tracer.counters()?;
        let resolver = LiveResolver { symbolizer: &self.symbolizer, containers: &self.containers };
        let mut report = Report::new(&self.tracker.snapshot(now), Some(counters), &self.thresholds, &resolver);
        self.ancestry.after_report(&mut report, &mut self.tracer, now);
        self.python.after_report(&mut report, &mut self.tracer);
        report.retain_workloads(&self.workload_filter);
        Ok(report)
    }

    /// Whether goroutine ancestry may be attached: then reports must come regularly, since
    /// they decide where it is.
    pub fn go_ancestry_wanted(&self) -> bool {
        self.go_ancestry != AncestryMode::Off
    }

    /// Forgets what no longer matters (see [`Tracker::expire`]) without building a report, and
    /// detaches the Python walk from processes that exited.
    pub fn expire(&mut self) {
        self.tracker.expire(monotonic_ns());
        self.python.detach_exited(&mut self.tracer);
    }

    /// Detaches the probes, applies what they still wrote, closes the recording, and returns the
    /// final report, whose counters balance.
    pub fn finish(self) -> anyhow::Result<(Report, KernelCounters)> {
        let Self {
            tracer, mut tracker, mut recorder, symbolizer, containers, workload_filter, thresholds, ancestry, mut python, mut batch, ..
        } = self;
        let counters = tracer.finish(&mut batch)?;
        for event in batch.drain(..) {
            let fed = Fed { tracker: &mut tracker, recorder: &mut recorder, symbolizer: &symbolizer, containers: &containers };
            feed(fed, (&mut python, None), event)?;
        }
        let end_ns = monotonic_ns();
        mark(&mut recorder, &Mark::Counters(counters))?;
        mark(&mut recorder, &Mark::End { ts_ns: end_ns })?;
        if let Some(recorder) = &mut recorder {
            std::io::Write::flush(recorder).context("--record: writing the recording")?;
        }
        containers.flush();
        let resolver = LiveResolver { symbolizer: &symbolizer, containers: &containers };
        let mut report = Report::new(&tracker.snapshot(end_ns), Some(counters), &thresholds, &resolver);
        ancestry.annotate(&mut report);
        python.annotate(&mut report);
        report.retain_workloads(&workload_filter);
        Ok((report, counters))
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn tracer_options(&self) -> &TracerOptions {
        self.tracer.options()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn symbolizer(&self) -> &Symbolizer {
        &self.symbolizer
    }

    /// Socket inventories applied, and those that could not be taken.
    pub fn inventories(&self) -> (u64, u64) {
        (self.inventories_taken, self.inventories_failed)
    }

    fn apply_batch(&mut self) -> anyhow::Result<()> {
        for event in self.batch.drain(..) {
            let fed =
                Fed { tracker: &mut self.tracker, recorder: &mut self.recorder, symbolizer: &self.symbolizer, containers: &self.containers };
            feed(fed, (&mut self.python, Some(&mut self.tracer)), event)?;
        }
        Ok(())
    }

    /// Applies an inventory; the recording is flushed with it, so a run killed mid-way leaves a
    /// recording complete up to its last inventory.
    fn inventory(&mut self, taken: Taken) -> anyhow::Result<()> {
        self.apply_inventory(taken)?;
        if let Some(recorder) = &mut self.recorder {
            std::io::Write::flush(recorder).context("--record: writing the recording")?;
        }
        Ok(())
    }

    fn apply_inventory(&mut self, taken: Taken) -> anyhow::Result<()> {
        match taken {
            Taken::Seed(inventory) => {
                for owner in inventory.sockets.iter().filter_map(|socket| socket.owner.as_ref()) {
                    self.containers.note_process(owner.pid, owner.start_ns, owner.cgroup_id);
                }
                self.tracker.seed(&inventory);
                mark(&mut self.recorder, &Mark::Seed(inventory))
            }
            Taken::Later(inventory) => {
                self.tracker.observe(&inventory);
                mark(&mut self.recorder, &Mark::Inventory(inventory))
            }
        }
    }
}

/// What an event is fed to.
struct Fed<'a> {
    tracker: &'a mut Tracker,
    recorder: &'a mut Option<BufWriter<File>>,
    symbolizer: &'a Symbolizer,
    containers: &'a Containers,
}

/// One event to the tracker and the recording, so a replay sees exactly what the tracker saw.
/// The Python policy registers a CPython process at its first event (with the tracer, while
/// the probes run), and its frames are named now, while the process runs.
fn feed(fed: Fed<'_>, (python, tracer): (&mut PythonPolicy, Option<&mut Tracer>), event: Event) -> anyhow::Result<()> {
    let Fed { tracker, recorder, symbolizer, containers } = fed;
    if let Some(open) = event.open() {
        // At the first sight of a process: capture its mappings and its cgroup while it runs.
        symbolizer.note_process(open.owner.pid, open.owner.process_start_ns);
        containers.note_process(open.owner.pid, open.owner.process_start_ns, open.owner.cgroup_id);
        python.on_open(&open.owner, tracer);
        if !open.python.is_empty() {
            let key = crate::symbolize::capture::ProcessKey { pid: open.owner.pid, start_ns: open.owner.process_start_ns };
            symbolizer.python_names().resolve(key, open.python.iter().map(|frame| (frame.code, frame.instr)));
        }
    }
    tracker.apply(&event);
    if let Some(recorder) = recorder.as_mut() {
        recording::write_line(recorder, &event).context("--record: writing the recording")?;
    }
    Ok(())
}

fn mark(recorder: &mut Option<BufWriter<File>>, mark: &Mark) -> anyhow::Result<()> {
    if let Some(recorder) = recorder.as_mut() {
        recording::write_line(recorder, mark).context("--record: writing the recording")?;
    }
    Ok(())
}
