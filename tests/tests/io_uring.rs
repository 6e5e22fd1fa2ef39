//! Servers and clients that accept and connect through io_uring (`IORING_OP_ACCEPT`,
//! `IORING_OP_CONNECT`), never through accept(2) or connect(2), traced by the real `leaktrace`
//! binary: a server leaking its accepted sockets is a `leak` named by the function that
//! submitted its accepts (single-shot and multishot requests, and accepts done by io-wq
//! workers; a SQPOLL thread's have no stack but the server's name), and so is a client leaking
//! its io_uring connects (done by io-wq workers too); a server closing what it accepts is
//! `churn`; an accept submitted before leaktrace started is attributed too; and the kernel's
//! accounting stays exact, with nothing taken for a connection that closed before anybody
//! accepted it.
use std::{
    io::Read,
    net::TcpStream,
    thread,
    time::Duration,
};

use leaktrace_tests::{
    cli::{LiveTrace, site_of, sites_of},
    require_privileges, tcp_table,
    uring::{AcceptRequests, Keep, UringPuppet},
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(45);
/// Connections per test, 10 a second: over the 3 distinct seconds a leak verdict wants.
const CONNECTIONS: u32 = 30;
const INTERVAL_MS: u32 = 100;

/// The functions a call site's frames name, innermost first.
fn functions(site: &Value) -> Vec<&str> {
    site["frames"].as_array().map(|frames| frames.iter().filter_map(|f| f["function"].as_str()).collect()).unwrap_or_default()
}

fn is_leak_of(site: Option<&Value>, live: u32) -> bool {
    site.is_some_and(|site| site["live"] == live && site["verdict"] == "leak")
}

/// The kernel's accounting of a final report: every record produced was received, none lost,
/// and no io_uring accept was taken for a connection closed before anybody accepted it.
#[track_caller]
fn assert_exact_accounting(report: &Value) {
    let events = &report["events"];
    let count = |name: &str| events[name].as_u64().unwrap_or_else(|| panic!("events.{name} in {events:#}"));
    assert_eq!(count("produced"), count("received") + count("lost"), "produced = received + lost: {events:#}");
    assert_eq!(count("lost"), 0, "{events:#}");
    assert_eq!(count("undecodable"), 0, "{events:#}");
    assert_eq!(count("closed_before_accept"), 0, "every io_uring accept was attributed: {events:#}");
}

/// A server leaking what it accepts (through `requests`) and a client leaking what it connects,
/// both through io_uring (the client's connects in io-wq workers too where the accepts are),
/// traced from before the server's first accept.
fn leaking_server_and_client(requests: AcceptRequests) {
    let (mut server, port) = UringPuppet::serve(Keep::Leak, requests, CONNECTIONS);
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    server.start();
    let mut client = UringPuppet::connect(port, CONNECTIONS, INTERVAL_MS, matches!(requests, AcceptRequests::Async));
    let (server_pid, client_pid) = (server.pid(), client.pid());
    client.wait_done();
    server.wait_done();
    let report = trace.wait_for("the io_uring server's and client's leaks", PATIENCE, |report| {
        is_leak_of(site_of(report, server_pid, "accept"), CONNECTIONS)
            && is_leak_of(site_of(report, client_pid, "connect"), CONNECTIONS)
    });

    let accepted = site_of(&report, server_pid, "accept").unwrap();
    assert_eq!(sites_of(&report, server_pid).len(), 1, "one call site submits every accept: {:#}", report["call_sites"]);
    assert_eq!(accepted["live"], tcp_table::established_on(server_pid, port) as u64, "live = what the server holds: {accepted:#}");
    assert_eq!((accepted["opened"].as_u64(), accepted["closed"].as_u64()), (Some(CONNECTIONS.into()), Some(0)), "{accepted:#}");
    assert!(functions(accepted).contains(&"submit_accept"), "named by the function that submitted the accepts: {accepted:#}");
    assert_eq!(accepted["comm"], "uringpuppet");

    let connected = site_of(&report, client_pid, "connect").unwrap();
    assert_eq!(connected["live"], tcp_table::established_to(client_pid, port) as u64, "{connected:#}");
    assert!(functions(connected).contains(&"dial_backend"), "named by the function that submitted the connects: {connected:#}");
    assert_eq!(connected["comm"], "uringpuppet", "the process's name, not an io-wq worker's: {connected:#}");

    let (last, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "leaks found: exit 1; stderr:\n{stderr}");
    assert!(stderr.contains("io_uring_complete"), "the io_uring probes are attached and logged: {stderr}");
    assert_exact_accounting(&last);
}

#[test]
fn an_io_uring_server_leaking_single_shot_accepts_is_a_leak() {
    let Some(_guard) = require_privileges("an_io_uring_server_leaking_single_shot_accepts_is_a_leak") else { return };
    leaking_server_and_client(AcceptRequests::Single);
}

#[test]
fn an_io_uring_server_leaking_multishot_accepts_is_a_leak() {
    let Some(_guard) = require_privileges("an_io_uring_server_leaking_multishot_accepts_is_a_leak") else { return };
    leaking_server_and_client(AcceptRequests::Multishot);
}

/// Each accept runs, and completes, in an io-wq worker thread of the server, and each connect
/// in one of the client's: the connections are still the processes', at the functions that
/// submitted the requests.
#[test]
fn io_uring_accepts_and_connects_done_by_io_wq_workers_are_leaks() {
    let Some(_guard) = require_privileges("io_uring_accepts_and_connects_done_by_io_wq_workers_are_leaks") else { return };
    leaking_server_and_client(AcceptRequests::Async);
}

/// The ring's SQPOLL thread submits the accepts: no user code runs there, so there is no stack,
/// but the connections are the server's, under its own name.
#[test]
fn accepts_submitted_by_a_sqpoll_thread_are_the_servers() {
    let Some(_guard) = require_privileges("accepts_submitted_by_a_sqpoll_thread_are_the_servers") else { return };
    let (mut server, port) = UringPuppet::serve(Keep::Leak, AcceptRequests::Sqpoll, CONNECTIONS);
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    server.start();
    let mut client = UringPuppet::connect(port, CONNECTIONS, INTERVAL_MS, false);
    let server_pid = server.pid();
    client.wait_done();
    server.wait_done();
    let report = trace.wait_for("the SQPOLL server's leak", PATIENCE, |report| {
        is_leak_of(site_of(report, server_pid, "accept"), CONNECTIONS)
    });
    let site = site_of(&report, server_pid, "accept").unwrap();
    assert_eq!(site["comm"], "uringpuppet", "the process's name, not its SQPOLL thread's: {site:#}");
    assert_eq!(site["frames"], serde_json::json!([]), "no stack is made up: {site:#}");
    assert_eq!(site["live"], tcp_table::established_on(server_pid, port) as u64, "{site:#}");
    let (last, _, _) = trace.interrupt();
    assert_exact_accounting(&last);
}

#[test]
fn an_io_uring_server_closing_what_it_accepts_is_churn() {
    let Some(_guard) = require_privileges("an_io_uring_server_closing_what_it_accepts_is_churn") else { return };
    let (mut server, port) = UringPuppet::serve(Keep::Close, AcceptRequests::Single, CONNECTIONS);
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    server.start();
    let server_pid = server.pid();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The server closes first: its EOF ends the read.
        stream.read_to_end(&mut Vec::new()).unwrap();
        thread::sleep(Duration::from_millis(INTERVAL_MS.into()));
    }
    server.wait_done();
    let report = trace.wait_for("the io_uring server's churn", PATIENCE, |report| {
        site_of(report, server_pid, "accept").is_some_and(|site| site["closed"] == CONNECTIONS && site["verdict"] == "churn")
    });
    let site = site_of(&report, server_pid, "accept").unwrap();
    assert_eq!((site["opened"].as_u64(), site["live"].as_u64()), (Some(CONNECTIONS.into()), Some(0)), "{site:#}");
    assert!(functions(site).contains(&"submit_accept"), "{site:#}");
    let (last, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(0), "no leak anywhere; stderr:\n{stderr}");
    assert_eq!(site_of(&last, server_pid, "accept").unwrap()["verdict"], "churn");
    assert_exact_accounting(&last);
}

