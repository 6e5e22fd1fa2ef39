//! A TCP socket's life as the probes follow it, whatever hook delivered the transition.
//!
//! - CLOSE -> SYN_SENT runs in the connecting task: the owner and its user stack are taken
//!   here, and the socket is tracked.
//! - LISTEN -> SYN_RECV is a passive birth. It may run in softirq or in the *client's* task
//!   (loopback), so no owner is taken: the socket is tracked silently until accept() returns
//!   it in the acceptor ([`on_accept`]), or an io_uring accept completes with it
//!   ([`on_submitted_accept`], owner and stack taken when the accept was submitted).
//! - A transition of a reported socket into a state userspace asked for becomes a
//!   `StateChangeRecord`; the transition to CLOSE ends its life and its entry. Transitions
//!   into other states cost a run that returns at once ([`wants_transition`]).
//!
//! The kernel skips a tracing program that fires while the same program already runs on that
//! CPU (a softirq interrupting it): `recursion_misses`. So userspace attaches this logic twice,
//! as two `tp_btf` programs (the guard is per program), or where `tp_btf` is missing as `tp_btf`
//! and the classic tracepoint (guarded by the per-CPU `bpf_prog_active`): when one is skipped
//! the other runs. Each transition is applied once, by whichever runs first: the entry's
//! `last_state` says whether it already was. Between the two `tp_btf` programs a per-CPU mark
//! (`maps::TransitionMark`) saves the second even that lookup when the first was not skipped.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
    },
};
use core::ffi::c_void;
use leaktrace_common::{
    ConnOpenRecord, Counter, EventHeader, EventKind, IPPROTO_TCP, MAX_GO_HOPS, MAX_PYTHON_DEPTH, MAX_STACK_DEPTH,
    OPEN_RECORD_FIXED, Owner, PYTHON_NATIVE_DEPTH, PythonOffsets, PythonTrail, StateChangeRecord, Tuple, filter,
    reported_states, tcp_state,
};

/// The `stack_error` of an open whose stack was not asked for (`CONFIG.user_stacks` off).
const ENOENT: i32 = 2;
/// What a `BPF_NOEXIST` insert returns when the key is there.
const EEXIST: i32 = 17;

use crate::{
    anomaly, emit, goroutines, python,
    kernel::{self, Probed, SockAccess},
    maps::{
        FILTER_CGROUPS, FILTER_PIDS, FILTER_PORTS, OPEN_SCRATCH, PENDING_CONNECTS, SCRATCH_ACCEPT, SCRATCH_CONNECT,
        SOCKET_ACCEPTED, SOCKET_ACTIVE, SOCKET_PASSIVE, SOCKETS, SocketEntry, config, count,
    },
};

/// Whether the probes have anything to do at a transition from `old` to `new`: a birth, an end,
/// or a transition into a state userspace is told of (`CONFIG.reported_states`). The others
/// (FIN_WAIT1, FIN_WAIT2, LAST_ACK... in the live view) are neither sent nor followed, so a
/// run for one returns before it reads the socket or the socket map: a socket's entry keeps
/// the last state the probes applied. Every transition is wanted when every one is reported.
/// Only the transition's arguments are looked at, so both attachments answer alike.
#[inline(always)]
pub fn wants_transition(old: u32, new: u32) -> bool {
    new == tcp_state::CLOSE
        || (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT)
        || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV)
        || reported(new)
}

/// Whether userspace is told of transitions into `state` (`CONFIG.reported_states`).
#[inline(always)]
fn reported(state: u32) -> bool {
    reported_states::reports(config!(reported_states), state)
}

/// Whether the probes follow a socket in state `state`, i.e. its entry's `last_state` is set on
/// entering it: then a transition out of it that finds another `last_state` is a gap. SYN_RECV
/// is left out: a simultaneous open enters it from SYN_SENT unfollowed when it is not reported.
#[inline(always)]
fn followed(state: u32) -> bool {
    state == tcp_state::SYN_SENT || reported(state)
}

