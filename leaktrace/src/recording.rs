//! Recordings: the JSON-lines stream `leaktrace events` writes and `leaktrace --record` keeps,
//! read back by `leaktrace replay` to build the same report offline. Besides the events
//! (`connect`, `accept`, `state`), a recording carries what the tracker learned elsewhere:
//! `start` and `end` (the trace's bounds), `seed` and `inventory` (socket inventories) and the
//! kernel's final `counters`.
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::{event::Event, kernel::KernelCounters, tracker::Inventory};

pub const RECORDING_VERSION: u32 = 1;

/// One line of a recording.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Event(Event),
    Mark(Mark),
}

/// Every line that is not an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mark {
    /// Tracing began at `ts_ns` (CLOCK_MONOTONIC, like the events).
    Start { ts_ns: u64, version: u32 },
    /// Connections that existed at start.
    Seed(Inventory),
    /// A later inventory: idle times, and connections gone without a seen CLOSE.
    Inventory(Inventory),
    /// The kernel's final accounting.
    Counters(KernelCounters),
    /// Tracing ended at `ts_ns`.
    End { ts_ns: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("line {line}: {message}")]
    Parse { line: u64, message: String },
    /// The cause is the source: a message shows it once.
    #[error("reading the recording")]
    Io(#[from] io::Error),
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

impl Record {
    /// Parses one line; `Ok(None)` for a blank line or a type this version does not know (a
    /// newer leaktrace may add some).
    pub fn parse(text: &str, line: u64) -> Result<Option<Self>, RecordingError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let error = |err: serde_json::Error| RecordingError::Parse { line, message: err.to_string() };
        let kind = serde_json::from_str::<TypeOnly>(text).map_err(error)?.kind;
        match kind {
            "connect" | "accept" | "state" => Ok(Some(Self::Event(serde_json::from_str(text).map_err(error)?))),
            "start" | "seed" | "inventory" | "counters" | "end" => Ok(Some(Self::Mark(serde_json::from_str(text).map_err(error)?))),
            other => {
                log::debug!("line {line}: skipping a record of unknown type {other:?}");
                Ok(None)
            }
        }
    }
}

/// Reads a recording line by line. A last line cut short (no newline after it) that does not
/// parse is where a killed run stopped writing: it is left out with a warning, and everything
/// before it read.
pub fn read(mut input: impl BufRead) -> impl Iterator<Item = Result<Record, RecordingError>> {
    let mut number = 0u64;
    let mut buffer = Vec::new();
    let mut failed = false;
    std::iter::from_fn(move || loop {
        buffer.clear();
        if failed {
            return None;
        }
        match input.read_until(b'\n', &mut buffer) {
            Err(err) => {
                failed = true;
                return Some(Err(RecordingError::Io(err)));
            }
            Ok(0) => return None,
            Ok(_) => {}
        }
        number += 1;
        let cut_short = buffer.last() != Some(&b'\n');
        let parsed = match std::str::from_utf8(&buffer) {
            Ok(text) => Record::parse(text, number),
            Err(err) => Err(RecordingError::Parse { line: number, message: format!("not UTF-8 text: {err}") }),
        };
        match parsed {
            Ok(None) => continue,
            Ok(Some(record)) => return Some(Ok(record)),
            Err(err) if cut_short && number > 1 => {
                log::warn!("the recording's last line ({number}) is cut short (the run was killed?); read up to the line before");
                log::debug!("{err}");
                return None;
            }
            Err(err) => return Some(Err(err)),
        }
    })
}

