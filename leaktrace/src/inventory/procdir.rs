//! The `/proc` walk the namespace enumeration and the owner scan share: `/proc` opened once,
//! its process directories listed once per inventory, each then opened relative to it.
use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use rustix::fs::{CWD, Dir, Mode, OFlags, openat};

use super::InventoryError;

pub(super) struct ProcDir {
    fd: OwnedFd,
}

const PROC: &str = "/proc";

impl ProcDir {
    pub(super) fn open() -> Result<Self, InventoryError> {
        let fd = openat(
            CWD,
            PROC,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| proc_error(PROC, errno))?;
        Ok(Self { fd })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The processes (thread-group leaders) now in `/proc`.
    pub(super) fn pids(&self) -> Result<Vec<u32>, InventoryError> {
        let dir = Dir::read_from(&self.fd).map_err(|errno| proc_error(PROC, errno))?;
        let mut pids = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|errno| proc_error(PROC, errno))?;
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|name| name.parse().ok())
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }
}

pub(super) fn proc_error(path: &str, errno: rustix::io::Errno) -> InventoryError {
    InventoryError::Proc {
        path: PathBuf::from(path),
        source: errno.into(),
    }
}
