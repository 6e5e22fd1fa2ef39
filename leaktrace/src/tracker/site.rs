//! A call site: the process, the direction and the user stack that opened connections, with
//! everything counted about them (opens, closes, failures, lifetimes, destinations, the trend).
use std::{
    borrow::Borrow,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::Arc,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{ProcessKey, window::RateWindow};

/// Which end opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Connect,
    Accept,
}

impl Direction {
    /// As the JSON report spells it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Connect => "connect",
            Direction::Accept => "accept",
        }
    }
}

/// What makes two connections the same call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteKey {
    pub process: ProcessKey,
    pub direction: Direction,
    /// The user stack at connect/accept, innermost first. Empty for connections born before
    /// tracing started (no stack was ever seen: none is made up).
    pub stack: Arc<[u64]>,
    pub born_before_start: bool,
}

/// A call site's key as its parts, owned or borrowed: an open looks its site up by the stack
/// it carries, so finding a known site allocates nothing (the `Arc` is made for a new site only).
pub trait SiteKeyParts {
    fn parts(&self) -> (ProcessKey, Direction, &[u64], bool);
}

/// A key borrowing the stack of the event being applied.
pub struct SiteKeyRef<'a> {
    pub process: ProcessKey,
    pub direction: Direction,
    pub stack: &'a [u64],
    pub born_before_start: bool,
}

impl SiteKeyParts for SiteKey {
    fn parts(&self) -> (ProcessKey, Direction, &[u64], bool) {
        (self.process, self.direction, &self.stack, self.born_before_start)
    }
}

impl SiteKeyParts for SiteKeyRef<'_> {
    fn parts(&self) -> (ProcessKey, Direction, &[u64], bool) {
        (self.process, self.direction, self.stack, self.born_before_start)
    }
}

impl SiteKeyRef<'_> {
    pub fn to_owned(&self) -> SiteKey {
        SiteKey { process: self.process, direction: self.direction, stack: Arc::from(self.stack), born_before_start: self.born_before_start }
    }
}

// SiteKey and its borrowed form hash alike and compare alike, as `Borrow` requires.
impl Hash for SiteKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl Hash for dyn SiteKeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn SiteKeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SiteKeyParts + '_ {}

impl<'a> Borrow<dyn SiteKeyParts + 'a> for SiteKey {
    fn borrow(&self) -> &(dyn SiteKeyParts + 'a) {
        self
    }
}

/// Most distinct destinations kept per call site; the rest are summed as "other".
const MAX_DESTINATIONS: usize = 32;

/// Where a connection is counted among its call site's peers: the index of its peer in the
/// site's destinations, or [`PeerSlot::OTHER`]. One byte in the connection instead of the
/// 32-byte address (destinations are only ever added, so an index stays valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSlot(u8);

impl PeerSlot {
    /// The peers beyond the first [`MAX_DESTINATIONS`], summed.
    pub const OTHER: Self = Self(u8::MAX);
}

pub struct Site {
    pub key: SiteKey,
    /// The errno of a failed stack capture, if that is why `stack` is empty.
    pub stack_error: Option<i32>,
    pub first_seen_ns: u64,
    pub last_event_ns: u64,
    pub opened: u64,
    pub closed: u64,
    /// Connects that never reached ESTABLISHED (refused, timed out, reset).
    pub failed: u64,
    pub live: u64,
    pub close_wait: u64,
    /// Distinct seconds in which connections were opened here, and the last of them: a
    /// trend spread over time, unlike a pool opened in one burst.
    pub open_seconds: u32,
    last_open_second: Option<u64>,
    pub last_open_ns: u64,
    /// Lifetimes of the closed connections, in microseconds (allocated at the first close).
    lifetimes_us: Option<Box<Histogram<u32>>>,
    pub window: RateWindow,
    /// The first [`MAX_DESTINATIONS`] peers, in the order they were first seen.
    destinations: Vec<(SocketAddr, Destination)>,
    other_destinations: Destination,
}

/// Connections to (connect) or from (accept) one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Destination {
    pub opened: u64,
    pub live: u64,
}

/// Percentiles of a call site's closed connections' lifetimes, in seconds, and their histogram.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Lifetimes {
    pub count: u64,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    /// Connections closed after at most each of [`LIFETIME_BOUNDS_S`], and more than the
    /// bound before it.
    #[serde(default)]
    pub histogram: [u64; LIFETIME_BOUNDS_S.len()],
}

/// The upper bounds of the lifetime histogram's buckets, in seconds: decades from 1 ms, then a
/// minute, ten minutes, an hour and a day (the longest lifetime recorded).
/// Significant digits of the lifetime histograms: percentiles within 1/16 of the lifetimes.
const LIFETIME_DIGITS: u8 = 1;

pub const LIFETIME_BOUNDS_S: [f64; 9] = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86_400.0];

impl Site {
    pub fn new(key: SiteKey, stack_error: Option<i32>, now_ns: u64, window_secs: u64) -> Self {
        Self {
            key,
            stack_error,
            first_seen_ns: now_ns,
            last_event_ns: now_ns,
            opened: 0,
            closed: 0,
            failed: 0,
            live: 0,
            close_wait: 0,
            open_seconds: 0,
            last_open_second: None,
            last_open_ns: now_ns,
            lifetimes_us: None,
            window: RateWindow::new(window_secs),
            destinations: Vec::new(),
            other_destinations: Destination::default(),
        }
    }

    /// The peer a connection is grouped under: the remote address and port for a connect; the
    /// remote address alone for an accept (client ports are ephemeral).
    pub fn peer_key(&self, remote: SocketAddr) -> SocketAddr {
        match self.key.direction {
            Direction::Connect => remote,
            Direction::Accept => SocketAddr::new(remote.ip(), 0),
        }
    }

