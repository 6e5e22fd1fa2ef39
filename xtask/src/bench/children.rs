//! The benchmark's child processes (load generator, tracers, bpftrace): started with their
//! output read on threads, waited for by a line they print, stopped by a signal or by closing
//! their stdin, their CPU time read from /proc while they run. A child still running
//! when its handle is dropped (an error on the way) is killed and reaped: a benchmark leaves
//! no process behind.
use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Lines of stderr kept to explain a failure.
const STDERR_TAIL: usize = 20;
/// Lines kept of a stream read with [`Stdout::Tail`].
pub const TAIL: usize = 8;

/// What to do with a child's stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Every line is kept and can be waited for.
    Lines,
    /// Discarded as it comes (an event stream), except the last [`TAIL`] lines.
    Tail,
    /// Straight to /dev/null, unread.
    Null,
}

pub struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
    tail: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_lines: Receiver<String>,
    reaped: bool,
}

/// How a child ended and what it cost.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub status: String,
    /// The exit code, when the child exited (not killed by a signal).
    pub exit_code: Option<i32>,
    /// Every stdout line not waited for (`Stdout::Lines`), or the last ones (`Stdout::Tail`).
    pub lines: Vec<String>,
}

impl Running {
    pub fn spawn(name: &str, command: &mut Command, stdout: Stdout) -> Result<Self> {
        command.stdin(Stdio::piped()).stderr(Stdio::piped());
        command.stdout(if stdout == Stdout::Null {
            Stdio::null()
        } else {
            Stdio::piped()
        });
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start {name} ({command:?})"))?;
        let stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let lines = match child.stdout.take() {
            Some(out) if stdout == Stdout::Lines => {
                let (tx, rx) = mpsc::channel();
                readers.push(thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                }));
                Some(rx)
            }
            Some(out) => {
                let kept = Arc::clone(&tail);
                readers.push(thread::spawn(move || keep_tail(out, &kept)));
                None
            }
            None => None,
        };
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (stderr_tx, stderr_lines) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let tail = Arc::clone(&stderr);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    let _ = stderr_tx.send(line);
                }
            }));
        }
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            lines,
            tail,
            readers,
            stderr,
            stderr_lines,
            reaped: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// CPU time the child has used so far, all its threads, to the nanosecond (the first field
    /// of each `/proc/PID/task/TID/schedstat`): for measuring a window of its life.
    pub fn cpu_time(&self) -> Result<Duration> {
        let tasks = format!("/proc/{}/task", self.pid());
        let mut total = 0u64;
        for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            let path = task?.path().join("schedstat");
            // A thread that ended since the listing has nothing more to add.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Duration::from_nanos(total))
    }

    /// Waits for a stdout line that `wanted` accepts (earlier lines are dropped).
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let Some(lines) = &self.lines else {
            bail!(
                "internal error: {}'s stdout is not read by lines",
                self.name
            )
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} did not print {what} within {timeout:?}{}",
                    self.name,
                    self.stderr_tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{} closed its output before printing {what}{}",
                        self.name,
                        self.stderr_tail()
                    )
                }
            }
        }
    }

    /// Waits for a stderr line that `wanted` accepts: for programs that say they are ready only
    /// in their diagnostics.
    pub fn wait_stderr(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(()),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} did not say {what} within {timeout:?}{}",
                    self.name,
                    self.stderr_tail()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "{} ended before saying {what}{}",
                    self.name,
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Sends one line on the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}'s stdin is closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    /// Ends the child by closing its stdin, and waits for it.
    pub fn close_stdin_and_wait(mut self, timeout: Duration) -> Result<Finished> {
        drop(self.stdin.take());
        self.wait(timeout)
    }

    /// Ends the child with `signal` (SIGINT, SIGTERM), and waits for it.
    pub fn signal_and_wait(self, signal: i32, timeout: Duration) -> Result<Finished> {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.pid(), signal) };
        self.wait(timeout)
    }

    /// Waits for the child to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(done) = self.try_reap()? {
                break done;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}; killed it{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let lines = match self.lines.take() {
            Some(lines) => lines.try_iter().collect(),
            None => std::mem::take(&mut *self.tail.lock().unwrap_or_else(|p| p.into_inner())),
        };
        let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            || libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGINT;
        let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let status = match exit_code {
            Some(code) => format!("exit status {code}"),
            None => format!("signal {}", libc::WTERMSIG(status)),
        };
        Ok(Finished {
            success,
            status,
            exit_code,
            lines,
        })
    }

    /// waitpid(WNOHANG): the raw status once the child has exited.
    fn try_reap(&mut self) -> Result<Option<i32>> {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into the local.
        let pid = unsafe { libc::waitpid(self.pid(), &mut status, libc::WNOHANG) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("waiting for {}", self.name));
        }
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = true;
        Ok(Some(status))
    }

    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("; its last words:\n  {}", lines.join("\n  "))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kill and reap our own child, which has not been reaped.
            unsafe {
                libc::kill(self.pid(), libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid(), &mut status, 0);
            }
        }
    }
}

fn keep_tail(out: impl Read, kept: &Mutex<Vec<String>>) {
    let mut reader = BufReader::with_capacity(1 << 16, out);
    let mut tail: VecDeque<Vec<u8>> = VecDeque::with_capacity(TAIL + 1);
    let mut line = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // Reuse the oldest line's buffer: a fast stream costs no allocation per line.
                let recycled = if tail.len() == TAIL {
                    tail.pop_front().unwrap_or_default()
                } else {
                    Vec::new()
                };
                tail.push_back(std::mem::replace(&mut line, recycled));
                line.clear();
            }
        }
    }
    let text = tail
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .collect();
    *kept.lock().unwrap_or_else(|p| p.into_inner()) = text;
}
