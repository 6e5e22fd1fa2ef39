//! What the process holds in memory, for the tracker's bytes per live connection: a global
//! allocator that counts the bytes live on the heap (the system allocator underneath, the
//! count kept only while [`count_from_now`] is on, with relaxed atomics), and the resident set
//! from /proc/self/statm (what the kernel charges, allocator slack and fragmentation included).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
};

use anyhow::{Context, Result};

/// The system allocator, counting live bytes while asked to.
pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// SAFETY: every call goes to `System` unchanged; only counters are updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        if COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(new_size, Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
        moved
    }
}

/// Starts counting. Bytes freed later that were allocated before are counted as negative, so
/// read the count as a difference between two [`live_bytes`] over a span where the memory of
/// interest is only allocated (the tracker filling up).
pub fn count_from_now() {
    COUNTING.store(true, Relaxed);
}

/// Bytes allocated minus freed since [`count_from_now`] (wrapping: subtract two readings).
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Relaxed)
}

/// The resident set size in bytes (`/proc/self/statm`, second field, in pages).
pub fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("/proc/self/statm has no resident field: {statm:?}"))?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page_size.max(1) as u64)
}
