//! One inventory's result: the kernel's TCP sockets joined with the processes holding them,
//! split into connections and listeners, each connection with its direction.
//!
//! Direction comes from the listeners: a connection whose local port is a listening port of
//! the same namespace (on its address or a wildcard) is the accepted side. Otherwise it is
//! the connecting side if its local port lies in the namespace's ephemeral range (where
//! connect() picks ports), and unknown if not: a client that bound a fixed port, or an
//! accepted socket whose listener has closed. Where the range could not be read, a socket
//! without a listener counts as connecting.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
};

use super::{
    DiagSocket, NamespaceFailure, OwnerScanStats, ProcessRef, SockKind, SocketOwners, StartClock,
};
use crate::tcp::TcpState;

/// Every TCP socket on the host at one moment, with its owners.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC ns when the dump began, the instant the idle times count back from
    /// (give or take the dump's own duration): a connection has been idle since
    /// `taken_ns - last_data_*_ms * 1_000_000`.
    pub taken_ns: u64,
    /// Every socket that is not listening: live connections ([`SockKind::Full`]), and the
    /// time-wait and request sockets to tell apart from them (time-wait ones in their
    /// FIN_WAIT2 phase only, unless the inventory asks for [`DumpStates::All`]).
    ///
    /// [`DumpStates::All`]: super::DumpStates::All
    pub connections: Vec<Connection>,
    /// Listening sockets.
    pub listeners: Vec<Listener>,
    /// For matching owners' start times with the kernel events'.
    pub clock: StartClock,
    pub owner_scan: OwnerScanStats,
    /// The namespaces dumped, leaktrace's own first.
    pub namespaces: Vec<u64>,
    /// The namespaces that could not be dumped (entering refused, or the dump failed).
    pub namespace_failures: Vec<NamespaceFailure>,
    /// Processes whose network namespace could not be read (no CAP_SYS_PTRACE over them, or
    /// an AppArmor profile): their sockets may be missing from this inventory.
    pub unreadable_namespaces: Vec<u32>,
    /// sock_diag replies that did not decode and were skipped, since the inventory opened.
    pub undecodable: u64,
    by_cookie: HashMap<u64, usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub socket: DiagSocket,
    /// The processes holding it; empty when none does (time-wait and request sockets, a
    /// socket closed by its owner that is still shutting down, an fd we may not read).
    pub owners: Vec<ProcessRef>,
    pub direction: Direction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub socket: DiagSocket,
    pub owners: Vec<ProcessRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Opened by connect(): its local port is no listener's.
    Connect,
    /// Returned by accept(): its local port is a listening port of its namespace.
    Accept,
    /// Neither rule applies (see the module documentation).
    Unknown,
}

impl Snapshot {
    /// The connection with this socket cookie, whatever its state or kind.
    pub fn connection(&self, cookie: u64) -> Option<&Connection> {
        self.by_cookie
            .get(&cookie)
            .map(|&index| &self.connections[index])
    }

    /// Whether the socket with this cookie is still a connection: present as a full socket.
    /// A socket its owner closed that is still shutting down (FIN_WAIT1, CLOSING, LAST_ACK:
    /// inode 0, no owners) is live: the kernel has not moved it to CLOSE yet.
    /// A tracked socket for which this is false has closed, even if its CLOSE was missed; a
    /// dump can miss a socket that moved in the hash table while it ran, so confirm with
    /// [`Inventory::lookup`](super::Inventory::lookup) before acting on one absence.
    pub fn is_live(&self, cookie: u64) -> bool {
        self.connection(cookie)
            .is_some_and(|connection| connection.socket.kind == SockKind::Full)
    }

    /// Whether `process` (from this snapshot) is the process a kernel event names by `pid`
    /// and `process_start_ns`.
    pub fn same_process(&self, process: &ProcessRef, pid: u32, process_start_ns: u64) -> bool {
        process.pid == pid
            && self
                .clock
                .same_start(process.start_time_ns, process_start_ns)
    }

