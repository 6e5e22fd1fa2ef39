//! `runtime.newproc1` of a Go program (uprobe): the creation of every goroutine, where the new
//! g is in RAX at each of the function's RET instructions. Userspace attaches this program at
//! every RET offset it decodes from the binary, per process, never as a uretprobe (a uretprobe
//! rewrites the return address on the stack, and the Go runtime crashes when it walks or moves
//! a stack holding it). amd64 only: arm64's result register is R0 and its kernel stack walk is
//! not known to cross from g0 into the spawning goroutine.
use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};

use crate::{goroutines, kernel, maps::paused};

#[uprobe]
pub fn go_newproc1_return(ctx: ProbeContext) -> u32 {
    if paused() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    let new_g = unsafe { (*ctx.regs).rax };
    goroutines::on_goroutine_created(ctx.as_ptr(), tgid, kernel::current_process_start_ns(), new_g);
    0
}
