//! The report as text: the live table (one row per call site, sorted by live and growth, with
//! the lost-event count in the header) and, at the end, each leaking or suspect call site with
//! its reasons and its whole stack.
use std::fmt::Write as _;

use super::{CallSite, Report};
use crate::container::Workload;
use crate::tracker::{Verdict, verdict::duration};

/// Widest a call site's frame is shown in the table.
const FRAME_WIDTH: usize = 44;
/// Widest a container is shown: its id's first 12 digits, or `pod/container` cut to fit.
const CONTAINER_WIDTH: usize = 20;
/// Widest a peer is shown: an IPv4 `address:port` and a `+N` for the others fit.
const PEER_WIDTH: usize = 25;

/// The table's columns, in order; the interactive view shows the same ones.
pub const COLUMNS: [&str; 13] =
    ["PID", "COMM", "CONTAINER", "DIR", "CALL SITE", "PEER", "LIVE", "GROWTH/s", "OPENED", "CLOSED", "CLOSE_WAIT", "OLDEST", "IDLE"];

/// The table: a header line, one row per call site (at most `max_rows`), then the deciding
/// reason of every leak and suspect shown.
pub fn render_table(report: &Report, max_rows: usize) -> String {
    let mut out = header(report);
    out.push('\n');
    let [pid, comm, container, dir, frame, peer, live, growth, opened, closed, close_wait, oldest, idle] = COLUMNS;
    let _ = writeln!(
        out,
        "{pid:>7} {comm:<15} {container:<c$} {dir:<7} {frame:<w$} {peer:<p$} {live:>6} {growth:>8} {opened:>7} {closed:>7} {close_wait:>10} {oldest:>7} {idle:>7}  VERDICT",
        c = CONTAINER_WIDTH,
        w = FRAME_WIDTH,
        p = PEER_WIDTH
    );
    for site in report.call_sites.iter().take(max_rows) {
        let [pid, comm, container, dir, frame, peer, live, growth, opened, closed, close_wait, oldest, idle] = row(site);
        let _ = writeln!(
            out,
            "{pid:>7} {comm:<15} {container:<c$} {dir:<7} {frame:<w$} {peer:<p$} {live:>6} {growth:>8} {opened:>7} {closed:>7} {close_wait:>10} {oldest:>7} {idle:>7}  {}",
            site.verdict.name().to_uppercase(),
            c = CONTAINER_WIDTH,
            w = FRAME_WIDTH,
            p = PEER_WIDTH
        );
    }
    let hidden = report.call_sites.len().saturating_sub(max_rows);
    if hidden > 0 {
        let _ = writeln!(out, "... and {hidden} more call sites");
    }
    let notable: Vec<&CallSite> =
        report.call_sites.iter().take(max_rows).filter(|site| site.verdict >= Verdict::Suspect).collect();
    if !notable.is_empty() {
        out.push('\n');
        for site in notable {
            // The deciding reason only; the final report lists them all.
            if let Some(finding) = site.findings.first() {
                let _ = writeln!(
                    out,
                    "{:<7} pid {} {} {}: {}",
                    finding.verdict.name().to_uppercase(),
                    site.pid,
                    site.comm,
                    site.telling_frame_text(),
                    finding.why
                );
            }
        }
    }
    out
}

