//! Decoded kernel events: what the rest of leaktrace (the tracker, the views, the recordings)
//! works with. Nothing here depends on aya, so these are built by hand in tests and read back
//! from `leaktrace events` recordings (one JSON object per line).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::tcp::TcpState;

/// A connection's identity: the kernel reuses `struct sock` addresses within a second, so the
/// address alone is not enough; with the birth time it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SocketId {
    #[serde(with = "hex_u64")]
    pub sk: u64,
    pub birth_ns: u64,
}

/// One kernel event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub cpu: u32,
    pub socket: SocketId,
    /// Socket cookie, where the hook could take it (0 otherwise).
    pub cookie: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// connect(): the socket's birth, in the connecting task.
    Connect(ConnOpen),
    /// accept() returned the socket, in the accepting task.
    Accept(ConnOpen),
    /// A transition of a reported socket. `new_state: CLOSE` ends its life.
    State(StateChange),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnOpen {
    pub owner: Owner,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The state when the owner was taken: SYN_SENT at connect, usually ESTABLISHED (or
    /// already CLOSE_WAIT) at accept.
    pub state: TcpState,
    /// User stack, innermost frame first. Empty when it could not be taken.
    #[serde(with = "hex_u64_vec")]
    pub stack: Vec<u64>,
    /// The negative errno `bpf_get_stack` returned, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<i32>,
    /// The Go goroutine that opened it and where it was spawned from, in a Go process with
    /// goroutine ancestry attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goroutine: Option<Goroutine>,
    /// The opening thread's Python frames, innermost first, in a CPython process registered
    /// for them (`Tracer::attach_python`). Empty elsewhere, or when the walk found none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python: Vec<PythonFrameRef>,
    /// How the Python walk went; `None` where there was none (not a registered process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_status: Option<PythonStatus>,
}

/// A Python frame as the kernel read it: the code object's address in the process and its
/// instruction field, raw (`f_lasti` before 3.11, else a pointer into the code's bytecode).
/// Userspace reads the code object to name it and turn the instruction into a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PythonFrameRef {
    #[serde(with = "hex_u64")]
    pub code: u64,
    #[serde(with = "hex_u64")]
    pub instr: u64,
}

/// How the kernel's walk of the opening thread's Python frames ended (see
/// `leaktrace_common::PythonWalk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PythonStatus {
    /// Every frame, to the outermost.
    Complete,
    /// The innermost frames; the outermost were left out (deeper than a record holds).
    Truncated,
    /// The process's interpreter list was empty (starting or shutting down).
    NoInterpreter,
    /// The thread is not one of the interpreter's (first 64) threads.
    ThreadNotFound,
    /// Reading the process's memory failed with this negative errno.
    ReadFailed { errno: i32 },
    /// The kernel gives no thread base to find the thread by (not x86_64).
    NoThreadBase,
}

/// A connecting goroutine and its recorded ancestry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goroutine {
    pub goid: u64,
    /// Its spawner first, then the spawner's spawner...: each with its stack at the `go`
    /// statement, innermost first. Empty when the goroutine was created before ancestry was
    /// attached (or its record was evicted).
    pub spawned_by: Vec<Spawn>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    pub goid: u64,
    #[serde(with = "hex_u64_vec")]
    pub stack: Vec<u64>,
}

impl ConnOpen {
    /// The stack that names the call site: the thread's stack, then each spawning goroutine's
    /// stack after a [`GOROUTINE_BOUNDARY`] (so the same library dial reached from two
    /// application functions is two call sites), then the Python frames (see
    /// [`crate::pyruntime::stack`]). Borrowed when there is neither.
    pub fn call_stack(&self) -> std::borrow::Cow<'_, [u64]> {
        let native = self.native_call_stack();
        if self.python.is_empty() {
            return native;
        }
        let python = self.python.iter().map(|frame| (frame.code, frame.instr));
        std::borrow::Cow::Owned(crate::pyruntime::stack::join(&native, python))
    }

    fn native_call_stack(&self) -> std::borrow::Cow<'_, [u64]> {
        match &self.goroutine {
            Some(goroutine) if !goroutine.spawned_by.is_empty() => {
                let mut joined = self.stack.clone();
                for spawn in &goroutine.spawned_by {
                    joined.push(GOROUTINE_BOUNDARY);
                    joined.extend_from_slice(&spawn.stack);
                }
                std::borrow::Cow::Owned(joined)
            }
            _ => std::borrow::Cow::Borrowed(&self.stack),
        }
    }
}

