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

/// Submits a record, waking the reader only when this record takes the pending data past a
/// multiple of `CONFIG.wakeup_bytes`; below that the reader's timed drain collects the batch (a
/// wakeup per record costs more than the probe itself at high connection rates). Waking on
/// every record past the threshold would raise an interrupt per record until the reader runs,
/// which on a busy host is a while. Two producers crossing at once may both miss the crossing:
/// the next multiple, or the timed drain, picks the batch up.
#[inline(always)]
pub fn submit<T>(record: RingBufEntry<T>) {
    // What the record takes in the buffer: its 8-byte header, rounded up to 8 bytes.
    let size = ((size_of::<T>() + 8 + 7) & !7) as u64;
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = config!(wakeup_bytes) as u64;
    let crossed = threshold != 0 && pending / threshold != pending.saturating_sub(size) / threshold;
    record.submit(if crossed { BPF_RB_FORCE_WAKEUP as u64 } else { BPF_RB_NO_WAKEUP as u64 });
}
