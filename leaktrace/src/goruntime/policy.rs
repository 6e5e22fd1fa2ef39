//! When goroutine ancestry is attached, and what each call site is told about it.
//!
//! A uprobe hit costs microseconds (about 16 us on a VM), paid at every goroutine creation of
//! the processes it is attached to, so it is not attached everywhere: with `auto` (the
//! default), only to a Go process once one of its connect call sites shows no application
//! frame (the dial ran on a goroutine a library spawned: gRPC, net/http); with `on`, to every Go
//! process that opens a connection; never with `off`. At most [`MAX_PROCESSES`] at once, and a
//! process that creates goroutines faster than its budget (`--go-ancestry-max-rate`) is detached
//! again, since it would pay that rate times the probe's cost. The connections opened by
//! goroutines created before the attach stay in their library-only call site, which says so
//! ([`AncestryStatus::NotRecorded`]).
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    sync::Arc,
};

use super::{GoProgram, Unsupported};
use crate::{
    kernel::Tracer,
    report::{AncestryNote, AncestryStatus, CallSite, Report},
    symbolize::{
        capture,
        telling::{Origin, origin},
    },
    tracker::{Direction, ProcessKey},
};

/// Most Go processes with ancestry attached at once.
pub const MAX_PROCESSES: usize = 64;

/// Most binaries whose inspection is remembered (past it, they are read again when needed).
const MAX_PROGRAMS: usize = 1024;

/// `--go-ancestry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AncestryMode {
    /// Attach to a Go process when one of its connect call sites has no application frame.
    #[default]
    Auto,
    /// Attach to every Go process that opens a connection.
    On,
    /// Never attach.
    Off,
}

enum ProcessAncestry {
    Attached {
        since_ns: u64,
        /// The goroutines it had created at `counted_ns`, for its rate.
        spawns: u64,
        counted_ns: u64,
    },
    Unavailable(String),
    /// Not a Go program: nothing to say.
    NotGo,
}

pub struct AncestryPolicy {
    mode: AncestryMode,
    /// Goroutine creations per second a process may make with ancestry attached.
    max_rate: f64,
    started_ns: u64,
    /// Inspections by the executable's (device, inode): each binary is read once.
    programs: HashMap<(u64, u64), Result<Arc<GoProgram>, Unsupported>>,
    processes: HashMap<ProcessKey, ProcessAncestry>,
}

impl AncestryPolicy {
    pub fn new(mode: AncestryMode, max_rate: f64, started_ns: u64) -> Self {
        Self { mode, max_rate, started_ns, programs: HashMap::new(), processes: HashMap::new() }
    }

    /// After each periodic report: detach from processes gone, attach where the report shows
    /// the need, and say on each Go call site what ancestry it has.
    pub fn after_report(&mut self, report: &mut Report, tracer: &mut Tracer, now_ns: u64) {
        self.forget_exited(tracer);
        // What is known of processes the tracker has forgotten is not needed any more.
        let tracked: HashSet<ProcessKey> =
            report.processes.iter().map(|process| ProcessKey { pid: process.pid, start_ns: process.start_ns }).collect();
        self.processes.retain(|key, state| matches!(state, ProcessAncestry::Attached { .. }) || tracked.contains(key));
        self.hold_to_budget(tracer, now_ns);
        if self.mode != AncestryMode::Off {
            for process in self.wanted(report) {
                let state = self.attach(process, tracer, now_ns);
                self.processes.insert(process, state);
            }
        }
        self.annotate(report);
    }

    /// Says on each Go call site what ancestry it has (the final report: nothing attaches).
    pub fn annotate(&self, report: &mut Report) {
        for site in &mut report.call_sites {
            let key = ProcessKey { pid: site.pid, start_ns: site.process_start_ns };
            let hops = site.frames.iter().filter_map(|frame| frame.spawned_by).max();
            site.go_ancestry = match self.processes.get(&key) {
                _ if site.direction != Direction::Connect || site.born_before_start => None,
                // Recorded while attached, whatever became of the process since.
                _ if hops.is_some() => Some(AncestryNote {
                    status: AncestryStatus::Joined,
                    detail: format!(
                        "the stack includes {} spawning goroutine(s), each at its go statement",
                        hops.unwrap_or_default()
                    ),
                }),
                Some(ProcessAncestry::Attached { since_ns, .. }) => Some(self.note_not_recorded(*since_ns)),
                Some(ProcessAncestry::Unavailable(reason)) => {
                    Some(AncestryNote { status: AncestryStatus::Unavailable, detail: reason.clone() })
                }
                Some(ProcessAncestry::NotGo) | None => None,
            };
        }
    }

