//! The leak tracker end to end, as a user runs it: the real `leaktrace` binary tracing real
//! programs on the real kernel, read through its JSON reports. The flagship incident (a Go
//! gRPC client dialing per message and never closing) must come out `leak` within seconds,
//! its fix `churn`, the right design and a small pool `ok`; a burst of connections held open
//! without data `suspect`, the same burst used as a pool `ok`; a server that never closes after
//! the peer hangs up leaks in CLOSE_WAIT; connections older than leaktrace are seeded; and a
//! replay of the recording gives the live run's report.
use std::time::Duration;

use leaktrace_tests::{
    Puppet,
    cli::{LiveTrace, replay, site_of, sites_of},
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(45);

fn verdict(site: Option<&Value>) -> &str {
    site.and_then(|site| site["verdict"].as_str()).unwrap_or("(no call site)")
}

#[test]
fn a_grpc_client_dialing_per_message_is_a_leak_within_seconds() {
    let Some(_guard) = require_privileges("a_grpc_client_dialing_per_message_is_a_leak_within_seconds") else { return };
    let server = GoServer::grpc(GoBuild::Normal);
    let port = server.port().to_string();
    // The verdict rules on one call site: goroutine ancestry (which splits off the connections
    // dialed before it attached) is tested in go_ancestry.rs.
    let mut trace = LiveTrace::start(&["--port", &port, "--go-ancestry", "off"]);
    let mut client = GoClient::start(GoBuild::Normal, ClientMode::Leak, server.addr, Messages { per_second: 20, count: Some(80) });
    let pid = client.pid();
    let report = trace.wait_for("the gRPC client's leak", PATIENCE, |report| verdict(site_of(report, pid, "connect")) == "leak");
    let site = site_of(&report, pid, "connect").unwrap();
    assert!(site["live"].as_u64().unwrap() >= 10, "{site:#}");
    assert_eq!(site["closed"], 0, "{site:#}");
    assert!(site["frames"].as_array().is_some_and(|frames| !frames.is_empty()), "a call site has its stack: {site:#}");
    let first_leak_at = report["duration_s"].as_f64().unwrap();

    client.wait_handled(80);
    let report = trace.wait_for("all 80 connections live", PATIENCE, |report| {
        site_of(report, pid, "connect").is_some_and(|site| site["live"] == 80)
    });
    let site = site_of(&report, pid, "connect").unwrap();
    assert_eq!((site["opened"].as_u64(), site["closed"].as_u64()), (Some(80), Some(0)), "{site:#}");
    assert_eq!(site["verdict"], "leak");
    assert_eq!(site["destinations"][0]["address"], server.addr.to_string());
    let (last, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "leaks found: exit 1; stderr:\n{stderr}");
    assert_eq!(verdict(site_of(&last, pid, "connect")), "leak");
    assert_eq!(last["events"]["lost"], 0);
    eprintln!("leak verdict {first_leak_at:.1}s after leaktrace started");
}

#[test]
fn the_same_client_closing_each_connection_is_churn() {
    let Some(_guard) = require_privileges("the_same_client_closing_each_connection_is_churn") else { return };
    let server = GoServer::grpc(GoBuild::Normal);
    let port = server.port().to_string();
    let mut trace = LiveTrace::start(&["--port", &port, "--go-ancestry", "off"]);
    let mut client = GoClient::start(GoBuild::Normal, ClientMode::Churn, server.addr, Messages { per_second: 20, count: Some(60) });
    let pid = client.pid();
    client.wait_handled(60);
    let report = trace.wait_for("churn with every connection closed", PATIENCE, |report| {
        site_of(report, pid, "connect").is_some_and(|site| site["closed"] == 60 && site["verdict"] == "churn")
    });
    let site = site_of(&report, pid, "connect").unwrap();
    assert_eq!((site["opened"].as_u64(), site["live"].as_u64()), (Some(60), Some(0)), "{site:#}");
    assert!(site["lifetime_s"]["p50_s"].as_f64().unwrap() < 1.0, "{site:#}");
    // The lifetime histogram: every closed connection counted once, most under a second.
    let histogram: Vec<u64> = site["lifetime_s"]["histogram"].as_array().unwrap().iter().map(|count| count.as_u64().unwrap()).collect();
    assert_eq!((histogram.len(), histogram.iter().sum::<u64>()), (9, 60), "{site:#}");
    assert!(histogram[..4].iter().sum::<u64>() >= 30, "the median is under a second: {site:#}");
    let (last, status, _) = trace.interrupt();
    assert_eq!(verdict(site_of(&last, pid, "connect")), "churn");
    // The server's accepted side closes as the client does: no leak anywhere.
    assert_eq!(status.code(), Some(0), "{last:#}");
}

#[test]
fn one_shared_connection_is_ok() {
    let Some(_guard) = require_privileges("one_shared_connection_is_ok") else { return };
    let server = GoServer::grpc(GoBuild::Normal);
    let port = server.port().to_string();
    let trace = LiveTrace::start(&["--port", &port]);
    let mut client = GoClient::start(GoBuild::Normal, ClientMode::Shared, server.addr, Messages { per_second: 50, count: Some(100) });
    let pid = client.pid();
    client.wait_handled(100);
    // Past --min-age, so the connection counts as long-lived.
    std::thread::sleep(Duration::from_secs(3));
    let (last, status, _) = trace.interrupt();
    let site = site_of(&last, pid, "connect").unwrap_or_else(|| panic!("no call site for the client: {last:#}"));
    assert_eq!((site["opened"].as_u64(), site["live"].as_u64()), (Some(1), Some(1)), "{site:#}");
    assert_eq!(site["verdict"], "ok");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_pool_of_five_long_lived_connections_is_ok() {
    let Some(_guard) = require_privileges("a_pool_of_five_long_lived_connections_is_ok") else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut pool = Puppet::spawn();
    let pid = pool.pid().to_string();
    let mut trace = LiveTrace::start(&["--pid", &pid, "--pid", &server.pid().to_string()]);
    for _ in 0..5 {
        pool.connect("127.0.0.1", port);
        server.accept(listener);
    }
    let report = trace.wait_for("five live connections older than --min-age", PATIENCE, |report| {
        site_of(report, pool.pid(), "connect").is_some_and(|site| site["live"] == 5 && site["oldest_age_s"].as_f64() > Some(3.0))
    });
    for site in sites_of(&report, pool.pid()).into_iter().chain(sites_of(&report, server.pid())) {
        assert_eq!(site["verdict"], "ok", "{site:#}");
    }
    let (_, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(0));
}

/// A client opening `count` connections to a puppet server at once; both hold them.
fn burst(count: usize) -> (Puppet, Puppet, Vec<u32>, LiveTrace) {
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let trace = LiveTrace::start(&["--pid", &client.pid().to_string(), "--pid", &server.pid().to_string()]);
    let fds = (0..count)
        .map(|_| {
            let fd = client.connect("127.0.0.1", port);
            server.accept(listener);
            fd
        })
        .collect();
    (server, client, fds, trace)
}

#[test]
fn a_burst_held_open_is_suspect() {
    let Some(_guard) = require_privileges("a_burst_held_open_is_suspect") else { return };
    let (_server, client, _fds, mut trace) = burst(30);
    let report = trace.wait_for("the burst's call site suspect", PATIENCE, |report| {
        verdict(site_of(report, client.pid(), "connect")) == "suspect"
    });
    let site = site_of(&report, client.pid(), "connect").unwrap();
    assert_eq!(site["findings"][0]["rule"], "burst_held_open", "{site:#}");
    let why = site["findings"][0]["why"].as_str().unwrap();
    assert!(why.starts_with("30 connections opened within ") && why.contains("a burst held open"), "{why}");
    let (_, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(0), "suspect is not a leak");
}

#[test]
fn a_pool_opened_at_once_and_in_use_stays_ok() {
    let Some(_guard) = require_privileges("a_pool_opened_at_once_and_in_use_stays_ok") else { return };
    let (_server, client, fds, mut trace) = burst(30);
    let pid = client.pid();
    let client = std::sync::Mutex::new(client);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // The pool in use: every connection carries a request every quarter second.
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for &fd in &fds {
                    client.lock().unwrap().cmd(&format!("write {fd}"));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trace.wait_for("the pool's 30 connections older than 6 s", PATIENCE, |report| {
                let Some(site) = site_of(report, pid, "connect") else { return false };
                assert_eq!(verdict(Some(site)), "ok", "a pool in use is not a burst held open: {site:#}");
                site["live"] == 30 && site["oldest_age_s"].as_f64() > Some(6.0)
            })
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(panic) = waited {
            std::panic::resume_unwind(panic);
        }
    });
    let (_, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_server_that_never_closes_after_the_peer_hangs_up_leaks_in_close_wait() {
    let Some(_guard) = require_privileges("a_server_that_never_closes_after_the_peer_hangs_up_leaks_in_close_wait") else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let server_pid = server.pid().to_string();
    let mut trace = LiveTrace::start(&["--pid", &server_pid, "--close-wait-after", "1"]);
    for _ in 0..3 {
        let fd = client.connect("127.0.0.1", port);
        server.accept(listener);
        client.close(fd);
    }
    let report = trace.wait_for("the accept side in CLOSE_WAIT, judged a leak", PATIENCE, |report| {
        verdict(site_of(report, server.pid(), "accept")) == "leak"
    });
    let site = site_of(&report, server.pid(), "accept").unwrap();
    assert_eq!((site["live"].as_u64(), site["close_wait"].as_u64()), (Some(3), Some(3)), "{site:#}");
    assert_eq!(site["findings"][0]["rule"], "close_wait", "{site:#}");
    assert_eq!(site["destinations"][0]["address"], "127.0.0.1");
    let (_, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn connections_older_than_leaktrace_are_seeded_as_born_before_start() {
    let Some(_guard) = require_privileges("connections_older_than_leaktrace_are_seeded_as_born_before_start") else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let mut fds = Vec::new();
    for _ in 0..3 {
        fds.push(client.connect("127.0.0.1", port));
        server.accept(listener);
    }
    let pid = client.pid();
    let mut trace = LiveTrace::start(&["--pid", &pid.to_string(), "--inventory-interval", "0.5"]);
    let seeded = |report: &Value| -> Option<Value> {
        sites_of(report, pid).into_iter().find(|site| site["born_before_start"] == true).cloned()
    };
    let report = trace.wait_for("three seeded connections", PATIENCE, |report| seeded(report).is_some_and(|s| s["live"] == 3));
    let site = seeded(&report).unwrap();
    assert_eq!(site["direction"], "connect");
    assert_eq!(site["frames"], serde_json::json!([]), "no stack is made up: {site:#}");
    assert_eq!(site["opened"], 0, "{site:#}");
    assert!(site["lifetime_s"].is_null());
    let process = report["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).unwrap();
    assert_eq!(process["live_born_before_start"], 3);
    // A new connection of the same process is traced beside them; one old one closes.
    client.connect("127.0.0.1", port);
    client.close(fds[0]);
    let report = trace.wait_for("one seeded closed, one traced", PATIENCE, |report| {
        seeded(report).is_some_and(|s| s["live"] == 2) && site_of(report, pid, "connect").is_some_and(|s| s["live"] == 1)
    });
    let process = report["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).unwrap();
    assert_eq!((process["live"].as_u64(), process["live_born_before_start"].as_u64()), (Some(3), Some(2)));
}

#[test]
fn a_replay_of_the_recording_gives_the_live_report() {
    let Some(_guard) = require_privileges("a_replay_of_the_recording_gives_the_live_report") else { return };
    let recording = std::env::temp_dir().join(format!("leaktrace-replay-{}.jsonl", std::process::id()));
    let record = recording.to_str().unwrap().to_string();
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let pids = [client.pid().to_string(), server.pid().to_string()];
    let trace = LiveTrace::start(&["--pid", &pids[0], "--pid", &pids[1], "--record", &record]);
    // A leak spread over four seconds, and a few closed connections.
    for second in 0..4 {
        for _ in 0..4 {
            client.connect("127.0.0.1", port);
            server.accept(listener);
        }
        let fd = client.connect("127.0.0.1", port);
        server.accept(listener);
        if second % 2 == 0 {
            client.close(fd);
        }
        std::thread::sleep(Duration::from_millis(800));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (live, live_status, _) = trace.interrupt();
    // The recording holds every socket the inventories saw; the replay keeps the live run's pids.
    let (replayed, replay_status) = replay(&[&record, "--format", "json", "--pid", &pids[0], "--pid", &pids[1]]);
    let _ = std::fs::remove_file(&recording);
    assert_eq!(live_status.code(), Some(1), "{live:#}");
    assert_eq!(replay_status.code(), live_status.code());
    assert_eq!(comparable(&replayed), comparable(&live));
    assert_eq!(replayed["events"], live["events"]);
    assert_eq!(replayed["duration_s"], live["duration_s"]);
    assert_eq!(verdict(site_of(&replayed, client.pid(), "connect")), "leak");
}

/// A report without what only the live run can know (symbols, executables and callers
/// recovered from the code come from the running processes).
fn comparable(report: &Value) -> Value {
    let mut sites = report["call_sites"].clone();
    for site in sites.as_array_mut().unwrap() {
        let site = site.as_object_mut().unwrap();
        site.remove("exe");
        site.remove("telling_frame");
        site.remove("stack_truncated");
        let addresses: Vec<Value> = site["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|frame| frame["recovered"] != true && frame["inlined"] != true)
            .map(|frame| frame["address"].clone())
            .collect();
        site.insert("frames".into(), Value::Array(addresses));
    }
    serde_json::json!({ "call_sites": sites, "processes": report["processes"], "tracker": report["tracker"] })
}
