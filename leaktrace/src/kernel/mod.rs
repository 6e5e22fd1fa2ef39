//! The kernel side as userspace sees it: load the probes with this kernel's offsets, attach
//! each on the best hook this kernel offers, read the ring buffer in batches, and account for
//! every record (`produced = received + dropped`).
//!
//! The state probe, chosen at load time by what loads (not by kernel version):
//! 1. `tp_btf/inet_sock_set_state`, twice by default (two programs of the same logic): the
//!    kernel skips a program nested in itself, per program, so each covers the other's skips.
//!    The cheapest hook (the socket's fields are plain loads the verifier checks against BTF),
//!    and the one that can take the socket cookie;
//! 2. the classic tracepoint `sock:inet_sock_set_state` (tracefs): alone where `tp_btf` does
//!    not load, or beside it where a second `tp_btf` program does not.
//!
//! kprobes are not a fallback worth having: the tracepoints exist since 4.16, and some
//! kernels (CONFIG_KPROBES=n) have no kprobes at all.
//!
//! The accept probe uses `syscalls:sys_exit_accept4` / `sys_exit_accept` (tracefs). Accepts done
//! through io_uring use `io_uring:io_uring_submit_req` (the submitter and its stack) and
//! `io_uring:io_uring_complete` (the new fd), attached where this kernel has them, with what
//! they read found in their tracefs formats and BTF; without them only io_uring is untraced.
//!
//! Goroutine ancestry (`go_ancestry`) is a uprobe loaded at start and attached later, per Go
//! process, where it is wanted. Python frames (`python_frames`) need no probe of their own: a
//! CPython process registered in a map gets them walked by the probes that see its opens.

pub mod btf;
mod go_ancestry;
mod kernel_log;
mod loader;
pub mod privileges;
mod prog_info;
mod python_frames;
mod reader;
mod runtimes;
mod stats;
mod switch;
pub mod tracefs;

pub use go_ancestry::AncestryError;
pub use loader::{AttachedHook, LoadError, StateHook, Tracer, TracerOptions, Transitions};
pub use python_frames::PythonFramesError;
pub use reader::{KernelCounters, ReadError};
pub use stats::{MapMemory, ProgramStats, RunTimeStats, StatsError};
pub use switch::SwitchError;
