//! Python frames at an open in a CPython process: the interpreter runs Python functions on
//! frames of its own (CPython keeps no frame pointers either), so the native stack at connect()
//! names only the interpreter and its C libraries. The calling thread's frame chain is walked
//! here instead, in the opening thread, at the moment of the call: for each frame its code
//! object's address and its instruction field, which userspace turns into a function, file and
//! line (reading the code object once per code, from outside the process).
//!
//! Which thread state is the caller's: CPython releases the GIL around blocking calls such as
//! connect() and accept(), so "the thread holding the GIL" is nobody at that moment; but every
//! thread keeps its own thread state, and its frame chain stays as it was while the call runs.
//! The walk looks the thread state up by `thread_id` (the thread's `pthread_t`, which on x86_64
//! glibc and musl is the thread's TLS base, `task->thread.fsbase`).
//!
//! Only processes userspace registered in [`PYTHON_PROCESSES`] are walked: once one is, every
//! other open pays one hash lookup (before, none: `maps::RUNTIMES_REGISTERED`). Every read of
//! the process's memory may fail (a page not resident: a probe cannot fault it in); the open is
//! then sent with its native stack alone and the reason.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use core::ffi::c_void;
use leaktrace_common::{
    ConnOpenRecord, Counter, MAX_PYTHON_DEPTH, MAX_PYTHON_THREADS, PROCESS_START_TOLERANCE_NS,
    PYTHON_FRAME_OWNED_BY_CSTACK, PYTHON_FRAME_WINDOW, PYTHON_NATIVE_DEPTH, PythonOffsets, PythonTrail, PythonWalk,
    runtimes,
};

use crate::{
    anomaly,
    kernel::read,
    maps::{config, count, runtime_registered},
};

/// The CPython processes registered for Python frames, by tgid, with where their interpreter
/// keeps its threads. Filled by userspace (`Tracer::attach_python`).
#[map]
pub static PYTHON_PROCESSES: HashMap<u32, PythonOffsets> = HashMap::with_max_entries(1024, 0);

/// Where each frame's first bytes are read to (too big for the BPF stack beside the rest). Per
/// CPU.
#[map]
static FRAME_WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

/// Twice the bytes read of a frame: room past any masked offset (see [`bounded`]). Words, so
/// that the fields (all at multiples of 8, checked at attach) are read with aligned loads.
type Window = [u64; 2 * PYTHON_FRAME_WINDOW / 8];

/// The Python offsets of the current process, if it is registered and not a later process that
/// reused its pid (userspace may know its start time only to the clock tick `/proc` gives).
#[inline(always)]
pub fn offsets_of(tgid: u32, process_start_ns: u64) -> Option<PythonOffsets> {
    // A constant to the verifier (frozen .rodata): off, it never sees the walk.
    if config!(python_frames) == 0 || !runtime_registered(runtimes::PYTHON) {
        return None;
    }
    let offsets = unsafe { PYTHON_PROCESSES.get(tgid) }.copied()?;
    (offsets.process_start_ns.abs_diff(process_start_ns) <= PROCESS_START_TOLERANCE_NS).then_some(offsets)
}

/// Appends the current thread's Python frames to `open` after its `native` frames (the thread's
/// stack and any goroutine hops), and says how the walk went; a record of a process that is not
/// registered (`offsets` None) gets an empty trail.
#[inline(always)]
pub fn add_trail(open: &mut ConnOpenRecord, native: usize, offsets: Option<&PythonOffsets>) {
    open.python = PythonTrail::default();
    let Some(offsets) = offsets else { return };
    let walk = walk(open, native, offsets);
    let (status, error) = match walk {
        Ok(status) => (status, 0),
        Err(Failure::Status(status)) => (status, 0),
        Err(Failure::Read(error)) => (PythonWalk::ReadFailed, error),
    };
    open.python.status = status as u32;
    open.python.error = error;
    if matches!(status, PythonWalk::Complete | PythonWalk::Truncated) {
        count(Counter::PythonWalks);
    } else {
        anomaly::python_walk_failed(open.owner.tgid, status as u32, error);
    }
}

enum Failure {
    Status(PythonWalk),
    Read(i32),
}