    /// Joins the dumped sockets with their owners. A socket the dump reported twice (it moved
    /// while the dump ran) is kept once, as last seen.
    pub(super) fn assemble(
        taken_ns: u64,
        clock: StartClock,
        sockets: Vec<DiagSocket>,
        owners: &SocketOwners,
        ephemeral_ports: &HashMap<u64, Option<RangeInclusive<u16>>>,
    ) -> Self {
        let mut latest: HashMap<u64, usize> = HashMap::with_capacity(sockets.len());
        for (index, socket) in sockets.iter().enumerate() {
            latest.insert(socket.cookie, index);
        }
        let mut listening: HashMap<(u64, u16), Vec<IpAddr>> = HashMap::new();
        for socket in &sockets {
            if socket.state == TcpState::Listen {
                listening
                    .entry((socket.netns, socket.local.port()))
                    .or_default()
                    .push(socket.local.ip());
            }
        }

        let mut connections = Vec::with_capacity(sockets.len());
        let mut listeners = Vec::new();
        let mut by_cookie = HashMap::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            if latest.get(&socket.cookie) != Some(&index) {
                continue;
            }
            let holders = if socket.inode == 0 {
                Vec::new()
            } else {
                owners.owners(socket.inode).to_vec()
            };
            if socket.state == TcpState::Listen {
                listeners.push(Listener {
                    socket,
                    owners: holders,
                });
                continue;
            }
            let ports = ephemeral_ports.get(&socket.netns).cloned().flatten();
            let direction = direction(
                socket.local,
                &listening.get(&(socket.netns, socket.local.port())),
                ports,
            );
            by_cookie.insert(socket.cookie, connections.len());
            connections.push(Connection {
                socket,
                owners: holders,
                direction,
            });
        }
        Self {
            taken_ns,
            connections,
            listeners,
            clock,
            owner_scan: owners.stats(),
            namespaces: Vec::new(),
            namespace_failures: Vec::new(),
            unreadable_namespaces: Vec::new(),
            undecodable: 0,
            by_cookie,
        }
    }
}

