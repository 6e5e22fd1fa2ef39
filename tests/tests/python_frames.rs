//! Python call sites end to end, as a user runs leaktrace: the real binary tracing real CPython
//! interpreters (Debian's 3.11 always, pyenv's 3.8 to 3.13 where installed). A connection's call
//! site must name the application's Python function and line (not `socket.py`, not psycopg2's
//! internals, not the interpreter's C frames), keep two functions apart, and survive the
//! process exiting, in other mount and pid namespaces and in a podman container too; a psycopg2
//! worker against a real PostgreSQL server leaks (or churns) under its own `handle_job`; an
//! interpreter leaktrace cannot walk (3.7) keeps its native stack and says why.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use leaktrace_tests::{
    cli::{LiveTrace, sites_of},
    containers::{self, Container},
    go::go_tool_pprof,
    python::{DEBIAN_PYTHON, Postgres, PythonProgram, helper, interpreters, marker_line},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

/// A server that accepts and holds every connection until the test ends.
fn holding_server() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    (port, handle)
}

/// The frame a call site is named by.
fn telling(site: &Value) -> Option<&Value> {
    site["frames"].get(site["telling_frame"].as_u64()? as usize)
}

/// The connect call site of `pid` named by the Python function `function`.
fn python_site<'a>(report: &'a Value, pid: u32, function: &str) -> Option<&'a Value> {
    sites_of(report, pid).into_iter().find(|site| {
        site["direction"] == "connect"
            && telling(site).is_some_and(|frame| frame["function"] == function && frame["runtime"] == "python")
    })
}

fn opened(site: &Value) -> u64 {
    site["opened"].as_u64().unwrap()
}

/// What a named Python call site shows: its function's frame, marked as Python, in `helper`
/// at the line that connects, after the native frames, and the interpreter's own frames and
/// the standard library's not chosen.
#[track_caller]
fn assert_named(site: &Value, function: &str, helper: &Path, what: &str) {
    assert_named_in(site, function, helper, &helper.display().to_string(), what);
}

/// [`assert_named`] for a helper the process sees at `file` (in a container).
#[track_caller]
fn assert_named_in(site: &Value, function: &str, helper: &Path, file: &str, what: &str) {
    let frame = telling(site).unwrap();
    assert_eq!(frame["function"], function, "{what}: {site:#}");
    assert_eq!(frame["runtime"], "python", "{what}: {frame:#}");
    assert_eq!(frame["file"], file, "{what}: {frame:#}");
    assert_eq!(frame["line"].as_u64(), Some(marker_line(helper, function)), "{what}: {frame:#}");
    assert!(frame["module"].is_null(), "{what}: {frame:#}");
    let frames = site["frames"].as_array().unwrap();
    let first_python = frames.iter().position(|frame| frame["runtime"] == "python").unwrap();
    assert!(first_python > 0, "{what}: the native frames come first: {site:#}");
    assert!(frames[first_python..].iter().all(|frame| frame["runtime"] == "python"), "{what}: {site:#}");
    // The module's code is the outermost frame: the whole Python stack was taken.
    assert_eq!(frames.last().unwrap()["function"], "<module>", "{what}: {site:#}");
}

#[test]
fn two_functions_leaking_sockets_are_two_call_sites_each_named_by_its_function_and_line() {
    let Some(_guard) = require_privileges("two_functions_leaking_sockets_are_two_call_sites_each_named_by_its_function_and_line")
    else {
        return;
    };
    let script = helper("two_leaks.py");
    for interpreter in interpreters() {
        let what = interpreter.display().to_string();
        let (port, _server) = holding_server();
        // Started before leaktrace: the scan at start registers it, so every connect is walked.
        let mut program = PythonProgram::start(&interpreter, &script, &["127.0.0.1", &port.to_string(), "5", "0"]);
        let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
        program.go();
        program.wait_line("round 5", PATIENCE);
        let pid = program.pid();
        let report = trace.wait_for(&format!("{what}: open_report and open_feed named"), PATIENCE, |report| {
            ["open_report", "open_feed"].iter().all(|name| python_site(report, pid, name).is_some_and(|site| opened(site) == 5))
        });
        for function in ["open_report", "open_feed"] {
            assert_named(python_site(&report, pid, function).unwrap(), function, &script, &what);
        }
        // open_report dials through socket.create_connection: the standard library's frame is
        // in the stack, innermost, and not the one the call site is named by.
        let report_site = python_site(&report, pid, "open_report").unwrap();
        let python: Vec<&Value> = report_site["frames"].as_array().unwrap().iter().filter(|f| f["runtime"] == "python").collect();
        assert!(python[0]["function"] == "create_connection", "{what}: {report_site:#}");
        assert!(python[0]["file"].as_str().unwrap().ends_with("/socket.py"), "{what}: {report_site:#}");
        let connects: u64 = sites_of(&report, pid).iter().filter(|site| site["direction"] == "connect").map(|site| opened(site)).sum();
        assert_eq!(connects, 10, "{what}: every connect is in one of the two call sites");
        let (last, status, stderr) = trace.interrupt();
        assert!(matches!(status.code(), Some(0 | 1)), "{what}: {status}: {stderr}");
        assert!(python_site(&last, pid, "open_feed").is_some(), "{what}: the final report names them too");
        program.finish();
        eprintln!("{what}: two call sites named");
    }
}

