//! An earlier commit's tracer, built beside this one's so that a change to the probes is
//! measured side by side with what it replaces, in the same run (`--baseline REV`): the
//! machine's drift between days is larger than most changes. The commit's tree is exported
//! with `git archive` (no worktree left behind) and built into its own target directory.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    cargo,
    cmd::{capture, run},
    setup::Ready,
};

/// The baseline's binaries.
#[derive(Clone, Debug)]
pub struct Baseline {
    /// The commit, abbreviated, as the report names it.
    pub rev: String,
    pub leaktrace: PathBuf,
    pub bench: PathBuf,
}

/// Exports `rev` under target/bench/baseline/REV and builds its `leaktrace` and
/// `leaktrace-bench` in release mode (target/bench/baseline/target, kept between runs).
pub fn build(ready: &Ready, rev: &str) -> Result<Baseline> {
    let root = cargo::workspace_root();
    let short = capture(Command::new("git").current_dir(&root).args(["rev-parse", "--short", &format!("{rev}^{{commit}}")]))
        .map(|out| out.trim().to_string())
        .with_context(|| format!("--baseline {rev}: not a commit of this repository (fix: a commit id or tag)"))?;
    let scratch = cargo::target_dir().join("bench").join("baseline");
    let tree = scratch.join(&short);
    if !tree.join("Cargo.toml").exists() {
        fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
        let archive = Command::new("git")
            .current_dir(&root)
            .args(["archive", "--format=tar", &short])
            .stdout(Stdio::piped())
            .spawn()
            .context("running git archive")?;
        let unpacked = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&tree)
            .stdin(archive.stdout.context("git archive's output")?)
            .status()
            .context("running tar")?;
        if !unpacked.success() {
            let _ = fs::remove_dir_all(&tree);
            bail!("unpacking commit {short} into {} failed", tree.display());
        }
    }
    let target = scratch.join("target");
    let mut build = cargo::cargo(ready);
    build
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--package", "leaktrace", "--package", "leaktrace-bench"]);
    run(&mut build).with_context(|| format!("building the baseline {short} failed; see cargo's output above"))?;
    // One target directory serves every baseline: keep this one's binaries beside its tree.
    let bin = tree.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let copy = |name: &str| -> Result<PathBuf> {
        let to = bin.join(name);
        fs::copy(target.join("release").join(name), &to)
            .with_context(|| format!("copying the baseline's {name}"))?;
        Ok(to)
    };
    Ok(Baseline { leaktrace: copy("leaktrace")?, bench: copy("leaktrace-bench")?, rev: short })
}

