//! CPython interpreters running the test programs of `helpers/python/` (Debian's 3.11 always,
//! pyenv's 3.8 to 3.13 where installed), driven through their stdin and stdout, and a throwaway
//! PostgreSQL cluster (Debian's server, initdb in a temporary directory as the `postgres` user,
//! on a free port), stopped on drop.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// Debian's interpreter, which `cargo xtask setup --test-deps` installs.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// Debian's PostgreSQL server programs.
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A helper program's path.
pub fn helper(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helpers/python").join(name)
}

/// The line of `helper` that carries `# connect: MARKER`.
pub fn marker_line(helper: &Path, marker: &str) -> u64 {
    let text = std::fs::read_to_string(helper).unwrap();
    let tag = format!("# connect: {marker}");
    let index = text.lines().position(|line| line.contains(&tag)).unwrap_or_else(|| panic!("no `{tag}` in {}", helper.display()));
    index as u64 + 1
}

/// Debian's interpreter, then pyenv's 3.8 to 3.13 that are installed (saying which are not).
pub fn interpreters() -> Vec<PathBuf> {
    assert!(Path::new(DEBIAN_PYTHON).exists(), "{DEBIAN_PYTHON} is missing: run cargo xtask setup --test-deps");
    let mut found = vec![PathBuf::from(DEBIAN_PYTHON)];
    let versions: Vec<PathBuf> =
        std::fs::read_dir("/root/.pyenv/versions").map(|dir| dir.flatten().map(|entry| entry.path()).collect()).unwrap_or_default();
    for minor in 8..=13 {
        let installed = versions.iter().find_map(|dir| {
            let name = dir.file_name()?.to_str()?;
            let binary = dir.join(format!("bin/python3.{minor}"));
            (name.starts_with(&format!("3.{minor}.")) && binary.exists()).then_some(binary)
        });
        match installed {
            Some(binary) => found.push(binary),
            None => eprintln!("skipped Python 3.{minor}: no pyenv build of it under /root/.pyenv/versions"),
        }
    }
    found
}

/// A running helper: its stdout lines arrive on a channel; a line on its stdin lets it start.
pub struct PythonProgram {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub description: String,
}

impl PythonProgram {
    /// `interpreter helper args...`.
    pub fn start(interpreter: &Path, helper: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(interpreter);
        command.arg(helper).args(args);
        Self::start_command(command, format!("{} {}", interpreter.display(), helper.display()))
    }

    pub fn start_command(mut command: Command, description: String) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {description}: {err}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { stdin: child.stdin.take(), child, lines, description }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the program start its work.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).unwrap_or_else(|err| panic!("{}: {err}", self.description));
    }

    /// Waits for the line `expected` on its stdout.
    #[track_caller]
    pub fn wait_line(&mut self, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!("{}: no line `{expected}` within {timeout:?} (exit status: {status:?})", self.description)
                }
            }
        }
    }

    /// Closes its stdin (it then exits) and waits for it.
    pub fn finish(&mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}: {status}", self.description);
    }
}

impl Drop for PythonProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL cluster of its own: `initdb` (trust authentication, superuser `postgres`) in a
/// temporary directory owned by the `postgres` user, listening on 127.0.0.1 on a free port.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// Why this machine cannot start one, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !Path::new(POSTGRES_BIN).join("initdb").exists() {
            return Some(format!("{POSTGRES_BIN}/initdb is missing (Debian's postgresql; cargo xtask setup --test-deps)"));
        }
        if Command::new("id").arg("postgres").output().map_or(true, |out| !out.status.success()) {
            return Some("no `postgres` user to run the server as".into());
        }
        None
    }

    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
        assert!(chown.success(), "chown postgres {}", dir.display());
        let port = free_port();
        let cluster = Self { dir, port };
        let data = cluster.dir.join("data");
        cluster.as_postgres(Command::new(Path::new(POSTGRES_BIN).join("initdb")).args(["--auth=trust", "-U", "postgres", "-D"]).arg(&data));
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=500", cluster.dir.display());
        cluster.as_postgres(
            Command::new(Path::new(POSTGRES_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "start"]),
        );
        cluster
    }

    /// Runs `command` as the `postgres` user; panics with its output when it fails.
    fn as_postgres(&self, command: &mut Command) {
        let mut runuser = Command::new("runuser");
        runuser.args(["-u", "postgres", "--"]).arg(command.get_program()).args(command.get_args());
        let output = runuser.output().unwrap();
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "{:?}: {}\n{}\nserver log:\n{log}",
            command,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(POSTGRES_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
