//! Registering a CPython process for Python frames at its connects and accepts: where its
//! interpreter keeps its threads' frame chains (`PythonOffsets`, found by `pyruntime` for the
//! process's version) goes into the `PYTHON_PROCESSES` map, which the probes consult by tgid.
//! No probe is attached per process: the walk runs in the probes that already see every open,
//! and a process that is not in the map pays one hash lookup.
use aya::maps::HashMap;
use leaktrace_common::{PYTHON_FRAME_WINDOW, PythonOffsets};

use super::Tracer;

const PYTHON_PROCESSES: &str = "PYTHON_PROCESSES";

#[derive(Debug, thiserror::Error)]
pub enum PythonFramesError {
    #[error("this kernel's verifier did not take the probes with the Python walk: {0}")]
    NotLoaded(String),
    #[error("this kernel's BTF has no task_struct.thread.fsbase (Python frames need x86_64 to find the calling thread)")]
    NoFsbase,
    #[error("pid 0 is not a process")]
    BadPid,
    #[error("the Python offsets for pid {pid} lack {what} (a bug in the offsets given)")]
    BadOffsets { pid: u32, what: &'static str },
    #[error("map {PYTHON_PROCESSES}: {0}")]
    Map(String),
}

impl Tracer {
    /// From now on, the connects and accepts of process `pid` carry the calling thread's Python
    /// frames, walked with `offsets` (whose `process_start_ns` must be the process's: a later
    /// process that reuses the pid is not walked). Registering a pid again replaces its offsets.
    pub fn attach_python(&mut self, pid: u32, offsets: PythonOffsets) -> Result<(), PythonFramesError> {
        if let Some(reason) = &self.python_frames_unavailable {
            return Err(PythonFramesError::NotLoaded(reason.clone()));
        }
        if self.kernel_offsets.task_thread_fsbase == 0 {
            return Err(PythonFramesError::NoFsbase);
        }
        if pid == 0 {
            return Err(PythonFramesError::BadPid);
        }
        check(pid, &offsets)?;
        self.mark_runtime_registered(leaktrace_common::runtimes::PYTHON).map_err(PythonFramesError::Map)?;
        let map = self.ebpf.map_mut(PYTHON_PROCESSES).ok_or_else(|| PythonFramesError::Map("missing".into()))?;
        let mut processes: HashMap<_, u32, PythonOffsets> =
            HashMap::try_from(map).map_err(|err| PythonFramesError::Map(err.to_string()))?;
        processes.insert(pid, offsets, 0).map_err(|err| PythonFramesError::Map(format!("full? {err}")))
    }

    /// Stops walking process `pid`'s Python frames (it exited, or its pid was reused).
    pub fn detach_python(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut(PYTHON_PROCESSES)
            && let Ok(mut processes) = HashMap::<_, u32, PythonOffsets>::try_from(map)
        {
            let _ = processes.remove(&pid);
        }
    }
}

/// What the walk cannot do without: an interpreter list to start from, an instruction field
/// the probe knows how to read, and frame fields inside the bytes it reads of each frame.
fn check(pid: u32, offsets: &PythonOffsets) -> Result<(), PythonFramesError> {
    let bad = |what| Err(PythonFramesError::BadOffsets { pid, what });
    if offsets.interpreters_head == 0 {
        return bad("the address of _PyRuntime.interpreters.head");
    }
    if offsets.process_start_ns == 0 {
        return bad("the process's start time");
    }
    if !matches!(offsets.frame_instr_size, 4 | 8) {
        return bad("an instruction field of 4 or 8 bytes");
    }
    let owner_end = if offsets.frame_owner == u32::MAX { 0 } else { offsets.frame_owner as u64 + 1 };
    let ends = [
        offsets.frame_code as u64 + 8,
        offsets.frame_previous as u64 + 8,
        offsets.frame_instr as u64 + offsets.frame_instr_size as u64,
        owner_end,
    ];
    if [offsets.frame_code, offsets.frame_previous, offsets.frame_instr].iter().any(|offset| offset % 8 != 0) {
        return bad("frame fields at multiples of 8 bytes (the walk reads them as aligned words)");
    }
    if ends.iter().any(|&end| end > PYTHON_FRAME_WINDOW as u64) {
        return bad("frame fields within the first 128 bytes of a frame (the bytes the walk reads)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_the_walk_cannot_use_are_refused() {
        let good = PythonOffsets { process_start_ns: 1, interpreters_head: 0x1000, frame_instr_size: 8, ..Default::default() };
        assert!(check(7, &good).is_ok());
        for (bad, what) in [
            (PythonOffsets { interpreters_head: 0, ..good }, "interpreters.head"),
            (PythonOffsets { process_start_ns: 0, ..good }, "start time"),
            (PythonOffsets { frame_instr_size: 2, ..good }, "4 or 8 bytes"),
            (PythonOffsets { frame_instr: 124, frame_instr_size: 4, ..good }, "multiples of 8"),
            (PythonOffsets { frame_instr: 128, ..good }, "first 128 bytes"),
            (PythonOffsets { frame_owner: 128, ..good }, "first 128 bytes"),
        ] {
            let message = check(7, &bad).unwrap_err().to_string();
            assert!(message.contains(what) && message.contains("pid 7"), "{message}");
        }
    }
}
