//! Whether this process may load and attach the probes, said before the kernel says EPERM, and
//! what a run without the optional capabilities will not see.
use std::fs;

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities the README lists as the least a run needs (tracefs is root's only, mode
/// 0700, on most distributions: CAP_DAC_READ_SEARCH reads it).
pub const LEAST: &str = "cap_bpf,cap_perfmon,cap_dac_read_search";

#[derive(Debug, thiserror::Error)]
#[error(
    "leaktrace needs privileges to load eBPF programs: missing {missing}\n\
     hint: run it as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH \
     (e.g. `setcap {LEAST}+ep leaktrace`); CAP_SYS_ADMIN stands for the first two"
)]
pub struct MissingPrivileges {
    pub missing: String,
}

/// Checks the effective capabilities in `/proc/self/status`: loading the probes takes CAP_BPF
/// and CAP_PERFMON, or CAP_SYS_ADMIN (which the kernel accepts for both, and which is all
/// there is before 5.8).
pub fn check() -> Result<(), MissingPrivileges> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap) && !has(CAP_SYS_ADMIN))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(MissingPrivileges { missing: missing.join(", ") }) }
}

/// What this run will not see for want of an optional capability, one line each.
pub fn limitations() -> Vec<&'static str> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        missing.push(
            "without CAP_SYS_ADMIN, connections opened before start in other network namespaces (containers) \
             are not listed, and tracefs cannot be mounted where it is not",
        );
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push(
            "without CAP_SYS_PTRACE, processes of other users (or with more capabilities) are not symbolized \
             and their network namespaces are not inventoried",
        );
    }
    if !has(CAP_DAC_READ_SEARCH) {
        missing.push("without CAP_DAC_READ_SEARCH, other users' /proc/PID/fd are not read: their connections from before start have no owner");
    }
    missing
}

fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether this process can load the probes: for tests and commands that need to skip with a
/// reason on an unprivileged machine.
pub fn can_trace() -> bool {
    check().is_ok()
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memory cgroup.
/// Raising the limit is tried, and its failure matters only on the older kernels.
pub fn raise_memlock_rlimit() -> Result<(), String> {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if kernel_at_least(5, 11) {
        log::debug!("raising RLIMIT_MEMLOCK failed ({err}); not needed on this kernel (>= 5.11)");
        Ok(())
    } else {
        Err(format!(
            "raising RLIMIT_MEMLOCK failed ({err}) and this kernel (< 5.11) charges BPF maps to it\n\
             hint: run with CAP_SYS_RESOURCE or `ulimit -l unlimited`"
        ))
    }
}

/// Whether the running kernel's release is `major.minor` or later.
pub(super) fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
