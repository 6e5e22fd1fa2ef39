//! `cargo xtask setup`: makes a fresh machine able to build leaktrace (nightly + rust-src for the
//! eBPF crate, bpf-linker linked against the nightly's own LLVM) and, with `--test-deps`, to run
//! its end-to-end tests. Every step checks first, so running it again changes nothing.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, capture, run};

/// The bpf-linker release installed when none works; it has features llvm-21 to llvm-23, and
/// is built with the one matching the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the end-to-end tests need, as (what to look for, Debian package providing it). A bare
/// name is looked up on PATH, an absolute path must exist. When anything is missing all these
/// packages are installed in one `apt-get install`, so a new prerequisite is one more line.
const TEST_PREREQUISITES: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("ip", "iproute2"),
    ("go", "golang-go"),
    (
        "/usr/share/gocode/src/google.golang.org/grpc",
        "golang-google-grpc-dev",
    ),
    ("python3", "python3"),
    // The Python frames tests: Debian's CPython 3.11 (its headers for the offset check), psycopg2
    // and a PostgreSQL server the psycopg2 test starts a throwaway cluster of.
    ("/usr/bin/python3.11", "python3.11"),
    ("/usr/include/python3.11/internal", "libpython3.11-dev"),
    ("/usr/lib/python3/dist-packages/psycopg2", "python3-psycopg2"),
    ("/usr/lib/postgresql/15/bin/initdb", "postgresql"),
    // The io_uring tests' server and client (tests/helpers/uringpuppet.c) link liburing.
    ("/usr/include/liburing.h", "liburing-dev"),
    // The agent tests: the Prometheus server scrapes the agent; promtool checks its metrics
    // (and the PrometheusRule's alerting rules).
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // The container and image tests: rootful podman with runc (Debian's default crun cannot run
    // containers on cgroup v1 hybrid hosts), and buildah for `cargo xtask image`.
    ("podman", "podman"),
    ("runc", "runc"),
    ("buildah", "buildah"),
    // The interactive view's test drives leaktrace in a tmux pane by keys and reads the screen.
    ("tmux", "tmux"),
];

/// Newer Go toolchains the goroutine-ancestry tests build with besides Debian's 1.19 (runtime
/// layouts differ by version), as (binary, package) from Debian's bookworm-backports suite.
const BACKPORTS_PREREQUISITES: &[(&str, &str)] = &[
    ("/usr/lib/go-1.21/bin/go", "golang-1.21-go"),
    ("/usr/lib/go-1.22/bin/go", "golang-1.22-go"),
    ("/usr/lib/go-1.23/bin/go", "golang-1.23-go"),
];

/// The apt source setup adds for them when the machine has no bookworm-backports entry.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/leaktrace-bookworm-backports.sources";
const BACKPORTS_SOURCE_TEXT: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// Where tracefs belongs; classic tracepoints find their ids under `events/`.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Hidden override of where bpf-linker is looked for and installed (`cargo install --root`), to
/// exercise the install without touching the machine's own copy.
pub const BPF_LINKER_ROOT_ENV: &str = "XTASK_BPF_LINKER_ROOT";

pub struct Options {
    /// Also make sure the end-to-end tests' tools are there.
    pub test_deps: bool,
    /// Look for (and install) bpf-linker only in `<root>/bin`.
    pub bpf_linker_root: Option<PathBuf>,
}

/// A machine that `setup` has prepared. Commands that build the eBPF crate must come from
/// [`Ready::command`], which puts bpf-linker's directory on their PATH when it is not already.
pub struct Ready {
    extra_path: Option<PathBuf>,
}

impl Ready {
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some(dir) = &self.extra_path {
            cmd.env("PATH", cmd::path_with(dir));
        }
        cmd
    }
}

pub fn setup(opts: &Options) -> Result<Ready> {
    rustup()?;
    nightly()?;
    rust_src()?;
    let extra_path = bpf_linker(opts.bpf_linker_root.as_deref())?;
    if opts.test_deps {
        debian_packages("test prerequisites", TEST_PREREQUISITES)?;
        backports_prerequisites()?;
        vm_prerequisites()?;
    }
    tracefs();
    Ok(Ready { extra_path })
}

fn rustup() -> Result<()> {
    if cmd::which("rustup").is_none() {
        bail!(
            "rustup is not on PATH; the eBPF crate is built with a nightly toolchain managed by rustup\n\
             fix: install rustup from https://rustup.rs (then open a new shell, or add ~/.cargo/bin to PATH)"
        );
    }
    let version =
        capture(Command::new("rustup").arg("--version")).context("rustup does not run")?;
    say!(
        "rustup: {}",
        version.lines().next().unwrap_or_default().trim()
    );
    Ok(())
}

