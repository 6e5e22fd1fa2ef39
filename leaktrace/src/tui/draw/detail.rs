//! A call site opened: what the final report says of it (summary, container, the verdict's
//! reasons, the goroutine-ancestry note, the whole stack with the telling frame and the
//! goroutine hops marked), its peers, its closed connections' lifetimes and its live trend.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Bar, BarChart, BarGroup, Block, Paragraph, Sparkline},
};

use super::verdict_style;
use crate::{
    report::{AncestryStatus, CallSite, table},
    tracker::{LIFETIME_BOUNDS_S, verdict::duration},
    tui::state::State,
};

pub fn draw(frame: &mut Frame, area: Rect, state: &mut State) {
    let Some(site) = state.selected_site.clone() else { return };
    let mut lines = vec![Line::styled(table::summary(&site), verdict_style(site.verdict))];
    if !state.selected_is_current() {
        lines.push(Line::styled("  (gone from the latest report: shown as last seen)", Style::new().fg(Color::DarkGray)));
    }
    if let Some(container) = &site.container {
        lines.push(Line::raw(format!("  container: {}", table::container_line(container))));
    }
    for finding in &site.findings {
        lines.push(Line::styled(format!("  why: {}", finding.why), verdict_style(finding.verdict)));
    }
    if let Some(note) = &site.go_ancestry {
        let label = match note.status {
            AncestryStatus::Joined => "joined",
            AncestryStatus::NotRecorded => "not recorded",
            AncestryStatus::Unavailable => "unavailable",
        };
        lines.push(Line::raw(format!("  goroutine ancestry ({label}): {}", note.detail)));
    }
    let head_height = (lines.len() as u16).min(area.height / 2);
    let [head, rest] = Layout::vertical([Constraint::Length(head_height), Constraint::Min(3)]).areas(area);
    frame.render_widget(Paragraph::new(lines), head);
    let [stack_area, side] = Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(rest);
    draw_stack(frame, stack_area, state, &site);
    let [peers_area, lifetimes_area, trend_area] =
        Layout::vertical([Constraint::Percentage(30), Constraint::Length(9), Constraint::Min(4)]).areas(side);
    draw_peers(frame, peers_area, &site);
    draw_lifetimes(frame, lifetimes_area, &site);
    let live: Vec<u64> = state
        .selected_identity()
        .and_then(|identity| state.history.trend(identity))
        .map(|trend| trend.live().collect())
        .unwrap_or_default();
    // The most recent samples that fit, one column each.
    let fits = usize::from(trend_area.width.saturating_sub(2));
    let shown = &live[live.len().saturating_sub(fits)..];
    let title = format!("live over time (now {}, max {})", site.live, shown.iter().max().copied().unwrap_or(0));
    frame.render_widget(Sparkline::default().block(Block::bordered().title(title)).data(shown), trend_area);
}

/// The frames as the final report prints them, one per line, innermost first.
fn draw_stack(frame: &mut Frame, area: Rect, state: &mut State, site: &CallSite) {
    let mut lines: Vec<Line> = Vec::new();
    if site.frames.is_empty() {
        lines.push(Line::raw(site.telling_frame_text()));
    }
    for text in site.trace_lines() {
        let style = if text.starts_with("=>") {
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
        } else if text.trim_start().starts_with("--") {
            Style::new().fg(Color::Cyan)
        } else {
            Style::new()
        };
        lines.push(Line::styled(text, style));
    }
    let visible = area.height.saturating_sub(2);
    state.page = usize::from(visible).max(1);
    if state.detail_at_telling_frame
        && let Some(telling) = lines.iter().position(|line| line.spans.first().is_some_and(|span| span.content.starts_with("=>")))
    {
        // The telling frame in the middle, with the frames around it.
        state.detail_scroll = (telling as u16).saturating_sub(visible / 2);
    }
    state.detail_scroll = state.detail_scroll.min((lines.len() as u16).saturating_sub(visible));
    let title = format!("stack ({} frames{})", site.frames.len(), if site.stack_truncated { ", truncated" } else { "" });
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)).scroll((state.detail_scroll, 0)), area);
}

fn draw_peers(frame: &mut Frame, area: Rect, site: &CallSite) {
    let lines: Vec<Line> = site
        .destinations
        .iter()
        .map(|peer| Line::raw(format!("{}  {} live / {} opened", peer.address, peer.live, peer.opened)))
        .collect();
    let title = format!("peers ({})", table::peers_label(site));
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

/// The closed connections' lifetimes: their histogram as bars (one per bucket, named by its
/// upper bound), the percentiles in the title.
fn draw_lifetimes(frame: &mut Frame, area: Rect, site: &CallSite) {
    let block = Block::bordered();
    let Some(lifetimes) = &site.lifetime_s else {
        frame.render_widget(Paragraph::new("none closed yet").block(block.title("lifetimes of closed connections")), area);
        return;
    };
    let bars: Vec<Bar> = LIFETIME_BOUNDS_S
        .iter()
        .zip(lifetimes.histogram)
        .map(|(bound, count)| Bar::with_label(bound_label(*bound), count))
        .collect();
    let buckets = LIFETIME_BOUNDS_S.len() as u16;
    let bar_width = (area.width.saturating_sub(2) + 1) / buckets;
    let title = format!(
        "lifetimes of {} closed: p50 {}, p90 {}, p99 {}, max {}",
        lifetimes.count,
        duration(lifetimes.p50_s),
        duration(lifetimes.p90_s),
        duration(lifetimes.p99_s),
        duration(lifetimes.max_s)
    );
    let chart = BarChart::default()
        .block(block.title(title))
        .bar_width(bar_width.saturating_sub(1).max(1))
        .bar_gap(1)
        .data(BarGroup::default().bars(&bars));
    frame.render_widget(chart, area);
}

/// `1ms`, `10s`, `1m`, `1h`, `1d`: a bucket's bound, short enough for a bar's width.
fn bound_label(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{}ms", (s * 1000.0).round()),
        s if s < 60.0 => format!("{s}s"),
        s if s < 3600.0 => format!("{}m", s / 60.0),
        s if s < 86_400.0 => format!("{}h", s / 3600.0),
        s => format!("{}d", s / 86_400.0),
    }
}
