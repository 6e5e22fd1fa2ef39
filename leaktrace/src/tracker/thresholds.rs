//! The numbers the verdict rules judge by, in one place, with their defaults and meaning: the
//! README's verdict table is written from these doc comments, and every one is a CLI flag.
use std::time::Duration;

use serde::Serialize;

/// Thresholds of the verdict rules. Times are durations; counts are connections.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Thresholds {
    /// The sliding window over which growth, open/close rates and churn are judged (`--window`).
    #[serde(with = "seconds")]
    pub window: Duration,
    /// A live connection younger than this does not count as unclosed (`--min-age`): a request
    /// in flight is not a leak.
    #[serde(with = "seconds")]
    pub min_age: Duration,
    /// `leak` by growth: at least this many more live connections at the end of the window than
    /// at its start (`--leak-growth`)...
    pub leak_growth: u64,
    /// ... rising in at least this many distinct seconds of the window (a pool opened in one
    /// burst at start-up is not a trend) ...
    pub leak_rising_seconds: u32,
    /// ... while closes in the window were at most this fraction of opens.
    pub leak_max_close_ratio: f64,
    /// `leak` by CLOSE_WAIT: a connection the peer has closed, still not closed by its owner
    /// after this long (`--close-wait-after`): the owner never calls close().
    #[serde(with = "seconds")]
    pub close_wait_after: Duration,
    /// `suspect` by growth: at least this many more live connections over the window, rising
    /// in at least two distinct seconds, with closes at most half of opens, when the `leak`
    /// rule does not (yet) hold.
    pub suspect_growth: u64,
    /// `suspect` by idleness: a live connection with no data sent or received for this long
    /// counts as idle (`--idle-after`)...
    #[serde(with = "seconds")]
    pub idle_after: Duration,
    /// ... and at least this many idle live connections, making up at least half of the call
    /// site's live ones, make it `suspect`.
    pub suspect_idle: u64,
    /// `churn`: at least this many connections opened per second over the window
    /// (`--churn-rate`)...
    pub churn_min_rate: f64,
    /// ... whose median lifetime is at most this (`--churn-lifetime`), and nearly all closed
    /// (at least 90% of the window's opens): a connection per request, a pooling hint.
    #[serde(with = "seconds")]
    pub churn_max_lifetime: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_age: Duration::from_secs(2),
            leak_growth: 10,
            leak_rising_seconds: 3,
            leak_max_close_ratio: 0.1,
            close_wait_after: Duration::from_secs(10),
            suspect_growth: 5,
            idle_after: Duration::from_secs(60),
            suspect_idle: 10,
            churn_min_rate: 1.0,
            churn_max_lifetime: Duration::from_secs(1),
        }
    }
}

/// Durations as seconds (f64) in JSON.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(seconds).map_err(|err| D::Error::custom(format!("{seconds} s: {err}")))
    }
}
