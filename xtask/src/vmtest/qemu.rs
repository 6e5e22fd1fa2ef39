//! Booting one kernel with its initramfs under qemu (KVM where /dev/kvm opens, software
//! emulation otherwise), bounded in time, and reading back what the VM wrote: the kernel's
//! console (first serial port) and the scenarios' blocks (second serial port).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub const QEMU: &str = "qemu-system-x86_64";

/// How the VM's CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when /dev/kvm opens read-write and the CPU shows hardware virtualisation (vmx or svm);
    /// else software emulation, and why. Some sandboxed VMs offer a /dev/kvm without either, on
    /// which a guest kernel hangs right after its decompressor.
    pub fn detect() -> (Self, &'static str) {
        if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
            return (Self::Tcg, "/dev/kvm cannot be opened");
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or_default();
        if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
            return (Self::Tcg, "/dev/kvm is there, but the CPU shows no vmx or svm (no nested virtualisation)");
        }
        (Self::Kvm, "/dev/kvm")
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "KVM",
            Self::Tcg => "TCG (software emulation)",
        }
    }
}

/// What a boot left behind.
pub struct Boot {
    /// Blocks by name, in the order written (a name written twice keeps the last).
    pub blocks: BTreeMap<String, String>,
    /// The kernel's console, for the failure message.
    pub console_path: PathBuf,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Boot {
    /// The last lines of the console, where a panic or an init failure shows.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.console_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub fn boot(vmlinuz: &Path, initramfs: &Path, accel: Accel, out_dir: &Path, limit: Duration) -> Result<Boot> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let console_path = out_dir.join("console.log");
    let data_path = out_dir.join("data.log");
    let mut qemu = Command::new(QEMU);
    qemu.args(["-m", "1024", "-smp", "2", "-display", "none", "-no-reboot", "-nodefaults"]);
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
    };
    qemu.arg("-kernel").arg(vmlinuz).arg("-initrd").arg(initramfs);
    // ttyS0: the kernel's console; ttyS1: the scenarios' output.
    qemu.arg("-serial").arg(format!("file:{}", console_path.display()));
    qemu.arg("-serial").arg(format!("file:{}", data_path.display()));
    // panic=-1 reboots at once on a panic, which -no-reboot turns into qemu exiting.
    qemu.args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"]);
    qemu.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu.spawn().with_context(|| format!("could not start {QEMU} (Debian's qemu-system-x86)"))?;
    let mut timed_out = false;
    loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().context("reading qemu's stderr")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        say!("qemu: {}", stderr.trim());
    }
    let data = fs::read(&data_path).unwrap_or_default();
    Ok(Boot { blocks: blocks(&String::from_utf8_lossy(&data)), console_path, timed_out, elapsed: started.elapsed() })
}

/// The `@@vmtest begin NAME` ... `@@vmtest end NAME` blocks of the data port (a tty: lines end
/// in CR LF).
pub(super) fn blocks(data: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in data.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix("@@vmtest begin ") {
            current = Some((name.to_string(), Vec::new()));
        } else if let Some(name) = line.strip_prefix("@@vmtest end ") {
            if let Some((open, lines)) = current.take()
                && open == name
            {
                found.insert(open, lines.join("\n"));
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blocks_and_drops_an_unfinished_one() {
        let data = "junk\r\n@@vmtest begin kernel\r\n6.1.0\r\n@@vmtest end kernel\r\n\
                    @@vmtest begin events\r\n{\"a\":1}\r\n{\"b\":2}\r\n@@vmtest end events\r\n\
                    @@vmtest begin report\r\n{";
        let found = blocks(data);
        assert_eq!(found["kernel"], "6.1.0");
        assert_eq!(found["events"], "{\"a\":1}\n{\"b\":2}");
        assert!(!found.contains_key("report"), "a block cut off by a timeout is not a block");
    }
}
