//! What the interactive view shows, apart from how it is drawn: the latest report, its rows in
//! the chosen order, the selected call site (followed by its identity as rows reorder), the
//! screen (table, a call site's detail, the keys) and each call site's history.
use std::cmp::Ordering;

use super::history::History;
use crate::report::{
    CallSite, Report,
    identity::SiteIdentity,
    table::{self, COLUMNS},
};

/// The columns rows can be sorted by: the table's columns, then the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Pid,
    Comm,
    Container,
    Direction,
    CallSite,
    Peer,
    Live,
    Growth,
    Opened,
    Closed,
    CloseWait,
    Oldest,
    Idle,
    Verdict,
}

impl SortKey {
    pub const ALL: [SortKey; 14] = [
        SortKey::Pid,
        SortKey::Comm,
        SortKey::Container,
        SortKey::Direction,
        SortKey::CallSite,
        SortKey::Peer,
        SortKey::Live,
        SortKey::Growth,
        SortKey::Opened,
        SortKey::Closed,
        SortKey::CloseWait,
        SortKey::Oldest,
        SortKey::Idle,
        SortKey::Verdict,
    ];

    /// The column's heading in the table.
    pub fn heading(self) -> &'static str {
        COLUMNS.get(self.index()).copied().unwrap_or("VERDICT")
    }

    /// Position in [`SortKey::ALL`], which is also the table's column order.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|key| *key == self).expect("every key is in ALL")
    }

    /// Figures sort largest first, text in alphabetical order.
    fn descending_first(self) -> bool {
        !matches!(self, SortKey::Comm | SortKey::Container | SortKey::Direction | SortKey::CallSite | SortKey::Peer)
    }

    fn compare(self, a: &CallSite, b: &CallSite) -> Ordering {
        let float = |x: f64, y: f64| x.total_cmp(&y);
        match self {
            SortKey::Pid => a.pid.cmp(&b.pid),
            SortKey::Comm => a.comm.cmp(&b.comm),
            SortKey::Container => {
                let short = |site: &CallSite| site.container.as_ref().map(|container| container.short());
                short(a).cmp(&short(b))
            }
            SortKey::Direction => table::direction(a).cmp(table::direction(b)),
            SortKey::CallSite => a.telling_frame_text().cmp(&b.telling_frame_text()),
            SortKey::Peer => table::peer(a, usize::MAX).cmp(&table::peer(b, usize::MAX)),
            SortKey::Live => a.live.cmp(&b.live),
            SortKey::Growth => float(a.growth_per_s, b.growth_per_s),
            SortKey::Opened => a.opened.cmp(&b.opened),
            SortKey::Closed => a.closed.cmp(&b.closed),
            SortKey::CloseWait => a.close_wait.cmp(&b.close_wait),
            SortKey::Oldest => float(a.oldest_age_s, b.oldest_age_s),
            SortKey::Idle => float(a.max_idle_s.unwrap_or(-1.0), b.max_idle_s.unwrap_or(-1.0)),
            SortKey::Verdict => a.verdict.cmp(&b.verdict),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Table,
    /// The selected call site's stack, peers, lifetimes, reasons and trend.
    Detail,
    /// The keys, over the screen it was opened from.
    Help { over_detail: bool },
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Redraw,
    Quit,
}

/// A key, as the view understands it (the terminal's key events are mapped onto these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Back,
    Char(char),
    Interrupt,
}

pub struct State {
    pub report: Option<Report>,
    /// Indices into the report's call sites, in display order.
    pub rows: Vec<usize>,
    identities: Vec<SiteIdentity>,
    pub sort: SortKey,
    pub descending: bool,
    /// The selected call site, kept across reports by its identity.
    selected: Option<SiteIdentity>,
    /// Its row, for when it leaves the report: the selection stays at that position.
    selected_row: usize,
    /// The selected call site as last reported, shown in its detail after it is gone.
    pub selected_site: Option<CallSite>,
    pub screen: Screen,
    pub history: History,
    /// Rows that fit the table, set by the drawing (page keys move by it).
    pub page: usize,
    /// The first row on screen, kept by the drawing.
    pub table_offset: usize,
    /// Lines of the detail's stack scrolled past.
    pub detail_scroll: u16,
    /// Whether the detail's stack is scrolled to its telling frame (when it opens, until a key
    /// scrolls it).
    pub detail_at_telling_frame: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            report: None,
            rows: Vec::new(),
            identities: Vec::new(),
            sort: SortKey::Live,
            descending: true,
            selected: None,
            selected_row: 0,
            selected_site: None,
            screen: Screen::Table,
            history: History::default(),
            page: 10,
            table_offset: 0,
            detail_scroll: 0,
            detail_at_telling_frame: false,
        }
    }
}

impl State {
    /// A new report: recorded in the history, sorted, the selection kept on its call site.
    pub fn update(&mut self, report: Report) {
        self.identities = report.call_sites.iter().map(SiteIdentity::exact).collect();
        self.history.record(&report, &self.identities);
        self.report = Some(report);
        self.sort_rows();
    }

