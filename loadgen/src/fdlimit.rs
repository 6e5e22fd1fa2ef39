//! The file descriptor limit (RLIMIT_NOFILE): every held or leaked connection takes two
//! descriptors, and soft limits of 1024 are common. Raising the soft limit up to the hard one
//! needs no privilege.
use std::io;

use anyhow::{Context, Result};

/// (soft, hard) RLIMIT_NOFILE.
pub fn nofile_limits() -> Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft limit to `soft`, keeping the hard limit `hard` (as [`nofile_limits`] read it).
pub fn set_soft_nofile(soft: u64, hard: u64) -> Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads the struct it is given; a soft limit within the hard one needs no
    // privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("raising RLIMIT_NOFILE to {soft}"));
    }
    Ok(())
}
