//! `cargo xtask vmtest`: the kernel matrix. Boots Debian's kernels under qemu, each with an
//! initramfs holding the static leaktrace and a test helper, runs the lifecycle and verdict
//! scenarios there against the real probes, judges what they printed, and prints (and with
//! `--write-readme` writes to README.md's "Tested on") which kernel passed which check.
mod checks;
mod kernels;
mod qemu;
mod rootfs;

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cargo::{target_dir, workspace_root},
    cmd, image,
    setup::{self, Ready},
};

pub struct Options {
    /// CI: never skip, a missing prerequisite is an error.
    pub ci: bool,
    /// Only the kernels of these names (`6.1`); all when empty.
    pub kernels: Vec<String>,
    pub write_readme: bool,
    /// Time limit of one kernel's boot and scenarios.
    pub timeout: Duration,
}

/// The tools the matrix runs on the host, as (what to look for, Debian package).
pub const VM_PREREQUISITES: &[(&str, &str)] = &[
    (qemu::QEMU, "qemu-system-x86"),
    (rootfs::BUSYBOX, "busybox-static"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("gcc", "gcc"),
];

const README_BEGIN: &str = "<!-- vmtest:begin (cargo xtask vmtest --write-readme) -->";
const README_END: &str = "<!-- vmtest:end -->";

/// One kernel's results.
struct Row {
    spec: &'static kernels::KernelSpec,
    package: String,
    uname: String,
    verdicts: checks::Verdicts,
    elapsed: Duration,
}

pub fn vmtest(ready: &Ready, options: &Options) -> Result<()> {
    let ci = options.ci || env::var("CI").is_ok_and(|v| v == "true");
    if let Some(reason) = missing_prerequisites(ci)? {
        say!("vmtest: skipped: {reason}");
        return Ok(());
    }
    let specs: Vec<&kernels::KernelSpec> = kernels::KERNELS
        .iter()
        .filter(|k| options.kernels.is_empty() || options.kernels.iter().any(|n| n == k.name))
        .collect();
    if specs.is_empty() {
        let known: Vec<&str> = kernels::KERNELS.iter().map(|k| k.name).collect();
        bail!("--kernel {:?}: no such kernel in the matrix (known: {})", options.kernels, known.join(", "));
    }
    let dir = target_dir().join("vmtest");
    let apt = match kernels::package_lists(&dir) {
        Ok(apt) => apt,
        Err(err) if !ci => {
            say!("vmtest: skipped: Debian's package lists for the kernels could not be fetched: {err:#}");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let kernels = kernels::fetch(&apt, &dir, &specs)?;
    let payload = rootfs::Payload {
        leaktrace: image::static_binary(ready)?,
        sockpuppet: rootfs::sockpuppet(&workspace_root().join("tests/helpers/sockpuppet.c"), &dir)?,
    };
    let (accel, why) = qemu::Accel::detect();
    say!("vmtest: {} kernel(s), {} ({why})", kernels.len(), accel.name());

    let mut rows = Vec::new();
    for (spec, kernel) in specs.iter().zip(&kernels) {
        let run_dir = dir.join("runs").join(spec.name);
        let image = run_dir.join("initramfs.cpio");
        fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        rootfs::initramfs(&payload, &kernel.modules, &run_dir.join("root"), &image)?;
        say!("vmtest: booting {} ({})", kernel.package, accel.name());
        let started = Instant::now();
        let boot = qemu::boot(&kernel.vmlinuz, &image, accel, &run_dir, options.timeout)?;
        let mut verdicts = checks::judge(&boot.blocks, spec.expect_tp_btf.is_ok());
        if let Some(fatal) = boot.blocks.get("fatal") {
            say!("vmtest: {}: the scenario stopped: {fatal}", spec.name);
        }
        if boot.timed_out || !boot.blocks.contains_key("done") {
            let why = if boot.timed_out {
                format!("killed after {:.0?} (time limit)", options.timeout)
            } else {
                "the VM stopped before the scenarios ended".to_string()
            };
            say!("vmtest: {}: {why}; console ({}):\n{}", spec.name, boot.console_path.display(), boot.console_tail(25));
            for outcome in verdicts.outcomes.iter_mut().filter(|o| !o.passed) {
                outcome.detail = format!("{} ({why})", outcome.detail);
            }
        }
        let row = Row {
            spec,
            package: kernel.package.clone(),
            uname: boot.blocks.get("kernel").cloned().unwrap_or_else(|| "?".into()),
            verdicts,
            elapsed: started.elapsed().max(boot.elapsed),
        };
        print_row(&row);
        rows.push(row);
    }
    let table = table(&rows, accel, why);
    println!("{table}");
    if options.write_readme {
        write_readme(&table)?;
        say!("vmtest: README.md's \"Tested on\" table updated");
    }
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| r.verdicts.outcomes.iter().filter(|o| !o.passed).map(move |o| format!("{} {}", r.spec.name, o.check)))
        .collect();
    if !failed.is_empty() {
        bail!("vmtest: {} check(s) failed: {} (details above; each VM's console and output are in {})",
            failed.len(), failed.join(", "), dir.join("runs").display());
    }
    say!("vmtest: every check passed on {} kernel(s)", rows.len());
    Ok(())
}

/// A one-line reason to skip, `None` when everything is there (installed first when root).
fn missing_prerequisites(ci: bool) -> Result<Option<String>> {
    let missing: Vec<&str> = VM_PREREQUISITES
        .iter()
        .filter(|(what, _)| if what.starts_with('/') { !Path::new(what).exists() } else { cmd::which(what).is_none() })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if cmd::is_root() {
        setup::vm_prerequisites()?;
        return Ok(None);
    }
    let reason = format!("{} missing, and installing them needs root (`sudo cargo xtask setup --test-deps`)", missing.join(", "));
    if ci {
        bail!("vmtest in CI: {reason}");
    }
    Ok(Some(reason))
}

fn print_row(row: &Row) {
    say!("vmtest: {} ({}), {:.0?}; hooks: {}", row.spec.name, row.uname, row.elapsed, row.verdicts.hooks);
    for outcome in &row.verdicts.outcomes {
        let mark = if outcome.passed { "pass" } else { "FAIL" };
        let detail = if outcome.detail.is_empty() { String::new() } else { format!(": {}", outcome.detail) };
        say!("vmtest:   {mark} {}{detail}", outcome.check);
    }
}

/// The hooks of a row in short: `tp_btf ×2, sys_exit_accept4, sys_exit_accept`.
fn short_hooks(hooks: &str) -> String {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for part in hooks.split("; ") {
        let Some((_, hook)) = part.split_once(" → ") else {
            continue;
        };
        let short = hook.trim_start_matches("tracepoint/").trim_start_matches("syscalls/").to_string();
        match counted.iter_mut().find(|(h, _)| *h == short) {
            Some((_, n)) => *n += 1,
            None => counted.push((short, 1)),
        }
    }
    let mut text: Vec<String> =
        counted.into_iter().map(|(h, n)| if n > 1 { format!("`{h}` ×{n}") } else { format!("`{h}`") }).collect();
    // The verifier's reason, which the one-line warning puts last.
    text.extend(
        hooks
            .split("; ")
            .filter_map(|p| p.strip_prefix("logged: "))
            .map(|l| format!("fallback logged: `{}`", l.rsplit(" ... ").next().unwrap_or(l))),
    );
    text.join(", ")
}

fn table(rows: &[Row], accel: qemu::Accel, why: &str) -> String {
    let mut out = String::new();
    let commit = cmd::capture(std::process::Command::new("git").arg("-C").arg(workspace_root()).args(["rev-parse", "--short", "HEAD"]))
        .map(|c| format!(" at commit {}", c.trim()))
        .unwrap_or_default();
    out.push_str(&format!(
        "From a run of `cargo xtask vmtest` on {} under {} ({why}), leaktrace {}{commit}:\n\n",
        today(),
        accel.name(),
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str("| kernel | Debian package | state and accept hooks chosen (`--state-hook auto`) |");
    for (check, _) in checks::CHECKS {
        out.push_str(&format!(" {check} |"));
    }
    out.push_str(" time |\n|---|---|---|");
    out.push_str(&"---|".repeat(checks::CHECKS.len()));
    out.push_str("---|\n");
    for row in rows {
        out.push_str(&format!("| {} ({}) | `{}` | {} |", row.spec.release, row.uname, row.package, short_hooks(&row.verdicts.hooks)));
        for outcome in &row.verdicts.outcomes {
            let cell = match (outcome.passed, outcome.detail.is_empty()) {
                (true, true) => "pass".to_string(),
                (true, false) => format!("pass ({})", outcome.detail),
                (false, _) => format!("**fail**: {}", outcome.detail.replace('|', "\\|")),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push_str(&format!(" {:.0}s |\n", row.elapsed.as_secs_f64()));
    }
    out.push('\n');
    for (check, what) in checks::CHECKS {
        out.push_str(&format!("- `{check}`: {what}\n"));
    }
    out
}

/// Today's date (UTC), from `date`, for the table's heading.
fn today() -> String {
    cmd::capture(std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]))
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Replaces what lies between the README's vmtest markers with `table`.
fn write_readme(table: &str) -> Result<()> {
    let path: PathBuf = workspace_root().join("README.md");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let replaced = replace_between(&text, table)
        .with_context(|| format!("{} has no `{README_BEGIN}` ... `{README_END}` section to write to", path.display()))?;
    fs::write(&path, replaced).with_context(|| format!("cannot write {}", path.display()))
}

fn replace_between(text: &str, table: &str) -> Option<String> {
    let begin = text.find(README_BEGIN)? + README_BEGIN.len();
    let end = begin + text[begin..].find(README_END)?;
    Some(format!("{}\n{}{}", &text[..begin], table, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_replaces_only_what_lies_between_the_markers() {
        let text = format!("intro\n{README_BEGIN}\nold table\n{README_END}\nafter\n");
        let out = replace_between(&text, "| new |\n").unwrap();
        assert_eq!(out, format!("intro\n{README_BEGIN}\n| new |\n{README_END}\nafter\n"));
        assert!(replace_between("no markers", "x").is_none());
    }

    #[test]
    fn hooks_are_shortened_and_counted() {
        let hooks = "inet_sock_set_state_btf → tp_btf/inet_sock_set_state; inet_sock_set_state_btf_twin → \
                     tp_btf/inet_sock_set_state; sys_exit_accept4 → tracepoint/syscalls/sys_exit_accept4";
        assert_eq!(short_hooks(hooks), "`tp_btf/inet_sock_set_state` ×2, `sys_exit_accept4`");
        let fallback = "inet_sock_set_state_classic → tracepoint/sock/inet_sock_set_state; logged: tp_btf hook \
                        unavailable, using the classic tracepoint alone: failed ... unknown func bpf_get_socket_cookie#46";
        assert_eq!(
            short_hooks(fallback),
            "`sock/inet_sock_set_state`, fallback logged: `unknown func bpf_get_socket_cookie#46`"
        );
    }
}
