//! The hash of the maps every event consults: the tracker's (a socket per event, a call site by
//! its whole stack per open) and the per-process tables looked up at each open, millions a
//! second: SipHash, std's default, costs more than the rest of an event. foldhash (hashbrown's
//! own default) is a fraction of that, and seeded per map at random, so keys chosen by a traced
//! program (its stacks, its peers) cannot be made to collide without knowing the seed. Its
//! `quality` flavour: the `fast` one leaves the low bits (the bucket index) of strided keys such
//! as socket addresses clustered under some seeds, up to four keys a bucket; `quality` adds one
//! multiply and spreads them as a random function.
use std::collections::{HashMap, HashSet};

/// Builds a randomly seeded foldhash hasher per map.
pub type FoldHash = foldhash::quality::RandomState;
/// A `HashMap` with [`FoldHash`].
pub type FastMap<K, V> = HashMap<K, V, FoldHash>;
/// A `HashSet` with [`FoldHash`].
pub type FastSet<K> = HashSet<K, FoldHash>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_neighbours_spread() {
        let build = FoldHash::default();
        assert_eq!(build.hash_one(0xffff_8880_1234_5000_u64), build.hash_one(0xffff_8880_1234_5000_u64));
        // Socket addresses differ in a few middle bits; their hashes must differ in the low
        // bits the table indexes by.
        let low_bits: FastSet<u64> = (0..4096u64).map(|i| build.hash_one(0xffff_8880_0000_0000 + i * 0x800) & 0xfff).collect();
        // A random function fills 4096 * (1 - 1/e) = 2589 of them (the fast flavour: 1042 at worst).
        assert!(low_bits.len() > 2400, "only {} distinct buckets of 4096", low_bits.len());
        assert_ne!(build.hash_one([1u64, 2].as_slice()), build.hash_one([2u64, 1].as_slice()));
        assert_ne!(build.hash_one("ab"), build.hash_one("ab\0"));
    }
}
