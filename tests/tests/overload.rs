//! More call sites than the tracker keeps: a process connecting from thousands of distinct call
//! stacks, or ten thousand short-lived processes connecting once each (each refused, nothing
//! left live), beside one that leaks. Past `--max-call-sites` the
//! quietest closed call sites are evicted, counted in the report and shown in the table's
//! header; the leaking call site is kept and stays `leak`; leaktrace's memory stays bounded.
use std::time::Duration;

use leaktrace_tests::{
    Puppet,
    cli::{LiveTrace, site_of},
    require_privileges,
};
use serde_json::Value;

const SPRAYED: u64 = 3000;
const MAX_CALL_SITES: u64 = 200;

/// A loopback port nothing listens on: connects to it are refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn past_max_call_sites_the_quiet_ones_are_evicted_and_counted_and_the_leak_stays_a_leak() {
    let Some(_guard) = require_privileges("past_max_call_sites_the_quiet_ones_are_evicted_and_counted_and_the_leak_stays_a_leak") else {
        return;
    };
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut leaker = Puppet::spawn();
    let mut sprayer = Puppet::spawn();
    let max = MAX_CALL_SITES.to_string();
    let mut trace = LiveTrace::start(&[
        "--pid",
        &leaker.pid().to_string(),
        "--pid",
        &sprayer.pid().to_string(),
        "--max-call-sites",
        &max,
        "--no-seed",
    ]);
    let rss_before = resident_kib(trace.pid());
    sprayer.cmd(&format!("spray 127.0.0.1 {} {SPRAYED}", closed_port()));

    let evicted = |report: &Value| report["tracker"]["sites_evicted"].as_u64().unwrap_or(0);
    let report = trace.wait_for("the sprayed call sites evicted and the leak judged", Duration::from_secs(60), |report| {
        for _ in 0..10 {
            leaker.connect("127.0.0.1", port);
            server.accept(listener);
        }
        std::thread::sleep(Duration::from_millis(500));
        let leaking = site_of(report, leaker.pid(), "connect").is_some_and(|site| site["verdict"] == "leak");
        leaking && evicted(report) >= SPRAYED - MAX_CALL_SITES
    });
    // Every sprayed connect was seen, and all but the kept were evicted.
    let sprayed_sites: Vec<&Value> =
        report["call_sites"].as_array().unwrap().iter().filter(|site| site["pid"] == sprayer.pid()).collect();
    let kept_opened: u64 = sprayed_sites.iter().map(|site| site["opened"].as_u64().unwrap()).sum();
    assert!(sprayed_sites.len() as u64 <= MAX_CALL_SITES, "{} kept", sprayed_sites.len());
    assert_eq!(evicted(&report) + sprayed_sites.len() as u64, SPRAYED, "{:#}", report["tracker"]);
    assert_eq!(kept_opened, sprayed_sites.len() as u64, "one connect per sprayed call site");
    assert_eq!(report["events"]["lost"], 0, "{:#}", report["events"]);
    // Bounded: what thousands of call sites cost is given back (the 200 kept cost ~3 KiB each).
    let rss_after = resident_kib(trace.pid());
    assert!(rss_after < rss_before + 64 * 1024, "leaktrace grew from {rss_before} KiB to {rss_after} KiB");

    let (last, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "the leak is still found");
    assert_eq!(site_of(&last, leaker.pid(), "connect").unwrap()["verdict"], "leak");
    // The table's header says so.
    let mut table = std::process::Command::new(leaktrace_tests::cli::leaktrace_binary());
    let output = table
        .args(["--pid", &sprayer.pid().to_string(), "--max-call-sites", "10", "--duration", "3s", "--no-seed"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sprayer.cmd(&format!("spray 127.0.0.1 {} 50", closed_port()));
    let output = output.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().next().is_some_and(|header| header.contains(" call sites evicted (over --max-call-sites)")), "{text}");
}

#[test]
fn ten_thousand_short_lived_processes_each_a_call_site_of_its_own_stay_bounded() {
    let Some(_guard) = require_privileges("ten_thousand_short_lived_processes_each_a_call_site_of_its_own_stay_bounded") else {
        return;
    };
    const PROCESSES: u64 = 10_000;
    const BOUND: u64 = 500;
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut leaker = Puppet::spawn();
    let mut sprayer = Puppet::spawn();
    let refused = closed_port();
    // Every child of the sprayer is a process of its own: filtered by port, not by pid.
    let mut trace = LiveTrace::start(&[
        "--port",
        &refused.to_string(),
        "--port",
        &port.to_string(),
        "--max-call-sites",
        &BOUND.to_string(),
        "--no-seed",
    ]);
    let rss_before = resident_kib(trace.pid());
    sprayer.cmd(&format!("fork-spray 127.0.0.1 {refused} {PROCESSES} 1"));

    let evicted = |report: &Value| report["tracker"]["sites_evicted"].as_u64().unwrap_or(0);
    let sprayed = |report: &Value| -> Vec<Value> {
        report["call_sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|site| site["destinations"][0]["address"] == format!("127.0.0.1:{refused}"))
            .cloned()
            .collect()
    };
    let report = trace.wait_for("10 000 processes' call sites evicted down to the bound", Duration::from_secs(90), |report| {
        for _ in 0..10 {
            leaker.connect("127.0.0.1", port);
            server.accept(listener);
        }
        std::thread::sleep(Duration::from_millis(500));
        let leaking = site_of(report, leaker.pid(), "connect").is_some_and(|site| site["verdict"] == "leak");
        leaking && evicted(report) + sprayed(report).len() as u64 == PROCESSES
    });
    assert!(sprayed(&report).len() as u64 <= BOUND, "{} kept", sprayed(&report).len());
    assert!(report["processes"].as_array().unwrap().len() as u64 <= BOUND + 3, "processes without call sites are forgotten");
    assert_eq!(report["events"]["lost"], 0, "{:#}", report["events"]);
    let rss_after = resident_kib(trace.pid());
    eprintln!("leaktrace's resident set: {rss_before} KiB before, {rss_after} KiB after {PROCESSES} processes");
    assert!(rss_after < rss_before + 64 * 1024, "leaktrace grew from {rss_before} KiB to {rss_after} KiB over {PROCESSES} processes");
    let (_, status, _) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "the leak is still found");
}
