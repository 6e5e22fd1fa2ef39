//! The pieces every benchmark row is built from: the load generator (`loadgen`) and the
//! tracers under test (`leaktrace events` as shipped, `leaktrace-bench trace` for the paused
//! probes and the kernel's own statistics, bpftrace for the reference), each started, made
//! ready, and stopped with its CPU time accounted.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::children::{Finished, Running, Stdout};

/// How long a tracer may take to attach (bpftrace parses the kernel's BTF first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to detach, drain and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The live view's documented exit code when it found leaks.
pub const LEAKS_FOUND_EXIT_CODE: i32 = 1;

/// The release binaries the benchmark runs.
pub struct Binaries {
    pub leaktrace: PathBuf,
    pub bench: PathBuf,
    pub loadgen: PathBuf,
    /// The bpftrace script of the reference row.
    pub reference_script: PathBuf,
    /// An earlier commit's tracer, measured beside this one's (`--baseline`).
    pub baseline: Option<super::baseline::Baseline>,
}

/// What a `loadgen run` reported.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub connections: f64,
    pub conn_per_s: f64,
    pub seconds: f64,
    /// loadgen's own CPU time (user + system).
    pub cpu_s: f64,
}

/// One `loadgen run`: `args` after the defaults (2 client threads, 4 ports, normal close).
pub fn run_load(bins: &Binaries, args: &[String]) -> Result<LoadResult> {
    run_load_on(bins, args, None)
}

/// [`run_load`], with every thread of loadgen kept on CPU `cpu` when given (`taskset`).
pub fn run_load_on(bins: &Binaries, args: &[String], cpu: Option<usize>) -> Result<LoadResult> {
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("--cpu-list").arg(cpu.to_string()).arg(&bins.loadgen);
            taskset
        }
        None => Command::new(&bins.loadgen),
    };
    command.arg("run").args(args);
    let finished =
        Running::spawn("loadgen", &mut command, Stdout::Lines)?.wait(Duration::from_secs(600))?;
    if !finished.success {
        bail!("loadgen {} failed ({})", args.join(" "), finished.status);
    }
    let result = last_json(&finished, "result").context("loadgen printed no result")?;
    let number = |key: &str| result.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let load = LoadResult {
        connections: number("connections"),
        conn_per_s: number("conn_per_s"),
        seconds: number("seconds"),
        cpu_s: number("cpu_user_s") + number("cpu_sys_s"),
    };
    if load.connections < 1.0 || number("errors") > 0.0 {
        bail!("loadgen failed connections, so its figures would mislead: {result}");
    }
    let overflows = result
        .pointer("/tcp/listen_overflows")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    if overflows > 0.0 {
        say!(
            "bench: warning: {overflows} listen overflows (each a 1 s SYN retry) in loadgen {}",
            args.join(" ")
        );
    }
    Ok(load)
}

/// The last stdout line of `finished` that is a JSON object of type `kind`.
pub fn last_json(finished: &Finished, kind: &str) -> Option<Value> {
    finished
        .lines
        .iter()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|value| value.get("type").and_then(Value::as_str) == Some(kind))
}

/// A tracer variant of the throughput comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracerKind {
    /// No tracer.
    Untraced,
    /// `leaktrace --format jsonl` (the live view, a report a second), all processes, default
    /// settings, stdout to /dev/null: the product as it is left running.
    LiveView,
    /// The same, run by the `--baseline` commit's binary.
    BaselineLiveView,
    /// `leaktrace events`, all processes, default settings, stdout to /dev/null: every event
    /// as a JSON line.
    Events,
    /// `leaktrace-bench trace`: the same probes and reader, events decoded then dropped.
    Reader,
    /// `leaktrace-bench trace --paused`: probes attached, their switch off.
    Paused,
    /// bpftrace running `reference.bt`.
    Bpftrace,
}

impl TracerKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::LiveView => "traced: `leaktrace` live view (all processes)",
            Self::BaselineLiveView => "traced: the baseline's `leaktrace` live view (all processes)",
            Self::Events => "traced: `leaktrace events` (all processes, every event as JSON)",
            Self::Reader => "traced: probes + reader only (no output)",
            Self::Paused => "probes attached, paused by their switch",
            Self::Bpftrace => "bpftrace reference script",
        }
    }
}

/// A running tracer.
pub struct Tracer {
    running: Option<Running>,
    kind: TracerKind,
}

