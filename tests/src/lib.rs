//! The harness of leaktrace's end-to-end tests: run the real probes in the background while
//! real processes open and close real sockets, then read back exactly what the kernel said.
//!
//! - [`require_privileges`]: skip with a reason where the machine cannot trace, and fail
//!   instead where it must (`LEAKTRACE_REQUIRE_PRIVILEGED=1`, set by `cargo xtask test` as root).
//! - [`TraceSession`]: a tracer on its own thread, collecting events; [`events_until`] for a
//!   test that drives a [`Tracer`] itself.
//! - [`Puppet`]: the `sockpuppet` C helper, driven one socket operation at a time.
//! - [`lifecycle`]: a socket's events as short strings, for exact assertions.
//! - [`cli`]: the `leaktrace` binary itself, live or replaying, read through its JSON reports.
//! - [`agent`]: `leaktrace agent` over HTTP, promtool, and a real Prometheus scraping it.
//! - [`go`]: the Go test programs (`grpcleak`: the flagship incident, its fix, the right design).
//! - [`tcp_table`]: the connections /proc says a process holds, the ground truth without eBPF.
//! - [`containers`]: real podman containers (rootful, runc), removed on drop.
//! - [`uring`]: a server and client that accept and connect only through io_uring.
//! - [`python`]: CPython interpreters running the helpers of `helpers/python/`, and a throwaway
//!   PostgreSQL cluster for psycopg2.
//! - [`deploy`]: deploy/kubernetes/ as Kubernetes objects, its pod as podman flags, the image.
pub mod agent;
pub mod cli;
pub mod containers;
pub mod deploy;
pub mod go;
pub mod puppet;
pub mod python;
pub mod session;
pub mod tcp_table;
pub mod uring;

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use leaktrace::{
    event::{Event, EventBody, SocketId},
    kernel::{Tracer, privileges},
};

pub use puppet::Puppet;
pub use session::{Finished, TraceSession};

/// One trace session at a time: the tests share the host's TCP stack and CPUs, and the
/// accounting tests want no competition for the ring buffer's reader.
static SERIAL: Mutex<()> = Mutex::new(());

/// Returns a guard that serialises privileged tests, or `None` (after saying why) when this
/// machine cannot load eBPF programs. With `LEAKTRACE_REQUIRE_PRIVILEGED=1` a missing
/// privilege is a failure, not a skip.
pub fn require_privileges(test: &str) -> Option<MutexGuard<'static, ()>> {
    if let Err(err) = privileges::check() {
        if std::env::var("LEAKTRACE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            panic!("{test}: LEAKTRACE_REQUIRE_PRIVILEGED=1 but this process cannot trace: {err}");
        }
        eprintln!("skipped {test}: needs root or CAP_BPF+CAP_PERFMON+CAP_DAC_READ_SEARCH");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// The sockets opened (connect) or accepted by process `pid`, in the order they were born.
pub fn sockets_of(events: &[Event], pid: u32) -> Vec<SocketId> {
    events
        .iter()
        .filter(|event| event.open().is_some_and(|open| open.owner.pid == pid))
        .map(|event| event.socket)
        .collect()
}

/// A socket's events as strings: `connect SYN_SENT`, `accept ESTABLISHED`,
/// `ESTABLISHED->FIN_WAIT1`, …, in kernel order.
pub fn lifecycle(events: &[Event], socket: SocketId) -> Vec<String> {
    let mut mine: Vec<&Event> = events.iter().filter(|event| event.socket == socket).collect();
    mine.sort_by_key(|event| event.ts_ns);
    mine.iter()
        .map(|event| match &event.body {
            EventBody::Connect(open) => format!("connect {}", open.state),
            EventBody::Accept(open) => format!("accept {}", open.state),
            EventBody::State(change) => format!("{}->{}", change.old_state, change.new_state),
        })
        .collect()
}

/// The lifecycle of the first socket `pid` opened or accepted (empty before there is one).
pub fn first_lifecycle(events: &[Event], pid: u32) -> Vec<String> {
    sockets_of(events, pid).first().map(|&socket| lifecycle(events, socket)).unwrap_or_default()
}

/// Whether `socket`'s life has ended (a transition to CLOSE was seen).
pub fn closed(events: &[Event], socket: SocketId) -> bool {
    events.iter().any(|event| {
        event.socket == socket
            && event.state_change().is_some_and(|change| change.new_state == leaktrace::tcp::TcpState::Close)
    })
}

/// The lifecycle of a client that closes first, its peer closing after.
pub const CLIENT_CLOSES_FIRST: &[&str] =
    &["connect SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"];
/// The lifecycle of an accepted socket whose peer closes first.
pub const ACCEPTED_PEER_CLOSES_FIRST: &[&str] =
    &["accept ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"];

/// Reads events from a tracer the test drives itself until `done` holds for them (or 10 s
/// pass), and returns them.
pub async fn events_until(tracer: &mut Tracer, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&events) && tokio::time::Instant::now() < deadline {
        tracer.next_batch(&mut events).await.unwrap();
    }
    events
}
