//! The probes say why they dropped something, not only how often: with the socket map full on
//! purpose (`--max-sockets 16`), leaktrace's stderr (`-v`) names the map and the process whose
//! connect went untracked, beside the `socket_map_full` counter; under a flood of connects over
//! the full map the number of such lines stays within the rate limit (a line per power of two
//! of each message's per-CPU count). A stack that cannot be taken and an accept that cannot be
//! followed to its socket have no way to be provoked from userspace here; their messages share
//! this path and its rate limit.
use std::{
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use leaktrace_tests::{Puppet, cli::LiveTrace, require_privileges};

const MAP_SIZE: &str = "16";
/// Connections held open by the puppet: more than the map holds, with their passive halves.
const HELD: usize = 40;
/// Connects (each closed at once) over the full map.
const FLOOD: usize = 2000;

fn map_full_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|line| line.contains("kernel: SOCKETS map full (raise --max-sockets)")).collect()
}

#[test]
fn a_full_socket_map_is_logged_with_the_pid_and_a_flood_stays_within_the_rate_limit() {
    let Some(_guard) = require_privileges("a_full_socket_map_is_logged_with_the_pid") else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and keeps every connection, so the backlog never fills (a full accept queue
    // drops SYNs, and the flood would wait a second per drop).
    let server = thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            kept.push(stream);
            if kept.len() == HELD + FLOOD {
                break;
            }
        }
        kept
    });
    let mut trace = LiveTrace::start(&["-v", "--max-sockets", MAP_SIZE]);

    let mut puppet = Puppet::spawn();
    for _ in 0..HELD {
        puppet.connect("127.0.0.1", port);
    }
    let wanted = (2 * HELD - 16) as u64;
    trace.wait_for("the held connections counted as socket_map_full", Duration::from_secs(30), |report| {
        report["events"]["socket_map_full"].as_u64().unwrap_or(0) >= wanted
    });
    for _ in 0..FLOOD {
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let flooded = wanted + FLOOD as u64;
    trace.wait_for("the flood counted as socket_map_full", Duration::from_secs(60), |report| {
        report["events"]["socket_map_full"].as_u64().unwrap_or(0) >= flooded
    });
    // Lets the kernel-message reader take what the probes wrote last.
    thread::sleep(Duration::from_secs(1));
    let (report, status, stderr) = trace.interrupt();
    assert!(status.code().is_some_and(|code| code <= 1), "leaktrace failed: {status}\n{stderr}");
    let untracked = report["events"]["socket_map_full"].as_u64().unwrap();
    assert!(untracked >= flooded, "socket_map_full {untracked}, expected at least {flooded}");

    let lines = map_full_lines(&stderr);
    let pid = puppet.pid();
    let puppet_lines: Vec<&&str> = lines.iter().filter(|line| line.contains(&format!("connect of pid {pid} "))).collect();
    assert!(
        !puppet_lines.is_empty(),
        "no kernel line names the puppet (pid {pid}) whose connects went untracked:\n{stderr}"
    );
    assert!(puppet_lines[0].contains(&format!(":{port} not tracked (error -7;")), "{}", puppet_lines[0]);
    let tracked = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["pid"].as_u64() == Some(pid.into()))
        .map_or(0, |process| process["opened"].as_u64().unwrap());
    assert!(
        (tracked as usize) < HELD,
        "the puppet's connects cannot all have been tracked in a map of {MAP_SIZE}: {tracked}"
    );

    // Each line says which occurrence on its CPU it is: always a power of two, never past the
    // counter's total.
    for line in &lines {
        let occurrence: u64 = line
            .split("occurrence ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no occurrence in {line:?}"));
        assert!(occurrence.is_power_of_two() && occurrence <= untracked, "{line}");
    }
    // Two messages (connect, passive birth), each at most once per power of two per CPU.
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let bound = 2 * cpus * (u64::from(untracked.ilog2()) + 1);
    assert!(
        (lines.len() as u64) <= bound,
        "{} map-full lines for {untracked} untracked sockets on {cpus} CPUs: the rate limit allows {bound}",
        lines.len()
    );
    drop(puppet);
    drop(server);
}
