//! Durations as the command line takes them: a number with units (`250ms`, `30s`, `5m`,
//! `1h30m`, humantime's syntax) or a bare number of seconds (`2.5`).
use std::{fmt, str::FromStr, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(Duration);

impl Span {
    pub const fn from_secs(seconds: u64) -> Self {
        Self(Duration::from_secs(seconds))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<f64>() {
            return match Duration::try_from_secs_f64(seconds) {
                Ok(duration) if seconds.is_finite() => Ok(Self(duration)),
                _ => Err(format!("{text:?} is not a duration of zero or more seconds")),
            };
        }
        humantime::parse_duration(text)
            .map(Self)
            .map_err(|err| format!("{text:?}: {err} (write seconds, or a number with units: 500ms, 30s, 5m, 1h30m)"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() { f.write_str("0s") } else { write!(f, "{}", humantime::format_duration(self.0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(text: &str) -> Result<Duration, String> {
        text.parse::<Span>().map(Span::get)
    }

    #[test]
    fn units_and_bare_seconds_both_parse() {
        assert_eq!(span("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(span("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(span("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(span("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(span("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(span("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(span("10"), Ok(Duration::from_secs(10)));
        assert_eq!(span("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn nonsense_negative_and_infinite_spans_are_refused_with_the_syntax() {
        for bad in ["-1", "inf", "NaN", "5 parsecs", "", "s"] {
            assert!(span(bad).is_err(), "{bad:?} parsed");
        }
        assert!(span("5 parsecs").unwrap_err().contains("30s, 5m"));
    }

    #[test]
    fn defaults_display_as_they_are_written() {
        assert_eq!(Span::from_secs(2).to_string(), "2s");
        assert_eq!(Span::from_secs(60).to_string(), "1m");
        assert_eq!(Span::from_millis(1500).to_string(), "1s 500ms");
        assert_eq!(Span::from_secs(0).to_string(), "0s");
    }
}
