//! What naming a CPython process's Python frames at connect and accept needs from userspace:
//! whether a process runs CPython and which version, where its runtime state is, the field
//! offsets the kernel's walk reads (`leaktrace-ebpf`, attached per process by
//! `kernel::python_frames`), and turning each frame the walk took (a code object's address and
//! the instruction it was at) into function, file and line while the process runs.
//!
//! - [`detect`]: CPython in a process, its version and `_PyRuntime`'s address;
//! - [`layout`]: the offsets of each version, 3.8 to 3.13, from CPython's headers;
//! - [`lines`]: line tables (`co_lnotab`, PEP 626's, 3.11's location table) to line numbers;
//! - [`code`]: code objects read from the process's memory;
//! - [`names`]: the frames named so far, by process, shared with the symbolizer;
//! - [`stack`]: Python frames joined to the native stack, as call sites are keyed;
//! - [`policy`]: which processes get the walk, and what their call sites are told.
pub mod code;
pub mod detect;
pub mod layout;
pub mod lines;
pub mod names;
pub mod policy;
pub mod stack;

pub use detect::{Detection, PythonProcess, detect};
pub use layout::PythonLayout;

/// A CPython version: `micro` when the binary stamps it (`Py_Version`, 3.11+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PythonVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: Option<u32>,
}

impl std::fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Python {}.{}", self.major, self.minor)?;
        if let Some(micro) = self.micro {
            write!(f, ".{micro}")?;
        }
        Ok(())
    }
}
