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
    // The reserved record is already counted in the pending data.
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    record.submit(wakeup_flags(pending.saturating_sub(footprint(size_of::<T>())), pending));
}

/// Writes the first `len` bytes of `record` as one record (copied: for records whose tail is
/// unused, such as an open's stack array past its depth), counting the attempt and its
/// failure; wakes the reader as [`submit`] does. Whether it was written.
#[inline(always)]
pub fn output_prefix<T>(record: &T, len: usize) -> bool {
    count(Counter::EventsProduced);
    let len = if len < size_of::<T>() { len } else { size_of::<T>() };
    // SAFETY: `len` bytes of `record`, which is `size_of::<T>()` long.
    let bytes = unsafe { core::slice::from_raw_parts((record as *const T).cast::<u8>(), len) };
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let written = EVENTS.output::<[u8]>(bytes, wakeup_flags(pending, pending + footprint(len))).is_ok();
    if !written {
        count(Counter::EventsDropped);
    }
    written
}

/// What a record of `len` bytes takes in the buffer: an 8-byte header, rounded up to 8 bytes.
#[inline(always)]
fn footprint(len: usize) -> u64 {
    ((len + 8 + 7) & !7) as u64
}

/// Wake the reader if the pending data goes past a multiple of the threshold, from `before`
/// to `after` bytes.
#[inline(always)]
fn wakeup_flags(before: u64, after: u64) -> u64 {
    let threshold = config!(wakeup_bytes) as u64;
    if threshold != 0 && before / threshold != after / threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
