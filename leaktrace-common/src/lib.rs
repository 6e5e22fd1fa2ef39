//! The ABI shared by leaktrace's kernel programs and its userspace: the records the probes
//! write to the ring buffer, the per-CPU counters, and the load-time configuration.
//!
//! Every type is `#[repr(C)]`, `Copy`, made of fixed-width integers with explicit padding, so
//! that the kernel side (bpfel) and userspace (x86_64, aarch64) agree byte for byte. Userspace
//! never transmutes these from the ring buffer: it decodes them with length checks
//! (`leaktrace::decode`). Kind and counter values are never reused.
#![no_std]

/// Length of `task_struct::comm`.
pub const TASK_COMM_LEN: usize = 16;

/// Deepest user stack captured at an open. The kernel caps `bpf_get_stack` at
/// `perf_event_max_stack` (127 by default); a Go gRPC dial is ~25 frames deep.
pub const MAX_STACK_DEPTH: usize = 127;

/// `AF_INET` / `AF_INET6` as the kernel stores them in `skc_family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `IPPROTO_TCP`: `inet_sock_set_state` also fires for SCTP and MPTCP sockets.
pub const IPPROTO_TCP: u16 = 6;

/// TCP states, as in `include/net/tcp_states.h`.
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
}

/// What a ring-buffer record is. The first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An active open (CLOSE -> SYN_SENT), taken in the connecting task: [`ConnOpenRecord`].
    Connect = 1,
    /// A passive open, taken when the owner accepts it: [`ConnOpenRecord`].
    Accept = 2,
    /// A state transition of a tracked socket: [`StateChangeRecord`].
    StateChange = 3,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connect),
            2 => Some(Self::Accept),
            3 => Some(Self::StateChange),
            _ => None,
        }
    }
}

/// The head of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// CPU the probe ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe ran.
    pub ts_ns: u64,
    /// The `struct sock` address. Reused by the kernel within a second: only
    /// (`sk`, `birth_ns`) identifies a connection.
    pub sk: u64,
    /// CLOCK_MONOTONIC time of the socket's first transition seen (SYN_SENT or SYN_RECV).
    pub birth_ns: u64,
    /// Socket cookie where the hook can take it (`tp_btf`), else 0.
    pub cookie: u64,
}

/// The connection's addresses. Ports are in host order. IPv4 addresses fill the first four
/// bytes; IPv6 ones all sixteen (v4-mapped addresses are left as the kernel has them:
/// userspace normalises).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// The process that owns a connection, taken in its own context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub tid: u32,
    /// `task->group_leader->start_time` (CLOCK_MONOTONIC ns): with `tgid`, a process identity
    /// that survives pid reuse.
    pub process_start_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// A connection's birth, with its owner and the user stack that opened it. The probes send it
/// only up to the end of its frames: [`OPEN_RECORD_FIXED`] bytes, then `stack_depth` frames of
/// the opening thread's stack, then the goroutine ancestry's frames ([`GoroutineTrail`]), then
/// the Python frames ([`PythonTrail`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnOpenRecord {
    pub header: EventHeader,
    pub owner: Owner,
    pub tuple: Tuple,
    /// TCP state when the record was taken (SYN_SENT at connect; ESTABLISHED or CLOSE_WAIT
    /// at accept).
    pub state: u32,
    /// Number of entries of `stack` that are the opening thread's own stack.
    pub stack_depth: u32,
    /// The negative errno of `bpf_get_stack`, or 0.
    pub stack_error: i32,
    pub _pad: u32,
    /// Where a Go goroutine doing the open was spawned from, hop by hop.
    pub goroutine: GoroutineTrail,
    /// The opening thread's Python frames, in a CPython process registered for them.
    pub python: PythonTrail,
    /// The thread's stack, then each ancestry hop's frames in turn, then the Python frames as
    /// (code, instruction) pairs.
    pub stack: [u64; MAX_STACK_DEPTH],
}

/// Most goroutine ancestors followed from a connecting goroutine (grpc-go 1.56+ and dual-stack
/// dials take two hops from the application's call; a third is margin).
pub const MAX_GO_HOPS: usize = 3;

/// Deepest stack kept for a goroutine's spawn (the spawning goroutine's stack at its `go`
/// statement, from `runtime.newproc1` up).
pub const GO_SPAWN_DEPTH: usize = 40;

/// A frame value that is no address (user space ends below 2^63): userspace puts it between a
/// stack and each spawning goroutine's stack when it joins them into one call stack.
pub const GOROUTINE_BOUNDARY: u64 = u64::MAX;