/// Entry point for every `inet_sock_set_state` of a TCP socket that [`wants_transition`], read
/// through `M` (see [`kernel::SockAccess`]).
#[inline(always)]
pub fn on_state_change<M: SockAccess>(ctx: *mut c_void, sk: u64, old: u32, new: u32) {
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        on_connect::<M>(ctx, sk);
    } else if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        on_passive_birth::<M>(sk);
    } else {
        on_transition::<M>(sk, old, new);
    }
}

/// Starts tracking `sk` at its birth (`entry.last_state` is SYN_SENT or SYN_RECV): one hash
/// operation when the address is free, as it is at nearly every birth. An entry found there is
/// either this very birth, applied by the other attachment (`Ok(false)`: nothing left to do),
/// or a socket at the same address whose end was never seen, which the new one replaces.
#[inline(always)]
fn start_tracking<M: SockAccess>(sk: u64, entry: &SocketEntry) -> Result<bool, i32> {
    match SOCKETS.insert(sk, entry, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(error) if error == -EEXIST => {
            if already_applied::<M>(sk, entry.last_state) {
                return Ok(false);
            }
            SOCKETS.insert(sk, entry, BPF_ANY as u64).map(|()| true)
        }
        Err(error) => Err(error),
    }
}

/// Whether the other attachment already applied the transition to `state` of `sk`. If it was
/// the classic one (no cookie there), the cookie is filled in for the socket's later events.
#[inline(always)]
fn already_applied<M: SockAccess>(sk: u64, state: u32) -> bool {
    let Some(entry) = SOCKETS.get_ptr_mut(sk) else {
        return false;
    };
    let entry = unsafe { &mut *entry };
    adopt_cookie::<M>(entry, sk);
    entry.last_state == state
}

/// Asks for the cookie only while the entry lacks one: most runs find it there.
#[inline(always)]
fn adopt_cookie<M: SockAccess>(entry: &mut SocketEntry, sk: u64) {
    if entry.cookie == 0 {
        entry.cookie = M::socket_cookie(sk);
    }
}

#[inline(always)]
fn on_connect<M: SockAccess>(ctx: *mut c_void, sk: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !owner_wanted(tgid, cgroup_id) {
        return;
    }
    let mut tuple = Tuple::default();
    if kernel::sock_tuple::<M>(sk, &mut tuple).is_err() || !ports_wanted(&tuple) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let cookie = M::socket_cookie(sk);
    let entry = SocketEntry { birth_ns: now, cookie, flags: SOCKET_ACTIVE, last_state: tcp_state::SYN_SENT };
    match start_tracking::<M>(sk, &entry) {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            anomaly::connect_not_tracked(tgid, &tuple, error);
            return;
        }
    }
    let Some(open) = OPEN_SCRATCH.get_ptr_mut(SCRATCH_CONNECT) else {
        let _ = SOCKETS.remove(sk);
        return;
    };
    let open = unsafe { &mut *open };
    open.header = header(EventKind::Connect, now, sk, &entry);
    fill_owner(&mut open.owner, pid_tgid, cgroup_id);
    open.tuple = tuple;
    open.state = tcp_state::SYN_SENT;
    let python = python::offsets_of(tgid, open.owner.process_start_ns);
    take_user_stack(ctx, open, python.is_some());
    // No user stack at all (not even an error): a kernel thread, or an io_uring worker issuing
    // a connect whose submitter's stack (and Python frames) were kept. Never true for a
    // process's own connect.
    let adopted = open.stack_depth == 0 && open.stack_error == 0 && adopt_submitter(sk, open);
    goroutines::add_trail(open, tgid, open.owner.process_start_ns);
    if !adopted {
        add_python_trail(open, python.as_ref());
    }
    if !emit_open(open) {
        // The open is lost (and counted): stop tracking so no orphan transitions follow.
        let _ = SOCKETS.remove(sk);
    }
}

/// Words of the record's native stacks: the thread's stack, then the goroutine ancestry's.
#[inline(always)]
fn native_frames(open: &ConnOpenRecord) -> usize {
    let trail = &open.goroutine;
    let mut depth = open.stack_depth as usize;
    for hop in 0..MAX_GO_HOPS {
        if hop < trail.hops as usize {
            depth += trail.hop_depth[hop] as usize;
        }
    }
    depth
}

