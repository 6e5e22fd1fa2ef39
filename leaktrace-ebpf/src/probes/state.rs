//! `inet_sock_set_state`: every TCP state transition (`tcp_set_state()` and
//! `inet_sk_set_state()`), `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
//! Exists since 4.16. Two attachments of the same logic, picked by userspace at load time:
//! 1. `tp_btf` (5.5+, BTF): the cheapest, and the only one that may call
//!    `bpf_get_socket_cookie` on the socket.
//! 2. the classic tracepoint `sock:inet_sock_set_state` (needs tracefs), fields at the
//!    offsets its `format` file gives.
use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use core::ffi::c_void;
use leaktrace_common::IPPROTO_TCP;

use crate::{kernel, lifecycle, maps::{config, paused}};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    if paused() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if kernel::sock_protocol(sk as u64) != Ok(IPPROTO_TCP) {
        return 0;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    lifecycle::on_state_change(ctx.as_ptr(), sk as u64, cookie, old as u32, new as u32);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_classic(ctx: TracePointContext) -> i32 {
    if paused() {
        return 0;
    }
    let _ = try_classic(&ctx);
    0
}

#[inline(always)]
fn try_classic(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = unsafe { ctx.read_at(config!(classic.protocol) as usize)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(config!(classic.skaddr) as usize)? };
    let old: i32 = unsafe { ctx.read_at(config!(classic.oldstate) as usize)? };
    let new: i32 = unsafe { ctx.read_at(config!(classic.newstate) as usize)? };
    lifecycle::on_state_change(ctx.as_ptr(), sk, 0, old as u32, new as u32);
    Ok(())
}
