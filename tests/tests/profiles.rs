//! The profiles end to end, opened the way their users open them: the real `leaktrace` tracing
//! the Go incident program (`grpcleak`, a gRPC connection dialed per message and never closed),
//! its `--pprof` file read by Debian's `go tool pprof` (`-top`, `-traces`, the `-http` web view)
//! while leaktrace runs and after it ends, and from a replay of its recording; its
//! `--flamegraph` SVG checked for the leaking frame and its colour; and the agent's
//! `/debug/pprof/connections` fetched by `go tool pprof` over HTTP.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace::export::flamegraph::{LEAK_COLOUR, TITLE};
use leaktrace_tests::{
    agent::Agent,
    cli::{LiveTrace, leaktrace_binary, replay, sites_of},
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages, go_program, go_tool_pprof, go_tool_pprof_web},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);
/// The function the incident's leak is named by: the one that calls `grpc.DialContext`.
const LEAKING: &str = "main.dialGRPC";
/// The incident's pace: a connection dialed, and never closed, every 50 ms.
const RATE: Messages = Messages { per_second: 20, count: None };

/// A directory of this test's own under `target/`.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-helpers/profiles").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
    dir
}

fn has_function(site: &Value, name: &str) -> bool {
    site["frames"].as_array().is_some_and(|frames| frames.iter().any(|frame| frame["function"] == name))
}

/// The call site of `pid` named by the leaking function, once it is judged a leak.
fn leaking_site(report: &Value, pid: u32) -> Option<&Value> {
    sites_of(report, pid).into_iter().find(|site| {
        let named = site["telling_frame"].as_u64().map(|index| &site["frames"][index as usize]["function"]);
        site["verdict"] == "leak" && named.is_some_and(|function| function == LEAKING)
    })
}

/// Runs `wait`; when it fails, the failure also says what the client printed (it exits when a
/// message times out, as on a machine too loaded to answer in time).
#[track_caller]
fn telling_the_client<T>(client: &GoClient, wait: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(wait)).unwrap_or_else(|panic| {
        let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("{}\nthe client's stderr:\n{}", message.unwrap_or_default(), client.process.stderr())
    })
}

/// A `go tool pprof -top` row, by the node's name: (flat, cum).
#[track_caller]
fn top_row(top: &str, name: &str) -> (u64, u64) {
    let row = top
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() >= 6 && fields[5..].join(" ") == name)
        .unwrap_or_else(|| panic!("no row for {name} in go tool pprof -top:\n{top}"));
    let count = |field: &str| field.parse().unwrap_or_else(|err| panic!("{field:?} in {row:?}: {err}"));
    (count(row[0]), count(row[3]))
}

/// The `-traces` blocks, between its `-----------+----...` rules: each a sample's labels and its
/// stack, leaf first.
fn traces(text: &str) -> Vec<String> {
    let mut blocks = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("-----------+") {
            blocks.push(String::new());
        } else {
            let block = blocks.last_mut().unwrap();
            block.push_str(line);
            block.push('\n');
        }
    }
    // What comes before the first rule is the header; after the last, nothing.
    blocks.into_iter().skip(1).filter(|block| !block.trim().is_empty()).collect()
}

/// A label of a `-traces` block (`   verdict:  leak`).
fn trace_label<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    block.lines().find_map(|line| line.trim().strip_prefix(&format!("{key}:"))).map(str::trim)
}

