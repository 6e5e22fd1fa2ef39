//! `leaktrace diff` end to end: the real binary traces a real leaking Go gRPC client (a new
//! connection per message, never closed) and its fix (each connection closed after use), writes
//! its reports and recording as a user would (`--format json`, `--format jsonl`, `--record`),
//! and `leaktrace diff` compares them: two points of one recording show the leak growing (exit
//! 1); the fixed program against the leaking one's report shows the leak gone (exit 0).
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use leaktrace_tests::{
    cli::leaktrace_binary,
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages},
    require_privileges,
};
use serde_json::Value;

/// `leaktrace ARGS` with its stdout written to a file, stopped with Ctrl-C.
struct TraceToFile {
    child: Child,
    stderr: Option<thread::JoinHandle<String>>,
}

impl TraceToFile {
    /// Starts it and returns once its probes are attached (it says so on stderr).
    #[track_caller]
    fn start(args: &[&str], stdout: &Path) -> Self {
        let mut child = Command::new(leaktrace_binary())
            .args(args)
            .stdout(File::create(stdout).expect("creating the output file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace");
        let stderr = child.stderr.take().expect("piped stderr");
        let (attached, attached_seen) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" attached to ") {
                    let _ = attached.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut trace = Self { child, stderr: Some(stderr) };
        if attached_seen.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = trace.child.kill();
            panic!("leaktrace attached no probe; stderr:\n{}", trace.stderr());
        }
        trace
    }

    /// Ctrl-C, as a user would; returns the exit status.
    #[track_caller]
    fn interrupt(mut self) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for leaktrace");
        eprintln!("leaktrace {status}; stderr:\n{}", self.stderr());
        status
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default()
    }
}

