//! Each TCP lifecycle, driven with real processes over loopback, must come out of the real
//! probes as the exact sequence of events, attributed to the process that opened (connect) or
//! accepted the socket.
use std::time::Duration;

use leaktrace::{
    event::{ConnOpen, Event, SocketId},
    kernel::{StateHook, TracerOptions, Transitions},
};
use leaktrace_tests::{
    ACCEPTED_PEER_CLOSES_FIRST, CLIENT_CLOSES_FIRST, Finished, Puppet, TraceSession, closed, first_lifecycle, lifecycle,
    require_privileges, sockets_of,
};

const WAIT: Duration = Duration::from_secs(10);

/// Traces only `port`, so other tests' and the host's traffic stays out.
fn session_for(port: u16) -> TraceSession {
    TraceSession::start(TracerOptions { ports: vec![port], ..Default::default() })
}

/// The one socket `pid` opened or accepted, waiting for its close.
#[track_caller]
fn only_socket(session: &TraceSession, pid: u32) -> SocketId {
    session.expect(WAIT, &format!("a closed socket of pid {pid}"), |events| {
        sockets_of(events, pid).len() == 1 && closed(events, sockets_of(events, pid)[0])
    });
    sockets_of(&session.events(), pid)[0]
}

#[track_caller]
fn assert_lifecycle(events: &[Event], socket: SocketId, expected: &[&str]) {
    assert_eq!(lifecycle(events, socket), expected, "events of {socket:?}");
}

/// A server and a client sockpuppet with one connection between them, traced on the server's
/// port (so other tests' and the host's traffic stays out).
struct Connection {
    session: TraceSession,
    server: Puppet,
    client: Puppet,
    client_fd: u32,
    server_fd: u32,
    port: u16,
}

impl Connection {
    #[track_caller]
    fn open(listen_host: &str, connect_host: &str, state_hook: StateHook) -> Self {
        Self::open_with(listen_host, connect_host, TracerOptions { state_hook, ..Default::default() })
    }

    /// As [`open`](Self::open), traced with `options` (their ports replaced by the server's).
    #[track_caller]
    fn open_with(listen_host: &str, connect_host: &str, options: TracerOptions) -> Self {
        let mut server = Puppet::spawn();
        let mut client = Puppet::spawn();
        let (listener, port) = server.listen(listen_host);
        let session = TraceSession::start(TracerOptions { ports: vec![port], ..options });
        let client_fd = client.connect(connect_host, port);
        let server_fd = server.accept(listener);
        Self { session, server, client, client_fd, server_fd, port }
    }

    /// The client closes; once its FIN has reached the server, the server closes too.
    #[track_caller]
    fn client_closes_then_server(&mut self) {
        self.client.close(self.client_fd);
        self.server_closes_after_fin();
    }

    /// Waits until the server's socket has seen the peer's FIN, then closes it.
    #[track_caller]
    fn server_closes_after_fin(&mut self) {
        let server = self.server.pid();
        self.session.expect(WAIT, "the server to see the client's FIN", |events| first_lifecycle(events, server).len() == 2);
        self.server.close(self.server_fd);
    }

    /// Waits for both sockets to close, stops tracing: (everything seen, client's socket,
    /// server's socket).
    #[track_caller]
    fn finish(self) -> (Finished, SocketId, SocketId) {
        let client_socket = only_socket(&self.session, self.client.pid());
        let server_socket = only_socket(&self.session, self.server.pid());
        (self.session.stop(), client_socket, server_socket)
    }
}

/// The socket's `connect` or `accept` event.
fn open_of(events: &[Event], socket: SocketId) -> ConnOpen {
    events.iter().find(|e| e.socket == socket).and_then(Event::open).expect("an open event").clone()
}

