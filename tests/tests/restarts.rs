//! leaktrace killed and started again, and two copies at once, as happens on a production host:
//! SIGKILL mid-leak leaves nothing loaded (no program, no map, nothing pinned), the next run
//! finds the leak's connections as born before start, and the killed run's recording replays up
//! to its last complete line; two instances tracing the same process both count every
//! connection, exactly.
use std::{collections::HashSet, path::Path, time::Duration};

use leaktrace_tests::{
    Puppet,
    cli::{LiveTrace, leaktrace_binary, replay, site_of, sites_of},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(45);

/// The ids of the BPF programs and maps process `pid` holds open (`prog_id:` and `map_id:` in
/// its fds' fdinfo).
fn bpf_objects_of(pid: u32) -> (HashSet<u32>, HashSet<u32>) {
    let (mut programs, mut maps) = (HashSet::new(), HashSet::new());
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                programs.insert(id.trim().parse().unwrap());
            } else if let Some(id) = line.strip_prefix("map_id:") {
                maps.insert(id.trim().parse().unwrap());
            }
        }
    }
    (programs, maps)
}

/// The ids of every BPF program and map loaded on the host now.
fn loaded_bpf_objects() -> (HashSet<u32>, HashSet<u32>) {
    let programs = aya::programs::loaded_programs().map(|info| info.expect("listing loaded BPF programs").id()).collect();
    let maps = aya::maps::loaded_maps().map(|info| info.expect("listing loaded BPF maps").id()).collect();
    (programs, maps)
}

fn live_at(report: &Value, pid: u32, born_before_start: bool) -> u64 {
    sites_of(report, pid)
        .into_iter()
        .filter(|site| site["direction"] == "connect" && site["born_before_start"] == born_before_start)
        .map(|site| site["live"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_run_killed_mid_leak_leaves_nothing_loaded_and_the_next_run_finds_the_leak_born_before_start() {
    let Some(_guard) = require_privileges("a_run_killed_mid_leak_leaves_nothing_loaded_and_the_next_run_finds_the_leak_born_before_start")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("leaktrace-restarts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("killed.rec");
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let pid = client.pid().to_string();

    let mut first = LiveTrace::start(&["--pid", &pid, "--record", recording.to_str().unwrap()]);
    let (programs, maps) = bpf_objects_of(first.pid());
    assert!(!programs.is_empty() && !maps.is_empty(), "the running tracer holds its programs and maps");
    for _ in 0..20 {
        client.connect("127.0.0.1", port);
        server.accept(listener);
    }
    // Until an inventory has seen them: the recording is flushed with each inventory.
    first.wait_for("20 live connections, idle times known", PATIENCE, |report| {
        site_of(report, client.pid(), "connect").is_some_and(|site| site["live"] == 20 && site["idle_known"] == 20)
    });
    let killed = first.pid();
    drop(first); // SIGKILL, and reaped.
    assert!(!Path::new(&format!("/proc/{killed}")).exists());

    // The kernel frees what only the killed process held; nothing was pinned.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (loaded_programs, loaded_maps) = loaded_bpf_objects();
        let left: Vec<_> = programs.intersection(&loaded_programs).chain(maps.intersection(&loaded_maps)).collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "BPF objects of the killed run still loaded: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pinned: Vec<_> = std::fs::read_dir("/sys/fs/bpf").map(|dir| dir.flatten().map(|entry| entry.file_name()).collect()).unwrap_or_default();
    assert!(pinned.iter().all(|name| !name.to_string_lossy().contains("leaktrace")), "{pinned:?}");

    // The next run: the same 20 connections, born before its start.
    let mut second = LiveTrace::start(&["--pid", &pid]);
    let report = second.wait_for("the 20 connections seeded", PATIENCE, |report| live_at(report, client.pid(), true) == 20);
    assert_eq!(live_at(&report, client.pid(), false), 0, "{report:#}");
    drop(second);

    // The killed run's recording: read up to its last complete line.
    let text = std::fs::read_to_string(&recording).unwrap();
    let (replayed, status) = replay(&[recording.to_str().unwrap(), "--format", "json"]);
    assert!(matches!(status.code(), Some(0 | 1)), "{status}");
    let site = site_of(&replayed, client.pid(), "connect").unwrap_or_else(|| panic!("{replayed:#}"));
    assert_eq!(site["opened"], 20, "{site:#}");
    // Cut in the middle of its last line, as a kill during a write leaves it: still read.
    let cut = dir.join("cut.rec");
    std::fs::write(&cut, &text[..text.trim_end().len() - 7]).unwrap();
    let output = std::process::Command::new(leaktrace_binary()).args(["replay", "--format", "json"]).arg(&cut).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(matches!(output.status.code(), Some(0 | 1)), "{stderr}");
    assert!(stderr.contains("is cut short"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_instances_at_once_both_count_every_connection() {
    let Some(_guard) = require_privileges("two_instances_at_once_both_count_every_connection") else { return };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn();
    let pid = client.pid().to_string();
    let mut one = LiveTrace::start(&["--pid", &pid, "--no-seed"]);
    let mut two = LiveTrace::start(&["--pid", &pid, "--no-seed"]);
    let fds: Vec<u32> = (0..15)
        .map(|_| {
            let fd = client.connect("127.0.0.1", port);
            server.accept(listener);
            fd
        })
        .collect();
    for &fd in &fds[..5] {
        client.close(fd);
    }
    let settled = |report: &Value| {
        site_of(report, client.pid(), "connect").is_some_and(|site| site["opened"] == 15 && site["closed"] == 5 && site["live"] == 10)
    };
    one.wait_for("15 opened, 5 closed", PATIENCE, settled);
    two.wait_for("15 opened, 5 closed", PATIENCE, settled);
    for trace in [one, two] {
        let (report, status, stderr) = trace.interrupt();
        assert_eq!(status.code(), Some(0), "{stderr}");
        let site = site_of(&report, client.pid(), "connect").unwrap();
        assert_eq!((&site["opened"], &site["closed"], &site["live"]), (&15.into(), &5.into(), &10.into()), "{site:#}");
        let events = &report["events"];
        assert_eq!(events["lost"], 0, "{events:#}");
        assert_eq!(events["produced"], events["received"], "{events:#}");
    }
}
