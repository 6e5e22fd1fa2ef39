//! The Python frames named so far, by process: filled at event time, while the process runs
//! (a code object is read once, its frames' lines computed once per instruction), read by the
//! symbolizer when it builds a report, after the process may have exited. Shared between the
//! event loop and the symbolizer thread.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{
    PythonProcess,
    code::{CodeObject, Memory},
};
use crate::symbolize::capture::{self, ProcessKey};

/// Most frames remembered across processes; past it, those of exited processes are forgotten.
const MAX_FRAMES: usize = 200_000;

/// One named Python frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFrame {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

struct Process {
    python: PythonProcess,
    memory: Option<Memory>,
    /// By code object address: `None` when it could not be read (not retried).
    codes: HashMap<u64, Option<Arc<CodeObject>>>,
    /// By (code object address, instruction).
    frames: HashMap<(u64, u64), Arc<NamedFrame>>,
}

/// The frames of the processes registered with [`FrameNames::register`].
#[derive(Default)]
pub struct FrameNames {
    processes: Mutex<HashMap<ProcessKey, Process>>,
    /// Frames named since the total was last counted.
    named: AtomicUsize,
}

impl FrameNames {
    /// A CPython process whose frames will be named.
    pub fn register(&self, key: ProcessKey, python: PythonProcess) {
        let memory = Memory::open(key.pid).map_err(|err| log::warn!("Python frames of pid {}: /proc/{}/mem: {err}", key.pid, key.pid)).ok();
        let mut processes = self.lock();
        processes.entry(key).or_insert(Process { python, memory, codes: HashMap::new(), frames: HashMap::new() });
    }

    pub fn is_registered(&self, key: ProcessKey) -> bool {
        self.lock().contains_key(&key)
    }

    /// Names the frames `(code, instr)` of an event of `key` now, while the process runs.
    pub fn resolve(&self, key: ProcessKey, frames: impl IntoIterator<Item = (u64, u64)>) {
        let mut processes = self.lock();
        // Counted every 1024 frames named, not at every event.
        if self.named.load(Ordering::Relaxed) >= 1024 {
            self.named.store(0, Ordering::Relaxed);
            let total: usize = processes.values().map(|process| process.frames.len()).sum();
            if total >= MAX_FRAMES {
                processes.retain(|key, _| capture::is_running(*key));
            }
        }
        let Some(process) = processes.get_mut(&key) else { return };
        for (code, instr) in frames {
            if process.frames.contains_key(&(code, instr)) {
                continue;
            }
            let Some(memory) = &process.memory else { return };
            let object = process
                .codes
                .entry(code)
                .or_insert_with(|| {
                    memory
                        .code_object(&process.python, code)
                        .map_err(|err| log::debug!("Python frame of pid {}: {err}", key.pid))
                        .ok()
                        .map(Arc::new)
                })
                .clone();
            let Some(object) = object else { continue };
            let line = object.line(process.python.layout, code, instr);
            let named = NamedFrame { function: object.function.clone(), file: object.file.clone(), line };
            process.frames.insert((code, instr), Arc::new(named));
            self.named.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The name of a frame [`FrameNames::resolve`] saw.
    pub fn frame(&self, key: ProcessKey, code: u64, instr: u64) -> Option<Arc<NamedFrame>> {
        self.lock().get(&key)?.frames.get(&(code, instr)).cloned()
    }

    /// Forgets an exited process once nothing reports its connections any more.
    pub fn forget(&self, key: ProcessKey) {
        self.lock().remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessKey, Process>> {
        self.processes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
