//! The aggregator alone: the userspace tracker, no kernel, on a synthetic stream of 10 million
//! events (events per second of one core's CPU time, with the live view's refresh once per
//! second of stream time), and its memory per live connection at 100k and 1M live connections.
//! `leaktrace-bench aggregate` does the work, since it links the library; this reads its JSON
//! lines and judges them against issue 5's targets.
use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::{bytes, thousands},
    report::{Section, TRACKER_BYTES_PER_CONNECTION, Table, Target},
    rig,
};

const EVENTS: usize = 10_000_000;
/// A smoke stream: small, and slow enough in stream time to include a few refreshes.
const SMOKE_EVENTS: usize = 100_000;
const SMOKE_CONN_PER_S: usize = 5_000;
const TARGET_EVENTS_PER_S: f64 = 2_000_000.0;
const TARGET_BYTES_PER_CONNECTION: f64 = 256.0;
/// Generous for a slow machine: the full stream takes about half a minute here.
const PATIENCE: Duration = Duration::from_secs(900);

/// The rate run's figures (its median pass).
#[derive(Clone, Debug, PartialEq)]
struct Rate {
    events: f64,
    passes: usize,
    refreshes: f64,
    stream_s: f64,
    sites: f64,
    processes: f64,
    cpu_s: f64,
    apply_cpu_s: f64,
    refresh_cpu_s: f64,
    wall_s: f64,
    events_per_cpu_s: f64,
    apply_events_per_cpu_s: f64,
    events_per_wall_s: f64,
    live_at_end: f64,
}

/// One `--live N` run's figures.
#[derive(Clone, Debug, PartialEq)]
struct Live {
    connections: f64,
    tracked: f64,
    snapshot_live: f64,
    sites: f64,
    bytes_per_connection: f64,
    rss_per_connection: f64,
    apply_cpu_s: f64,
}

impl Live {
    fn without_loss(&self) -> bool {
        self.tracked == self.connections && self.snapshot_live == self.connections
    }
}

pub fn section(bench: &Bench) -> Result<Section> {
    let rate_args = if bench.options.smoke {
        vec![
            "--events".to_string(),
            SMOKE_EVENTS.to_string(),
            "--conn-per-s".into(),
            SMOKE_CONN_PER_S.to_string(),
            "--passes".into(),
            "1".into(),
        ]
    } else {
        vec!["--events".to_string(), EVENTS.to_string()]
    };
    let rate = rate_figures(&aggregate(bench, &rate_args, "rate")?)?;
    let mut lives = Vec::new();
    for &live in &bench.options.live {
        let line = aggregate(bench, &["--live".into(), live.to_string()], "live")?;
        lives.push(live_figures(&line)?);
    }
    Ok(build(&rate, &lives))
}

/// Runs `leaktrace-bench aggregate ARGS` and returns its JSON line of type `kind`.
fn aggregate(bench: &Bench, args: &[String], kind: &str) -> Result<Value> {
    let mut command = Command::new(&bench.bins.bench);
    command.arg("aggregate").args(args);
    let name = format!("leaktrace-bench aggregate {}", args.join(" "));
    let finished = Running::spawn(&name, &mut command, Stdout::Lines)?.wait(PATIENCE)?;
    if !finished.success {
        bail!("{name} failed ({})", finished.status);
    }
    rig::last_json(&finished, kind).with_context(|| format!("{name} printed no `{kind}` line"))
}

fn number(value: &Value, key: &str) -> Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("`{key}` missing from leaktrace-bench aggregate's line: {value}"))
}

fn rate_figures(line: &Value) -> Result<Rate> {
    let passes = line
        .get("passes_cpu_s")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok(Rate {
        events: number(line, "events")?,
        passes,
        refreshes: number(line, "refreshes")?,
        stream_s: number(line, "stream_s")?,
        sites: number(line, "sites")?,
        processes: number(line, "processes")?,
        cpu_s: number(line, "cpu_s")?,
        apply_cpu_s: number(line, "apply_cpu_s")?,
        refresh_cpu_s: number(line, "refresh_cpu_s")?,
        wall_s: number(line, "wall_s")?,
        events_per_cpu_s: number(line, "events_per_cpu_s")?,
        apply_events_per_cpu_s: number(line, "apply_events_per_cpu_s")?,
        events_per_wall_s: number(line, "events_per_wall_s")?,
        live_at_end: number(line, "live_at_end")?,
    })
}

