//! The command line: raw arguments parsed by clap, then validated once into the options the
//! tracer takes (a pid that does not exist or a cgroup path that is not one is an error here,
//! before anything is loaded).
use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    container::{PodNames, WorkloadFilter, cgroup::is_id_prefix},
    goruntime::policy::AncestryMode,
    kernel::{StateHook, TracerOptions, Transitions},
    span::Span,
    tracker::{Limits, Thresholds},
};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find the TCP connections a process opens and never closes (eBPF).",
    long_about = "Find the TCP connections a process opens and never closes (eBPF).\n\n\
        Without a subcommand, traces every TCP connection and shows, per call site, the \
        connections opened and never closed, refreshed every --interval, with a verdict \
        (leak, suspect, churn, ok). Ends with a final report at Ctrl-C or --duration.\n\n\
        Exit status: 0 no leak found, 1 leaks found, 2 error.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// More diagnostics on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every kernel event as one JSON object per line on stdout (the debugging view, and
    /// the recording format for replay). Counters go to stderr, and a final
    /// `{"type":"counters",...}` line ends the stream.
    Events(EventsArgs),
    /// Build the report from a recording (`leaktrace events > FILE` or `leaktrace --record
    /// FILE`), offline: an incident analysed after the fact, on another machine.
    Replay(ReplayArgs),
    /// Run as a node's agent: trace like the live view, without a terminal, and serve
    /// Prometheus metrics (/metrics), the JSON report (/api/v1/report), a pprof profile of live
    /// connections (/debug/pprof/connections), /healthz and /readyz over HTTP until SIGTERM or
    /// Ctrl-C.
    Agent(AgentArgs),
    /// Compare two reports call site by call site: what grew, shrank, is new or gone.
    ///
    /// As `pprof -diff_base` compares profiles. Each side is a `--format json` report, a `--format
    /// jsonl` stream (its last report, or the nearest to FILE@TIME) or a recording replayed to
    /// FILE@TIME (its end without one), e.g. `leaktrace diff rec.jsonl@10s rec.jsonl@60s`.
    /// Exit status: 1 when a call site AFTER judges a leak has more live connections than in
    /// BEFORE (or is new), 0 otherwise, 2 on error.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier report: FILE or FILE@TIME (TIME in seconds since the trace's start: 30, 30s).
    #[arg(value_name = "BEFORE")]
    pub before: String,
    /// The later report, the same way (it may be the same file at another time).
    #[arg(value_name = "AFTER")]
    pub after: String,
    /// How call sites are matched: `exact` (one run: pid and stack addresses), `portable` (two
    /// runs: program, container and function names; call sites sharing them are summed), `auto`
    /// (exact for two points of one file or a recording against a report, else portable).
    #[arg(long = "match", value_enum, value_name = "HOW", default_value_t = crate::diff::Matching::Auto)]
    pub matching: crate::diff::Matching,
    /// Also list the call sites whose live count did not change.
    #[arg(long)]
    pub all: bool,
    /// Output format: the table, or one JSON object (the documented contract).
    #[arg(long, value_enum, default_value_t = DiffFormat::Table)]
    pub format: DiffFormat,
    /// Keep only this process (repeatable), on both sides.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Replaying a recording, keep only connections with this local or remote port
    /// (repeatable): a recording's socket inventories list every connection of the host.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// How a recording is judged (a report carries its own verdicts); `--comm` keeps only these
    /// programs on both sides.
    #[command(flatten)]
    pub judge: JudgeArgs,
}

/// `leaktrace diff`'s output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    #[default]
    Table,
    Json,
}

/// The agent's port: the Prometheus exporters' range 9100-9999 is fully allocated, so past it.
pub const AGENT_DEFAULT_PORT: u16 = 10528;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Address and port the HTTP server listens on.
    #[arg(long, value_name = "ADDR:PORT", default_value_t = std::net::SocketAddr::from(([0, 0, 0, 0], AGENT_DEFAULT_PORT)))]
    pub listen: std::net::SocketAddr,
    /// Call sites (and processes) with series of their own in /metrics, most live then fastest
    /// growing first; the rest are summed into one `call_site="other"` (`comm="other"`) series.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub metrics_top: usize,
    /// Leave this label out of every metric, summing the series it told apart (repeatable):
    /// pid, comm, direction, call_site, verdict, container, pod, namespace.
    #[arg(long = "metrics-drop-label", value_name = "NAME")]
    pub metrics_drop_labels: Vec<String>,
    /// Do not list the connections that existed before start ("born before start").
    #[arg(long)]
    pub no_seed: bool,
    /// How often the socket inventory (idle times, connections closed unseen) is refreshed.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(2))]
    pub inventory_interval: Span,
    #[command(flatten)]
    pub go: GoAncestryArgs,
    #[command(flatten)]
    pub containers: ContainerArgs,
}

