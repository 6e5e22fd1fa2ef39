//! Reads of kernel structures at the offsets userspace resolved from BTF (`CONFIG.offsets`).
//!
//! A socket is read through one of two [`SockAccess`] kinds: [`Probed`] (`bpf_probe_read_kernel`
//! per field: a pointer that turned stale gives an error, never a fault) for pointers the
//! verifier knows nothing about, and [`Typed`] (plain loads) for the `struct sock *` a `tp_btf`
//! program receives: the verifier checks each load against the kernel's BTF (the offsets are
//! constants to it, read from the frozen `.rodata`) and makes it fault-safe itself, with no
//! helper call per field. Only the typed pointer may be asked for the socket cookie.
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use leaktrace_common::{AF_INET, AF_INET6, Tuple};

use crate::maps::config;

#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// How a probe reads a `struct sock`: its fields, and its cookie where the hook allows it.
pub trait SockAccess {
    /// The scalar of type `T` at `base + offset`.
    fn read<T: Copy>(base: u64, offset: u32) -> Result<T, i32>;
    /// `sk->sk_protocol`.
    fn sock_protocol(sk: u64) -> Result<u16, i32>;
    /// The 16-byte `struct in6_addr` at `base + offset`.
    fn read_addr6(base: u64, offset: u32, addr: &mut [u8; 16]) -> Result<(), i32>;
    /// The socket cookie (generated on first use), or 0 where the hook may not ask for it.
    fn socket_cookie(sk: u64) -> u64;
}

/// `bpf_probe_read_kernel` per field.
pub struct Probed;

impl SockAccess for Probed {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Result<T, i32> {
        read(base, offset)
    }

    /// Wherever (and however wide) this kernel keeps it: the aligned 32-bit word that holds it,
    /// shifted and masked (it was an 8-bit bitfield before 5.6, a u16 since).
    #[inline(always)]
    fn sock_protocol(sk: u64) -> Result<u16, i32> {
        let word = read::<u32>(sk, config!(offsets.sock_protocol_word))?;
        let bits = config!(offsets.sock_protocol_bits);
        let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
        Ok(((word >> (config!(offsets.sock_protocol_shift) & 31)) & mask) as u16)
    }

    #[inline(always)]
    fn read_addr6(base: u64, offset: u32, addr: &mut [u8; 16]) -> Result<(), i32> {
        unsafe { bpf_probe_read_kernel_buf((base + offset as u64) as *const u8, addr) }
    }

    /// `bpf_get_socket_cookie` takes only a BTF-typed socket.
    #[inline(always)]
    fn socket_cookie(_sk: u64) -> u64 {
        0
    }
}

/// Plain loads from a BTF-typed pointer (a `tp_btf` argument), checked by the verifier.
pub struct Typed;

impl SockAccess for Typed {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Result<T, i32> {
        // SAFETY: the verifier only accepts this load at an offset and size that are a field
        // of the pointed-to type, and turns it into a fault-safe load.
        Ok(unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) })
    }

    /// A u16 field (5.6+) is loaded alone: the verifier refuses a load that spans two fields,
    /// as the aligned word would. Older bitfield layouts take the probed path.
    #[inline(always)]
    fn sock_protocol(sk: u64) -> Result<u16, i32> {
        let shift = config!(offsets.sock_protocol_shift);
        if config!(offsets.sock_protocol_bits) == 16 && shift.is_multiple_of(8) {
            Self::read::<u16>(sk, config!(offsets.sock_protocol_word) + shift / 8)
        } else {
            Probed::sock_protocol(sk)
        }
    }

    /// Two 8-byte loads.
    #[inline(always)]
    fn read_addr6(base: u64, offset: u32, addr: &mut [u8; 16]) -> Result<(), i32> {
        let high = Self::read::<u64>(base, offset)?;
        let low = Self::read::<u64>(base, offset + 8)?;
        addr[..8].copy_from_slice(&high.to_ne_bytes());
        addr[8..].copy_from_slice(&low.to_ne_bytes());
        Ok(())
    }

    #[inline(always)]
    fn socket_cookie(sk: u64) -> u64 {
        unsafe { bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
    }
}

/// The socket's family, ports and addresses, as they are now.
#[inline(always)]
pub fn sock_tuple<M: SockAccess>(sk: u64, tuple: &mut Tuple) -> Result<(), i32> {
    tuple.family = M::read::<u16>(sk, config!(offsets.sock_family))?;
    tuple.local_port = M::read::<u16>(sk, config!(offsets.sock_local_port))?;
    tuple.remote_port = u16::from_be(M::read::<u16>(sk, config!(offsets.sock_remote_port))?);
    if tuple.family == AF_INET {
        let local = M::read::<u32>(sk, config!(offsets.sock_local_addr4))?;
        let remote = M::read::<u32>(sk, config!(offsets.sock_remote_addr4))?;
        tuple.local_addr[..4].copy_from_slice(&local.to_ne_bytes());
        tuple.remote_addr[..4].copy_from_slice(&remote.to_ne_bytes());
    } else if tuple.family == AF_INET6 {
        M::read_addr6(sk, config!(offsets.sock_local_addr6), &mut tuple.local_addr)?;
        M::read_addr6(sk, config!(offsets.sock_remote_addr6), &mut tuple.remote_addr)?;
    }
    Ok(())
}

/// `sk->sk_state`.
#[inline(always)]
pub fn sock_state<M: SockAccess>(sk: u64) -> Result<u32, i32> {
    Ok(M::read::<u8>(sk, config!(offsets.sock_state))? as u32)
}

/// `current->group_leader->start_time`: with the tgid, identifies the process across pid reuse.
#[inline(always)]
pub fn current_process_start_ns() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, config!(offsets.task_group_leader))
        .and_then(|leader| read::<u64>(leader, config!(offsets.task_start_time)))
        .unwrap_or(0)
}

/// `current->group_leader->comm`: the process's name rather than the thread's.
#[inline(always)]
pub fn current_process_comm(comm: &mut [u8; 16]) -> Result<(), i32> {
    let task = unsafe { bpf_get_current_task() };
    let leader = read::<u64>(task, config!(offsets.task_group_leader))?;
    unsafe { bpf_probe_read_kernel_buf((leader + config!(offsets.task_comm) as u64) as *const u8, comm) }
}

/// The `struct sock` behind file descriptor `fd` of the current task, following
/// `current->files->fdt->fd[fd]->private_data->sk`. Only called on a socket fd returned by
/// accept(), so `private_data` is a `struct socket`.
#[inline(always)]
pub fn current_fd_sock(fd: u32) -> Result<u64, i32> {
    let task = unsafe { bpf_get_current_task() };
    let files = read::<u64>(task, config!(offsets.task_files))?;
    let fdt = read::<u64>(files, config!(offsets.files_fdt))?;
    let max_fds = read::<u32>(fdt, config!(offsets.fdtable_max_fds))?;
    if fd >= max_fds {
        return Err(-22);
    }
    let fd_array = read::<u64>(fdt, config!(offsets.fdtable_fd))?;
    let file = read::<u64>(fd_array, fd * 8)?;
    let socket = read::<u64>(file, config!(offsets.file_private_data))?;
    let sk = read::<u64>(socket, config!(offsets.socket_sk))?;
    if sk == 0 { Err(-2) } else { Ok(sk) }
}
