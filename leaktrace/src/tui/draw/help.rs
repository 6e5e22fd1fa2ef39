//! The keys, in a box over the current screen (`?`).
use ratatui::{
    Frame,
    layout::Rect,
    text::Line,
    widgets::{Block, Clear, Paragraph},
};

use super::centered;
use crate::tui::state::SHORTCUTS;

pub fn draw(frame: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = [
        "↑ ↓  j k         select a call site (in its detail: scroll the stack)",
        "PgUp PgDn        a page up or down",
        "Home End  g G    first or last row",
        "Enter            open the selected call site",
        "Esc  Backspace   back to the table",
        "s  S             sort by the next or the previous column",
        "r                reverse the order",
    ]
    .into_iter()
    .map(Line::raw)
    .collect();
    for (letter, key) in SHORTCUTS {
        lines.push(Line::raw(format!("{letter}                sort by {}", key.heading())));
    }
    lines.push(Line::raw("?                these keys"));
    lines.push(Line::raw("q  Ctrl-C        quit and print the final report"));
    let height = lines.len() as u16 + 2;
    let popup = centered(area, 72, height);
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title("keys")), popup);
}
