//! Real containers for the tests, run by Debian's podman the way these machines can run them:
//! rootful, with runc and the cgroupfs driver (crun refuses cgroup v1 hybrid hosts), and with
//! the ulimits already in force (root here cannot raise them, and podman's defaults would).
//! Generic: run with any flags, the container's host pid, its logs, its exit code, reaching into
//! its network namespace; removed on drop. [`rootfs`] runs a static binary as a container
//! without any image ([`rootfs_with_libraries`] a dynamically linked one).
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Why containers cannot run here (a tool missing), or `None` when they can.
pub fn unavailable() -> Option<String> {
    let missing: Vec<&str> = ["podman", "runc"].into_iter().filter(|tool| !on_path(tool)).collect();
    (!missing.is_empty()).then(|| {
        format!("{} not installed (`cargo xtask setup --test-deps` installs them)", missing.join(" and "))
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// `podman` with the runtime and cgroup manager that work on these machines.
pub fn podman() -> Command {
    let mut podman = Command::new("podman");
    podman.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    podman
}

/// Runs `podman ARGS`; panics with its stderr unless it succeeds. Returns stdout, trimmed.
#[track_caller]
pub fn podman_ok(args: &[&str]) -> String {
    let output = podman().args(args).output().unwrap_or_else(|err| panic!("cannot run podman: {err}"));
    if !output.status.success() {
        panic!("`podman {}` failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A detached container, force-removed when dropped. Drop containers that share another's
/// namespaces (`--network container:ID`) before it: podman refuses to remove it first.
#[derive(Debug)]
pub struct Container {
    id: String,
    what: String,
}

impl Container {
    /// `podman run --detach --ulimit ... ARGS`: ARGS are run's flags, then the image (or
    /// `--rootfs DIR`), then the command. `what` names it in failure messages.
    #[track_caller]
    pub fn run(what: &str, args: &[String]) -> Self {
        let name = Self::unique_name();
        let mut run = vec!["run", "--detach", "--name", &name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
        run.extend(args.iter().map(String::as_str));
        let output = podman().args(&run).output().unwrap_or_else(|err| panic!("cannot run podman: {err}"));
        if !output.status.success() {
            let _ = podman().args(["rm", "--force", "--time", "0", &name]).output();
            panic!(
                "{what}: `podman {}` failed ({}): {}",
                run.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "podman run printed {id:?}, not an id");
        Self { id, what: what.to_string() }
    }

    /// `podman run --rm --ulimit ... ARGS` in the foreground: what the container wrote and how
    /// it ended.
    #[track_caller]
    pub fn run_to_end(args: &[&str]) -> Output {
        let name = Self::unique_name();
        let mut run = vec!["run", "--rm", "--name", &name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
        run.extend(args);
        let output = podman().args(&run).output().unwrap_or_else(|err| panic!("cannot run podman: {err}"));
        // `--rm` does not remove a container that failed to start.
        let _ = podman().args(["rm", "--force", "--time", "0", "--ignore", &name]).output();
        output
    }

    /// `leaktrace-test-<pid>-<n>`: named, so that a container the runtime created but could not
    /// start is removed too.
    fn unique_name() -> String {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        format!("leaktrace-test-{}-{}", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed))
    }

    /// The full (64 hex digits) container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pid of the container's first process, as the host sees it (0 once it exited).
    #[track_caller]
    pub fn host_pid(&self) -> u32 {
        let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.id]);
        pid.parse().unwrap_or_else(|_| panic!("{}: podman inspect gave the pid {pid:?}", self.what))
    }

    /// What it wrote so far: (stdout, stderr).
    #[track_caller]
    pub fn logs(&self) -> (String, String) {
        let Output { status, stdout, stderr } =
            podman().args(["logs", &self.id]).output().unwrap_or_else(|err| panic!("cannot run podman: {err}"));
        assert!(status.success(), "podman logs {}: {}", self.what, String::from_utf8_lossy(&stderr));
        (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
    }

    /// Polls its stdout until a line starts with `prefix` and returns that line; panics with its
    /// logs after `timeout`.
    #[track_caller]
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (stdout, stderr) = self.logs();
            if let Some(line) = stdout.lines().find(|line| line.starts_with(prefix)) {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!("{}: no line starting with {prefix:?} within {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}", self.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` on a thread inside this container's network namespace and returns what it
    /// returns: a client of a server that listens only there (`--network=none` has loopback
    /// alone), without publishing ports through a bridge.
    #[track_caller]
    pub fn in_network<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/proc/{}/ns/net", self.host_pid());
        let namespace = std::fs::File::open(&path).unwrap_or_else(|err| panic!("{}: cannot open {path}: {err}", self.what));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a valid namespace fd; it moves only this thread.
                    let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns into {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `program` run in this container's network namespace (`nsenter --net`), with the host's
    /// filesystem: a server or client beside the container, as another container of its pod.
    pub fn command_in_network(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/proc/{}/ns/net", self.host_pid())).arg("--").arg(program);
        command
    }

    /// Waits for it to exit and returns its exit code.
    #[track_caller]
    pub fn wait(&self) -> i32 {
        let code = podman_ok(&["wait", &self.id]);
        code.parse().unwrap_or_else(|_| panic!("{}: podman wait gave the exit code {code:?}", self.what))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.id]).output();
    }
}

/// A directory holding only `binary` (at `/<its file name>`), for `podman run --rootfs DIR`: a
/// static program as a container without any image. Kept in `target/test-helpers/rootfs/` and
/// refreshed when the binary is newer.
#[track_caller]
pub fn rootfs(binary: &Path) -> PathBuf {
    let name = binary.file_name().expect("a binary has a file name");
    let parent = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent");
    let dir = parent.join("target/test-helpers/rootfs").join(name);
    // runc mounts onto these and does not create them.
    for mount_point in ["dev", "proc", "sys", "etc", "run", "tmp"] {
        let at = dir.join(mount_point);
        std::fs::create_dir_all(&at).unwrap_or_else(|err| panic!("cannot create {}: {err}", at.display()));
    }
    let inside = dir.join(name);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&inside) < modified(binary) {
        // Copied under another name and renamed, so a container never starts a half-copied file;
        // the name is this copy's own, as tests on parallel threads may refresh it at once.
        static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let copy = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = dir.join(format!(".{}.{}.{copy}", name.to_string_lossy(), std::process::id()));
        std::fs::copy(binary, &temporary)
            .unwrap_or_else(|err| panic!("cannot copy {} to {}: {err}", binary.display(), temporary.display()));
        std::fs::rename(&temporary, &inside).unwrap_or_else(|err| panic!("cannot rename {}: {err}", temporary.display()));
    }
    dir
}

/// [`rootfs`] for a dynamically linked `binary`: the shared libraries it loads (as `ldd` lists
/// them) are copied in at their own paths.
#[track_caller]
pub fn rootfs_with_libraries(binary: &Path) -> PathBuf {
    let dir = rootfs(binary);
    let output = Command::new("ldd").arg(binary).output().unwrap_or_else(|err| panic!("cannot run ldd: {err}"));
    assert!(output.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`
    let listing = String::from_utf8_lossy(&output.stdout);
    let libraries = listing.lines().filter_map(|line| {
        let path = line.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    for library in libraries {
        let target = dir.join(library.strip_prefix("/").expect("an absolute path"));
        std::fs::create_dir_all(target.parent().expect("a library's directory")).expect("making a library directory");
        std::fs::copy(&library, &target)
            .unwrap_or_else(|err| panic!("copying {} into {}: {err}", library.display(), dir.display()));
    }
    dir
}
