//! Nothing is lost silently: under 10,000 connections of churn every record the probes
//! produce is received or counted as lost, and at the default buffer size none is lost.
use std::{
    collections::HashSet,
    io::Read,
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use leaktrace::{
    event::{Event, EventBody},
    kernel::TracerOptions,
    tcp::TcpState,
};
use leaktrace_tests::{TraceSession, require_privileges};

const CONNECTIONS: usize = 10_000;
/// How far the client may run ahead of the server's accept(): well inside std's listen backlog
/// (128). A full accept queue drops the SYN and the kernel retries it only after a second: an
/// unbounded client made this test take 20-40 s, a second per overflow.
const MAX_AHEAD: usize = 64;

/// (connects to `port`, accepts on `port`, those connections whose close was seen). Closes are
/// matched by socket, not by port: at CLOSE the kernel may already have released the ports.
fn count(events: &[Event], port: u16) -> (usize, usize, usize) {
    let mut opened = HashSet::new();
    let (mut connects, mut accepts) = (0, 0);
    for event in events {
        match &event.body {
            EventBody::Connect(open) if open.remote.port() == port => {
                connects += 1;
                opened.insert(event.socket);
            }
            EventBody::Accept(open) if open.local.port() == port => {
                accepts += 1;
                opened.insert(event.socket);
            }
            _ => {}
        }
    }
    let closes = events
        .iter()
        .filter(|e| opened.contains(&e.socket) && e.state_change().is_some_and(|c| c.new_state == TcpState::Close))
        .count();
    (connects, accepts, closes)
}

/// The lifecycles of the connections to `port` whose close was not seen: the failure message.
fn unclosed_lifecycles(events: &[Event], port: u16) -> Vec<Vec<String>> {
    let opened: HashSet<_> = events
        .iter()
        .filter(|e| e.open().is_some_and(|o| o.remote.port() == port || o.local.port() == port))
        .map(|e| e.socket)
        .collect();
    opened
        .into_iter()
        .filter(|&socket| !leaktrace_tests::closed(events, socket))
        .map(|socket| leaktrace_tests::lifecycle(events, socket))
        .take(10)
        .collect()
}

#[test]
fn ten_thousand_connections_of_churn_lose_nothing() {
    let Some(_guard) = require_privileges("ten_thousand_connections_of_churn_lose_nothing") else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Default options: every process traced, default ring buffer.
    let session = TraceSession::start(TracerOptions::default());

    let started = std::time::Instant::now();
    // One permit per connection not yet accepted: the client takes one before connecting, the
    // server returns it after accepting.
    let (take_permit, return_permit) = std::sync::mpsc::sync_channel::<()>(MAX_AHEAD);
    let server = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut stream, _) = listener.accept().unwrap();
            return_permit.recv().unwrap();
            let mut rest = Vec::new();
            // Read to EOF: the client closes first, then the server.
            stream.read_to_end(&mut rest).unwrap();
        }
    });
    for _ in 0..CONNECTIONS {
        take_permit.send(()).unwrap();
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    server.join().unwrap();
    let churn_time = started.elapsed();

    let all_seen = session.wait_for(Duration::from_secs(60), |events| {
        count(events, port) == (CONNECTIONS, CONNECTIONS, 2 * CONNECTIONS)
    });
    let all_seen_after = started.elapsed();
    let done = session.stop();
    eprintln!(
        "{CONNECTIONS} connections in {churn_time:.2?}, all events received after {all_seen_after:.2?} \
         ({:.0} events/s): {:?}",
        done.counters.received as f64 / all_seen_after.as_secs_f64(),
        done.counters
    );
    assert_eq!(done.counters.produced, done.counters.received + done.counters.lost, "produced = received + lost");
    assert_eq!(done.counters.lost, 0, "no record lost at the default ring buffer size");
    assert_eq!(done.counters.undecodable, 0);
    assert_eq!(done.counters.socket_map_full, 0);
    assert_eq!(done.counters.transitions_missed, 0, "every transition seen by one of the two attachments");
    assert!(
        all_seen,
        "connect/accept/close counts for port {port}: {:?}; sockets never closed: {:#?}",
        count(&done.events, port),
        unclosed_lifecycles(&done.events, port)
    );
    assert_eq!(count(&done.events, port), (CONNECTIONS, CONNECTIONS, 2 * CONNECTIONS));
    assert_eq!(done.counters.received as usize, done.events.len());
}
