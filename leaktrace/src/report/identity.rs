//! A call site's identity across reports: what matches a call site of one report with the same
//! call site of another, for views that follow call sites over time (the interactive view's
//! history) and for comparing two reports (`leaktrace diff`).
use crate::tracker::Direction;

use super::CallSite;

/// The same call site in two reports of one run ([`SiteIdentity::exact`]), or the same code in
/// two runs of a program ([`SiteIdentity::portable`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteIdentity {
    /// The process: its pid and start time for an exact identity, its name for a portable one.
    pub process: ProcessIdentity,
    pub direction: Direction,
    pub born_before_start: bool,
    /// One text per frame, innermost first.
    pub frames: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcessIdentity {
    Instance { pid: u32, start_ns: u64 },
    Named { comm: String, container: Option<String> },
}

impl SiteIdentity {
    /// Within one run: the process instance and every frame's address, as the tracker tells
    /// call sites apart. A report read back from JSON has no start time; its pid stands alone.
    pub fn exact(site: &CallSite) -> Self {
        Self {
            process: ProcessIdentity::Instance { pid: site.pid, start_ns: site.process_start_ns },
            direction: site.direction,
            born_before_start: site.born_before_start,
            frames: site
                .frames
                .iter()
                .map(|frame| match frame.runtime {
                    // A Python frame's address is its code object's: its line tells its calls apart.
                    Some(_) => format!("{:#x}:{}", frame.address, frame.line.unwrap_or(0)),
                    None => format!("{:#x}/{}", frame.address, frame.spawned_by.unwrap_or(0)),
                })
                .collect(),
        }
    }

    /// Across runs (before and after a fix, two hosts): the process's name and container name,
    /// and each frame's function, never its address (which moves with every ASLR layout) nor
    /// its line (which moves with any edit above it). A frame without a function is named by
    /// its module. Call sites that differ only by lines share one portable identity.
    pub fn portable(site: &CallSite) -> Self {
        Self {
            process: ProcessIdentity::Named {
                comm: site.comm.clone(),
                container: site.container.as_ref().and_then(|workload| workload.name.clone()),
            },
            direction: site.direction,
            born_before_start: site.born_before_start,
            frames: site
                .frames
                .iter()
                .map(|frame| {
                    let name = frame.function.as_deref().or(frame.module.as_deref()).unwrap_or("?");
                    match frame.spawned_by {
                        Some(hop) => format!("{name} (spawned_by {hop})"),
                        None => name.to_string(),
                    }
                })
                .collect(),
        }
    }
}
