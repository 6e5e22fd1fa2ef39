//! What `leaktrace diff` compares, read from a file whose kind is told by its content: one
//! `--format json` report, the reports of a `--format jsonl` stream (the last complete one, or
//! the one nearest `FILE@TIME`), or a recording replayed through the tracker up to `FILE@TIME`
//! (its end without one).
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{
    commands::replay::Replayer,
    recording::{self, Mark, RECORDING_VERSION, Record},
    report::{REPORT_VERSION, Report, Resolver},
    symbolize::{SymbolizedStack, Symbolizer},
    tracker::{Filter, Limits, ProcessKey, Thresholds},
};

/// `FILE` or `FILE@TIME`, as given on the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub path: PathBuf,
    /// Time since the trace's start.
    pub at: Option<Duration>,
    /// The argument as given, for messages and the diff's header.
    pub text: String,
}

/// How an input's report was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A `--format json` file: one report.
    Report,
    /// A `--format jsonl` file: one report per refresh.
    #[serde(rename = "jsonl")]
    Reports,
    /// A recording (`--record FILE`, `leaktrace events`), replayed.
    Recording,
}

/// One side of a diff.
#[derive(Clone, Debug)]
pub struct Input {
    pub spec: InputSpec,
    pub kind: InputKind,
    pub report: Report,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The cause is in the message, not a source: the command prints one line.
    #[error("{file}: cannot read it: {cause}")]
    Open { file: String, cause: std::io::Error },
    #[error("{file}: the file is empty")]
    Empty { file: String },
    #[error("{file}: line {line}: {message}")]
    Line { file: String, line: u64, message: String },
    #[error("{file}: not a leaktrace report: {message}")]
    NotAReport { file: String, message: String },
    #[error("{file}: neither a leaktrace report (--format json or jsonl) nor a recording (--record, `leaktrace events`)")]
    Unknown { file: String },
    #[error("{file}: report version {version} is not one this leaktrace reads (it reads version {REPORT_VERSION})")]
    Version { file: String, version: String },
    #[error("{file}: recording version {version} is not one this leaktrace reads (it reads version {RECORDING_VERSION})")]
    RecordingVersion { file: String, version: u32 },
    #[error("{file}: a time applies to a recording or a --format jsonl file, not to a single report")]
    TimeOfOneReport { file: String },
    #[error("{file}: the recording holds no events")]
    EmptyRecording { file: String },
    #[error("{file}: {at} is past the end of the {what} ({end})")]
    PastTheEnd { file: String, at: String, what: &'static str, end: String },
    #[error("{text}: not a time after @ (seconds, e.g. 30 or 30s)")]
    Time { text: String },
}

impl InputSpec {
    /// `FILE@TIME` where `FILE` alone does not exist and TIME is a time; otherwise `FILE`.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let whole = Self { path: PathBuf::from(text), at: None, text: text.to_string() };
        if whole.path.exists() {
            return Ok(whole);
        }
        match text.rsplit_once('@') {
            Some((path, time)) if !path.is_empty() => {
                let at = parse_seconds(time).ok_or_else(|| InputError::Time { text: text.to_string() })?;
                Ok(Self { path: PathBuf::from(path), at: Some(at), text: text.to_string() })
            }
            _ => Ok(whole),
        }
    }
}

/// A time into the recording, as the command line writes durations: `30`, `30s`, `1m30s`.
pub fn parse_seconds(text: &str) -> Option<Duration> {
    text.parse::<crate::span::Span>().ok().map(crate::span::Span::get)
}

/// Reads one side; a recording is judged with `thresholds` and kept to `filter`.
pub fn read(spec: &InputSpec, thresholds: &Thresholds, filter: &Filter) -> Result<Input, InputError> {
    let file = spec.path.display().to_string();
    let open = || File::open(&spec.path).map(BufReader::new).map_err(|cause| InputError::Open { file: file.clone(), cause });
    let (kind, report) = read_with(&file, spec.at, open, thresholds, filter)?;
    Ok(Input { spec: spec.clone(), kind, report })
}