#[test]
fn client_closes_first_then_server_closes() {
    let Some(_guard) = require_privileges("client_closes_first_then_server_closes") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    // The server closes once the client's FIN reached it: the textbook order.
    connection.client_closes_then_server();
    let (client_pid, server_pid, port) = (connection.client.pid(), connection.server.pid(), connection.port);
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(&done.events, client_socket, CLIENT_CLOSES_FIRST);
    assert_lifecycle(&done.events, server_socket, ACCEPTED_PEER_CLOSES_FIRST);

    let connect = open_of(&done.events, client_socket);
    assert_eq!(connect.owner.pid, client_pid);
    assert_eq!(connect.owner.comm, "sockpuppet");
    assert!(connect.owner.process_start_ns > 0);
    assert_eq!(connect.remote, format!("127.0.0.1:{port}").parse().unwrap());
    assert!(!connect.stack.is_empty(), "a user stack is taken at connect");
    let accept = open_of(&done.events, server_socket);
    assert_eq!(accept.owner.pid, server_pid, "the acceptor owns the passive socket, not the client");
    assert_eq!(accept.local, format!("127.0.0.1:{port}").parse().unwrap());
    // The client's local port is assigned after SYN_SENT: its ESTABLISHED transition has it.
    // (At FIN_WAIT2 -> CLOSE it reads 0 again: the time-wait socket has taken the port over.)
    let established = done.events.iter().filter(|e| e.socket == client_socket).nth(1).unwrap().state_change().unwrap().clone();
    assert_eq!(accept.remote, established.local);
    assert_eq!(done.counters.lost, 0);
    assert!(done.counters.balanced(), "{:?}", done.counters);
}

