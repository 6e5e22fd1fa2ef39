//! Python frames at an open in a CPython process: the interpreter runs Python functions on
//! frames of its own, so the native stack at connect() names only the interpreter. Its frame
//! chain is walked here, in the opening thread, at the moment of the call.
use aya_ebpf::{macros::map, maps::HashMap};
use leaktrace_common::PythonOffsets;

/// The CPython processes registered for Python frames, by tgid, with where their interpreter
/// keeps its threads. Filled by userspace (`Tracer::attach_python`).
#[map]
pub static PYTHON_PROCESSES: HashMap<u32, PythonOffsets> = HashMap::with_max_entries(1024, 0);