    fn note_not_recorded(&self, since_ns: u64) -> AncestryNote {
        AncestryNote {
            status: AncestryStatus::NotRecorded,
            detail: format!(
                "attached {:.1}s after start; these connections came from goroutines created before that (or \
                 whose records were evicted), so only the dialing goroutine's stack is known",
                since_ns.saturating_sub(self.started_ns) as f64 / 1e9
            ),
        }
    }

    /// Detaches from processes creating goroutines faster than the budget, over the last
    /// second or more.
    fn hold_to_budget(&mut self, tracer: &mut Tracer, now_ns: u64) {
        for (key, state) in &mut self.processes {
            let ProcessAncestry::Attached { spawns, counted_ns, .. } = state else { continue };
            let elapsed_s = now_ns.saturating_sub(*counted_ns) as f64 / 1e9;
            if elapsed_s < 1.0 {
                continue;
            }
            let Some(count) = tracer.go_spawn_count(key.pid) else { continue };
            let rate = count.saturating_sub(*spawns) as f64 / elapsed_s;
            (*spawns, *counted_ns) = (count, now_ns);
            if rate > self.max_rate {
                tracer.detach_go_ancestry(key.pid);
                let reason = format!(
                    "detached: pid {} created {rate:.0} goroutines/s, over the budget of --go-ancestry-max-rate {} \
                     (each creation costs a uprobe hit)",
                    key.pid, self.max_rate
                );
                log::warn!("goroutine ancestry {reason}");
                *state = ProcessAncestry::Unavailable(reason);
            }
        }
    }

    /// Processes not decided yet whose call sites call for ancestry.
    fn wanted(&self, report: &Report) -> Vec<ProcessKey> {
        // Processes already decided (attached, detached, unavailable or not Go) stay decided.
        let mut wanted: Vec<ProcessKey> = report
            .call_sites
            .iter()
            .filter(|site| site.direction == Direction::Connect && !site.born_before_start && !site.frames.is_empty())
            .filter(|site| self.mode == AncestryMode::On || !has_application_frame(site))
            .map(|site| ProcessKey { pid: site.pid, start_ns: site.process_start_ns })
            .filter(|process| !self.processes.contains_key(process))
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }

    fn attach(&mut self, process: ProcessKey, tracer: &mut Tracer, now_ns: u64) -> ProcessAncestry {
        let program = match self.program_of(process.pid) {
            Ok(program) => program,
            Err(Unsupported::NotGo) => return ProcessAncestry::NotGo,
            Err(reason) => return ProcessAncestry::Unavailable(reason.to_string()),
        };
        let attached = self.processes.values().filter(|state| matches!(state, ProcessAncestry::Attached { .. })).count();
        if attached >= MAX_PROCESSES {
            return ProcessAncestry::Unavailable(format!(
                "not attached: already attached to {MAX_PROCESSES} processes, the most at once"
            ));
        }
        match tracer.attach_go_ancestry(process.pid, process.start_ns, &program) {
            Ok(()) => {
                log::info!(
                    "goroutine ancestry attached to pid {} ({} probes at runtime.newproc1's returns, layout from {})",
                    process.pid,
                    program.newproc1_returns.len(),
                    program.layout.source
                );
                ProcessAncestry::Attached { since_ns: now_ns, spawns: 0, counted_ns: now_ns }
            }
            Err(err) => {
                log::warn!("goroutine ancestry for pid {}: {err}", process.pid);
                ProcessAncestry::Unavailable(err.to_string())
            }
        }
    }

    fn program_of(&mut self, pid: u32) -> Result<Arc<GoProgram>, Unsupported> {
        let exe = format!("/proc/{pid}/exe");
        let metadata = std::fs::metadata(&exe).map_err(|err| Unsupported::Unreadable(format!("{exe}: {err}")))?;
        if self.programs.len() >= MAX_PROGRAMS {
            self.programs.clear();
        }
        self.programs
            .entry((metadata.dev(), metadata.ino()))
            .or_insert_with(|| GoProgram::inspect(exe.as_ref()).map(Arc::new))
            .clone()
    }

    /// Detaches from processes that exited (or whose pid now names another process).
    fn forget_exited(&mut self, tracer: &mut Tracer) {
        let gone: Vec<ProcessKey> = self
            .processes
            .iter()
            .filter(|(key, state)| {
                matches!(state, ProcessAncestry::Attached { .. })
                    && !capture::is_running(capture::ProcessKey { pid: key.pid, start_ns: key.start_ns })
            })
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            tracer.detach_go_ancestry(key.pid);
            self.processes.remove(&key);
        }
    }
}

/// Whether the site's own stack (before any goroutine ancestry) names the application.
fn has_application_frame(site: &CallSite) -> bool {
    site.frames.iter().filter(|frame| frame.spawned_by.is_none()).any(|frame| origin(frame) == Origin::Application)
}
