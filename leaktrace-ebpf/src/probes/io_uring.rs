//! `io_uring:io_uring_submit_req` and `io_uring:io_uring_complete`: accepts done through
//! io_uring (`IORING_OP_ACCEPT`) never return from accept(2), so `probes::accept` never sees
//! them. Classic tracepoints (tracefs), at the offsets their `format` files give (they changed
//! across kernels); they fire only for io_uring requests, so other traffic pays nothing.
//!
//! - At submission (in the task that called io_uring_enter, or the ring's SQPOLL thread) an
//!   accept's submitter and user stack are kept in `PENDING_ACCEPTS`, keyed by ring and
//!   `user_data`: that stack holds the application's function that submitted the accept; the
//!   completion's does not (it runs in task work or in an io-wq worker).
//! - At completion the result is the new fd, installed in the file table the ring's tasks share:
//!   it is followed to its socket as `probes::accept` does, and the kept record is sent. A
//!   multishot accept keeps its entry while its completions say more follow.
//! - An accept submitted before the probes were attached has no entry: a single-shot one is
//!   recognised by its request's opcode and attributed to the completing task, with that task's
//!   stack (the application's wait for completions, or none in an io-wq worker).
//!
//! io_uring connects mostly need nothing here: CLOSE -> SYN_SENT runs where the request is
//! issued, in the submitting task as for connect(2) (see `lifecycle`). Only a connect forced to
//! an io-wq worker (`IOSQE_ASYNC`, or drained), or issued by a SQPOLL thread, runs in a thread
//! without a user stack: its submitter's record is kept in `PENDING_CONNECTS` by socket, for
//! `lifecycle` to adopt.
use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{
    IORING_CQE_F_MORE, IORING_OP_ACCEPT, IORING_OP_CONNECT, IouringRequestKey, REQ_F_FIXED_FILE, REQ_F_FORCE_ASYNC,
};

use crate::{
    kernel, lifecycle,
    maps::{PENDING_ACCEPTS, PENDING_CONNECTS, PENDING_SCRATCH, config, paused},
};

#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: TracePointContext) -> i32 {
    if !paused() {
        let _ = try_submit(&ctx);
    }
    0
}

#[tracepoint(category = "io_uring", name = "io_uring_complete")]
pub fn io_uring_complete(ctx: TracePointContext) -> i32 {
    if !paused() {
        let _ = try_complete(&ctx);
    }
    0
}

#[inline(always)]
fn try_submit(ctx: &TracePointContext) -> Result<(), i32> {
    let opcode: u8 = unsafe { ctx.read_at(config!(iouring.submit_opcode) as usize)? };
    if opcode == IORING_OP_ACCEPT {
        submit_accept(ctx)
    } else if opcode == IORING_OP_CONNECT {
        submit_connect(ctx)
    } else {
        Ok(())
    }
}

#[inline(always)]
fn submit_accept(ctx: &TracePointContext) -> Result<(), i32> {
    let key = IouringRequestKey {
        ring: unsafe { ctx.read_at(config!(iouring.submit_ctx) as usize)? },
        user_data: unsafe { ctx.read_at(config!(iouring.submit_user_data) as usize)? },
    };
    let pending = PENDING_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let pending = unsafe { &mut *pending };
    let req_at = config!(iouring.submit_req);
    pending.req = if req_at == 0 { 0 } else { unsafe { ctx.read_at(req_at as usize)? } };
    if lifecycle::take_submitter(ctx.as_ptr(), &mut pending.open, submitted_by_sqpoll(ctx)?) {
        // A full LRU map evicts its oldest entry: that accept is then attributed at its
        // completion, to the completing task.
        PENDING_ACCEPTS.insert(key, pending, 0)?;
    }
    Ok(())
}

/// A connect forced to an io-wq worker, or submitted by the ring's SQPOLL thread: its socket
/// (the fd it names, in the file table the ring's threads share) gets the submitter's record,
/// which the io thread's CLOSE -> SYN_SENT adopts (an SQPOLL submission has no stack, but the
/// process's name). Connects issued by the submitting task (the usual case) take their owner
/// and stack there, as connect(2) does, and are not kept.
#[inline(always)]
fn submit_connect(ctx: &TracePointContext) -> Result<(), i32> {
    // Older records name no request or no flags (offset 0): nothing to resolve the socket by.
    let flags_at = config!(iouring.submit_flags);
    let req_at = config!(iouring.submit_req);
    let fd_offset = config!(offsets.io_kiocb_cqe_fd);
    if flags_at == 0 || req_at == 0 || fd_offset == 0 {
        return Ok(());
    }
    // A u64 in current records (a u32 in some older ones: the bits read here are the low ones).
    let flags: u64 = unsafe { ctx.read_at(flags_at as usize)? };
    let sq_thread = submitted_by_sqpoll(ctx)?;
    if (flags & REQ_F_FORCE_ASYNC == 0 && !sq_thread) || flags & REQ_F_FIXED_FILE != 0 {
        return Ok(());
    }
    let req: u64 = unsafe { ctx.read_at(req_at as usize)? };
    let fd = kernel::read::<i32>(req, fd_offset)?;
    let sk = kernel::current_fd_sock(fd as u32)?;
    let pending = PENDING_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let pending = unsafe { &mut *pending };
    pending.req = req;
    if lifecycle::take_submitter(ctx.as_ptr(), &mut pending.open, sq_thread) {
        PENDING_CONNECTS.insert(sk, pending, 0)?;
    }
    Ok(())
}

#[inline(always)]
fn submitted_by_sqpoll(ctx: &TracePointContext) -> Result<bool, i32> {
    let sq_thread: u8 = unsafe { ctx.read_at(config!(iouring.submit_sq_thread) as usize)? };
    Ok(sq_thread != 0)
}

#[inline(always)]
fn try_complete(ctx: &TracePointContext) -> Result<(), i32> {
    let key = IouringRequestKey {
        ring: unsafe { ctx.read_at(config!(iouring.complete_ctx) as usize)? },
        user_data: unsafe { ctx.read_at(config!(iouring.complete_user_data) as usize)? },
    };
    // The request is NULL in a multishot request's completions before its last, and unknown (0)
    // where the record does not name it (older kernels).
    let req_at = config!(iouring.complete_req);
    let req: u64 = if req_at == 0 { 0 } else { unsafe { ctx.read_at(req_at as usize)? } };
    // Where the request is named, its opcode says whether it is an accept: other requests'
    // completions (the bulk of an io_uring server's) stop at this one read.
    let opcode_offset = config!(offsets.io_kiocb_opcode);
    let known_accept = req != 0 && opcode_offset != 0;
    if known_accept && kernel::read::<u8>(req, opcode_offset)? != IORING_OP_ACCEPT {
        return Ok(());
    }
    let res: i32 = unsafe { ctx.read_at(config!(iouring.complete_res) as usize)? };
    if let Some(pending) = PENDING_ACCEPTS.get_ptr_mut(key) {
        let pending = unsafe { &mut *pending };
        // An entry left by an earlier request with the same `user_data` names another request.
        if req == 0 || pending.req == req {
            if res >= 0 {
                lifecycle::on_submitted_accept(res as u32, &mut pending.open);
            }
            let cflags: u32 = unsafe { ctx.read_at(config!(iouring.complete_cflags) as usize)? };
            if cflags & IORING_CQE_F_MORE == 0 {
                let _ = PENDING_ACCEPTS.remove(key);
            }
            return Ok(());
        }
    }
    if known_accept && res >= 0 {
        lifecycle::on_accept(ctx.as_ptr(), res as u32);
    }
    Ok(())
}
