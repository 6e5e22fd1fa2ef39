//! `leaktrace agent` end to end: the real binary with its real probes, the Go incident program
//! leaking gRPC connections beside a healthy client sharing one, read the way its consumers read
//! it: Prometheus (Debian's server scraping it on loopback, asked through its HTTP API, and
//! promtool checking the exposition) and the JSON report's HTTP API with its filters; a leak in
//! a real podman container is named by its container label.
use std::time::Duration;

use leaktrace_tests::{
    agent::{Agent, Prometheus, metric_value, on_path, promtool_check_metrics},
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages, go_program},
    containers::{self, Container},
    require_privileges,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// The incident's pace: a message (a new connection, never closed) every 50 ms.
const RATE: Messages = Messages { per_second: 20, count: None };

/// The agent watching a gRPC server's port, a client leaking a connection per message and a
/// client sharing one connection; the agent has seen the leak once this returns.
fn leak_beside_a_healthy_client() -> (GoServer, Agent, GoClient, GoClient) {
    let server = GoServer::grpc(GoBuild::Normal);
    let agent = Agent::start(&["--port", &server.port().to_string()]);
    agent.wait_ready(WAIT);
    let leak = GoClient::start(GoBuild::Normal, ClientMode::Leak, server.addr, RATE);
    let shared = GoClient::start(GoBuild::Normal, ClientMode::Shared, server.addr, RATE);
    let leak_pid = leak.pid().to_string();
    agent.wait_report(&[("pid", &leak_pid), ("direction", "connect"), ("verdict", "leak")], "the leaking client's dial as a leak", WAIT, |report| {
        !sites(report).is_empty()
    });
    (server, agent, leak, shared)
}

fn sites(report: &Value) -> &Vec<Value> {
    report["call_sites"].as_array().expect("call_sites is a list")
}

/// The traced (not born before start) call sites of `pid` in a `direction`.
fn traced<'a>(report: &'a Value, pid: u32, direction: &str) -> Vec<&'a Value> {
    sites(report)
        .iter()
        .filter(|site| site["pid"] == pid && site["direction"] == direction && site["born_before_start"] == false)
        .collect()
}