/// The current thread's Python frames after the native ones, in a registered CPython process.
#[inline(always)]
fn add_python_trail(open: &mut ConnOpenRecord, offsets: Option<&PythonOffsets>) {
    let native = if offsets.is_some() { native_frames(open) } else { 0 };
    python::add_trail(open, native, offsets);
}

/// Sends an open's record up to the end of its frames (the stack's, the goroutine ancestry's,
/// then the Python frames' word pairs); whether it was written.
#[inline(always)]
fn emit_open(open: &ConnOpenRecord) -> bool {
    let python = open.python.depth as usize;
    let python = if python < MAX_PYTHON_DEPTH { python } else { MAX_PYTHON_DEPTH };
    let depth = native_frames(open) + 2 * python;
    let depth = if depth < MAX_STACK_DEPTH { depth } else { MAX_STACK_DEPTH };
    emit::output_prefix(open, OPEN_RECORD_FIXED + depth * 8)
}

#[inline(always)]
fn on_passive_birth<M: SockAccess>(sk: u64) {
    let mut tuple = Tuple::default();
    if kernel::sock_tuple::<M>(sk, &mut tuple).is_err() || !ports_wanted(&tuple) {
        return;
    }
    let birth_ns = unsafe { bpf_ktime_get_ns() };
    // No cookie yet: the kernel sets the child's SYN_RECV state in inet_csk_clone_lock() before it
    // copies the request socket's cookie over the child's, so one generated here is lost (and
    // the socket inventory, which matches by cookie, would take the connection for closed). The
    // next transition, once the clone is done, adopts the cookie the socket keeps.
    let entry = SocketEntry { birth_ns, cookie: 0, flags: SOCKET_PASSIVE, last_state: tcp_state::SYN_RECV };
    if let Err(error) = start_tracking::<M>(sk, &entry) {
        anomaly::passive_not_tracked(&tuple, error);
    }
}

#[inline(always)]
fn on_transition<M: SockAccess>(sk: u64, old: u32, new: u32) {
    let Some(entry_ptr) = SOCKETS.get_ptr_mut(sk) else {
        return;
    };
    let entry = unsafe { &mut *entry_ptr };
    adopt_cookie::<M>(entry, sk);
    if entry.last_state == new {
        return;
    }
    if entry.last_state != old && followed(old) {
        count(Counter::TransitionsMissed);
    }
    entry.last_state = new;
    let entry = *entry;
    let accepted = entry.flags & SOCKET_ACCEPTED != 0;
    if entry.flags & SOCKET_PASSIVE != 0 && !accepted {
        if new == tcp_state::CLOSE {
            let _ = SOCKETS.remove(sk);
            count(Counter::ClosedBeforeAccept);
        }
        return;
    }
    // Only a CLOSE that is not reported gets this far unreported (see `wants_transition`).
    if let Some(mut record) = reported(new).then(emit::reserve::<StateChangeRecord>).flatten() {
        let change = unsafe { &mut *record.as_mut_ptr() };
        let now = unsafe { bpf_ktime_get_ns() };
        change.header = header(EventKind::StateChange, now, sk, &entry);
        change.tuple = Tuple::default();
        let _ = kernel::sock_tuple::<M>(sk, &mut change.tuple);
        change.old_state = old;
        change.new_state = new;
        emit::submit(record);
    }
    if new == tcp_state::CLOSE {
        let _ = SOCKETS.remove(sk);
    }
}

