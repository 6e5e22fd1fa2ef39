//! The leak tracker: follows every connection from its open to its CLOSE and groups the live
//! ones by the call site that opened them, then judges each call site (leak, suspect, churn,
//! ok). It never imports aya: it takes decoded [`Event`]s and socket [`Inventory`]s, so it is
//! tested with synthetic streams and replayed from recordings.
//!
//! - identity is the socket (`struct sock` address + birth time), never the pid or the fd;
//!   a reused address with a new birth means the old socket ended (its CLOSE was missed);
//! - processes are (pid, start time), so a reused pid is a new process;
//! - connections that existed before tracing started come from an [`Inventory`] ("born before
//!   start"), with their owner but no stack and no made-up lifetime;
//! - memory stays bounded: closed sockets are forgotten at once, call sites without live
//!   connections age out after [`Limits::site_ttl`], and at most [`Limits::max_sites`] are kept.
mod connection;
pub(crate) mod hash;
mod inventory;
mod process;
mod site;
mod snapshot;
pub mod thresholds;
pub mod verdict;
mod window;

use std::time::Duration;

use serde::Serialize;

use crate::{
    event::{ConnOpen, Event, EventBody, SocketId, StateChange},
    tcp::TcpState,
};
use connection::{Connection, MaybeNs};
use hash::{FastMap, FastSet};
pub use inventory::{Inventory, ObservedOwner, ObservedSocket};
pub use process::{Filter, ProcessKey};
use process::Processes;
pub use site::{Destination, Direction, LIFETIME_BOUNDS_S, Lifetimes, SiteKey};
use site::{Site, SiteKeyParts, SiteKeyRef};
pub use snapshot::{ProcessView, SiteView, Snapshot};
pub use thresholds::Thresholds;
pub use verdict::{Finding, SiteFacts, Verdict};

/// How much the tracker keeps, besides live connections (which it never drops).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A call site with no live connection and no event for this long is forgotten.
    pub site_ttl: Duration,
    /// Most call sites kept; beyond it, the longest-quiet sites without live connections go.
    pub max_sites: usize,
    /// Most transitions held for sockets whose open has not arrived yet.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { site_ttl: Duration::from_secs(600), max_sites: 20_000, max_pending: 4096 }
    }
}

/// What the tracker did with what it was given, for the report's `tracker` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TrackerStats {
    pub events: u64,
    /// Opens and seeded connections the userspace filters (`--comm`, replay's filters) dropped.
    pub filtered: u64,
    /// Connections seeded from the first inventory (born before start).
    pub seeded: u64,
    /// Transitions of sockets whose open never arrived.
    pub orphan_transitions: u64,
    /// Connections whose CLOSE no probe saw, ended because their socket address was reused or
    /// because the socket was gone from two inventories in a row.
    pub closes_inferred: u64,
    /// Seeded connections found to be born after all (an event arrived for them).
    pub seed_duplicates: u64,
    /// Call sites forgotten (no live connection for `site_ttl`, or over `max_sites`).
    pub sites_expired: u64,
    /// Of those, the ones forgotten before their time for want of room (over `max_sites`).
    #[serde(default)]
    pub sites_evicted: u64,
    /// Connections opened, closed and failed (never established) since start, over every call
    /// site, forgotten ones included: the running totals the per-site figures add up to.
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
}

struct Pending {
    socket: SocketId,
    ts_ns: u64,
    changes: Vec<(u64, StateChange)>,
}

pub struct Tracker {
    thresholds: Thresholds,
    limits: Limits,
    filter: Filter,
    started_ns: u64,
    latest_ns: u64,
    /// When the latest socket inventory was taken: the time its idle times were true.
    inventory_ns: Option<u64>,
    /// Traced connections by `struct sock` address.
    connections: FastMap<u64, Connection>,
    /// Sockets (address, birth) the filters dropped: their transitions are not orphans.
    ignored: FastSet<SocketId>,
    /// Socket cookie -> address, for the inventory's lookups.
    cookies: FastMap<u64, u64>,
    /// Connections born before start, by socket cookie.
    seeded: FastMap<u64, Connection>,
    pending: FastMap<u64, Pending>,
    processes: Processes,
    sites: Vec<Option<Site>>,
    free_sites: Vec<u32>,
    site_index: FastMap<SiteKey, u32>,
    stats: TrackerStats,
}

