//! What the tracker holds per live connection, from its open to its CLOSE. Live connections
//! are never dropped, so this is the tracker's memory on a host with a million of them: kept
//! to 48 bytes (optional times in 8 bytes each, the peer as a slot of its call site's
//! destinations rather than a 32-byte address).
use super::site::PeerSlot;
use crate::tcp::TcpState;

/// A connection the tracker holds until its CLOSE.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The kernel's birth time of the socket (part of its identity); 0 when seeded.
    pub birth_ns: u64,
    pub cookie: u64,
    /// When the open was seen; none for connections born before start.
    pub opened_ns: MaybeNs,
    pub close_wait_since_ns: MaybeNs,
    /// The last data sent or received, from the latest inventory (tcp_info).
    pub last_activity_ns: MaybeNs,
    pub site: u32,
    /// Where its call site counts it among its peers.
    pub peer: PeerSlot,
    pub state: TcpState,
    pub established: bool,
    /// Inventories in a row that did not list this socket.
    pub missing_from_inventory: u8,
}

/// An optional CLOCK_MONOTONIC time in 8 bytes (an `Option<u64>` takes 16): `u64::MAX`, 584
/// years of uptime, stands for none, and a time given as `u64::MAX` is kept as one less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaybeNs(u64);

impl MaybeNs {
    pub const NONE: Self = Self(u64::MAX);

    pub fn some(ns: u64) -> Self {
        Self(ns.min(u64::MAX - 1))
    }

    pub fn from_option(ns: Option<u64>) -> Self {
        ns.map_or(Self::NONE, Self::some)
    }

    pub fn get(self) -> Option<u64> {
        (self != Self::NONE).then_some(self.0)
    }

    pub fn is_some(self) -> bool {
        self != Self::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_fits_in_48_bytes() {
        assert_eq!(std::mem::size_of::<Connection>(), 48);
    }

    #[test]
    fn optional_times_round_trip() {
        assert_eq!(MaybeNs::some(0).get(), Some(0));
        assert_eq!(MaybeNs::some(u64::MAX).get(), Some(u64::MAX - 1));
        assert_eq!(MaybeNs::NONE.get(), None);
        assert_eq!(MaybeNs::from_option(Some(7)).get(), Some(7));
        assert!(!MaybeNs::from_option(None).is_some());
    }
}