/// accept() returned `fd` in the current task: the passive socket behind it now has an owner.
#[inline(always)]
pub fn on_accept(ctx: *mut c_void, fd: u32) {
    let Some((sk, entry_ptr)) = unaccepted_socket(fd) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(entry) = mark_accepted(sk, entry_ptr, owner_wanted((pid_tgid >> 32) as u32, cgroup_id)) else {
        return;
    };
    let Some(open) = OPEN_SCRATCH.get_ptr_mut(SCRATCH_ACCEPT) else {
        let _ = SOCKETS.remove(sk);
        return;
    };
    let open = unsafe { &mut *open };
    fill_owner(&mut open.owner, pid_tgid, cgroup_id);
    fill_accept(open, sk, &entry);
    // The accept slot never carries a goroutine trail (only connects take one): it stays zero.
    let python = python::offsets_of(open.owner.tgid, open.owner.process_start_ns);
    take_user_stack(ctx, open, python.is_some());
    add_python_trail(open, python.as_ref());
    if !emit_open(open) {
        let _ = SOCKETS.remove(sk);
    }
}

/// An io_uring accept completed with `fd` in the current task's file table (shared by every
/// thread of the ring's process, io_uring's workers included). `open` was filled at submission
/// ([`take_submitter`]) with the submitter as owner and its stack: only the socket is added.
#[inline(always)]
pub fn on_submitted_accept(fd: u32, open: &mut ConnOpenRecord) {
    let Some((sk, entry_ptr)) = unaccepted_socket(fd) else { return };
    let Some(entry) = mark_accepted(sk, entry_ptr, owner_wanted(open.owner.tgid, open.owner.cgroup_id)) else {
        return;
    };
    fill_accept(open, sk, &entry);
    if !emit_open(open) {
        let _ = SOCKETS.remove(sk);
    }
}

/// An io_uring connect an io-wq worker is issuing: its submitter (owner, stack and Python
/// frames) was kept at submission (`probes::io_uring`); the connect is theirs. Whether there
/// was one.
#[inline(always)]
fn adopt_submitter(sk: u64, open: &mut ConnOpenRecord) -> bool {
    let Some(pending) = PENDING_CONNECTS.get_ptr(sk) else { return false };
    let submitted = unsafe { &(*pending).open };
    open.owner = submitted.owner;
    open.stack_depth = submitted.stack_depth;
    open.stack_error = submitted.stack_error;
    open.python = submitted.python;
    // SAFETY: both are the whole array; a map value is readable kernel memory.
    let stack = unsafe { core::slice::from_raw_parts_mut(open.stack.as_mut_ptr().cast::<u8>(), MAX_STACK_DEPTH * 8) };
    if unsafe { bpf_probe_read_kernel_buf(submitted.stack.as_ptr().cast::<u8>(), stack) }.is_err() {
        open.stack_depth = 0;
        open.python.depth = 0;
    }
    let _ = PENDING_CONNECTS.remove(sk);
    true
}

/// An io_uring accept is being submitted in the current task: the owner and the user stack
/// (the application's call into io_uring_enter) go into `open`, for its completion. `false`
/// when the process is filtered out. The submitting thread may be the ring's SQPOLL thread
/// (`sq_thread`), which runs no user code: no stack then, and the process's name.
#[inline(always)]
pub fn take_submitter(ctx: *mut c_void, open: &mut ConnOpenRecord, sq_thread: bool) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !owner_wanted((pid_tgid >> 32) as u32, cgroup_id) {
        return false;
    }
    fill_owner(&mut open.owner, pid_tgid, cgroup_id);
    if sq_thread {
        // The thread is named `iou-sqp-PID`: the process's name is what a user filters on.
        let _ = kernel::current_process_comm(&mut open.owner.comm);
        open._pad = 0;
        open.stack_depth = 0;
        open.stack_error = -ENOENT;
        open.python = PythonTrail::default();
    } else {
        let python = python::offsets_of(open.owner.tgid, open.owner.process_start_ns);
        take_user_stack(ctx, open, python.is_some());
        add_python_trail(open, python.as_ref());
    }
    true
}

