//! The maps shared with userspace and the load-time configuration.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use leaktrace_common::{COUNTER_SLOTS, Config, ConnOpenRecord, Counter, IouringRequestKey};

/// Written by userspace before load (`EbpfLoader::override_global`). Read one field at a time
/// through [`config!`], with volatile loads so the compiler cannot fold the zeros it sees here.
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads one field of [`CONFIG`], e.g. `config!(offsets.sock_family)`.
macro_rules! config {
    ($($field:ident).+) => {
        $crate::maps::read_config(&raw const $crate::maps::CONFIG.$($field).+)
    };
}
pub(crate) use config;

#[inline(always)]
pub fn read_config<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` points into the CONFIG static, which is always initialised.
    unsafe { core::ptr::read_volatile(field) }
}

/// Every record for userspace. Userspace resizes it at load (`--ring-buffer-kib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// What the probes know of each tracked socket, keyed by `struct sock` address. An entry is
/// made at birth (SYN_SENT, SYN_RECV) and removed at CLOSE, so a reused address starts afresh.
#[map]
pub static SOCKETS: HashMap<u64, SocketEntry> = HashMap::with_max_entries(131_072, 0);

/// Per-CPU counters indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-CPU counts of each kind of kernel message, for their rate limit (`anomaly`).
#[map]
pub static ANOMALIES: PerCpuArray<u64> = PerCpuArray::with_max_entries(crate::anomaly::KINDS, 0);

/// Filters, consulted only when the matching `filter` bit is set in `CONFIG.filters`.
#[map]
pub static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map]
pub static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);
#[map]
pub static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// The probes' runtime switch, flipped by userspace while they stay attached
/// (`Tracer::set_probes_enabled`): slot 0 non-zero means paused. Every probe checks it first
/// and returns at once when paused. An array starts zeroed, so a fresh load runs.
#[map]
pub static PAUSED: Array<u32> = Array::with_max_entries(1, 0);

/// Which runtimes' process maps (`GO_PROCESSES`, `PYTHON_PROCESSES`) userspace has filled
/// since load, as `leaktrace_common::runtimes` bits in slot 0. Set before the first process
/// goes in, never cleared: a host with no Go or Python process registered pays this inlined
/// array load at each open, not a hash lookup per runtime.
#[map]
pub static RUNTIMES_REGISTERED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether any process was ever registered for `runtime` (a `leaktrace_common::runtimes` bit).
#[inline(always)]
pub fn runtime_registered(runtime: u32) -> bool {
    RUNTIMES_REGISTERED.get(0).is_some_and(|bits| *bits & runtime != 0)
}

/// Whether userspace has paused the probes (see [`PAUSED`]). The verifier inlines this lookup
/// of a one-entry array: a load and a compare.
#[inline(always)]
pub fn paused() -> bool {
    PAUSED.get(0).is_some_and(|flag| *flag != 0)
}

/// Where an open's record is assembled before its used part (the stack up to its depth) is
/// copied to the ring buffer: a record reserved there whole would take its 127-frame stack
/// array (1 KiB) for a stack of a few frames, and the buffer would hold a sixth as many opens.
/// Per CPU; slot [`SCRATCH_CONNECT`] for connect, [`SCRATCH_ACCEPT`] for accept, so that the
/// two never share one even if one interrupted the other.
#[map]
pub static OPEN_SCRATCH: PerCpuArray<ConnOpenRecord> = PerCpuArray::with_max_entries(2, 0);
pub const SCRATCH_CONNECT: u32 = 0;
pub const SCRATCH_ACCEPT: u32 = 1;

/// io_uring accepts between their submission and their completion (`probes::io_uring`): the
/// submitter and its user stack, taken at submission, wait here for the completion that says
/// which fd the accepted socket got. An LRU map, so that requests whose completion never comes
/// (a CQE the application asked to skip) age out rather than fill it; a server keeps a few
/// accepts in flight per listener.
#[map]
pub static PENDING_ACCEPTS: LruHashMap<IouringRequestKey, PendingOpen> = LruHashMap::with_max_entries(1024, 0);

/// io_uring connects an io-wq worker (`IOSQE_ASYNC`) or a SQPOLL thread will issue, keyed by
/// their socket: the submitter and its stack, for the CLOSE -> SYN_SENT that io thread runs
/// (it has no user stack of its own). Connects issued by the submitting task are not kept.
#[map]
pub static PENDING_CONNECTS: LruHashMap<u64, PendingOpen> = LruHashMap::with_max_entries(256, 0);

/// Where a [`PendingOpen`] is assembled before it is copied into a pending map (too big
/// for the BPF stack). Per CPU.
#[map]
pub static PENDING_SCRATCH: PerCpuArray<PendingOpen> = PerCpuArray::with_max_entries(1, 0);

/// An io_uring accept or connect in flight: its request (to tell an accept from a later request
/// with the same `user_data`) and its open record, owner and stack filled at submission.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    pub req: u64,
    pub open: ConnOpenRecord,
}

/// The transition the first `tp_btf` program last began on this CPU (see [`TransitionMark`]).
#[map]
pub static FIRST_TWIN_MARK: PerCpuArray<TransitionMark> = PerCpuArray::with_max_entries(1, 0);

/// A transition of one socket, as the first of the two `tp_btf` programs saw it begin. The
/// second program runs right after the first for the same transition and takes (clears) the
/// mark: if it matches, the first was not skipped and the second has nothing to do. Taking
/// clears it whether or not it matches, so a mark the second never saw (it was the one
/// skipped) is gone at its next run on this CPU; a false match would need that same socket
/// address to make that same transition again in between, with the first program skipped.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TransitionMark {
    pub sk: u64,
    /// `old << 16 | new`.
    pub states: u64,
}

impl TransitionMark {
    #[inline(always)]
    pub fn new(sk: u64, old: u32, new: u32) -> Self {
        Self { sk, states: (old as u64) << 16 | new as u64 }
    }

    #[inline(always)]
    pub fn set(self) {
        if let Some(slot) = FIRST_TWIN_MARK.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; programs do not migrate while they run.
            unsafe { *slot = self };
        }
    }

    /// Whether the mark is this transition; clears it either way.
    #[inline(always)]
    pub fn take(self) -> bool {
        let Some(slot) = FIRST_TWIN_MARK.get_ptr_mut(0) else { return false };
        // SAFETY: as in `set`.
        let seen = unsafe { core::ptr::replace(slot, Self { sk: 0, states: 0 }) };
        seen == self
    }
}

/// A tracked socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketEntry {
    pub birth_ns: u64,
    pub cookie: u64,
    /// `SOCKET_*` bits.
    pub flags: u32,
    /// The state after the last transition applied. Both attachments of the state probe run
    /// for every transition; the second finds it applied and does nothing (see `lifecycle`).
    pub last_state: u32,
}

/// Opened by connect().
pub const SOCKET_ACTIVE: u32 = 1;
/// Born from a listener (SYN_RECV); reported from its accept on.
pub const SOCKET_PASSIVE: u32 = 2;
/// A passive socket that has been accepted: its transitions are reported.
pub const SOCKET_ACCEPTED: u32 = 4;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *slot += 1 };
    }
}