impl Tracer {
    /// Starts `kind` and returns once its probes are attached.
    pub fn start(bins: &Binaries, kind: TracerKind) -> Result<Self> {
        let running = match kind {
            TracerKind::Untraced => None,
            TracerKind::LiveView | TracerKind::BaselineLiveView | TracerKind::Events => {
                let binary = if kind == TracerKind::BaselineLiveView {
                    &bins.baseline.as_ref().context("no --baseline was built")?.leaktrace
                } else {
                    &bins.leaktrace
                };
                let mut command = Command::new(binary);
                if kind == TracerKind::Events {
                    command.arg("events");
                } else {
                    command.args(["--format", "jsonl"]);
                }
                command.env("RUST_LOG", "leaktrace=info");
                let mut running = Running::spawn(kind.label(), &mut command, Stdout::Null)?;
                // It logs the hooks once every probe is attached.
                running.wait_stderr(READY_TIMEOUT, "that its probes are attached", |line| {
                    line.contains("attached to")
                })?;
                Some(running)
            }
            TracerKind::Reader | TracerKind::Paused => {
                let mut args = vec!["trace"];
                if kind == TracerKind::Paused {
                    args.push("--paused");
                }
                Some(start_bench_trace(&bins.bench, &args)?)
            }
            TracerKind::Bpftrace => {
                let mut command = Command::new("bpftrace");
                command.arg(&bins.reference_script);
                let mut running = Running::spawn("bpftrace", &mut command, Stdout::Lines)?;
                running.wait_line(READY_TIMEOUT, "`ready`", |line| line == "ready")?;
                Some(running)
            }
        };
        Ok(Self { running, kind })
    }

    /// CPU time the tracer has used so far (zero untraced).
    pub fn cpu_time(&self) -> Result<Duration> {
        self.running
            .as_ref()
            .map_or(Ok(Duration::ZERO), Running::cpu_time)
    }

    /// Stops the tracer, detaching its probes.
    pub fn stop(self) -> Result<()> {
        let Some(running) = self.running else {
            return Ok(());
        };
        let finished = match self.kind {
            TracerKind::LiveView | TracerKind::BaselineLiveView | TracerKind::Events | TracerKind::Bpftrace => {
                running.signal_and_wait(libc::SIGINT, STOP_TIMEOUT)?
            }
            _ => running.close_stdin_and_wait(STOP_TIMEOUT)?,
        };
        // The live view exits with 1 when it found a leak: some process on the host may leak.
        let live_view = matches!(self.kind, TracerKind::LiveView | TracerKind::BaselineLiveView);
        let leaks_found = live_view && finished.exit_code == Some(LEAKS_FOUND_EXIT_CODE);
        if !finished.success && !leaks_found {
            bail!("{} failed ({})", self.kind.label(), finished.status);
        }
        Ok(())
    }
}

/// The tracing programs other people have loaded on the host (`leaktrace-bench others`): they
/// run on the benchmark's connections too.
pub fn other_tracers(bins: &Binaries) -> Result<Vec<String>> {
    let mut command = Command::new(&bins.bench);
    command.arg("others");
    let finished = Running::spawn("leaktrace-bench others", &mut command, Stdout::Lines)?
        .wait(Duration::from_secs(30))?;
    let others =
        last_json(&finished, "others").context("leaktrace-bench others printed nothing")?;
    let programs = others
        .get("programs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(programs
        .iter()
        .map(|p| {
            format!(
                "{} (id {})",
                p.get("name").and_then(Value::as_str).unwrap_or("?"),
                p.get("id").unwrap_or(&Value::Null)
            )
        })
        .collect())
}

/// `leaktrace-bench trace ARGS` (`bench` the binary), once it says `ready`.
pub fn start_bench_trace(bench: &Path, args: &[&str]) -> Result<Running> {
    let mut command = Command::new(bench);
    command.args(args);
    let mut running = Running::spawn("leaktrace-bench trace", &mut command, Stdout::Lines)?;
    running.wait_line(READY_TIMEOUT, "`ready`", |line| {
        line.starts_with(r#"{"type":"ready""#)
    })?;
    Ok(running)
}

/// Asks a `leaktrace-bench trace` for a snapshot (`snapshot` or `snapshot sockets`).
pub fn snapshot(trace: &mut Running, command: &str) -> Result<Value> {
    trace.send_line(command)?;
    let line = trace.wait_line(Duration::from_secs(120), "a snapshot", |line| {
        line.starts_with(r#"{"type":"snapshot""#)
    })?;
    serde_json::from_str(&line).context("a snapshot that is not JSON")
}

/// Stops a `leaktrace-bench trace` and returns its `final` report.
pub fn finish_bench_trace(trace: Running) -> Result<Value> {
    let finished = trace.close_stdin_and_wait(STOP_TIMEOUT)?;
    if !finished.success {
        bail!("leaktrace-bench trace failed ({})", finished.status);
    }
    last_json(&finished, "final").context("leaktrace-bench trace printed no final report")
}

/// The reference script, written where bpftrace can read it.
pub fn write_reference_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("reference.bt");
    std::fs::write(&path, include_str!("reference.bt"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
