//! Draws the interactive view's state into a ratatui frame: the header (the report's figures,
//! the kernel's and the tracker's counters), then the screen the state is on, then a line of
//! keys. Nothing here changes what is shown, only how.
mod detail;
mod help;
mod table;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};

use super::state::{Screen, State};
use crate::{report::Report, tracker::Verdict};

/// Smallest terminal the view draws in; a smaller one gets a line saying so.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

pub fn draw(frame: &mut Frame, state: &mut State, status: Option<&str>) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!("terminal too small ({}x{}): leaktrace needs {MIN_WIDTH}x{MIN_HEIGHT}; q quits", area.width, area.height);
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let [header_area, body, footer] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(1), Constraint::Length(1)]).areas(area);
    match &state.report {
        Some(report) => frame.render_widget(Paragraph::new(header(report)), header_area),
        None => frame.render_widget(Paragraph::new("leaktrace · waiting for the first report"), header_area),
    }
    match state.screen {
        Screen::Table => table::draw(frame, body, state),
        Screen::Detail => detail::draw(frame, body, state),
        Screen::Help { over_detail } => {
            if over_detail {
                detail::draw(frame, body, state);
            } else {
                table::draw(frame, body, state);
            }
            help::draw(frame, body);
        }
    }
    frame.render_widget(Paragraph::new(footer_line(state.screen, status)), footer);
}

/// The table's header line, then the kernel's counters (lost in red when any) and the
/// tracker's.
fn header(report: &Report) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(crate::report::table::header(report), Style::new().add_modifier(Modifier::BOLD))];
    match &report.events {
        Some(events) => {
            let lost = Style::new().fg(if events.lost > 0 { Color::Red } else { Color::Green });
            lines.push(Line::from(vec![
                Span::raw(format!("kernel: {} produced, {} received, ", events.produced, events.received)),
                Span::styled(format!("{} lost", events.lost), lost),
                Span::raw(format!(
                    ", {} untracked (socket map full), {} without stack, {} transitions missed",
                    events.socket_map_full, events.stack_failures, events.transitions_missed
                )),
            ]));
        }
        None => lines.push(Line::raw("kernel: no counters")),
    }
    let stats = &report.tracker;
    lines.push(Line::raw(format!(
        "tracker: {} events, {} opened, {} closed, {} failed, {} seeded, {} closes inferred, {} orphan transitions, {} call sites expired",
        stats.events,
        stats.opened,
        stats.closed,
        stats.failed,
        stats.seeded,
        stats.closes_inferred,
        stats.orphan_transitions,
        stats.sites_expired
    )));
    lines
}

fn footer_line(screen: Screen, status: Option<&str>) -> Line<'static> {
    let keys = match screen {
        Screen::Table => "↑↓/jk select · Enter open · s/S sort column · r reverse · ? keys · q quit",
        Screen::Detail => "↑↓/jk scroll · Esc/Backspace back · ? keys · q quit",
        Screen::Help { .. } => "any key closes this help · q quit",
    };
    let mut spans = vec![Span::styled(keys, Style::new().add_modifier(Modifier::REVERSED))];
    if let Some(status) = status {
        spans.push(Span::raw(format!("  {status}")));
    }
    Line::from(spans)
}

/// The colour a verdict is shown in.
pub fn verdict_style(verdict: Verdict) -> Style {
    match verdict {
        Verdict::Leak => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Suspect => Style::new().fg(Color::Yellow),
        Verdict::Churn => Style::new().fg(Color::Cyan),
        Verdict::Ok => Style::new(),
    }
}

/// A rectangle of `width` x `height` centred in `area`, cut to fit.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(area.x + (area.width - width) / 2, area.y + (area.height - height) / 2, width, height)
}

#[cfg(test)]
mod tests;
