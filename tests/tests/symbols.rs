//! Symbolized call sites (issue 4): real programs connect under the real probes, and the
//! stacks the kernel took read back as the functions, files and lines a person expects, for C
//! with frame pointers, Rust, Go (normal and stripped), a process that has exited, a binary in a
//! private mount namespace, JIT code named by a perf map, and C without frame pointers.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use leaktrace::{
    event::{ConnOpen, EventBody},
    kernel::TracerOptions,
    symbolize::{Frame, StackRequest, SymbolizedStack, Symbolizer},
};
use leaktrace_tests::{
    Puppet, TraceSession,
    go::{ClientMode, GoBuild, GoClient, GoServer, Messages, go_program},
    puppet::sockpuppet_binary,
    require_privileges,
};

/// A helper driven one command per line on stdin, one answer per line on stdout
/// (sockpuppet's protocol; the Rust dialer's too). Killed on drop.
struct LineProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LineProcess {
    #[track_caller]
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    #[track_caller]
    fn cmd(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write a command");
        self.stdin.flush().expect("flush the command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the answer");
        assert!(!line.is_empty(), "the helper exited during {command:?}");
        line.trim_end().to_string()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Traces connections to a fresh loopback listener while `connect(port)` makes one, and returns
/// its open event (the only connect to that port: nobody else knows it).
#[track_caller]
fn trace_connect(connect: impl FnOnce(u16)) -> ConnOpen {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    trace_connect_to(listener.local_addr().unwrap().port(), connect)
}

/// Like [`trace_connect`], to a port something already listens on.
#[track_caller]
fn trace_connect_to(port: u16, connect: impl FnOnce(u16)) -> ConnOpen {
    let session = TraceSession::start(TracerOptions {
        ports: vec![port],
        ..Default::default()
    });
    connect(port);
    let first_connect = |events: &[leaktrace::event::Event]| {
        events.iter().find_map(|event| match &event.body {
            EventBody::Connect(open) if open.remote.port() == port => Some(open.clone()),
            _ => None,
        })
    };
    session.expect(
        Duration::from_secs(10),
        "the helper's connect event",
        |events| first_connect(events).is_some(),
    );
    let open = first_connect(&session.stop().events).unwrap();
    assert!(
        open.stack_error.is_none() && !open.stack.is_empty(),
        "no user stack: {open:?}"
    );
    open
}

/// Notes the owner as the event loop would at its first event and waits for its capture.
fn noted(symbolizer: &Symbolizer, open: &ConnOpen) {
    symbolizer.note_process(open.owner.pid, open.owner.process_start_ns);
    symbolizer.flush();
}

fn symbolize(symbolizer: &Symbolizer, open: &ConnOpen) -> SymbolizedStack {
    let request = StackRequest {
        pid: open.owner.pid,
        process_start_ns: open.owner.process_start_ns,
        stack: open.stack.clone(),
    };
    symbolizer
        .symbolize(vec![request])
        .pop()
        .expect("one answer per request")
}

/// The functions of the frames in `module` (its file name), outer frames of inlined calls only.
fn functions_in<'a>(stack: &'a SymbolizedStack, module: &str) -> Vec<&'a str> {
    stack
        .frames
        .iter()
        .filter(|frame| !frame.inlined && module_name(frame) == Some(module))
        .map(|frame| frame.function.as_deref().unwrap_or("?"))
        .collect()
}

fn module_name(frame: &Frame) -> Option<&str> {
    frame
        .module
        .as_deref()
        .map(|module| module.rsplit('/').next().unwrap_or(module))
}

fn frame_named<'a>(stack: &'a SymbolizedStack, function: &str) -> &'a Frame {
    stack
        .frames
        .iter()
        .find(|frame| frame.function.as_deref() == Some(function))
        .unwrap_or_else(|| panic!("no frame {function} in\n{stack}"))
}

