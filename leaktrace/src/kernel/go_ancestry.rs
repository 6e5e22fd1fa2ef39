//! Attaching and detaching goroutine ancestry, one Go process at a time: its runtime's field
//! offsets go into the `GO_PROCESSES` map, and the `go_newproc1_return` uprobe is attached at
//! each RET of its `runtime.newproc1`, scoped to that process (other processes running the same
//! binary pay nothing). Which processes get it is decided above (`goruntime::policy`).
use std::{collections::HashMap as StdHashMap, num::NonZeroU32};

use aya::{
    maps::{HashMap, PerCpuHashMap, PerCpuValues},
    programs::{UProbe, uprobe::{UProbeLinkId, UProbeScope}},
};
use leaktrace_common::GoRuntimeOffsets;

use super::Tracer;
use crate::goruntime::GoProgram;

pub(super) const GO_NEWPROC1: &str = "go_newproc1_return";

/// The ancestry uprobes attached, per process.
#[derive(Default)]
pub(super) struct AncestryLinks {
    by_pid: StdHashMap<u32, Vec<UProbeLinkId>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AncestryError {
    #[error("the goroutine probe did not load on this kernel: {0}")]
    NotLoaded(String),
    #[error("this kernel's BTF has no task_struct.thread.fsbase (goroutine ancestry needs x86_64)")]
    NoFsbase,
    #[error("pid {0} is not a valid process id")]
    BadPid(u32),
    #[error("map GO_PROCESSES: {0}")]
    Map(String),
    #[error("attaching the goroutine probe to pid {pid} at offset {offset:#x} of /proc/{pid}/exe: {source}")]
    Attach {
        pid: u32,
        offset: u64,
        #[source]
        source: aya::programs::ProgramError,
    },
}

impl Tracer {
    /// Records every goroutine process `pid` (started at `process_start_ns`) creates from now
    /// on, with the spawner's stack, so its connects carry their ancestry.
    pub fn attach_go_ancestry(&mut self, pid: u32, process_start_ns: u64, program: &GoProgram) -> Result<(), AncestryError> {
        if let Some(reason) = &self.go_probe_unavailable {
            return Err(AncestryError::NotLoaded(reason.clone()));
        }
        if self.kernel_offsets.task_thread_fsbase == 0 {
            return Err(AncestryError::NoFsbase);
        }
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(AncestryError::BadPid(pid))?);
        let offsets = GoRuntimeOffsets {
            process_start_ns,
            g_goid: program.layout.g_goid,
            g_m: program.layout.g_m,
            m_curg: program.layout.m_curg,
            _pad: 0,
        };
        self.mark_runtime_registered(leaktrace_common::runtimes::GO).map_err(AncestryError::Map)?;
        let map = self.ebpf.map_mut("GO_PROCESSES").ok_or_else(|| AncestryError::Map("missing".into()))?;
        let mut processes: HashMap<_, u32, GoRuntimeOffsets> =
            HashMap::try_from(map).map_err(|err| AncestryError::Map(err.to_string()))?;
        processes.insert(pid, offsets, 0).map_err(|err| AncestryError::Map(format!("full? {err}")))?;
        self.reset_spawn_count(pid)?;
        let exe = format!("/proc/{pid}/exe");
        let mut links = Vec::with_capacity(program.newproc1_returns.len());
        let mut failure = None;
        {
            let probe: &mut UProbe = self.go_probe()?;
            for &offset in &program.newproc1_returns {
                match probe.attach(offset, &exe, scope) {
                    Ok(link) => links.push(link),
                    Err(source) => {
                        failure = Some(AncestryError::Attach { pid, offset, source });
                        break;
                    }
                }
            }
        }
        if let Some(failure) = failure {
            // All the returns or none: a goroutine created through an unprobed return would
            // silently lack its ancestry.
            self.detach_links(links);
            self.forget_go_process(pid);
            return Err(failure);
        }
        self.ancestry.by_pid.insert(pid, links);
        Ok(())
    }

    /// Detaches process `pid`'s ancestry probes (it exited, or its pid was reused).
    pub fn detach_go_ancestry(&mut self, pid: u32) {
        if let Some(links) = self.ancestry.by_pid.remove(&pid) {
            self.detach_links(links);
        }
        self.forget_go_process(pid);
    }

    /// Goroutines process `pid` created since its ancestry was attached (summed over CPUs).
    pub fn go_spawn_count(&self, pid: u32) -> Option<u64> {
        let map = self.ebpf.map("GO_SPAWNS")?;
        let counts = PerCpuHashMap::<_, u32, u64>::try_from(map).ok()?;
        counts.get(&pid, 0).ok().map(|values| values.iter().sum())
    }

    fn reset_spawn_count(&mut self, pid: u32) -> Result<(), AncestryError> {
        let error = |err: String| AncestryError::Map(format!("GO_SPAWNS: {err}"));
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| error(err.to_string()))?;
        let map = self.ebpf.map_mut("GO_SPAWNS").ok_or_else(|| error("missing".into()))?;
        let mut counts = PerCpuHashMap::<_, u32, u64>::try_from(map).map_err(|err| error(err.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|err| error(err.to_string()))?;
        counts.insert(pid, zeros, 0).map_err(|err| error(format!("full? {err}")))
    }

    fn go_probe(&mut self) -> Result<&mut UProbe, AncestryError> {
        self.ebpf
            .program_mut(GO_NEWPROC1)
            .ok_or_else(|| AncestryError::NotLoaded("missing from the eBPF object".into()))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| AncestryError::NotLoaded(err.to_string()))
    }

    fn detach_links(&mut self, links: Vec<UProbeLinkId>) {
        if let Ok(probe) = self.go_probe() {
            for link in links {
                if let Err(err) = probe.detach(link) {
                    log::debug!("detaching a goroutine probe: {err}");
                }
            }
        }
    }

    fn forget_go_process(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut("GO_PROCESSES")
            && let Ok(mut processes) = HashMap::<_, u32, GoRuntimeOffsets>::try_from(map)
        {
            let _ = processes.remove(&pid);
        }
        if let Some(map) = self.ebpf.map_mut("GO_SPAWNS")
            && let Ok(mut counts) = PerCpuHashMap::<_, u32, u64>::try_from(map)
        {
            let _ = counts.remove(&pid);
        }
    }
}

/// Loads the goroutine probe (attached later, per process); the reason where it cannot load.
pub(super) fn load_go_probe(ebpf: &mut aya::Ebpf) -> Option<String> {
    let program: &mut UProbe = match ebpf.program_mut(GO_NEWPROC1).map(TryInto::try_into) {
        Some(Ok(program)) => program,
        Some(Err(err)) => return Some(err.to_string()),
        None => return Some("missing from the eBPF object".into()),
    };
    program.load().err().map(|err| err.to_string())
}
