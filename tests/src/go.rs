//! The Go test programs (`helpers/go/<name>/`), built with Debian's Go toolchain and grpc-go,
//! and driven as real processes. `grpcleak` replays leaktrace's flagship incident (a gRPC
//! client that dials per message and never closes), its fix (churn) and the right design (one
//! shared connection).
//!
//! Builds are offline, in GOPATH mode against Debian's packaged sources
//! (`GO111MODULE=off GOPATH=/usr/share/gocode`), without cgo (a static binary: no libc frames on
//! its stacks), into `target/test-helpers/go/`. A binary newer than every file of its source
//! directory is reused; otherwise it is built under a temporary name and renamed into place, so
//! test binaries building at the same time never see half a file.
use std::{
    collections::BTreeMap,
    fmt,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::SystemTime,
};

/// Where Debian's golang-google-grpc-dev puts grpc-go, inside the GOPATH the builds use.
const GOPATH: &str = "/usr/share/gocode";
const GRPC_SOURCE: &str = "/usr/share/gocode/src/google.golang.org/grpc";
const INSTALL_HINT: &str = "install Debian's golang-go and golang-google-grpc-dev \
     (`cargo xtask setup --test-deps` does, or `apt-get install golang-go golang-google-grpc-dev`)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GoBuild {
    /// With Go's symbol table and DWARF.
    Normal,
    /// `-ldflags="-s -w"`: no `.symtab`, no DWARF (`.gopclntab` stays), as many production
    /// binaries ship.
    Stripped,
}

/// The built program `helpers/go/<name>`, built at most once per test process (and not at all
/// while the binary is newer than its sources). Panics with the fix when Go or grpc-go is
/// missing, and with the compiler's output when the build fails.
pub fn go_program(name: &str, build: GoBuild) -> PathBuf {
    static BUILT: Mutex<BTreeMap<(String, GoBuild), PathBuf>> = Mutex::new(BTreeMap::new());
    // Held while building: the tests of one binary run on parallel threads.
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(binary) = built.get(&(name.to_string(), build)) {
        return binary.clone();
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("helpers/go").join(name);
    let out_dir = manifest.join("../target/test-helpers/go");
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", out_dir.display()));
    let binary = out_dir.join(match build {
        GoBuild::Normal => name.to_string(),
        GoBuild::Stripped => format!("{name}-stripped"),
    });
    if !up_to_date(&binary, &source) {
        compile(&source, &binary, build, &out_dir);
    }
    built.insert((name.to_string(), build), binary.clone());
    binary
}

/// Whether `binary` exists and is newer than every file in `source`.
fn up_to_date(binary: &Path, source: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified());
    let Ok(built) = modified(binary) else { return false };
    let entries = std::fs::read_dir(source)
        .unwrap_or_else(|err| panic!("the Go helper's source directory {} cannot be read: {err}", source.display()));
    let newest = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| modified(&entry.path()).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    built > newest
}

