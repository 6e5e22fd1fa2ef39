//! What leaktrace needs from the node when it runs in a container (the DaemonSet in
//! deploy/kubernetes/): capabilities, host namespaces, host paths, Kubernetes API access and
//! downward-API variables, each with why. The manifest grants exactly these, no more and no
//! less (a test parses it and holds it to this module), and the README's fleet section says the
//! same. Found by experiment: the image run with these and one removed at a time.
//!
//! Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE raises;
//! the list is for 5.11 and later, where BPF memory is charged to the memory cgroup instead.

/// A Linux capability, named as Kubernetes' `securityContext.capabilities` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Without the `CAP_` prefix (`SYS_ADMIN`).
    pub name: &'static str,
    /// Its bit in `/proc/PID/status`'s `CapEff` mask.
    pub bit: u32,
    pub why: &'static str,
}

pub const CAPABILITIES: &[Capability] = &[
    Capability { name: "BPF", bit: 39, why: "load the probes and create their maps (bpf(2))" },
    Capability {
        name: "PERFMON",
        bit: 38,
        why: "attach the tracepoints (perf_event_open) and take user stacks in them",
    },
    Capability {
        name: "SYS_ADMIN",
        bit: 21,
        why: "enter other pods' network namespaces (setns) to inventory connections born before start, \
              and the host's cgroup namespace to read containers' cgroup paths; mount tracefs where the \
              node has not; default seccomp profiles allow bpf, perf_event_open and setns only with it",
    },
    Capability {
        name: "SYS_PTRACE",
        bit: 19,
        why: "read other processes' /proc/PID/maps, exe, fd and ns (ptrace access checks): stacks are \
              symbolized, sockets get their owner",
    },
    Capability {
        name: "DAC_READ_SEARCH",
        bit: 2,
        why: "list /proc/PID/fd of processes that run as another user (mode 0500, theirs): their \
              connections born before start get an owner",
    },
];

/// A host namespace the pod shares, by its name in /proc/PID/ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNamespace {
    pub name: &'static str,
    pub why: &'static str,
}

/// Only the PID namespace: the network stays the pod's own (the inventory enters the others).
pub const HOST_NAMESPACES: &[HostNamespace] = &[HostNamespace {
    name: "pid",
    why: "/proc shows every process of the node: the pids the probes report resolve to processes, \
          binaries and containers",
}];

/// A host directory mounted read-only at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPath {
    pub path: &'static str,
    pub why: &'static str,
}

/// Everything else comes from the container's own /proc (the host's, with the host PID
/// namespace) and /sys (BTF at /sys/kernel/btf/vmlinux is in every sysfs mount).
pub const HOST_PATHS: &[HostPath] = &[HostPath {
    path: "/sys/kernel/tracing",
    why: "tracefs: the classic tracepoints' ids and record formats (a container's sysfs has an empty \
          directory there, and mounting tracefs is refused under AppArmor's default profile)",
}];

/// Kubernetes API access, granted by a ClusterRole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// `""` for the core group.
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

pub const API_ACCESS: &[ApiAccess] = &[ApiAccess {
    api_group: "",
    resource: "pods",
    verbs: &["get", "list", "watch"],
    why: "name the pod, namespace and container behind a container id: a watch of this node's pods",
}];

/// Environment variables set from the downward API: (variable, field path).
pub const DOWNWARD_API_ENV: &[(&str, &str)] = &[("NODE_NAME", "spec.nodeName")];

/// The capabilities of [`CAPABILITIES`] missing from an effective capability mask (`CapEff`).
pub fn missing_capabilities(effective: u64) -> Vec<&'static Capability> {
    CAPABILITIES.iter().filter(|cap| effective & (1 << cap.bit) == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits_are_the_kernels() {
        // From include/uapi/linux/capability.h.
        let bits: Vec<(&str, u32)> = CAPABILITIES.iter().map(|cap| (cap.name, cap.bit)).collect();
        assert_eq!(bits, [("BPF", 39), ("PERFMON", 38), ("SYS_ADMIN", 21), ("SYS_PTRACE", 19), ("DAC_READ_SEARCH", 2)]);
    }

    #[test]
    fn missing_capabilities_are_named() {
        let all = CAPABILITIES.iter().fold(0u64, |mask, cap| mask | 1 << cap.bit);
        assert!(missing_capabilities(all).is_empty());
        assert!(missing_capabilities(u64::MAX).is_empty());
        let without_ptrace = all & !(1 << 19);
        let missing: Vec<&str> = missing_capabilities(without_ptrace).iter().map(|cap| cap.name).collect();
        assert_eq!(missing, ["SYS_PTRACE"]);
        assert_eq!(missing_capabilities(0).len(), CAPABILITIES.len());
    }
}
