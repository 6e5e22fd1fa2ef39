//! Verdicts: each rule is a small type that looks at one call site's facts and may conclude
//! something, with a one-line explanation for the user. The most severe conclusion wins
//! (leak > suspect > churn > ok); with none, the call site is `ok`.
use std::borrow::Cow;

use serde::Serialize;

use super::{thresholds::Thresholds, window::WindowFacts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Churn,
    Suspect,
    Leak,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Churn => "churn",
            Self::Suspect => "suspect",
            Self::Leak => "leak",
        }
    }
}

/// Everything a rule may look at, computed once per snapshot for a call site.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteFacts {
    /// Connections that existed before tracing started (no open seen): no growth, no lifetimes.
    pub born_before_start: bool,
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub live: u64,
    /// Live connections older than `min_age`.
    pub unclosed: u64,
    pub close_wait: u64,
    /// Connections in CLOSE_WAIT for longer than `close_wait_after`.
    pub close_wait_stuck: u64,
    pub oldest_close_wait_s: Option<f64>,
    pub oldest_age_s: Option<f64>,
    /// Live connections whose idle time is known, and those idle longer than `idle_after`.
    pub idle_known: u64,
    pub idle_live: u64,
    /// Live connections without data for longer than `min_age`: not in use lately.
    pub quiet_live: u64,
    pub window: WindowFacts,
    /// Distinct seconds with opens, over the call site's whole life.
    pub open_seconds: u32,
    /// From the call site's first connection to its latest open (seconds).
    pub active_span_s: f64,
    /// Median lifetime of the connections that closed (seconds).
    pub median_lifetime_s: Option<f64>,
}

/// A rule's conclusion.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub verdict: Verdict,
    /// The rule's name, stable, for scripts: `growing`, `close_wait`, ...
    pub rule: Cow<'static, str>,
    /// One line for the user, with the figures behind it.
    pub why: String,
}

pub trait Rule {
    fn check(&self, facts: &SiteFacts, thresholds: &Thresholds) -> Option<Finding>;
}

/// `leak`: live connections keep growing, in several seconds of the window, almost none closed.
pub struct Growing;

impl Rule for Growing {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        let w = &facts.window;
        let growth = w.opened.saturating_sub(w.closed);
        let few_closes = (w.closed as f64) <= t.leak_max_close_ratio * w.opened as f64;
        (growth >= t.leak_growth && w.rising_seconds >= t.leak_rising_seconds && few_closes && facts.unclosed > 0).then(|| {
            Finding {
                verdict: Verdict::Leak,
                rule: Cow::Borrowed("growing"),
                why: format!(
                    "{} opened and {} closed in the last {:.0}s (+{:.1}/s); {} live, oldest {}",
                    w.opened,
                    w.closed,
                    w.span_s,
                    w.growth_per_s,
                    facts.live,
                    age(facts.oldest_age_s)
                ),
            }
        })
    }
}

/// `leak`: over the call site's whole life, connections were opened again and again and
/// (almost) none closed. Holds after the growth stops: the leaked connections are still open.
pub struct NeverClosed;

impl Rule for NeverClosed {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        let ended = facts.closed + facts.failed;
        let few_closes = (ended as f64) <= t.leak_max_close_ratio * facts.opened as f64;
        (facts.unclosed >= t.leak_growth && facts.open_seconds >= t.leak_rising_seconds && few_closes).then(|| Finding {
            verdict: Verdict::Leak,
            rule: Cow::Borrowed("never_closed"),
            why: format!(
                "{} of {} connections opened here are still open ({} closed, {} failed), opened over {}; oldest {}",
                facts.live,
                facts.opened,
                facts.closed,
                facts.failed,
                duration(facts.active_span_s.max(1.0)),
                age(facts.oldest_age_s)
            ),
        })
    }
}

/// `leak`: the peer closed and the owner never did: connections stuck in CLOSE_WAIT.
pub struct StuckInCloseWait;

impl Rule for StuckInCloseWait {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        (facts.close_wait_stuck > 0).then(|| Finding {
            verdict: Verdict::Leak,
            rule: Cow::Borrowed("close_wait"),
            why: format!(
                "{} connection(s) in CLOSE_WAIT for over {}s (oldest {}): the peer hung up and this process never closed",
                facts.close_wait_stuck,
                t.close_wait_after.as_secs_f64(),
                age(facts.oldest_close_wait_s)
            ),
        })
    }
}

