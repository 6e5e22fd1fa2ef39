//! leaktrace: finds the connections a process opens and never closes, from outside the
//! process, with eBPF. The binary is thin; everything lives in these modules.
//!
//! - [`kernel`]: loads and attaches the probes, reads the ring buffer and the counters.
//! - [`decode`] / [`event`]: ring-buffer records to aya-free [`event::Event`]s.
//! - [`cli`] and [`commands`]: the command line.
//! - [`host_access`]: what a container running leaktrace must be granted, and why.
//! - [`diff`]: `leaktrace diff`, two reports compared call site by call site.
//! - [`agent`]: `leaktrace agent`, the long-running mode serving metrics and the report over HTTP.
//! - [`tui`]: the interactive live view on a terminal.
pub mod agent;
pub mod cli;
pub mod commands;
pub mod container;
pub mod decode;
pub mod diff;
pub mod event;
pub mod export;
pub mod goruntime;
pub mod pyruntime;
pub mod host_access;
pub mod inventory;
pub mod kernel;
pub mod tcp;
pub mod tracker;
pub mod report;
pub mod recording;
pub mod span;
pub mod symbolize;
pub mod tui;