/// The final report: the table, then every leak and suspect with its destinations and stack,
/// frames one per line as `perf script` and `pprof -traces` print them.
pub fn render_final(report: &Report, max_rows: usize) -> String {
    let mut out = render_table(report, max_rows);
    for site in report.call_sites.iter().filter(|site| site.verdict >= Verdict::Suspect) {
        out.push('\n');
        let _ = writeln!(out, "{}", summary(site));
        if let Some(container) = &site.container {
            let _ = writeln!(out, "  container: {}", container_line(container));
        }
        for finding in &site.findings {
            let _ = writeln!(out, "  why: {}", finding.why);
        }
        let peers: Vec<String> =
            site.destinations.iter().map(|d| format!("{} ({} live / {} opened)", d.address, d.live, d.opened)).collect();
        if !peers.is_empty() {
            let _ = writeln!(out, "  {}: {}", peers_label(site), peers.join(", "));
        }
        if let Some(note) = &site.go_ancestry
            && note.status != super::AncestryStatus::Joined
        {
            let _ = writeln!(out, "  goroutine ancestry: {}", note.detail);
        }
        if let Some(note) = &site.python_frames {
            let _ = writeln!(out, "  python frames: {note}");
        }
        if site.frames.is_empty() {
            let _ = writeln!(out, "  {}", site.telling_frame_text());
        }
        for line in site.trace_lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// A call site's cells under [`COLUMNS`], cut to the table's widths.
pub fn row(site: &CallSite) -> [String; 13] {
    [
        site.pid.to_string(),
        clip(&site.comm, 15),
        clip(&site.container.as_ref().map_or_else(|| "-".into(), |container| container.short()), CONTAINER_WIDTH),
        direction(site).to_string(),
        clip(&site.telling_frame_text(), FRAME_WIDTH),
        peer(site, PEER_WIDTH),
        site.live.to_string(),
        format!("{:+.1}", site.growth_per_s),
        site.opened.to_string(),
        site.closed.to_string(),
        site.close_wait.to_string(),
        if site.live > 0 { duration(site.oldest_age_s) } else { "-".into() },
        site.max_idle_s.map_or_else(|| "-".into(), duration),
    ]
}

/// The table's first line: duration, processes, call sites, live, events received and lost,
/// verdict counts.
pub fn header(report: &Report) -> String {
    let mut out = String::new();
    let leaks = report.leaks();
    let suspects = report.call_sites.iter().filter(|site| site.verdict == Verdict::Suspect).count();
    let _ = write!(
        out,
        "leaktrace {} · {} processes · {} call sites · {} live",
        duration(report.duration_s),
        report.processes.len(),
        report.call_sites.len(),
        report.call_sites.iter().map(|site| site.live).sum::<u64>()
    );
    if let Some(events) = &report.events {
        let _ = write!(out, " · {} events, {} lost", events.received, events.lost);
        if events.socket_map_full > 0 {
            let _ = write!(out, ", {} untracked (socket map full)", events.socket_map_full);
        }
    }
    if report.tracker.sites_evicted > 0 {
        let _ = write!(out, " · {} call sites evicted (over --max-call-sites)", report.tracker.sites_evicted);
    }
    let _ = write!(out, " · {leaks} leak(s), {suspects} suspect");
    out
}

/// A call site in one line: verdict, process, direction and figures.
pub fn summary(site: &CallSite) -> String {
    format!(
        "{} · pid {} {}{} · {} · {} live, {} opened, {} closed, {:+.1}/s",
        site.verdict.name().to_uppercase(),
        site.pid,
        site.comm,
        site.exe.as_deref().map(|exe| format!(" ({exe})")).unwrap_or_default(),
        direction(site),
        site.live,
        site.opened,
        site.closed,
        site.growth_per_s
    )
}

/// What a call site's peers are: where it connects `to`, or whom it accepts `from`.
pub fn peers_label(site: &CallSite) -> &'static str {
    match site.direction {
        crate::tracker::Direction::Connect => "to",
        crate::tracker::Direction::Accept => "from",
    }
}

/// `<id> (<runtime>)`, then the pod, container name and image where known.
pub fn container_line(container: &Workload) -> String {
    let mut line = format!("{} ({})", container.id, container.runtime.name());
    if let (Some(namespace), Some(pod)) = (&container.namespace, &container.pod) {
        let _ = write!(line, ", pod {namespace}/{pod}");
    }
    if let Some(name) = &container.name {
        let _ = write!(line, ", container {name}");
    }
    if let Some(image) = &container.image {
        let _ = write!(line, ", image {image}");
    }
    line
}

pub fn direction(site: &CallSite) -> &'static str {
    match site.direction {
        crate::tracker::Direction::Connect => "connect",
        crate::tracker::Direction::Accept => "accept",
    }
}

/// The peer holding most live connections (then most opened), and how many others there are:
/// the destination that tells two dial sites in one function apart. `-` for none known.
pub fn peer(site: &CallSite, width: usize) -> String {
    let Some(top) = site.destinations.iter().max_by_key(|dest| (dest.address != "other", dest.live, dest.opened)) else {
        return "-".to_string();
    };
    let others = site.destinations.len() - 1;
    let more = if others > 0 { format!(" +{others}") } else { String::new() };
    let address = clip(&top.address, width.saturating_sub(more.chars().count()));
    format!("{address}{more}")
}

/// Cuts text to `width` characters, marking the cut with `…`.
pub fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}
