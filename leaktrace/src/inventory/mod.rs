//! The socket inventory: every TCP socket on the host right now, in every network namespace,
//! with the processes holding it. The tracker takes one at start and then every few seconds:
//!
//! - to seed connections that existed before leaktrace started ("born before start", with
//!   their owner, never a made-up lifetime or stack);
//! - to sweep: a tracked socket (by cookie) that is no longer live has closed, even if the
//!   probes missed its CLOSE;
//! - for idle times: the kernel keeps per socket the time since the last data sent and
//!   received (`tcp_info`), so no probe has to run on every send and receive.
//!
//! No aya here. The parts: `diag` (sock_diag dumps of one namespace: [`SockDiag`]), `netns`
//! (a socket per namespace), `owners` (`/proc/*/fd` socket inodes: [`SocketOwners`]),
//! `process` (`/proc` start times against the kernel's: [`StartClock`]), `snapshot` (the join,
//! and each connection's [`Direction`]).
//!
//! An inventory blocks for as long as the dumps and the `/proc` walk take (milliseconds for
//! tens of thousands of sockets): call it from a blocking thread, not an async task.
mod diag;
mod error;
mod netns;
mod owners;
mod procdir;
mod process;
mod snapshot;

pub use diag::{DiagSocket, DumpStates, SockDiag, SockKind, parse_dump_batch};
pub use error::InventoryError;
pub use netns::NamespaceFailure;
pub use owners::{OwnerScanStats, SocketOwners, socket_inode};
pub use process::{ProcessRef, START_TOLERANCE_TICKS, StartClock, parse_stat};
pub(crate) use process::checked_stat_line;
pub use snapshot::{Connection, Direction, Listener, Snapshot};

use std::net::SocketAddr;

use netns::Namespaces;
use procdir::ProcDir;
use rustix::time::ClockId;

/// The open sock_diag sockets (one per network namespace) and `/proc`, kept between
/// inventories.
pub struct Inventory {
    proc: ProcDir,
    namespaces: Namespaces,
    states: DumpStates,
}

impl Inventory {
    /// Opens `/proc` and a sock_diag socket in the calling thread's network namespace (others
    /// are entered at the first inventory).
    pub fn new() -> Result<Self, InventoryError> {
        Ok(Self {
            proc: ProcDir::open()?,
            namespaces: Namespaces::open()?,
            states: DumpStates::default(),
        })
    }

    /// Which states the dumps ask for: all but TIME_WAIT unless set (see [`DumpStates`]).
    pub fn set_dump_states(&mut self, states: DumpStates) {
        self.states = states;
    }

    /// The inode of leaktrace's own network namespace.
    pub fn own_netns(&self) -> u64 {
        self.namespaces.own_netns()
    }

    /// Every TCP socket in every network namespace (IPv4 and IPv6, in the
    /// [states](Self::set_dump_states) asked for), without owners.
    /// Namespaces that cannot be dumped are left out; [`take`](Self::take) reports them.
    pub fn dump_tcp(&mut self) -> Result<Vec<DiagSocket>, InventoryError> {
        let pids = self.proc.pids()?;
        Ok(self.dump_namespaces(&pids)?.sockets)
    }

    /// The sockets joined with their owners: the tracker's seed and sweep in one call.
    pub fn take(&mut self) -> Result<Snapshot, InventoryError> {
        self.take_inner(true)
    }

    /// [`take`](Self::take) without the `/proc/*/fd` walk: no owners (every `owners` is empty,
    /// `owner_scan` is zero), directions and idle times as usual. For the periodic sweeps and
    /// idle times, which go by cookie: the owner walk is most of an inventory's cost (one
    /// readlink per fd of every process), and only seeding needs it.
    pub fn take_without_owners(&mut self) -> Result<Snapshot, InventoryError> {
        self.take_inner(false)
    }

    fn take_inner(&mut self, scan_owners: bool) -> Result<Snapshot, InventoryError> {
        let clock = StartClock::now();
        let taken_ns = process::now_ns(ClockId::Monotonic);
        let pids = self.proc.pids()?;
        let dumped = self.dump_namespaces(&pids)?;
        let owners = if scan_owners {
            SocketOwners::scan_pids(&self.proc, &pids, &clock)
        } else {
            SocketOwners::default()
        };
        let mut snapshot = Snapshot::assemble(
            taken_ns,
            clock,
            dumped.sockets,
            &owners,
            &self.namespaces.ephemeral_ports(),
        );
        snapshot.namespaces = dumped.namespaces;
        snapshot.namespace_failures = dumped.failures;
        snapshot.unreadable_namespaces = dumped.unreadable;
        snapshot.undecodable = self
            .namespaces
            .open_namespaces()
            .map(|(_, open)| open.diag.undecodable())
            .sum();
        Ok(snapshot)
    }

    /// The socket with this exact tuple and cookie, searched in every open namespace: the
    /// confirmation before treating a tracked socket missing from one dump as closed (a dump
    /// can miss a socket that moved in the kernel's hash table while it ran). `None`, or a
    /// [`SockKind::TimeWait`] answer, means the connection is over.
    pub fn lookup(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        cookie: u64,
    ) -> Result<Option<DiagSocket>, InventoryError> {
        for (_, open) in self.namespaces.open_namespaces() {
            if let Some(found) = open.diag.lookup(local, remote, cookie)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Refreshes the namespaces and dumps each. Our own namespace's failure is the
    /// inventory's; another's is reported and that namespace is entered afresh next time.
    fn dump_namespaces(&mut self, pids: &[u32]) -> Result<Dumped, InventoryError> {
        let present = netns::present(&self.proc, pids);
        self.namespaces.refresh(&present.namespaces)?;
        let own = self.namespaces.own_netns();
        let mut sockets = Vec::new();
        let mut namespaces = Vec::new();
        let mut failures: Vec<NamespaceFailure> = self.namespaces.refused().collect();
        let mut broken = Vec::new();
        for (netns, open) in self.namespaces.open_namespaces() {
            let before = sockets.len();
            match open.diag.dump_tcp_into(self.states, &mut sockets) {
                Ok(()) => namespaces.push(netns),
                Err(err) if netns == own => return Err(err),
                Err(err) => {
                    sockets.truncate(before);
                    failures.push(NamespaceFailure {
                        netns,
                        error: std::sync::Arc::new(err),
                    });
                    broken.push(netns);
                }
            }
        }
        for netns in broken {
            self.namespaces.close(netns);
        }
        Ok(Dumped {
            sockets,
            namespaces,
            failures,
            unreadable: present.unreadable,
        })
    }
}

/// What one round of namespace dumps gave.
struct Dumped {
    sockets: Vec<DiagSocket>,
    /// The namespaces dumped.
    namespaces: Vec<u64>,
    failures: Vec<NamespaceFailure>,
    /// Processes whose namespace could not be read.
    unreadable: Vec<u32>,
}
