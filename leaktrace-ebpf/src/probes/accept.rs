//! `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`: the return of accept() in the
//! accepting task, the one place where a passive connection's owner (and the user stack that
//! accepted it) can be taken. Classic tracepoints (tracefs); the record of every
//! `sys_exit_*` event is the common header, `int __syscall_nr`, then `long ret` at offset 16.
use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};

use crate::{lifecycle, maps::paused};

const SYS_EXIT_RET_OFFSET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> i32 {
    on_accept_return(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> i32 {
    on_accept_return(&ctx);
    0
}

#[inline(always)]
fn on_accept_return(ctx: &TracePointContext) {
    if paused() {
        return;
    }
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(SYS_EXIT_RET_OFFSET) }) else {
        return;
    };
    if ret >= 0 && ret <= u32::MAX as i64 {
        lifecycle::on_accept(ctx.as_ptr(), ret as u32);
    }
}