/// Reads one side from its bytes, as [`read`] reads a file named `file` (for tests and fuzzing).
pub fn parse(
    file: &str,
    bytes: &[u8],
    at: Option<Duration>,
    thresholds: &Thresholds,
    filter: &Filter,
) -> Result<(InputKind, Report), InputError> {
    read_with(file, at, || Ok(bytes), thresholds, filter)
}

/// The kind and report of the input `open` reads from its start at each call.
fn read_with<R: BufRead>(
    file: &str,
    at: Option<Duration>,
    open: impl Fn() -> Result<R, InputError>,
    thresholds: &Thresholds,
    filter: &Filter,
) -> Result<(InputKind, Report), InputError> {
    let file = file.to_string();
    let mut reader = open()?;
    // The first line that is not blank tells the kind.
    let mut first = String::new();
    let mut first_number = 0;
    loop {
        first.clear();
        let read = reader.read_line(&mut first).map_err(|cause| InputError::Open { file: file.clone(), cause })?;
        first_number += 1;
        if read == 0 {
            return Err(InputError::Empty { file });
        }
        if !first.trim().is_empty() {
            break;
        }
    }
    let (kind, report) = match serde_json::from_str::<Value>(&first) {
        Ok(Value::Object(object)) if object.contains_key("call_sites") => {
            // One line is one report (the agent's /api/v1/report saved, say), not a stream.
            let (report, count) = read_reports(&file, at, open()?)?;
            (if count == 1 { InputKind::Report } else { InputKind::Reports }, report)
        }
        Ok(Value::Object(object)) if object.contains_key("type") => {
            (InputKind::Recording, replay(&file, at, open()?, thresholds, filter)?)
        }
        Ok(_) => return Err(InputError::Unknown { file }),
        // A pretty-printed report: the first line opens the object.
        Err(_) if first.trim_start().starts_with('{') => {
            if at.is_some() {
                return Err(InputError::TimeOfOneReport { file });
            }
            let mut text = String::new();
            open()?.read_to_string(&mut text).map_err(|cause| InputError::Open { file: file.clone(), cause })?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|err| InputError::Line { file: file.clone(), line: err.line() as u64, message: err.to_string() })?;
            (InputKind::Report, report_from(&file, None, value)?)
        }
        Err(err) => return Err(InputError::Line { file, line: first_number, message: err.to_string() }),
    };
    Ok((kind, report))
}

/// A report from its JSON, its version checked first (a newer report may not deserialize);
/// `line` is where it is in a jsonl stream.
fn report_from(file: &str, line: Option<u64>, value: Value) -> Result<Report, InputError> {
    let file = match line {
        Some(line) => format!("{file}: line {line}"),
        None => file.to_string(),
    };
    match value.get("version") {
        Some(Value::Number(number)) if number.as_u64() == Some(u64::from(REPORT_VERSION)) => {}
        Some(other) => return Err(InputError::Version { file, version: other.to_string() }),
        None => return Err(InputError::NotAReport { file, message: "it has no version".into() }),
    }
    serde_json::from_value(value).map_err(|err| InputError::NotAReport { file, message: err.to_string() })
}

/// The last complete report of a jsonl stream, or the one whose time is nearest `at`, and how
/// many the stream holds. A last line cut short (the stream still being written) is skipped;
/// any other bad line is an error.
fn read_reports(file: &str, at: Option<Duration>, mut reader: impl BufRead) -> Result<(Report, usize), InputError> {
    let mut best: Option<Report> = None;
    let mut count = 0;
    let mut last_s = 0.0;
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|cause| InputError::Open { file: file.to_string(), cause })?;
        if read == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let value = match serde_json::from_str::<Value>(&line) {
            Ok(value) => value,
            Err(_) if !line.ends_with('\n') && best.is_some() => {
                log::warn!("{file}: line {number} is cut short (still being written?); using the line before");
                break;
            }
            Err(err) => return Err(InputError::Line { file: file.to_string(), line: number, message: err.to_string() }),
        };
        let report = report_from(file, Some(number), value)?;
        count += 1;
        last_s = report.duration_s;
        let closer = match (&best, at) {
            (None, _) | (Some(_), None) => true,
            (Some(best), Some(at)) => {
                let at = at.as_secs_f64();
                (report.duration_s - at).abs() < (best.duration_s - at).abs()
            }
        };
        if closer {
            best = Some(report);
        }
    }
    let best = best.ok_or_else(|| InputError::Empty { file: file.to_string() })?;
    if count == 1 && at.is_some() {
        return Err(InputError::TimeOfOneReport { file: file.to_string() });
    }
    // The last report is the trace's end; a time past it is a mistake, not the end.
    if let Some(at) = at.map(|at| at.as_secs_f64())
        && at > last_s + 1e-3
    {
        return Err(InputError::PastTheEnd {
            file: file.to_string(),
            at: seconds_text(at),
            what: "reports",
            end: format!("the last is at {}", seconds_text(last_s)),
        });
    }
    Ok((best, count))
}

