//! `cargo xtask bench`: what leaktrace costs a busy host, measured side by side on the real
//! kernel, and written to BENCHMARKS.md (date, kernel, CPU, what was run, the tables, the
//! targets of issue 5). `--smoke` runs every section once, tiny, in seconds: it checks that
//! they work (CI), never a speed, and leaves BENCHMARKS.md alone.
//!
//! Each section is one function in [`SECTIONS`]: it runs what it measures through [`rig`]
//! (loadgen, the tracers) and returns a [`report::Section`]. Adding a row is adding one.
mod agent_soak;
mod aggregator;
mod baseline;
mod children;
mod events;
mod figures;
mod go_ancestry;
mod kernel_cost;
mod leak_latency;
mod memory;
mod python_frames;
mod report;
mod rig;
mod throughput;

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    cargo,
    cmd::{self, run},
    setup::Ready,
};
use report::{Machine, Section};
use rig::Binaries;

/// Runs what a section measures and returns it.
type SectionFn = fn(&Bench) -> Result<Section>;

/// Every section of the report, in order.
const SECTIONS: &[(&str, SectionFn)] = &[
    ("throughput", throughput::section),
    ("kernel cost per program", kernel_cost::section),
    ("events at fixed rates", events::section),
    ("kernel memory per live connection", memory::section),
    ("time to a leak verdict", leak_latency::section),
    ("aggregator", aggregator::section),
    ("goroutine ancestry", go_ancestry::section),
    ("python frames", python_frames::section),
    ("agent over time", agent_soak::section),
];

/// The packages whose release binaries the benchmark runs.
const PACKAGES: &[&str] = &["leaktrace", "loadgen", "leaktrace-bench"];

pub struct Options {
    pub smoke: bool,
    /// Interleaved epochs of the throughput comparison.
    pub epochs: usize,
    /// Seconds of load per measurement.
    pub seconds: f64,
    /// Live connections of the memory section.
    pub live: Vec<usize>,
    /// Only the section of this name (hidden `--only`, for working on one): the report goes to
    /// target/bench/BENCHMARKS.only.md, never BENCHMARKS.md.
    pub only: Option<String>,
    /// An earlier commit whose probes and live view are measured beside this one's.
    pub baseline: Option<String>,
}

/// What a section runs with.
pub struct Bench {
    pub options: Options,
    pub bins: Binaries,
}

impl Bench {
    /// `--duration` of one load run.
    fn load_seconds(&self) -> String {
        format!("{}", self.options.seconds)
    }
}

pub fn bench(ready: &Ready, options: Options) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmarks load eBPF programs, enable BPF statistics and make network namespaces: run them as root\n\
             fix: sudo cargo xtask bench"
        );
    }
    if options.epochs == 0 || options.seconds.is_nan() || options.seconds <= 0.0 {
        bail!("--epochs and --seconds must be positive");
    }
    if let Some(only) = &options.only
        && !SECTIONS.iter().any(|(name, _)| name == only)
    {
        let names: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
        bail!("--only {only:?}: no such section; the sections are: {}", names.join(", "));
    }
    ensure_bpftrace()?;
    let root = cargo::workspace_root();
    let mut build = cargo::cargo(ready);
    build.args(["build", "--release"]);
    for package in PACKAGES {
        build.args(["--package", package]);
    }
    run(&mut build)
        .context("building the benchmark's binaries failed; see cargo's output above")?;
    let release = cargo::target_dir().join("release");
    let scratch = cargo::target_dir().join("bench");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let baseline = options.baseline.as_deref().map(|rev| baseline::build(ready, rev)).transpose()?;
    let bench = Bench {
        bins: Binaries {
            leaktrace: release.join("leaktrace"),
            bench: release.join("leaktrace-bench"),
            loadgen: release.join("loadgen"),
            reference_script: rig::write_reference_script(&scratch)?,
            baseline,
        },
        options,
    };

    let mut sections = Vec::new();
    let chosen = |name: &str| bench.options.only.as_deref().is_none_or(|only| only == name);
    for (name, section) in SECTIONS.iter().filter(|(name, _)| chosen(name)) {
        say!("bench: {name}");
        let result = section(&bench).map_err(|err| format!("{name}: {err:#}"));
        if let Err(err) = &result {
            say!("bench: {err}");
        }
        sections.push(result);
    }
    // The memory target spans two sections: the kernel maps' share and the tracker's.
    if let Some(target) = report::combined_memory_target(&sections)
        && let Some(Ok(section)) = sections.iter_mut().find(|s| {
            s.as_ref().is_ok_and(|s| s.figures.iter().any(|(name, _)| *name == report::TRACKER_BYTES_PER_CONNECTION))
        })
    {
        section.targets.insert(0, target);
    }
    if bench.options.smoke {
        // A smoke run checks that every row works; its figures decide nothing.
        for section in sections.iter_mut().flatten() {
            for target in &mut section.targets {
                target.met = None;
            }
        }
    }

    let machine = Machine::describe(&root);
    let (path, command) = if bench.options.smoke {
        (
            scratch.join("BENCHMARKS.smoke.md"),
            "cargo xtask bench --smoke",
        )
    } else if bench.options.only.is_some() {
        (scratch.join("BENCHMARKS.only.md"), "cargo xtask bench --only")
    } else {
        (root.join("BENCHMARKS.md"), "cargo xtask bench")
    };
    let kept = report::kept_part(&path);
    let text = report::render(&machine, command, &sections, kept.as_deref());
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    if bench.options.smoke {
        println!("{text}");
    }
    say!("bench: wrote {}", path.display());
    let failed: Vec<&String> = sections.iter().filter_map(|s| s.as_ref().err()).collect();
    if !failed.is_empty() {
        bail!(
            "{} section(s) failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// The reference row needs bpftrace (Debian's package); installed here when missing.
fn ensure_bpftrace() -> Result<()> {
    if cmd::which("bpftrace").is_some() {
        return Ok(());
    }
    say!("bench: bpftrace (the reference row) is missing, installing it with apt-get");
    let fix = "could not install bpftrace; check network access and the apt sources, then run `apt-get update && apt-get install -y bpftrace`";
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context(fix)?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "bpftrace"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context(fix)?;
    if cmd::which("bpftrace").is_none() {
        bail!("apt-get installed bpftrace, but it is not on PATH");
    }
    Ok(())
}