/// `suspect`: growing, but not (yet) enough to call it a leak.
pub struct GrowingInconclusive;

impl Rule for GrowingInconclusive {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        let w = &facts.window;
        let growth = w.opened.saturating_sub(w.closed);
        // A trend the leak rules already call a leak is not "inconclusive".
        if Growing.check(facts, t).is_some() || NeverClosed.check(facts, t).is_some() {
            return None;
        }
        (growth >= t.suspect_growth && w.rising_seconds >= 2 && w.closed * 2 <= w.opened && facts.unclosed > 0).then(|| Finding {
            verdict: Verdict::Suspect,
            rule: Cow::Borrowed("growing_slowly"),
            why: format!(
                "live grew by {growth} in the last {:.0}s ({} opened, {} closed); not yet a steady trend",
                w.span_s, w.opened, w.closed
            ),
        })
    }
}

/// `suspect`: many live connections carry no data at all: opened and forgotten?
pub struct MostlyIdle;

impl Rule for MostlyIdle {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        (facts.idle_live >= t.suspect_idle && facts.idle_live * 2 >= facts.live).then(|| Finding {
            verdict: Verdict::Suspect,
            rule: Cow::Borrowed("idle"),
            why: format!(
                "{} of {} live connections idle for over {}s (no data sent or received)",
                facts.idle_live,
                facts.live,
                t.idle_after.as_secs_f64()
            ),
        })
    }
}

/// `suspect`: many connections opened at once (too few seconds for a trend), almost none
/// closed, and quiet since: a pool in use carries data on its connections, connections opened
/// and left open do not.
pub struct HeldBurst;

impl Rule for HeldBurst {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        if facts.born_before_start || Growing.check(facts, t).is_some() || NeverClosed.check(facts, t).is_some() {
            return None;
        }
        let ended = facts.closed + facts.failed;
        let few_closes = (ended as f64) <= t.leak_max_close_ratio * facts.opened as f64;
        let quiet = facts.quiet_live >= t.leak_growth && facts.quiet_live * 2 >= facts.live;
        (facts.unclosed >= t.leak_growth && few_closes && quiet).then(|| Finding {
            verdict: Verdict::Suspect,
            rule: Cow::Borrowed("burst_held_open"),
            why: format!(
                "{} connections opened within {} are still open ({} closed), {} of them without data for over {}: \
                 a burst held open (a pool in use would carry data)",
                facts.opened,
                duration(facts.active_span_s.max(0.001)),
                ended,
                facts.quiet_live,
                duration(t.min_age.as_secs_f64())
            ),
        })
    }
}

/// `churn`: a connection per request, closed right after: not a leak, but a pooling hint.
pub struct Churn;

impl Rule for Churn {
    fn check(&self, facts: &SiteFacts, t: &Thresholds) -> Option<Finding> {
        let w = &facts.window;
        // Judged on the window while connections are being opened, on the whole life after.
        let (rate, opened, closed) = if w.opened > 0 {
            (w.opened as f64 / w.span_s, w.opened, w.closed)
        } else {
            (facts.opened as f64 / facts.active_span_s.max(1.0), facts.opened, facts.closed + facts.failed)
        };
        let median = facts.median_lifetime_s?;
        let nearly_all_closed = closed as f64 >= 0.9 * opened as f64;
        (rate >= t.churn_min_rate && median <= t.churn_max_lifetime.as_secs_f64() && nearly_all_closed).then(|| {
            Finding {
                verdict: Verdict::Churn,
                rule: Cow::Borrowed("churn"),
                why: format!(
                    "{rate:.1} connections/s, median lifetime {}: opened per request and closed; consider a pool",
                    duration(median)
                ),
            }
        })
    }
}

/// The rules in the order they are tried; every matching rule is reported, the most severe
/// decides.
pub fn rules() -> [&'static dyn Rule; 7] {
    [&Growing, &NeverClosed, &StuckInCloseWait, &GrowingInconclusive, &HeldBurst, &MostlyIdle, &Churn]
}

