//! A private network namespace for the load: its own loopback, ephemeral ports and TCP
//! counters, so that the load neither takes ports from whatever else runs on the host nor mixes
//! its counters with theirs. The probes of a tracer see every namespace alike. The namespace
//! goes away with the last process in it: nothing to clean up.
use std::{fs, io};

use anyhow::{Context, Result, bail};

/// Ephemeral ports inside the namespace: all of them, nothing else listens there.
const PORT_RANGE: &str = "1024 65535";

/// Moves this process into a new network namespace with its loopback up. Must run before any
/// thread is started: a namespace is per thread, and threads inherit their creator's.
pub fn enter_private() -> Result<()> {
    if thread_count() > 1 {
        bail!("internal error: a network namespace must be entered before threads start");
    }
    // SAFETY: unshare(2) with a flag; no memory is shared with the kernel.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        bail!(
            "cannot create a private network namespace: {err}\n\
             hint: it needs CAP_SYS_ADMIN (run as root), or use --netns host"
        );
    }
    loopback_up().context("bringing up the loopback of the private network namespace")?;
    // Per-namespace sysctl: /proc/sys/net shows the namespace of the process that opens it.
    fs::write("/proc/sys/net/ipv4/ip_local_port_range", PORT_RANGE)
        .context("widening the ephemeral port range of the private network namespace")?;
    Ok(())
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket only to carry the interface ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is valid, the name fits with its NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write the ifreq we own.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) != 0 {
            Err(io::Error::last_os_error())
        } else {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result
}

fn thread_count() -> usize {
    fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .unwrap_or(1)
}
