//! `inet_sock_set_state`: every TCP state transition (`tcp_set_state()` and
//! `inet_sk_set_state()`), `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
//! Exists since 4.16. The same logic on two kinds of hook, picked by userspace at load time:
//! 1. `tp_btf` (5.5+, BTF), as two programs (`_btf` and `_btf_twin`): the cheapest, since the
//!    socket is read with plain loads the verifier checks, and the only one that may call
//!    `bpf_get_socket_cookie` on the socket.
//! 2. the classic tracepoint `sock:inet_sock_set_state` (needs tracefs), fields at the
//!    offsets its `format` file gives, the socket read with `bpf_probe_read_kernel`.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use core::ffi::c_void;
use leaktrace_common::IPPROTO_TCP;

use crate::{
    kernel::{Probed, SockAccess, Typed},
    lifecycle,
    maps::{TransitionMark, config, paused},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    on_btf(&ctx, Twin::First)
}

/// The same logic as a second, separate `tp_btf` program. The kernel skips a `tp_btf` program
/// that fires while that same program runs on the CPU (a softirq interrupting it), but it keeps
/// that guard per program: while one of the twins is interrupted, the other runs.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf_twin(ctx: BtfTracePointContext) -> i32 {
    on_btf(&ctx, Twin::Second)
}

/// Which of the two `tp_btf` programs runs. They are attached first, then second, and the
/// kernel calls a tracepoint's programs in that order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Twin {
    First,
    Second,
}

#[inline(always)]
fn on_btf(ctx: &BtfTracePointContext, twin: Twin) -> i32 {
    if paused() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Decided from the arguments alone, alike in both twins: neither sets nor takes a mark then.
    if !lifecycle::wants_transition(old as u32, new as u32) {
        return 0;
    }
    let mark = TransitionMark::new(sk as u64, old as u32, new as u32);
    match twin {
        // What the first is about to apply, so the second can tell it was not skipped.
        Twin::First => mark.set(),
        // The first ran for this very transition: it is applied (or was not wanted), and the
        // socket map lookup that would say so is saved. Otherwise (the first was skipped, or
        // the mark is another transition's), the full logic decides.
        Twin::Second if mark.take() => return 0,
        Twin::Second => {}
    }
    if Typed::sock_protocol(sk as u64) != Ok(IPPROTO_TCP) {
        return 0;
    }
    lifecycle::on_state_change::<Typed>(ctx.as_ptr(), sk as u64, old as u32, new as u32);
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
    let old: i32 = unsafe { ctx.read_at(config!(classic.oldstate) as usize)? };
    let new: i32 = unsafe { ctx.read_at(config!(classic.newstate) as usize)? };
    if !lifecycle::wants_transition(old as u32, new as u32) {
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(config!(classic.protocol) as usize)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(config!(classic.skaddr) as usize)? };
    lifecycle::on_state_change::<Probed>(ctx.as_ptr(), sk, old as u32, new as u32);
    Ok(())
}