/// A psycopg2 worker (Debian's python3-psycopg2) against a throwaway PostgreSQL cluster, started
/// before leaktrace.
fn psycopg2_worker(mode: &str, jobs: u32) -> Option<(Postgres, PythonProgram)> {
    if let Some(reason) = Postgres::unavailable() {
        eprintln!("skipped: {reason}");
        return None;
    }
    let postgres = Postgres::start();
    let program = PythonProgram::start(
        Path::new(DEBIAN_PYTHON),
        &helper("pg_jobs.py"),
        &[mode, "127.0.0.1", &postgres.port.to_string(), &jobs.to_string(), "20"],
    );
    Some((postgres, program))
}

#[test]
fn a_psycopg2_worker_leaking_a_connection_per_job_is_a_leak_named_handle_job() {
    let Some(_guard) = require_privileges("a_psycopg2_worker_leaking_a_connection_per_job_is_a_leak_named_handle_job") else {
        return;
    };
    let Some((postgres, mut program)) = psycopg2_worker("leak", 300) else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-helpers/python_frames");
    std::fs::create_dir_all(&dir).unwrap();
    let (pprof, svg) = (dir.join("connections.pb.gz"), dir.join("connections.svg"));
    let (pprof, svg) = (pprof.to_str().unwrap(), svg.to_str().unwrap());
    let mut trace = LiveTrace::start(&["--port", &postgres.port.to_string(), "--pprof", pprof, "--flamegraph", svg]);
    program.go();
    let pid = program.pid();
    let report = trace.wait_for("handle_job named as a leak", PATIENCE, |report| {
        python_site(report, pid, "handle_job").is_some_and(|site| site["verdict"] == "leak")
    });
    let site = python_site(&report, pid, "handle_job").unwrap();
    let script = helper("pg_jobs.py");
    assert_named(site, "handle_job", &script, "psycopg2 leak");
    // libpq's connect is below it, psycopg2's package frames between: named by neither.
    let frames = site["frames"].as_array().unwrap();
    assert!(frames.iter().any(|f| f["module"].as_str().is_some_and(|m| m.contains("libpq"))), "{site:#}");
    // Every connection of the worker is in this one call site, all kept.
    let connects: Vec<&Value> = sites_of(&report, pid).into_iter().filter(|site| site["direction"] == "connect").collect();
    assert_eq!(connects.len(), 1, "{connects:#?}");
    assert_eq!(site["live"], site["opened"], "{site:#}");
    // The profiles name it as the table does, with its line, as their users open them.
    let (last, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "leaks found: exit 1; stderr:\n{stderr}");
    let live = python_site(&last, pid, "handle_job").unwrap()["live"].as_u64().unwrap();
    let name = format!("handle_job (pg_jobs.py:{})", marker_line(&script, "handle_job"));
    let top = go_tool_pprof(&["-top", pprof]);
    let row = top.lines().find(|row| row.ends_with(&name)).unwrap_or_else(|| panic!("no {name} in:\n{top}"));
    let cumulative: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(cumulative, live, "{row}");
    let graph = std::fs::read_to_string(svg).unwrap();
    assert!(graph.contains(&name), "{name} in the flame graph");
}

