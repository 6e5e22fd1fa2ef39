//! The diff as text (a table in the live table's columns and manner, with BEFORE, AFTER and
//! the change in live connections) and as JSON (the `--format json` contract of
//! `leaktrace diff`, with its own `version`).
use std::fmt::Write as _;

use super::{Change, Diff, Matching, SideCounts, SideSummary, SiteDiff};
use crate::{
    report::table::clip,
    tracker::{Direction, Verdict, verdict::duration},
};

/// As in the live table.
const FRAME_WIDTH: usize = 44;
const CONTAINER_WIDTH: usize = 20;

/// The header (both sides, how they were matched, the counts), one row per call site, then a
/// line per call site that leaks and grew.
pub fn render_table(diff: &Diff) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "leaktrace diff · before: {} · after: {}", side(&diff.before), side(&diff.after));
    let summary = &diff.summary;
    let matching = match diff.matching {
        Matching::Exact => "matched exactly (pid and stack addresses)",
        _ => "matched by program and function names",
    };
    let hidden = if summary.unchanged > 0 && !diff.call_sites.iter().any(|site| site.change == Change::Unchanged) {
        " (not shown: --all)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{matching} · {} new, {} grew, {} shrank, {} gone, {} unchanged{hidden} · {} leaking and growing",
        summary.new, summary.grew, summary.shrank, summary.gone, summary.unchanged, summary.leaking
    );
    let _ = writeln!(
        out,
        "{:<9} {:>7} {:<15} {:<c$} {:<7} {:<w$} {:>6} {:>6} {:>8} {:>7} {:>7}  VERDICT",
        "CHANGE",
        "PID",
        "COMM",
        "CONTAINER",
        "DIR",
        "CALL SITE",
        "BEFORE",
        "AFTER",
        "LIVE +/-",
        "OPENED",
        "CLOSED",
        c = CONTAINER_WIDTH,
        w = FRAME_WIDTH
    );
    for site in &diff.call_sites {
        let shown = site.after.as_ref().or(site.before.as_ref()).expect("a call site is on one side at least");
        let live = |counts: &Option<SideCounts>| counts.as_ref().map_or_else(|| "-".to_string(), |counts| counts.live.to_string());
        let between = |count: Option<u64>| count.map_or_else(|| "-".to_string(), |count| count.to_string());
        let verdict = match (&site.verdict, &site.before) {
            (Some(verdict), _) => verdict.name().to_uppercase(),
            (None, Some(before)) => format!("(was {})", before.verdict.name().to_uppercase()),
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:<15} {:<c$} {:<7} {:<w$} {:>6} {:>6} {:>8} {:>7} {:>7}  {}",
            site.change.name().to_uppercase(),
            pids(shown),
            clip(&site.comm, 15),
            clip(site.container.as_deref().unwrap_or("-"), CONTAINER_WIDTH),
            direction(site.direction),
            clip(&site.call_site, FRAME_WIDTH),
            live(&site.before),
            live(&site.after),
            format!("{:+}", site.live_change),
            between(site.opened_between),
            between(site.closed_between),
            verdict,
            c = CONTAINER_WIDTH,
            w = FRAME_WIDTH
        );
    }
    let leaking: Vec<&SiteDiff> = diff.call_sites.iter().filter(|site| site.leaking).collect();
    if !leaking.is_empty() {
        out.push('\n');
        for site in leaking {
            let before = site.before.as_ref().map_or(0, |before| before.live);
            let after = site.after.as_ref().map_or(0, |after| after.live);
            let was = match &site.before {
                Some(before) if before.verdict != Verdict::Leak => format!(", was {}", before.verdict.name()),
                Some(_) => String::new(),
                None => ", new".into(),
            };
            let shown = site.after.as_ref().expect("a leaking call site is in AFTER");
            let _ = writeln!(
                out,
                "LEAK    pid {} {} {} {}: {before} -> {after} live ({:+}){was}",
                pids(shown),
                site.comm,
                direction(site.direction),
                site.call_site,
                site.live_change
            );
        }
    }
    out
}

/// The diff as one JSON object (pretty-printed, newline-terminated).
pub fn render_json(diff: &Diff) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(diff)? + "\n")
}

/// `FILE@30s (recording, 30.0s: 4 call sites, 120 live, 1 leak)`.
fn side(summary: &SideSummary) -> String {
    let kind = match summary.kind {
        super::input::InputKind::Report => "report",
        super::input::InputKind::Reports => "jsonl",
        super::input::InputKind::Recording => "recording",
    };
    format!(
        "{} ({kind} at {}: {} call sites, {} live, {} leak(s))",
        summary.source,
        duration(summary.duration_s),
        summary.call_sites,
        summary.live,
        summary.leaks
    )
}

/// One pid, or the first and how many more when several processes were summed.
fn pids(counts: &SideCounts) -> String {
    match counts.pids.as_slice() {
        [] => "-".into(),
        [pid] => pid.to_string(),
        [pid, rest @ ..] => format!("{pid}+{}", rest.len()),
    }
}

fn direction(direction: Direction) -> &'static str {
    match direction {
        Direction::Connect => "connect",
        Direction::Accept => "accept",
    }
}
