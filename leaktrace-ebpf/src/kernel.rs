//! Reads of kernel structures at the offsets userspace resolved from BTF (`CONFIG.offsets`).
//! Every read is a `bpf_probe_read_kernel`: a pointer that turned stale gives an error, never
//! a fault.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use leaktrace_common::{AF_INET, AF_INET6, Tuple};

use crate::maps::config;

#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// The socket's family, ports and addresses, as they are now.
#[inline(always)]
pub fn sock_tuple(sk: u64, tuple: &mut Tuple) -> Result<(), i32> {
    tuple.family = read::<u16>(sk, config!(offsets.sock_family))?;
    tuple.local_port = read::<u16>(sk, config!(offsets.sock_local_port))?;
    tuple.remote_port = u16::from_be(read::<u16>(sk, config!(offsets.sock_remote_port))?);
    if tuple.family == AF_INET {
        let local = read::<[u8; 4]>(sk, config!(offsets.sock_local_addr4))?;
        let remote = read::<[u8; 4]>(sk, config!(offsets.sock_remote_addr4))?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else if tuple.family == AF_INET6 {
        let local = (sk + config!(offsets.sock_local_addr6) as u64) as *const u8;
        let remote = (sk + config!(offsets.sock_remote_addr6) as u64) as *const u8;
        unsafe {
            bpf_probe_read_kernel_buf(local, &mut tuple.local_addr)?;
            bpf_probe_read_kernel_buf(remote, &mut tuple.remote_addr)?;
        }
    }
    Ok(())
}

/// `sk->sk_protocol`, wherever (and however wide) this kernel keeps it.
#[inline(always)]
pub fn sock_protocol(sk: u64) -> Result<u16, i32> {
    let word = read::<u32>(sk, config!(offsets.sock_protocol_word))?;
    let bits = config!(offsets.sock_protocol_bits);
    let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
    Ok(((word >> (config!(offsets.sock_protocol_shift) & 31)) & mask) as u16)
}

/// `sk->sk_state`.
#[inline(always)]
pub fn sock_state(sk: u64) -> Result<u32, i32> {
    Ok(read::<u8>(sk, config!(offsets.sock_state))? as u32)
}

/// `current->group_leader->start_time`: with the tgid, identifies the process across pid reuse.
#[inline(always)]
pub fn current_process_start_ns() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, config!(offsets.task_group_leader))
        .and_then(|leader| read::<u64>(leader, config!(offsets.task_start_time)))
        .unwrap_or(0)
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
