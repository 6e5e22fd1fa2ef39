//! The main screen: one row per call site with the plain table's cells, a trend of its live
//! connections, and its verdict; the sorted column marked, the selected row highlighted.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row, Table, TableState},
};

use super::verdict_style;
use crate::{
    report::table::row,
    tui::state::{SortKey, State},
};

/// Width of the trend column, in samples (one per refresh).
pub const TREND_WIDTH: u16 = 20;

/// Widths of the table's columns (the plain table's), then the trend's and the verdict's.
const WIDTHS: [Constraint; 14] = [
    Constraint::Length(7),
    Constraint::Length(15),
    Constraint::Length(20),
    Constraint::Length(7),
    Constraint::Min(24),
    Constraint::Length(6),
    Constraint::Length(8),
    Constraint::Length(7),
    Constraint::Length(7),
    Constraint::Length(10),
    Constraint::Length(7),
    Constraint::Length(7),
    Constraint::Length(TREND_WIDTH),
    Constraint::Length(7),
];

/// Columns whose text is left-aligned (the others are figures).
const TEXT_COLUMNS: [SortKey; 5] = [SortKey::Comm, SortKey::Container, SortKey::Direction, SortKey::CallSite, SortKey::Verdict];

pub fn draw(frame: &mut Frame, area: Rect, state: &mut State) {
    // The header row takes one line.
    state.page = usize::from(area.height.saturating_sub(1)).max(1);
    let Some(report) = &state.report else { return };
    let mut headings: Vec<Cell> = SortKey::ALL
        .iter()
        .map(|key| {
            let mut text = key.heading().to_string();
            if *key == state.sort {
                text.push(if state.descending { '▼' } else { '▲' });
            }
            align(*key, text)
        })
        .collect();
    headings.insert(SortKey::Verdict.index(), Cell::from("TREND"));
    let rows = state.rows.iter().map(|&index| {
        let site = &report.call_sites[index];
        let mut cells: Vec<Cell> = row(site).into_iter().zip(SortKey::ALL).map(|(text, key)| align(key, text)).collect();
        let trend = state.history.trend(state.identity_of(index)).map(|trend| trend.sparkline(usize::from(TREND_WIDTH)));
        cells.push(Cell::from(trend.unwrap_or_default()));
        cells.push(Cell::from(site.verdict.name().to_uppercase()).style(verdict_style(site.verdict)));
        Row::new(cells)
    });
    let table = Table::new(rows, WIDTHS)
        .header(Row::new(headings).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut table_state = TableState::default().with_selected(state.selected_row());
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn align(key: SortKey, text: String) -> Cell<'static> {
    if TEXT_COLUMNS.contains(&key) { Cell::from(text) } else { Cell::from(Line::from(text).right_aligned()) }
}
