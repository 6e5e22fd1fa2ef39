//! The report: a tracker snapshot made readable. Stacks become frames (through a
//! [`Resolver`]), figures get units, and the whole is either the JSON contract of
//! `--format json` (one object, `version: 1`), one JSON line per refresh (`--format jsonl`),
//! or the live table ([`table`]).
pub mod identity;
pub mod table;

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use crate::{
    container::{Containers, Workload, WorkloadFilter},
    kernel::KernelCounters,
    symbolize::{Frame, StackRequest, SymbolizedStack, Symbolizer},
    tracker::{Direction, Finding, Lifetimes, ProcessKey, ProcessView, SiteView, Snapshot, Thresholds, TrackerStats, Verdict},
};

pub const REPORT_VERSION: u32 = 1;

/// Turns stacks into frames and processes into executables.
pub trait Resolver {
    /// One symbolized stack per requested stack, in order.
    fn resolve(&self, stacks: &[(ProcessKey, Arc<[u64]>)]) -> Vec<SymbolizedStack>;
    /// The process's executable, if known.
    fn exe(&self, process: ProcessKey) -> Option<String>;
    /// The container the process runs in; `None` on the host or where unknown (a replay).
    fn container(&self, _process: ProcessKey) -> Option<Workload> {
        None
    }
}

/// For recordings replayed where their processes are gone: frames are bare addresses.
pub struct AddressesOnly;

impl Resolver for AddressesOnly {
    fn resolve(&self, stacks: &[(ProcessKey, Arc<[u64]>)]) -> Vec<SymbolizedStack> {
        stacks.iter().map(|(_, stack)| SymbolizedStack::addresses_only(stack)).collect()
    }

    fn exe(&self, _: ProcessKey) -> Option<String> {
        None
    }
}

/// The live view's: the symbolizer, which captured each process at its first event.
impl Resolver for Symbolizer {
    fn resolve(&self, stacks: &[(ProcessKey, Arc<[u64]>)]) -> Vec<SymbolizedStack> {
        let requests = stacks
            .iter()
            .map(|(process, stack)| StackRequest { pid: process.pid, process_start_ns: process.start_ns, stack: stack.to_vec() })
            .collect();
        self.symbolize(requests)
    }

    fn exe(&self, process: ProcessKey) -> Option<String> {
        self.executable(process.pid, process.start_ns)
    }
}

/// The live view's: frames and executables from the symbolizer, containers from the container
/// resolver; both captured each process at its first event.
pub struct LiveResolver<'a> {
    pub symbolizer: &'a Symbolizer,
    pub containers: &'a Containers,
}

impl Resolver for LiveResolver<'_> {
    fn resolve(&self, stacks: &[(ProcessKey, Arc<[u64]>)]) -> Vec<SymbolizedStack> {
        self.symbolizer.resolve(stacks)
    }

    fn exe(&self, process: ProcessKey) -> Option<String> {
        self.symbolizer.exe(process)
    }

    fn container(&self, process: ProcessKey) -> Option<Workload> {
        self.containers.workload(process.pid, process.start_ns)
    }
}

/// The `--format json` report and each `--format jsonl` line.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Report {
    pub version: u32,
    pub duration_s: f64,
    /// Kernel-side accounting: produced = received + lost. Absent in a replay of a recording
    /// that has no counters line.
    pub events: Option<KernelCounters>,
    pub tracker: TrackerStats,
    pub thresholds: Thresholds,
    /// Most live first.
    pub call_sites: Vec<CallSite>,
    pub processes: Vec<ProcessView>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CallSite {
    pub pid: u32,
    /// With `pid`, the process's identity (CLOCK_MONOTONIC ns, as the events give it).
    #[serde(skip)]
    pub process_start_ns: u64,
    pub comm: String,
    pub exe: Option<String>,
    /// The process's container (`null` on the host).
    pub container: Option<Workload>,
    pub direction: Direction,
    /// Innermost first. Empty for connections born before start (no stack was seen).
    pub frames: Vec<Frame>,
    /// Index in `frames` of the most telling frame.
    pub telling_frame: Option<usize>,
    pub stack_truncated: bool,
    /// Why there is no stack: the negative errno of the kernel's stack capture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<i32>,
    /// Connections that existed before tracing started: counted, never given a stack or a
    /// lifetime.
    pub born_before_start: bool,
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub live: u64,
    pub close_wait: u64,
    /// Connections in CLOSE_WAIT longer than the threshold.
    pub close_wait_stuck: u64,
    /// The oldest live connection's age; 0 with none live. For connections born before start,
    /// a lower bound: the time since tracing started.
    pub oldest_age_s: f64,
    pub oldest_close_wait_s: Option<f64>,
    /// Growth of live connections per second over the window (negative: shrinking).
    pub growth_per_s: f64,
    pub window: WindowCounts,
    /// Live connections whose idle time is known, and those idle past the threshold.
    pub idle_known: u64,
    pub idle_live: u64,
    pub max_idle_s: Option<f64>,
    pub lifetime_s: Option<Lifetimes>,
    pub destinations: Vec<DestinationCount>,
    pub verdict: Verdict,
    /// Every rule that matched, most severe first: the verdict's reasons.
    pub findings: Vec<Finding>,
    /// For a Go process's connects: whether the frames include the goroutines that spawned
    /// the dialing one, and why not when they do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_ancestry: Option<AncestryNote>,
    /// For a CPython process's call site without Python frames: why it has none (a version
    /// leaktrace cannot walk, or connections opened before the process was registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_frames: Option<String>,
}