/// The server's first accept request is in flight before the probes are attached, so its
/// submission was never seen: its completion alone attributes that connection to the server.
#[test]
fn an_io_uring_accept_submitted_before_leaktrace_started_is_attributed() {
    let Some(_guard) = require_privileges("an_io_uring_accept_submitted_before_leaktrace_started_is_attributed") else { return };
    let (mut server, port) = UringPuppet::serve(Keep::Leak, AcceptRequests::Single, CONNECTIONS);
    server.start();
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    let mut client = UringPuppet::connect(port, CONNECTIONS, INTERVAL_MS, false);
    let server_pid = server.pid();
    client.wait_done();
    server.wait_done();
    let live = |report: &Value| -> u64 {
        sites_of(report, server_pid).iter().filter(|site| site["direction"] == "accept").filter_map(|site| site["live"].as_u64()).sum()
    };
    let report = trace.wait_for("every accepted connection attributed to the server", PATIENCE, |report| {
        live(report) == u64::from(CONNECTIONS)
    });
    let sites = sites_of(&report, server_pid);
    assert!(sites.iter().all(|site| site["direction"] == "accept" && site["born_before_start"] == false), "{sites:#?}");
    // The first from its completion (the server waiting for it), the others from their submissions.
    let from_submission = sites.iter().find(|site| functions(site).contains(&"submit_accept")).expect("submitted accepts");
    assert_eq!(from_submission["live"], CONNECTIONS - 1, "{sites:#?}");
    let (last, _, _) = trace.interrupt();
    assert_exact_accounting(&last);
}
