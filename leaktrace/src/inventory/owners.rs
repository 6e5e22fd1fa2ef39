//! Which processes hold which sockets: every `/proc/PID/fd/N` that links to `socket:[INODE]`.
//! sock_diag gives a socket's inode but not its holders; this scan is the other half of the
//! join. A socket held by several processes (fork, SCM_RIGHTS) has several owners.
//!
//! Each process is read through a directory fd of its own `/proc/PID`, so a pid reused
//! mid-scan cannot mix two processes: the old directory just stops answering. Processes that
//! exit, fds that close, and directories we may not read (no CAP_SYS_PTRACE for another
//! user's process) are skipped and counted in [`OwnerScanStats`], never an error.
//!
//! The walk is hand-written (rustix, no unsafe) rather than the `procfs` crate's (whose
//! parser, procfs-core, reads the stat line): its fd listing opens, stats and closes every fd
//! around the readlink, four syscalls per fd where one does, and the fd walk is most of an
//! inventory's cost. readlink and not stat, because stat follows the link into the target's
//! filesystem and can hang on a dead NFS or FUSE mount.
use std::{
    collections::HashMap,
    fmt::Write,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::{
    fs::{Dir, Mode, OFlags, openat, readlinkat_raw},
    io::Errno,
};

use super::{InventoryError, ProcessRef, StartClock, procdir::ProcDir, process::parse_stat};

/// The holders of each socket inode.
#[derive(Clone, Debug, Default)]
pub struct SocketOwners {
    by_inode: HashMap<u64, Vec<ProcessRef>>,
    stats: OwnerScanStats,
}

/// What the owner scan saw and skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerScanStats {
    /// Processes listed in `/proc`.
    pub processes: u64,
    /// Processes that exited between the listing and their scan.
    pub processes_vanished: u64,
    /// Processes whose fds we may not read (EACCES/EPERM).
    pub processes_denied: u64,
    /// Processes skipped for another error (counted, never fatal).
    pub processes_failed: u64,
    /// fds that closed between their listing and their readlink.
    pub fds_vanished: u64,
    /// fds that are sockets, over all processes (a socket in two fds counts twice).
    pub socket_fds: u64,
}

impl SocketOwners {
    /// Scans every process in `/proc` now.
    pub fn scan() -> Result<Self, InventoryError> {
        let proc = ProcDir::open()?;
        let pids = proc.pids()?;
        Ok(Self::scan_pids(&proc, &pids, &StartClock::now()))
    }

    pub(super) fn scan_pids(proc: &ProcDir, pids: &[u32], clock: &StartClock) -> Self {
        let mut owners = Self::default();
        let mut scratch = Scratch::default();
        for &pid in pids {
            owners.stats.processes += 1;
            match scan_process(proc.fd(), pid, clock, &mut scratch, &mut owners.stats) {
                Ok(Some(process)) => {
                    for inode in scratch.inodes.drain(..) {
                        owners.add(inode, &process);
                    }
                }
                Ok(None) => {}
                Err(errno) => match errno {
                    Errno::NOENT | Errno::SRCH => owners.stats.processes_vanished += 1,
                    Errno::ACCESS | Errno::PERM => owners.stats.processes_denied += 1,
                    _ => owners.stats.processes_failed += 1,
                },
            }
        }
        owners
    }

    /// Records that `process` holds socket `inode` (once per process, however many fds).
    pub(super) fn add(&mut self, inode: u64, process: &ProcessRef) {
        let holders = self.by_inode.entry(inode).or_default();
        if holders.last().is_none_or(|last| last.pid != process.pid) {
            holders.push(process.clone());
        }
    }

    /// The processes holding socket `inode` (empty for inode 0 or a socket nobody holds).
    pub fn owners(&self, inode: u64) -> &[ProcessRef] {
        self.by_inode
            .get(&inode)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Distinct socket inodes found.
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    pub fn stats(&self) -> OwnerScanStats {
        self.stats
    }
}

/// Buffers reused from one process to the next.
#[derive(Default)]
struct Scratch {
    inodes: Vec<u64>,
    name: String,
    stat: Vec<u8>,
}

/// The sockets of one process into `scratch.inodes`, and the process if it holds any.
fn scan_process(
    proc: BorrowedFd,
    pid: u32,
    clock: &StartClock,
    scratch: &mut Scratch,
    stats: &mut OwnerScanStats,
) -> Result<Option<ProcessRef>, Errno> {
    scratch.name.clear();
    write!(scratch.name, "{pid}").unwrap();
    let process_dir = open_dir(proc, scratch.name.as_str())?;
    let mut fd_dir = Dir::new(open_dir(process_dir.as_fd(), "fd")?)?;
    scratch.inodes.clear();
    let mut link = [0u8; 64];
    while let Some(entry) = fd_dir.read() {
        let entry = entry?;
        if entry.file_name().to_bytes().starts_with(b".") {
            continue;
        }
        // readlinkat leaves the directory stream's position alone.
        match readlinkat_raw(fd_dir.fd()?, entry.file_name(), &mut link[..]) {
            Ok(len) => {
                if let Some(inode) = socket_inode(&link[..len]) {
                    stats.socket_fds += 1;
                    scratch.inodes.push(inode);
                }
            }
            Err(Errno::NOENT) => stats.fds_vanished += 1,
            Err(errno) => return Err(errno),
        }
    }
    if scratch.inodes.is_empty() {
        return Ok(None);
    }

    // Only holders of sockets need their stat line read.
    let stat = openat(
        process_dir.as_fd(),
        "stat",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    read_all(stat.as_fd(), &mut scratch.stat)?;
    // The directory answered for the listing, so a line that does not parse is a kernel
    // format this build does not know: count the process as failed rather than guess.
    let (comm, start_ticks) = parse_stat(&scratch.stat).map_err(|_| Errno::INVAL)?;
    Ok(Some(ProcessRef {
        pid,
        comm,
        start_time_ns: clock.ticks_to_ns(start_ticks),
    }))
}

fn open_dir(parent: BorrowedFd, name: &str) -> Result<OwnedFd, Errno> {
    openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn read_all(fd: BorrowedFd, buffer: &mut Vec<u8>) -> Result<(), Errno> {
    buffer.clear();
    let mut chunk = [0u8; 1024];
    loop {
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(Errno::INTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// The inode in a `socket:[INODE]` link target (a `/proc/PID/fd/N` link), `None` for any other.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_give_their_inode_and_others_none() {
        assert_eq!(socket_inode(b"socket:[123456]"), Some(123456));
        assert_eq!(
            socket_inode(b"socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
        for other in [
            &b"pipe:[123]"[..],
            b"/dev/null",
            b"anon_inode:[eventfd]",
            b"socket:[]",
            b"socket:[12",
            b"socket:[x]",
        ] {
            assert_eq!(
                socket_inode(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_process_holding_a_socket_in_two_fds_is_one_owner() {
        let mut owners = SocketOwners::default();
        let process = ProcessRef {
            pid: 7,
            comm: "curl".into(),
            start_time_ns: 10,
        };
        let child = ProcessRef {
            pid: 8,
            comm: "curl".into(),
            start_time_ns: 20,
        };
        owners.add(99, &process);
        owners.add(99, &process);
        owners.add(99, &child);
        assert_eq!(owners.owners(99), [process, child]);
        assert!(owners.owners(100).is_empty());
    }
}