fn nightly() -> Result<()> {
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("could not list the installed toolchains; check that rustup works")?;
    // `nightly-<host>` is what `rustup run nightly` means; `nightly-2026-05-19-<host>` is not it.
    let installed = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    if !installed {
        say!("nightly toolchain: missing, installing it (the eBPF crate needs -Z build-std)");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context("could not install the nightly toolchain; check network access, or run the command above by hand")?;
    }
    let version = capture(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        .context("the nightly toolchain does not run; reinstall it with `rustup toolchain install nightly --force`")?;
    say!("nightly toolchain: {}", version.trim());
    Ok(())
}

/// Whether the nightly has `component` (listed bare, like `rust-src`, or with the host suffix).
fn has_component(component: &str) -> Result<bool> {
    let list = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("could not list the nightly's components; check that rustup works")?;
    Ok(list
        .lines()
        .map(str::trim)
        .any(|l| l == component || l.starts_with(&format!("{component}-"))))
}

/// Adds `component` to the nightly unless it is there; `why` is said when it has to be added.
pub fn nightly_component(component: &str, why: &str) -> Result<()> {
    if has_component(component)? {
        say!("{component} (nightly): installed");
        return Ok(());
    }
    say!("{component} (nightly): missing, adding it ({why})");
    run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"])).with_context(|| {
        format!("could not add {component} to the nightly toolchain; check network access, or run the command above by hand")
    })
}

fn rust_src() -> Result<()> {
    nightly_component("rust-src", "-Z build-std=core compiles core from it")
}

/// Makes sure a working bpf-linker exists. Returns the directory to put in front of PATH when
/// the one that works is not the one PATH finds.
fn bpf_linker(root: Option<&Path>) -> Result<Option<PathBuf>> {
    // Where `cargo install` puts it: --root if given, else $CARGO_INSTALL_ROOT, else $CARGO_HOME.
    let install_root = match root {
        Some(root) => Some(root.to_path_buf()),
        None => env::var_os("CARGO_INSTALL_ROOT")
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .or_else(cmd::cargo_home),
    };
    let installed = install_root
        .as_ref()
        .map(|r| r.join("bin").join("bpf-linker"));
    let on_path = if root.is_some() {
        None
    } else {
        cmd::which("bpf-linker")
    };
    let mut candidates: Vec<PathBuf> = on_path.iter().chain(installed.iter()).cloned().collect();
    candidates.dedup();

    let mut broken = None;
    for path in &candidates {
        if !cmd::is_executable(path) {
            continue;
        }
        match bpf_linker_version(path) {
            Ok(version) => return Ok(use_bpf_linker(path, &version, on_path.as_deref())),
            Err(err) => broken = Some((path.clone(), err)),
        }
    }

    match &broken {
        Some((path, err)) => {
            say!(
                "bpf-linker: {} does not run ({err:#}), reinstalling {BPF_LINKER_VERSION}",
                path.display()
            )
        }
        None => say!(
            "bpf-linker: not found, installing {BPF_LINKER_VERSION} (links the eBPF object files)"
        ),
    }
    install_bpf_linker(root, broken.is_some())?;

    let Some(installed) = installed else {
        bail!(
            "bpf-linker was installed, but neither CARGO_HOME nor HOME is set, so xtask cannot tell where"
        );
    };
    let version = bpf_linker_version(&installed).with_context(|| {
        format!(
            "bpf-linker was installed at {}, but it does not run\n\
             fix: check that the nightly toolchain is still the one it was built against, then rerun \
             `cargo xtask setup`",
            installed.display()
        )
    })?;
    // The install may have put it where PATH looks (~/.cargo/bin), or behind a broken one.
    let on_path = if root.is_some() {
        None
    } else {
        cmd::which("bpf-linker")
    };
    Ok(use_bpf_linker(&installed, &version, on_path.as_deref()))
}

fn bpf_linker_version(path: &Path) -> Result<String> {
    let out = capture(Command::new(path).arg("--version"))?;
    Ok(out.trim().to_string())
}

/// Reports the working bpf-linker; returns its directory when PATH would find another one.
fn use_bpf_linker(path: &Path, version: &str, on_path: Option<&Path>) -> Option<PathBuf> {
    if on_path == Some(path) {
        say!("bpf-linker: {version} ({})", path.display());
        return None;
    }
    let dir = path.parent().map(Path::to_path_buf)?;
    say!(
        "bpf-linker: {version} ({}); {} is put in front of PATH for the commands xtask runs",
        path.display(),
        dir.display()
    );
    Some(dir)
}

