//! The command line: raw arguments parsed by clap, then validated once into the options the
//! tracer takes (a pid that does not exist or a cgroup path that is not one is an error here,
//! before anything is loaded).
use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::kernel::{StateHook, TracerOptions};

#[derive(Debug, Parser)]
#[command(name = "leaktrace", version, about = "Find the TCP connections a process opens and never closes (eBPF).")]
pub struct Cli {
    /// More diagnostics on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every kernel event as one JSON object per line on stdout (the debugging view, and
    /// the recording format for replay). Counters go to stderr, and a final
    /// `{"type":"counters",...}` line ends the stream.
    Events(EventsArgs),
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

/// What to trace and how: shared by every tracing command.
#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    /// Trace only this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace only tasks in this cgroup: a cgroup v2 path (/sys/fs/cgroup/...) or id (repeatable).
    #[arg(long = "cgroup", value_name = "PATH|ID")]
    pub cgroups: Vec<String>,
    /// Trace only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long, value_name = "KIB", default_value_t = 8192)]
    pub ring_buffer_kib: u32,
    /// Most sockets tracked at once in the kernel (excess is counted as socket_map_full).
    #[arg(long, value_name = "N", default_value_t = 131_072)]
    pub max_sockets: u32,
    /// Which hook carries TCP state changes.
    #[arg(long, value_enum, default_value_t = StateHook::Auto)]
    pub state_hook: StateHook,
    /// How often the ring buffer is drained when it has not filled enough to wake the reader.
    #[arg(long, value_name = "MS", default_value_t = 25)]
    pub drain_interval_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--cgroup {arg}: not a cgroup id or a cgroup v2 directory ({reason})")]
    Cgroup { arg: String, reason: String },
    #[error("--ring-buffer-kib {0}: must be a power of two of at least 4")]
    RingBuffer(u32),
    #[error("--duration {0}: must be a positive number of seconds")]
    Duration(f64),
    #[error("--drain-interval-ms must be at least 1")]
    DrainInterval,
}

impl TraceArgs {
    pub fn to_options(&self) -> Result<TracerOptions, ArgsError> {
        for &pid in &self.pids {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(ArgsError::NoSuchPid(pid));
            }
        }
        let cgroups = self.cgroups.iter().map(|arg| cgroup_id(arg)).collect::<Result<_, _>>()?;
        let kib = self.ring_buffer_kib;
        if !kib.is_power_of_two() || !(4..=(1 << 21)).contains(&kib) {
            return Err(ArgsError::RingBuffer(kib));
        }
        if self.drain_interval_ms == 0 {
            return Err(ArgsError::DrainInterval);
        }
        Ok(TracerOptions {
            pids: self.pids.clone(),
            cgroups,
            ports: self.ports.clone(),
            ring_buffer_bytes: kib * 1024,
            max_sockets: self.max_sockets,
            state_hook: self.state_hook,
            drain_interval: Duration::from_millis(self.drain_interval_ms),
        })
    }
}

/// A cgroup v2 id is the inode number of its directory.
fn cgroup_id(arg: &str) -> Result<u64, ArgsError> {
    if let Ok(id) = arg.parse::<u64>() {
        return Ok(id);
    }
    let error = |reason: String| ArgsError::Cgroup { arg: arg.to_string(), reason };
    let metadata = std::fs::metadata(arg).map_err(|err| error(err.to_string()))?;
    if !metadata.is_dir() {
        return Err(error("not a directory".into()));
    }
    Ok(metadata.ino())
}

pub fn parse_duration(seconds: Option<f64>) -> Result<Option<Duration>, ArgsError> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(ArgsError::Duration(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_args(extra: &[&str]) -> Result<TracerOptions, String> {
        let mut argv = vec!["leaktrace", "events"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Events(args) = cli.command;
        args.trace.to_options().map_err(|e| e.to_string())
    }

    #[test]
    fn filters_are_collected() {
        let me = std::process::id().to_string();
        let options = trace_args(&["--pid", &me, "--port", "80", "--port", "443", "--cgroup", "7"]).unwrap();
        assert_eq!(options.pids, vec![std::process::id()]);
        assert_eq!(options.ports, vec![80, 443]);
        assert_eq!(options.cgroups, vec![7]);
        assert_eq!(options.ring_buffer_bytes, 8 << 20);
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let err = trace_args(&["--pid", "4000000000"]).unwrap_err();
        assert!(err.contains("4000000000"), "{err}");
        let err = trace_args(&["--pid", "2147483646"]).unwrap_err();
        assert_eq!(err, "--pid 2147483646: no such process");
        let err = trace_args(&["--cgroup", "/nonexistent/cgroup"]).unwrap_err();
        assert!(err.starts_with("--cgroup /nonexistent/cgroup: not a cgroup id"), "{err}");
        let err = trace_args(&["--ring-buffer-kib", "1000"]).unwrap_err();
        assert!(err.contains("power of two"), "{err}");
        let err = trace_args(&["--port", "70000"]).unwrap_err();
        assert!(err.contains("70000"), "{err}");
        assert_eq!(parse_duration(Some(-1.0)).unwrap_err().to_string(), "--duration -1: must be a positive number of seconds");
    }
}
