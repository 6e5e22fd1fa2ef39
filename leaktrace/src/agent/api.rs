//! `/api/v1/report`: the JSON report of `--format json`, narrowed by query parameters. The
//! filters select call sites; `processes` keeps the processes that still have one selected.
//! Everything else (events, tracker, thresholds) is the whole report's.
use std::collections::BTreeSet;

use crate::{
    report::Report,
    tracker::{Direction, Verdict},
};

/// The query parameters, as the README documents them.
pub const PARAMETERS: &[&str] = &["pid", "comm", "verdict", "direction", "min_live"];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown query parameter {0:?}; the parameters are: {params}", params = PARAMETERS.join(", "))]
    Unknown(String),
    #[error("{name}={value:?}: {expected}")]
    Value { name: &'static str, value: String, expected: &'static str },
}

/// Which call sites a request wants. Repeated parameters (`pid=1&pid=2`) are alternatives;
/// different parameters must all hold.
#[derive(Debug, Default, PartialEq)]
pub struct ReportFilter {
    pids: BTreeSet<u32>,
    comms: BTreeSet<String>,
    verdicts: BTreeSet<Verdict>,
    directions: BTreeSet<Direction>,
    min_live: u64,
}

const VERDICTS: [Verdict; 4] = [Verdict::Ok, Verdict::Churn, Verdict::Suspect, Verdict::Leak];

impl ReportFilter {
    pub fn parse(params: &[(String, String)]) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for (name, value) in params {
            let bad = |name: &'static str, expected: &'static str| FilterError::Value { name, value: value.clone(), expected };
            match name.as_str() {
                "pid" => {
                    filter.pids.insert(value.parse().map_err(|_| bad("pid", "expected a process id (a number)"))?);
                }
                "comm" => {
                    filter.comms.insert(value.clone());
                }
                "verdict" => {
                    let verdict = VERDICTS
                        .into_iter()
                        .find(|verdict| verdict.name() == value)
                        .ok_or_else(|| bad("verdict", "expected leak, suspect, churn or ok"))?;
                    filter.verdicts.insert(verdict);
                }
                "direction" => {
                    let direction = match value.as_str() {
                        "connect" => Direction::Connect,
                        "accept" => Direction::Accept,
                        _ => return Err(bad("direction", "expected connect or accept")),
                    };
                    filter.directions.insert(direction);
                }
                "min_live" => {
                    filter.min_live = value.parse().map_err(|_| bad("min_live", "expected a count of connections (0 or more)"))?;
                }
                other => return Err(FilterError::Unknown(other.to_string())),
            }
        }
        Ok(filter)
    }

    /// The report with only the wanted call sites, and the processes that have one.
    pub fn apply(&self, report: &Report) -> Report {
        let mut narrowed = report.clone();
        narrowed.call_sites.retain(|site| {
            (self.pids.is_empty() || self.pids.contains(&site.pid))
                && (self.comms.is_empty() || self.comms.contains(&site.comm))
                && (self.verdicts.is_empty() || self.verdicts.contains(&site.verdict))
                && (self.directions.is_empty() || self.directions.contains(&site.direction))
                && site.live >= self.min_live
        });
        let kept: BTreeSet<u32> = narrowed.call_sites.iter().map(|site| site.pid).collect();
        narrowed.processes.retain(|process| kept.contains(&process.pid));
        narrowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<ReportFilter, String> {
        let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ReportFilter::parse(&pairs).map_err(|err| err.to_string())
    }

    #[test]
    fn repeated_parameters_are_alternatives() {
        let filter = parse(&[("pid", "7"), ("pid", "9"), ("verdict", "leak"), ("verdict", "suspect"), ("min_live", "3")]).unwrap();
        assert_eq!(filter.pids, [7, 9].into());
        assert_eq!(filter.verdicts, [Verdict::Leak, Verdict::Suspect].into());
        assert_eq!(filter.min_live, 3);
        assert_eq!(parse(&[]).unwrap(), ReportFilter::default());
    }

    #[test]
    fn bad_parameters_say_what_is_expected() {
        assert_eq!(parse(&[("pid", "-1")]).unwrap_err(), "pid=\"-1\": expected a process id (a number)");
        assert_eq!(parse(&[("direction", "in")]).unwrap_err(), "direction=\"in\": expected connect or accept");
        assert_eq!(parse(&[("verdict", "LEAK")]).unwrap_err(), "verdict=\"LEAK\": expected leak, suspect, churn or ok");
        assert_eq!(parse(&[("min_live", "many")]).unwrap_err(), "min_live=\"many\": expected a count of connections (0 or more)");
        assert_eq!(
            parse(&[("top", "5")]).unwrap_err(),
            "unknown query parameter \"top\"; the parameters are: pid, comm, verdict, direction, min_live"
        );
    }
}
