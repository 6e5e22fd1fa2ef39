//! Goroutine ancestry end to end, as a user runs it: the real `leaktrace` binary tracing real Go
//! programs (built here with Debian's Go 1.19 and bookworm-backports' 1.21 to 1.23, stripped and
//! not) whose dials run on goroutines a library spawned. The call site must name the
//! application's own function (the one that called `grpc.DialContext` or `http.Get`), with the
//! spawning goroutine's frames marked, and say why where it cannot.
use std::time::Duration;

use leaktrace::goruntime::{GoProgram, LayoutSource, RuntimeLayout, GoVersion};
use leaktrace_tests::{
    cli::{LiveTrace, leaktrace_binary, sites_of},
    go::{ClientMode, GoBuild, GoClient, GoProcess, GoServer, GoToolchain, Messages, go_program, go_program_with},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(45);

/// Messages the incident's client sends.
const MESSAGES: u64 = 100;

/// The frame a call site is named by.
fn telling(site: &Value) -> &Value {
    let index = site["telling_frame"].as_u64().unwrap_or_else(|| panic!("no telling frame: {site:#}"));
    &site["frames"][index as usize]
}

fn function(site: &Value) -> &str {
    site["telling_frame"].as_u64().and_then(|index| site["frames"][index as usize]["function"].as_str()).unwrap_or("")
}

fn ancestry(site: &Value) -> &str {
    site["go_ancestry"]["status"].as_str().unwrap_or("(none)")
}

/// The connect call site of `pid` named by `function`, if the report has it.
fn named_site<'a>(report: &'a Value, pid: u32, name: &str) -> Option<&'a Value> {
    sites_of(report, pid).into_iter().find(|site| site["direction"] == "connect" && function(site) == name)
}

/// Connects of `pid` over all its call sites.
fn opened_by(report: &Value, pid: u32) -> u64 {
    sites_of(report, pid).iter().filter(|site| site["direction"] == "connect").map(|site| site["opened"].as_u64().unwrap()).sum()
}

/// A server of `program`, a leaktrace with `args` on its port, and a client of `mode` sending
/// `count` messages at 20/s.
#[track_caller]
fn traced(program: &std::path::Path, mode: ClientMode, count: impl Into<Option<u64>>, args: &[&str]) -> (GoServer, LiveTrace, GoClient) {
    let server = GoServer::start(program);
    let port = server.port().to_string();
    let trace = LiveTrace::start(&[&["--port", port.as_str()], args].concat());
    let client = GoClient::start_binary(program, mode, server.addr, Messages { per_second: 20, count: count.into() });
    (server, trace, client)
}

/// [`traced`], then waits until the client's call site named `expected` is a `leak` with its
/// ancestry joined, and returns that report, the client and the trace.
#[track_caller]
fn leak_named(program: &std::path::Path, mode: ClientMode, count: Option<u64>, expected: &str) -> (Value, GoClient, LiveTrace, GoServer) {
    let (server, mut trace, client) = traced(program, mode, count, &[]);
    let pid = client.pid();
    let report = trace.wait_for(&format!("{expected} named as a leak"), PATIENCE, |report| {
        named_site(report, pid, expected).is_some_and(|site| site["verdict"] == "leak" && ancestry(site) == "joined")
    });
    (report, client, trace, server)
}

/// What every named leak shows: the application's frame, from the spawning goroutine's stack,
/// with its file and line, and below it the application's callers.
#[track_caller]
fn assert_named_across_the_hop(site: &Value, expected: &str, callers: &[&str]) {
    let frame = telling(site);
    assert_eq!(frame["function"], expected, "{site:#}");
    assert_eq!(frame["spawned_by"], 1, "the application's frame is on the spawning goroutine: {site:#}");
    assert!(frame["file"].as_str().is_some_and(|file| file.ends_with("main.go")), "{frame:#}");
    assert!(frame["line"].as_u64().is_some_and(|line| line > 0), "{frame:#}");
    let frames = site["frames"].as_array().unwrap();
    // The dialing goroutine's own stack first, ending at its root; then the spawner's.
    let hop_starts = frames.iter().position(|frame| frame["spawned_by"] == 1).unwrap();
    assert!(hop_starts > 0, "{site:#}");
    assert_eq!(frames[hop_starts - 1]["function"], "runtime.goexit", "{site:#}");
    assert_eq!(frames[hop_starts]["function"], "runtime.newproc1", "the spawn is taken in newproc1: {site:#}");
    let spawner_functions: Vec<&str> = frames[hop_starts..].iter().filter_map(|frame| frame["function"].as_str()).collect();
    for caller in callers {
        assert!(spawner_functions.contains(caller), "{caller} missing from the spawner's stack {spawner_functions:#?}");
    }
    assert_eq!(site["go_ancestry"]["status"], "joined", "{site:#}");
}

