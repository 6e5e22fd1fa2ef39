//! When goroutine ancestry is attached, and what each call site is told about it.
//!
//! A uprobe hit costs microseconds (about 16 us on a VM), paid at every goroutine creation of
//! the processes it is attached to, so it is not attached everywhere: with `auto` (the
//! default), only to a Go process once one of its connect call sites shows no application
//! frame (the dial ran on a goroutine a library spawned: gRPC, net/http); with `on`, to every Go
//! process that opens a connection; never with `off`. At most [`MAX_PROCESSES`] at once. The
//! connections opened by goroutines created before the attach stay in their library-only call
//! site, which says so ([`AncestryStatus::NotRecorded`]).
use std::{
    collections::HashMap,
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
    Attached { since_ns: u64 },
    Unavailable(String),
    /// Not a Go program: nothing to say.
    NotGo,
}

pub struct AncestryPolicy {
    mode: AncestryMode,
    started_ns: u64,
    /// Inspections by the executable's (device, inode): each binary is read once.
    programs: HashMap<(u64, u64), Result<Arc<GoProgram>, Unsupported>>,
    processes: HashMap<ProcessKey, ProcessAncestry>,
}

impl AncestryPolicy {
    pub fn new(mode: AncestryMode, started_ns: u64) -> Self {
        Self { mode, started_ns, programs: HashMap::new(), processes: HashMap::new() }
    }

    /// After each periodic report: detach from processes gone, attach where the report shows
    /// the need, and say on each Go call site what ancestry it has.
    pub fn after_report(&mut self, report: &mut Report, tracer: &mut Tracer, now_ns: u64) {
        self.forget_exited(tracer);
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
            site.go_ancestry = match self.processes.get(&key) {
                _ if site.direction != Direction::Connect || site.born_before_start => None,
                Some(ProcessAncestry::Attached { since_ns }) => Some(self.note_attached(site, *since_ns)),
                Some(ProcessAncestry::Unavailable(reason)) => {
                    Some(AncestryNote { status: AncestryStatus::Unavailable, detail: reason.clone() })
                }
                Some(ProcessAncestry::NotGo) | None => None,
            };
        }
    }

    fn note_attached(&self, site: &CallSite, since_ns: u64) -> AncestryNote {
        let hops = site.frames.iter().filter_map(|frame| frame.spawned_by).max();
        match hops {
            Some(hops) => AncestryNote {
                status: AncestryStatus::Joined,
                detail: format!("the stack includes {hops} spawning goroutine(s), each at its go statement"),
            },
            None => AncestryNote {
                status: AncestryStatus::NotRecorded,
                detail: format!(
                    "goroutine ancestry was attached {:.1}s after start: these connections came from goroutines \
                     created before that (or whose records were evicted), so only the dialing goroutine's stack is known",
                    since_ns.saturating_sub(self.started_ns) as f64 / 1e9
                ),
            },
        }
    }

    /// Processes not decided yet whose call sites call for ancestry.
    fn wanted(&self, report: &Report) -> Vec<ProcessKey> {
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
                "goroutine ancestry is already attached to {MAX_PROCESSES} processes, the most at once"
            ));
        }
        match tracer.attach_go_ancestry(process.pid, process.start_ns, &program) {
            Ok(()) => {
                log::info!(
                    "goroutine ancestry attached to pid {} ({} probes at runtime.newproc1's returns, layout from {:?})",
                    process.pid,
                    program.newproc1_returns.len(),
                    program.layout.source
                );
                ProcessAncestry::Attached { since_ns: now_ns }
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
