//! What the benchmarks read from the kernel about the probes: per-program run time and count
//! (with BPF run-time statistics on), each map's memory, and the sockets tracked, against a
//! connection the test holds open and then closes.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
};

use leaktrace::kernel::{RunTimeStats, Tracer, TracerOptions};
use leaktrace_tests::{events_until, require_privileges};

#[test]
fn run_time_map_memory_and_tracked_sockets_follow_a_connection() {
    let Some(_guard) = require_privileges("run_time_map_memory_and_tracked_sockets_follow_a_connection") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let options = TracerOptions { ports: vec![port], max_sockets: 4096, ..Default::default() };
        let mut tracer = Tracer::start(options).unwrap();
        let _stats = RunTimeStats::enable().unwrap();
        assert_eq!(tracer.tracked_sockets().unwrap(), 0, "only this test's port is traced");

        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let opened = events_until(&mut tracer, |events| events.iter().filter(|e| e.open().is_some()).count() == 2).await;
        assert_eq!(opened.iter().filter(|e| e.open().is_some()).count(), 2, "{opened:#?}");
        assert_eq!(tracer.tracked_sockets().unwrap(), 2, "both ends of the live connection");

        let programs = tracer.program_stats().unwrap();
        let runs = |name: &str| programs.iter().find(|p| p.program == name).map_or(0, |p| p.run_count);
        // Each state program runs for every transition (this connection's four at least: two
        // births, two establishments); the accept probe for its accept.
        assert!(runs("inet_sock_set_state_btf") >= 4, "{programs:#?}");
        assert!(runs("sys_exit_accept4") >= 1, "{programs:#?}");
        assert!(programs.iter().filter(|p| p.run_count > 0).all(|p| p.run_time_ns > 0), "{programs:#?}");

        let maps = tracer.map_memory().unwrap();
        let map = |name: &str| maps.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no map {name}: {maps:#?}"));
        assert_eq!(map("SOCKETS").max_entries, 4096);
        assert!(map("SOCKETS").memlock_bytes >= 4096 * 24, "at least its values: {maps:#?}");
        assert!(map("EVENTS").memlock_bytes >= 8 << 20, "the 8 MiB ring buffer: {maps:#?}");

        drop(client);
        server.read_to_end(&mut Vec::new()).unwrap();
        drop(server);
        let closed = events_until(&mut tracer, |events| {
            events.iter().filter(|e| e.state_change().is_some_and(|c| c.new_state == leaktrace::tcp::TcpState::Close)).count()
                == 2
        })
        .await;
        assert!(!closed.is_empty());
        assert_eq!(tracer.tracked_sockets().unwrap(), 0, "a closed socket leaves the map");
    });
}
