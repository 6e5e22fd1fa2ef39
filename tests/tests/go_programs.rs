//! The Go programs of the flagship incident do what the end-to-end tests and the demo claim,
//! checked without leaktrace's tracker: /proc shows the leak (a connection per message, all
//! kept), the fix (none kept) and the right design (exactly one); the kernel probes see the
//! dials with user stacks, and Go's frame pointers carry the application's frames up to the
//! connect when the dial runs on the application's goroutine.
use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use leaktrace::{
    event::{ConnOpen, Event, SocketId},
    kernel::TracerOptions,
};
use leaktrace_tests::{
    TraceSession, closed,
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages, go_functions, go_program},
    require_privileges,
    tcp_table::{established_on, established_to},
};

const MESSAGES: u64 = 20;
const WAIT: Duration = Duration::from_secs(10);

/// A server and a client of `mode` that has handled [`MESSAGES`] messages and stopped there.
fn after_messages(mode: ClientMode) -> (GoServer, GoClient) {
    let server = GoServer::grpc(GoBuild::Normal);
    let mut client =
        GoClient::start(GoBuild::Normal, mode, server.addr, Messages { per_second: 0, count: Some(MESSAGES) });
    client.wait_handled(MESSAGES);
    (server, client)
}

/// Polls `value` until it equals `expected` (a peer's close is asynchronous); returns the last
/// value seen, `expected` unless [`WAIT`] ran out.
fn settles_at(expected: usize, value: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = value();
        if now == expected || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn leak_holds_one_connection_per_message_and_so_does_the_server() {
    let (server, client) = after_messages(ClientMode::Leak);
    assert_eq!(established_to(client.pid(), server.port()), MESSAGES as usize, "client: {}", client.process.stderr());
    // Every message's health check went through its own connection: the server accepted them all.
    assert_eq!(established_on(server.pid(), server.port()), MESSAGES as usize);
}

#[test]
fn churn_closes_every_connection_it_dials() {
    let (server, client) = after_messages(ClientMode::Churn);
    // grpc-go closes gracefully: when the health check's stream is still being retired as
    // Close() returns, the socket closes a moment later, on grpc's reader goroutine. So the
    // last message's connection may still be open at "handled 20", and then goes.
    let client_holds = settles_at(0, || established_to(client.pid(), server.port()));
    assert_eq!(client_holds, 0, "client: {}", client.process.stderr());
    // The server closes its side once the client's FIN arrives.
    assert_eq!(settles_at(0, || established_on(server.pid(), server.port())), 0);
}

#[test]
fn shared_holds_exactly_one_connection() {
    let (server, client) = after_messages(ClientMode::Shared);
    assert_eq!(established_to(client.pid(), server.port()), 1, "client: {}", client.process.stderr());
    assert_eq!(established_on(server.pid(), server.port()), 1);
}

#[test]
fn leak_tcp_holds_one_connection_per_message() {
    let (server, client) = after_messages(ClientMode::LeakTcp);
    assert_eq!(established_to(client.pid(), server.port()), MESSAGES as usize, "client: {}", client.process.stderr());
}

/// Runs a leaking `mode` client of `build` for `messages` messages against a fresh server,
/// tracing the server's port. Returns the client's binary and its connect events once each
/// message's has been seen, having checked that none of its connections closed.
fn traced_connects(build: GoBuild, mode: ClientMode, messages: u64) -> (PathBuf, Vec<ConnOpen>) {
    let binary = go_program("grpcleak", build);
    let server = GoServer::grpc(build);
    let session = TraceSession::start(TracerOptions { ports: vec![server.port()], ..Default::default() });
    let mut client = GoClient::start(build, mode, server.addr, Messages { per_second: 0, count: Some(messages) });
    client.wait_handled(messages);
    let pid = client.pid();
    let connects_of_client = |events: &[Event]| -> Vec<(SocketId, ConnOpen)> {
        events
            .iter()
            .filter_map(|event| Some((event.socket, event.open()?.clone())))
            .filter(|(_, open)| open.owner.pid == pid && open.remote == server.addr)
            .collect()
    };
    session.expect(WAIT, &format!("{messages} connects of pid {pid}"), |events| {
        connects_of_client(events).len() == messages as usize
    });
    let done = session.stop();
    let connects = connects_of_client(&done.events);
    assert_eq!(connects.len(), messages as usize, "one connect per message");
    for (socket, _) in &connects {
        assert!(!closed(&done.events, *socket), "a {} connection was closed: {socket:?}", mode.flag());
    }
    (binary, connects.into_iter().map(|(_, open)| open).collect())
}

/// The Go function of each frame of `stack`, innermost first, by Go's own line table
/// (return addresses minus one past the innermost frame).
fn functions_of(binary: &Path, stack: &[u64]) -> Vec<String> {
    let addresses: Vec<u64> =
        stack.iter().enumerate().map(|(i, &address)| if i == 0 { address } else { address - 1 }).collect();
    go_functions(binary, &addresses)
}

/// The frames of `functions` in package main, in stack order.
fn application_frames(functions: &[String]) -> Vec<&str> {
    functions.iter().map(String::as_str).filter(|name| name.starts_with("main.")).collect()
}

/// What the stack at a `leak-tcp` connect holds in package main: its whole call path, caller
/// after caller.
const LEAK_TCP_PATH: &[&str] =
    &["main.dialTCP", "main.dialBackend", "main.handleMessage", "main.consume", "main.runClient", "main.main"];

#[test]
fn leak_tcp_connect_stack_holds_the_application_frames() {
    let Some(_guard) = require_privileges("leak_tcp_connect_stack_holds_the_application_frames") else { return };
    let (binary, connects) = traced_connects(GoBuild::Normal, ClientMode::LeakTcp, 3);
    for connect in &connects {
        assert_eq!(connect.owner.comm, "grpcleak");
        assert!(connect.stack_error.is_none(), "{connect:?}");
        let functions = functions_of(&binary, &connect.stack);
        // Go keeps frame pointers: the walk from the syscall stub reaches the goroutine's
        // first frame, through net's dialer and every application frame.
        assert_eq!(functions.first().map(String::as_str), Some("runtime/internal/syscall.Syscall6"), "{functions:#?}");
        assert_eq!(functions.last().map(String::as_str), Some("runtime.goexit"), "{functions:#?}");
        assert_eq!(application_frames(&functions), LEAK_TCP_PATH, "{functions:#?}");
    }
}

#[test]
fn grpc_dials_on_its_own_goroutine_so_the_connect_stack_has_no_application_frame() {
    let Some(_guard) =
        require_privileges("grpc_dials_on_its_own_goroutine_so_the_connect_stack_has_no_application_frame")
    else {
        return;
    };
    let (binary, connects) = traced_connects(GoBuild::Normal, ClientMode::Leak, 3);
    for connect in &connects {
        assert!(!connect.stack.is_empty(), "{connect:?}");
        let functions = functions_of(&binary, &connect.stack);
        // The whole goroutine is walked (down to runtime.goexit), yet it starts in grpc-go:
        // main.handleMessage is on the goroutine that spawned it. Finding the call site needs
        // goroutine ancestry (design.md, "Go and other runtimes").
        assert_eq!(application_frames(&functions), Vec::<&str>::new(), "{functions:#?}");
        assert!(functions.iter().any(|f| f == "google.golang.org/grpc.(*addrConn).resetTransport"), "{functions:#?}");
        let goroutine_start = &functions[functions.len() - 2];
        assert_eq!(functions.last().map(String::as_str), Some("runtime.goexit"), "{functions:#?}");
        assert!(goroutine_start.starts_with("google.golang.org/grpc."), "{functions:#?}");
    }
}

/// Whether `nm` finds a symbol table in `binary`.
fn has_symbol_table(binary: &Path) -> bool {
    let output = Command::new("nm").arg(binary).output().expect("nm (binutils)");
    output.status.success() && !output.stdout.is_empty()
}

#[test]
fn normal_and_stripped_builds_both_produce_connect_events_with_stacks() {
    let Some(_guard) = require_privileges("normal_and_stripped_builds_both_produce_connect_events_with_stacks") else {
        return;
    };
    for build in [GoBuild::Normal, GoBuild::Stripped] {
        let (binary, connects) = traced_connects(build, ClientMode::LeakTcp, 3);
        assert_eq!(has_symbol_table(&binary), build == GoBuild::Normal, "{}", binary.display());
        for connect in &connects {
            assert!(!connect.stack.is_empty() && connect.stack_error.is_none(), "{build:?}: {connect:?}");
            // Stripping removes .symtab and DWARF but not Go's own line table (.gopclntab),
            // which still names every frame.
            assert_eq!(application_frames(&functions_of(&binary, &connect.stack)), LEAK_TCP_PATH, "{build:?}");
        }
    }
}