#[test]
fn the_incidents_grpc_leak_names_the_function_that_called_grpc_dial() {
    let Some(_guard) = require_privileges("the_incidents_grpc_leak_names_the_function_that_called_grpc_dial") else { return };
    for build in [GoBuild::Normal, GoBuild::Stripped] {
        let program = go_program("grpcleak", build);
        // 100 at 20/s: a trend over the 3 distinct seconds a leak needs, after the connections
        // dialed before the attach, even on a loaded machine.
        let (report, mut client, trace, _server) = leak_named(&program, ClientMode::Leak, Some(MESSAGES), "main.dialGRPC");
        let pid = client.pid();
        let site = named_site(&report, pid, "main.dialGRPC").unwrap();
        assert_named_across_the_hop(site, "main.dialGRPC", &["google.golang.org/grpc.DialContext", "main.dialBackend", "main.handleMessage", "main.consume"]);
        client.wait_handled(MESSAGES);
        let (last, status, stderr) = trace.interrupt();
        assert_eq!(status.code(), Some(1), "leaks found: exit 1; stderr:\n{stderr}");
        // Every connection is counted once: at the named call site, or (opened before the
        // attach) at the library's, which says why it has no ancestry.
        assert_eq!(opened_by(&last, pid), MESSAGES, "{build:?}: {last:#}");
        for site in sites_of(&last, pid).into_iter().filter(|site| site["direction"] == "connect") {
            match ancestry(site) {
                "joined" => assert_eq!(function(site), "main.dialGRPC", "{site:#}"),
                "not_recorded" => {
                    assert!(function(site).starts_with("google.golang.org/grpc."), "{site:#}");
                    assert!(site["go_ancestry"]["detail"].as_str().unwrap().contains("created before"), "{site:#}");
                }
                other => panic!("{build:?}: ancestry {other}: {site:#}"),
            }
        }
        // Every connection at the named call site came from a recorded spawn.
        let joined = named_site(&last, pid, "main.dialGRPC").unwrap()["opened"].as_u64().unwrap();
        assert!(last["events"]["goroutines_recorded"].as_u64().unwrap() >= joined, "{joined}: {:#}", last["events"]);
        assert_eq!(last["events"]["goroutines_unrecorded"], 0, "{:#}", last["events"]);
        assert!(stderr.contains(&format!("goroutine ancestry attached to pid {pid}")), "{stderr}");
        let layout = if build == GoBuild::Stripped { "the Go 1.19 table" } else { "DWARF" };
        assert!(stderr.contains(&format!("layout from {layout}")), "{build:?}: {stderr}");
    }
}

#[test]
fn the_table_reads_leak_and_the_application_function_with_its_file_and_line() {
    let Some(_guard) = require_privileges("the_table_reads_leak_and_the_application_function_with_its_file_and_line") else {
        return;
    };
    let program = go_program("grpcleak", GoBuild::Normal);
    let server = GoServer::start(&program);
    let port = server.port().to_string();
    let mut client = GoClient::start_binary(&program, ClientMode::Leak, server.addr, Messages { per_second: 20, count: None });
    client.wait_handled(1);
    // The table as a user reads it, piped (the final report is printed at the end).
    let output = std::process::Command::new(leaktrace_binary())
        .args(["--port", &port, "--duration", "6s", "--comm", "grpcleak"])
        .output()
        .expect("running leaktrace");
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}\n{}", String::from_utf8_lossy(&output.stderr));
    let leak_line = table
        .lines()
        .find(|line| line.starts_with("LEAK") && line.contains(&format!("pid {}", client.pid())))
        .unwrap_or_else(|| panic!("no LEAK line for the client:\n{table}"));
    assert!(leak_line.contains(" main.dialGRPC main.go:"), "{leak_line}\n{table}");
    assert!(table.contains("-- the goroutine above was started here, at a go statement (hop 1) --"), "{table}");
}

