//! Library target of the kernel crate: lets the userspace build script depend on it, so
//! cargo rebuilds the kernel programs when their sources change.
#![no_std]
