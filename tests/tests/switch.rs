//! The probes' runtime switch: paused while attached, they report nothing and count nothing;
//! resumed, they report the next connection in full. Flipped on the live tracer, not at load.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
};

use leaktrace::{
    event::{Event, EventBody},
    kernel::{Tracer, TracerOptions},
};
use leaktrace_tests::{events_until, require_privileges};

/// Connects to `listener`, accepts, and closes both ends, client first.
fn one_connection(listener: &TcpListener) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    drop(client);
    server.read_to_end(&mut Vec::new()).unwrap();
}

fn opens(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e.body, EventBody::Connect(_) | EventBody::Accept(_))).count()
}

#[test]
fn paused_probes_report_nothing_and_resumed_ones_report_everything() {
    let Some(_guard) = require_privileges("paused_probes_report_nothing_and_resumed_ones_report_everything") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut tracer = Tracer::start(TracerOptions { ports: vec![port], ..Default::default() }).unwrap();
        assert!(tracer.probes_enabled().unwrap(), "a fresh load runs");

        tracer.set_probes_enabled(false).unwrap();
        assert!(!tracer.probes_enabled().unwrap());
        one_connection(&listener);
        let mut paused = Vec::new();
        tracer.drain_now(&mut paused);
        assert_eq!(paused, [], "nothing is reported while paused");
        assert_eq!(tracer.counters().unwrap().produced, 0, "nor counted");

        tracer.set_probes_enabled(true).unwrap();
        one_connection(&listener);
        // connect, accept, and the transitions of both ends: client 4, server 3.
        let resumed = events_until(&mut tracer, |events| events.len() >= 9).await;
        let mut rest = Vec::new();
        let counters = tracer.finish(&mut rest).unwrap();
        assert_eq!(opens(&resumed), 2, "the connect and the accept of the connection made after resuming: {resumed:#?}");
        assert_eq!(resumed.len() + rest.len(), 9, "{resumed:#?} {rest:#?}");
        assert_eq!(counters.produced, 9);
        assert_eq!(counters.transitions_missed, 0, "the paused connection left no half-tracked socket");
    });
}