/// The nightly's LLVM: (major version, directory of its shared library, name to link it by).
fn nightly_llvm() -> Result<(String, PathBuf, String)> {
    let verbose = capture(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("could not ask the nightly rustc for its LLVM version")?;
    let llvm = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .context("`rustc +nightly -vV` names no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        bail!("cannot read a major version from the nightly's `LLVM version: {llvm}`");
    }
    let sysroot =
        capture(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("could not ask the nightly rustc for its sysroot")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let prefix = format!("libLLVM-{major}-rust-");
    let mut names: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix) && name.ends_with(".so"))
        .collect();
    names.sort();
    let Some(file) = names.pop() else {
        bail!(
            "the nightly toolchain has no {prefix}*.so in {}, so bpf-linker cannot be linked against its LLVM\n\
             fix: reinstall the nightly (`rustup toolchain install nightly --force`), or install bpf-linker \
             by hand against a system LLVM {major} (`cargo install bpf-linker`)",
            lib_dir.display()
        );
    };
    let name = file
        .strip_prefix("lib")
        .and_then(|n| n.strip_suffix(".so"))
        .unwrap_or(&file)
        .to_string();
    say!(
        "nightly LLVM: {llvm}, linking bpf-linker against {}",
        lib_dir.join(&file).display()
    );
    Ok((major, lib_dir, name))
}

/// `cargo install bpf-linker`, linked against the nightly's libLLVM: distributions ship older LLVMs
/// than bpf-linker needs, and the object files must come from the LLVM that rustc uses anyway.
fn install_bpf_linker(root: Option<&Path>, force: bool) -> Result<()> {
    let (major, lib_dir, lib_name) = nightly_llvm()?;
    let lib = lib_dir.display();
    let cargo = cmd::which("cargo")
        .or_else(|| {
            cmd::cargo_home()
                .map(|h| h.join("bin").join("cargo"))
                .filter(|c| cmd::is_executable(c))
        })
        .context(
            "cargo is not on PATH (nor in $CARGO_HOME/bin), so bpf-linker cannot be installed",
        )?;
    let mut install = Command::new(cargo);
    install.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
    ]);
    install.args(["--features", &format!("llvm-{major},no-llvm-linking")]);
    if let Some(root) = root {
        install.arg("--root").arg(root);
    }
    if force {
        install.arg("--force");
    }
    // Build it as a plain `cargo install` from a shell would: with the default toolchain, for the
    // host, in cargo's own scratch directory, not with what the `cargo run` of xtask set.
    const BUILD_ENV: &[&str] = &[
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ];
    for var in BUILD_ENV {
        install.env_remove(var);
    }
    for (var, _) in env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("CARGO_PKG_")) {
            install.env_remove(var);
        }
    }
    install.env(
        "RUSTFLAGS",
        format!("-L {lib} -l dylib={lib_name} -C link-args=-Wl,-rpath,{lib}"),
    );
    // Out of the workspace, so that no rust-toolchain file or .cargo/config of ours applies.
    install.current_dir(env::temp_dir());
    run(&mut install).with_context(|| {
        format!(
            "could not build bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major}; \
             see cargo's output above\n\
             fix: it needs network access to crates.io and a C toolchain (gcc or clang) for linking; \
             if cargo says there is no feature `llvm-{major}`, this bpf-linker predates that LLVM: \
             raise BPF_LINKER_VERSION in xtask/src/setup.rs"
        )
    })
}

/// Makes sure every `(what to look for, Debian package)` of `wanted` is present, installing the
/// packages of all of them with apt-get (as root) when any is missing. `purpose` names them in
/// messages ("test prerequisites").
pub fn debian_packages(purpose: &str, wanted: &[(&str, &str)]) -> Result<()> {
    debian_packages_from(purpose, wanted, None)
}