/// Writes one line of a recording.
pub fn write_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{EventBody, SocketId, StateChange},
        tcp::TcpState,
    };

    #[test]
    fn every_kind_of_line_round_trips() {
        let event = Event {
            ts_ns: 5,
            cpu: 0,
            socket: SocketId { sk: 0x10, birth_ns: 1 },
            cookie: 3,
            body: EventBody::State(StateChange {
                old_state: TcpState::Established,
                new_state: TcpState::CloseWait,
                local: "127.0.0.1:1".parse().unwrap(),
                remote: "127.0.0.1:2".parse().unwrap(),
            }),
        };
        let marks = [
            Mark::Start { ts_ns: 1, version: RECORDING_VERSION },
            Mark::Seed(Inventory { ts_ns: 2, complete: true, unlisted_pids: vec![], sockets: vec![] }),
            Mark::Inventory(Inventory { ts_ns: 3, complete: false, unlisted_pids: vec![], sockets: vec![] }),
            Mark::Counters(KernelCounters { produced: 9, received: 9, ..KernelCounters::default() }),
            Mark::End { ts_ns: 7 },
        ];
        let mut text = Vec::new();
        write_line(&mut text, &event).unwrap();
        for mark in &marks {
            write_line(&mut text, mark).unwrap();
        }
        text.extend_from_slice(b"\n{\"type\":\"from_the_future\"}\n");
        let records: Vec<Record> = read(&text[..]).collect::<Result<_, _>>().unwrap();
        let mut expected = vec![Record::Event(event)];
        expected.extend(marks.into_iter().map(Record::Mark));
        assert_eq!(records, expected);
        let line = String::from_utf8(text).unwrap();
        assert!(line.contains(r#"{"type":"end","ts_ns":7}"#), "{line}");
    }

    /// Python frames and the walk's status are kept through a recording; a recording made
    /// before them (no such fields) reads as opens without them.
    #[test]
    fn python_frames_survive_a_recording_and_older_recordings_read() {
        use crate::event::{ConnOpen, Owner, PythonFrameRef, PythonStatus};
        let open = ConnOpen {
            owner: Owner { pid: 4, tid: 5, process_start_ns: 6, cgroup_id: 7, comm: "python3.11".into() },
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:5432".parse().unwrap(),
            state: TcpState::SynSent,
            stack: vec![0x7f00_0000_1234],
            stack_error: None,
            goroutine: None,
            python: vec![PythonFrameRef { code: 0x7f11_0000_0040, instr: 0x7f11_0000_00c6 }],
            python_status: Some(PythonStatus::Complete),
        };
        let event = Event { ts_ns: 5, cpu: 1, socket: SocketId { sk: 0x20, birth_ns: 4 }, cookie: 0, body: EventBody::Connect(open) };
        let mut text = Vec::new();
        write_line(&mut text, &event).unwrap();
        let records: Vec<Record> = read(&text[..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(records, vec![Record::Event(event)]);
        let older = r#"{"ts_ns":5,"cpu":1,"socket":{"sk":"0x20","birth_ns":4},"cookie":0,"type":"connect","owner":{"pid":4,"tid":5,"process_start_ns":6,"cgroup_id":7,"comm":"python3.11"},"local":"127.0.0.1:40000","remote":"127.0.0.1:5432","state":"SYN_SENT","stack":["0x7f0000001234"]}"#;
        let Some(Record::Event(event)) = Record::parse(older, 1).unwrap() else { panic!("not an event") };
        let open = event.open().unwrap();
        assert_eq!((open.python.len(), open.python_status), (0, None));
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let err = read(&b"{\"type\":\"end\",\"ts_ns\":1}\nnot json\n"[..]).nth(1).unwrap().unwrap_err();
        assert!(err.to_string().starts_with("line 2: "), "{err}");
        let err = read(&b"{\"type\":\"connect\"}\n"[..]).next().unwrap().unwrap_err();
        assert!(err.to_string().contains("line 1: missing field"), "{err}");
    }

    #[test]
    fn a_last_line_cut_short_is_where_a_killed_run_stopped() {
        let whole = "{\"type\":\"start\",\"ts_ns\":1,\"version\":1}\n{\"type\":\"end\",\"ts_ns\":2}\n";
        let cut = format!("{whole}{{\"type\":\"end\",\"ts");
        let records: Vec<Record> = read(cut.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), 2);
        // A bad line with a newline after it is an error, even the last one.
        let bad = format!("{whole}{{\"type\":\"end\",\"ts\n");
        let err = read(bad.as_bytes()).nth(2).unwrap().unwrap_err();
        assert!(err.to_string().starts_with("line 3: "), "{err}");
    }

    #[test]
    fn binary_bytes_are_a_parse_error_naming_the_line() {
        let err = read(&b"\x7fELF\x02\xff\xfe\n"[..]).next().unwrap().unwrap_err();
        assert!(err.to_string().starts_with("line 1: not UTF-8 text"), "{err}");
    }
}
