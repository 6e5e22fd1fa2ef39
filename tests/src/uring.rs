//! `uringpuppet` (helpers/uringpuppet.c): a real server and client that accept and connect only
//! through io_uring (liburing from Debian's liburing-dev), for the io_uring tests.
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
};

fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| crate::puppet::build_c_helper("uringpuppet", &["-luring"])).clone()
}

/// What the server does with each socket it accepts.
#[derive(Clone, Copy)]
pub enum Keep {
    /// Holds every one open: the leak.
    Leak,
    /// Closes each at once: churn.
    Close,
}

/// How the server asks io_uring for connections.
#[derive(Clone, Copy)]
pub enum AcceptRequests {
    /// One single-shot `IORING_OP_ACCEPT` after another.
    Single,
    /// One multishot accept for every connection.
    Multishot,
    /// Single-shot accepts forced to an io-wq worker (`IOSQE_ASYNC`): each completes there.
    Async,
    /// Single-shot accepts on a ring whose kernel thread submits them (`IORING_SETUP_SQPOLL`).
    Sqpoll,
}

/// A running `uringpuppet`, killed on drop.
pub struct UringPuppet {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl UringPuppet {
    /// `uringpuppet serve`: listening once this returns; it accepts nothing before [`Self::start`].
    #[track_caller]
    pub fn serve(keep: Keep, requests: AcceptRequests, connections: u32) -> (Self, u16) {
        let keep = match keep {
            Keep::Leak => "leak",
            Keep::Close => "close",
        };
        let requests = match requests {
            AcceptRequests::Single => "single",
            AcceptRequests::Multishot => "multishot",
            AcceptRequests::Async => "async",
            AcceptRequests::Sqpoll => "sqpoll",
        };
        let mut server = Self::spawn(&["serve", keep, requests, &connections.to_string()]);
        let line = server.line();
        let port = line.strip_prefix("port ").and_then(|port| port.parse().ok());
        (server, port.unwrap_or_else(|| panic!("uringpuppet serve said {line:?}, not its port")))
    }

    /// `uringpuppet connect`: dials `port` `connections` times, `interval_ms` apart, holding each;
    /// `in_worker`: each connect forced to an io-wq worker (`IOSQE_ASYNC`).
    #[track_caller]
    pub fn connect(port: u16, connections: u32, interval_ms: u32, in_worker: bool) -> Self {
        let (port, connections, interval_ms) = (port.to_string(), connections.to_string(), interval_ms.to_string());
        let mut args = vec!["connect", &port, &connections, &interval_ms];
        if in_worker {
            args.push("async");
        }
        Self::spawn(&args)
    }

    #[track_caller]
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn uringpuppet");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the server submit its first accept; returns once it is submitted.
    #[track_caller]
    pub fn start(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "start").and_then(|()| stdin.flush()).expect("write to uringpuppet");
        let line = self.line();
        assert_eq!(line, "accepting", "uringpuppet serve after its start line");
    }

    /// Waits for `done N`: every connection accepted or connected.
    #[track_caller]
    pub fn wait_done(&mut self) {
        loop {
            let line = self.line();
            if line.starts_with("done ") {
                return;
            }
            assert!(!line.starts_with("err "), "uringpuppet failed: {line}");
        }
    }

    #[track_caller]
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from uringpuppet");
        assert!(!line.is_empty(), "uringpuppet exited");
        line.trim_end().to_string()
    }
}

impl Drop for UringPuppet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