/// The goroutine that opened a connection and its ancestry, as far as it was recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineTrail {
    /// The goroutine's id; 0 when the opener is not a traced Go process.
    pub goid: u64,
    /// How many ancestry hops follow the thread's stack in the record's `stack`.
    pub hops: u32,
    pub _pad: u32,
    /// The goroutine that spawned hop `i`'s child: the connecting goroutine's parent at hop 0.
    pub spawner_goid: [u64; MAX_GO_HOPS],
    /// Frames of hop `i`: the spawner's stack at its `go` statement.
    pub hop_depth: [u32; MAX_GO_HOPS],
    pub _pad_end: u32,
}

/// Byte offsets into a Go process's runtime structures, resolved by userspace from the binary
/// (its DWARF, else a table by Go version) when goroutine ancestry is attached to the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoRuntimeOffsets {
    /// `task->group_leader->start_time` of the process they were resolved for, to within
    /// [`PROCESS_START_TOLERANCE_NS`]: a reused pid does not inherit them.
    pub process_start_ns: u64,
    /// `runtime.g.goid`.
    pub g_goid: u32,
    /// `runtime.g.m`.
    pub g_m: u32,
    /// `runtime.m.curg`.
    pub m_curg: u32,
    pub _pad: u32,
}

/// How far apart two start times of one process may be: the kernel gives nanoseconds, `/proc`
/// whole clock ticks (10 ms at the usual 100 Hz), and userspace may know a process first from
/// `/proc`. A later process reusing the pid starts far later than that.
pub const PROCESS_START_TOLERANCE_NS: u64 = 30_000_000;

/// Key of a goroutine's spawn record: goids are never reused within a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// Deepest Python stack taken at an open in a CPython process (innermost frame first).
pub const MAX_PYTHON_DEPTH: usize = 32;

/// Most thread states of an interpreter searched for the calling thread's.
pub const MAX_PYTHON_THREADS: u32 = 64;

/// Bytes at the start of a frame the walk reads in one go: every frame field it reads
/// (`frame_code`, `frame_previous`, `frame_instr`, `frame_owner`) must end within them.
pub const PYTHON_FRAME_WINDOW: usize = 128;

/// `_PyInterpreterFrame.owner` of a frame the C stack owns (a 3.12+ shim between C and Python
/// code): not an application frame, skipped by the walk.
pub const PYTHON_FRAME_OWNED_BY_CSTACK: u8 = 3;

/// Where a CPython process keeps its threads' frame chains: the address of its interpreter list
/// (ASLR applied) and the byte offsets of the fields a walk reads, taken from CPython's headers
/// for the process's version by userspace when it registers the process.
///
/// The walk: `*interpreters_head` is the interpreter; its `threads.head` (`tstate_head` before
/// 3.11) the first thread state; thread states are linked by `next`, and the calling thread's is
/// the one whose `thread_id` (its `pthread_t`, on x86_64 the thread's fsbase) matches. Its
/// frame pointer is `frame` (3.8–3.10), `cframe->current_frame` (3.11–3.12) or
/// `current_frame` (3.13); frames are linked by `f_back` / `previous`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonOffsets {
    /// `task->group_leader->start_time` of the process they were resolved for, to within
    /// [`PROCESS_START_TOLERANCE_NS`]: a reused pid does not inherit them.
    pub process_start_ns: u64,
    /// Address, in the process, of `_PyRuntime.interpreters.head`.
    pub interpreters_head: u64,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.11).
    pub interp_threads_head: u32,
    /// `PyThreadState.next`.
    pub tstate_next: u32,
    /// `PyThreadState.thread_id`.
    pub tstate_thread_id: u32,
    /// `PyThreadState.frame` (3.8–3.10), `.cframe` (3.11–3.12) or `.current_frame` (3.13+).
    pub tstate_frame: u32,
    /// Non-zero: `tstate_frame` points to a `_PyCFrame`, whose `current_frame` is at
    /// `cframe_current_frame`.
    pub via_cframe: u32,
    pub cframe_current_frame: u32,
    /// `f_code` (3.8–3.12) or `f_executable` (3.13+): the frame's code object.
    pub frame_code: u32,
    /// `f_back` (3.8–3.10) or `previous` (3.11+).
    pub frame_previous: u32,
    /// `f_lasti` (an `int`, 3.8–3.10), `prev_instr` (3.11–3.12) or `instr_ptr` (3.13+, both
    /// pointers into the code): sent to userspace as read, which turns it into a line.
    pub frame_instr: u32,
    /// Bytes of the `frame_instr` field: 4 (`int`) or 8 (a pointer).
    pub frame_instr_size: u32,
    /// `_PyInterpreterFrame.owner` (a byte); `u32::MAX` where frames have none (3.8–3.10).
    pub frame_owner: u32,
    pub _pad: u32,
}

