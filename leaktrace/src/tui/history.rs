//! Live connections per call site over the last minutes, for the trends the interactive view
//! draws: one bounded ring of (time, live) per call site, keyed by the call site's exact
//! identity, and call sites gone from the reports for long forgotten.
use std::collections::{HashMap, VecDeque};

use crate::report::{Report, identity::SiteIdentity};

/// How far back a trend reaches, in seconds of the report's clock.
pub const SPAN_S: f64 = 300.0;
/// Most samples kept per call site: five minutes at the default refresh of a second, 2.4 KB (the
/// tracker keeps at most 20,000 call sites).
pub const MAX_SAMPLES: usize = 300;
/// A call site absent from the reports this long is forgotten.
pub const FORGET_AFTER_S: f64 = 300.0;

#[derive(Default)]
pub struct History {
    sites: HashMap<SiteIdentity, Trend>,
}

/// One call site's samples, oldest first: the report's time in seconds and the live count, in
/// 8 bytes.
#[derive(Default)]
pub struct Trend {
    samples: VecDeque<(f32, u32)>,
    last_seen_s: f64,
}

impl History {
    /// Adds every call site's live count at the report's time, drops samples older than
    /// [`SPAN_S`] and call sites not seen for [`FORGET_AFTER_S`].
    pub fn record(&mut self, report: &Report, identities: &[SiteIdentity]) {
        let now = report.duration_s;
        for (site, identity) in report.call_sites.iter().zip(identities) {
            let trend = self.sites.entry(identity.clone()).or_default();
            if trend.samples.len() == MAX_SAMPLES {
                trend.samples.pop_front();
            }
            trend.samples.push_back((now as f32, u32::try_from(site.live).unwrap_or(u32::MAX)));
            trend.last_seen_s = now;
        }
        self.sites.retain(|_, trend| {
            while trend.samples.front().is_some_and(|(time, _)| now - f64::from(*time) > SPAN_S) {
                trend.samples.pop_front();
            }
            now - trend.last_seen_s <= FORGET_AFTER_S
        });
    }

    pub fn trend(&self, identity: &SiteIdentity) -> Option<&Trend> {
        self.sites.get(identity)
    }

    /// Call sites remembered.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

impl Trend {
    /// The live counts, oldest first.
    pub fn live(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + '_ {
        self.samples.iter().map(|(_, live)| u64::from(*live))
    }

    /// The last `width` live counts as block characters, scaled to their own maximum.
    pub fn sparkline(&self, width: usize) -> String {
        let skip = self.samples.len().saturating_sub(width);
        let recent: Vec<u64> = self.live().skip(skip).collect();
        let max = recent.iter().copied().max().unwrap_or(0);
        let bars = ratatui::symbols::bar::NINE_LEVELS;
        let levels = [bars.empty, bars.one_eighth, bars.one_quarter, bars.three_eighths, bars.half, bars.five_eighths,
            bars.three_quarters, bars.seven_eighths, bars.full];
        recent
            .iter()
            .map(|live| {
                if max == 0 {
                    return levels[0];
                }
                // Anything live shows at least the lowest bar.
                let level = (live * 8).div_ceil(max) as usize;
                levels[level.min(8)]
            })
            .collect()
    }
}