impl From<i32> for Failure {
    fn from(error: i32) -> Self {
        Self::Read(error)
    }
}

#[inline(always)]
fn user<T>(address: u64) -> Result<T, i32> {
    unsafe { bpf_probe_read_user(address as *const T) }
}

/// The thread's frames into `open.stack` from word `native` on, `open.python.depth` counting.
/// One frame is taken per iteration (the loop counter is the depth, which keeps the verifier's
/// states few), with one read of its first bytes; a C-stack shim (3.12+) is stepped over on the
/// way, and is never followed by another (its `previous` is the Python frame that called into
/// C, or nothing).
#[inline(always)]
fn walk(open: &mut ConnOpenRecord, native: usize, offsets: &PythonOffsets) -> Result<PythonWalk, Failure> {
    let mut frame = current_frame(offsets)?;
    // A CPython process's thread stack was taken at most PYTHON_NATIVE_DEPTH deep, so every
    // Python frame fits after it; only goroutine hops (never in CPython) could push it further.
    if native > PYTHON_NATIVE_DEPTH {
        return Ok(PythonWalk::Truncated);
    }
    let window = FRAME_WINDOW.get_ptr_mut(0).ok_or(Failure::Read(-12))?;
    // SAFETY: this CPU's slot; programs do not migrate while they run.
    let window = unsafe { &mut *window };
    let fields = FrameFields::of(offsets);
    for depth in 0..MAX_PYTHON_DEPTH {
        if frame == 0 {
            return Ok(PythonWalk::Complete);
        }
        fields.read(window, frame)?;
        if fields.is_shim(window) {
            frame = fields.previous(window);
            if frame == 0 {
                return Ok(PythonWalk::Complete);
            }
            fields.read(window, frame)?;
        }
        // SAFETY: native <= PYTHON_NATIVE_DEPTH and depth < MAX_PYTHON_DEPTH, so both words are
        // inside the array (PYTHON_NATIVE_DEPTH + 2 * MAX_PYTHON_DEPTH <= MAX_STACK_DEPTH); the
        // verifier checks the same bound.
        unsafe {
            let words = open.stack.as_mut_ptr().add(bounded(native, NATIVE_MASK) + 2 * depth);
            *words = fields.code(window);
            *words.add(1) = fields.instr(window);
        }
        open.python.depth = depth as u32 + 1;
        frame = fields.previous(window);
    }
    if frame == 0 {
        return Ok(PythonWalk::Complete);
    }
    // Only the outermost entry shim left is the whole chain too.
    fields.read(window, frame)?;
    Ok(if fields.is_shim(window) && fields.previous(window) == 0 { PythonWalk::Complete } else { PythonWalk::Truncated })
}

/// `value & mask`, computed on the value as it is used: older verifiers (5.10, 6.1) keep a bound
/// only on the register a check was made on, and the compiler may index with a copy made
/// before the check; the volatile load keeps it from dropping a mask it can prove redundant.
#[inline(always)]
fn bounded(value: usize, mask: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&value) & mask }
}

/// Bounds `native` (checked <= PYTHON_NATIVE_DEPTH = 63 before use) for the verifier.
const NATIVE_MASK: usize = 63;
const _: () = assert!(PYTHON_NATIVE_DEPTH == NATIVE_MASK);
/// Bounds a byte offset into the window (checked to be below [`PYTHON_FRAME_WINDOW`]); the map
/// value is twice the window, so a word at any masked offset stays inside it.
const WINDOW_MASK: usize = PYTHON_FRAME_WINDOW - 1;
/// Bounds a word's offset into the window, keeping it a multiple of 8.
const WORD_MASK: usize = PYTHON_FRAME_WINDOW - 8;

/// Where a frame's fields are in the bytes read of it, bounded for the verifier (userspace
/// refuses offsets past [`PYTHON_FRAME_WINDOW`]).
struct FrameFields {
    /// Bytes read of each frame: up to the end of the last field used.
    span: u32,
    code: usize,
    previous: usize,
    instr: usize,
    instr_mask: u64,
    /// Frames have an owner (3.11+; `owner` is 0 otherwise, always a byte of the window).
    has_owner: bool,
    owner: usize,
}

