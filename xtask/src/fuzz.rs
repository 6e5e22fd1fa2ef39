//! `cargo xtask fuzz`: the cargo fuzz targets of `fuzz/` (libFuzzer, built with the nightly), each
//! run for a bounded time from its committed seed corpus. A crash, a hang or an out-of-memory
//! fails the task and names the input libFuzzer saved; CI runs it with `--ci`.
use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    cargo::{target_dir, workspace_root},
    cmd::{self, capture, run},
    setup::Ready,
};

/// The cargo-fuzz release that builds with this workspace's stable toolchain (`--locked`).
const CARGO_FUZZ_VERSION: &str = "0.12.0";

/// A run longer than this for one input is a hang.
const TIMEOUT_S: u64 = 10;

/// Memory one run may use before libFuzzer calls it out-of-memory.
const RSS_LIMIT_MB: u64 = 2048;

pub struct Options {
    /// Seconds per target (at most, with `deterministic`).
    pub seconds: u64,
    /// CI's run: a fixed seed and a fixed number of inputs per target, so a commit's result is
    /// the same on every run (a new find fails the commit that made it reachable, not a later
    /// one by chance); without it, a random seed for `seconds`.
    pub deterministic: bool,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
}

/// What one target's run did, from libFuzzer's final statistics.
struct Figures {
    target: String,
    seconds: f64,
    execs: u64,
    coverage: u64,
    corpus: u64,
}

pub fn fuzz(ready: &Ready, opts: &Options) -> Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    cargo_fuzz()?;
    let listed = capture(fuzz_command(ready, &fuzz_dir).args(["fuzz", "list"]))
        .context("`cargo fuzz list` failed in fuzz/; is fuzz/Cargo.toml intact?")?;
    let all: Vec<String> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    let targets: Vec<String> = if opts.targets.is_empty() { all.clone() } else { opts.targets.clone() };
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown:?}; the targets are: {}", all.join(", "));
    }
    run(fuzz_command(ready, &fuzz_dir).args(["fuzz", "build", "-O", "-a"]))
        .context("building the fuzz targets failed; see cargo's output above")?;

    let scratch = target_dir().join("fuzz");
    let mut figures = Vec::new();
    for target in &targets {
        figures.push(run_target(ready, &fuzz_dir, &scratch, target, opts)?);
    }
    say!("fuzz: every target ran without a crash, hang or out-of-memory");
    say!("{:<12} {:>8} {:>12} {:>10} {:>8}", "target", "seconds", "execs", "coverage", "corpus");
    for f in &figures {
        say!("{:<12} {:>8.0} {:>12} {:>10} {:>8}", f.target, f.seconds, f.execs, f.coverage, f.corpus);
    }
    Ok(())
}

/// Runs one target from its committed seeds (read-only) plus a scratch corpus of what it finds.
/// Inputs per target in a deterministic run: 10-60 s each on 2 cores.
const DETERMINISTIC_RUNS: u64 = 20_000;

fn run_target(ready: &Ready, fuzz_dir: &Path, scratch: &Path, target: &str, opts: &Options) -> Result<Figures> {
    let seconds = opts.seconds;
    let seeds = fuzz_dir.join("corpus").join(target);
    let found = scratch.join("corpus").join(target);
    let artifacts = scratch.join("artifacts").join(target);
    for dir in [&found, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let log_path = scratch.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("could not create {}", log_path.display()))?;
    let mut command = fuzz_command(ready, fuzz_dir);
    // libFuzzer writes new inputs to the first directory and only reads the others.
    command.args(["fuzz", "run", "-O", "-a", target]).arg(&found).arg(&seeds).arg("--");
    command.arg(format!("-max_total_time={seconds}"));
    if opts.deterministic {
        command.arg("-seed=1").arg(format!("-runs={DETERMINISTIC_RUNS}"));
    }
    command.arg(format!("-timeout={TIMEOUT_S}"));
    command.arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"));
    command.arg(format!("-artifact_prefix={}/", artifacts.display()));
    command.arg("-print_final_stats=1");
    command.stdout(log.try_clone()?).stderr(log);
    let extent = if opts.deterministic { format!("{DETERMINISTIC_RUNS} inputs (seed 1), at most {seconds} s") } else { format!("{seconds} s") };
    say!("fuzz: {target}, {extent} (log: {})", log_path.display());
    let started = Instant::now();
    let status = command.status().with_context(|| format!("could not start `{}`", cmd::show(&command)))?;
    let elapsed = started.elapsed().as_secs_f64();
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!(
            "fuzz target {target} failed ({status}): the input is in {} (reproduce: \
             `cd fuzz && cargo +nightly fuzz run -O -a {target} FILE`); fix the parser and add a unit test named \
             after the bug",
            artifacts.display()
        );
    }
    Ok(Figures {
        target: target.to_string(),
        seconds: elapsed,
        execs: stat(&output, "stat::number_of_executed_units:"),
        coverage: last_field(&output, " cov: "),
        corpus: last_field(&output, " corp: "),
    })
}

/// Debug info in the fuzz builds: file and line in a crash's backtrace, without the variables'
/// and types' (cargo fuzz asks for full debug info, and its build of the eight address-sanitized
/// targets then takes 11 GB of disk; with line tables, 6.4 GB). cargo fuzz appends `RUSTFLAGS`
/// to its own flags, so this one wins over its profile setting.
const DEBUG_INFO: &str = "-Cdebuginfo=line-tables-only";

/// `rustup run nightly cargo` in `fuzz/`: sanitizer flags need the nightly. The kernel programs
/// are not built: no target reads them. Build and run get the same flags, so a run never
/// rebuilds.
fn fuzz_command(ready: &Ready, fuzz_dir: &Path) -> Command {
    let mut command = ready.command("rustup");
    command.current_dir(fuzz_dir).args(["run", "nightly", "cargo"]).env("AYA_BUILD_SKIP", "1");
    command.env("RUSTFLAGS", DEBUG_INFO);
    command
}

/// Installs cargo-fuzz (pinned) when `cargo fuzz` is not there.
fn cargo_fuzz() -> Result<()> {
    if let Ok(version) = capture(Command::new("cargo").args(["fuzz", "--version"])) {
        say!("cargo-fuzz: {}", version.trim());
        return Ok(());
    }
    say!("cargo-fuzz: missing, installing {CARGO_FUZZ_VERSION} from crates.io");
    run(Command::new("cargo").args(["install", "--locked", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")]))
        .context("could not install cargo-fuzz; check network access to crates.io, or run the command above by hand")
}

/// The number after `key` on libFuzzer's final statistics line.
fn stat(output: &str, key: &str) -> u64 {
    output.lines().find_map(|line| line.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The number after `key` (`cov:`, `corp:`) on libFuzzer's last status line.
fn last_field(output: &str, key: &str) -> u64 {
    output
        .lines()
        .rev()
        .find_map(|line| line.split_once(key))
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_libfuzzers_output() {
        let output = "#2\tINITED cov: 10 ft: 11 corp: 2/40b exec/s: 0 rss: 40Mb\n\
                      #5000\tDONE   cov: 312 ft: 900 corp: 77/3120b lim: 400 exec/s: 2500 rss: 60Mb\n\
                      Done 5000 runs in 2 second(s)\n\
                      stat::number_of_executed_units: 5000\n\
                      stat::average_exec_per_sec:     2500\n";
        assert_eq!(stat(output, "stat::number_of_executed_units:"), 5000);
        assert_eq!(last_field(output, " cov: "), 312);
        assert_eq!(last_field(output, " corp: "), 77);
        assert_eq!(stat("", "stat::number_of_executed_units:"), 0);
    }
}
