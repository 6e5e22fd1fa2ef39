//! Writing records to the ring buffer: every attempt is counted as produced, every failed
//! reservation as dropped, and the reader is woken only when a batch is worth it.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
};
use leaktrace_common::Counter;

use crate::maps::{EVENTS, config, count};

/// Reserves room for one record, counting the attempt and its failure.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    count(Counter::EventsProduced);
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(Counter::EventsDropped);
    }
    entry
}

/// Flags for `submit`: wake the reader only once the buffer holds `CONFIG.wakeup_bytes`; below
/// that the reader's timed drain collects the batch (a wakeup per record costs more than the
/// probe itself at high connection rates).
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending >= config!(wakeup_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