/// The passive socket behind the current task's `fd`, if it is tracked and nobody accepted it
/// yet (a socket is in a file table only once accepted, so this is its accept).
#[inline(always)]
fn unaccepted_socket(fd: u32) -> Option<(u64, *mut SocketEntry)> {
    let sk = match kernel::current_fd_sock(fd) {
        Ok(sk) => sk,
        Err(error) => {
            anomaly::accept_unresolved((bpf_get_current_pid_tgid() >> 32) as u32, fd, error);
            return None;
        }
    };
    let Some(entry_ptr) = SOCKETS.get_ptr_mut(sk) else {
        if Probed::sock_protocol(sk) == Ok(IPPROTO_TCP) {
            count(Counter::AcceptUntracked);
        }
        return None;
    };
    let flags = unsafe { (*entry_ptr).flags };
    if flags & SOCKET_PASSIVE == 0 || flags & SOCKET_ACCEPTED != 0 {
        return None;
    }
    Some((sk, entry_ptr))
}

/// Marks the socket accepted, or stops tracking it when its owner is filtered out.
#[inline(always)]
fn mark_accepted(sk: u64, entry_ptr: *mut SocketEntry, wanted: bool) -> Option<SocketEntry> {
    if !wanted {
        let _ = SOCKETS.remove(sk);
        return None;
    }
    let mut entry = unsafe { *entry_ptr };
    entry.flags |= SOCKET_ACCEPTED;
    unsafe { (*entry_ptr).flags = entry.flags };
    Some(entry)
}

/// An accept record's socket part: header, addresses and state as they are now.
#[inline(always)]
fn fill_accept(open: &mut ConnOpenRecord, sk: u64, entry: &SocketEntry) {
    let now = unsafe { bpf_ktime_get_ns() };
    open.header = header(EventKind::Accept, now, sk, entry);
    open.tuple = Tuple::default();
    let _ = kernel::sock_tuple::<Probed>(sk, &mut open.tuple);
    open.state = kernel::sock_state::<Probed>(sk).unwrap_or(0);
}

#[inline(always)]
fn header(kind: EventKind, now: u64, sk: u64, entry: &SocketEntry) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now,
        sk,
        birth_ns: entry.birth_ns,
        cookie: entry.cookie,
    }
}

#[inline(always)]
fn fill_owner(owner: &mut Owner, pid_tgid: u64, cgroup_id: u64) {
    owner.tgid = (pid_tgid >> 32) as u32;
    owner.tid = pid_tgid as u32;
    owner.process_start_ns = kernel::current_process_start_ns();
    owner.cgroup_id = cgroup_id;
    owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The current task's user stack, straight into the record (no copy, no stack-id map whose
/// hash collisions would silently drop new stacks). In a CPython process registered for Python
/// frames (`python_room`) its outermost frames leave room for them.
#[inline(always)]
fn take_user_stack(ctx: *mut c_void, open: &mut ConnOpenRecord, python_room: bool) {
    open._pad = 0;
    if config!(user_stacks) == 0 {
        open.stack_depth = 0;
        open.stack_error = -ENOENT;
        return;
    }
    let frames = if python_room { PYTHON_NATIVE_DEPTH } else { MAX_STACK_DEPTH };
    let bytes = unsafe {
        bpf_get_stack(ctx, open.stack.as_mut_ptr().cast(), (frames * 8) as u32, BPF_F_USER_STACK as u64)
    };
    if bytes < 0 {
        anomaly::stack_failed((bpf_get_current_pid_tgid() >> 32) as u32, bytes);
        open.stack_depth = 0;
        open.stack_error = bytes as i32;
    } else {
        open.stack_depth = (bytes as u32) / 8;
        open.stack_error = 0;
    }
}

#[inline(always)]
fn owner_wanted(tgid: u32, cgroup_id: u64) -> bool {
    let filters = config!(filters);
    if filters & filter::PIDS != 0 && unsafe { FILTER_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if filters & filter::CGROUPS != 0 && unsafe { FILTER_CGROUPS.get(cgroup_id) }.is_none() {
        return false;
    }
    true
}

#[inline(always)]
fn ports_wanted(tuple: &Tuple) -> bool {
    if config!(filters) & filter::PORTS == 0 {
        return true;
    }
    unsafe {
        FILTER_PORTS.get(tuple.remote_port).is_some()
            || (tuple.local_port != 0 && FILTER_PORTS.get(tuple.local_port).is_some())
    }
}