#[test]
fn a_net_http_leak_names_the_caller_of_http_get() {
    let Some(_guard) = require_privileges("a_net_http_leak_names_the_caller_of_http_get") else { return };
    let program = go_program("httpleak", GoBuild::Normal);
    let (report, client, _trace, _server) = leak_named(&program, ClientMode::HttpLeak, None, "main.fetchStatus");
    let site = named_site(&report, client.pid(), "main.fetchStatus").unwrap();
    assert_named_across_the_hop(site, "main.fetchStatus", &["net/http.Get", "main.handleMessage", "main.runClient"]);
    // The dialing goroutine's own stack is all standard library: named by its outermost frame
    // (where net/http started the dial), never "(no stack)".
    for site in sites_of(&report, client.pid()).into_iter().filter(|site| ancestry(site) == "not_recorded") {
        assert!(function(site).starts_with("net/http."), "{site:#}");
    }
}

#[test]
fn a_net_http_leak_never_reads_no_stack_even_without_ancestry() {
    let Some(_guard) = require_privileges("a_net_http_leak_never_reads_no_stack_even_without_ancestry") else { return };
    let program = go_program("httpleak", GoBuild::Normal);
    let server = GoServer::start(&program);
    let port = server.port().to_string();
    let mut client = GoClient::start_binary(&program, ClientMode::HttpLeak, server.addr, Messages { per_second: 20, count: None });
    client.wait_handled(1);
    // Without ancestry the dialing goroutine's stack is all standard library, as before it.
    let output = std::process::Command::new(leaktrace_binary())
        .args(["--port", &port, "--duration", "6s", "--go-ancestry", "off", "--pid", &client.pid().to_string()])
        .output()
        .expect("running leaktrace");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!table.contains("(no stack"), "{table}");
    let row = table
        .lines()
        .find(|line| line.contains(" connect ") && !line.contains("(born before start)"))
        .unwrap_or_else(|| panic!("no connect row:\n{table}\n{}", String::from_utf8_lossy(&output.stderr)));
    assert!(row.contains(" net/http."), "named by the frame where net/http started the dial: {row}\n{table}");
}

#[test]
fn net_http_with_the_body_closed_keeps_one_pooled_connection_and_no_leak() {
    let Some(_guard) = require_privileges("net_http_with_the_body_closed_keeps_one_pooled_connection_and_no_leak") else {
        return;
    };
    let program = go_program("httpleak", GoBuild::Normal);
    let (_server, mut trace, mut client) = traced(&program, ClientMode::HttpClosed, 60, &[]);
    client.wait_handled(60);
    let pid = client.pid();
    let report = trace.wait_for("the client's one connection", PATIENCE, |report| opened_by(report, pid) == 1);
    let sites: Vec<&Value> = sites_of(&report, pid).into_iter().filter(|site| site["direction"] == "connect").collect();
    assert_eq!(sites.len(), 1, "{report:#}");
    assert_eq!((sites[0]["live"].as_u64(), sites[0]["verdict"].as_str()), (Some(1), Some("ok")), "{:#}", sites[0]);
    let (last, status, stderr) = trace.interrupt();
    assert_eq!(opened_by(&last, pid), 1, "{last:#}");
    assert_eq!(status.code(), Some(0), "no leak anywhere: {last:#}\n{stderr}");
}

#[test]
fn newer_go_toolchains_name_the_application_frame_too() {
    let Some(_guard) = require_privileges("newer_go_toolchains_name_the_application_frame_too") else { return };
    for toolchain in GoToolchain::BACKPORTS {
        for (program, mode, expected) in
            [("grpcleak", ClientMode::Leak, "main.dialGRPC"), ("httpleak", ClientMode::HttpLeak, "main.fetchStatus")]
        {
            let binary = go_program_with(program, GoBuild::Normal, toolchain);
            // Leaking until the named call site is a leak: a trend over the 3 distinct seconds a
            // leak needs, after the connections dialed before the attach.
            let (report, client, _trace, _server) = leak_named(&binary, mode, None, expected);
            let site = named_site(&report, client.pid(), expected).unwrap();
            assert_named_across_the_hop(site, expected, &["main.handleMessage"]);
            assert!(site["exe"].as_str().is_some_and(|exe| exe.ends_with(&format!("-go1.{}", match toolchain {
                GoToolchain::Backports(minor) => minor,
                GoToolchain::Debian => 19,
            }))), "{toolchain:?}: {site:#}");
        }
    }
}