/// The live view (the default command).
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub view: ViewArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub containers: ContainerArgs,
    /// Stop after this long (`30s`, `5m`, `1h`, or seconds) and print the final report
    /// (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Span>,
    /// Also write everything traced (events, socket inventories, counters) to FILE as JSON
    /// lines, for `leaktrace replay FILE`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
    /// Do not list the connections that existed before start ("born before start").
    #[arg(long)]
    pub no_seed: bool,
    /// How often the socket inventory (idle times, connections closed unseen) is refreshed.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(2))]
    pub inventory_interval: Span,
    #[command(flatten)]
    pub go: GoAncestryArgs,
    /// With `--format table` on a terminal: the plain table redrawn every --interval, instead of
    /// the interactive view.
    #[arg(long)]
    pub plain: bool,
}

/// Goroutine ancestry: shared by the live view and the agent.
#[derive(Debug, Args, Clone)]
pub struct GoAncestryArgs {
    /// Goroutine ancestry for Go programs (the application's frame when gRPC or net/http dial on
    /// a goroutine of their own): `auto` attaches it to a Go process once one of its connect
    /// call sites has no application frame, `on` to every Go process that connects, `off` never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = AncestryMode::Auto)]
    pub go_ancestry: AncestryMode,
    /// Detach goroutine ancestry from a process creating more goroutines per second than this
    /// (each creation costs it a uprobe hit, a few microseconds).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 2000.0)]
    pub go_ancestry_max_rate: f64,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The recording (`-` for stdin).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// Keep only this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Keep only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Keep only tasks of this cgroup id (repeatable).
    #[arg(long = "cgroup", value_name = "ID")]
    pub cgroups: Vec<u64>,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub view: ViewArgs,
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The live table, refreshed in place on a terminal; the final report at the end.
    #[default]
    Table,
    /// Only the final report, as one JSON object (the documented contract).
    Json,
    /// One JSON report per line, every --interval, and the final one last (for streaming
    /// consumers).
    Jsonl,
}

#[derive(Debug, Args, Clone)]
pub struct ViewArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Refresh period of the table and of JSON lines (in a replay, of the recording's time).
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(1))]
    pub interval: Span,
    /// Most call sites shown in the table.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

/// Profiles of live connections by stack, written with the final report and rewritten at each
/// refresh (the live view's; a replay writes them once, at its end).
#[derive(Debug, Args, Clone, Default)]
pub struct ExportArgs {
    /// Write a pprof profile (gzipped profile.proto) of live connections by stack to FILE
    /// (`go tool pprof -http=: FILE`).
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<std::path::PathBuf>,
    /// Write a flame graph of live connections by stack to FILE (an SVG, for a browser); leaking
    /// call sites in red.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<std::path::PathBuf>,
}

/// What counts as a leak: the verdict rules' thresholds (see the README's verdict table).
#[derive(Debug, Args, Clone)]
pub struct JudgeArgs {
    /// Keep only processes with this name, as in /proc/PID/comm (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// A live connection younger than this is not counted as unclosed.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(2))]
    pub min_age: Span,
    /// Sliding window over which growth and churn are judged.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(10))]
    pub window: Span,
    /// `leak`: at least this many more live connections, rising in 3+ distinct seconds, with
    /// at most 10% closed.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub leak_growth: u64,
    /// `leak`: a connection left in CLOSE_WAIT (peer gone, never closed) for this long.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(10))]
    pub close_wait_after: Span,
    /// `suspect`: a live connection without data for this long counts as idle.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(60))]
    pub idle_after: Span,
    /// `churn`: at least this many connections opened per second...
    #[arg(long, value_name = "PER_SECOND", default_value_t = 1.0)]
    pub churn_rate: f64,
    /// ... with a median lifetime at most this.
    #[arg(long, value_name = "DURATION", default_value_t = Span::from_secs(1))]
    pub churn_lifetime: Span,
}