/// The count a `-traces` block starts its stack with.
fn trace_count(block: &str) -> u64 {
    block
        .lines()
        .find_map(|line| line.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{block}"))
}

#[test]
fn a_leaking_go_programs_call_site_opens_in_go_tool_pprof_and_as_a_flame_graph() {
    let Some(_guard) = require_privileges("a_leaking_go_programs_call_site_opens_in_go_tool_pprof_and_as_a_flame_graph") else { return };
    let dir = scratch("live");
    let (pprof, svg, recording) = (dir.join("connections.pb.gz"), dir.join("connections.svg"), dir.join("recording.jsonl"));
    let program = go_program("grpcleak", GoBuild::Normal);
    let server = GoServer::start(&program);
    let port = server.port().to_string();
    let mut trace =
        LiveTrace::start(&["--port", &port, "--pprof", path(&pprof), "--flamegraph", path(&svg), "--record", path(&recording)]);
    let client = GoClient::start_binary(&program, ClientMode::Leak, server.addr, RATE);
    let pid = client.pid();
    telling_the_client(&client, || trace.wait_for(&format!("{LEAKING} as a leak"), PATIENCE, |report| leaking_site(report, pid).is_some()));
    // Rewritten at each refresh (on a thread of its own, so a refresh or two later) and readable
    // while leaktrace runs.
    let mut during = String::new();
    for _ in 0..20 {
        trace.wait_for("the next report", PATIENCE, |_| true);
        during = go_tool_pprof(&["-top", path(&pprof)]);
        if during.contains(LEAKING) {
            break;
        }
    }
    assert!(during.contains("Type: live_connections") && during.contains(LEAKING), "{during}");

    let (last, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "leaks found: exit 1; stderr:\n{stderr}");
    // The files hold the final report.
    let leaking: Vec<&Value> = sites_of(&last, pid).into_iter().filter(|site| has_function(site, LEAKING)).collect();
    let live: u64 = leaking.iter().map(|site| site["live"].as_u64().unwrap()).sum();
    assert!(live >= 10, "a leak has at least --leak-growth live connections: {last:#}");
    let all_live: u64 = last["call_sites"].as_array().unwrap().iter().map(|site| site["live"].as_u64().unwrap()).sum();

    let top = go_tool_pprof(&["-top", path(&pprof)]);
    assert!(top.contains(&format!("Total samples = {all_live}")), "every live connection, server's included: {top}");
    assert_eq!(top_row(&top, LEAKING).1, live, "{LEAKING}'s live connections: {top}");

    let text = go_tool_pprof(&["-traces", path(&pprof)]);
    let blocks: Vec<String> = traces(&text).into_iter().filter(|block| block.contains(LEAKING)).collect();
    assert_eq!(blocks.len(), leaking.len(), "{text}");
    for block in &blocks {
        let labels = ["pid", "comm", "direction", "verdict"].map(|key| trace_label(block, key));
        assert_eq!(labels, [Some(pid.to_string().as_str()), Some("grpcleak"), Some("connect"), Some("leak")], "{block}");
    }
    assert_eq!(blocks.iter().map(|block| trace_count(block)).sum::<u64>(), live, "{text}");

    // The web view a user opens with `go tool pprof -http=: FILE`.
    for page in ["/ui/top", "/ui/flamegraph"] {
        let html = go_tool_pprof_web(&pprof, page);
        assert!(html.contains(LEAKING), "{page} of the web view: {html}");
    }

    // A replay of the recording writes the profile of its own report (frames are addresses
    // there: the processes are gone by then).
    let replayed = dir.join("replayed.pb.gz");
    let (report, status) = replay(&[path(&recording), "--format", "json", "--pprof", path(&replayed)]);
    assert_eq!(status.code(), Some(1), "{report:#}");
    let replay_live: u64 = report["call_sites"].as_array().unwrap().iter().map(|site| site["live"].as_u64().unwrap()).sum();
    let top = go_tool_pprof(&["-top", path(&replayed)]);
    assert!(replay_live > 0 && top.contains(&format!("Total samples = {replay_live}")), "{replay_live} live in the replay: {top}");

    let svg = std::fs::read_to_string(&svg).unwrap_or_else(|err| panic!("{}: {err}", svg.display()));
    assert!(svg.contains(TITLE), "the title says what it counts");
    let frame = svg
        .split("<g>")
        .find(|frame| frame.contains(&format!("<title>{LEAKING} (")))
        .unwrap_or_else(|| panic!("no {LEAKING} frame in the flame graph"));
    assert!(frame.contains(&format!("<title>{LEAKING} ({live} connections")), "{frame}");
    let red = format!("fill=\"rgb({},{},{})\"", LEAK_COLOUR.r, LEAK_COLOUR.g, LEAK_COLOUR.b);
    assert!(frame.contains(&red), "the leaking frame is red: {frame}");
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn an_unwritable_profile_path_is_refused_before_tracing_starts() {
    let dir = scratch("unwritable");
    let missing = dir.join("no/such/dir/connections.pb.gz");
    // 60 s: the refusal comes first, or the test waits them out and sees another message.
    let output = Command::new(leaktrace_binary())
        .args(["--duration", "60", "--pprof", path(&missing)])
        .output()
        .expect("running leaktrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("--pprof {}: cannot write", missing.display())), "{stderr}");

    let recording = dir.join("empty.jsonl");
    std::fs::write(&recording, "").unwrap();
    let output = Command::new(leaktrace_binary())
        .args(["replay", path(&recording), "--flamegraph", path(&dir)])
        .output()
        .expect("running leaktrace replay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a directory; name a file"), "checked before the recording is read: {stderr}");
}

#[test]
fn go_tool_pprof_reads_the_agents_connections_profile() {
    let Some(_guard) = require_privileges("go_tool_pprof_reads_the_agents_connections_profile") else { return };
    let program = go_program("grpcleak", GoBuild::Normal);
    let server = GoServer::start(&program);
    let agent = Agent::start(&["--port", &server.port().to_string()]);
    agent.wait_ready(PATIENCE);
    let client = GoClient::start_binary(&program, ClientMode::Leak, server.addr, RATE);
    let pid = client.pid().to_string();
    let report = telling_the_client(&client, || {
        agent.wait_report(&[("pid", &pid)], &format!("{LEAKING} as a leak"), PATIENCE, |report| leaking_site(report, client.pid()).is_some())
    });
    let live_then = leaking_site(&report, client.pid()).unwrap()["live"].as_u64().unwrap();

    let url = agent.url(&format!("/debug/pprof/connections?pid={pid}"));
    let top = go_tool_pprof(&["-top", &url]);
    assert!(top.contains("Type: live_connections"), "{top}");
    // The leak only grows.
    let (_, cum) = top_row(&top, LEAKING);
    assert!(cum >= live_then, "{LEAKING}: {cum} live in the profile, {live_then} in the report before: {top}");
    // Narrowed by the report API's parameters: the client's call sites only.
    let text = go_tool_pprof(&["-traces", &url]);
    let blocks = traces(&text);
    assert!(!blocks.is_empty() && blocks.iter().all(|block| trace_label(block, "pid") == Some(pid.as_str())), "{text}");

    let response = ureq::get(&url).call().unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok()).map(String::from);
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    let body = response.into_body().read_to_vec().unwrap();
    assert_eq!(&body[..2], [0x1f, 0x8b], "gzip");
    let (status, text) = agent.get("/debug/pprof/connections", &[("verdict", "LEAK")]);
    assert_eq!((status, text.as_str()), (400, "verdict=\"LEAK\": expected leak, suspect, churn or ok\n"));
}
