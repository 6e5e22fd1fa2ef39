//! Files that are not what a command expects (missing, a directory, unreadable, binary, cut
//! short, malformed) and output paths that cannot be written: one line on stderr naming the
//! file and the problem, exit status 2, and no output file left half-written. Unprivileged.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn leaktrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leaktrace")).args(args).output().expect("running leaktrace")
}

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-bad-input-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts exit status 2 and one line of stderr holding `expected`; returns stdout.
fn refused(output: &Output, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const START: &str = r#"{"type":"start","ts_ns":1000000000,"version":1}"#;
const CONNECT: &str = r#"{"type":"connect","ts_ns":1100000000,"cpu":0,"socket":{"sk":"0xffff0001","birth_ns":1100000000},"cookie":1,"owner":{"pid":42,"tid":42,"process_start_ns":5,"cgroup_id":1,"comm":"leaky"},"local":"127.0.0.1:0","remote":"127.0.0.1:9000","state":"SYN_SENT","stack":["0x401000"]}"#;

#[test]
fn replay_of_a_directory_says_it_is_one() {
    let dir = scratch("directory");
    let stdout = refused(&leaktrace(&["replay", path(&dir)]), &format!("replay: {} is a directory", dir.display()));
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn replay_of_a_binary_file_names_its_first_line() {
    let dir = scratch("binary");
    let file = dir.join("core.bin");
    fs::write(&file, [0x7f, b'E', b'L', b'F', 0, 0xff, 0xfe, b'\n', 1, 2, 3]).unwrap();
    refused(&leaktrace(&["replay", path(&file)]), &format!("replay: {}: line 1: not UTF-8 text", dir.join("core.bin").display()));
    // Text, but not a recording.
    fs::write(&file, "hello\n").unwrap();
    refused(&leaktrace(&["replay", path(&file)]), "line 1: expected value");
}

#[test]
fn replay_of_a_malformed_line_in_the_middle_names_it() {
    let dir = scratch("malformed");
    let file = dir.join("recording.jsonl");
    fs::write(&file, format!("{START}\n{CONNECT}\n{{\"type\":\"connect\",\"ts_ns\":\"soon\"}}\n{CONNECT}\n")).unwrap();
    refused(&leaktrace(&["replay", path(&file), "--format", "json"]), "line 3: invalid type");
}

#[test]
fn replay_of_a_recording_cut_mid_line_reads_up_to_its_last_whole_line() {
    let dir = scratch("cut");
    let file = dir.join("killed.jsonl");
    let whole = format!("{START}\n{CONNECT}\n");
    fs::write(&file, format!("{whole}{}", &CONNECT[..40])).unwrap();
    let output = leaktrace(&["replay", path(&file), "--format", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(matches!(output.status.code(), Some(0 | 1)), "{stderr}");
    assert!(stderr.contains("last line (3) is cut short"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tracker"]["events"], 1, "the whole connect line was read: {report:#}");

    // A first line cut short is no recording at all.
    fs::write(&file, &START[..20]).unwrap();
    refused(&leaktrace(&["replay", path(&file)]), "line 1: EOF while parsing");
}

#[test]
fn replay_of_an_unreadable_file_says_so() {
    let dir = scratch("unreadable");
    let file = dir.join("secret.jsonl");
    fs::write(&file, format!("{START}\n{CONNECT}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o000)).unwrap();
    let output = if unsafe { libc::geteuid() } == 0 {
        // Root reads any file: ask as nobody, through a world-readable directory.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_leaktrace"), "replay", path(&file)])
            .output()
            .expect("running setpriv (util-linux)")
    } else {
        leaktrace(&["replay", path(&file)])
    };
    refused(&output, &format!("replay: cannot open {}: Permission denied", file.display()));
}

#[test]
fn record_to_an_unwritable_path_is_refused_before_the_probes_load() {
    let dir = scratch("record");
    // 60 s: the refusal comes first, or the test waits them out and sees another message.
    let missing = dir.join("no/such/dir/rec.jsonl");
    refused(&leaktrace(&["--duration", "60", "--record", path(&missing)]), &format!("--record {}: cannot write", missing.display()));
    assert!(!missing.exists());
    refused(&leaktrace(&["--duration", "60", "--record", path(&dir)]), &format!("--record {}: is a directory", dir.display()));
}
