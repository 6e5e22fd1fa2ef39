//! Network namespaces: sock_diag answers only for the namespace its socket was created in,
//! and on a Kubernetes node most connections live in pod namespaces. The namespaces are the
//! distinct inodes of `/proc/*/ns/net`, enumerated again at every inventory. For each one not
//! seen before, a short-lived thread enters it (setns(2) on a process's `ns/net`) and creates
//! a sock_diag socket there; the socket keeps its namespace, so it is used from any thread
//! afterwards and kept until the namespace is gone from `/proc`. Dropping it then matters: an
//! open socket keeps a dead namespace alive.
//!
//! leaktrace's own namespace (the one the thread that created the [`Namespaces`] is in) is
//! opened without setns, so it is dumped even where entering others is not permitted. A
//! namespace that refused us stays refused while it exists; it is reported, not retried.
//! Only thread-group leaders are listed in `/proc`, so a namespace that only a non-leader
//! thread has entered (as our own entering thread does) is not enumerated.
use std::{
    collections::HashMap, fmt::Write, fs::File, ops::RangeInclusive, os::fd::AsFd, path::PathBuf,
    sync::Arc,
};

use rustix::{
    fs::{AtFlags, CWD, fstat, statat},
    thread::{LinkNameSpaceType, move_into_link_name_space},
};

use super::{InventoryError, SockDiag, procdir::ProcDir};

/// A namespace's sock_diag socket and what else is read inside it.
pub(super) struct OpenNamespace {
    pub(super) diag: SockDiag,
    /// `net.ipv4.ip_local_port_range` in this namespace: where connect() picks local ports.
    pub(super) ephemeral_ports: Option<RangeInclusive<u16>>,
}

/// A namespace that could not be inventoried, and why.
#[derive(Clone, Debug)]
pub struct NamespaceFailure {
    pub netns: u64,
    pub error: Arc<InventoryError>,
}

/// Every namespace's open socket, keyed by namespace inode.
pub(super) struct Namespaces {
    own: OpenNamespace,
    others: HashMap<u64, OpenNamespace>,
    refused: HashMap<u64, Arc<InventoryError>>,
}

impl Namespaces {
    /// Opens the calling thread's own namespace.
    pub(super) fn open() -> Result<Self, InventoryError> {
        let own = OpenNamespace::here(current_netns()?)?;
        Ok(Self {
            own,
            others: HashMap::new(),
            refused: HashMap::new(),
        })
    }

    pub(super) fn own_netns(&self) -> u64 {
        self.own.diag.netns()
    }

    /// Brings the set of open namespaces in line with `present` (namespace inode -> a pid in
    /// it): closes the ones gone, enters the new ones.
    pub(super) fn refresh(&mut self, present: &HashMap<u64, u32>) -> Result<(), InventoryError> {
        self.others.retain(|netns, _| present.contains_key(netns));
        self.refused.retain(|netns, _| present.contains_key(netns));
        let own = self.own_netns();
        let new: Vec<(u64, u32)> = present
            .iter()
            .filter(|(netns, _)| {
                **netns != own
                    && !self.others.contains_key(netns)
                    && !self.refused.contains_key(netns)
            })
            .map(|(&netns, &pid)| (netns, pid))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        for (netns, entered) in enter_all(new)? {
            match entered {
                Ok(Some(open)) => {
                    self.others.insert(netns, open);
                }
                // The process left or exited: the next inventory finds the namespace again
                // through another process, or not at all.
                Ok(None) => {}
                Err(err) => {
                    self.refused.insert(netns, Arc::new(err));
                }
            }
        }
        Ok(())
    }

    /// Mutable access to every open namespace, our own first.
    pub(super) fn open_namespaces(&mut self) -> impl Iterator<Item = (u64, &mut OpenNamespace)> {
        let own = self.own_netns();
        std::iter::once((own, &mut self.own))
            .chain(self.others.iter_mut().map(|(&netns, open)| (netns, open)))
    }

    /// Forgets a namespace whose dump failed: it is entered afresh next time.
    pub(super) fn close(&mut self, netns: u64) {
        self.others.remove(&netns);
    }

