//! Goroutine ancestry for Go processes: gRPC and net/http dial on goroutines they spawn
//! themselves, so the stack at connect() ends in library code, and the application's call is on
//! the goroutine that ran the `go` statement. A uprobe at each return of `runtime.newproc1`
//! (attached by userspace per process, only where it is wanted) records every new goroutine's
//! spawn: its parent's goid and the user stack at that moment, which runs from the runtime's
//! system stack into the spawning goroutine and so holds the function with the `go` statement.
//! At connect, the connecting goroutine's chain of spawns is copied into the open's record.
//!
//! Go-specific facts (amd64): the current g is at `fsbase - 8` (also in cgo binaries); goids
//! are never reused, so `{tgid, goid}` keys the records (g structs are reused from a free
//! list); `newproc1` runs on g0, whose m's `curg` is the spawning goroutine; its result, the new
//! g, is in RAX at every RET. The field offsets come from userspace ([`GO_PROCESSES`]).
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_task, bpf_get_stack, bpf_probe_read_kernel_buf, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use core::ffi::c_void;
use leaktrace_common::{
    ConnOpenRecord, Counter, GO_SPAWN_DEPTH, GoRuntimeOffsets, GoroutineKey, MAX_GO_HOPS, MAX_STACK_DEPTH,
    PROCESS_START_TOLERANCE_NS, runtimes,
};

use crate::{
    kernel::read,
    maps::{config, count, runtime_registered},
};

/// The Go processes with ancestry attached, by tgid, with their runtime's field offsets.
/// Filled by userspace when it attaches the `newproc1` probes to a process.
#[map]
pub static GO_PROCESSES: HashMap<u32, GoRuntimeOffsets> = HashMap::with_max_entries(1024, 0);

/// Goroutine creations seen per traced process, per CPU (no atomics): userspace reads the rate
/// and detaches ancestry from a process that creates goroutines faster than its budget.
#[map]
pub static GO_SPAWNS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// Each recorded goroutine's spawn. LRU: goroutines end unseen (no probe on their exit), so the
/// oldest records make room; a connect whose chain was evicted stops its trail there.
#[map]
pub static GOROUTINES: LruHashMap<GoroutineKey, GoroutineSpawn> = LruHashMap::with_max_entries(16_384, 0);

/// Where a spawn record is assembled before it is copied into [`GOROUTINES`].
#[map]
static SPAWN_SCRATCH: PerCpuArray<GoroutineSpawn> = PerCpuArray::with_max_entries(1, 0);

/// A goroutine's birth: who spawned it, and the spawner's stack at the `go` statement.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineSpawn {
    pub spawner_goid: u64,
    pub depth: u32,
    pub _pad: u32,
    pub frames: [u64; GO_SPAWN_DEPTH],
}

/// The runtime offsets of the current process, if it is a Go process with ancestry attached
/// and not a later process that reused its pid. Userspace may know the process's start time
/// only to the clock tick `/proc` gives (when it first saw the process in a socket inventory),
/// hence the tolerance.
#[inline(always)]
fn offsets_of(tgid: u32, process_start_ns: u64) -> Option<GoRuntimeOffsets> {
    if !runtime_registered(runtimes::GO) {
        return None;
    }
    let offsets = unsafe { GO_PROCESSES.get(tgid) }.copied()?;
    (offsets.process_start_ns.abs_diff(process_start_ns) <= PROCESS_START_TOLERANCE_NS).then_some(offsets)
}

/// The current goroutine's g: the word below the thread's TLS base.
#[inline(always)]
fn current_g() -> Result<u64, i64> {
    let fsbase_at = config!(offsets.task_thread_fsbase);
    if fsbase_at == 0 {
        return Err(-95);
    }
    let task = unsafe { bpf_get_current_task() };
    let fsbase = read::<u64>(task, fsbase_at).map_err(i64::from)?;
    user::<u64>(fsbase.wrapping_sub(8))
}