impl Drop for TraceToFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leaktrace diff ARGS`: stdout, stderr, exit code.
fn diff(args: &[&str]) -> (String, String, Option<i32>) {
    let output = Command::new(leaktrace_binary()).arg("diff").args(args).output().expect("running leaktrace diff");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&output.stdout), text(&output.stderr), output.status.code())
}

/// `leaktrace diff ARGS --format json`, parsed, and its exit code.
#[track_caller]
fn diff_json(args: &[&str]) -> (Value, Option<i32>) {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let (stdout, stderr, code) = diff(&args);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("diff {args:?}: not JSON ({err}): {stdout}\nstderr: {stderr}"));
    (json, code)
}

/// The diff's call sites of the gRPC client (its connects; the server's are accepts).
fn client_sites(diff: &Value) -> Vec<&Value> {
    diff["call_sites"].as_array().unwrap().iter().filter(|site| site["comm"] == "grpcleak" && site["direction"] == "connect").collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-diff-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Traces a `grpcleak` client in `mode` handling 80 messages at 20/s, until its connections
/// are past --min-age; returns leaktrace's exit status and the client, still running.
fn trace_client(server: &GoServer, mode: ClientMode, leaktrace_args: &[&str], stdout: &str) -> (ExitStatus, GoClient) {
    let port = server.port().to_string();
    let mut args = vec!["--port", &port, "--go-ancestry", "off"];
    args.extend_from_slice(leaktrace_args);
    let trace = TraceToFile::start(&args, Path::new(stdout));
    let mut client = GoClient::start(GoBuild::Normal, mode, server.addr, Messages { per_second: 20, count: Some(80) });
    client.wait_handled(80);
    // Past --min-age (2 s), so the last connections count as unclosed.
    thread::sleep(Duration::from_secs(3));
    (trace.interrupt(), client)
}

#[test]
fn two_points_of_a_leaking_programs_recording_show_its_call_site_growing_exit_1() {
    let Some(_guard) = require_privileges("two_points_of_a_leaking_programs_recording_show_its_call_site_growing_exit_1") else { return };
    let dir = TempDir::new("points");
    let (recording, reports) = (dir.path("leak.rec"), dir.path("leak.jsonl"));
    let server = GoServer::grpc(GoBuild::Normal);
    // The client keeps running (and holding its connections) while its recording is compared.
    let (status, _client) = trace_client(&server, ClientMode::Leak, &["--record", &recording, "--format", "jsonl"], &reports);
    assert_eq!(status.code(), Some(1), "the live view found the leak");

    // An early point: the first report in which the client had some connections, not all.
    let text = std::fs::read_to_string(&reports).unwrap();
    let early = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|report| {
            report["call_sites"].as_array().unwrap().iter().any(|site| {
                site["comm"] == "grpcleak" && site["direction"] == "connect" && (5..60).contains(&site["live"].as_u64().unwrap())
            })
        })
        .unwrap_or_else(|| panic!("no report shows the client part way: {text}"));
    let at = format!("{recording}@{}s", early["duration_s"].as_f64().unwrap());
    let early_site = early["call_sites"].as_array().unwrap().iter().find(|site| site["comm"] == "grpcleak" && site["direction"] == "connect").unwrap();

    let (json, code) = diff_json(&[&at, &recording]);
    assert_eq!(code, Some(1), "a leak that grew: exit 1; {json:#}");
    assert_eq!(json["matching"], "exact", "two points of one recording are matched exactly");
    assert_eq!((json["before"]["kind"].as_str(), json["after"]["kind"].as_str()), (Some("recording"), Some("recording")));
    let sites = client_sites(&json);
    assert_eq!(sites.len(), 1, "{json:#}");
    let site = sites[0];
    let (before, after) = (&site["before"], &site["after"]);
    assert_eq!((site["change"].as_str(), site["verdict"].as_str(), site["leaking"].as_bool()), (Some("grew"), Some("leak"), Some(true)), "{site:#}");
    assert_eq!(after["live"], 80, "{site:#}");
    let grown = 80 - before["live"].as_i64().unwrap();
    assert_eq!(site["live_change"].as_i64(), Some(grown), "{site:#}");
    assert_eq!(site["opened_between"].as_u64(), Some(80 - before["opened"].as_u64().unwrap()), "{site:#}");
    assert_eq!(site["closed_between"], 0, "{site:#}");
    let changes: Vec<i64> = json["call_sites"].as_array().unwrap().iter().map(|site| site["live_change"].as_i64().unwrap()).collect();
    assert!(changes.windows(2).all(|pair| pair[0] >= pair[1]), "most grown first: {changes:?}");

    // The live view's own jsonl at the same times tells the same story.
    let (from_reports, code) = diff_json(&[&format!("{reports}@{}s", early["duration_s"]), &reports]);
    assert_eq!(code, Some(1));
    let site = client_sites(&from_reports)[0].clone();
    assert_eq!((site["change"].as_str(), site["after"]["live"].as_u64()), (Some("grew"), Some(80)), "{site:#}");
    // That report was the live view's at the time, not a replay: a connection still in the ring
    // buffer then may be counted there and not here, so its own figures are compared.
    assert_eq!(site["before"]["live"], early_site["live"], "{site:#}");
    // The client still runs, so the recording's stacks were named as the live view named them.
    let named = client_sites(&json)[0]["call_site"].as_str().unwrap().to_string();
    assert!(!named.starts_with("0x"), "a recording of a running process names its frames: {named}");
    assert_eq!(site["call_site"].as_str(), Some(named.as_str()));
    assert_eq!(site["live_change"].as_i64(), Some(80 - early_site["live"].as_i64().unwrap()), "{site:#}");

    // The table, as a user reads it.
    let (table, _, code) = diff(&[&at, &recording]);
    assert_eq!(code, Some(1));
    assert!(table.contains("matched exactly"), "{table}");
    let row = table.lines().find(|line| line.starts_with("GREW") && line.contains("grpcleak") && line.contains("connect"));
    let row = row.unwrap_or_else(|| panic!("no GREW row for the client:\n{table}"));
    assert!(row.ends_with("LEAK") && row.contains(&format!("+{grown}")), "{row}");

    // A time past the recording's end is an error that says so.
    let (_, stderr, code) = diff(&[&format!("{recording}@3600s"), &recording]);
    assert_eq!(code, Some(2));
    assert!(stderr.starts_with("leaktrace: diff: BEFORE: ") && stderr.contains("3600s is past the end of the recording"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn the_fixed_program_against_the_leaking_ones_report_shows_the_leak_gone_exit_0() {
    let Some(_guard) = require_privileges("the_fixed_program_against_the_leaking_ones_report_shows_the_leak_gone_exit_0") else { return };
    let dir = TempDir::new("fix");
    let (leaking, fixed) = (dir.path("leaking.json"), dir.path("fixed.json"));
    let server = GoServer::grpc(GoBuild::Normal);
    // Each client is stopped before the next run, as a fixed program replaces the leaking one.
    assert_eq!(trace_client(&server, ClientMode::Leak, &["--format", "json"], &leaking).0.code(), Some(1));
    assert_eq!(trace_client(&server, ClientMode::Churn, &["--format", "json"], &fixed).0.code(), Some(0));

    let (json, code) = diff_json(&[&leaking, &fixed]);
    assert_eq!(code, Some(0), "nothing leaks after the fix: exit 0; {json:#}");
    assert_eq!(json["matching"], "portable", "two runs (two client processes) are matched by names");
    assert_eq!(json["before"]["kind"], "report");
    let leak = client_sites(&json)
        .into_iter()
        .find(|site| site["before"]["verdict"] == "leak")
        .unwrap_or_else(|| panic!("the leaking call site is missing: {json:#}"));
    assert!(["shrank", "gone"].contains(&leak["change"].as_str().unwrap()), "{leak:#}");
    assert_eq!(leak["before"]["live"], 80, "{leak:#}");
    assert_eq!(leak["after"]["live"].as_u64().unwrap_or(0), 0, "{leak:#}");
    assert_eq!((leak["live_change"].as_i64(), leak["leaking"].as_bool()), (Some(-80), Some(false)), "{leak:#}");
    assert_eq!(leak["opened_between"], Value::Null, "across runs the counters start again");
    assert_eq!(json["summary"]["leaking"], 0);

    // The other way round, the leak is what changed: exit 1.
    let (json, code) = diff_json(&[&fixed, &leaking]);
    assert_eq!(code, Some(1), "{json:#}");
    let leak = client_sites(&json).into_iter().find(|site| site["leaking"] == true).unwrap_or_else(|| panic!("{json:#}"));
    assert!(["grew", "new"].contains(&leak["change"].as_str().unwrap()), "{leak:#}");
    assert_eq!((leak["after"]["live"].as_u64(), leak["live_change"].as_i64()), (Some(80), Some(80)), "{leak:#}");
}
