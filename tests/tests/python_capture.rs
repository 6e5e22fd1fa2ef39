//! Python frames as the kernel takes them at connect and accept: real CPython interpreters
//! (Debian's 3.11, and this machine's pyenv builds of 3.8 to 3.13 where present) run
//! `helpers/python/frames_at_open.py`, which prints the addresses of its functions' code objects
//! and then connects from two of them (one on the main thread, one on another thread) and
//! accepts in a third (through `socket.socket.accept`, itself Python code). Registered with `Tracer::attach_python` (offsets found by `pyruntime`),
//! each open must carry the opening thread's frames, innermost first: the function that made the
//! call, then its callers. Opens of processes that are not registered carry none.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
};

use leaktrace::{
    event::{ConnOpen, Event, EventBody, PythonStatus},
    kernel::{Tracer, TracerOptions},
    pyruntime::{Detection, detect},
    symbolize::capture::process_start_ns,
};
use leaktrace_tests::{
    events_until,
    python::{DEBIAN_PYTHON, interpreters},
    require_privileges,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helpers/python/frames_at_open.py");

/// A running `frames_at_open.py`: its pid, its listener's port and its code objects by name.
struct PythonProgram {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
    codes: HashMap<String, u64>,
}

impl PythonProgram {
    /// Runs the program with `python`, dialing `dial_port` and accepting on `listener` (which it
    /// inherits, so the test knows the port before the program runs).
    #[track_caller]
    fn start(python: &str, dial_port: u16, listener: &TcpListener) -> Self {
        let fd = listener.as_raw_fd();
        let mut command = Command::new(python);
        command.args([SCRIPT, &dial_port.to_string(), &fd.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: fcntl is async-signal-safe; it only lets the child keep the listener across exec.
        unsafe {
            command.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let mut child = command.spawn().unwrap_or_else(|err| panic!("starting {python}: {err}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let codes: HashMap<String, u64> = line
            .split_whitespace()
            .filter_map(|field| {
                let (name, address) = field.split_once('=')?;
                Some((name.to_string(), u64::from_str_radix(address.trim_start_matches("0x"), 16).ok()?))
            })
            .collect();
        assert_eq!(codes.len(), 7, "{python} printed {line:?}");
        let port = listener.local_addr().unwrap().port();
        Self { child, stdin, stdout, port, codes }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn code(&self, name: &str) -> u64 {
        self.codes[name]
    }

    #[track_caller]
    fn expect_line(&mut self, expected: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), expected, "the Python program's output");
    }

    /// Lets it dial, then connects to its listener for its accept.
    #[track_caller]
    fn dial_then_accept(&mut self) -> TcpStream {
        self.stdin.write_all(b"go\n").unwrap();
        self.expect_line("dialed");
        let client = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        self.expect_line("accepted");
        client
    }
}

impl Drop for PythonProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts (and keeps) every connection to the test's own listener, in this process.
fn accept_all(listener: TcpListener) {
    thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().flatten() {
            kept.push(stream);
        }
    });
}

/// The test's listener (accepting in a thread of this process), `count` listeners for Python
/// programs to inherit, and every port, for the tracer's filter.
fn listeners(count: usize) -> (u16, Vec<TcpListener>, Vec<u16>) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let own = bind();
    let port = own.local_addr().unwrap().port();
    accept_all(own);
    let python: Vec<TcpListener> = (0..count).map(|_| bind()).collect();
    let mut ports = vec![port];
    ports.extend(python.iter().map(|listener| listener.local_addr().unwrap().port()));
    (port, python, ports)
}

fn opens_of(events: &[Event], pid: u32) -> Vec<(&'static str, &ConnOpen)> {
    events
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::Connect(open) if open.owner.pid == pid => Some(("connect", open)),
            EventBody::Accept(open) if open.owner.pid == pid => Some(("accept", open)),
            _ => None,
        })
        .collect()
}

/// The open of `pid` whose innermost Python frame is `code`.
#[track_caller]
fn open_from<'a>(opens: &[(&'static str, &'a ConnOpen)], kind: &str, code: u64) -> &'a ConnOpen {
    opens
        .iter()
        .find(|(k, open)| *k == kind && open.python.first().is_some_and(|frame| frame.code == code))
        .map(|(_, open)| *open)
        .unwrap_or_else(|| panic!("no {kind} whose innermost Python frame is code {code:#x}: {opens:#x?}"))
}

fn codes(open: &ConnOpen) -> Vec<u64> {
    open.python.iter().map(|frame| frame.code).collect()
}