/// What a call site's stack holds of its goroutine ancestry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AncestryNote {
    pub status: AncestryStatus,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AncestryStatus {
    /// The frames include the spawning goroutines' (marked `spawned_by`).
    Joined,
    /// Ancestry is attached to the process, but these connections' goroutines were created
    /// before (or their records were evicted).
    NotRecorded,
    /// Ancestry cannot be had for this process; `detail` says why.
    Unavailable,
}

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct WindowCounts {
    pub span_s: f64,
    pub opened: u64,
    pub closed: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DestinationCount {
    /// `ip:port` for connects, `ip` for accepts (the clients' ports are ephemeral), `other`
    /// for the sum past the tracked ones.
    pub address: String,
    pub live: u64,
    pub opened: u64,
}

impl Report {
    pub fn new(snapshot: &Snapshot, counters: Option<KernelCounters>, thresholds: &Thresholds, resolver: &dyn Resolver) -> Self {
        let stacks: Vec<(ProcessKey, Arc<[u64]>)> =
            snapshot.sites.iter().map(|site| (site.process, Arc::clone(&site.stack))).collect();
        let resolved = resolver.resolve(&stacks);
        let duration_s = snapshot.now_ns.saturating_sub(snapshot.started_ns) as f64 / 1e9;
        let call_sites = snapshot
            .sites
            .iter()
            .zip(resolved)
            .map(|(site, stack)| CallSite::new(site, stack, resolver, duration_s))
            .collect();
        let mut processes = snapshot.processes.clone();
        for process in &mut processes {
            process.container = resolver.container(ProcessKey { pid: process.pid, start_ns: process.start_ns });
        }
        Self {
            version: REPORT_VERSION,
            duration_s,
            events: counters,
            tracker: snapshot.stats,
            thresholds: thresholds.clone(),
            call_sites,
            processes,
        }
    }

    /// Keeps the call sites and processes of the containers `filter` wants (`--container`,
    /// `--pod`, `--namespace`).
    pub fn retain_workloads(&mut self, filter: &WorkloadFilter) {
        if filter.is_empty() {
            return;
        }
        self.call_sites.retain(|site| filter.wants(site.container.as_ref()));
        self.processes.retain(|process| filter.wants(process.container.as_ref()));
    }

    pub fn leaks(&self) -> usize {
        self.call_sites.iter().filter(|site| site.verdict == Verdict::Leak).count()
    }
}

impl CallSite {
    fn new(site: &SiteView, stack: SymbolizedStack, resolver: &dyn Resolver, duration_s: f64) -> Self {
        let facts = &site.facts;
        let oldest_age_s = if site.born_before_start && facts.live > 0 { duration_s } else { facts.oldest_age_s.unwrap_or(0.0) };
        Self {
            pid: site.process.pid,
            process_start_ns: site.process.start_ns,
            comm: site.comm.clone(),
            exe: resolver.exe(site.process),
            container: resolver.container(site.process),
            direction: site.direction,
            frames: stack.frames,
            telling_frame: stack.telling_frame,
            stack_truncated: stack.truncated,
            stack_error: site.stack_error,
            born_before_start: site.born_before_start,
            opened: facts.opened,
            closed: facts.closed,
            failed: facts.failed,
            live: facts.live,
            close_wait: facts.close_wait,
            close_wait_stuck: facts.close_wait_stuck,
            oldest_age_s,
            oldest_close_wait_s: facts.oldest_close_wait_s,
            growth_per_s: facts.window.growth_per_s,
            window: WindowCounts { span_s: facts.window.span_s, opened: facts.window.opened, closed: facts.window.closed },
            idle_known: facts.idle_known,
            idle_live: facts.idle_live,
            max_idle_s: site.max_idle_s,
            lifetime_s: site.lifetimes,
            destinations: site.destinations.iter().map(|(addr, dest)| destination(site.direction, *addr, dest.live, dest.opened)).collect(),
            verdict: site.verdict,
            findings: site.findings.clone(),
            go_ancestry: None,
            python_frames: None,
        }
    }

    /// The frame to name this call site by, as short text.
    pub fn telling_frame_text(&self) -> String {
        if self.born_before_start {
            return "(born before start)".to_string();
        }
        // A stack nothing could be said about still names its innermost address.
        let Some(frame) = self.telling_frame.and_then(|index| self.frames.get(index)).or(self.frames.first()) else {
            return match self.stack_error {
                Some(errno) => format!("(no stack: error {errno})"),
                None => "(no stack)".to_string(),
            };
        };
        frame.short()
    }

    /// The stack as `perf script` / `pprof -traces` lines, the telling frame marked.
    pub fn trace_lines(&self) -> Vec<String> {
        let stack = SymbolizedStack {
            frames: self.frames.clone(),
            telling_frame: self.telling_frame,
            truncated: self.stack_truncated,
        };
        stack.trace_lines()
    }
}

fn destination(direction: Direction, addr: Option<SocketAddr>, live: u64, opened: u64) -> DestinationCount {
    let address = match (addr, direction) {
        (None, _) => "other".to_string(),
        (Some(addr), Direction::Accept) => addr.ip().to_string(),
        (Some(addr), Direction::Connect) => addr.to_string(),
    };
    DestinationCount { address, live, opened }
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
pub(crate) mod testing;