    fn sort_rows(&mut self) {
        let Some(report) = &self.report else { return };
        let mut rows: Vec<usize> = (0..report.call_sites.len()).collect();
        let (key, descending) = (self.sort, self.descending);
        // Stable: equal rows keep the report's order (most live, then fastest growing first).
        rows.sort_by(|&a, &b| {
            let order = key.compare(&report.call_sites[a], &report.call_sites[b]);
            if descending { order.reverse() } else { order }
        });
        self.rows = rows;
        let found = self.selected.as_ref().and_then(|selected| self.rows.iter().position(|&i| self.identities[i] == *selected));
        match found {
            Some(row) => self.selected_row = row,
            None => self.selected_row = self.selected_row.min(self.rows.len().saturating_sub(1)),
        }
        // In the detail, a call site that left the report stays shown as it was last seen.
        if found.is_some() || self.screen == Screen::Table {
            self.select_row(self.selected_row);
        }
    }

    fn select_row(&mut self, row: usize) {
        self.selected_row = row;
        let index = self.rows.get(row).copied();
        self.selected = index.map(|index| self.identities[index].clone());
        self.selected_site = index.and_then(|index| self.report.as_ref().map(|report| report.call_sites[index].clone()));
    }

    /// The selected row's position in display order.
    pub fn selected_row(&self) -> Option<usize> {
        (!self.rows.is_empty()).then_some(self.selected_row)
    }

    pub fn selected_identity(&self) -> Option<&SiteIdentity> {
        self.selected.as_ref()
    }

    /// Whether the selected call site is in the latest report.
    pub fn selected_is_current(&self) -> bool {
        self.selected.as_ref().is_some_and(|selected| self.identities.contains(selected))
    }

    pub fn identity_of(&self, index: usize) -> &SiteIdentity {
        &self.identities[index]
    }

    pub fn key(&mut self, key: Key) -> Action {
        if key == Key::Interrupt || key == Key::Char('q') {
            return Action::Quit;
        }
        match (self.screen, key) {
            (Screen::Help { over_detail }, _) => {
                self.screen = if over_detail { Screen::Detail } else { Screen::Table };
            }
            (_, Key::Char('?')) => self.screen = Screen::Help { over_detail: self.screen == Screen::Detail },
            (Screen::Detail, Key::Back) => {
                self.screen = Screen::Table;
                self.sort_rows();
            }
            (Screen::Detail, Key::Up | Key::Char('k')) => self.scroll_detail(|scroll, _| scroll.saturating_sub(1)),
            (Screen::Detail, Key::Down | Key::Char('j')) => self.scroll_detail(|scroll, _| scroll.saturating_add(1)),
            (Screen::Detail, Key::PageUp) => self.scroll_detail(|scroll, page| scroll.saturating_sub(page)),
            (Screen::Detail, Key::PageDown) => self.scroll_detail(|scroll, page| scroll.saturating_add(page)),
            (Screen::Detail, Key::Home | Key::Char('g')) => self.scroll_detail(|_, _| 0),
            (Screen::Detail, _) => {}
            (Screen::Table, Key::Enter) if self.selected.is_some() => {
                self.screen = Screen::Detail;
                self.detail_scroll = 0;
                self.detail_at_telling_frame = true;
            }
            (Screen::Table, Key::Up | Key::Char('k')) => self.move_by(-1),
            (Screen::Table, Key::Down | Key::Char('j')) => self.move_by(1),
            (Screen::Table, Key::PageUp) => self.move_by(-(self.page.max(1) as isize)),
            (Screen::Table, Key::PageDown) => self.move_by(self.page.max(1) as isize),
            (Screen::Table, Key::Home | Key::Char('g')) => self.select_row(0),
            (Screen::Table, Key::End | Key::Char('G')) => self.select_row(self.rows.len().saturating_sub(1)),
            (Screen::Table, Key::Char('s')) => self.sort_by(self.next_sort(1)),
            (Screen::Table, Key::Char('S')) => self.sort_by(self.next_sort(-1)),
            (Screen::Table, Key::Char('r')) => {
                self.descending = !self.descending;
                self.sort_rows();
            }
            (Screen::Table, Key::Char(c)) => {
                if let Some(key) = shortcut(c) {
                    self.sort_by(key);
                }
            }
            (Screen::Table, _) => {}
        }
        Action::Redraw
    }

    /// Scrolls the detail's stack by `scroll(current, page)`.
    fn scroll_detail(&mut self, scroll: impl Fn(u16, u16) -> u16) {
        self.detail_at_telling_frame = false;
        self.detail_scroll = scroll(self.detail_scroll, self.page as u16);
    }

    fn move_by(&mut self, delta: isize) {
        if self.rows.is_empty() {
            return;
        }
        let row = self.selected_row.saturating_add_signed(delta).min(self.rows.len() - 1);
        self.select_row(row);
    }

    fn next_sort(&self, step: isize) -> SortKey {
        let count = SortKey::ALL.len() as isize;
        SortKey::ALL[(self.sort.index() as isize + step).rem_euclid(count) as usize]
    }

    /// Sorts by `key` in its natural direction (figures largest first).
    pub fn sort_by(&mut self, key: SortKey) {
        self.sort = key;
        self.descending = key.descending_first();
        self.sort_rows();
    }
}

/// One-letter shortcuts for the columns people sort by most.
pub fn shortcut(c: char) -> Option<SortKey> {
    SHORTCUTS.iter().find(|(key, _)| *key == c).map(|(_, sort)| *sort)
}

/// The letter, and the column it sorts by.
pub const SHORTCUTS: [(char, SortKey); 6] = [
    ('l', SortKey::Live),
    ('w', SortKey::Growth),
    ('o', SortKey::Oldest),
    ('i', SortKey::Idle),
    ('v', SortKey::Verdict),
    ('p', SortKey::Pid),
];
