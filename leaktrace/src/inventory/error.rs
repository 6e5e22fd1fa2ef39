//! What can go wrong taking the socket inventory: each error names what failed and how to fix it.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "cannot open a NETLINK_SOCK_DIAG socket in net namespace {netns}: {source}\n\
         hint: the kernel needs sock_diag with TCP support (CONFIG_INET_DIAG, CONFIG_INET_TCP_DIAG; \
         `modprobe tcp_diag` where they are modules)"
    )]
    OpenSocket {
        netns: u64,
        #[source]
        source: io::Error,
    },

    #[error("sock_diag {request} in net namespace {netns}: {source}")]
    Netlink {
        netns: u64,
        request: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "the kernel refused the sock_diag {request} in net namespace {netns}: {source}\n\
         hint: ENOENT means no TCP sock_diag handler (`modprobe tcp_diag`)"
    )]
    Refused {
        netns: u64,
        request: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "undecodable sock_diag reply to the {request} in net namespace {netns}: {reason}\n\
         hint: a kernel/netlink-packet-sock-diag mismatch; please report it with `uname -r`"
    )]
    Decode {
        netns: u64,
        request: &'static str,
        reason: String,
    },

    #[error(
        "cannot read {path}: {source}\nhint: leaktrace needs procfs; mount it with `mount -t proc proc /proc`"
    )]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot enter net namespace {netns} through {path}: {source}\n\
         hint: setns(2) needs CAP_SYS_ADMIN; without it only leaktrace's own namespace is inventoried"
    )]
    EnterNamespace {
        netns: u64,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot start the thread that enters net namespaces: {source}")]
    Thread {
        #[source]
        source: io::Error,
    },
}