/// How much the tracker keeps: shared by the commands that track (live view, agent, replay).
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Most call sites kept without live connections (about 3 KiB each); past it the quietest
    /// are forgotten, and counted as evicted. Call sites with live connections are always kept.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_sites)]
    pub max_call_sites: usize,
}

/// Which containers to show, and where their names come from.
#[derive(Debug, Args, Clone, Default)]
pub struct ContainerArgs {
    /// Keep only this container: a prefix of its id, or its name in its pod (repeatable).
    #[arg(long = "container", value_name = "ID|NAME")]
    pub containers: Vec<String>,
    /// Keep only this Kubernetes pod, by name (repeatable).
    #[arg(long = "pod", value_name = "NAME")]
    pub pods: Vec<String>,
    /// Keep only pods of this Kubernetes namespace (repeatable).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Name containers from the Kubernetes API (this node's pods) even outside a cluster, with
    /// the current kubeconfig. In a cluster (KUBERNETES_SERVICE_HOST set) it is on by default.
    #[arg(long)]
    pub kubernetes: bool,
    /// The node whose pods are watched (default: the NODE_NAME environment variable).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub containers: ContainerArgs,
    /// Stop after this long (`30s`, `5m`, `1h`, or seconds; default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Span>,
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
    /// Which state transitions the probes send: `essential` (into ESTABLISHED, CLOSE_WAIT,
    /// CLOSE: what the leak tracker uses) or `all`. Default: `all` for `events`, `essential`
    /// for the live view.
    #[arg(long, value_enum, value_name = "WHICH")]
    pub transitions: Option<Transitions>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--cgroup {arg}: not a cgroup id or a cgroup v2 directory ({reason})")]
    Cgroup { arg: String, reason: String },
    #[error("--ring-buffer-kib {0}: must be a power of two of at least 4")]
    RingBuffer(u32),
    #[error("--drain-interval-ms must be at least 1")]
    DrainInterval,
    #[error("--{flag} {value}: must be longer than zero")]
    Zero { flag: &'static str, value: Span },
    #[error("--{flag} {value}: must be a whole number of seconds")]
    WholeSeconds { flag: &'static str, value: Span },
    #[error("--{flag} {value}: must be a positive number")]
    Positive { flag: &'static str, value: String },
    #[error("--{flag} {value:?}: not a valid {what}")]
    Name { flag: &'static str, value: String, what: &'static str },
    #[error(
        "--{flag} {value}: {what} come from the Kubernetes API, which is not used here\n\
         hint: run leaktrace in the cluster (KUBERNETES_SERVICE_HOST and NODE_NAME set), or pass --kubernetes --node NAME"
    )]
    NeedsKubernetes { flag: &'static str, value: String, what: &'static str },
    #[error("--kubernetes: which node's pods to watch is unknown\nhint: pass --node NAME or set NODE_NAME")]
    NoNode,
}

impl LimitArgs {
    /// The tracker's bounds.
    pub fn limits(&self) -> Result<Limits, ArgsError> {
        if self.max_call_sites == 0 {
            return Err(ArgsError::Positive { flag: "max-call-sites", value: "0".into() });
        }
        Ok(Limits { max_sites: self.max_call_sites, ..Limits::default() })
    }
}

impl JudgeArgs {
    pub fn thresholds(&self) -> Result<Thresholds, ArgsError> {
        let window = positive("window", self.window)?;
        if window.subsec_nanos() != 0 {
            return Err(ArgsError::WholeSeconds { flag: "window", value: self.window });
        }
        if self.leak_growth == 0 {
            return Err(ArgsError::Positive { flag: "leak-growth", value: "0".into() });
        }
        if !(self.churn_rate.is_finite() && self.churn_rate > 0.0) {
            return Err(ArgsError::Positive { flag: "churn-rate", value: self.churn_rate.to_string() });
        }
        let defaults = Thresholds::default();
        Ok(Thresholds {
            window,
            min_age: self.min_age.get(),
            leak_growth: self.leak_growth,
            close_wait_after: positive("close-wait-after", self.close_wait_after)?,
            idle_after: positive("idle-after", self.idle_after)?,
            churn_min_rate: self.churn_rate,
            churn_max_lifetime: positive("churn-lifetime", self.churn_lifetime)?,
            ..defaults
        })
    }
}

impl GoAncestryArgs {
    /// `--go-ancestry-max-rate`, which must be positive.
    pub fn go_ancestry_max_rate(&self) -> Result<f64, ArgsError> {
        let rate = self.go_ancestry_max_rate;
        if rate.is_finite() && rate > 0.0 {
            Ok(rate)
        } else {
            Err(ArgsError::Positive { flag: "go-ancestry-max-rate", value: rate.to_string() })
        }
    }
}

impl ContainerArgs {
    /// Where pod names come from in this environment (KUBERNETES_SERVICE_HOST, NODE_NAME), and
    /// the filters, checked against it.
    pub fn from_environment(&self) -> Result<(PodNames, WorkloadFilter), ArgsError> {
        let env = |name: &str| std::env::var(name).ok();
        let names = self.pod_names(env("KUBERNETES_SERVICE_HOST"), env("NODE_NAME"))?;
        let filter = self.filter(&names)?;
        Ok((names, filter))
    }

