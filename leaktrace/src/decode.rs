//! Ring-buffer records to [`Event`]s, with every length checked: a record too short for its
//! kind, an unknown kind or a stack depth past the array is an error, never a misread.
use leaktrace_common::{
    ConnOpenRecord, EventHeader, EventKind, MAX_GO_HOPS, MAX_PYTHON_DEPTH, MAX_STACK_DEPTH, OPEN_RECORD_FIXED,
    PythonWalk, StateChangeRecord, Tuple,
};

use crate::{
    event::{
        ConnOpen, Event, EventBody, Goroutine, Owner, PythonFrameRef, PythonStatus, SocketId, Spawn, StateChange,
        normalise_addr,
    },
    tcp::TcpState,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header")]
    TooShort { len: usize },
    #[error("record kind {kind} is unknown to this build (kernel programs and userspace out of step?)")]
    UnknownKind { kind: u32 },
    #[error("{kind:?} record of {len} bytes, expected at least {expected}")]
    Truncated { kind: EventKind, len: usize, expected: usize },
    #[error("stack depth {depth} exceeds the {max} frames a record holds")]
    StackTooDeep { depth: u32, max: usize },
    #[error("goroutine ancestry of {hops} hops, at most {max} expected")]
    TooManyHops { hops: u32, max: usize },
    #[error("{depth} Python frames, at most {max} expected")]
    TooManyPythonFrames { depth: u32, max: usize },
    #[error("Python walk status {status} is unknown to this build (kernel programs and userspace out of step?)")]
    UnknownPythonWalk { status: u32 },
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader =
        read_record(bytes).ok_or(DecodeError::TooShort { len: bytes.len() })?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind { kind: header.kind })?;
    let body = match kind {
        EventKind::Connect | EventKind::Accept => {
            let open = with_open_record(bytes, kind, conn_open)?;
            if kind == EventKind::Connect { EventBody::Connect(open) } else { EventBody::Accept(open) }
        }
        EventKind::StateChange => {
            let record: StateChangeRecord = read_record(bytes).ok_or(DecodeError::Truncated {
                kind,
                len: bytes.len(),
                expected: size_of::<StateChangeRecord>(),
            })?;
            let (local, remote) = endpoints(&record.tuple);
            EventBody::State(StateChange {
                old_state: TcpState::from_kernel(record.old_state),
                new_state: TcpState::from_kernel(record.new_state),
                local,
                remote,
            })
        }
    };
    Ok(Event {
        ts_ns: header.ts_ns,
        cpu: header.cpu,
        socket: SocketId { sk: header.sk, birth_ns: header.birth_ns },
        cookie: header.cookie,
        body,
    })
}

fn conn_open(record: &ConnOpenRecord) -> Result<ConnOpen, DecodeError> {
    let depth = record.stack_depth as usize;
    let goroutine = goroutine(record, depth)?;
    let (python, python_status) = python(record)?;
    let (local, remote) = endpoints(&record.tuple);
    let comm_len = record.owner.comm.iter().position(|&b| b == 0).unwrap_or(record.owner.comm.len());
    Ok(ConnOpen {
        owner: Owner {
            pid: record.owner.tgid,
            tid: record.owner.tid,
            process_start_ns: record.owner.process_start_ns,
            cgroup_id: record.owner.cgroup_id,
            comm: String::from_utf8_lossy(&record.owner.comm[..comm_len]).into_owned(),
        },
        local,
        remote,
        state: TcpState::from_kernel(record.state),
        stack: record.stack[..depth].to_vec(),
        stack_error: (record.stack_error != 0).then_some(record.stack_error),
        goroutine,
        python,
        python_status,
    })
}

/// The Python frames, (code, instruction) word pairs after the thread's and goroutines' frames.
fn python(record: &ConnOpenRecord) -> Result<(Vec<PythonFrameRef>, Option<PythonStatus>), DecodeError> {
    let trail = &record.python;
    let walk = PythonWalk::from_u32(trail.status).ok_or(DecodeError::UnknownPythonWalk { status: trail.status })?;
    let status = match walk {
        PythonWalk::NotWalked => None,
        PythonWalk::Complete => Some(PythonStatus::Complete),
        PythonWalk::Truncated => Some(PythonStatus::Truncated),
        PythonWalk::NoInterpreter => Some(PythonStatus::NoInterpreter),
        PythonWalk::ThreadNotFound => Some(PythonStatus::ThreadNotFound),
        PythonWalk::ReadFailed => Some(PythonStatus::ReadFailed { errno: trail.error }),
        PythonWalk::NoThreadBase => Some(PythonStatus::NoThreadBase),
    };
    let at = native_frames_in(record);
    let end = at + 2 * python_depth(record)?;
    let words = record.stack.get(at..end).ok_or(DecodeError::StackTooDeep { depth: end as u32, max: MAX_STACK_DEPTH })?;
    let frames = words.chunks_exact(2).map(|pair| PythonFrameRef { code: pair[0], instr: pair[1] }).collect();
    Ok((frames, status))
}