/// The rule of the module documentation, for one connection.
fn direction(
    local: SocketAddr,
    listeners: &Option<&Vec<IpAddr>>,
    ephemeral: Option<RangeInclusive<u16>>,
) -> Direction {
    let listened = listeners.is_some_and(|addresses| {
        addresses
            .iter()
            .any(|&address| address.is_unspecified() || address == local.ip())
    });
    if listened {
        return Direction::Accept;
    }
    match ephemeral {
        Some(range) if !range.contains(&local.port()) => Direction::Unknown,
        _ => Direction::Connect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 1;
    const POD: u64 = 2;

    fn socket(
        netns: u64,
        cookie: u64,
        inode: u64,
        state: TcpState,
        local: &str,
        remote: &str,
    ) -> DiagSocket {
        DiagSocket {
            netns,
            cookie,
            inode,
            uid: 0,
            state,
            kind: SockKind::Full,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            last_data_sent_ms: Some(0),
            last_data_recv_ms: Some(0),
            last_ack_recv_ms: Some(0),
        }
    }

    fn assemble(sockets: Vec<DiagSocket>, owners: &SocketOwners) -> Snapshot {
        let ports = HashMap::from([(HOST, Some(32768..=60999)), (POD, None)]);
        Snapshot::assemble(0, StartClock::new(100, 0), sockets, owners, &ports)
    }

    fn directions(snapshot: &Snapshot) -> Vec<(u64, Direction)> {
        snapshot
            .connections
            .iter()
            .map(|c| (c.socket.cookie, c.direction))
            .collect()
    }

    #[test]
    fn the_side_on_a_listening_port_is_the_accepted_one() {
        let snapshot = assemble(
            vec![
                socket(HOST, 1, 11, TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0"),
                socket(
                    HOST,
                    2,
                    12,
                    TcpState::Established,
                    "127.0.0.1:40000",
                    "127.0.0.1:8080",
                ),
                socket(
                    HOST,
                    3,
                    13,
                    TcpState::Established,
                    "127.0.0.1:8080",
                    "127.0.0.1:40000",
                ),
                socket(
                    HOST,
                    4,
                    14,
                    TcpState::CloseWait,
                    "10.0.0.1:8080",
                    "10.0.0.9:50000",
                ),
            ],
            &SocketOwners::default(),
        );
        assert_eq!(
            directions(&snapshot),
            [
                (2, Direction::Connect),
                (3, Direction::Accept),
                (4, Direction::Accept)
            ]
        );
        assert_eq!(snapshot.listeners.len(), 1);
    }

    #[test]
    fn a_listener_counts_only_in_its_namespace_and_on_its_address() {
        let snapshot = assemble(
            vec![
                socket(POD, 1, 11, TcpState::Listen, "10.0.0.1:443", "0.0.0.0:0"),
                // Same port, other namespace: no listener there; the pod's range is unknown.
                socket(
                    HOST,
                    2,
                    12,
                    TcpState::Established,
                    "10.0.0.1:443",
                    "10.0.0.7:50000",
                ),
                // Same namespace, other address than the listener's.
                socket(
                    POD,
                    3,
                    13,
                    TcpState::Established,
                    "127.0.0.1:443",
                    "127.0.0.1:50000",
                ),
                socket(
                    POD,
                    4,
                    14,
                    TcpState::Established,
                    "10.0.0.1:443",
                    "10.0.0.7:50000",
                ),
            ],
            &SocketOwners::default(),
        );
        assert_eq!(
            directions(&snapshot),
            [
                (2, Direction::Unknown),
                (3, Direction::Connect),
                (4, Direction::Accept)
            ]
        );
    }

    #[test]
    fn a_fixed_port_without_a_listener_is_unknown() {
        let snapshot = assemble(
            vec![socket(
                HOST,
                1,
                11,
                TcpState::Established,
                "10.0.0.1:5432",
                "10.0.0.2:41000",
            )],
            &SocketOwners::default(),
        );
        assert_eq!(directions(&snapshot), [(1, Direction::Unknown)]);
    }

    #[test]
    fn owners_join_by_inode_and_duplicates_keep_the_last_report() {
        let mut owners = SocketOwners::default();
        let curl = ProcessRef {
            pid: 7,
            comm: "curl".into(),
            start_time_ns: 10,
        };
        owners.add(12, &curl);
        let mut moved = socket(
            HOST,
            2,
            12,
            TcpState::CloseWait,
            "127.0.0.1:40000",
            "127.0.0.1:8080",
        );
        moved.last_data_sent_ms = Some(5);
        let mut time_wait = socket(
            HOST,
            3,
            0,
            TcpState::TimeWait,
            "127.0.0.1:40001",
            "127.0.0.1:8080",
        );
        time_wait.kind = SockKind::TimeWait;
        let snapshot = assemble(
            vec![
                socket(
                    HOST,
                    2,
                    12,
                    TcpState::Established,
                    "127.0.0.1:40000",
                    "127.0.0.1:8080",
                ),
                time_wait,
                moved,
            ],
            &owners,
        );
        assert_eq!(snapshot.connections.len(), 2);
        let connection = snapshot.connection(2).unwrap();
        assert_eq!(
            (connection.socket.state, connection.socket.last_data_sent_ms),
            (TcpState::CloseWait, Some(5))
        );
        assert_eq!(connection.owners, std::slice::from_ref(&curl));
        assert!(snapshot.is_live(2));
        assert!(
            !snapshot.is_live(3),
            "a time-wait socket is a closed connection"
        );
        assert!(snapshot.connection(3).unwrap().owners.is_empty());
        assert!(!snapshot.is_live(99));
        assert!(snapshot.same_process(&curl, 7, 10));
        assert!(!snapshot.same_process(&curl, 8, 10));
    }
}
