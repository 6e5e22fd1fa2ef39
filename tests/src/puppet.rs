//! `sockpuppet` (helpers/sockpuppet.c): a real process whose sockets a test opens, passes and
//! closes one command at a time. Built once per test run with gcc, with frame pointers and
//! without PIE (its stack addresses then equal `nm`'s).
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
};

pub struct Puppet {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The built helper binary.
pub fn sockpuppet_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_c_helper("sockpuppet", &[])).clone()
}

/// Builds `helpers/NAME.c` into `target/test-helpers/NAME` (linked with `libs`, e.g. `-luring`)
/// the way every C helper is built: frame pointers, no PIE.
#[track_caller]
pub fn build_c_helper(name: &str, libs: &[&str]) -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join(format!("helpers/{name}.c"));
    let out_dir = manifest.join("../target/test-helpers");
    std::fs::create_dir_all(&out_dir).expect("create target/test-helpers");
    let binary = out_dir.join(name);
    let status = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-no-pie", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .args(libs)
        .status()
        .expect("gcc is needed to build the test helpers (cargo xtask setup --test-deps installs it)");
    assert!(status.success(), "building {} failed (cargo xtask setup --test-deps installs what it needs)", source.display());
    binary
}

impl Puppet {
    #[track_caller]
    pub fn spawn() -> Self {
        Self::spawn_command(Command::new(sockpuppet_binary()))
    }

    /// A puppet run by a command of the caller's making (a wrapper that runs it as another
    /// user, say, and then executes it in its own process).
    #[track_caller]
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sockpuppet");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command and returns its answer, `Err` for an `err …` answer.
    pub fn try_cmd(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}").expect("write to sockpuppet");
        self.stdin.flush().expect("flush sockpuppet stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from sockpuppet");
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return Err(format!("sockpuppet exited during {command:?}"));
        }
        match line.strip_prefix("err ") {
            Some(err) => Err(err.to_string()),
            None => Ok(line),
        }
    }

    #[track_caller]
    pub fn cmd(&mut self, command: &str) -> String {
        self.try_cmd(command).unwrap_or_else(|err| panic!("sockpuppet {command:?}: {err}"))
    }

    /// `listen HOST 0`: returns (listener fd, port).
    #[track_caller]
    pub fn listen(&mut self, host: &str) -> (u32, u16) {
        let answer = self.cmd(&format!("listen {host} 0"));
        let words: Vec<&str> = answer.split_whitespace().collect();
        match words[..] {
            ["fd", fd, "port", port] => (fd.parse().unwrap(), port.parse().unwrap()),
            _ => panic!("unexpected answer to listen: {answer:?}"),
        }
    }

    #[track_caller]
    pub fn connect(&mut self, host: &str, port: u16) -> u32 {
        fd_of(&self.cmd(&format!("connect {host} {port}")))
    }

    #[track_caller]
    pub fn accept(&mut self, listener: u32) -> u32 {
        fd_of(&self.cmd(&format!("accept {listener}")))
    }

    #[track_caller]
    pub fn close(&mut self, fd: u32) {
        self.cmd(&format!("close {fd}"));
    }

    /// Tells the puppet to exit with its sockets open, and reaps it.
    pub fn exit(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }

    /// SIGKILL with its sockets open, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fd_of(answer: &str) -> u32 {
    answer
        .strip_prefix("fd ")
        .and_then(|fd| fd.parse().ok())
        .unwrap_or_else(|| panic!("expected \"fd N\", got {answer:?}"))
}

impl Drop for Puppet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
