//! leaktrace's kernel programs: they see every TCP connection from birth to death, attribute
//! it to the process (and user stack) that opened or accepted it, and report to userspace
//! through one ring buffer, counting everything they could not report.
//!
//! Hooks (userspace picks one per family at load time, by probing what the kernel offers):
//! - `probes::state`: `inet_sock_set_state`, as two `tp_btf` programs or the classic tracepoint.
//! - `probes::accept`: `syscalls:sys_exit_accept{,4}`, where the acceptor is known.
//! - `probes::io_uring`: `io_uring:io_uring_submit_req` and `io_uring_complete`, for accepts
//!   done through io_uring, which never return from accept(2).
//! - `probes::go`: uprobes at the returns of a Go program's `runtime.newproc1`, attached per
//!   process by userspace, for goroutine ancestry (`goroutines`).
#![no_std]
#![no_main]

mod anomaly;
mod emit;
mod goroutines;
mod kernel;
mod lifecycle;
mod maps;
mod probes;
mod python;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: it is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
