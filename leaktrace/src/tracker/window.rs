//! Opens and closes of one call site per second over a sliding window: the trend a leak
//! verdict rests on ("live keeps growing"), kept in O(window) memory whatever the rate.
use std::collections::VecDeque;

const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Second {
    second: u64,
    opened: u32,
    closed: u32,
}

/// Per-second open/close counts of the last `window_secs` seconds (event time).
#[derive(Clone, Debug)]
pub struct RateWindow {
    window_secs: u64,
    seconds: VecDeque<Second>,
}

/// What the window says at a given moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowFacts {
    /// Seconds of history the facts cover (the window, or less when the call site is younger).
    pub span_s: f64,
    pub opened: u64,
    pub closed: u64,
    /// (opened - closed) / span: how fast live connections grow (negative: shrink).
    pub growth_per_s: f64,
    /// Distinct seconds in which more connections were opened than closed.
    pub rising_seconds: u32,
}

impl RateWindow {
    pub fn new(window_secs: u64) -> Self {
        Self { window_secs: window_secs.max(1), seconds: VecDeque::new() }
    }

    pub fn record_open(&mut self, ts_ns: u64) {
        self.slot(ts_ns).opened += 1;
    }

    pub fn record_close(&mut self, ts_ns: u64) {
        self.slot(ts_ns).closed += 1;
    }

    fn slot(&mut self, ts_ns: u64) -> &mut Second {
        let second = ts_ns / NS_PER_SEC;
        if self.seconds.back().is_none_or(|last| last.second < second) {
            self.seconds.push_back(Second { second, ..Second::default() });
            self.trim(second);
        }
        // Events arrive nearly in order (per-CPU producers): a late one goes to its own second.
        let index = match self.seconds.binary_search_by_key(&second, |slot| slot.second) {
            Ok(index) => index,
            Err(index) => {
                self.seconds.insert(index, Second { second, ..Second::default() });
                index
            }
        };
        &mut self.seconds[index]
    }

    /// Drops seconds that fell out of the window ending at `latest_second`.
    fn trim(&mut self, latest_second: u64) {
        while let Some(front) = self.seconds.front() {
            if front.second + self.window_secs <= latest_second {
                self.seconds.pop_front();
            } else {
                break;
            }
        }
    }

    /// The facts of the window ending at `now_ns`, for a call site first seen at `since_ns`.
    pub fn facts(&self, now_ns: u64, since_ns: u64) -> WindowFacts {
        let now_second = now_ns / NS_PER_SEC;
        let mut facts = WindowFacts::default();
        for slot in &self.seconds {
            if slot.second + self.window_secs <= now_second {
                continue;
            }
            facts.opened += u64::from(slot.opened);
            facts.closed += u64::from(slot.closed);
            if slot.opened > slot.closed {
                facts.rising_seconds += 1;
            }
        }
        let history_s = now_ns.saturating_sub(since_ns) as f64 / NS_PER_SEC as f64;
        facts.span_s = history_s.clamp(1.0, self.window_secs as f64);
        facts.growth_per_s = (facts.opened as f64 - facts.closed as f64) / facts.span_s;
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;

    #[test]
    fn counts_only_the_window() {
        let mut window = RateWindow::new(10);
        for second in 0..30 {
            window.record_open(second * S + 5);
            if second % 2 == 0 {
                window.record_close(second * S + 7);
            }
        }
        let facts = window.facts(29 * S + 9, 0);
        assert_eq!(facts.opened, 10, "{facts:?}");
        assert_eq!(facts.closed, 5, "{facts:?}");
        assert_eq!(facts.rising_seconds, 5);
        assert!((facts.growth_per_s - 0.5).abs() < 1e-9);
        assert!(window.seconds.len() <= 11);
    }

    #[test]
    fn a_young_site_is_judged_over_its_own_history() {
        let mut window = RateWindow::new(10);
        for i in 0..40 {
            window.record_open(100 * S + i * S / 20);
        }
        let facts = window.facts(102 * S, 100 * S);
        assert_eq!(facts.span_s, 2.0);
        assert_eq!(facts.opened, 40);
        assert_eq!(facts.growth_per_s, 20.0);
        assert_eq!(facts.rising_seconds, 2);
    }

    #[test]
    fn late_events_land_in_their_second() {
        let mut window = RateWindow::new(10);
        window.record_open(5 * S);
        window.record_open(7 * S);
        window.record_close(6 * S);
        window.record_close(S);
        let facts = window.facts(8 * S, 0);
        assert_eq!((facts.opened, facts.closed), (2, 2));
        assert_eq!(window.seconds.iter().map(|s| s.second).collect::<Vec<_>>(), vec![1, 5, 6, 7]);
    }

    #[test]
    fn the_window_slides_with_time_even_without_events() {
        let mut window = RateWindow::new(10);
        window.record_open(S);
        assert_eq!(window.facts(5 * S, 0).opened, 1);
        assert_eq!(window.facts(11 * S, 0).opened, 0);
    }
}
