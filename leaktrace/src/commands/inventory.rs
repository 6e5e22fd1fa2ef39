//! The live view's socket inventories, taken off the async thread (a /proc walk and a
//! sock_diag dump per network namespace can take tens of milliseconds on a busy host): the
//! first seeds the connections born before start, the later ones give idle times and sweep
//! connections gone unseen.
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::{
    inventory::{Direction as InventoryDirection, Inventory as SocketInventory, SockKind},
    tracker::{Direction, Inventory, ObservedOwner, ObservedSocket},
};

pub enum Taken {
    /// The first inventory, when seeding.
    Seed(Inventory),
    Later(Inventory),
}

pub struct Inventories {
    receiver: mpsc::Receiver<anyhow::Result<Taken>>,
}

impl Inventories {
    /// Takes an inventory now (a seeding one if `seed`), then every `interval`. `cgroups`:
    /// also find each owner's cgroup (for `--cgroup`).
    pub fn start(interval: Duration, seed: bool, cgroups: bool) -> anyhow::Result<Self> {
        let mut source = SocketInventory::new().context("opening the socket inventory (sock_diag netlink, /proc)")?;
        let (sender, receiver) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("leaktrace-inventory".into())
            .spawn(move || {
                let mut first = true;
                loop {
                    let taken = take(&mut source, cgroups)
                        .map(|taken| if first && seed { Taken::Seed(taken) } else { Taken::Later(taken) });
                    first = false;
                    if sender.blocking_send(taken).is_err() {
                        return; // the live view ended
                    }
                    std::thread::sleep(interval);
                }
            })
            .context("spawning the inventory thread")?;
        Ok(Self { receiver })
    }

    /// The next inventory (pending forever once the thread is gone).
    pub async fn next(&mut self) -> anyhow::Result<Taken> {
        match self.receiver.recv().await {
            Some(taken) => taken,
            None => std::future::pending().await,
        }
    }
}

/// One inventory in the tracker's terms: live connections only (time-wait sockets keep the
/// cookie of the connection they replaced, and request sockets are not connections yet), each
/// with its first owner, its start time on the events' clock, and its idle time.
fn take(source: &mut SocketInventory, cgroups: bool) -> anyhow::Result<Inventory> {
    let snapshot = source.take().context("taking the socket inventory (sock_diag and /proc)")?;
    for failure in &snapshot.namespace_failures {
        log::debug!("network namespace {} not inventoried: {}", failure.netns, failure.error);
    }
    let suspended_ns = snapshot.clock.suspended_ns();
    let sockets = snapshot
        .connections
        .iter()
        .filter(|connection| connection.socket.kind == SockKind::Full)
        .map(|connection| {
            let socket = &connection.socket;
            let idle_ms = match (socket.last_data_sent_ms, socket.last_data_recv_ms) {
                (Some(sent), Some(received)) => Some(u64::from(sent.min(received))),
                (sent, received) => sent.or(received).map(u64::from),
            };
            let owner = connection.owners.first().map(|owner| ObservedOwner {
                pid: owner.pid,
                // /proc counts from boot including suspend (CLOCK_BOOTTIME); the events use
                // CLOCK_MONOTONIC.
                start_ns: owner.start_time_ns.saturating_sub(suspended_ns),
                comm: owner.comm.clone(),
                cgroup_id: if cgroups { cgroup_of(owner.pid).unwrap_or(0) } else { 0 },
            });
            ObservedSocket {
                cookie: socket.cookie,
                state: socket.state,
                local: socket.local,
                remote: socket.remote,
                direction: match connection.direction {
                    InventoryDirection::Connect => Some(Direction::Connect),
                    InventoryDirection::Accept => Some(Direction::Accept),
                    InventoryDirection::Unknown => None,
                },
                idle_ms,
                owner,
            }
        })
        .collect();
    if !snapshot.unreadable_namespaces.is_empty() {
        log::debug!(
            "the net namespace of {} process(es) could not be read (pid {} first): their connections are not \
             taken for closed by their absence; reading them needs CAP_SYS_PTRACE",
            snapshot.unreadable_namespaces.len(),
            snapshot.unreadable_namespaces[0]
        );
    }
    Ok(Inventory {
        ts_ns: snapshot.taken_ns,
        complete: snapshot.namespace_failures.is_empty(),
        unlisted_pids: snapshot.unreadable_namespaces,
        sockets,
    })
}

/// The cgroup v2 id (the directory's inode) a process belongs to, for `--cgroup`.
pub(crate) fn cgroup_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let metadata = std::fs::metadata(format!("/sys/fs/cgroup{path}")).ok()?;
    Some(std::os::unix::fs::MetadataExt::ino(&metadata))
}