/// As [`debian_packages`], preferring the packages of `release` (`apt-get -t`) when installing.
fn debian_packages_from(purpose: &str, wanted: &[(&str, &str)], release: Option<&str>) -> Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') {
            Path::new(what).exists()
        } else {
            // sbin is not on an unprivileged user's PATH on Debian, but `ip` lives there.
            cmd::which(what).is_some()
                || ["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|d| cmd::is_executable(&Path::new(d).join(what)))
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .map(|(what, _)| *what)
        .filter(|w| !present(w))
        .collect();
    if missing.is_empty() {
        // A file stands for its package: `golang-1.21-go` says more than `go`.
        let names: Vec<&str> = wanted
            .iter()
            .map(|(what, package)| if what.starts_with('/') { *package } else { *what })
            .collect();
        say!("{purpose}: present ({})", names.join(", "));
        return Ok(());
    }
    let mut packages: Vec<&str> = Vec::new();
    for (_, package) in wanted.iter() {
        if !packages.contains(package) {
            packages.push(package);
        }
    }
    let target = release.map(|r| format!("-t {r} ")).unwrap_or_default();
    let install = format!(
        "apt-get install -y --no-install-recommends {target}{}",
        packages.join(" ")
    );
    if !cmd::is_root() {
        bail!(
            "{purpose}: {} missing, and installing them needs root\n\
             fix: sudo apt-get update && sudo {install}",
            missing.join(", ")
        );
    }
    say!(
        "{purpose}: missing {}, installing them with apt-get",
        missing.join(", ")
    );
    let fix = || {
        format!(
            "could not install the {purpose}; check network access and the apt sources, then run `apt-get update && {install}`"
        )
    };
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(fix)?;
    let mut apt = Command::new("apt-get");
    apt.args(["install", "-y", "--no-install-recommends"]);
    if let Some(release) = release {
        apt.args(["-t", release]);
    }
    apt.args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut apt).with_context(fix)?;
    let still: Vec<&str> = missing.into_iter().filter(|w| !present(w)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get installed {}, but {} are still missing",
            packages.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

/// The newer Go toolchains, from bookworm-backports (whose apt source is added when missing).
fn backports_prerequisites() -> Result<()> {
    const PURPOSE: &str = "test prerequisites from bookworm-backports";
    backports_source(PURPOSE, BACKPORTS_PREREQUISITES)?;
    debian_packages(PURPOSE, BACKPORTS_PREREQUISITES)
}

/// What `cargo xtask vmtest` runs on the host (qemu, busybox-static, cpio...). qemu comes from
/// bookworm-backports: this kind of machine ships the backports' qemu-utils, which the bookworm
/// qemu-system-x86 conflicts with.
pub fn vm_prerequisites() -> Result<()> {
    const PURPOSE: &str = "kernel matrix prerequisites (cargo xtask vmtest)";
    let wanted = crate::vmtest::VM_PREREQUISITES;
    let release = backports_source(PURPOSE, wanted)?.then_some("bookworm-backports");
    debian_packages_from(PURPOSE, wanted, release)
}

/// Whether apt knows `package` from bookworm-backports.
fn backports_listed(package: &str) -> bool {
    capture(Command::new("apt-cache").args(["policy", package])).unwrap_or_default().contains("bookworm-backports")
}

/// Adds Debian 12's bookworm-backports to the apt sources when some of `wanted` is missing, the
/// system is bookworm, and apt does not know the suite yet. Returns whether the suite is there
/// for the install that follows.
fn backports_source(purpose: &str, wanted: &[(&str, &str)]) -> Result<bool> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| if binary.starts_with('/') { !Path::new(binary).exists() } else { cmd::which(binary).is_none() })
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() && cmd::is_root() {
        let codename = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VERSION_CODENAME=").map(str::to_string))
            .unwrap_or_default();
        if codename != "bookworm" && wanted == BACKPORTS_PREREQUISITES {
            bail!(
                "the goroutine-ancestry tests need Go 1.21 to 1.23 ({}), which are missing; setup installs them from \
                 Debian 12's bookworm-backports, and this system is {codename:?}\n\
                 fix: install those Go versions so that /usr/lib/go-1.2x/bin/go exist",
                missing.join(", ")
            );
        }
        if codename == "bookworm" && !backports_listed(missing[0]) {
            say!("{purpose}: adding Debian's bookworm-backports to the apt sources ({BACKPORTS_SOURCE})");
            std::fs::write(BACKPORTS_SOURCE, BACKPORTS_SOURCE_TEXT)
                .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
        }
        return Ok(codename == "bookworm" || backports_listed(missing[0]));
    }
    Ok(false)
}

/// Mounts tracefs where classic tracepoints look for it. leaktrace mounts it itself when needed,
/// so this only warns when it cannot.
fn tracefs() {
    if Path::new(TRACEFS).join("events").exists() {
        say!("tracefs: mounted at {TRACEFS}");
        return;
    }
    if !cmd::is_root() {
        say!(
            "tracefs: not mounted at {TRACEFS}; needs root, left to leaktrace (which mounts it when run as root)"
        );
        return;
    }
    say!("tracefs: not mounted, mounting it at {TRACEFS}");
    if let Err(err) = run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS])) {
        say!("warning: {err:#}; leaktrace will try to mount it itself");
    }
}