fn python_depth(record: &ConnOpenRecord) -> Result<usize, DecodeError> {
    let depth = record.python.depth;
    if depth as usize > MAX_PYTHON_DEPTH {
        return Err(DecodeError::TooManyPythonFrames { depth, max: MAX_PYTHON_DEPTH });
    }
    Ok(depth as usize)
}

/// The goroutine trail, whose hops' frames follow the thread's `depth` frames.
fn goroutine(record: &ConnOpenRecord, depth: usize) -> Result<Option<Goroutine>, DecodeError> {
    let trail = &record.goroutine;
    if trail.goid == 0 {
        return Ok(None);
    }
    let hops = trail.hops as usize;
    if hops > MAX_GO_HOPS {
        return Err(DecodeError::TooManyHops { hops: trail.hops, max: MAX_GO_HOPS });
    }
    let mut at = depth;
    let mut spawned_by = Vec::with_capacity(hops);
    for hop in 0..hops {
        let end = at + trail.hop_depth[hop] as usize;
        let frames = record.stack.get(at..end).ok_or(DecodeError::StackTooDeep { depth: end as u32, max: MAX_STACK_DEPTH })?;
        spawned_by.push(Spawn { goid: trail.spawner_goid[hop], stack: frames.to_vec() });
        at = end;
    }
    Ok(Some(Goroutine { goid: trail.goid, spawned_by }))
}

/// Frames of the record's native stacks: the thread's stack and every goroutine hop's.
fn native_frames_in(record: &ConnOpenRecord) -> usize {
    let trail = &record.goroutine;
    let hops = (trail.hops as usize).min(MAX_GO_HOPS);
    record.stack_depth as usize + trail.hop_depth[..hops].iter().map(|&depth| depth as usize).sum::<usize>()
}

/// Words the record's `stack` holds in all: the native stacks' frames, then two per Python frame.
fn frames_in(record: &ConnOpenRecord) -> Result<usize, DecodeError> {
    Ok(native_frames_in(record) + 2 * python_depth(record)?)
}

fn endpoints(tuple: &Tuple) -> (std::net::SocketAddr, std::net::SocketAddr) {
    (
        normalise_addr(tuple.family, &tuple.local_addr, tuple.local_port),
        normalise_addr(tuple.family, &tuple.remote_addr, tuple.remote_port),
    )
}

std::thread_local! {
    /// Where an open record is assembled to be read: kept from one record to the next, so that a
    /// decode copies the few hundred bytes the probe sent, not zeroes and moves the whole
    /// record (1 KiB and more, for its stack array) several times. Past the bytes of the record
    /// being read it holds an earlier record's, which nothing reads: every frame read is within
    /// the record's own length, checked first.
    static OPEN_SCRATCH: std::cell::RefCell<Box<ConnOpenRecord>> =
        // SAFETY: the record is made of integers only, valid as zeros.
        std::cell::RefCell::new(Box::new(unsafe { std::mem::zeroed() }));
}

/// An open record, which the probes send only up to the end of its frames: the fixed part, then
/// `stack_depth` frames, the goroutine hops' and the Python frames' words. `read` sees it once
/// its frames are checked to lie within `bytes`.
fn with_open_record<R>(
    bytes: &[u8],
    kind: EventKind,
    read: impl FnOnce(&ConnOpenRecord) -> Result<R, DecodeError>,
) -> Result<R, DecodeError> {
    let truncated = |expected| DecodeError::Truncated { kind, len: bytes.len(), expected };
    if bytes.len() < OPEN_RECORD_FIXED {
        return Err(truncated(OPEN_RECORD_FIXED));
    }
    OPEN_SCRATCH.with_borrow_mut(|record| {
        let len = bytes.len().min(size_of::<ConnOpenRecord>());
        // SAFETY: `len` bytes fit in both; the record is made of integers only, so any bytes
        // are a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut **record).cast::<u8>(), len);
        }
        let depth = frames_in(record)?;
        if depth > MAX_STACK_DEPTH {
            return Err(DecodeError::StackTooDeep { depth: depth as u32, max: MAX_STACK_DEPTH });
        }
        let expected = OPEN_RECORD_FIXED + depth * 8;
        if bytes.len() < expected {
            return Err(truncated(expected));
        }
        read(record)
    })
}