/// Deepest thread stack taken at an open in a registered CPython process: the rest of the
/// record's frames are room for [`MAX_PYTHON_DEPTH`] Python frames of two words each.
pub const PYTHON_NATIVE_DEPTH: usize = MAX_STACK_DEPTH - 2 * MAX_PYTHON_DEPTH;

/// The Python frames of the thread that opened a connection. Each frame is two words of the
/// record's `stack`, after the thread's stack and any goroutine hops: the code object's address
/// (`f_code` / `f_executable`) and the instruction field as read (`f_lasti`, `prev_instr` or
/// `instr_ptr`, see [`PythonOffsets::frame_instr`]), innermost frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonTrail {
    /// Frames that follow (pairs of words).
    pub depth: u32,
    /// A [`PythonWalk`] value: how the walk ended.
    pub status: u32,
    /// The negative errno of the read that failed ([`PythonWalk::ReadFailed`]), else 0.
    pub error: i32,
    pub _pad: u32,
}

/// How the Python walk at an open ended ([`PythonTrail::status`]). Values are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonWalk {
    /// Not walked: the opener is not a CPython process registered for it. No frames.
    NotWalked = 0,
    /// The thread's frame chain was followed to its outermost frame (no frames at all when the
    /// thread runs no Python code).
    Complete = 1,
    /// The outermost frames were left out: the chain is deeper than [`MAX_PYTHON_DEPTH`], or
    /// than the record's room after the thread's stack.
    Truncated = 2,
    /// The interpreter list is empty (the interpreter is starting or shutting down).
    NoInterpreter = 3,
    /// None of the first [`MAX_PYTHON_THREADS`] thread states is the calling thread's (a
    /// thread CPython does not know, or more threads than are searched).
    ThreadNotFound = 4,
    /// A read of the process's memory failed (`error` says how): a page not resident, or the
    /// structures changing under the walk.
    ReadFailed = 5,
    /// This kernel gives no thread base (`task_struct.thread.fsbase`) to find the calling
    /// thread by (not x86_64).
    NoThreadBase = 6,
}

impl PythonWalk {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::NotWalked),
            1 => Some(Self::Complete),
            2 => Some(Self::Truncated),
            3 => Some(Self::NoInterpreter),
            4 => Some(Self::ThreadNotFound),
            5 => Some(Self::ReadFailed),
            6 => Some(Self::NoThreadBase),
            _ => None,
        }
    }
}

/// The bytes of a [`ConnOpenRecord`] before its stack array: every open record has them.
pub const OPEN_RECORD_FIXED: usize = core::mem::offset_of!(ConnOpenRecord, stack);

/// A transition of a tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateChangeRecord {
    pub header: EventHeader,
    /// The addresses as they are at this transition (the local port of an active open is
    /// only assigned after SYN_SENT).
    pub tuple: Tuple,
    pub old_state: u32,
    pub new_state: u32,
}

/// Per-CPU counters, indexes into the `COUNTERS` map. Userspace sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records the probes tried to write (each is then received or dropped).
    EventsProduced = 0,
    /// Ring-buffer reservations that failed: records lost because the buffer was full.
    EventsDropped = 1,
    /// Sockets not tracked because the socket map was full.
    SocketMapFull = 2,
    /// `bpf_get_stack` failures (the open is still reported, without a stack).
    StackFailed = 3,
    /// accept() returned a socket the probes never saw born (opened before leaktrace
    /// started, or its birth was lost).
    AcceptUntracked = 4,
    /// accept() returned an fd that could not be followed to its socket.
    AcceptUnresolved = 5,
    /// Passive sockets that closed before anybody accepted them.
    ClosedBeforeAccept = 6,
    /// Transitions of a tracked socket that no hook saw: the next transition's old state was
    /// not the last state recorded (the kernel skips a probe nested in a running one).
    TransitionsMissed = 7,
    /// Goroutine creations recorded in traced Go processes (their spawn stacks).
    GoroutinesRecorded = 8,
    /// Goroutine creations seen but not recorded (a runtime structure could not be read, or
    /// the stack walk failed).
    GoroutinesUnrecorded = 9,
    /// Python walks at an open in a registered CPython process that found the calling thread's
    /// frame chain ([`PythonWalk::Complete`] or [`PythonWalk::Truncated`]).
    PythonWalks = 10,
    /// Python walks that found no frames to give (any other [`PythonWalk`] but `NotWalked`).
    PythonWalksFailed = 11,
}