/// The 1-based line of `source` that contains `text`.
fn line_of(source: &Path, text: &str) -> u32 {
    let source = std::fs::read_to_string(source).unwrap();
    let index = source
        .lines()
        .position(|line| line.contains(text))
        .unwrap_or_else(|| panic!("no {text:?}"));
    index as u32 + 1
}

fn sockpuppet_source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helpers/sockpuppet.c")
}

/// sockpuppet's connect path, innermost first. `open_conn` calls libc's `connect`, a leaf
/// without a frame of its own, so the kernel's frame-pointer walk skips `open_conn`; it comes back
/// as a caller recovered from the call instruction in `dial`.
const C_CHAIN: [&str; 5] = ["open_conn", "dial", "new_client", "run_command", "main"];

#[test]
fn c_call_chain_reads_as_its_functions_in_order() {
    let Some(_guard) = require_privileges("c_call_chain_reads_as_its_functions_in_order") else {
        return;
    };
    let mut puppet = Puppet::spawn();
    let open = trace_connect(|port| {
        puppet.connect("127.0.0.1", port);
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    eprintln!("{stack}");
    assert_eq!(functions_in(&stack, "sockpuppet"), C_CHAIN, "\n{stack}");
    let first = &stack.frames[0];
    assert!(
        module_name(first).is_some_and(|module| module.starts_with("libc")),
        "innermost frame: {first}"
    );
    let dial = frame_named(&stack, "dial");
    assert_eq!(
        dial.file.as_deref(),
        Some(sockpuppet_source().to_str().unwrap()),
        "{dial}"
    );
    assert_eq!(
        dial.line,
        Some(line_of(
            &sockpuppet_source(),
            "int fd = open_conn(&ss, len);"
        )),
        "{dial}"
    );
    let open_conn = frame_named(&stack, "open_conn");
    assert!(
        open_conn.recovered && open_conn.line.is_none(),
        "{open_conn}"
    );
    assert!(
        C_CHAIN[1..]
            .iter()
            .all(|name| !frame_named(&stack, name).recovered),
        "\n{stack}"
    );
    assert_eq!(
        stack.telling().and_then(|frame| frame.function.as_deref()),
        Some("open_conn"),
        "\n{stack}"
    );
    assert!(!stack.truncated, "\n{stack}");
}

#[test]
fn a_process_that_exited_still_symbolizes() {
    let Some(_guard) = require_privileges("a_process_that_exited_still_symbolizes") else {
        return;
    };
    let mut puppet = Puppet::spawn();
    let open = trace_connect(|port| {
        puppet.connect("127.0.0.1", port);
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let pid = puppet.pid();
    assert_eq!(open.owner.pid, pid);
    puppet.kill();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    let stack = symbolize(&symbolizer, &open);
    assert_eq!(functions_in(&stack, "sockpuppet"), C_CHAIN, "\n{stack}");
    let stats = symbolizer.stats();
    assert_eq!(
        (
            stats.processes_noted,
            stats.processes_captured,
            stats.processes_missed
        ),
        (1, 1, 0),
        "{stats:?}"
    );
}

/// The Rust helper, built once per test run with frame pointers and debug information.
fn rust_dialer() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let source = manifest.join("helpers/rust/dialer.rs");
            let out_dir = manifest.join("../target/test-helpers");
            std::fs::create_dir_all(&out_dir).unwrap();
            let binary = out_dir.join("dialer");
            let status = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
                .args([
                    "--edition",
                    "2024",
                    "-g",
                    "-C",
                    "force-frame-pointers=yes",
                    "-C",
                    "opt-level=1",
                    "-o",
                ])
                .arg(&binary)
                .arg(&source)
                .status()
                .expect("rustc builds the Rust helper");
            assert!(status.success(), "building {} failed", source.display());
            binary
        })
        .clone()
}

#[test]
fn rust_names_are_demangled() {
    let Some(_guard) = require_privileges("rust_names_are_demangled") else {
        return;
    };
    let mut dialer = LineProcess::spawn(Command::new(rust_dialer()));
    let open = trace_connect(|port| {
        assert_eq!(dialer.cmd(&format!("connect {port}")), "ok");
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    eprintln!("{stack}");
    let ours = functions_in(&stack, "dialer");
    let position = |name: &str| ours.iter().position(|function| *function == name);
    let open_connection =
        position("dialer::pool::Pool::open_connection").unwrap_or_else(|| panic!("\n{stack}"));
    let main = position("dialer::main").unwrap_or_else(|| panic!("\n{stack}"));
    assert!(open_connection < main, "\n{stack}");
    assert!(
        ours.iter()
            .all(|function| !function.starts_with("_ZN") && !function.starts_with("_R")),
        "\n{stack}"
    );
    let telling = stack
        .telling()
        .unwrap_or_else(|| panic!("no telling frame in\n{stack}"));
    assert!(
        telling
            .function
            .as_deref()
            .is_some_and(|f| f.starts_with("dialer::pool::")),
        "{telling}\n{stack}"
    );
}

/// Builds `helpers/<source>` with gcc and `flags` into `target/test-helpers/<output>`.
fn build_c(source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("helpers").join(source);
    let out_dir = manifest.join("../target/test-helpers");
    std::fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(output);
    let status = Command::new("gcc")
        .args(flags)
        .args(["-g", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect(
            "gcc is needed to build the test helpers (cargo xtask setup --test-deps installs it)",
        );
    assert!(status.success(), "building {} failed", source.display());
    binary
}

/// sockpuppet as most C is shipped: optimised, without frame pointers.
fn sockpuppet_without_frame_pointers() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            build_c(
                "sockpuppet.c",
                "sockpuppet-nofp",
                &["-O2", "-fomit-frame-pointer", "-Wno-stringop-truncation"],
            )
        })
        .clone()
}

fn jitpuppet() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            build_c(
                "jitpuppet.c",
                "jitpuppet",
                &["-O0", "-fno-omit-frame-pointer"],
            )
        })
        .clone()
}

