//! Child processes, run the same way everywhere: the command line is shown before it runs, and a
//! failure becomes an error naming the command, so every caller only adds how to fix it.
use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio after printing its command line; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    say!("running: {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly (a probe, not a step of its own) and returns its stdout; a failure carries
/// the command's stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{line}` printed something that is not UTF-8"))
}

/// Replaces this process with `cmd` (after printing its command line), so that its exit code,
/// signals such as Ctrl-C and its stdio are the caller's own. Returns only on failure.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let line = show(cmd);
    say!("running: {line}");
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("could not start `{line}`"))
}

/// The command line as a shell would take it: the variables it sets, the program, its arguments.
pub fn show(cmd: &Command) -> String {
    let vars = cmd.get_envs().filter_map(|(k, v)| {
        let v = v?;
        // A PATH that only gains a directory in front reads better as such.
        if k == "PATH"
            && let Some(path) = env::var_os("PATH")
            && let Some(front) = v.as_encoded_bytes().strip_suffix(path.as_encoded_bytes())
            && let Some(front) = front.strip_suffix(b":")
        {
            return Some(format!(
                "PATH={}:$PATH",
                quote(OsStr::new(&*String::from_utf8_lossy(front)))
            ));
        }
        Some(format!("{}={}", k.display(), quote(v)))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    vars.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The executable `name` on PATH, like `command -v`.
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// PATH with `dir` in front of it, for the children of this process.
pub fn path_with(dir: &Path) -> OsString {
    let rest = env::var_os("PATH").unwrap_or_default();
    env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&rest)))
        .unwrap_or(rest)
}

/// Whether this process runs as root (effective uid 0), read from /proc to need no libc.
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    // Fields: real, effective, saved, filesystem uid.
    uid.and_then(|u| u.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Cargo's home: where `cargo install` puts binaries (in `bin/`) unless told otherwise.
pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".cargo"))
        })
}