pub const COUNTER_SLOTS: u32 = 12;

/// Filter switches in [`Config::filters`].
pub mod filter {
    /// Only processes whose tgid is in `FILTER_PIDS`.
    pub const PIDS: u32 = 1;
    /// Only tasks whose cgroup id is in `FILTER_CGROUPS`.
    pub const CGROUPS: u32 = 2;
    /// Only connections with a local or remote port in `FILTER_PORTS`.
    pub const PORTS: u32 = 4;
}

/// Byte offsets of the kernel fields the probes read, resolved from the running kernel's BTF
/// by userspace at load time (the portable answer where the probes are not CO-RE relocated).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub sock_family: u32,
    pub sock_state: u32,
    pub sock_local_port: u32,
    pub sock_remote_port: u32,
    pub sock_local_addr4: u32,
    pub sock_remote_addr4: u32,
    pub sock_local_addr6: u32,
    pub sock_remote_addr6: u32,
    /// `sk_protocol`: byte offset of the 32-bit word holding it, then its shift and width
    /// (it was a bitfield before 5.6).
    pub sock_protocol_word: u32,
    pub sock_protocol_shift: u32,
    pub sock_protocol_bits: u32,
    pub task_group_leader: u32,
    pub task_start_time: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `task_struct.thread.fsbase` (x86_64: the Go runtime keeps the current g at fsbase - 8);
    /// 0 where this architecture or kernel has none.
    pub task_thread_fsbase: u32,
    /// `task_struct.comm`: the process's name, read from its group leader where the current
    /// thread is one of io_uring's own (SQPOLL: `iou-sqp-PID`).
    pub task_comm: u32,
    /// `io_kiocb.opcode` (an io_uring request's `IORING_OP_*`); 0 where this kernel has no
    /// io_uring (the field is never first: the request's file is).
    pub io_kiocb_opcode: u32,
    /// `io_kiocb.cqe.fd`: the fd an io_uring request names, set before its submission is
    /// traced; 0 where this kernel has no such field.
    pub io_kiocb_cqe_fd: u32,
}

/// Field offsets of the classic `sock:inet_sock_set_state` tracepoint record, read from its
/// tracefs `format` file (used only when the `tp_btf` hook does not load). The rest of the
/// socket is read through `skaddr` at the BTF offsets, as on the `tp_btf` path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassicStateFormat {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub protocol: u32,
}

/// Field offsets of the classic `io_uring:io_uring_submit_req` and `io_uring:io_uring_complete`
/// tracepoint records, read from their tracefs `format` files (their layout changed across
/// kernels). All zero where io_uring is not traced; `submit_req`, `submit_flags` and
/// `complete_req` are 0 where an older record lacks them (offset 0 is never a field's: the
/// common header is there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IouringFormat {
    pub submit_ctx: u32,
    pub submit_req: u32,
    pub submit_user_data: u32,
    pub submit_opcode: u32,
    pub submit_flags: u32,
    pub submit_sq_thread: u32,
    pub complete_ctx: u32,
    pub complete_req: u32,
    pub complete_user_data: u32,
    pub complete_res: u32,
    pub complete_cflags: u32,
}

/// `IORING_OP_ACCEPT`, from the kernel's `enum io_uring_op` (stable ABI since 5.5).
pub const IORING_OP_ACCEPT: u8 = 13;
/// `IORING_OP_CONNECT`.
pub const IORING_OP_CONNECT: u8 = 16;
/// `REQ_F_FIXED_FILE` in an io_uring request's flags (the submission's `IOSQE_FIXED_FILE`): its
/// fd is an index into the ring's registered files.
pub const REQ_F_FIXED_FILE: u64 = 1 << 0;
/// `REQ_F_FORCE_ASYNC` (`IOSQE_ASYNC`, also set for drained requests): the request is issued
/// by an io-wq worker thread, never by the submitting task.
pub const REQ_F_FORCE_ASYNC: u64 = 1 << 4;
/// `IORING_CQE_F_MORE`: a multishot request will post more completions.
pub const IORING_CQE_F_MORE: u32 = 1 << 1;

/// Key of an io_uring accept between its submission and its completion: the ring and the
/// request's `user_data`, both in the submission and every completion record (a multishot
/// accept's later completions name no request).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IouringRequestKey {
    pub ring: u64,
    pub user_data: u64,
}

