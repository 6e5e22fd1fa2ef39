//! What the kernel's own tables say a process holds, read from /proc without eBPF: the ground
//! truth the test programs' claims (and later leaktrace's counts) are checked against.
//!
//! Uses the `procfs` crate (the maintained parser of /proc; default features off, so no chrono
//! or flate2): a connection counts when one of the process's file descriptors is its socket
//! (`/proc/PID/fd` -> `socket:[inode]`) and the process's network namespace lists that inode as
//! ESTABLISHED (`/proc/PID/net/tcp`, `tcp6`).
use std::collections::HashSet;

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

/// The ESTABLISHED TCP connections process `pid` holds an fd of, that `matches` accepts.
#[track_caller]
pub fn established(pid: u32, matches: impl Fn(&TcpNetEntry) -> bool) -> usize {
    let fail = |what: &str, err: procfs::ProcError| -> ! {
        panic!("cannot read {what} of pid {pid} (has it exited? reading another user's needs root): {err}")
    };
    let process = Process::new(pid as i32).unwrap_or_else(|err| fail("/proc", err));
    let sockets: HashSet<u64> = process
        .fd()
        .unwrap_or_else(|err| fail("the fds", err))
        .filter_map(|fd| match fd.ok()?.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let mut table = process.tcp().unwrap_or_else(|err| fail("net/tcp", err));
    table.extend(process.tcp6().unwrap_or_else(|err| fail("net/tcp6", err)));
    table
        .iter()
        .filter(|entry| entry.state == TcpState::Established && sockets.contains(&entry.inode) && matches(entry))
        .count()
}

/// The ESTABLISHED connections `pid` holds to a peer's `port` (a client's, to its server).
#[track_caller]
pub fn established_to(pid: u32, port: u16) -> usize {
    established(pid, |entry| entry.remote_address.port() == port)
}

/// The ESTABLISHED connections `pid` holds on its own `port` (a server's accepted ones).
#[track_caller]
pub fn established_on(pid: u32, port: u16) -> usize {
    established(pid, |entry| entry.local_address.port() == port)
}
