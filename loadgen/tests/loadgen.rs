//! The real binary over the host's loopback: every connection the clients complete is one the
//! server completed, in both close modes, and `hold` holds exactly what it says until released.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;

fn loadgen(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().unwrap();
    assert!(output.status.success(), "loadgen {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a result line")).unwrap()
}

#[test]
fn every_connection_completes_on_both_sides_in_both_close_modes() {
    for close in ["normal", "rst"] {
        let result = loadgen(&["run", "--netns", "host", "--connections", "300", "--threads", "3", "--close", close]);
        assert_eq!(result["type"], "result");
        assert_eq!(result["connections"], 300, "{result}");
        assert_eq!(result["server_connections"], 300, "{result}");
        assert_eq!(result["errors"], 0, "{result}");
        assert_eq!(result["ports"].as_array().unwrap().len(), 4);
        assert!(result["cpu_user_s"].as_f64().unwrap() + result["cpu_sys_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn a_paced_run_is_not_faster_than_its_rate() {
    let result = loadgen(&["run", "--netns", "host", "--rate", "2000", "--duration", "0.5"]);
    let connections = result["connections"].as_u64().unwrap();
    // 2000/s for 0.5 s is 1000 connections at most: each thread's schedule is absolute.
    assert!(connections <= 1000 && connections > 0, "{result}");
}

#[test]
fn hold_holds_its_connections_across_workers_until_released() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--netns", "host", "--connections", "250", "--per-process", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(held["type"], "held");
    assert_eq!(held["connections"], 250);
    assert_eq!(held["processes"], 3, "100 + 100 + 50");
    drop(child.stdin.take());
    let released: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(released["type"], "released");
    assert!(child.wait().unwrap().success());
}
