//! What aya 0.14's `ProgramInfo` does not expose: `bpf_prog_info.recursion_misses` (5.12+),
//! the runs the kernel skipped because the program was already running on that CPU.
use std::os::fd::{AsRawFd, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

pub fn recursion_misses(program: BorrowedFd<'_>) -> std::io::Result<u64> {
    // SAFETY: all-zero is a valid bpf_prog_info / bpf_attr (plain integers and unions of them).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = program.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
