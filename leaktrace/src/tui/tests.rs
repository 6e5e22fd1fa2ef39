//! The view's state without a terminal: sorting, the selection following its call site as rows
//! reorder, the detail staying on a call site that leaves the report, and the history's bounds.
use super::{
    history::{FORGET_AFTER_S, MAX_SAMPLES, SPAN_S},
    state::{Key, Screen, SortKey, State},
};
use crate::report::{Report, identity::SiteIdentity};

/// The golden report (4 call sites: grpcleak 100 live, server 2, pgclient 1, fixed 0).
pub fn fixture() -> Report {
    serde_json::from_str(include_str!("../report/golden/report.json")).expect("the golden report reads back")
}

/// The same report `seconds` later, with these live counts by pid.
fn later(seconds: f64, live: &[(u32, u64)]) -> Report {
    let mut report = fixture();
    report.duration_s += seconds;
    for site in &mut report.call_sites {
        if let Some((_, count)) = live.iter().find(|(pid, _)| *pid == site.pid) {
            site.live = *count;
        }
    }
    report
}

fn pids(state: &State) -> Vec<u32> {
    let report = state.report.as_ref().unwrap();
    state.rows.iter().map(|&index| report.call_sites[index].pid).collect()
}

fn selected_pid(state: &State) -> u32 {
    state.selected_site.as_ref().expect("a call site is selected").pid
}

#[test]
fn rows_start_in_the_reports_order_most_live_first() {
    let mut state = State::default();
    state.update(fixture());
    assert_eq!(pids(&state), [100, 400, 300, 200]);
    assert_eq!((state.sort, state.descending, selected_pid(&state)), (SortKey::Live, true, 100));
}

#[test]
fn sorting_by_a_column_and_reversing() {
    let mut state = State::default();
    state.update(fixture());
    state.sort_by(SortKey::Pid);
    assert_eq!(pids(&state), [400, 300, 200, 100], "figures sort largest first");
    state.key(Key::Char('r'));
    assert_eq!(pids(&state), [100, 200, 300, 400]);
    state.sort_by(SortKey::Comm);
    assert_eq!(pids(&state), [200, 100, 300, 400], "text sorts alphabetically: fixed, grpcleak, pgclient, server");
    state.key(Key::Char('v'));
    assert_eq!(state.sort, SortKey::Verdict);
    assert_eq!(pids(&state)[..2], [100, 400], "leaks first");
    assert_eq!(pids(&state)[3], 300, "ok last");
}

#[test]
fn s_and_capital_s_walk_the_columns_both_ways() {
    let mut state = State::default();
    state.update(fixture());
    state.key(Key::Char('s'));
    assert_eq!(state.sort, SortKey::Growth);
    state.key(Key::Char('S'));
    state.key(Key::Char('S'));
    assert_eq!(state.sort, SortKey::Peer);
    state.sort_by(SortKey::Pid);
    state.key(Key::Char('S'));
    assert_eq!(state.sort, SortKey::Verdict, "wraps around");
}

#[test]
fn the_selection_stays_on_its_call_site_when_rows_reorder() {
    let mut state = State::default();
    state.update(fixture());
    state.key(Key::Down);
    state.key(Key::Char('j'));
    assert_eq!((state.selected_row(), selected_pid(&state)), (Some(2), 300));
    // pgclient grows past everyone: it moves to the top, and stays selected.
    state.update(later(1.0, &[(300, 500)]));
    assert_eq!(pids(&state), [300, 100, 400, 200]);
    assert_eq!((state.selected_row(), selected_pid(&state)), (Some(0), 300));
    state.key(Key::Up);
    assert_eq!(selected_pid(&state), 300, "already at the top");
    state.key(Key::End);
    assert_eq!(selected_pid(&state), 200);
    state.key(Key::Down);
    assert_eq!(selected_pid(&state), 200, "already at the bottom");
}

#[test]
fn a_selected_call_site_that_leaves_the_report_keeps_its_detail_open() {
    let mut state = State::default();
    state.update(fixture());
    state.key(Key::Down);
    state.key(Key::Enter);
    assert_eq!((state.screen, selected_pid(&state)), (Screen::Detail, 400));
    let mut gone = later(1.0, &[]);
    gone.call_sites.retain(|site| site.pid != 400);
    state.update(gone.clone());
    assert_eq!(selected_pid(&state), 400, "the detail shows it as last seen");
    assert!(!state.selected_is_current());
    state.key(Key::Back);
    assert_eq!(state.screen, Screen::Table);
    assert_eq!(selected_pid(&state), 300, "back in the table, the row that took its place is selected");
}

#[test]
fn help_opens_over_a_screen_and_any_key_closes_it() {
    let mut state = State::default();
    state.update(fixture());
    state.key(Key::Enter);
    state.key(Key::Char('?'));
    assert_eq!(state.screen, Screen::Help { over_detail: true });
    state.key(Key::Down);
    assert_eq!(state.screen, Screen::Detail);
    assert_eq!(state.key(Key::Char('q')), super::state::Action::Quit);
    assert_eq!(state.key(Key::Interrupt), super::state::Action::Quit);
}

#[test]
fn history_keeps_the_last_minutes_and_forgets_call_sites_gone_for_long() {
    let mut state = State::default();
    let leak = SiteIdentity::exact(&fixture().call_sites[0]);
    // Twice the span at two reports a second: the ring holds the last MAX_SAMPLES.
    let steps = (SPAN_S * 4.0) as u64;
    for step in 0..steps {
        state.update(later(step as f64 / 2.0, &[(100, step)]));
    }
    let trend = state.history.trend(&leak).expect("the leak's trend");
    let live: Vec<u64> = trend.live().collect();
    assert_eq!(live.len(), MAX_SAMPLES);
    assert_eq!((live[0], live.last().copied()), (steps - MAX_SAMPLES as u64, Some(steps - 1)));
    // At a report every 2 s, samples older than SPAN_S go first.
    let mut slow = State::default();
    for step in 0..steps {
        slow.update(later(step as f64 * 2.0, &[(100, step)]));
    }
    let live = slow.history.trend(&leak).unwrap().live().count();
    assert_eq!(live, (SPAN_S / 2.0) as usize + 1, "one sample every 2 s within {SPAN_S} s");
    assert_eq!(trend.sparkline(4).chars().count(), 4);
    assert_eq!(state.history.len(), 4);
    // The leak leaves the reports; it is forgotten once gone for FORGET_AFTER_S.
    let last = (steps - 1) as f64 / 2.0;
    let without = |seconds: f64| {
        let mut report = later(last + seconds, &[]);
        report.call_sites.retain(|site| site.pid != 100);
        report
    };
    state.update(without(FORGET_AFTER_S - 1.0));
    assert!(state.history.trend(&leak).is_some());
    state.update(without(FORGET_AFTER_S + 1.0));
    assert!(state.history.trend(&leak).is_none());
    assert_eq!(state.history.len(), 3);
}

#[test]
fn sparkline_scales_to_its_own_maximum() {
    let mut state = State::default();
    for (step, live) in [0, 4, 8].into_iter().enumerate() {
        state.update(later(step as f64, &[(100, live)]));
    }
    let trend = state.history.trend(&SiteIdentity::exact(&fixture().call_sites[0])).unwrap();
    assert_eq!(trend.sparkline(10), " ▄█");
    assert_eq!(trend.sparkline(2), "▄█");
}