const LAST_WORD: usize = PYTHON_FRAME_WINDOW - 8;

impl FrameFields {
    #[inline(always)]
    fn of(offsets: &PythonOffsets) -> Self {
        let word = |offset: u32| if (offset as usize) < LAST_WORD { offset as usize } else { LAST_WORD };
        let has_owner = offsets.frame_owner != u32::MAX;
        let owner = offsets.frame_owner as usize;
        let owner = if !has_owner { 0 } else if owner < PYTHON_FRAME_WINDOW - 1 { owner } else { PYTHON_FRAME_WINDOW - 1 };
        let (code, previous, instr) = (word(offsets.frame_code), word(offsets.frame_previous), word(offsets.frame_instr));
        let span = code.max(previous).max(instr).max(owner) + 8;
        let instr_mask = if offsets.frame_instr_size == 8 { u64::MAX } else { u32::MAX as u64 };
        Self { span: span.min(PYTHON_FRAME_WINDOW) as u32, code, previous, instr, instr_mask, has_owner, owner }
    }

    /// The frame's first `span` bytes into `window`.
    #[inline(always)]
    fn read(&self, window: &mut Window, frame: u64) -> Result<(), i32> {
        let span = bounded(self.span as usize, 2 * PYTHON_FRAME_WINDOW - 1) as u32;
        let read = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(window.as_mut_ptr().cast(), span, frame as *const c_void)
        };
        if read < 0 { Err(read as i32) } else { Ok(()) }
    }

    #[inline(always)]
    fn word(window: &Window, at: usize) -> u64 {
        // SAFETY: a multiple of 8 below PYTHON_FRAME_WINDOW: an aligned word of the window.
        unsafe { core::ptr::read_volatile(window.as_ptr().cast::<u8>().add(bounded(at, WORD_MASK)).cast::<u64>()) }
    }

    #[inline(always)]
    fn code(&self, window: &Window) -> u64 {
        Self::word(window, self.code)
    }

    #[inline(always)]
    fn previous(&self, window: &Window) -> u64 {
        Self::word(window, self.previous)
    }

    #[inline(always)]
    fn instr(&self, window: &Window) -> u64 {
        Self::word(window, self.instr) & self.instr_mask
    }

    #[inline(always)]
    fn is_shim(&self, window: &Window) -> bool {
        // SAFETY: a byte below PYTHON_FRAME_WINDOW.
        let owner = unsafe { core::ptr::read_volatile(window.as_ptr().cast::<u8>().add(bounded(self.owner, WINDOW_MASK))) };
        self.has_owner && owner == PYTHON_FRAME_OWNED_BY_CSTACK
    }
}

/// The innermost frame of the calling thread (0 when it runs no Python code).
#[inline(always)]
fn current_frame(offsets: &PythonOffsets) -> Result<u64, Failure> {
    let fsbase_at = config!(offsets.task_thread_fsbase);
    if fsbase_at == 0 {
        return Err(Failure::Status(PythonWalk::NoThreadBase));
    }
    let task = unsafe { bpf_get_current_task() };
    let thread = read::<u64>(task, fsbase_at)?;
    let interpreter = user::<u64>(offsets.interpreters_head)?;
    if interpreter == 0 {
        return Err(Failure::Status(PythonWalk::NoInterpreter));
    }
    let mut tstate = user::<u64>(interpreter + offsets.interp_threads_head as u64)?;
    let mut found = 0u64;
    for _ in 0..MAX_PYTHON_THREADS {
        if tstate == 0 {
            break;
        }
        if user::<u64>(tstate + offsets.tstate_thread_id as u64)? == thread {
            found = tstate;
            break;
        }
        tstate = user::<u64>(tstate + offsets.tstate_next as u64)?;
    }
    if found == 0 {
        return Err(Failure::Status(PythonWalk::ThreadNotFound));
    }
    let frame = user::<u64>(found + offsets.tstate_frame as u64)?;
    if offsets.via_cframe != 0 && frame != 0 {
        return Ok(user::<u64>(frame + offsets.cframe_current_frame as u64)?);
    }
    Ok(frame)
}