#[test]
fn the_same_worker_closing_its_connections_is_churn_not_a_leak() {
    let Some(_guard) = require_privileges("the_same_worker_closing_its_connections_is_churn_not_a_leak") else { return };
    let Some((postgres, mut program)) = psycopg2_worker("close", 100) else { return };
    let mut trace = LiveTrace::start(&["--port", &postgres.port.to_string()]);
    program.go();
    program.wait_line("job 100", PATIENCE);
    let pid = program.pid();
    let report = trace.wait_for("handle_job's 100 connections closed", PATIENCE, |report| {
        python_site(report, pid, "handle_job").is_some_and(|site| opened(site) == 100 && site["live"] == 0)
    });
    let site = python_site(&report, pid, "handle_job").unwrap();
    assert_named(site, "handle_job", &helper("pg_jobs.py"), "psycopg2 close");
    assert_eq!(site["verdict"], "churn", "{site:#}");
    let (last, status, stderr) = trace.interrupt();
    assert!(status.success(), "{stderr}");
    let site = python_site(&last, pid, "handle_job").unwrap();
    assert_ne!(site["verdict"], "leak", "{site:#}");
}

#[test]
fn a_python_process_started_later_in_its_own_namespaces_is_named_after_it_exits() {
    let Some(_guard) =
        require_privileges("a_python_process_started_later_in_its_own_namespaces_is_named_after_it_exits")
    else {
        return;
    };
    let (port, _server) = holding_server();
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    // The interpreter is a copy on a tmpfs mounted in a mount namespace of its own: the host's
    // paths do not show it. Started after leaktrace: registered at its first connect.
    let private = std::env::temp_dir().join(format!("leaktrace-pyns-{}", std::process::id()));
    std::fs::create_dir_all(&private).unwrap();
    let script = helper("two_leaks.py");
    let inner = format!(
        "mount -t tmpfs leaktrace-pyns {dir} && cp {DEBIAN_PYTHON} {dir}/python3.11 && exec {dir}/python3.11 {script} 127.0.0.1 {port} 6 0.3",
        dir = private.display(),
        script = script.display()
    );
    // Its own pid namespace too, as in a container: it is pid 1 there, unshare's child here.
    let mut command = Command::new("unshare");
    command.args(["--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c", &inner]);
    let mut program = PythonProgram::start_command(command, "python3.11 in its own mount and pid namespaces".into());
    program.go();
    program.wait_line("round 6", PATIENCE);
    let unshare = program.pid();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let pid: u32 = children.split_whitespace().next().unwrap_or_else(|| panic!("no child of unshare {unshare}")).parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|line| line.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "pid 1 in its namespace: {nspid}");
    assert!(!private.join("python3.11").exists(), "the copy is not visible from the host");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, private.join("python3.11"));
    program.finish();
    // The process is gone; its call sites stay named.
    let connects = |report: &Value| -> u64 {
        sites_of(report, pid).iter().filter(|site| site["direction"] == "connect").map(|site| opened(site)).sum()
    };
    // Reports queue up: the first with all 12 connects, whichever came after the exit.
    let report = trace.wait_for("the 12 connects, both functions named", PATIENCE, |report| {
        connects(report) == 12 && ["open_report", "open_feed"].iter().all(|name| python_site(report, pid, name).is_some())
    });
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "pid {pid} exited");
    for function in ["open_report", "open_feed"] {
        let site = python_site(&report, pid, function).unwrap();
        assert_named(site, function, &script, "mount namespace");
        // Its first connect came before it was registered; the later rounds are walked.
        assert!(opened(site) >= 4, "{site:#}");
    }
    // What was not walked says why.
    for site in sites_of(&report, pid) {
        if telling(site).is_none_or(|frame| frame["runtime"] != "python") {
            let note = site["python_frames"].as_str().unwrap_or_else(|| panic!("{site:#}"));
            assert!(note.contains("before leaktrace registered the process"), "{note}");
        }
    }
    // The final report, well after the exit, still names them.
    let (last, status, stderr) = trace.interrupt();
    // Exit 1 once the held connections read as a leak, 0 before.
    assert!(matches!(status.code(), Some(0 | 1)), "{status}: {stderr}");
    assert_eq!(connects(&last), 12, "{last:#}");
    for function in ["open_report", "open_feed"] {
        assert_named(python_site(&last, pid, function).unwrap(), function, &script, "final report");
    }
    let _ = std::fs::remove_dir(&private);
}