    /// Where pod names come from; `in_cluster` and `node_env` are KUBERNETES_SERVICE_HOST's and
    /// NODE_NAME's values.
    pub fn pod_names(&self, in_cluster: Option<String>, node_env: Option<String>) -> Result<PodNames, ArgsError> {
        let node = self.node.clone().or(node_env).filter(|node| !node.is_empty());
        let in_cluster = in_cluster.is_some_and(|host| !host.is_empty());
        match (self.kubernetes || in_cluster, node) {
            (false, _) => Ok(PodNames::Off),
            (true, Some(node)) => Ok(PodNames::Watch { node }),
            (true, None) if self.kubernetes => Err(ArgsError::NoNode),
            (true, None) => Ok(PodNames::NodeUnknown),
        }
    }

    /// The filters, checked: names must be Kubernetes names, and need the Kubernetes API.
    pub fn filter(&self, names: &PodNames) -> Result<WorkloadFilter, ArgsError> {
        let kubernetes = matches!(names, PodNames::Watch { .. });
        for container in &self.containers {
            if is_id_prefix(container) {
                continue;
            }
            let value = container.clone();
            if !is_dns_label(container) {
                return Err(ArgsError::Name { flag: "container", value, what: "container id prefix or name" });
            }
            if !kubernetes {
                return Err(ArgsError::NeedsKubernetes { flag: "container", value, what: "container names" });
            }
        }
        for (flag, values, (one, many), valid) in [
            ("pod", &self.pods, ("pod name", "pod names"), is_dns_subdomain as fn(&str) -> bool),
            ("namespace", &self.namespaces, ("namespace", "namespaces"), is_dns_label),
        ] {
            for value in values {
                if !valid(value) {
                    return Err(ArgsError::Name { flag, value: value.clone(), what: one });
                }
                if !kubernetes {
                    return Err(ArgsError::NeedsKubernetes { flag, value: value.clone(), what: many });
                }
            }
        }
        Ok(WorkloadFilter {
            containers: self.containers.clone(),
            pods: self.pods.clone(),
            namespaces: self.namespaces.clone(),
        })
    }
}

/// An RFC 1123 label, as Kubernetes names containers and namespaces.
fn is_dns_label(name: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| alphanumeric(b) || b == b'-')
        && name.bytes().next().is_some_and(alphanumeric)
        && name.bytes().last().is_some_and(alphanumeric)
}

/// An RFC 1123 subdomain, as Kubernetes names pods.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

impl ViewArgs {
    pub fn interval(&self) -> Result<Duration, ArgsError> {
        positive("interval", self.interval)
    }
}

/// A flag's duration, which must be longer than zero.
pub fn positive(flag: &'static str, value: Span) -> Result<Duration, ArgsError> {
    if value.get().is_zero() { Err(ArgsError::Zero { flag, value }) } else { Ok(value.get()) }
}