fn live_figures(line: &Value) -> Result<Live> {
    Ok(Live {
        connections: number(line, "connections")?,
        tracked: number(line, "tracked")?,
        snapshot_live: number(line, "snapshot_live")?,
        sites: number(line, "sites")?,
        bytes_per_connection: number(line, "bytes_per_connection")?,
        rss_per_connection: number(line, "rss_per_connection")?,
        apply_cpu_s: number(line, "apply_cpu_s")?,
    })
}

fn millions(value: f64) -> String {
    format!("{:.2} M", value / 1e6)
}

fn build(rate: &Rate, lives: &[Live]) -> Section {
    let mut table = Table::new(&[
        "run",
        "size",
        "call sites",
        "CPU time (one thread)",
        "wall time",
        "events/s per core",
        "events/s (wall)",
        "tracker heap per live connection",
        "RSS growth per live connection",
        "live connections tracked",
    ]);
    table.row(vec![
        match rate.passes {
            1 => "stream, one pass".to_string(),
            passes => format!("stream, median of {passes} passes"),
        },
        format!("{} events", thousands(rate.events)),
        thousands(rate.sites),
        format!(
            "{:.2} s ({:.2} s apply + {:.2} s refresh)",
            rate.cpu_s, rate.apply_cpu_s, rate.refresh_cpu_s
        ),
        format!("{:.2} s", rate.wall_s),
        format!(
            "{} ({} apply alone)",
            millions(rate.events_per_cpu_s),
            millions(rate.apply_events_per_cpu_s)
        ),
        millions(rate.events_per_wall_s),
        "—".into(),
        "—".into(),
        format!("{} at the end", thousands(rate.live_at_end)),
    ]);
    for live in lives {
        table.row(vec![
            "opens held live".into(),
            format!("{} live connections", thousands(live.connections)),
            thousands(live.sites),
            format!("{:.3} s apply", live.apply_cpu_s),
            "—".into(),
            "—".into(),
            "—".into(),
            bytes(live.bytes_per_connection),
            bytes(live.rss_per_connection),
            format!(
                "{} of {}",
                thousands(live.tracked),
                thousands(live.connections)
            ),
        ]);
    }

    let mut targets = vec![Target {
        goal: "aggregator: >= 2M events/s per core".into(),
        measured: format!(
            "{} events/s of one thread's CPU time ({} events in {:.2} s CPU, {:.2} s wall, refreshes included)",
            millions(rate.events_per_cpu_s),
            thousands(rate.events),
            rate.cpu_s,
            rate.wall_s
        ),
        met: Some(rate.events_per_cpu_s >= TARGET_EVENTS_PER_S),
        limit: (rate.events_per_cpu_s < TARGET_EVENTS_PER_S).then(|| {
            "the tracker's work per event: a socket lookup per event, a call site lookup by the whole stack and \
             per-site bookkeeping (window, histogram) per open and close"
                .into()
        }),
    }];
    // The userspace part of the memory target at the largest live count (report.rs).
    let figures = lives
        .iter()
        .max_by(|a, b| a.connections.total_cmp(&b.connections))
        .map(|largest| (TRACKER_BYTES_PER_CONNECTION, largest.bytes_per_connection))
        .into_iter()
        .collect();
    if !lives.is_empty() {
        let worst = lives
            .iter()
            .map(|l| l.bytes_per_connection)
            .fold(0.0, f64::max);
        let met = worst <= TARGET_BYTES_PER_CONNECTION;
        targets.push(Target {
            goal: "<= 256 bytes per live connection, the userspace part alone: the tracker's heap".into(),
            measured: lives
                .iter()
                .map(|l| {
                    format!(
                        "{} at {} live (RSS growth {})",
                        bytes(l.bytes_per_connection),
                        thousands(l.connections),
                        bytes(l.rss_per_connection)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            met: Some(met),
            limit: (!met).then(|| {
                "the connection table: a hash table of 56-byte entries that doubles as it grows, the cookie index, and \
                 per call site state"
                    .into()
            }),
        });
        let largest = lives
            .iter()
            .max_by(|a, b| a.connections.total_cmp(&b.connections))
            .expect("not empty");
        targets.push(Target {
            goal: format!(
                "{} live connections tracked without loss (userspace tracker)",
                thousands(largest.connections)
            ),
            measured: format!(
                "{} held of {} opened, {} live in the snapshot",
                thousands(largest.tracked),
                thousands(largest.connections),
                thousands(largest.snapshot_live)
            ),
            met: Some(largest.without_loss()),
            limit: (!largest.without_loss()).then(|| {
                "the tracker dropped live connections: a bug (it never drops them)".into()
            }),
        });
    }
    Section {
        title: "Aggregator alone".into(),
        what: format!(
            "`leaktrace-bench aggregate`: the tracker on one thread, on a synthetic stream built in memory before \
             timing ({} processes, {} call sites with stacks of 10-30 frames, connects and accepts; mostly churn \
             closed by either end, some refused, some pools, some leaking sites that never close or stay in \
             CLOSE_WAIT); {:.0} s of stream time, with `expire` + `snapshot` once per second of it as the live view \
             does ({} refreshes). Per core: events / the thread's CPU time (CLOCK_THREAD_CPUTIME_ID). Memory: N opens \
             that stay live, the tracker's heap growth from a counting allocator / N, and the resident set's growth.",
            thousands(rate.processes),
            thousands(rate.sites),
            rate.stream_s,
            thousands(rate.refreshes)
        ),
        table,
        targets,
        notes: Vec::new(),
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: &str = r#"{"type":"rate","events":10000000,"connections_opened":2194335,"processes":300,"sites":3000,"stream_s":43.9,"refreshes":43,"passes_cpu_s":[2.5,2.4,2.6],"cpu_s":2.5,"apply_cpu_s":1.9,"refresh_cpu_s":0.6,"wall_s":2.6,"events_per_cpu_s":4000000.0,"apply_events_per_cpu_s":5263157.9,"events_per_wall_s":3846153.8,"live_at_end":93235,"sites_at_end":3000,"generate_s":6.8}"#;
    const LIVE: &str = r#"{"type":"live","connections":1000000,"events":1720503,"tracked":1000000,"snapshot_live":1000000,"sites":3000,"processes":300,"tracker_bytes":158549660,"bytes_per_connection":158.4,"rss_growth_bytes":158883840,"rss_per_connection":158.9,"apply_cpu_s":0.82}"#;

    #[test]
    fn figures_become_a_table_and_targets() {
        let rate = rate_figures(&serde_json::from_str(RATE).unwrap()).unwrap();
        assert_eq!((rate.passes, rate.events_per_cpu_s), (3, 4e6));
        let live = live_figures(&serde_json::from_str(LIVE).unwrap()).unwrap();
        let section = build(&rate, std::slice::from_ref(&live));
        assert_eq!(section.table.rows.len(), 2);
        assert!(
            section.table.rows[0][5].starts_with("4.00 M"),
            "{:?}",
            section.table.rows[0]
        );
        assert_eq!(section.table.rows[1][7], "158 B");
        assert_eq!(section.targets.len(), 3);
        assert!(
            section
                .targets
                .iter()
                .all(|t| t.met == Some(true) && t.limit.is_none())
        );

        let lossy = Live {
            tracked: 999_000.0,
            bytes_per_connection: 300.0,
            ..live
        };
        let slow = Rate {
            events_per_cpu_s: 1e6,
            ..rate
        };
        let section = build(&slow, &[lossy]);
        assert!(
            section
                .targets
                .iter()
                .all(|t| t.met == Some(false) && t.limit.is_some())
        );
    }

    #[test]
    fn a_line_without_a_figure_names_it() {
        let err = live_figures(&serde_json::json!({"type": "live", "connections": 5})).unwrap_err();
        assert!(err.to_string().contains("`tracked`"), "{err}");
    }
}