#[inline(always)]
fn user<T>(address: u64) -> Result<T, i64> {
    unsafe { bpf_probe_read_user(address as *const T) }.map_err(i64::from)
}

/// At a return of `runtime.newproc1`, with the new g in `new_g`: records its spawn.
#[inline(always)]
pub fn on_goroutine_created(ctx: *mut c_void, tgid: u32, process_start_ns: u64, new_g: u64) {
    let Some(offsets) = offsets_of(tgid, process_start_ns) else { return };
    if let Some(spawns) = GO_SPAWNS.get_ptr_mut(tgid) {
        // SAFETY: this CPU's slot of the entry userspace made at attach.
        unsafe { *spawns += 1 };
    }
    if record_spawn(ctx, tgid, &offsets, new_g).is_err() {
        count(Counter::GoroutinesUnrecorded);
    }
}

#[inline(always)]
fn record_spawn(ctx: *mut c_void, tgid: u32, offsets: &GoRuntimeOffsets, new_g: u64) -> Result<(), i64> {
    let goid = user::<u64>(new_g + offsets.g_goid as u64)?;
    // newproc1 runs on the system stack: the current g is g0, its m's curg the spawner.
    let g0 = current_g()?;
    let m = user::<u64>(g0 + offsets.g_m as u64)?;
    let spawner = user::<u64>(m + offsets.m_curg as u64)?;
    let spawner_goid = user::<u64>(spawner + offsets.g_goid as u64)?;
    let spawn = SPAWN_SCRATCH.get_ptr_mut(0).ok_or(-12i64)?;
    let spawn = unsafe { &mut *spawn };
    let bytes = unsafe {
        bpf_get_stack(ctx, spawn.frames.as_mut_ptr().cast(), (GO_SPAWN_DEPTH * 8) as u32, BPF_F_USER_STACK as u64)
    };
    if bytes <= 0 {
        return Err(bytes.min(-1));
    }
    spawn.spawner_goid = spawner_goid;
    spawn.depth = (bytes as u32) / 8;
    spawn._pad = 0;
    let key = GoroutineKey { tgid, _pad: 0, goid };
    GOROUTINES.insert(key, spawn, 0)?;
    count(Counter::GoroutinesRecorded);
    Ok(())
}

/// At a connect in a traced Go process: the connecting goroutine and its spawns, hop by hop,
/// appended to the record after the thread's own stack.
#[inline(always)]
pub fn add_trail(open: &mut ConnOpenRecord, tgid: u32, process_start_ns: u64) {
    open.goroutine = Default::default();
    let Some(offsets) = offsets_of(tgid, process_start_ns) else { return };
    let Ok(goid) = current_g().and_then(|g| user::<u64>(g + offsets.g_goid as u64)) else { return };
    open.goroutine.goid = goid;
    let mut at = open.stack_depth as usize;
    let mut child = goid;
    for hop in 0..MAX_GO_HOPS {
        // Room for a whole hop, so the copy below stays inside the record.
        if at > MAX_STACK_DEPTH - GO_SPAWN_DEPTH {
            break;
        }
        let key = GoroutineKey { tgid, _pad: 0, goid: child };
        let Some(spawn) = (unsafe { GOROUTINES.get(key) }) else { break };
        let depth = spawn.depth as usize;
        let depth = if depth < GO_SPAWN_DEPTH { depth } else { GO_SPAWN_DEPTH };
        let copied = unsafe {
            bpf_probe_read_kernel_buf(
                spawn.frames.as_ptr().cast(),
                core::slice::from_raw_parts_mut(open.stack.as_mut_ptr().add(at).cast::<u8>(), depth * 8),
            )
        };
        if copied.is_err() {
            break;
        }
        open.goroutine.spawner_goid[hop] = spawn.spawner_goid;
        open.goroutine.hop_depth[hop] = depth as u32;
        open.goroutine.hops = hop as u32 + 1;
        at += depth;
        child = spawn.spawner_goid;
    }
}