#[test]
fn two_application_functions_leaking_through_the_same_grpc_call_are_two_call_sites() {
    let Some(_guard) =
        require_privileges("two_application_functions_leaking_through_the_same_grpc_call_are_two_call_sites")
    else {
        return;
    };
    let program = go_program("grpcleak", GoBuild::Normal);
    let (_server, mut trace, client) = traced(&program, ClientMode::LeakTwo, None, &[]);
    let pid = client.pid();
    let report = trace.wait_for("both leaking functions named", PATIENCE, |report| {
        ["main.dialOrders", "main.dialPayments"]
            .iter()
            .all(|name| named_site(report, pid, name).is_some_and(|site| site["verdict"] == "leak"))
    });
    for name in ["main.dialOrders", "main.dialPayments"] {
        assert_named_across_the_hop(named_site(&report, pid, name).unwrap(), name, &["main.handleMessage"]);
    }
}

#[test]
fn the_fixed_program_is_churn_at_the_same_named_call_site() {
    let Some(_guard) = require_privileges("the_fixed_program_is_churn_at_the_same_named_call_site") else { return };
    let program = go_program("grpcleak", GoBuild::Normal);
    let (_server, mut trace, client) = traced(&program, ClientMode::Churn, 100, &[]);
    let pid = client.pid();
    let report = trace.wait_for("main.dialGRPC as churn", PATIENCE, |report| {
        named_site(report, pid, "main.dialGRPC").is_some_and(|site| site["verdict"] == "churn")
    });
    let site = named_site(&report, pid, "main.dialGRPC").unwrap();
    assert_eq!(ancestry(site), "joined", "{site:#}");
    assert!(site["closed"].as_u64().unwrap() > 0 && site["live"].as_u64().unwrap() <= 1, "{site:#}");
}

#[test]
fn ancestry_off_keeps_the_dialing_goroutines_stack_alone() {
    let Some(_guard) = require_privileges("ancestry_off_keeps_the_dialing_goroutines_stack_alone") else { return };
    let program = go_program("grpcleak", GoBuild::Normal);
    let (_server, mut trace, mut client) = traced(&program, ClientMode::Leak, 40, &["--go-ancestry", "off"]);
    client.wait_handled(40);
    let pid = client.pid();
    let report = trace.wait_for("the 40 connections", PATIENCE, |report| opened_by(report, pid) == 40);
    let sites: Vec<&Value> = sites_of(&report, pid).into_iter().filter(|site| site["direction"] == "connect").collect();
    assert_eq!(sites.len(), 1, "{report:#}");
    assert!(function(sites[0]).starts_with("google.golang.org/grpc."), "{:#}", sites[0]);
    assert!(sites[0].get("go_ancestry").is_none(), "{:#}", sites[0]);
    assert!(sites[0]["frames"].as_array().unwrap().iter().all(|frame| frame.get("spawned_by").is_none()));
    let (last, _, stderr) = trace.interrupt();
    assert_eq!(last["events"]["goroutines_recorded"], 0);
    assert!(!stderr.contains("goroutine ancestry attached"), "{stderr}");
}

/// The spawner program, started under a leaktrace with `args` that has attached ancestry to it
/// (`--go-ancestry on`), then told to create `goroutines` goroutines, which it has checked:
/// the program (still running) and the trace.
fn spawn_under_ancestry(goroutines: u64, args: &[&str]) -> (GoProcess, LiveTrace) {
    let spawner = go_program("spawner", GoBuild::Normal);
    let mut program = GoProcess::spawn(&spawner, &["-goroutines".into(), goroutines.to_string()]);
    let pid = program.pid();
    assert_eq!(program.next_line(), "ready");
    let pid_arg = pid.to_string();
    let mut trace = LiveTrace::start(&[&["--pid", pid_arg.as_str(), "--go-ancestry", "on"], args].concat());
    program.send_line("connect");
    assert_eq!(program.next_line(), "connected");
    trace.wait_for("ancestry attached to the spawner", PATIENCE, |report| {
        sites_of(report, pid).iter().any(|site| site["go_ancestry"]["status"].is_string())
    });
    program.send_line("go");
    let checked = program.next_line();
    assert!(checked.starts_with(&format!("checked {goroutines} in ")), "{checked}: {}", program.stderr());
    (program, trace)
}