impl Tracker {
    /// A tracker whose "start" (before which connections are born before start) is
    /// `started_ns`, CLOCK_MONOTONIC like the events.
    pub fn new(thresholds: Thresholds, limits: Limits, filter: Filter, started_ns: u64) -> Self {
        Self {
            thresholds,
            limits,
            filter,
            started_ns,
            latest_ns: started_ns,
            inventory_ns: None,
            connections: FastMap::default(),
            ignored: FastSet::default(),
            cookies: FastMap::default(),
            seeded: FastMap::default(),
            pending: FastMap::default(),
            processes: Processes::default(),
            sites: Vec::new(),
            free_sites: Vec::new(),
            site_index: FastMap::default(),
            stats: TrackerStats::default(),
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// The newest event time seen (or the start).
    pub fn latest_ns(&self) -> u64 {
        self.latest_ns
    }

    /// Connections currently held (traced and seeded).
    pub fn live_connections(&self) -> usize {
        self.connections.len() + self.seeded.len()
    }

    pub fn apply(&mut self, event: &Event) {
        self.stats.events += 1;
        self.latest_ns = self.latest_ns.max(event.ts_ns);
        match &event.body {
            EventBody::Connect(open) => self.open(event, open, Direction::Connect),
            EventBody::Accept(open) => self.open(event, open, Direction::Accept),
            EventBody::State(change) => self.transition(event.socket, event.cookie, event.ts_ns, change),
        }
    }

    fn open(&mut self, event: &Event, open: &ConnOpen, direction: Direction) {
        let socket = event.socket;
        if let Some(previous) = self.connections.get(&socket.sk)
            && previous.birth_ns != socket.birth_ns
        {
            // The address was freed and reused: the old connection ended unseen.
            self.stats.closes_inferred += 1;
            self.end(socket.sk, event.ts_ns, false);
        }
        if event.cookie != 0 && self.seeded.contains_key(&event.cookie) {
            self.stats.seed_duplicates += 1;
            self.end_seeded(event.cookie, event.ts_ns);
        }
        if !self.filter.wants(open.owner.pid, &open.owner.comm, open.owner.cgroup_id, open.local, open.remote) {
            self.stats.filtered += 1;
            self.ignored.insert(socket);
            return;
        }
        let process = self.processes.observe(open.owner.pid, open.owner.process_start_ns, &open.owner.comm, open.owner.cgroup_id, event.ts_ns);
        let stack = open.call_stack();
        let key = SiteKeyRef { process, direction, stack: &stack, born_before_start: false };
        let site = self.site_for(&key, open.stack_error, event.ts_ns);
        let peer = self.site_mut(site).open(event.ts_ns, open.remote, true);
        self.stats.opened += 1;
        let connection = Connection {
            site,
            peer,
            birth_ns: socket.birth_ns,
            opened_ns: MaybeNs::some(event.ts_ns),
            cookie: event.cookie,
            state: open.state,
            established: open.state != TcpState::SynSent,
            close_wait_since_ns: MaybeNs::NONE,
            last_activity_ns: MaybeNs::NONE,
            missing_from_inventory: 0,
        };
        if event.cookie != 0 {
            self.cookies.insert(event.cookie, socket.sk);
        }
        self.connections.insert(socket.sk, connection);
        if open.state == TcpState::CloseWait {
            self.enter_close_wait(socket.sk, event.ts_ns);
        }
        if let Some(pending) = self.pending.remove(&socket.sk) {
            if pending.socket == socket {
                for (ts_ns, change) in pending.changes {
                    self.transition(socket, 0, ts_ns, &change);
                }
            } else {
                self.stats.orphan_transitions += pending.changes.len() as u64;
            }
        }
    }

    fn transition(&mut self, socket: SocketId, cookie: u64, ts_ns: u64, change: &StateChange) {
        let connection = match self.connections.get_mut(&socket.sk) {
            Some(connection) if connection.birth_ns == socket.birth_ns => connection,
            _ => {
                if self.ignored.contains(&socket) {
                    if change.new_state == TcpState::Close {
                        self.ignored.remove(&socket);
                    }
                } else {
                    self.hold(socket, ts_ns, change);
                }
                return;
            }
        };
        if connection.cookie == 0 && cookie != 0 {
            connection.cookie = cookie;
            self.cookies.insert(cookie, socket.sk);
        }
        let was_close_wait = connection.state == TcpState::CloseWait;
        connection.state = change.new_state;
        // Leaving any state but SYN_SENT means the handshake completed, even if the
        // ESTABLISHED transition itself was not seen.
        if change.new_state == TcpState::Established || !matches!(change.old_state, TcpState::SynSent | TcpState::Close) {
            connection.established = true;
        }
        let site = connection.site;
        if was_close_wait && change.new_state != TcpState::CloseWait {
            connection.close_wait_since_ns = MaybeNs::NONE;
            let site = self.site_mut(site);
            site.close_wait = site.close_wait.saturating_sub(1);
        }
        match change.new_state {
            TcpState::CloseWait if !was_close_wait => self.enter_close_wait(socket.sk, ts_ns),
            TcpState::Close => self.end(socket.sk, ts_ns, true),
            _ => {}
        }
    }

    /// Keeps a transition that arrived before its socket's open (producers on other CPUs).
    fn hold(&mut self, socket: SocketId, ts_ns: u64, change: &StateChange) {
        if self.pending.len() >= self.limits.max_pending && !self.pending.contains_key(&socket.sk) {
            self.stats.orphan_transitions += 1;
            return;
        }
        let pending = self.pending.entry(socket.sk).or_insert_with(|| Pending { socket, ts_ns, changes: Vec::new() });
        if pending.socket != socket {
            self.stats.orphan_transitions += pending.changes.len() as u64;
            *pending = Pending { socket, ts_ns, changes: Vec::new() };
        }
        pending.changes.push((ts_ns, change.clone()));
    }

    fn enter_close_wait(&mut self, sk: u64, ts_ns: u64) {
        let Some(connection) = self.connections.get_mut(&sk) else { return };
        connection.close_wait_since_ns = MaybeNs::some(ts_ns);
        let site = connection.site;
        self.site_mut(site).close_wait += 1;
    }

    /// Ends a traced connection: `seen` when its CLOSE was seen (its lifetime is known).
    fn end(&mut self, sk: u64, ts_ns: u64, seen: bool) {
        let Some(connection) = self.connections.remove(&sk) else { return };
        if connection.cookie != 0 {
            self.cookies.remove(&connection.cookie);
        }
        self.close_connection(&connection, ts_ns, seen);
    }

    fn end_seeded(&mut self, cookie: u64, ts_ns: u64) {
        if let Some(connection) = self.seeded.remove(&cookie) {
            self.close_connection(&connection, ts_ns, false);
        }
    }

    fn close_connection(&mut self, connection: &Connection, ts_ns: u64, seen: bool) {
        let lifetime = connection.opened_ns.get().filter(|_| seen).map(|opened| ts_ns.saturating_sub(opened));
        if connection.established {
            self.stats.closed += 1;
        } else {
            self.stats.failed += 1;
        }
        let site = self.site_mut(connection.site);
        if connection.close_wait_since_ns.is_some() {
            site.close_wait = site.close_wait.saturating_sub(1);
        }
        site.close(ts_ns, connection.peer, connection.established, lifetime);
    }

    fn site_for(&mut self, key: &SiteKeyRef, stack_error: Option<i32>, ts_ns: u64) -> u32 {
        if let Some(&id) = self.site_index.get(key as &dyn SiteKeyParts) {
            return id;
        }
        let key = key.to_owned();
        let site = Site::new(key.clone(), stack_error, ts_ns, self.thresholds.window.as_secs().max(1));
        let id = match self.free_sites.pop() {
            Some(id) => {
                self.sites[id as usize] = Some(site);
                id
            }
            None => {
                self.sites.push(Some(site));
                (self.sites.len() - 1) as u32
            }
        };
        self.processes.add_site(key.process);
        self.site_index.insert(key, id);
        id
    }

    fn site_mut(&mut self, id: u32) -> &mut Site {
        self.sites[id as usize].as_mut().expect("a connection's site lives as long as the connection")
    }

    fn sites(&self) -> impl Iterator<Item = (u32, &Site)> {
        self.sites.iter().enumerate().filter_map(|(id, site)| Some((id as u32, site.as_ref()?)))
    }

    /// Forgets what no longer matters: call sites without live connections that have been
    /// quiet for `site_ttl` (or the quietest, beyond `max_sites`), and held transitions older
    /// than a second (their open is not coming).
    pub fn expire(&mut self, now_ns: u64) {
        let ttl = self.limits.site_ttl.as_nanos() as u64;
        let mut idle: Vec<(u64, u32)> =
            self.sites().filter(|(_, site)| site.live == 0).map(|(id, site)| (site.last_event_ns, id)).collect();
        idle.sort_unstable();
        let over = self.site_index.len().saturating_sub(self.limits.max_sites);
        for (index, &(last_event_ns, id)) in idle.iter().enumerate() {
            if index >= over && last_event_ns.saturating_add(ttl) > now_ns {
                break;
            }
            let site = self.sites[id as usize].take().expect("listed above");
            self.site_index.remove(&site.key);
            self.processes.remove_site(site.key.process);
            self.free_sites.push(id);
            self.stats.sites_expired += 1;
            if last_event_ns.saturating_add(ttl) > now_ns {
                self.stats.sites_evicted += 1;
            }
        }
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.ts_ns + 1_000_000_000 < now_ns)
            .map(|(&sk, _)| sk)
            .collect();
        for sk in stale {
            if let Some(pending) = self.pending.remove(&sk) {
                self.stats.orphan_transitions += pending.changes.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests;