/// The live view's setting: only the transitions the tracker uses cross to userspace, while the
/// kernel still follows every one (none reads as missed, the close is still seen).
#[test]
fn essential_transitions_send_only_what_the_tracker_uses() {
    let Some(_guard) = require_privileges("essential_transitions_send_only_what_the_tracker_uses") else { return };
    let options = TracerOptions { transitions: Transitions::Essential, ..Default::default() };
    let mut connection = Connection::open_with("127.0.0.1", "127.0.0.1", options);
    connection.client_closes_then_server();
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(&done.events, client_socket, &["connect SYN_SENT", "SYN_SENT->ESTABLISHED", "FIN_WAIT2->CLOSE"]);
    assert_lifecycle(&done.events, server_socket, &["accept ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "LAST_ACK->CLOSE"]);
    assert_eq!(done.counters.transitions_missed, 0, "{:?}", done.counters);
    assert!(done.counters.balanced(), "{:?}", done.counters);
}

#[test]
fn peer_closes_first_leaves_close_wait_until_the_app_closes() {
    let Some(_guard) = require_privileges("peer_closes_first_leaves_close_wait_until_the_app_closes") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    connection.server.close(connection.server_fd);
    let client_pid = connection.client.pid();
    connection.session.expect(WAIT, "the client's CLOSE_WAIT", |events| {
        first_lifecycle(events, client_pid).last().is_some_and(|l| l == "ESTABLISHED->CLOSE_WAIT")
    });
    connection.client.close(connection.client_fd);
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(
        &done.events,
        client_socket,
        &["connect SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK", "LAST_ACK->CLOSE"],
    );
    assert_lifecycle(
        &done.events,
        server_socket,
        &["accept ESTABLISHED", "ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"],
    );
}

#[test]
fn refused_connect_is_a_failure_not_a_leak() {
    let Some(_guard) = require_privileges("refused_connect_is_a_failure_not_a_leak") else { return };
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let session = session_for(port);
    let mut client = Puppet::spawn();
    assert_eq!(client.try_cmd(&format!("connect 127.0.0.1 {port}")), Err("111".into()), "ECONNREFUSED");
    let socket = only_socket(&session, client.pid());
    let done = session.stop();
    assert_lifecycle(&done.events, socket, &["connect SYN_SENT", "SYN_SENT->CLOSE"]);
}

#[test]
fn rst_close_with_linger_zero_ends_both_sides_at_once() {
    let Some(_guard) = require_privileges("rst_close_with_linger_zero_ends_both_sides_at_once") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    let fd = connection.client_fd;
    connection.client.cmd(&format!("linger0 {fd}"));
    connection.client.close(fd);
    // The RST ended the server's socket too, before its owner closes it.
    let server_socket = only_socket(&connection.session, connection.server.pid());
    connection.server.close(connection.server_fd);
    let (done, client_socket, server_socket_again) = connection.finish();
    assert_eq!(server_socket, server_socket_again);
    assert_lifecycle(&done.events, client_socket, &["connect SYN_SENT", "SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE"]);
    assert_lifecycle(&done.events, server_socket, &["accept ESTABLISHED", "ESTABLISHED->CLOSE"]);
}

#[test]
fn ipv6_connections_are_traced() {
    let Some(_guard) = require_privileges("ipv6_connections_are_traced") else { return };
    let mut connection = Connection::open("::1", "::1", StateHook::Auto);
    connection.client_closes_then_server();
    let port = connection.port;
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(&done.events, client_socket, CLIENT_CLOSES_FIRST);
    assert_lifecycle(&done.events, server_socket, ACCEPTED_PEER_CLOSES_FIRST);
    let accept = open_of(&done.events, server_socket);
    assert_eq!(accept.local, format!("[::1]:{port}").parse().unwrap());
    assert!(accept.remote.is_ipv6());
}

#[test]
fn ipv4_client_on_a_dual_stack_listener_reads_as_ipv4() {
    let Some(_guard) = require_privileges("ipv4_client_on_a_dual_stack_listener_reads_as_ipv4") else { return };
    let mut connection = Connection::open("::", "127.0.0.1", StateHook::Auto);
    connection.client_closes_then_server();
    let port = connection.port;
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(&done.events, server_socket, ACCEPTED_PEER_CLOSES_FIRST);
    let accept = open_of(&done.events, server_socket);
    assert_eq!(accept.local, format!("127.0.0.1:{port}").parse().unwrap(), "::ffff:127.0.0.1 is normalised");
    assert_eq!(accept.remote.ip().to_string(), "127.0.0.1");
    assert_lifecycle(&done.events, client_socket, CLIENT_CLOSES_FIRST);
}

/// The kernel closes the sockets of a process that exits (or is killed) with them open; the
/// transitions still fire and end the lifetime.
fn exit_with_socket_open(kill: bool) {
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    if kill { connection.client.kill() } else { connection.client.exit() }
    connection.server_closes_after_fin();
    let (done, client_socket, _) = connection.finish();
    assert_lifecycle(&done.events, client_socket, CLIENT_CLOSES_FIRST);
}

#[test]
fn process_exit_with_a_socket_open_still_ends_it() {
    let Some(_guard) = require_privileges("process_exit_with_a_socket_open_still_ends_it") else { return };
    exit_with_socket_open(false);
}

#[test]
fn sigkill_with_a_socket_open_still_ends_it() {
    let Some(_guard) = require_privileges("sigkill_with_a_socket_open_still_ends_it") else { return };
    exit_with_socket_open(true);
}

#[test]
fn fork_child_closing_last_ends_the_parents_socket() {
    let Some(_guard) = require_privileges("fork_child_closing_last_ends_the_parents_socket") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    let (parent, fd) = (&mut connection.client, connection.client_fd);
    let child = parent.cmd(&format!("fork-hold {fd}"));
    let child = child.strip_prefix("pid ").expect("pid N").to_string();
    parent.close(fd);
    // The child still holds the socket: the parent's close() ended nothing.
    std::thread::sleep(Duration::from_millis(200));
    let parent_pid = parent.pid();
    assert_eq!(first_lifecycle(&connection.session.events(), parent_pid), ["connect SYN_SENT", "SYN_SENT->ESTABLISHED"]);
    parent.cmd(&format!("release {child}"));
    connection.server_closes_after_fin();
    let (done, socket, _) = connection.finish();
    assert_lifecycle(&done.events, socket, CLIENT_CLOSES_FIRST);
    assert_eq!(open_of(&done.events, socket).owner.pid, parent_pid);
    assert_eq!(sockets_of(&done.events, child.parse().unwrap()), [], "the child opened nothing");
}

#[test]
fn socket_passed_over_scm_rights_keeps_its_birth_owner() {
    let Some(_guard) = require_privileges("socket_passed_over_scm_rights_keeps_its_birth_owner") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    let mut receiver = Puppet::spawn();
    let (opener, fd) = (&mut connection.client, connection.client_fd);
    let path = format!("/tmp/leaktrace-scm-{}.sock", std::process::id());
    receiver.cmd(&format!("unix-listen {path}"));
    opener.cmd(&format!("send-fd {path} {fd}"));
    let received = receiver.cmd("recv-fd");
    let received: u32 = received.strip_prefix("fd ").unwrap().parse().unwrap();
    opener.close(fd);
    receiver.close(received);
    let _ = std::fs::remove_file(&path);
    let opener_pid = opener.pid();
    connection.server_closes_after_fin();
    let (done, socket, _) = connection.finish();
    assert_lifecycle(&done.events, socket, CLIENT_CLOSES_FIRST);
    assert_eq!(open_of(&done.events, socket).owner.pid, opener_pid);
    assert_eq!(sockets_of(&done.events, receiver.pid()), [], "the receiver did not open it");
}

#[test]
fn classic_tracepoint_fallback_sees_the_same_lifecycle() {
    let Some(_guard) = require_privileges("classic_tracepoint_fallback_sees_the_same_lifecycle") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Classic);
    let hooks: Vec<&str> = connection.session.hooks().iter().map(|h| h.hook.as_str()).collect();
    assert_eq!(hooks[0], "tracepoint/sock/inet_sock_set_state");
    assert!(!hooks.contains(&"tp_btf/inet_sock_set_state"));
    connection.client_closes_then_server();
    let (done, client_socket, server_socket) = connection.finish();
    assert_lifecycle(&done.events, client_socket, CLIENT_CLOSES_FIRST);
    assert_lifecycle(&done.events, server_socket, ACCEPTED_PEER_CLOSES_FIRST);
}

#[test]
fn btf_hook_is_preferred_and_takes_socket_cookies() {
    let Some(_guard) = require_privileges("btf_hook_is_preferred_and_takes_socket_cookies") else { return };
    let mut connection = Connection::open("127.0.0.1", "127.0.0.1", StateHook::Auto);
    let hooks: Vec<&str> = connection.session.hooks().iter().map(|h| h.hook.as_str()).collect();
    // Two tp_btf programs: the kernel's guard against a program nested in itself is per
    // program, so each covers the runs it skips for the other.
    assert_eq!(
        hooks[..3],
        ["tp_btf/inet_sock_set_state", "tp_btf/inet_sock_set_state", "tracepoint/syscalls/sys_exit_accept4"]
    );
    connection.client_closes_then_server();
    let (done, client_socket, server_socket) = connection.finish();
    // Both tp_btf programs take the cookie, on the socket's first event.
    let cookie = |socket| done.events.iter().filter(|e| e.socket == socket).map(|e| e.cookie).max().unwrap();
    assert_ne!(cookie(client_socket), 0);
    assert_ne!(cookie(server_socket), 0);
    assert_ne!(cookie(client_socket), cookie(server_socket));
}

#[test]
fn pid_filter_reports_only_that_process() {
    let Some(_guard) = require_privileges("pid_filter_reports_only_that_process") else { return };
    let mut server = Puppet::spawn();
    let mut client = Puppet::spawn();
    let mut other = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let session = TraceSession::start(TracerOptions { pids: vec![client.pid()], ..Default::default() });
    let fd = client.connect("127.0.0.1", port);
    let other_fd = other.connect("127.0.0.1", port);
    let first = server.accept(listener);
    let second = server.accept(listener);
    client.cmd(&format!("linger0 {fd}"));
    client.close(fd);
    other.close(other_fd);
    server.close(first);
    server.close(second);
    only_socket(&session, client.pid());
    let done = session.stop();
    assert_eq!(sockets_of(&done.events, client.pid()).len(), 1);
    assert_eq!(sockets_of(&done.events, other.pid()), []);
    assert_eq!(sockets_of(&done.events, server.pid()), [], "the acceptor is not in --pid");
}
