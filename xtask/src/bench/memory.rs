//! The kernel memory leaktrace holds per live connection, at 100k and 1M live connections:
//! `loadgen hold` opens them (in worker processes, within the fd limit, in a private network
//! namespace) while `leaktrace-bench trace` runs with a socket map sized for them; the map
//! memory is the kernel's own figure (`memlock` of each map's fdinfo), the tracked sockets a
//! walk of the socket map. Both ends of a loopback connection are local, so each live
//! connection is two tracked sockets here (one on a host talking to others).
use std::{process::Command, time::Duration};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::{bytes, thousands},
    report::{KERNEL_BYTES_PER_SOCKET, Section, Table, Target},
    rig,
};

/// Socket map room beyond the held connections' sockets, for everything else on the host.
const HEADROOM: usize = 65_536;
/// Connections per hold worker in a smoke run: a few workers, to exercise them.
const SMOKE_PER_PROCESS: usize = 700;

pub fn section(bench: &Bench) -> Result<Section> {
    let mut table = Table::new(&[
        "live connections",
        "sockets tracked",
        "socket map entries",
        "socket map memory",
        "per tracked socket",
        "all maps",
        "all maps per live connection",
        "socket map full",
        "events lost opening",
        "lost closing all at once",
        "opened in",
    ]);
    let mut targets = Vec::new();
    let mut figures = Vec::new();
    for &live in &bench.options.live {
        let row = measure(bench, live)?;
        let per_socket = row.socket_map_bytes / row.socket_map_entries;
        let per_connection = row.all_maps_bytes / live as f64;
        table.row(vec![
            thousands(live as f64),
            thousands(row.tracked),
            thousands(row.socket_map_entries),
            bytes(row.socket_map_bytes),
            format!("{per_socket:.0} B"),
            bytes(row.all_maps_bytes),
            format!("{per_connection:.0} B"),
            thousands(row.socket_map_full),
            thousands(row.lost),
            thousands(row.lost_releasing),
            format!("{:.1} s", row.open_seconds),
        ]);
        if live == *bench.options.live.iter().max().unwrap_or(&live) {
            let complete = row.tracked >= 2.0 * live as f64 && row.socket_map_full == 0.0;
            targets.push(Target {
                goal: format!("{} live connections tracked without loss (kernel side)", thousands(live as f64)),
                measured: format!(
                    "{} sockets tracked for {} connections, {} socket map full, {} events lost",
                    thousands(row.tracked),
                    thousands(live as f64),
                    thousands(row.socket_map_full),
                    thousands(row.lost)
                ),
                met: Some(complete && row.lost == 0.0),
                limit: (!complete || row.lost > 0.0).then(|| {
                    "events lost: the reader falls behind while the connections are opened (a lost open leaves its \
                     socket untracked)"
                        .into()
                }),
            });
            // The kernel's part of the memory target; decided with the tracker's (report.rs).
            figures.push((KERNEL_BYTES_PER_SOCKET, per_socket));
        }
    }
    Ok(Section {
        title: "Kernel memory per live connection".into(),
        what: "`loadgen hold --connections N` (worker processes within the fd limit, private network namespace) while \
               `leaktrace-bench trace --max-sockets 2N+65536` runs; memory is `memlock` of each of the probes' maps, \
               the socket map preallocated (its memory does not grow with the live count: per tracked socket is \
               memory / entries). \"All maps\" includes the 8 MiB ring buffer."
            .into(),
        table,
        targets,
        notes: Vec::new(),
        figures,
    })
}

struct Held {
    tracked: f64,
    socket_map_entries: f64,
    socket_map_bytes: f64,
    all_maps_bytes: f64,
    socket_map_full: f64,
    /// Lost while the connections were opened, and while they were all closed at once.
    lost: f64,
    lost_releasing: f64,
    open_seconds: f64,
}

fn measure(bench: &Bench, live: usize) -> Result<Held> {
    let max_sockets = (2 * live + HEADROOM).to_string();
    let mut trace = rig::start_bench_trace(&bench.bins.bench, &["trace", "--max-sockets", &max_sockets])?;
    let before = rig::snapshot(&mut trace, "snapshot sockets")?;
    let mut hold = Command::new(&bench.bins.loadgen);
    hold.args(["hold", "--connections", &live.to_string()]);
    if bench.options.smoke {
        hold.args(["--per-process", &SMOKE_PER_PROCESS.to_string()]);
    }
    let mut holder = Running::spawn("loadgen hold", &mut hold, Stdout::Lines)?;
    // About 30k connections a second here; a generous bound for a slow machine.
    let patience = Duration::from_secs(120 + live as u64 / 2_000);
    let held: Value = serde_json::from_str(
        &holder.wait_line(patience, "`held`", |l| l.contains(r#""type":"held""#))?,
    )?;
    let during = rig::snapshot(&mut trace, "snapshot sockets")?;
    let released = holder.close_stdin_and_wait(patience)?;
    if !released.success {
        bail!("loadgen hold failed while releasing ({})", released.status);
    }
    let last = rig::finish_bench_trace(trace)?;

    let number = |value: &Value, pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let maps = during
        .get("maps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let socket_map = maps
        .iter()
        .find(|m| m.get("name").and_then(Value::as_str) == Some("SOCKETS"));
    let Some(socket_map) = socket_map else {
        bail!("the tracer reported no SOCKETS map: {during}")
    };
    Ok(Held {
        tracked: number(&during, "/tracked_sockets") - number(&before, "/tracked_sockets"),
        socket_map_entries: number(socket_map, "/max_entries"),
        socket_map_bytes: number(socket_map, "/memlock_bytes"),
        all_maps_bytes: maps.iter().map(|m| number(m, "/memlock_bytes")).sum(),
        socket_map_full: number(&during, "/counters/socket_map_full"),
        lost: number(&during, "/counters/lost"),
        lost_releasing: number(&last, "/counters/lost") - number(&during, "/counters/lost"),
        open_seconds: number(&held, "/seconds"),
    })
}
