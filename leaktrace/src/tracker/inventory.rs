//! What the tracker learns from a socket inventory (sock_diag + /proc, taken by the caller):
//! connections born before start (seeding), how long each live connection has been idle, and
//! connections that are gone although no CLOSE was seen (sweeping). The inventory is plain
//! data, recorded alongside the events, so a replay learns the same.
use std::{collections::HashSet, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::{Connection, Direction, MaybeNs, SiteKeyRef, Tracker};
use crate::tcp::TcpState;

/// The TCP sockets that existed at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// When it was taken (CLOCK_MONOTONIC ns, like the events).
    pub ts_ns: u64,
    /// Whether every network namespace was listed: only a complete inventory may end
    /// connections by their absence.
    pub complete: bool,
    /// Processes whose sockets may be missing (their network namespace could not be read):
    /// their connections are not ended by their absence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlisted_pids: Vec<u32>,
    pub sockets: Vec<ObservedSocket>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservedSocket {
    /// The socket cookie (the same value the probes take with `bpf_get_socket_cookie`).
    pub cookie: u64,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `accept` when the local port is a listening port of the same network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Milliseconds since data was last sent or received (tcp_info), when the kernel says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// The process holding it (the first, if several share the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ObservedOwner>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedOwner {
    pub pid: u32,
    /// The process's start (CLOCK_MONOTONIC ns, converted from /proc's clock ticks).
    pub start_ns: u64,
    pub comm: String,
    #[serde(default)]
    pub cgroup_id: u64,
}

/// States of a connection worth seeding: not listeners, not the kernel's time-wait leftovers.
fn is_connection(state: TcpState) -> bool {
    !matches!(state, TcpState::Listen | TcpState::TimeWait | TcpState::Close | TcpState::NewSynRecv | TcpState::Unknown)
}

impl Tracker {
    /// Seeds the connections that existed before start (call once, with the first inventory,
    /// after the probes are attached and their first events applied). Sockets already traced
    /// are skipped; sockets without an owning process (orphans the kernel is closing) too.
    pub fn seed(&mut self, inventory: &Inventory) {
        self.inventory_ns = self.inventory_ns.max(Some(inventory.ts_ns));
        for socket in &inventory.sockets {
            if !is_connection(socket.state) || self.cookies.contains_key(&socket.cookie) || self.seeded.contains_key(&socket.cookie)
            {
                continue;
            }
            let Some(owner) = &socket.owner else { continue };
            if !self.filter.wants(owner.pid, &owner.comm, owner.cgroup_id, socket.local, socket.remote) {
                self.stats.filtered += 1;
                continue;
            }
            let process = self.processes.observe(owner.pid, owner.start_ns, &owner.comm, owner.cgroup_id, inventory.ts_ns);
            let direction = socket.direction.unwrap_or(Direction::Connect);
            let key = SiteKeyRef { process, direction, stack: &[], born_before_start: true };
            let site = self.site_for(&key, None, inventory.ts_ns);
            let peer = self.site_mut(site).open(inventory.ts_ns, socket.remote, false);
            let in_close_wait = socket.state == TcpState::CloseWait;
            if in_close_wait {
                self.site_mut(site).close_wait += 1;
            }
            let connection = Connection {
                site,
                peer,
                birth_ns: 0,
                opened_ns: MaybeNs::NONE,
                cookie: socket.cookie,
                state: socket.state,
                established: socket.state != TcpState::SynSent,
                // Not when it entered CLOSE_WAIT, but a lower bound on how long it has been in it.
                close_wait_since_ns: MaybeNs::from_option(in_close_wait.then_some(inventory.ts_ns)),
                last_activity_ns: MaybeNs::from_option(idle_since(inventory.ts_ns, socket.idle_ms)),
                missing_from_inventory: 0,
            };
            self.seeded.insert(socket.cookie, connection);
            self.stats.seeded += 1;
        }
    }

    /// Learns idle times and the states of seeded connections from a later inventory, and ends
    /// connections missing from two complete inventories in a row. Call it after applying every
    /// event read before the inventory was taken, so a CLOSE in flight is not mistaken for an
    /// absence.
    pub fn observe(&mut self, inventory: &Inventory) {
        self.inventory_ns = self.inventory_ns.max(Some(inventory.ts_ns));
        let mut listed = HashSet::with_capacity(inventory.sockets.len());
        for socket in &inventory.sockets {
            listed.insert(socket.cookie);
            let last_activity = idle_since(inventory.ts_ns, socket.idle_ms);
            if let Some(&sk) = self.cookies.get(&socket.cookie) {
                if let Some(connection) = self.connections.get_mut(&sk) {
                    connection.last_activity_ns = MaybeNs::from_option(last_activity.or(connection.last_activity_ns.get()));
                }
            } else if let Some(connection) = self.seeded.get_mut(&socket.cookie) {
                connection.last_activity_ns = MaybeNs::from_option(last_activity.or(connection.last_activity_ns.get()));
                let (was, now) = (connection.state, socket.state);
                connection.state = now;
                let site = connection.site;
                if was != TcpState::CloseWait && now == TcpState::CloseWait {
                    connection.close_wait_since_ns = MaybeNs::some(inventory.ts_ns);
                    self.site_mut(site).close_wait += 1;
                } else if was == TcpState::CloseWait && now != TcpState::CloseWait {
                    connection.close_wait_since_ns = MaybeNs::NONE;
                    let site = self.site_mut(site);
                    site.close_wait = site.close_wait.saturating_sub(1);
                }
            }
        }
        if inventory.complete {
            self.sweep(&listed, &inventory.unlisted_pids, inventory.ts_ns);
        }
    }

    fn sweep(&mut self, listed: &HashSet<u64>, unlisted_pids: &[u32], ts_ns: u64) {
        let mut gone = Vec::new();
        for (&sk, connection) in &mut self.connections {
            // A connection opened after the inventory was taken cannot be in it, and one whose
            // owner's namespace could not be read may be missing from it.
            if connection.cookie == 0 || connection.opened_ns.get().is_none_or(|opened| opened >= ts_ns) || owned_by(&self.sites, connection, unlisted_pids) {
                continue;
            }
            if listed.contains(&connection.cookie) {
                connection.missing_from_inventory = 0;
            } else {
                connection.missing_from_inventory += 1;
                if connection.missing_from_inventory >= 2 {
                    gone.push(sk);
                }
            }
        }
        for sk in gone {
            self.stats.closes_inferred += 1;
            self.end(sk, ts_ns, false);
        }
        // No probe reports a seeded connection's CLOSE: its absence is the only sign, and no
        // event can be in flight for it.
        let gone_seeded: Vec<u64> = self
            .seeded
            .iter()
            .filter(|(cookie, connection)| !listed.contains(cookie) && !owned_by(&self.sites, connection, unlisted_pids))
            .map(|(cookie, _)| *cookie)
            .collect();
        for cookie in gone_seeded {
            self.end_seeded(cookie, ts_ns);
        }
    }
}

/// Whether `connection`'s call site belongs to one of the processes `pids`.
fn owned_by(sites: &[Option<super::site::Site>], connection: &Connection, pids: &[u32]) -> bool {
    !pids.is_empty()
        && sites.get(connection.site as usize).and_then(Option::as_ref).is_some_and(|site| pids.contains(&site.key.process.pid))
}

fn idle_since(ts_ns: u64, idle_ms: Option<u64>) -> Option<u64> {
    idle_ms.map(|ms| ts_ns.saturating_sub(ms.saturating_mul(1_000_000)))
}