impl TraceArgs {
    /// The validated options; `--transitions` defaults to the command's `default_transitions`.
    pub fn to_options(&self, default_transitions: Transitions) -> Result<TracerOptions, ArgsError> {
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
            transitions: self.transitions.unwrap_or(default_transitions),
            user_stacks: true,
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

/// `--duration`, when given: longer than zero.
pub fn run_duration(value: Option<Span>) -> Result<Option<Duration>, ArgsError> {
    value.map(|span| positive("duration", span)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_args(extra: &[&str]) -> Result<TracerOptions, String> {
        let mut argv = vec!["leaktrace", "events"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(Command::Events(args)) = cli.command else { panic!("parsed as another command") };
        args.trace.to_options(Transitions::All).map_err(|e| e.to_string())
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
    fn transitions_default_to_the_commands_choice() {
        assert_eq!(trace_args(&[]).unwrap().transitions, Transitions::All);
        assert_eq!(trace_args(&["--transitions", "essential"]).unwrap().transitions, Transitions::Essential);
        let err = trace_args(&["--transitions", "some"]).unwrap_err();
        assert!(err.contains("invalid value 'some'"), "{err}");
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
        assert_eq!(run_duration(Some(Span::from_secs(0))).unwrap_err().to_string(), "--duration 0s: must be longer than zero");
    }

    #[test]
    fn durations_take_units_as_well_as_bare_seconds() {
        let args = watch(&["--duration", "30s", "--interval", "500ms", "--idle-after", "5m", "--window", "1m"]).unwrap();
        assert_eq!(run_duration(args.duration).unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(args.view.interval().unwrap(), Duration::from_millis(500));
        let thresholds = args.judge.thresholds().unwrap();
        assert_eq!((thresholds.idle_after, thresholds.window), (Duration::from_secs(300), Duration::from_secs(60)));
        let args = watch(&["--duration", "2.5", "--min-age", "0"]).unwrap();
        assert_eq!(run_duration(args.duration).unwrap(), Some(Duration::from_millis(2500)));
        assert_eq!(args.judge.thresholds().unwrap().min_age, Duration::ZERO);
        let err = watch(&["--duration", "5 parsecs"]).unwrap_err();
        assert!(err.contains("--duration") && err.contains("30s, 5m"), "{err}");
        let err = watch(&["--window", "1.5s"]).unwrap().judge.thresholds().unwrap_err().to_string();
        assert_eq!(err, "--window 1s 500ms: must be a whole number of seconds");
    }

    fn watch(extra: &[&str]) -> Result<WatchArgs, String> {
        let mut argv = vec!["leaktrace"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        assert!(cli.command.is_none());
        Ok(cli.watch)
    }

    #[test]
    fn the_live_view_is_the_default_command() {
        let args = watch(&["--format", "json", "--comm", "grpcleak", "--close-wait-after", "3", "--port", "9000"]).unwrap();
        assert_eq!(args.view.format, Format::Json);
        assert_eq!(args.trace.ports, vec![9000]);
        let thresholds = args.judge.thresholds().unwrap();
        assert_eq!(thresholds.close_wait_after, Duration::from_secs(3));
        assert_eq!(thresholds.window, Duration::from_secs(10));
        assert_eq!(args.judge.comms, vec!["grpcleak".to_string()]);
        assert_eq!(args.go.go_ancestry, AncestryMode::Auto);
        assert_eq!(watch(&["--go-ancestry", "off"]).unwrap().go.go_ancestry, AncestryMode::Off);
        let err = watch(&["--go-ancestry-max-rate", "0"]).unwrap().go.go_ancestry_max_rate().unwrap_err().to_string();
        assert_eq!(err, "--go-ancestry-max-rate 0: must be a positive number");
        // Watch flags do not mix with a subcommand.
        assert!(watch(&["--format", "json", "events"]).is_err());
        let err = watch(&["--interval", "0"]).unwrap().view.interval().unwrap_err().to_string();
        assert_eq!(err, "--interval 0s: must be longer than zero");
        let err = watch(&["--window", "0"]).unwrap().judge.thresholds().unwrap_err().to_string();
        assert_eq!(err, "--window 0s: must be longer than zero");
        assert!(watch(&["--format", "xml"]).unwrap_err().contains("possible values: table, json, jsonl"));
    }

    #[test]
    fn the_agent_listens_on_its_port_by_default_and_takes_the_live_views_flags() {
        let cli = Cli::try_parse_from(["leaktrace", "agent", "--port", "9000", "--leak-growth", "5"]).unwrap();
        let Some(Command::Agent(args)) = cli.command else { panic!("not agent") };
        assert_eq!(args.listen, "0.0.0.0:10528".parse().unwrap());
        assert_eq!((args.metrics_top, args.metrics_drop_labels.len()), (50, 0));
        assert_eq!(args.trace.ports, vec![9000]);
        assert_eq!(args.judge.thresholds().unwrap().leak_growth, 5);
        let cli = Cli::try_parse_from(["leaktrace", "agent", "--listen", "127.0.0.1:9", "--metrics-drop-label", "pid"]).unwrap();
        let Some(Command::Agent(args)) = cli.command else { panic!("not agent") };
        assert_eq!((args.listen.port(), args.metrics_drop_labels), (9, vec!["pid".to_string()]));
        let err = Cli::try_parse_from(["leaktrace", "agent", "--listen", "localhost"]).unwrap_err().to_string();
        assert!(err.contains("invalid value 'localhost' for '--listen <ADDR:PORT>'"), "{err}");
        // The live view's output flags are not the agent's.
        assert!(Cli::try_parse_from(["leaktrace", "agent", "--format", "json"]).is_err());
    }

    #[test]
    fn container_filters_are_checked_against_where_names_come_from() {
        let args = |extra: &[&str]| watch(extra).unwrap().containers;
        let in_cluster = Some("10.96.0.1".to_string());
        let node = Some("node-1".to_string());
        assert_eq!(args(&[]).pod_names(None, node.clone()).unwrap(), PodNames::Off);
        assert_eq!(args(&[]).pod_names(in_cluster.clone(), None).unwrap(), PodNames::NodeUnknown);
        let watching = args(&[]).pod_names(in_cluster.clone(), node.clone()).unwrap();
        assert_eq!(watching, PodNames::Watch { node: "node-1".into() });
        let flagged = args(&["--kubernetes", "--node", "n2"]).pod_names(None, node).unwrap();
        assert_eq!(flagged, PodNames::Watch { node: "n2".into() });
        let err = args(&["--kubernetes"]).pod_names(None, None).unwrap_err().to_string();
        assert!(err.starts_with("--kubernetes: which node's pods to watch is unknown"), "{err}");

        // Off a cluster: id prefixes only.
        let filter = args(&["--container", "5e687ed3"]).filter(&PodNames::Off).unwrap();
        assert_eq!(filter.containers, vec!["5e687ed3".to_string()]);
        let err = args(&["--container", "consumer"]).filter(&PodNames::Off).unwrap_err().to_string();
        assert!(err.starts_with("--container consumer: container names come from the Kubernetes API"), "{err}");
        let err = args(&["--pod", "orders-1"]).filter(&PodNames::NodeUnknown).unwrap_err().to_string();
        assert!(err.contains("hint: run leaktrace in the cluster"), "{err}");
        // In a cluster: names, checked.
        let names = args(&["--container", "consumer", "--pod", "orders-1.x", "--namespace", "shop"]);
        let filter = names.filter(&watching).unwrap();
        assert_eq!((filter.pods.len(), filter.namespaces.len()), (1, 1));
        let err = args(&["--namespace", "Shop"]).filter(&watching).unwrap_err().to_string();
        assert_eq!(err, "--namespace \"Shop\": not a valid namespace");
        let err = args(&["--container", "my_app"]).filter(&watching).unwrap_err().to_string();
        assert_eq!(err, "--container \"my_app\": not a valid container id prefix or name");
        assert!(args(&["--pod", &"a".repeat(64)]).filter(&watching).is_err());
    }

    #[test]
    fn replay_takes_a_file_and_userspace_filters() {
        let cli = Cli::try_parse_from(["leaktrace", "replay", "trace.jsonl", "--pid", "7", "--format", "jsonl"]).unwrap();
        let Some(Command::Replay(args)) = cli.command else { panic!("not replay") };
        assert_eq!(args.file, std::path::PathBuf::from("trace.jsonl"));
        assert_eq!((args.pids, args.view.format), (vec![7], Format::Jsonl));
    }
}
