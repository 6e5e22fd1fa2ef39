//! Processes as the tracker knows them: (pid, start time), so a reused pid is a new process,
//! and the userspace filters (`--comm`, and replay's `--pid`/`--port`/`--cgroup`).
use std::net::SocketAddr;

use serde::Serialize;

use super::hash::FastMap;

/// A process's identity. `start_ns` is the task's start time (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_ns: u64,
}

/// Start times from `/proc` have clock-tick resolution (10 ms): two start times this close, for
/// the same pid, are the same process.
const SAME_START_NS: u64 = leaktrace_common::PROCESS_START_TOLERANCE_NS;

pub struct Process {
    pub comm: String,
    pub cgroup_id: u64,
    pub last_event_ns: u64,
    sites: u32,
}

#[derive(Default)]
pub struct Processes {
    by_pid: FastMap<u32, Vec<(u64, Process)>>,
}

impl Processes {
    /// The key of the process (pid, started at about `start_ns`), recorded if new.
    pub fn observe(&mut self, pid: u32, start_ns: u64, comm: &str, cgroup_id: u64, ts_ns: u64) -> ProcessKey {
        let entries = self.by_pid.entry(pid).or_default();
        let found = entries.iter_mut().find(|(start, _)| start.abs_diff(start_ns) <= SAME_START_NS);
        let (start, process) = match found {
            Some((start, process)) => (*start, process),
            None => {
                entries.push((start_ns, Process { comm: String::new(), cgroup_id, last_event_ns: ts_ns, sites: 0 }));
                let (start, process) = entries.last_mut().expect("just pushed");
                (*start, process)
            }
        };
        if !comm.is_empty() && process.comm != comm {
            // The latest name wins: a process may rename itself after exec (prctl, Go runtime).
            process.comm = comm.to_string();
        }
        if cgroup_id != 0 {
            process.cgroup_id = cgroup_id;
        }
        process.last_event_ns = process.last_event_ns.max(ts_ns);
        ProcessKey { pid, start_ns: start }
    }

    pub fn get(&self, key: ProcessKey) -> Option<&Process> {
        self.by_pid.get(&key.pid)?.iter().find(|(start, _)| *start == key.start_ns).map(|(_, process)| process)
    }

    pub fn add_site(&mut self, key: ProcessKey) {
        if let Some(process) = self.get_mut(key) {
            process.sites += 1;
        }
    }

    /// A site of the process was forgotten; the process goes with its last site.
    pub fn remove_site(&mut self, key: ProcessKey) {
        let Some(entries) = self.by_pid.get_mut(&key.pid) else { return };
        if let Some(index) = entries.iter().position(|(start, _)| *start == key.start_ns) {
            entries[index].1.sites = entries[index].1.sites.saturating_sub(1);
            if entries[index].1.sites == 0 {
                entries.swap_remove(index);
            }
        }
        if entries.is_empty() {
            self.by_pid.remove(&key.pid);
        }
    }

    fn get_mut(&mut self, key: ProcessKey) -> Option<&mut Process> {
        self.by_pid.get_mut(&key.pid)?.iter_mut().find(|(start, _)| *start == key.start_ns).map(|(_, process)| process)
    }
}

/// Which connections to keep, in userspace. Live tracing applies `pids`, `ports` and `cgroups`
/// in the kernel already; `comms` only exists here, and a replay applies all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub pids: Vec<u32>,
    /// Process names as in /proc/PID/comm (at most 15 bytes; longer names match on their
    /// first 15).
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    pub cgroups: Vec<u64>,
}

impl Filter {
    pub fn wants(&self, pid: u32, comm: &str, cgroup_id: u64, local: SocketAddr, remote: SocketAddr) -> bool {
        let pid_ok = self.pids.is_empty() || self.pids.contains(&pid);
        let comm_ok = self.comms.is_empty() || self.comms.iter().any(|wanted| comm_matches(wanted, comm));
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&remote.port())
            || (local.port() != 0 && self.ports.contains(&local.port()));
        let cgroup_ok = self.cgroups.is_empty() || self.cgroups.contains(&cgroup_id);
        pid_ok && comm_ok && port_ok && cgroup_ok
    }
}

/// The kernel keeps 15 bytes of a task's name.
fn comm_matches(wanted: &str, comm: &str) -> bool {
    let truncated = match wanted.char_indices().nth(15) {
        Some(_) => {
            let mut end = 15;
            while !wanted.is_char_boundary(end) {
                end -= 1;
            }
            &wanted[..end]
        }
        None => wanted,
    };
    comm == wanted || comm == truncated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_within_a_few_ticks_are_one_process() {
        let mut processes = Processes::default();
        let a = processes.observe(10, 1_000_000_000, "app", 0, 5);
        let b = processes.observe(10, 1_010_000_000, "", 0, 6);
        let reused = processes.observe(10, 9_000_000_000, "other", 0, 7);
        assert_eq!(a, b);
        assert_ne!(a, reused);
        assert_eq!(processes.get(a).unwrap().comm, "app");
        assert_eq!(processes.get(reused).unwrap().comm, "other");
    }

    #[test]
    fn filters_match_like_the_kernel() {
        let any: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let unbound: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let filter = Filter { comms: vec!["kafka-consumer-service".into()], ..Filter::default() };
        assert!(filter.wants(1, "kafka-consumer-", 0, unbound, any));
        assert!(!filter.wants(1, "kafka", 0, unbound, any));
        let ports = Filter { ports: vec![5000], ..Filter::default() };
        assert!(ports.wants(1, "x", 0, unbound, any));
        assert!(!ports.wants(1, "x", 0, unbound, "10.0.0.1:80".parse().unwrap()));
        assert!(Filter::default().wants(1, "x", 0, unbound, any));
        let pids = Filter { pids: vec![2], cgroups: vec![7], ..Filter::default() };
        assert!(pids.wants(2, "x", 7, unbound, any));
        assert!(!pids.wants(2, "x", 8, unbound, any));
    }
}