/// Copies a `#[repr(C)]` plain-data record out of the front of `bytes`, if it is long enough.
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: the length is checked, `read_unaligned` has no alignment need, and every T
        // used here is made of integers only, valid for any bit pattern.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use leaktrace_common::{AF_INET, Owner as RawOwner, tcp_state};

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test records are plain integers, fully initialised (zeroed first).
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn v4_tuple() -> Tuple {
        let mut tuple = Tuple { family: AF_INET, local_port: 40000, remote_port: 8080, ..Default::default() };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        tuple
    }

    fn connect_record(depth: u32) -> ConnOpenRecord {
        let mut record: ConnOpenRecord = unsafe { std::mem::zeroed() };
        record.header = EventHeader { kind: EventKind::Connect as u32, cpu: 1, ts_ns: 5, sk: 0xabc, birth_ns: 4, cookie: 9 };
        record.owner = RawOwner { tgid: 42, tid: 43, process_start_ns: 1, cgroup_id: 2, comm: *b"client\0\0\0\0\0\0\0\0\0\0" };
        record.tuple = v4_tuple();
        record.state = tcp_state::SYN_SENT;
        record.stack_depth = depth;
        record.stack[0] = 0x1111;
        record.stack[1] = 0x2222;
        record
    }

    #[test]
    fn decodes_a_connect_with_its_stack() {
        let event = decode(&as_bytes(&connect_record(2))).unwrap();
        assert_eq!(event.socket, SocketId { sk: 0xabc, birth_ns: 4 });
        let EventBody::Connect(open) = event.body else { panic!("not a connect: {event:?}") };
        assert_eq!(open.owner.pid, 42);
        assert_eq!(open.owner.comm, "client");
        assert_eq!(open.stack, vec![0x1111, 0x2222]);
        assert_eq!(open.remote, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(open.state, TcpState::SynSent);
    }

    /// The probes send an open only up to the end of its stack.
    #[test]
    fn an_open_sent_up_to_its_stack_decodes_as_the_whole_record() {
        let full = as_bytes(&connect_record(2));
        let sent = &full[..OPEN_RECORD_FIXED + 2 * 8];
        assert_eq!(decode(sent).unwrap(), decode(&full).unwrap());
        let mut stackless = connect_record(0);
        stackless.stack_error = -14;
        let EventBody::Connect(open) = decode(&as_bytes(&stackless)[..OPEN_RECORD_FIXED]).unwrap().body else {
            panic!("not a connect")
        };
        assert_eq!((open.stack, open.stack_error), (vec![], Some(-14)));
    }

    /// Records are assembled in one buffer kept between them: a short record after a long one
    /// reads its own frames only, never the long one's.
    #[test]
    fn a_short_open_after_a_long_one_keeps_none_of_its_frames() {
        let mut long = connect_record(6);
        long.stack[2..6].copy_from_slice(&[0x3333, 0x4444, 0x5555, 0x6666]);
        assert_eq!(decode(&as_bytes(&long)).unwrap().open().unwrap().stack.len(), 6);
        let short = as_bytes(&connect_record(1));
        let open = decode(&short[..OPEN_RECORD_FIXED + 8]).unwrap();
        assert_eq!(open.open().unwrap().stack, vec![0x1111]);
        // A record cut inside its fixed part is refused, whatever the buffer held before.
        assert_eq!(
            decode(&short[..OPEN_RECORD_FIXED - 1]),
            Err(DecodeError::Truncated { kind: EventKind::Connect, len: OPEN_RECORD_FIXED - 1, expected: OPEN_RECORD_FIXED })
        );
    }

    #[test]
    fn a_goroutine_trail_follows_the_thread_stack() {
        let mut record = connect_record(2);
        record.goroutine.goid = 31;
        record.goroutine.hops = 2;
        record.goroutine.spawner_goid = [17, 1, 0];
        record.goroutine.hop_depth = [1, 2, 0];
        record.stack[2] = 0x3333;
        record.stack[3] = 0x4444;
        record.stack[4] = 0x5555;
        let full = as_bytes(&record);
        let event = decode(&full[..OPEN_RECORD_FIXED + 5 * 8]).unwrap();
        let open = event.open().unwrap();
        assert_eq!(open.stack, vec![0x1111, 0x2222]);
        let goroutine = open.goroutine.as_ref().unwrap();
        assert_eq!(goroutine.goid, 31);
        assert_eq!(
            goroutine.spawned_by,
            vec![Spawn { goid: 17, stack: vec![0x3333] }, Spawn { goid: 1, stack: vec![0x4444, 0x5555] }]
        );
        // A trail whose frames were not all sent is a truncated record.
        assert_eq!(
            decode(&full[..OPEN_RECORD_FIXED + 4 * 8]),
            Err(DecodeError::Truncated { kind: EventKind::Connect, len: OPEN_RECORD_FIXED + 32, expected: OPEN_RECORD_FIXED + 40 })
        );
        record.goroutine.hops = 4;
        assert_eq!(decode(&as_bytes(&record)), Err(DecodeError::TooManyHops { hops: 4, max: MAX_GO_HOPS }));
    }

    #[test]
    fn python_frames_follow_the_thread_stack_as_word_pairs() {
        let mut record = connect_record(2);
        record.python.depth = 2;
        record.python.status = PythonWalk::Complete as u32;
        record.stack[2..6].copy_from_slice(&[0x7f00_1000, 0x7f00_1042, 0x7f00_2000, 0x7f00_2010]);
        let full = as_bytes(&record);
        let event = decode(&full[..OPEN_RECORD_FIXED + 6 * 8]).unwrap();
        let open = event.open().unwrap();
        assert_eq!(open.stack, vec![0x1111, 0x2222]);
        assert_eq!(
            open.python,
            vec![PythonFrameRef { code: 0x7f00_1000, instr: 0x7f00_1042 }, PythonFrameRef { code: 0x7f00_2000, instr: 0x7f00_2010 }]
        );
        assert_eq!(open.python_status, Some(PythonStatus::Complete));
        assert_eq!(
            decode(&full[..OPEN_RECORD_FIXED + 5 * 8]),
            Err(DecodeError::Truncated { kind: EventKind::Connect, len: OPEN_RECORD_FIXED + 40, expected: OPEN_RECORD_FIXED + 48 })
        );
        // A failed walk: no frames, the errno kept.
        record.python = leaktrace_common::PythonTrail { depth: 0, status: PythonWalk::ReadFailed as u32, error: -14, _pad: 0 };
        let open = decode(&as_bytes(&record)[..OPEN_RECORD_FIXED + 16]).unwrap();
        let open = open.open().unwrap();
        assert_eq!((open.python.len(), open.python_status), (0, Some(PythonStatus::ReadFailed { errno: -14 })));
        // Not a registered process: no status at all.
        record.python = Default::default();
        assert_eq!(decode(&as_bytes(&record)).unwrap().open().unwrap().python_status, None);
        record.python.status = 99;
        assert_eq!(decode(&as_bytes(&record)), Err(DecodeError::UnknownPythonWalk { status: 99 }));
        record.python = leaktrace_common::PythonTrail { depth: 33, status: 1, error: 0, _pad: 0 };
        assert_eq!(decode(&as_bytes(&record)), Err(DecodeError::TooManyPythonFrames { depth: 33, max: MAX_PYTHON_DEPTH }));
        // Python frames past the record's end.
        let mut deep = connect_record(120);
        deep.python = leaktrace_common::PythonTrail { depth: 4, status: 1, error: 0, _pad: 0 };
        assert_eq!(decode(&as_bytes(&deep)), Err(DecodeError::StackTooDeep { depth: 128, max: MAX_STACK_DEPTH }));
    }

    #[test]
    fn decodes_a_state_change() {
        let record = StateChangeRecord {
            header: EventHeader { kind: EventKind::StateChange as u32, sk: 1, birth_ns: 2, ..Default::default() },
            tuple: v4_tuple(),
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
        };
        let event = decode(&as_bytes(&record)).unwrap();
        let change = event.state_change().unwrap();
        assert_eq!((change.old_state, change.new_state), (TcpState::Established, TcpState::CloseWait));
    }

    #[test]
    fn rejects_short_unknown_and_overdeep_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::TooShort { len: 8 }));
        let mut unknown = as_bytes(&StateChangeRecord::default());
        unknown[0] = 77;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind { kind: 77 }));
        let full = as_bytes(&connect_record(2));
        assert_eq!(
            decode(&full[..100]),
            Err(DecodeError::Truncated { kind: EventKind::Connect, len: 100, expected: OPEN_RECORD_FIXED })
        );
        // Two frames promised, one and a half sent.
        assert_eq!(
            decode(&full[..OPEN_RECORD_FIXED + 12]),
            Err(DecodeError::Truncated { kind: EventKind::Connect, len: OPEN_RECORD_FIXED + 12, expected: OPEN_RECORD_FIXED + 16 })
        );
        assert_eq!(
            decode(&as_bytes(&connect_record(500))),
            Err(DecodeError::StackTooDeep { depth: 500, max: MAX_STACK_DEPTH })
        );
    }

    #[test]
    fn records_encoded_from_a_real_run_decode_back() {
        // fuzz/encode_records.py's seeds, from a `leaktrace events` run of python3 clients.
        let connect = decode(include_bytes!("../../fuzz/corpus/decode/connect-1")).unwrap();
        let EventBody::Connect(open) = connect.body else { panic!("{connect:?}") };
        assert_eq!((open.owner.comm.as_str(), open.remote.port()), ("python3", 19555));
        let state = decode(include_bytes!("../../fuzz/corpus/decode/state-1")).unwrap();
        assert!(matches!(state.body, EventBody::State(_)), "{state:?}");
    }
}