/// Load-time configuration, written into the programs' read-only `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: KernelOffsets,
    pub classic: ClassicStateFormat,
    pub iouring: IouringFormat,
    /// [`filter`] bits.
    pub filters: u32,
    /// Wake the reader each time the pending records cross a multiple of this many bytes;
    /// between crossings, records wait for the reader's timed drain (one wakeup per batch, not
    /// per record).
    pub wakeup_bytes: u32,
    /// Bit `1 << state` set: transitions into that TCP state are sent to userspace. The others
    /// are applied to the socket's entry in the kernel and not sent (the leak tracker needs
    /// only ESTABLISHED, CLOSE_WAIT and CLOSE; see [`reported_states`]).
    pub reported_states: u32,
    /// Non-zero: take the user stack at each open. Zero: opens carry no stack (`stack_error`
    /// -ENOENT); for measuring what the stack walk costs.
    pub user_stacks: u32,
    /// Non-zero: walk the Python frames of registered CPython processes at their opens. Zero
    /// (where the probes with the walk do not pass this kernel's verifier): the verifier prunes
    /// the walk, and no process is walked.
    pub python_frames: u32,
}

/// Bits of the kernel's `RUNTIMES_REGISTERED` map: which per-runtime process maps userspace
/// has put a process in since the probes were loaded. An open looks its process up in a
/// runtime's map only once that runtime's bit is set.
pub mod runtimes {
    pub const PYTHON: u32 = 1;
    pub const GO: u32 = 2;
}

/// [`Config::reported_states`] values.
pub mod reported_states {
    use super::tcp_state;

    /// Every transition (the `events` debugging view).
    pub const ALL: u32 = u32::MAX;
    /// What the leak tracker uses: the handshake's end (a connect that failed never gets
    /// there), the peer's hang-up (CLOSE_WAIT, the classic server leak) and the end of life.
    pub const ESSENTIAL: u32 =
        1 << tcp_state::ESTABLISHED | 1 << tcp_state::CLOSE_WAIT | 1 << tcp_state::CLOSE;

    /// Whether a transition into `state` is sent under `mask`.
    #[inline(always)]
    pub const fn reports(mask: u32, state: u32) -> bool {
        mask & (1 << (state & 31)) != 0
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for ClassicStateFormat {}
    unsafe impl aya::Pod for IouringFormat {}
    unsafe impl aya::Pod for IouringRequestKey {}
    unsafe impl aya::Pod for GoRuntimeOffsets {}
    unsafe impl aya::Pod for GoroutineKey {}
    unsafe impl aya::Pod for PythonOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The kernel and userspace must agree on these sizes; a change is an ABI change.
    #[test]
    fn record_sizes_are_stable() {
        assert_eq!(size_of::<EventHeader>(), 40);
        assert_eq!(size_of::<Tuple>(), 40);
        assert_eq!(size_of::<Owner>(), 40);
        assert_eq!(size_of::<StateChangeRecord>(), 88);
        assert_eq!(size_of::<GoroutineTrail>(), 56);
        assert_eq!(size_of::<PythonTrail>(), 16);
        assert_eq!(size_of::<ConnOpenRecord>(), 208 + 8 * MAX_STACK_DEPTH);
        assert_eq!(OPEN_RECORD_FIXED, 208);
        assert_eq!(size_of::<GoRuntimeOffsets>(), 24);
        assert_eq!(size_of::<GoroutineKey>(), 16);
        assert_eq!(size_of::<PythonOffsets>(), 64);
        // Room for every hop after the deepest thread stack that still takes ancestry.
        const { assert!(GO_SPAWN_DEPTH * MAX_GO_HOPS < MAX_STACK_DEPTH) };
        // Room for every Python frame after the deepest thread stack of a CPython process.
        const { assert!(PYTHON_NATIVE_DEPTH + 2 * MAX_PYTHON_DEPTH <= MAX_STACK_DEPTH) };
        assert_eq!(size_of::<ConnOpenRecord>() % 8, 0);
    }

    #[test]
    fn essential_states_are_the_trackers() {
        use reported_states::{ALL, ESSENTIAL, reports};
        for state in [tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT, tcp_state::CLOSE] {
            assert!(reports(ESSENTIAL, state));
        }
        for state in [tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2, tcp_state::LAST_ACK, tcp_state::CLOSING] {
            assert!(!reports(ESSENTIAL, state), "state {state} is not needed by the tracker");
            assert!(reports(ALL, state));
        }
    }

    #[test]
    fn event_kinds_round_trip() {
        for kind in [EventKind::Connect, EventKind::Accept, EventKind::StateChange] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(4), None);
    }

    #[test]
    fn python_walks_round_trip() {
        for value in 0..7 {
            assert_eq!(PythonWalk::from_u32(value).map(|walk| walk as u32), Some(value));
        }
        assert_eq!(PythonWalk::from_u32(7), None);
    }
}