fn compile(source: &Path, binary: &Path, build: GoBuild, out_dir: &Path) {
    if !Path::new(GRPC_SOURCE).is_dir() {
        panic!("building {}: grpc-go is missing ({GRPC_SOURCE}); {INSTALL_HINT}", source.display());
    }
    let temporary =
        out_dir.join(format!(".{}.{}.tmp", binary.file_name().unwrap().to_string_lossy(), std::process::id()));
    let mut go = Command::new("go");
    go.arg("build").args(["-buildvcs=false", "-o"]).arg(&temporary);
    if build == GoBuild::Stripped {
        go.arg("-ldflags=-s -w");
    }
    go.arg(".")
        .current_dir(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("CGO_ENABLED", "0")
        .env_remove("GOFLAGS");
    // Go needs a build cache; without a home directory, keep it beside the binaries.
    if ["GOCACHE", "XDG_CACHE_HOME", "HOME"].iter().all(|var| std::env::var_os(var).is_none()) {
        go.env("GOCACHE", out_dir.join("cache"));
    }
    let output = match go.output() {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            panic!("building {}: the Go toolchain (`go`) is not on PATH; {INSTALL_HINT}", source.display())
        }
        Err(err) => panic!("building {}: cannot run `go build`: {err}", source.display()),
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&temporary);
        panic!(
            "building {} failed ({}):\n{}{}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&temporary, binary)
        .unwrap_or_else(|err| panic!("cannot move {} to {}: {err}", temporary.display(), binary.display()));
}

/// The Go function each address falls in, through `go tool addr2line` (which reads Go's own
/// line table); `?` where it knows none. Pass return addresses minus one (all frames but the
/// innermost), so a call at the very end of a function is not credited to the next one.
pub fn go_functions(binary: &Path, addresses: &[u64]) -> Vec<String> {
    let mut child = Command::new("go")
        .args(["tool", "addr2line"])
        .arg(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run `go tool addr2line` ({err}); {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    for address in addresses {
        writeln!(stdin, "{address:#x}").expect("write to go tool addr2line");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("go tool addr2line runs");
    assert!(
        output.status.success(),
        "go tool addr2line {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Two lines per address: the function, then file:line.
    let text = String::from_utf8(output.stdout).expect("addr2line prints UTF-8");
    let functions: Vec<String> = text.lines().step_by(2).map(str::to_string).collect();
    assert_eq!(functions.len(), addresses.len(), "go tool addr2line answered {text:?}");
    functions
}

/// A running Go program: stdout is read line by line, stderr is collected for failure
/// messages, stdin is a pipe whose closing ends the program. Killed on drop.
pub struct GoProcess {
    what: String,
    child: Child,
    _stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl GoProcess {
    #[track_caller]
    pub fn spawn(binary: &Path, args: &[String]) -> Self {
        let what = format!("{} {}", binary.file_name().unwrap().to_string_lossy(), args.join(" "));
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {what}: {err}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let collected = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                collected.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Self { what, child, _stdin: stdin, stdout, stderr, stderr_reader: Some(stderr_reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line of stdout, without its newline. Panics, with the program's stderr, if it
    /// exited instead.
    #[track_caller]
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line);
        if !matches!(read, Ok(1..)) {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|err| err.to_string());
            // The program is gone: its stderr pipe ends, and the reader holds its last words.
            if let Some(reader) = self.stderr_reader.take() {
                let _ = reader.join();
            }
            panic!("{} ended ({status}) while a line was expected; its stderr:\n{}", self.what, self.stderr());
        }
        line.truncate(line.trim_end().len());
        line
    }
}

impl fmt::Debug for GoProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoProcess({}, pid {})", self.what, self.pid())
    }
}

impl Drop for GoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `grpcleak -mode server`: a gRPC server with grpc-go's health service.
#[derive(Debug)]
pub struct GrpcServer {
    pub process: GoProcess,
    pub addr: SocketAddr,
}

impl GrpcServer {
    /// Starts it on a free loopback port and waits until it listens.
    #[track_caller]
    pub fn start(build: GoBuild) -> Self {
        let binary = go_program("grpcleak", build);
        let mut process =
            GoProcess::spawn(&binary, &["-mode".into(), "server".into(), "-listen".into(), "127.0.0.1:0".into()]);
        let line = process.next_line();
        let addr = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("grpcleak server: expected \"listening ADDR\", got {line:?}"));
        Self { process, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// What a `grpcleak` client does with each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// The incident: a new gRPC connection per message, never closed.
    Leak,
    /// The fix: a new gRPC connection per message, closed after its call.
    Churn,
    /// The right design: one gRPC connection for every message.
    Shared,
    /// A plain `net.Dial` per message, never closed: the dial runs on the application's own
    /// goroutine (gRPC dials on one of its own).
    LeakTcp,
}

impl ClientMode {
    pub fn flag(self) -> &'static str {
        match self {
            ClientMode::Leak => "leak",
            ClientMode::Churn => "churn",
            ClientMode::Shared => "shared",
            ClientMode::LeakTcp => "leak-tcp",
        }
    }
}

/// How many messages a client handles, how fast.
#[derive(Clone, Copy, Debug)]
pub struct Messages {
    /// 0: as fast as they are handled.
    pub per_second: u32,
    /// Stop after this many (then hold everything until killed). `None`: never stop.
    pub count: Option<u64>,
}

/// A `grpcleak` client process.
#[derive(Debug)]
pub struct GrpcClient {
    pub process: GoProcess,
    pub mode: ClientMode,
    handled: u64,
}

impl GrpcClient {
    #[track_caller]
    pub fn start(build: GoBuild, mode: ClientMode, target: SocketAddr, messages: Messages) -> Self {
        let binary = go_program("grpcleak", build);
        let mut args = vec!["-mode".into(), mode.flag().into(), "-target".into(), target.to_string()];
        args.extend(["-rate".into(), messages.per_second.to_string()]);
        if let Some(count) = messages.count {
            args.extend(["-count".into(), count.to_string()]);
        }
        Self { process: GoProcess::spawn(&binary, &args), mode, handled: 0 }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Blocks until the client reports its `n`th message handled (`handled N` on stdout).
    #[track_caller]
    pub fn wait_handled(&mut self, n: u64) {
        while self.handled < n {
            let line = self.process.next_line();
            self.handled = line
                .strip_prefix("handled ")
                .and_then(|count| count.parse().ok())
                .unwrap_or_else(|| panic!("grpcleak {}: expected \"handled N\", got {line:?}", self.mode.flag()));
        }
    }
}