    /// The slot of `peer`, added when there is room.
    fn peer_slot(&mut self, peer: SocketAddr) -> PeerSlot {
        // At most 32, compared without hashing: a scan is as quick, and costs no table.
        if let Some(index) = self.destinations.iter().position(|(addr, _)| *addr == peer) {
            return PeerSlot(index as u8);
        }
        if self.destinations.len() >= MAX_DESTINATIONS {
            return PeerSlot::OTHER;
        }
        self.destinations.push((peer, Destination::default()));
        PeerSlot((self.destinations.len() - 1) as u8)
    }

    fn destination(&mut self, slot: PeerSlot) -> &mut Destination {
        match self.destinations.get_mut(usize::from(slot.0)) {
            Some((_, destination)) => destination,
            None => &mut self.other_destinations,
        }
    }

    /// A connection opened (or seeded) here; it is counted under the returned peer slot.
    pub fn open(&mut self, ts_ns: u64, remote: SocketAddr, counts_as_open: bool) -> PeerSlot {
        self.last_event_ns = self.last_event_ns.max(ts_ns);
        self.live += 1;
        let slot = self.peer_slot(self.peer_key(remote));
        let destination = self.destination(slot);
        destination.live += 1;
        if counts_as_open {
            destination.opened += 1;
            self.opened += 1;
            self.window.record_open(ts_ns);
            let second = ts_ns / 1_000_000_000;
            if self.last_open_second != Some(second) {
                self.last_open_second = Some(second);
                self.open_seconds += 1;
            }
            self.last_open_ns = self.last_open_ns.max(ts_ns);
        }
        slot
    }

    /// A connection of this site ended. `lifetime_ns` is `None` when it is not known (born
    /// before start, or a close inferred from the socket's absence).
    pub fn close(&mut self, ts_ns: u64, peer: PeerSlot, established: bool, lifetime_ns: Option<u64>) {
        self.last_event_ns = self.last_event_ns.max(ts_ns);
        self.live = self.live.saturating_sub(1);
        let destination = self.destination(peer);
        destination.live = destination.live.saturating_sub(1);
        if established {
            self.closed += 1;
        } else {
            self.failed += 1;
        }
        if !self.key.born_before_start {
            self.window.record_close(ts_ns);
        }
        if let (true, Some(lifetime_ns)) = (established, lifetime_ns) {
            let histogram = self.lifetimes_us.get_or_insert_with(|| {
                // 1 us .. 1 day within 1/16 (one significant digit: 544 counters, 2.2 KiB a call
                // site, where two digits take 3968, 15.5 KiB); counts saturate at u32::MAX.
                Box::new(Histogram::new_with_bounds(1, 86_400_000_000, LIFETIME_DIGITS).expect("valid histogram bounds"))
            });
            histogram.saturating_record((lifetime_ns / 1000).max(1));
        }
    }

    pub fn lifetimes(&self) -> Option<Lifetimes> {
        let histogram = self.lifetimes_us.as_deref()?;
        let seconds = |us: u64| us as f64 / 1e6;
        // One pass over the counts for the three (every snapshot asks, for every site).
        let mut quantiles = histogram.value_at_quantiles([0.5, 0.9, 0.99]).map(seconds);
        let mut next = || quantiles.next().expect("one value per quantile asked");
        let (p50_s, p90_s, p99_s) = (next(), next(), next());
        let mut buckets = [0; LIFETIME_BOUNDS_S.len()];
        for value in histogram.iter_recorded() {
            // Within the histogram's precision: a value on a bound counts under it.
            let lifetime_s = seconds(histogram.lowest_equivalent(value.value_iterated_to()));
            let bucket = LIFETIME_BOUNDS_S.iter().position(|bound| lifetime_s <= *bound).unwrap_or(buckets.len() - 1);
            buckets[bucket] += u64::from(value.count_at_value());
        }
        Some(Lifetimes { count: histogram.len(), p50_s, p90_s, p99_s, max_s: seconds(histogram.max()), histogram: buckets })
    }

    /// The busiest peers: most live first, then most opened.
    pub fn top_destinations(&self, n: usize) -> Vec<(Option<SocketAddr>, Destination)> {
        let mut all: Vec<(Option<SocketAddr>, Destination)> =
            self.destinations.iter().map(|(addr, destination)| (Some(*addr), *destination)).collect();
        if self.other_destinations.opened > 0 || self.other_destinations.live > 0 {
            all.push((None, self.other_destinations));
        }
        all.sort_by(|a, b| (b.1.live, b.1.opened, a.0).cmp(&(a.1.live, a.1.opened, b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_fall_in_the_bucket_of_the_first_bound_they_do_not_exceed() {
        let key = SiteKey {
            process: ProcessKey { pid: 1, start_ns: 0 },
            direction: Direction::Connect,
            stack: Arc::from([0x1000u64].as_slice()),
            born_before_start: false,
        };
        let mut site = Site::new(key, None, 0, 10);
        let peer = site.open(0, "127.0.0.1:80".parse().unwrap(), true);
        assert!(site.lifetimes().is_none(), "no histogram before the first close");
        const MS: u64 = 1_000_000;
        for lifetime_ns in [200_000, MS, 5 * MS, 2_000 * MS, 61_000 * MS, 7_200_000 * MS] {
            site.close(0, peer, true, Some(lifetime_ns));
        }
        // A failed connect has no lifetime.
        site.close(0, peer, false, Some(MS));
        let lifetimes = site.lifetimes().unwrap();
        assert_eq!(lifetimes.count, 6);
        assert_eq!(lifetimes.histogram, [2, 1, 0, 0, 1, 0, 1, 0, 1]);
        assert_eq!(lifetimes.histogram.iter().sum::<u64>(), lifetimes.count);
    }
}