/// The report as the recording stood `at` after its start (at its end without `at`).
fn replay(
    file: &str,
    at: Option<Duration>,
    reader: impl BufRead,
    thresholds: &Thresholds,
    filter: &Filter,
) -> Result<Report, InputError> {
    let mut replayer = Replayer::new(thresholds.clone(), Limits::default(), filter.clone());
    let mut traced = false;
    let mut cut_ns = None;
    for record in recording::read(reader) {
        let record = record.map_err(|err| match err {
            recording::RecordingError::Parse { line, message } => InputError::Line { file: file.to_string(), line, message },
            recording::RecordingError::Io(cause) => InputError::Open { file: file.to_string(), cause },
        })?;
        if let Record::Mark(Mark::Start { version, .. }) = record
            && version > RECORDING_VERSION
        {
            return Err(InputError::RecordingVersion { file: file.to_string(), version });
        }
        let start = replayer.begin(&record);
        traced |= matches!(record, Record::Event(_) | Record::Mark(Mark::Seed(_)));
        if let (Some(at), Some(ts)) = (at, Replayer::time_of(&record)) {
            let target = start.saturating_add(at.as_nanos() as u64);
            // Everything before the time, as the live view had it then.
            if ts >= target && !matches!(record, Record::Mark(Mark::Start { .. })) {
                cut_ns = Some(target);
                break;
            }
        }
        replayer.apply(record);
    }
    if !traced {
        return Err(InputError::EmptyRecording { file: file.to_string() });
    }
    let resolver = StillRunning(Symbolizer::spawn());
    match (at, cut_ns) {
        (None, _) => Ok(replayer.finish_with(&resolver).expect("a record was applied")),
        (Some(_), Some(cut)) => Ok(replayer.report_with(cut, &resolver)),
        (Some(at), None) => {
            let start = replayer.started_ns().unwrap_or(0);
            let end = replayer.end_ns().unwrap_or(start);
            let target = start.saturating_add(at.as_nanos() as u64);
            if target > end {
                let covers = end.saturating_sub(start) as f64 / 1e9;
                return Err(InputError::PastTheEnd {
                    file: file.to_string(),
                    at: seconds_text(at.as_secs_f64()),
                    what: "recording",
                    end: format!("it covers {}", seconds_text(covers)),
                });
            }
            Ok(replayer.report_with(target, &resolver))
        }
    }
}

/// A recording's stacks named where their processes still run (the same instances: the
/// symbolizer checks each one's start time), bare addresses for the others, as in a replay.
struct StillRunning(Symbolizer);

impl Resolver for StillRunning {
    fn resolve(&self, stacks: &[(ProcessKey, std::sync::Arc<[u64]>)]) -> Vec<SymbolizedStack> {
        for (process, _) in stacks {
            self.0.note_process(process.pid, process.start_ns);
        }
        self.0.flush();
        self.0.resolve(stacks)
    }

    fn exe(&self, process: ProcessKey) -> Option<String> {
        self.0.exe(process)
    }
}

fn seconds_text(seconds: f64) -> String {
    format!("{}s", (seconds * 1000.0).round() / 1000.0)
}

/// The file an input was read from, as one identity (same file under two names included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}
