//! What goroutine ancestry needs to know about a Go program, read from its binary without
//! touching the process: the Go version, where `runtime.newproc1` returns (the uprobes' file
//! offsets) and the runtime structures' field offsets the probes read (`runtime.g.goid`,
//! `runtime.g.m`, `runtime.m.curg`). The kernel side is `leaktrace-ebpf/src/goroutines.rs`; the
//! attaching, per process, is `kernel::go_ancestry`.
//!
//! - [`buildinfo`]: the version the toolchain stamped into `.go.buildinfo`;
//! - [`layout`]: field offsets from the binary's DWARF, else a table by version (stripped
//!   binaries keep no DWARF);
//! - [`returns`]: the RET instructions of a function, by decoding its machine code;
//! - [`policy`]: which processes get ancestry, and what each call site is told about it.
pub mod buildinfo;
pub mod layout;
pub mod policy;
pub mod returns;

use std::{fs::File, path::Path};

pub use buildinfo::GoVersion;
pub use layout::{LayoutSource, RuntimeLayout};

use crate::symbolize::gopclntab::GoTable;

/// The function whose returns see every new goroutine (the new g in RAX).
pub const NEWPROC1: &str = "runtime.newproc1";

/// A Go program goroutine ancestry can be attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoProgram {
    pub version: Option<GoVersion>,
    /// File offsets of `runtime.newproc1`'s RET instructions.
    pub newproc1_returns: Vec<u64>,
    pub layout: RuntimeLayout,
}

/// Why goroutine ancestry cannot be attached to a program: said to the user per process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("not a Go program")]
    NotGo,
    #[error("cannot read the binary: {0}")]
    Unreadable(String),
    #[error("goroutine ancestry is implemented for amd64 only; this binary is {0}")]
    Architecture(String),
    #[error("{version} is older than Go 1.18, whose runtime.newproc1 leaktrace does not know")]
    TooOld { version: GoVersion },
    #[error("runtime.newproc1 is not in the binary's function table")]
    NoNewproc1,
    #[error("no RET instruction decoded in runtime.newproc1")]
    NoReturns,
    #[error("{0}")]
    Layout(#[from] layout::LayoutError),
}

impl GoProgram {
    /// Reads what ancestry needs from the executable at `path` (for a running process,
    /// `/proc/PID/exe` works across mount namespaces).
    pub fn inspect(path: &Path) -> Result<Self, Unsupported> {
        let file = File::open(path).map_err(|err| Unsupported::Unreadable(format!("{}: {err}", path.display())))?;
        // SAFETY: read-only, private; a binary rewritten while mapped gives wrong offsets that the
        // attach then rejects, not unsoundness (every read is bounds-checked).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|err| Unsupported::Unreadable(err.to_string()))?;
        let elf = object::File::parse(&*map).map_err(|_| Unsupported::NotGo)?;
        let version = buildinfo::version(&elf);
        let table = GoTable::open_any(&file).ok_or(Unsupported::NotGo)?;
        if version.is_none() && table.function_named("runtime.main").is_none() {
            return Err(Unsupported::NotGo);
        }
        use object::Object;
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(Unsupported::Architecture(format!("{:?}", elf.architecture()).to_lowercase()));
        }
        if let Some(version) = version
            && version < GoVersion::new(1, 18)
        {
            return Err(Unsupported::TooOld { version });
        }
        let function = table.function_named(NEWPROC1).ok_or(Unsupported::NoNewproc1)?;
        let code = table.bytes_at(function.clone()).ok_or(Unsupported::NoNewproc1)?;
        let newproc1_returns: Vec<u64> = returns::ret_addresses(code, function.start)
            .into_iter()
            .filter_map(|address| table.address_to_file_offset(address))
            .collect();
        if newproc1_returns.is_empty() {
            return Err(Unsupported::NoReturns);
        }
        let layout = RuntimeLayout::of(&elf, version)?;
        Ok(Self { version, newproc1_returns, layout })
    }
}