#[test]
fn an_interpreter_leaktrace_cannot_walk_keeps_its_native_stack_and_says_why_once() {
    let Some(_guard) = require_privileges("an_interpreter_leaktrace_cannot_walk_keeps_its_native_stack_and_says_why_once")
    else {
        return;
    };
    let Some(interpreter) = std::fs::read_dir("/root/.pyenv/versions")
        .ok()
        .and_then(|dir| dir.flatten().map(|entry| entry.path().join("bin/python3.7")).find(|path| path.exists()))
    else {
        eprintln!("skipped: no pyenv build of Python 3.7 (an unsupported version) under /root/.pyenv/versions");
        return;
    };
    let (port, _server) = holding_server();
    // Two processes of it: the reason is logged once.
    let script = helper("two_leaks.py");
    let mut programs: Vec<PythonProgram> =
        (0..2).map(|_| PythonProgram::start(&interpreter, &script, &["127.0.0.1", &port.to_string(), "3", "0"])).collect();
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    for program in &mut programs {
        program.go();
        program.wait_line("round 3", PATIENCE);
    }
    let pids: Vec<u32> = programs.iter().map(PythonProgram::pid).collect();
    let report = trace.wait_for("both processes' 6 connects", PATIENCE, |report| {
        pids.iter().all(|&pid| sites_of(report, pid).iter().map(|site| opened(site)).sum::<u64>() == 6)
    });
    for &pid in &pids {
        for site in sites_of(&report, pid) {
            let frames = site["frames"].as_array().unwrap();
            assert!(frames.iter().all(|frame| frame["runtime"].is_null()), "native frames only: {site:#}");
            assert!(frames.first().is_some_and(|frame| frame["function"] == "__libc_connect"), "{site:#}");
            let note = site["python_frames"].as_str().unwrap_or_else(|| panic!("no python_frames: {site:#}"));
            assert!(note.contains("Python 3.7") && note.contains("3.8 to 3.13"), "{note}");
            assert!(note.contains("native stack"), "{note}");
        }
    }
    let (_, status, stderr) = trace.interrupt();
    assert!(matches!(status.code(), Some(0 | 1)), "{status}: {stderr}");
    let warnings = stderr.lines().filter(|line| line.contains("leaktrace knows the layouts of CPython")).count();
    assert_eq!(warnings, 1, "said once for both processes:\n{stderr}");
}

#[test]
fn debians_python_in_a_podman_container_is_named_and_attributed_to_its_container() {
    let Some(_guard) = require_privileges("debians_python_in_a_podman_container_is_named_and_attributed_to_its_container")
    else {
        return;
    };
    if let Some(reason) = containers::unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let (port, _server) = holding_server();
    let mut trace = LiveTrace::start(&["--port", &port.to_string()]);
    // The host's root as the container's (an overlay: its writes stay in the container), so its
    // python3.11 is Debian's; the helper mounted at /app. It exits after its last round.
    let script = helper("two_leaks.py");
    let helpers = format!("{}:/app:ro", script.parent().unwrap().display());
    let command = format!("(sleep 1; echo go) | exec {DEBIAN_PYTHON} /app/two_leaks.py 127.0.0.1 {port} 6 0.3");
    let container = Container::run(
        "python3.11 two_leaks.py",
        &["--network", "host", "-v", &helpers, "--rootfs", "/:O", "sh", "-c", &command].map(String::from),
    );
    let in_container = |report: &Value| -> Vec<Value> {
        report["call_sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|site| site["container"]["id"] == container.id() && site["direction"] == "connect")
            .cloned()
            .collect()
    };
    let report = trace.wait_for("the container's 12 connects, both functions named", PATIENCE, |report| {
        let sites = in_container(report);
        sites.iter().map(opened).sum::<u64>() == 12
            && ["open_report", "open_feed"]
                .iter()
                .all(|name| sites.iter().any(|site| telling(site).is_some_and(|frame| frame["function"] == *name)))
    });
    for function in ["open_report", "open_feed"] {
        let sites = in_container(&report);
        let site = sites.iter().find(|site| telling(site).is_some_and(|frame| frame["function"] == function)).unwrap();
        assert_named_in(site, function, &script, "/app/two_leaks.py", "podman");
        assert_eq!(site["container"]["runtime"], "podman", "{site:#}");
        assert!(opened(site) >= 4, "{site:#}");
    }
}
