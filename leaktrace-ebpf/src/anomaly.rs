//! Rare anomalies told to userspace with their context (aya-log), beside their counters: a
//! counter says how often something was dropped, the message says why and for whom.
//!
//! Rate limit: each kind of message (below) has its own per-CPU count in `maps::ANOMALIES`,
//! and a message is written only when that count reaches a power of two (the 1st, 2nd, 4th,
//! 8th... occurrence on that CPU), so a flood (a full socket map under 50k connects/s) writes
//! a few dozen lines per CPU over a whole run, never one per event, and the first of each
//! kind always shows. The user-facing counter (`Counter`) keeps the exact total. No clock read.
//! The ring buffer's own drops (`EventsDropped`) are not logged here: they are not rare under
//! overload, and their counter is what the user sees.
use aya_log_ebpf::{debug, warn};
use leaktrace_common::{AF_INET, Counter, Tuple};

use crate::maps::{ANOMALIES, count};

/// The kinds of message, each rate-limited on its own: an index into `maps::ANOMALIES`.
#[derive(Clone, Copy)]
pub enum Kind {
    ConnectNotTracked = 0,
    PassiveNotTracked = 1,
    StackFailed = 2,
    AcceptUnresolved = 3,
    PythonWalkFailed = 4,
}
pub const KINDS: u32 = 5;

/// Counts `counter`, and `kind` on this CPU; `Some(n)` when this is the `n`th message of
/// `kind` here and `n` is a power of two (see above).
#[inline(always)]
fn count_rare(counter: Counter, kind: Kind) -> Option<u64> {
    count(counter);
    let slot = ANOMALIES.get_ptr_mut(kind as u32)?;
    // SAFETY: this CPU's slot; no other writer.
    let n = unsafe { *slot } + 1;
    unsafe { *slot = n };
    (n & (n - 1) == 0).then_some(n)
}

/// The remote address as an IPv6 one (IPv4 as `::ffff:a.b.c.d`), so one message covers both.
#[inline(always)]
fn remote_addr(tuple: &Tuple) -> [u8; 16] {
    if tuple.family != AF_INET {
        return tuple.remote_addr;
    }
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12] = tuple.remote_addr[0];
    mapped[13] = tuple.remote_addr[1];
    mapped[14] = tuple.remote_addr[2];
    mapped[15] = tuple.remote_addr[3];
    mapped
}

/// A connect's socket could not go into the socket map (full at `--max-sockets`).
#[inline(always)]
pub fn connect_not_tracked(tgid: u32, tuple: &Tuple, error: i32) {
    let Some(n) = count_rare(Counter::SocketMapFull, Kind::ConnectNotTracked) else { return };
    warn!(
        &(),
        "kernel: SOCKETS map full (raise --max-sockets): connect of pid {} to [{:i}]:{} not tracked (error {}; occurrence {} of this anomaly on this CPU)",
        tgid,
        remote_addr(tuple),
        tuple.remote_port,
        error,
        n
    );
}

/// A passive socket (born from a listener) could not go into the socket map. It is born in
/// softirq or in the client's task, so no owner is known yet: the listener's port says whose.
#[inline(always)]
pub fn passive_not_tracked(tuple: &Tuple, error: i32) {
    let Some(n) = count_rare(Counter::SocketMapFull, Kind::PassiveNotTracked) else { return };
    warn!(
        &(),
        "kernel: SOCKETS map full (raise --max-sockets): connection from [{:i}]:{} to local port {} not tracked (error {}; occurrence {} of this anomaly on this CPU)",
        remote_addr(tuple),
        tuple.remote_port,
        tuple.local_port,
        error,
        n
    );
}

/// `bpf_get_stack` failed for an open of the current task: it is reported without a stack.
#[inline(always)]
pub fn stack_failed(tgid: u32, error: i64) {
    let Some(n) = count_rare(Counter::StackFailed, Kind::StackFailed) else { return };
    debug!(
        &(),
        "kernel: no user stack for an open by pid {} (bpf_get_stack error {}; occurrence {} of this anomaly on this CPU)",
        tgid,
        error,
        n
    );
}

/// accept() (or an io_uring accept) returned an fd the probes could not follow to its socket.
#[inline(always)]
pub fn accept_unresolved(tgid: u32, fd: u32, error: i32) {
    let Some(n) = count_rare(Counter::AcceptUnresolved, Kind::AcceptUnresolved) else { return };
    debug!(
        &(),
        "kernel: accept by pid {} returned fd {} that could not be followed to its socket (error {}; occurrence {} of this anomaly on this CPU)",
        tgid,
        fd,
        error,
        n
    );
}

/// An open in a registered CPython process got no Python frames: `status` is the
/// `PythonWalk` value saying why, `error` the failed read's errno.
#[inline(always)]
pub fn python_walk_failed(tgid: u32, status: u32, error: i32) {
    let Some(n) = count_rare(Counter::PythonWalksFailed, Kind::PythonWalkFailed) else { return };
    debug!(
        &(),
        "kernel: no Python frames for an open by pid {} (walk status {}, read error {}; occurrence {} of this anomaly on this CPU)",
        tgid,
        status,
        error,
        n
    );
}
