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

/// Width of each column: the plain table's (the call site's is its least), then the trend's
/// and the verdict's.
const WIDTHS: [u16; 15] = [7, 15, 20, 7, 24, 25, 6, 8, 7, 7, 10, 7, 7, TREND_WIDTH, 7];
const CALL_SITE: usize = 4;
const TREND: usize = 13;

/// Columns left out, in this order, while the table is wider than the terminal (a figure cut
/// to fit would read as another figure).
const DROPPED_FIRST: [usize; 10] = [TREND, 2, 10, 12, 9, 8, 5, 11, 1, 3];

/// The columns shown in `width`, in order.
fn shown_columns(width: u16) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..WIDTHS.len()).collect();
    // One space between columns.
    let needed = |shown: &[usize]| shown.iter().map(|&column| WIDTHS[column] + 1).sum::<u16>() - 1;
    for column in DROPPED_FIRST {
        if needed(&shown) <= width {
            break;
        }
        shown.retain(|&kept| kept != column);
    }
    shown
}

/// Columns whose text is left-aligned (the others are figures).
const TEXT_COLUMNS: [SortKey; 6] =
    [SortKey::Comm, SortKey::Container, SortKey::Direction, SortKey::CallSite, SortKey::Peer, SortKey::Verdict];

pub fn draw(frame: &mut Frame, area: Rect, state: &mut State) {
    // The header row takes one line.
    state.page = usize::from(area.height.saturating_sub(1)).max(1);
    let Some(report) = &state.report else { return };
    let columns = shown_columns(area.width);
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
    headings.insert(TREND, Cell::from("TREND"));
    let headings = pick(headings, &columns);
    // Only the rows on screen are built: a report may hold thousands of call sites.
    let selected = state.selected_row().unwrap_or(0);
    let offset = visible_from(state.table_offset, selected, state.page);
    state.table_offset = offset;
    let rows = state.rows.iter().skip(offset).take(state.page).map(|&index| {
        let site = &report.call_sites[index];
        let mut cells: Vec<Cell> = row(site).into_iter().zip(SortKey::ALL).map(|(text, key)| align(key, text)).collect();
        let trend = state.history.trend(state.identity_of(index)).map(|trend| trend.sparkline(usize::from(TREND_WIDTH)));
        cells.push(Cell::from(trend.unwrap_or_default()));
        cells.push(Cell::from(site.verdict.name().to_uppercase()).style(verdict_style(site.verdict)));
        Row::new(pick(cells, &columns))
    });
    let widths = columns.iter().map(|&column| {
        if column == CALL_SITE { Constraint::Min(WIDTHS[column]) } else { Constraint::Length(WIDTHS[column]) }
    });
    let table = Table::new(rows, widths)
        .header(Row::new(headings).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut table_state = TableState::default().with_selected(state.selected_row().map(|row| row - offset));
    frame.render_stateful_widget(table, area, &mut table_state);
}

/// The first row shown: the one shown before, moved as little as keeps `selected` on screen.
fn visible_from(offset: usize, selected: usize, page: usize) -> usize {
    if selected < offset {
        selected
    } else if selected >= offset + page {
        selected + 1 - page
    } else {
        offset
    }
}

/// The cells of the shown columns.
fn pick(cells: Vec<Cell<'static>>, columns: &[usize]) -> Vec<Cell<'static>> {
    cells.into_iter().enumerate().filter(|(column, _)| columns.contains(column)).map(|(_, cell)| cell).collect()
}

fn align(key: SortKey, text: String) -> Cell<'static> {
    if TEXT_COLUMNS.contains(&key) { Cell::from(text) } else { Cell::from(Line::from(text).right_aligned()) }
}
