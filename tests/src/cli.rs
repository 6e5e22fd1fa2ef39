//! The `leaktrace` binary as a user runs it: the live view with `--format jsonl` (one report
//! per refresh, the final report last), read by the test as it goes; and `leaktrace replay`.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The debug binary `cargo test --workspace` builds (the `leaktrace` package's integration
/// tests need it), or `LEAKTRACE_BIN`.
pub fn leaktrace_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LEAKTRACE_BIN") {
        return PathBuf::from(path);
    }
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/leaktrace");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo xtask test` or `cargo test --workspace` (which build it), \
         or set LEAKTRACE_BIN",
        binary.display()
    );
    binary
}

/// The arguments a [`LiveTrace`] reads leaktrace's reports through.
pub const JSONL_ARGS: [&str; 4] = ["--format", "jsonl", "--interval", "0.5"];

/// A running `leaktrace --format jsonl`.
pub struct LiveTrace {
    child: Child,
    reports: mpsc::Receiver<Value>,
    stderr: Option<thread::JoinHandle<String>>,
    /// Every report received so far, in order.
    pub seen: Vec<Value>,
}

impl LiveTrace {
    /// Starts `leaktrace --format jsonl --interval 0.5 ARGS` and returns once its first report
    /// arrived (the probes are attached by then).
    #[track_caller]
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(leaktrace_binary());
        command.args(JSONL_ARGS).args(args);
        Self::start_command(command)
    }

    /// [`LiveTrace::start`] with a command of the caller's making: a wrapper running leaktrace
    /// with [`JSONL_ARGS`] among its arguments (as another user, say).
    #[track_caller]
    pub fn start_command(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let report: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("leaktrace wrote a line that is not JSON ({err}): {line}"));
                if sender.send(report).is_err() {
                    return;
                }
            }
        });
        let stderr = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut trace = Self { child, reports, stderr: Some(stderr), seen: Vec::new() };
        trace.wait_for("the first report", Duration::from_secs(60), |_| true);
        trace
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a report that satisfies `check`; panics after `timeout` with the last report
    /// and leaktrace's stderr.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut check: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(report) => {
                    self.seen.push(report.clone());
                    if check(&report) {
                        return report;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let last = self.seen.last().map(|r| serde_json::to_string_pretty(r).unwrap()).unwrap_or_default();
                    panic!("leaktrace: no report showed {what} within {timeout:?}\nlast report: {last}");
                }
            }
        }
    }

    /// Ctrl-C, as a user would: returns the final report and the exit status.
    #[track_caller]
    pub fn interrupt(mut self) -> (Value, ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for leaktrace");
        let stderr = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        let mut last = None;
        while let Ok(report) = self.reports.recv_timeout(Duration::from_secs(5)) {
            last = Some(report);
        }
        let report = last.unwrap_or_else(|| panic!("leaktrace wrote no final report; status {status}, stderr:\n{stderr}"));
        (report, status, stderr)
    }
}

impl Drop for LiveTrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The call sites of `pid` in a report, in the report's order.
pub fn sites_of(report: &Value, pid: u32) -> Vec<&Value> {
    report["call_sites"].as_array().map(|sites| sites.iter().filter(|site| site["pid"] == pid).collect()).unwrap_or_default()
}

/// The single call site of `pid` with the given direction and origin.
#[track_caller]
pub fn site_of<'a>(report: &'a Value, pid: u32, direction: &str) -> Option<&'a Value> {
    let matching: Vec<&Value> = sites_of(report, pid)
        .into_iter()
        .filter(|site| site["direction"] == direction && site["born_before_start"] == false)
        .collect();
    assert!(matching.len() <= 1, "pid {pid} has {} {direction} call sites: {matching:#?}", matching.len());
    matching.first().copied()
}

/// `leaktrace replay ARGS`: its stdout, parsed, and its exit status.
#[track_caller]
pub fn replay(args: &[&str]) -> (Value, ExitStatus) {
    let output = Command::new(leaktrace_binary()).arg("replay").args(args).output().expect("running leaktrace replay");
    let text = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("replay output is not one JSON report ({err}); stderr: {}", String::from_utf8_lossy(&output.stderr)));
    (report, output.status)
}