    pub(super) fn refused(&self) -> impl Iterator<Item = NamespaceFailure> + '_ {
        self.refused.iter().map(|(&netns, error)| NamespaceFailure {
            netns,
            error: Arc::clone(error),
        })
    }

    pub(super) fn ephemeral_ports(&self) -> HashMap<u64, Option<RangeInclusive<u16>>> {
        std::iter::once((self.own_netns(), &self.own))
            .chain(self.others.iter().map(|(&netns, open)| (netns, open)))
            .map(|(netns, open)| (netns, open.ephemeral_ports.clone()))
            .collect()
    }
}

impl OpenNamespace {
    /// Opens the namespace the calling thread is in.
    fn here(netns: u64) -> Result<Self, InventoryError> {
        Ok(Self {
            diag: SockDiag::open(netns)?,
            ephemeral_ports: read_ephemeral_ports(),
        })
    }
}

/// The distinct namespaces of the processes `pids`, each with one pid that is in it, and the
/// processes whose namespace could not be read. A process that exits is skipped; one we may not
/// inspect (no CAP_SYS_PTRACE over it, or an AppArmor profile) is listed apart, since its
/// connections may then be missing from the inventory and must not be taken for closed.
pub(super) fn present(proc: &ProcDir, pids: &[u32]) -> Present {
    let mut found = Present::default();
    let mut path = String::new();
    for &pid in pids {
        path.clear();
        write!(path, "{pid}/ns/net").unwrap();
        match statat(proc.fd(), path.as_str(), AtFlags::empty()) {
            Ok(stat) => {
                found.namespaces.entry(stat.st_ino).or_insert(pid);
            }
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::SRCH) => {}
            Err(_) => found.unreadable.push(pid),
        }
    }
    found
}

/// What [`present`] found.
#[derive(Default)]
pub(super) struct Present {
    pub(super) namespaces: HashMap<u64, u32>,
    /// Processes whose `ns/net` could not be read.
    pub(super) unreadable: Vec<u32>,
}

/// The namespace inode of the calling thread.
fn current_netns() -> Result<u64, InventoryError> {
    const SELF_NETNS: &str = "/proc/thread-self/ns/net";
    statat(CWD, SELF_NETNS, AtFlags::empty())
        .map(|stat| stat.st_ino)
        .map_err(|errno| super::procdir::proc_error(SELF_NETNS, errno))
}

type Entered = Result<Option<OpenNamespace>, InventoryError>;

/// Enters each namespace in turn on one new thread, which then exits: a thread that has
/// moved to another namespace must not go back to work for anyone else.
fn enter_all(namespaces: Vec<(u64, u32)>) -> Result<Vec<(u64, Entered)>, InventoryError> {
    let thread = std::thread::Builder::new()
        .name("leaktrace-netns".into())
        .spawn(move || {
            namespaces
                .into_iter()
                .map(|(netns, pid)| (netns, enter(netns, pid)))
                .collect()
        })
        .map_err(|source| InventoryError::Thread { source })?;
    Ok(thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// On the entering thread: moves into namespace `netns` through process `pid` and opens it.
/// `Ok(None)` when the process is gone or no longer in that namespace.
fn enter(netns: u64, pid: u32) -> Entered {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err)
            if err.raw_os_error() == Some(libc::ENOENT)
                || err.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(InventoryError::EnterNamespace {
                netns,
                path,
                source,
            });
        }
    };
    // The pid may have been reused, or the process may have moved, since the listing.
    if fstat(file.as_fd()).map(|stat| stat.st_ino).ok() != Some(netns) {
        return Ok(None);
    }
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|errno| {
        InventoryError::EnterNamespace {
            netns,
            path,
            source: errno.into(),
        }
    })?;
    OpenNamespace::here(netns).map(Some)
}

/// `net.ipv4.ip_local_port_range` of the calling thread's namespace (`/proc/sys/net` answers
/// for the reader's namespace).
fn read_ephemeral_ports() -> Option<RangeInclusive<u16>> {
    parse_port_range(&std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?)
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let low = numbers.next()?.ok()?;
    let high = numbers.next()?.ok()?;
    Some(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_range_reads_as_the_kernel_writes_it() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range(""), None);
    }
}
