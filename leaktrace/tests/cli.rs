//! The binary's contract without privileges: bad input gets a clear error and exit status 2,
//! and `replay` judges a recording with exit status 1 when it finds a leak, 0 when not.
use std::{io::Write, process::Command};

fn leaktrace(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leaktrace"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running leaktrace");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[test]
fn bad_flags_exit_2_with_the_reason() {
    let (code, _, stderr) = leaktrace(&["--format", "xml"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value 'xml' for '--format <FORMAT>'"), "{stderr}");
    let (code, _, stderr) = leaktrace(&["--interval", "0", "--duration", "1"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("--interval 0s: must be longer than zero"), "{stderr}");
    let (code, _, stderr) = leaktrace(&["--duration", "5 parsecs"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value '5 parsecs' for '--duration <DURATION>'") && stderr.contains("30s, 5m"), "{stderr}");
    let (code, _, stderr) = leaktrace(&["replay", "/nonexistent/recording.jsonl"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("replay: cannot open /nonexistent/recording.jsonl"), "{stderr}");
    let (code, _, stderr) = leaktrace(&["replay", "-"], "{\"type\":\"start\",\"ts_ns\":1,\"version\":1}\nnot json\n");
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2:"), "{stderr}");
}

/// A recording of `n` connects from one call site, one per 100 ms, closed after `close_ms` (or
/// never).
fn recording(n: u64, close_ms: Option<u64>) -> String {
    let mut lines = vec![r#"{"type":"start","ts_ns":1000000000,"version":1}"#.to_string()];
    for i in 0..n {
        let ts = 1_000_000_000 + i * 100_000_000;
        let sk = format!("0x{:x}", 0xffff_0000u64 + i);
        lines.push(format!(
            r#"{{"type":"connect","ts_ns":{ts},"cpu":0,"socket":{{"sk":"{sk}","birth_ns":{ts}}},"cookie":{},"owner":{{"pid":42,"tid":42,"process_start_ns":5,"cgroup_id":1,"comm":"leaky"}},"local":"127.0.0.1:0","remote":"127.0.0.1:9000","state":"SYN_SENT","stack":["0x401000","0x402000"]}}"#,
            i + 1
        ));
        if let Some(ms) = close_ms {
            let end = ts + ms * 1_000_000;
            lines.push(format!(
                r#"{{"type":"state","ts_ns":{end},"cpu":0,"socket":{{"sk":"{sk}","birth_ns":{ts}}},"cookie":{},"old_state":"ESTABLISHED","new_state":"CLOSE","local":"127.0.0.1:5","remote":"127.0.0.1:9000"}}"#,
                i + 1
            ));
        }
    }
    let end = 1_000_000_000 + n * 100_000_000 + 3_000_000_000;
    lines.push(format!(r#"{{"type":"end","ts_ns":{end}}}"#));
    lines.join("\n") + "\n"
}

#[test]
fn replay_exits_1_on_a_leak_and_0_without() {
    let (code, stdout, stderr) = leaktrace(&["replay", "-", "--format", "json"], &recording(50, None));
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["call_sites"][0]["verdict"], "leak");
    assert_eq!(report["call_sites"][0]["live"], 50);
    assert_eq!(report["duration_s"], 8.0);

    let (code, stdout, _) = leaktrace(&["replay", "-", "--format", "json"], &recording(50, Some(5)));
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["call_sites"][0]["verdict"], "churn");

    // Filters apply in a replay: nothing of pid 7 here.
    let (code, stdout, _) = leaktrace(&["replay", "-", "--format", "json", "--pid", "7"], &recording(50, None));
    assert_eq!(code, 0);
    assert!(stdout.contains("\"call_sites\": []"), "{stdout}");
}

#[test]
fn replay_streams_a_report_per_interval_of_recorded_time() {
    let (code, stdout, _) = leaktrace(&["replay", "-", "--format", "jsonl", "--interval", "1"], &recording(50, None));
    assert_eq!(code, 1);
    let reports: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    // Events span 4.9 s from the start: refreshes at 1, 2, 3, 4 s, then the final report.
    assert_eq!(reports.len(), 5, "{stdout}");
    let lives: Vec<u64> = reports.iter().map(|r| r["call_sites"][0]["live"].as_u64().unwrap()).collect();
    assert_eq!(lives, vec![10, 20, 30, 40, 50]);
    let verdicts: Vec<&str> = reports.iter().map(|r| r["call_sites"][0]["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts.last(), Some(&"leak"));
}