/// A directory under /tmp, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path =
            std::env::temp_dir().join(format!("leaktrace-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sh -c script` in a private mount namespace (`unshare -m`): its mounts are invisible here.
fn in_private_mount_namespace(script: &str) -> Command {
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", script]);
    command
}

#[test]
fn a_binary_in_a_private_mount_namespace_symbolizes_after_it_exits() {
    let Some(_guard) =
        require_privileges("a_binary_in_a_private_mount_namespace_symbolizes_after_it_exits")
    else {
        return;
    };
    // The binary is copied onto a tmpfs mounted in the namespace only: the host sees an empty
    // directory at the path the process runs it from.
    let dir = ScratchDir::new("mntns");
    let inside = dir.0.join("sockpuppet");
    let script = format!(
        "mount -t tmpfs leaktrace-test {dir} && cp {source} {inside} && exec {inside}",
        dir = dir.0.display(),
        source = sockpuppet_binary().display(),
        inside = inside.display()
    );
    let mut puppet = LineProcess::spawn(in_private_mount_namespace(&script));
    let open = trace_connect(|port| {
        assert!(
            puppet
                .cmd(&format!("connect 127.0.0.1 {port}"))
                .starts_with("fd ")
        );
    });
    assert!(
        !inside.exists(),
        "{} is visible outside the namespace",
        inside.display()
    );
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    // With the process gone, its namespace and tmpfs are gone too: only the pinned file is left.
    puppet.kill();
    let stack = symbolize(&symbolizer, &open);
    assert_eq!(functions_in(&stack, "sockpuppet"), C_CHAIN, "\n{stack}");
    let dial = frame_named(&stack, "dial");
    assert_eq!(
        dial.module.as_deref(),
        Some(inside.to_str().unwrap()),
        "the module is the path the process saw"
    );
}

#[test]
fn c_without_frame_pointers_is_marked_truncated() {
    let Some(_guard) = require_privileges("c_without_frame_pointers_is_marked_truncated") else {
        return;
    };
    let mut puppet = LineProcess::spawn(Command::new(sockpuppet_without_frame_pointers()));
    let open = trace_connect(|port| {
        assert!(
            puppet
                .cmd(&format!("connect 127.0.0.1 {port}"))
                .starts_with("fd ")
        );
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    eprintln!("{stack}");
    let whole = functions_in(&stack, "sockpuppet-nofp") == C_CHAIN;
    assert!(
        stack.truncated || whole,
        "neither marked truncated nor recovered:\n{stack}"
    );
    assert!(
        stack.trace_lines().last().unwrap().contains("truncated"),
        "\n{stack}"
    );
}

/// `grpcleak -mode leak-tcp` (a plain `net.Dial` per message) built `build`, dialing once; its
/// connect stack symbolized.
fn go_dial_stack(build: GoBuild) -> SymbolizedStack {
    go_program("grpcleak", build);
    let mut client = None;
    let open = trace_connect(|port| {
        let target = format!("127.0.0.1:{port}").parse().unwrap();
        let messages = Messages {
            per_second: 0,
            count: Some(1),
        };
        let mut started = GoClient::start(build, ClientMode::LeakTcp, target, messages);
        started.wait_handled(1);
        client = Some(started);
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    let stats = symbolizer.stats();
    eprintln!(
        "{build:?} Go stack: {} frames symbolized in {:?} (cold: the binary's tables or DWARF are read)",
        stack.frames.len(),
        stats.symbolize_time
    );
    drop(client);
    stack
}

/// The Go application's call chain, as issue 4's test names it.
const GO_CHAIN: [&str; 4] = [
    "main.dialTCP",
    "main.dialBackend",
    "main.handleMessage",
    "main.consume",
];

#[test]
fn go_names_are_the_same_stripped_or_not_with_lines_when_not() {
    let Some(_guard) =
        require_privileges("go_names_are_the_same_stripped_or_not_with_lines_when_not")
    else {
        return;
    };
    let normal = go_dial_stack(GoBuild::Normal);
    let stripped = go_dial_stack(GoBuild::Stripped);
    eprintln!("normal:\n{normal}\nstripped:\n{stripped}");
    let normal_names = functions_in(&normal, "grpcleak");
    // Stripped, Go's own table gives what DWARF gives: every frame, inlined calls included.
    let readable = |stack: &SymbolizedStack| -> Vec<(Option<String>, Option<u32>, bool)> {
        stack
            .frames
            .iter()
            .map(|frame| (frame.function.clone(), frame.line, frame.inlined))
            .collect()
    };
    assert_eq!(
        readable(&normal),
        readable(&stripped),
        "\nnormal:\n{normal}\nstripped:\n{stripped}"
    );
    let chain: Vec<&str> = normal_names
        .iter()
        .copied()
        .filter(|name| name.starts_with("main."))
        .collect();
    assert_eq!(chain[..GO_CHAIN.len()], GO_CHAIN, "\n{normal}");
    for stack in [&normal, &stripped] {
        assert_eq!(
            stack.telling().and_then(|frame| frame.function.as_deref()),
            Some("main.dialTCP"),
            "\n{stack}"
        );
        assert!(
            !stack.truncated,
            "a goroutine's stack ends in runtime.goexit:\n{stack}"
        );
        // Go's raw syscall stub keeps no frame: the walk skips its caller, recovered here.
        assert!(
            frame_named(stack, "syscall.RawSyscall6").recovered,
            "\n{stack}"
        );
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helpers/go/grpcleak/main.go");
    let dial = frame_named(&normal, "main.dialTCP");
    assert!(
        dial.file
            .as_deref()
            .is_some_and(|file| file.ends_with("grpcleak/main.go")),
        "{dial}"
    );
    assert_eq!(
        dial.line,
        Some(line_of(&source, "net.DialTimeout(\"tcp\", target")),
        "{dial}"
    );
}

/// Runs jitpuppet (connects through generated code it names in its perf map) by `command`, and
/// checks the generated frame is named from the perf map.
#[cfg(target_arch = "x86_64")]
fn check_jit_frame_is_named(
    command: Command,
    perf_map_inside: impl FnOnce(&ConnOpen) -> String,
) -> ConnOpen {
    let mut jit = LineProcess::spawn(command);
    let open = trace_connect(|port| {
        assert!(jit.cmd(&format!("connect {port}")).starts_with("fd "));
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    eprintln!("{stack}");
    let trampoline = frame_named(&stack, "jit_dial_trampoline");
    assert_eq!(
        trampoline.module.as_deref(),
        Some(perf_map_inside(&open).as_str()),
        "{trampoline}"
    );
    let names: Vec<&str> = stack
        .frames
        .iter()
        .filter_map(|frame| frame.function.as_deref())
        .collect();
    let at = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no {name} in\n{stack}"))
    };
    assert!(at("open_socket") < at("dial_from_jit"), "\n{stack}");
    assert!(
        at("dial_from_jit") < at("jit_dial_trampoline") && at("jit_dial_trampoline") < at("main"),
        "\n{stack}"
    );
    assert_eq!(
        stack.telling().and_then(|frame| frame.function.as_deref()),
        Some("open_socket"),
        "\n{stack}"
    );
    jit.kill();
    open
}

#[cfg(target_arch = "x86_64")]
#[test]
fn jit_code_is_named_by_its_perf_map() {
    let Some(_guard) = require_privileges("jit_code_is_named_by_its_perf_map") else {
        return;
    };
    let perf_map = |open: &ConnOpen| format!("/tmp/perf-{}.map", open.owner.pid);
    let open = check_jit_frame_is_named(Command::new(jitpuppet()), perf_map);
    let _ = std::fs::remove_file(perf_map(&open));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn jit_code_in_a_container_is_named_by_the_perf_map_it_wrote_inside() {
    let Some(_guard) =
        require_privileges("jit_code_in_a_container_is_named_by_the_perf_map_it_wrote_inside")
    else {
        return;
    };
    // Its own pid namespace (it is pid 1 there, so its map is /tmp/perf-1.map) and its own /tmp,
    // which the host does not see.
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
    ]);
    // The binary moves onto that /tmp too (read through a descriptor opened before the mount).
    command.arg(format!(
        "exec 3<{} && mount -t tmpfs leaktrace-test /tmp && cat <&3 >/tmp/jitpuppet && chmod +x /tmp/jitpuppet \
         && exec 3<&- && exec /tmp/jitpuppet",
        jitpuppet().display()
    ));
    check_jit_frame_is_named(command, |open| {
        assert!(!Path::new(&format!("/tmp/perf-{}.map", open.owner.pid)).exists());
        "/tmp/perf-1.map".to_string()
    });
}

#[test]
fn symbolization_costs_are_counted_and_each_distinct_stack_is_symbolized_once() {
    let Some(_guard) = require_privileges(
        "symbolization_costs_are_counted_and_each_distinct_stack_is_symbolized_once",
    ) else {
        return;
    };
    const PROCESSES: usize = 20;
    let mut puppets: Vec<Puppet> = (0..PROCESSES).map(|_| Puppet::spawn()).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let session = TraceSession::start(TracerOptions {
        ports: vec![port],
        ..Default::default()
    });
    for puppet in &mut puppets {
        puppet.connect("127.0.0.1", port);
    }
    let opens = |events: &[leaktrace::event::Event]| -> Vec<ConnOpen> {
        events
            .iter()
            .filter_map(|event| match &event.body {
                EventBody::Connect(open) if open.remote.port() == port => Some(open.clone()),
                _ => None,
            })
            .collect()
    };
    session.expect(
        Duration::from_secs(10),
        "every puppet's connect",
        |events| opens(events).len() == PROCESSES,
    );
    let opens = opens(&session.stop().events);

    let symbolizer = Symbolizer::spawn();
    let started = std::time::Instant::now();
    for open in &opens {
        symbolizer.note_process(open.owner.pid, open.owner.process_start_ns);
    }
    let note_new = started.elapsed() / PROCESSES as u32;
    let started = std::time::Instant::now();
    const REPEATS: u32 = 100_000;
    for _ in 0..REPEATS {
        symbolizer.note_process(opens[0].owner.pid, opens[0].owner.process_start_ns);
    }
    let note_known = started.elapsed() / REPEATS;
    symbolizer.flush();
    let requests: Vec<StackRequest> = opens
        .iter()
        .map(|open| StackRequest {
            pid: open.owner.pid,
            process_start_ns: open.owner.process_start_ns,
            stack: open.stack.clone(),
        })
        .collect();

    let first = symbolizer.symbolize(requests[..1].to_vec());
    let cold = symbolizer.stats();
    let rest = symbolizer.symbolize(requests[1..].to_vec());
    let warm = symbolizer.stats();
    let again = symbolizer.symbolize(requests.clone());
    let cached = symbolizer.stats();
    for stack in first.iter().chain(&rest).chain(&again) {
        assert_eq!(functions_in(stack, "sockpuppet"), C_CHAIN, "\n{stack}");
    }
    // Every process maps the same files at the same offsets: after the first stack, every
    // address is a cache hit, whatever ASLR did to the absolute addresses.
    let frames = cold.address_cache_misses;
    assert!(frames > 0);
    assert_eq!(warm.address_cache_misses, frames, "{warm:?}");
    assert_eq!(
        warm.address_cache_hits,
        frames * (PROCESSES as u64 - 1),
        "{warm:?}"
    );
    assert_eq!(cached.stacks_symbolized, PROCESSES as u64, "{cached:?}");
    assert_eq!(cached.stack_cache_hits, PROCESSES as u64, "{cached:?}");
    assert_eq!(
        (cached.processes_noted, cached.processes_captured),
        (PROCESSES as u64, PROCESSES as u64)
    );
    eprintln!(
        "symbolization costs: note_process {:?} (new process) / {:?} (known); first stack (cold: loads the \
         DWARF of sockpuppet and libc) {:?}; next {} distinct stacks {:?} ({:.0} stacks/s); stack cache hit rate \
         after a second pass {:.0}%; address cache {} hits / {} misses",
        note_new,
        note_known,
        cold.symbolize_time,
        PROCESSES - 1,
        warm.symbolize_time - cold.symbolize_time,
        (PROCESSES - 1) as f64 / (warm.symbolize_time - cold.symbolize_time).as_secs_f64(),
        cached.stack_hit_rate() * 100.0,
        cached.address_cache_hits,
        cached.address_cache_misses,
    );
}

#[test]
fn a_grpc_dial_on_grpc_s_own_goroutine_points_at_grpc() {
    let Some(_guard) = require_privileges("a_grpc_dial_on_grpc_s_own_goroutine_points_at_grpc")
    else {
        return;
    };
    let server = GoServer::grpc(GoBuild::Stripped);
    let mut client = None;
    let open = trace_connect_to(server.port(), |_| {
        let messages = Messages {
            per_second: 0,
            count: Some(1),
        };
        let mut started =
            GoClient::start(GoBuild::Stripped, ClientMode::Leak, server.addr, messages);
        started.wait_handled(1);
        client = Some(started);
    });
    let symbolizer = Symbolizer::spawn();
    noted(&symbolizer, &open);
    let stack = symbolize(&symbolizer, &open);
    drop(client);
    eprintln!("{stack}");
    // grpc-go dials on a goroutine it spawned: no application frame is on this stack, so the
    // most telling frame is grpc's own, never net's or the runtime's.
    let telling = stack
        .telling()
        .and_then(|frame| frame.function.as_deref())
        .unwrap_or_else(|| panic!("\n{stack}"));
    assert!(
        telling.starts_with("google.golang.org/grpc."),
        "{telling}\n{stack}"
    );
    assert!(
        functions_in(&stack, "grpcleak-stripped")
            .iter()
            .all(|name| !name.starts_with("main.")),
        "\n{stack}"
    );
    assert!(!stack.truncated, "\n{stack}");
}