/// The verdict for `facts` and every finding behind it (most severe first).
pub fn judge(facts: &SiteFacts, thresholds: &Thresholds) -> (Verdict, Vec<Finding>) {
    let mut findings: Vec<Finding> = rules().iter().filter_map(|rule| rule.check(facts, thresholds)).collect();
    findings.sort_by_key(|finding| std::cmp::Reverse(finding.verdict));
    let verdict = findings.first().map_or(Verdict::Ok, |finding| finding.verdict);
    (verdict, findings)
}

fn age(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "unknown".to_string(), duration)
}

/// A duration for people: `850us`, `12ms`, `3.4s`, `2m05s`, `3h02m`.
pub fn duration(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0}us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{}m{:02}s", (seconds / 60.0) as u64, (seconds % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (seconds / 3600.0) as u64, ((seconds % 3600.0) / 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn window(span_s: f64, opened: u64, closed: u64, rising_seconds: u32) -> WindowFacts {
        WindowFacts { span_s, opened, closed, growth_per_s: (opened as f64 - closed as f64) / span_s, rising_seconds }
    }

    fn leaking() -> SiteFacts {
        SiteFacts {
            opened: 100,
            live: 100,
            unclosed: 60,
            oldest_age_s: Some(5.0),
            window: window(5.0, 100, 0, 5),
            open_seconds: 5,
            active_span_s: 5.0,
            ..SiteFacts::default()
        }
    }

    fn burst(quiet_live: u64, idle_known: u64) -> SiteFacts {
        SiteFacts {
            opened: 100,
            live: 100,
            unclosed: 100,
            idle_known,
            quiet_live,
            oldest_age_s: Some(4.0),
            window: window(10.0, 100, 0, 1),
            open_seconds: 1,
            active_span_s: 0.25,
            ..SiteFacts::default()
        }
    }

    #[test]
    fn a_burst_held_open_is_suspect_and_says_why() {
        let (verdict, findings) = judge(&burst(100, 100), &Thresholds::default());
        assert_eq!(verdict, Verdict::Suspect);
        assert_eq!(findings[0].rule, "burst_held_open");
        assert_eq!(
            findings[0].why,
            "100 connections opened within 250ms are still open (0 closed), 100 of them without data for over 2.0s: \
             a burst held open (a pool in use would carry data)"
        );
    }

    #[test]
    fn a_pool_opened_at_once_and_in_use_stays_ok() {
        assert_eq!(judge(&burst(3, 100), &Thresholds::default()).0, Verdict::Ok);
        // Without idle times (no inventory yet), a burst cannot be told from a pool.
        assert_eq!(judge(&burst(0, 0), &Thresholds::default()).0, Verdict::Ok);
        // A burst that keeps coming back is the leak rules' business.
        let (verdict, findings) = judge(&SiteFacts { open_seconds: 5, ..burst(100, 100) }, &Thresholds::default());
        assert_eq!(verdict, Verdict::Leak);
        assert!(findings.iter().all(|finding| finding.rule != "burst_held_open"), "{findings:?}");
    }

    #[test]
    fn a_steady_climb_with_no_closes_is_a_leak() {
        let (verdict, findings) = judge(&leaking(), &Thresholds::default());
        assert_eq!(verdict, Verdict::Leak);
        assert_eq!(findings[0].rule, "growing");
        assert_eq!(findings[0].why, "100 opened and 0 closed in the last 5s (+20.0/s); 100 live, oldest 5.0s");
    }

    #[test]
    fn a_burst_at_start_up_is_not_a_leak() {
        // A pool of 50 opened within one second: no trend, and young: nothing yet.
        let pool = SiteFacts { opened: 50, live: 50, unclosed: 0, window: window(1.0, 50, 0, 1), ..SiteFacts::default() };
        assert_eq!(judge(&pool, &Thresholds::default()).0, Verdict::Ok);
        // The same pool later: old, stable.
        let stable = SiteFacts { unclosed: 50, oldest_age_s: Some(3600.0), window: window(10.0, 0, 0, 0), ..pool };
        assert_eq!(judge(&stable, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn a_leak_that_stopped_growing_is_still_a_leak() {
        let stopped = SiteFacts { unclosed: 100, oldest_age_s: Some(60.0), window: window(10.0, 0, 0, 0), ..leaking() };
        let (verdict, findings) = judge(&stopped, &Thresholds::default());
        assert_eq!(verdict, Verdict::Leak);
        assert_eq!(findings[0].rule, "never_closed");
        assert_eq!(findings[0].why, "100 of 100 connections opened here are still open (0 closed, 0 failed), opened over 5.0s; oldest 1m00s");
        // Opened in a single burst (a pool warming up): not a trend.
        let burst = SiteFacts { open_seconds: 1, ..stopped };
        assert_eq!(judge(&burst, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn growth_with_closes_is_suspect_not_leak() {
        let facts = SiteFacts { window: window(10.0, 40, 12, 6), live: 28, unclosed: 20, ..SiteFacts::default() };
        let (verdict, findings) = judge(&facts, &Thresholds::default());
        assert_eq!(verdict, Verdict::Suspect);
        assert_eq!(findings[0].rule, "growing_slowly");
    }

    #[test]
    fn connections_too_young_are_not_unclosed() {
        let facts = SiteFacts { unclosed: 0, ..leaking() };
        assert_eq!(judge(&facts, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn stuck_close_wait_is_a_leak_even_without_growth() {
        let facts = SiteFacts {
            live: 3,
            close_wait: 3,
            close_wait_stuck: 2,
            oldest_close_wait_s: Some(12.5),
            ..SiteFacts::default()
        };
        let (verdict, findings) = judge(&facts, &Thresholds::default());
        assert_eq!(verdict, Verdict::Leak);
        assert_eq!(
            findings[0].why,
            "2 connection(s) in CLOSE_WAIT for over 10s (oldest 12.5s): the peer hung up and this process never closed"
        );
        // CLOSE_WAIT shorter than the threshold: an owner about to close.
        let brief = SiteFacts { close_wait_stuck: 0, ..facts };
        assert_eq!(judge(&brief, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn short_lived_connections_at_a_high_rate_are_churn() {
        let facts = SiteFacts {
            opened: 5000,
            closed: 4999,
            live: 1,
            window: window(10.0, 500, 499, 1),
            median_lifetime_s: Some(0.0004),
            ..SiteFacts::default()
        };
        let (verdict, findings) = judge(&facts, &Thresholds::default());
        assert_eq!(verdict, Verdict::Churn);
        assert_eq!(findings[0].why, "50.0 connections/s, median lifetime 400us: opened per request and closed; consider a pool");
        // Long-lived connections closed at a high rate are a recycling pool, not churn.
        let recycling = SiteFacts { median_lifetime_s: Some(30.0), ..facts.clone() };
        assert_eq!(judge(&recycling, &Thresholds::default()).0, Verdict::Ok);
        // Nothing closed yet: no lifetime, no churn verdict.
        let none_closed = SiteFacts { median_lifetime_s: None, ..facts };
        assert_eq!(judge(&none_closed, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn many_idle_connections_are_suspect() {
        let facts = SiteFacts { live: 30, idle_known: 30, idle_live: 20, ..SiteFacts::default() };
        assert_eq!(judge(&facts, &Thresholds::default()).1[0].rule, "idle");
        let busy_pool = SiteFacts { idle_live: 9, ..facts };
        assert_eq!(judge(&busy_pool, &Thresholds::default()).0, Verdict::Ok);
    }

    #[test]
    fn thresholds_are_honoured() {
        let strict = Thresholds { close_wait_after: Duration::from_secs(1), leak_growth: 200, ..Thresholds::default() };
        // 100 growth and 60 unclosed are below a leak_growth of 200: only suspect.
        assert_eq!(judge(&leaking(), &strict).0, Verdict::Suspect);
    }

    #[test]
    fn the_most_severe_finding_decides() {
        let facts = SiteFacts { close_wait_stuck: 1, idle_live: 40, live: 40, ..leaking() };
        let (verdict, findings) = judge(&facts, &Thresholds::default());
        assert_eq!(verdict, Verdict::Leak);
        let rules: Vec<_> = findings.iter().map(|f| f.rule.as_ref()).collect();
        assert_eq!(rules, ["growing", "never_closed", "close_wait", "idle"]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.000_85), "850us");
        assert_eq!(duration(0.012), "12ms");
        assert_eq!(duration(3.44), "3.4s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(3.0 * 3600.0 + 120.0), "3h02m");
    }
}