#[test]
fn prometheus_scrapes_the_leaking_call_site_as_a_leak_and_the_shared_one_as_not() {
    let Some(_serial) = require_privileges("prometheus_scrapes_the_leaking_call_site_as_a_leak_and_the_shared_one_as_not") else { return };
    if !(on_path("prometheus") && on_path("promtool")) {
        eprintln!("skipped: Debian's prometheus (with promtool) is not installed; `cargo xtask setup --test-deps` installs it");
        return;
    }
    let (_server, agent, leak, shared) = leak_beside_a_healthy_client();
    let (leak_pid, shared_pid) = (leak.pid().to_string(), shared.pid().to_string());

    let (status, text) = agent.get("/metrics", &[]);
    assert_eq!(status, 200, "{text}");
    promtool_check_metrics(&text).unwrap_or_else(|complaints| panic!("promtool check metrics failed:\n{complaints}\non:\n{text}"));

    let prometheus = Prometheus::start(agent.addr);
    let leaking = prometheus.wait_query(
        &format!(r#"leaktrace_call_site_verdict{{pid="{leak_pid}",direction="connect",verdict="leak"}}"#),
        WAIT,
        |result| !result.is_empty(),
    );
    // One dial site, or two once goroutine ancestry attached: the dials before it stay in the
    // library's call site, the later ones name the application's function.
    assert!(leaking.iter().all(|series| series["metric"]["comm"] == "grpcleak" && series["value"][1] == "1"), "{leaking:#?}");
    let live = prometheus.query(&format!(r#"sum(leaktrace_call_site_live_connections{{pid="{leak_pid}",direction="connect",verdict="leak"}})"#));
    let live: f64 = live[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(live >= 10.0, "a leak has at least --leak-growth live connections: {live}");

    // The healthy client's dial is there too, and not a leak.
    let healthy = prometheus.wait_query(
        &format!(r#"leaktrace_call_site_verdict{{pid="{shared_pid}",direction="connect",call_site!="(born before start)"}}"#),
        WAIT,
        |result| !result.is_empty(),
    );
    for series in &healthy {
        assert_ne!(series["metric"]["verdict"], "leak", "the shared connection is no leak: {healthy:#?}");
    }
    let shared_live = prometheus.query(&format!(r#"leaktrace_process_live_connections{{pid="{shared_pid}"}}"#));
    assert_eq!(shared_live[0]["value"][1], "1", "the shared client holds one connection: {shared_live:#?}");

    // leaktrace's own health reaches Prometheus as well.
    let produced = prometheus.query("leaktrace_events_produced_total");
    assert!(produced[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{produced:#?}");
    assert_eq!(prometheus.query("leaktrace_events_lost_total").len(), 1);
    assert_eq!(prometheus.query("leaktrace_kernel_socket_map_capacity")[0]["value"][1], "131072");
    let leaks = prometheus.query(r#"leaktrace_call_sites{verdict="leak"}"#);
    assert!(leaks[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 1.0, "{leaks:#?}");
}

#[test]
fn report_api_serves_the_json_contract_with_working_filters_and_stops_cleanly() {
    let Some(_serial) = require_privileges("report_api_serves_the_json_contract_with_working_filters_and_stops_cleanly") else { return };
    let (_server, agent, leak, shared) = leak_beside_a_healthy_client();
    assert_eq!(agent.get("/healthz", &[]), (200, "ok\n".to_string()));
    assert_eq!(agent.get("/readyz", &[]).0, 200);

    // The whole report: the `--format json` contract.
    let report = agent.report(&[]);
    assert_eq!(report["version"], 1);
    assert!(report["events"]["produced"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["tracker"]["opened"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["thresholds"]["leak_growth"], 10);
    // The dials before goroutine ancestry attached, and those after, may be two call sites.
    let dial: Vec<&Value> = traced(&report, leak.pid(), "connect").into_iter().filter(|site| site["verdict"] == "leak").collect();
    assert!(!dial.is_empty(), "{report:#}");
    assert!(dial[0]["live"].as_u64().unwrap() >= 10);
    assert!(!dial[0]["frames"].as_array().unwrap().is_empty(), "the dial has its stack: {:#}", dial[0]);
    assert_eq!(dial[0]["findings"][0]["verdict"], "leak");
    assert!(report["processes"].as_array().unwrap().iter().any(|process| process["pid"] == leak.pid()));

    // Filters narrow the call sites, and the processes to those that keep one.
    let leaks = agent.report(&[("verdict", "leak")]);
    assert!(sites(&leaks).iter().all(|site| site["verdict"] == "leak"), "{leaks:#}");
    assert!(!traced(&leaks, leak.pid(), "connect").is_empty(), "{leaks:#}");
    assert!(traced(&leaks, shared.pid(), "connect").is_empty(), "the shared connection is no leak: {leaks:#}");
    let shared_only = agent.report(&[("pid", &shared.pid().to_string())]);
    assert!(!sites(&shared_only).is_empty());
    assert!(sites(&shared_only).iter().all(|site| site["pid"] == shared.pid()), "{shared_only:#}");
    assert!(shared_only["processes"].as_array().unwrap().iter().all(|process| process["pid"] == shared.pid()));
    let both = agent.report(&[("pid", &shared.pid().to_string()), ("pid", &leak.pid().to_string()), ("direction", "connect")]);
    assert!(sites(&both).iter().all(|site| site["direction"] == "connect"));
    assert!(!traced(&both, leak.pid(), "connect").is_empty() && !traced(&both, shared.pid(), "connect").is_empty(), "{both:#}");
    let accepted = agent.report(&[("direction", "accept"), ("comm", "grpcleak")]);
    assert!(!sites(&accepted).is_empty() && sites(&accepted).iter().all(|site| site["direction"] == "accept"));
    let none = agent.report(&[("min_live", "1000000")]);
    assert!(sites(&none).is_empty() && none["processes"].as_array().unwrap().is_empty(), "{none:#}");

    // Bad parameters are refused, saying what is wrong.
    for (query, says) in [
        (("verdict", "leaky"), "verdict=\"leaky\": expected leak, suspect, churn or ok"),
        (("pid", "abc"), "pid=\"abc\": expected a process id"),
        (("min_live", "-1"), "min_live=\"-1\""),
        (("direction", "up"), "expected connect or accept"),
        (("color", "red"), "unknown query parameter \"color\""),
    ] {
        let (status, body) = agent.get("/api/v1/report", &[query]);
        assert_eq!(status, 400, "{query:?}: {body}");
        assert!(body.contains(says), "{query:?}: {body}");
    }

    // Scrapes and reports asked for at once are each answered from a fresh report.
    let shared_agent = &agent;
    std::thread::scope(|scope| {
        let answers: Vec<_> = (0..8)
            .map(|i| scope.spawn(move || shared_agent.get(if i % 2 == 0 { "/metrics" } else { "/api/v1/report" }, &[]).0))
            .collect();
        for answer in answers {
            assert_eq!(answer.join().unwrap(), 200);
        }
    });

    // A process that exits: its connection closes, its series leave /metrics, and the agent
    // goes on answering.
    let shared_pid = shared.pid();
    drop(shared);
    let gone = format!(r#"pid="{shared_pid}""#);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, text) = agent.get("/metrics", &[]);
        assert_eq!(status, 200, "{text}");
        if !text.contains(&gone) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the exited client's series stayed in /metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(sites(&agent.report(&[])).iter().any(|site| site["pid"] == leak.pid()));

    // SIGTERM: a clean stop, with the final counters logged.
    let (status, stderr) = agent.terminate();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(stderr.contains("agent: stopping"), "{stderr}");
    assert!(stderr.contains("events produced") && stderr.contains(" 0 lost"), "{stderr}");
}

/// Connections of the burst that overflows the smallest ring buffer.
const BURST: u64 = 1000;

#[test]
fn a_burst_that_overflows_the_ring_buffer_is_counted_and_the_agent_goes_on() {
    let Some(_serial) = require_privileges("a_burst_that_overflows_the_ring_buffer_is_counted_and_the_agent_goes_on") else { return };
    let server = GoServer::grpc(GoBuild::Normal);
    // Room for three opens, drained twice a second: a burst of dials cannot fit.
    let agent = Agent::start(&["--port", &server.port().to_string(), "--ring-buffer-kib", "4", "--drain-interval-ms", "500"]);
    agent.wait_ready(WAIT);
    // Plain dials, as fast as they go (a gRPC dial waits for its handshake).
    let mut burst = GoClient::start(GoBuild::Normal, ClientMode::LeakTcp, server.addr, Messages { per_second: 0, count: Some(BURST) });
    burst.wait_handled(BURST);

    let deadline = std::time::Instant::now() + WAIT;
    let lost = loop {
        let (status, text) = agent.get("/metrics", &[]);
        assert_eq!(status, 200, "{text}");
        let lost = metric_value(&text, "leaktrace_events_lost_total").expect("leaktrace_events_lost_total in /metrics");
        if lost > 0.0 || std::time::Instant::now() >= deadline {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(lost > 0.0, "{BURST} dials through a 4 KiB ring buffer lost nothing: the test no longer overflows it");
    assert_eq!(agent.get("/healthz", &[]).0, 200);
    let report = agent.report(&[("pid", &burst.pid().to_string())]);
    assert!(report["events"]["lost"].as_u64().unwrap() > 0, "{report:#}");

    let (status, stderr) = agent.terminate();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(!stderr.contains("UNBALANCED") && stderr.contains("hint: raise --ring-buffer-kib"), "{stderr}");
}

#[test]
fn prometheus_names_the_leaking_container_and_no_container_for_a_host_process() {
    let test = "prometheus_names_the_leaking_container_and_no_container_for_a_host_process";
    let Some(_serial) = require_privileges(test) else { return };
    if !on_path("prometheus") {
        eprintln!("skipped {test}: Debian's prometheus is not installed; `cargo xtask setup --test-deps` installs it");
        return;
    }
    if let Some(reason) = containers::unavailable() {
        eprintln!("skipped {test}: {reason}");
        return;
    }
    let server = GoServer::grpc(GoBuild::Normal);
    let agent = Agent::start(&["--port", &server.port().to_string()]);
    agent.wait_ready(WAIT);
    // A plain dial per message, never closed, from a container sharing the host's network.
    let rootfs = containers::rootfs(&go_program("grpcleak", GoBuild::Normal)).display().to_string();
    let target = server.addr.to_string();
    let leaking = Container::run(
        "grpcleak leak-tcp",
        &["--network", "host", "--rootfs", &rootfs, "/grpcleak", "-mode", "leak-tcp", "-target", &target, "-rate", "20"]
            .map(String::from),
    );
    // Off a cluster a container is named by its id's first 12 digits.
    let short: String = leaking.id().chars().take(12).collect();

    let prometheus = Prometheus::start(agent.addr);
    let series = prometheus.wait_query(
        &format!(r#"leaktrace_call_site_verdict{{container="{short}",direction="connect",verdict="leak"}}"#),
        WAIT,
        |result| !result.is_empty(),
    );
    let pid = leaking.host_pid().to_string();
    assert!(series.iter().all(|one| one["metric"]["pid"].as_str() == Some(&pid)), "{series:#?}\n{:?}", leaking.logs());
    let process = prometheus.query(&format!(r#"leaktrace_process_verdict{{container="{short}"}}"#));
    assert_eq!(process[0]["metric"]["verdict"], "leak", "{process:#?}");
    // The server on the host accepts every one of them, and names no container.
    let host = prometheus.wait_query(
        &format!(r#"leaktrace_call_site_live_connections{{pid="{}",direction="accept"}}"#, server.pid()),
        WAIT,
        |result| !result.is_empty(),
    );
    assert!(host.iter().all(|one| one["metric"].get("container").is_none()), "{host:#?}");
}
