//! The cargo commands behind `build`, `run`, `test` and `clippy`: run from the workspace root,
//! by the cargo that runs xtask, with the PATH that `setup` prepared.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, capture, run},
    setup::{self, Ready},
};

/// The package that holds the kernel programs; aya-build compiles it for bpfel-unknown-none from
/// leaktrace's build script, so host-side cargo commands must leave it out.
const EBPF_PACKAGE: &str = "leaktrace-ebpf";

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where cargo puts build output: $CARGO_TARGET_DIR if set (relative to the root, where cargo
/// runs), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .find_map(|var| env::var_os(var).filter(|v| !v.is_empty()))
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// `cargo` as `cargo run` told us ($CARGO), so nested builds use the toolchain that runs xtask.
pub fn cargo(ready: &Ready) -> Command {
    let mut cargo = ready.command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(workspace_root());
    cargo
}

/// Builds leaktrace (which builds and embeds the kernel programs) and returns the binary's path.
pub fn build(ready: &Ready, debug: bool) -> Result<PathBuf> {
    let profile = if debug { "debug" } else { "release" };
    let mut build = cargo(ready);
    build.arg("build");
    if !debug {
        build.arg("--release");
    }
    build.args(["--package", "leaktrace"]);
    run(&mut build).context(
        "building leaktrace failed; see cargo's output above \
         (if the kernel programs failed, `cargo xtask setup` reports what the BPF toolchain lacks)",
    )?;
    let binary = target_dir().join(profile).join("leaktrace");
    if !cmd::is_executable(&binary) {
        bail!(
            "cargo built leaktrace, but there is no binary at {}; a build.target or build.target-dir \
             setting in a cargo config moves it, and xtask does not follow those",
            binary.display()
        );
    }
    Ok(binary)
}

/// Builds leaktrace and replaces this process with it, so its exit code and Ctrl-C are its own.
pub fn run_leaktrace(ready: &Ready, debug: bool, args: &[OsString]) -> Result<()> {
    let binary = build(ready, debug)?;
    if !cmd::is_root() {
        say!(
            "warning: not root; leaktrace needs root (or CAP_BPF and CAP_PERFMON) to load its probes"
        );
    }
    let mut leaktrace = ready.command(&binary);
    leaktrace.args(args);
    Err(cmd::exec(&mut leaktrace))
}

/// `cargo test` over the workspace (the eBPF crate left out), extra arguments passed through.
pub fn test(ready: &Ready, extra: &[OsString]) -> Result<()> {
    let mut test = cargo(ready);
    // Every test binary runs, so one run shows every failure (CI runs once).
    test.args(["test", "--no-fail-fast"]);
    // `-p`/`--package` picks packages itself; `--workspace` would override it.
    let mut cargo_args = extra
        .iter()
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str());
    let picks_packages = cargo_args.any(|a| a.starts_with("--package") || a.starts_with("-p"));
    if !picks_packages {
        test.args(["--workspace", "--exclude", EBPF_PACKAGE]);
    }
    test.args(extra);
    if cmd::is_root() {
        if env::var_os("LEAKTRACE_REQUIRE_PRIVILEGED").is_none() {
            say!(
                "root: LEAKTRACE_REQUIRE_PRIVILEGED=1, so the privileged tests fail instead of skipping"
            );
            test.env("LEAKTRACE_REQUIRE_PRIVILEGED", "1");
        }
    } else {
        say!("warning: not root; the privileged end-to-end tests skip themselves");
    }
    Err(cmd::exec(&mut test))
}

/// Clippy with warnings denied: the host crates (kernel programs not built), then the eBPF crate
/// for its own target with the nightly. Both run, so one report shows every problem.
pub fn clippy(ready: &Ready) -> Result<()> {
    capture(cargo(ready).args(["clippy", "--version"])).context(
        "clippy is not installed for the toolchain that runs xtask\nfix: rustup component add clippy",
    )?;
    let mut host = cargo(ready);
    host.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
    ]);
    host.args(["--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1");
    let host = run(&mut host);

    setup::nightly_component("clippy", "lints the eBPF crate")?;
    let mut ebpf = ready.command("rustup");
    ebpf.current_dir(workspace_root());
    ebpf.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        EBPF_PACKAGE,
    ]);
    ebpf.args([
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ]);
    ebpf.args(["--", "-D", "warnings"]);
    let ebpf = run(&mut ebpf);

    match (host, ebpf) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(err), Ok(())) => Err(err.context("clippy found problems in the host crates; see above")),
        (Ok(()), Err(err)) => Err(err.context("clippy found problems in the eBPF crate; see above")),
        (Err(_), Err(err)) => Err(err.context(
            "clippy found problems in the host crates and in the eBPF crate; see both reports above",
        )),
    }
}