#[test]
fn a_goroutine_heavy_program_keeps_working_with_ancestry_attached() {
    let Some(_guard) = require_privileges("a_goroutine_heavy_program_keeps_working_with_ancestry_attached") else { return };
    const GOROUTINES: u64 = 50_000;
    let (program, trace) = spawn_under_ancestry(GOROUTINES, &["--go-ancestry-max-rate", "10000000"]);
    let pid = program.pid();
    let (last, _, stderr) = trace.interrupt();
    let recorded = last["events"]["goroutines_recorded"].as_u64().unwrap();
    assert!(recorded >= GOROUTINES, "every goroutine created was recorded: {recorded} of {GOROUTINES}; {stderr}");
    assert_eq!(last["events"]["goroutines_unrecorded"], 0);
    assert!(stderr.contains(&format!("goroutine ancestry attached to pid {pid}")), "{stderr}");
    assert!(!stderr.contains("detached"), "{stderr}");
}

#[test]
fn a_process_creating_goroutines_past_the_budget_is_detached_and_says_so() {
    let Some(_guard) = require_privileges("a_process_creating_goroutines_past_the_budget_is_detached_and_says_so") else {
        return;
    };
    // Far more than the budget, for long enough that a report interval measures it.
    const GOROUTINES: u64 = 200_000;
    let (program, mut trace) = spawn_under_ancestry(GOROUTINES, &["--go-ancestry-max-rate", "1000"]);
    let pid = program.pid();
    let report = trace.wait_for("the spawner's ancestry detached", PATIENCE, |report| {
        sites_of(report, pid).iter().any(|site| site["go_ancestry"]["status"] == "unavailable")
    });
    let site = sites_of(&report, pid).into_iter().find(|site| site["go_ancestry"]["status"] == "unavailable").unwrap();
    let detail = site["go_ancestry"]["detail"].as_str().unwrap();
    assert!(detail.contains("detached") && detail.contains("--go-ancestry-max-rate 1000"), "{detail}");
    let (last, _, stderr) = trace.interrupt();
    // Detached mid-run: fewer recorded than created, and the program went on unharmed (its
    // `checked` line came after every goroutine's answer was verified).
    let recorded = last["events"]["goroutines_recorded"].as_u64().unwrap();
    assert!(recorded < GOROUTINES, "{recorded}; {stderr}");
    assert!(stderr.contains(&format!("pid {pid} created")), "{stderr}");
}

/// The layout table stands in for DWARF in stripped binaries: each of its rows must be what
/// that version's own DWARF says, for every toolchain the tests have.
#[test]
fn the_layout_table_matches_each_toolchains_dwarf() {
    for toolchain in [GoToolchain::Debian].into_iter().chain(GoToolchain::BACKPORTS) {
        let normal = GoProgram::inspect(&go_program_with("httpleak", GoBuild::Normal, toolchain)).unwrap();
        let stripped = GoProgram::inspect(&go_program_with("httpleak", GoBuild::Stripped, toolchain)).unwrap();
        let version = GoVersion::parse(&toolchain.version()).unwrap();
        assert_eq!(normal.version, Some(version));
        assert_eq!(normal.layout.source, LayoutSource::Dwarf, "{toolchain:?}");
        assert_eq!(stripped.layout.source, LayoutSource::Table(version), "{toolchain:?}");
        let table = RuntimeLayout::from_table(version).unwrap();
        let offsets = |layout: &RuntimeLayout| (layout.g_goid, layout.g_m, layout.m_curg);
        assert_eq!(offsets(&normal.layout), offsets(&table), "{toolchain:?}: DWARF vs the table");
        assert_eq!(offsets(&stripped.layout), offsets(&table), "{toolchain:?}");
        assert_eq!(normal.newproc1_returns.len(), stripped.newproc1_returns.len(), "{toolchain:?}");
        assert!(!normal.newproc1_returns.is_empty());
    }
}
