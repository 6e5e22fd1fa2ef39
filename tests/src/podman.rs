//! Real containers for the end-to-end tests: Debian's rootful podman, with the runtime and
//! flags that work on these cgroup-v1 machines (runc, not crun, which refuses hybrid cgroups;
//! the cgroupfs manager; rlimits only lowered, since root lacks CAP_SYS_RESOURCE). Nothing is
//! pulled: a container runs a directory ([`Rootfs`], e.g. holding a static binary) or an image
//! already in local storage (`podman load`, `buildah`).
//!
//! [`PodmanContainer`] is removed (`podman rm -f`) on drop. [`podman_missing`] is the reason to
//! skip where podman or runc is not installed (`cargo xtask setup --test-deps` installs them).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// The flags every `podman run` here needs, before the test's own.
const RUN_FLAGS: &[&str] = &["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// `podman` with the global options these machines need.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    command
}

/// Why containers cannot run here, if they cannot: a one-line reason to skip with.
pub fn podman_missing() -> Option<String> {
    for (tool, version) in [("podman", "--version"), ("runc", "--version")] {
        match Command::new(tool).arg(version).output() {
            Ok(output) if output.status.success() => {}
            _ => {
                return Some(format!("{tool} is not installed (`cargo xtask setup --test-deps` installs podman and runc)"));
            }
        }
    }
    None
}

/// What a container runs from.
#[derive(Clone, Copy, Debug)]
pub enum Root<'a> {
    /// A directory as the container's root filesystem (`--rootfs`).
    Dir(&'a Path),
    /// An image in podman's local storage.
    Image(&'a str),
}

impl Root<'_> {
    fn add_to(self, run: &mut Command) {
        match self {
            Root::Dir(dir) => run.arg("--rootfs").arg(dir),
            Root::Image(image) => run.arg(image),
        };
    }
}

/// A running container, removed on drop.
#[derive(Debug)]
pub struct PodmanContainer {
    id: String,
    pid: u32,
}

impl PodmanContainer {
    /// `podman run -d` with [`RUN_FLAGS`], then `options` (`--network host`, `--privileged`,
    /// `-v ...`), then the root and `command`. Panics with podman's stderr if it does not start.
    #[track_caller]
    pub fn run(options: &[&str], root: Root<'_>, command: &[&str]) -> Self {
        let name = unique_name();
        let mut run = podman();
        run.args(["run", "-d", "--name", &name]).args(RUN_FLAGS).args(options);
        root.add_to(&mut run);
        let output = run.args(command).output().expect("running podman");
        if !output.status.success() {
            // A container that failed to start stays behind, created.
            let _ = podman().args(["rm", "-f", "-t", "0", &name]).output();
        }
        let id = success(&output, "podman run").trim().to_string();
        let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(is_id, "podman run printed {id:?}, not a container id");
        let mut container = Self { id, pid: 0 };
        let pid = container.inspect("{{.State.Pid}}");
        container.pid = pid.trim().parse().unwrap_or_else(|_| panic!("podman inspect: no pid in {pid:?}"));
        container
    }

    /// `podman run --rm` in the foreground, as [`PodmanContainer::run`] builds it: what the
    /// command wrote and how it ended.
    pub fn run_to_end(options: &[&str], root: Root<'_>, command: &[&str]) -> Output {
        let name = unique_name();
        let mut run = podman();
        run.args(["run", "--rm", "--name", &name]).args(RUN_FLAGS).args(options);
        root.add_to(&mut run);
        let output = run.args(command).output().expect("running podman");
        // `--rm` does not remove a container that failed to start.
        let _ = podman().args(["rm", "-f", "-t", "0", "--ignore", &name]).output();
        output
    }

    /// The full container id (64 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `podman inspect -f FORMAT`.
    #[track_caller]
    pub fn inspect(&self, format: &str) -> String {
        let output = podman().args(["inspect", "-f", format, &self.id]).output().expect("running podman inspect");
        success(&output, "podman inspect").to_string()
    }

    /// What the container wrote so far (stdout and stderr).
    pub fn logs(&self) -> String {
        podman()
            .args(["logs", &self.id])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
            .unwrap_or_default()
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// `leaktrace-test-<pid>-<n>`: a name to remove a container by when podman printed no id.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("leaktrace-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[track_caller]
fn success<'a>(output: &'a Output, what: &str) -> std::borrow::Cow<'a, str> {
    assert!(output.status.success(), "{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
}

/// Where runc mounts the container's /dev, /proc, /sys and friends: they must exist in a rootfs.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "etc", "tmp", "run"];

/// A directory to run as a container's root: `target/test-helpers/rootfs/<name>/`, holding
/// copies of static binaries at its top and the directories runc mounts over.
pub struct Rootfs {
    pub dir: PathBuf,
}

impl Rootfs {
    /// Makes (or remakes) the directory with `binaries` in it, each under its file name. `name`
    /// must be the test's own: tests in other binaries run at the same time.
    #[track_caller]
    pub fn with_binaries(name: &str, binaries: &[&Path]) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-helpers/rootfs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        for mount_point in MOUNT_POINTS {
            let path = dir.join(mount_point);
            std::fs::create_dir_all(&path).unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        }
        for binary in binaries {
            let target = dir.join(binary.file_name().expect("a binary's file name"));
            std::fs::copy(binary, &target)
                .unwrap_or_else(|err| panic!("copying {} into {}: {err}", binary.display(), dir.display()));
        }
        Self { dir }
    }

    /// Also copies the shared libraries `binary` loads (as `ldd` lists them) to the same paths
    /// in the rootfs, so a dynamically linked program runs there.
    #[track_caller]
    pub fn add_libraries_of(&self, binary: &Path) {
        let output = Command::new("ldd").arg(binary).output().expect("running ldd");
        let listing = success(&output, "ldd");
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let libraries = listing.lines().filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        });
        for library in libraries {
            let target = self.dir.join(library.strip_prefix("/").expect("an absolute path"));
            std::fs::create_dir_all(target.parent().expect("a library's directory")).expect("making a library directory");
            std::fs::copy(&library, &target)
                .unwrap_or_else(|err| panic!("copying {} into {}: {err}", library.display(), self.dir.display()));
        }
    }
}