pub use leaktrace_common::GOROUTINE_BOUNDARY;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    /// The process's start time (CLOCK_MONOTONIC ns): (pid, start) survives pid reuse.
    pub process_start_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub old_state: TcpState,
    pub new_state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Event {
    pub fn open(&self) -> Option<&ConnOpen> {
        match &self.body {
            EventBody::Connect(open) | EventBody::Accept(open) => Some(open),
            EventBody::State(_) => None,
        }
    }

    pub fn state_change(&self) -> Option<&StateChange> {
        match &self.body {
            EventBody::State(change) => Some(change),
            _ => None,
        }
    }
}

/// An address as the kernel gave it, normalised: IPv4 in an IPv6 socket (`::ffff:a.b.c.d`)
/// becomes plain IPv4, so the same peer reads the same from a v4 or a dual-stack socket.
pub fn normalise_addr(family: u16, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == leaktrace_common::AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        let v6 = Ipv6Addr::from(*addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    };
    SocketAddr::new(ip, port)
}

/// `u64` as a `"0x…"` string: addresses read better in hex, and JSON numbers lose precision
/// above 2^53 in many consumers.
pub mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(D::Error::custom)
    }

    pub fn parse(text: &str) -> Result<u64, String> {
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| format!("expected a 0x-prefixed hex number, got {text:?}"))?;
        u64::from_str_radix(digits, 16).map_err(|err| format!("{text:?}: {err}"))
    }
}

mod hex_u64_vec {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(values: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&format!("{value:#x}"))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts.iter().map(|text| super::hex_u64::parse(text).map_err(D::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_addresses_become_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let addr = normalise_addr(leaktrace_common::AF_INET6, &mapped, 80);
        assert_eq!(addr, "127.0.0.1:80".parse().unwrap());
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(normalise_addr(leaktrace_common::AF_INET, &v4, 5), "10.1.2.3:5".parse().unwrap());
        let loopback6 = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(normalise_addr(leaktrace_common::AF_INET6, &loopback6, 1), "[::1]:1".parse().unwrap());
    }

    #[test]
    fn events_round_trip_through_json_lines() {
        let event = Event {
            ts_ns: 12,
            cpu: 1,
            socket: SocketId { sk: 0xffff_8880_1234_5678, birth_ns: 10 },
            cookie: 4096,
            body: EventBody::Connect(ConnOpen {
                owner: Owner { pid: 7, tid: 8, process_start_ns: 3, cgroup_id: 9, comm: "curl".into() },
                local: "127.0.0.1:0".parse().unwrap(),
                remote: "127.0.0.1:80".parse().unwrap(),
                state: TcpState::SynSent,
                stack: vec![0x401000, 0x7fff_0000_1000],
                stack_error: None,
                goroutine: Some(Goroutine { goid: 77, spawned_by: vec![Spawn { goid: 1, stack: vec![0x402000] }] }),
                python: vec![],
                python_status: None,
            }),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains(r#""type":"connect""#), "{line}");
        assert!(line.contains(r#""sk":"0xffff888012345678""#), "{line}");
        assert!(line.contains(r#""stack":["0x401000","0x7fff00001000"]"#), "{line}");
        assert!(line.contains(r#""goroutine":{"goid":77,"spawned_by":[{"goid":1,"stack":["0x402000"]}]}"#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        let open = event.open().unwrap();
        assert_eq!(&*open.call_stack(), &[0x401000, 0x7fff_0000_1000, GOROUTINE_BOUNDARY, 0x402000]);
        assert!(!line.contains("python"), "no Python fields outside a CPython process: {line}");
    }

    #[test]
    fn python_frames_round_trip_and_old_lines_read_without_them() {
        let old = r#"{"ts_ns":5,"cpu":0,"socket":{"sk":"0x10","birth_ns":4},"cookie":0,"type":"connect","owner":{"pid":1,"tid":1,"process_start_ns":2,"cgroup_id":3,"comm":"python3"},"local":"127.0.0.1:1","remote":"127.0.0.1:2","state":"SYN_SENT","stack":["0x1"]}"#;
        let mut event: Event = serde_json::from_str(old).unwrap();
        let EventBody::Connect(open) = &mut event.body else { panic!("{event:?}") };
        assert_eq!((open.python.as_slice(), open.python_status), (&[][..], None));
        open.python = vec![PythonFrameRef { code: 0x7f00_0000_1000, instr: 0x7f00_0000_1042 }, PythonFrameRef { code: 0x2000, instr: 6 }];
        open.python_status = Some(PythonStatus::Truncated);
        let line = serde_json::to_string(&event).unwrap();
        assert!(
            line.contains(r#""python":[{"code":"0x7f0000001000","instr":"0x7f0000001042"},{"code":"0x2000","instr":"0x6"}],"python_status":"truncated""#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        let EventBody::Connect(open) = &mut event.body else { unreachable!() };
        open.python_status = Some(PythonStatus::ReadFailed { errno: -14 });
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains(r#""python_status":{"read_failed":{"errno":-14}}"#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }
}