#[test]
fn connects_and_accepts_of_a_registered_python_process_carry_its_frames_innermost_first() {
    let Some(_guard) = require_privileges("connects_and_accepts_of_a_registered_python_process_carry_its_frames_innermost_first")
    else {
        return;
    };
    let pythons = interpreters();
    let (port, python_listeners, ports) = listeners(pythons.len());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut tracer = Tracer::start(TracerOptions { ports, ..Default::default() }).unwrap();
        for (python, listener) in pythons.into_iter().zip(&python_listeners) {
            let python = python.display().to_string();
            let mut program = PythonProgram::start(&python, port, listener);
            let pid = program.pid();
            let Detection::Python(found) = detect(pid).unwrap() else {
                panic!("{python} (pid {pid}) not detected as CPython: {:?}", detect(pid))
            };
            let offsets = found.layout.offsets(found.runtime, process_start_ns(pid).unwrap());
            tracer.attach_python(pid, offsets).unwrap();
            let _client = program.dial_then_accept();
            let events = events_until(&mut tracer, |events| opens_of(events, pid).len() == 3).await;
            let opens = opens_of(&events, pid);
            assert_eq!(opens.len(), 3, "{python}: {events:#?}");
            for (kind, open) in &opens {
                assert_eq!(open.python_status, Some(PythonStatus::Complete), "{python}: {kind} {open:#?}");
            }
            let (alpha, beta, gamma) =
                (program.code("dial_alpha"), program.code("dial_beta"), program.code("accept_gamma"));
            let (run, module, in_thread) = (program.code("run"), program.code("<module>"), program.code("in_thread"));
            // The main thread: the whole chain, to the module's code.
            assert_eq!(codes(open_from(&opens, "connect", alpha)), [alpha, run, module], "{python}");
            // socket.socket.accept is Python (socket.py) around the C accept: innermost.
            let sock_accept = program.code("socket.accept");
            assert_eq!(codes(open_from(&opens, "accept", sock_accept)), [sock_accept, gamma, run, module], "{python}");
            // The second thread: its own chain (then threading's bootstrap frames).
            let beta_codes = codes(open_from(&opens, "connect", beta));
            assert!(beta_codes.len() > 2 && beta_codes[1] == in_thread, "{python}: {beta_codes:#x?}");
            assert!(!beta_codes.contains(&run), "{python}: the main thread's frames in the second's: {beta_codes:#x?}");
            // Each frame's instruction field was read (a position in its code, never 0).
            for (_, open) in &opens {
                assert!(open.python.iter().all(|frame| frame.instr != 0), "{python}: {open:#?}");
            }
            // The test's own accepts (not a Python process) carry no Python walk.
            let own = opens_of(&events, std::process::id());
            assert!(!own.is_empty() && own.iter().all(|(_, open)| open.python_status.is_none() && open.python.is_empty()));
            tracer.detach_python(pid);
            eprintln!("{python}: frames taken at 2 connects and 1 accept");
        }
        let counters = tracer.counters().unwrap();
        assert!(counters.python_walks >= 3, "{counters:?}");
        assert_eq!(counters.python_walks_failed, 0, "{counters:?}");
    });
}

/// A CPython process that is not registered, or whose registration names another process
/// start (its pid reused), is not walked: its opens have no Python status at all.
#[test]
fn an_unregistered_or_reused_pid_gets_no_python_walk() {
    let Some(_guard) = require_privileges("an_unregistered_or_reused_pid_gets_no_python_walk") else { return };
    let python = DEBIAN_PYTHON;
    if !Path::new(python).exists() {
        eprintln!("skipped an_unregistered_or_reused_pid_gets_no_python_walk: no {python} (apt-get install python3.11)");
        return;
    }
    let (port, python_listeners, ports) = listeners(2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut tracer = Tracer::start(TracerOptions { ports, ..Default::default() }).unwrap();
        for (registered_start, listener) in [None, Some(1_000)].into_iter().zip(&python_listeners) {
            let mut program = PythonProgram::start(python, port, listener);
            let pid = program.pid();
            if let Some(start_ns) = registered_start {
                let Detection::Python(found) = detect(pid).unwrap() else { panic!("{python} not detected") };
                tracer.attach_python(pid, found.layout.offsets(found.runtime, start_ns)).unwrap();
            }
            let _client = program.dial_then_accept();
            let events = events_until(&mut tracer, |events| opens_of(events, pid).len() == 3).await;
            let opens = opens_of(&events, pid);
            assert_eq!(opens.len(), 3, "{events:#?}");
            for (kind, open) in opens {
                assert_eq!((open.python_status, open.python.len()), (None, 0), "{registered_start:?}: {kind} {open:#?}");
            }
        }
        assert_eq!(tracer.counters().unwrap().python_walks, 0);
    });
}
