//! The Go test programs (`helpers/go/<name>/`), built with Debian's Go toolchains and grpc-go,
//! and driven as real processes. `grpcleak` replays leaktrace's flagship incident (a gRPC
//! client that dials per message and never closes), its fix (churn) and the right design (one
//! shared connection); `httpleak` the most common Go leak (`http.Get` without closing the body)
//! and its fix.
//!
//! Builds are offline, in GOPATH mode against Debian's packaged sources
//! (`GO111MODULE=off GOPATH=/usr/share/gocode`), without cgo (a static binary: no libc frames on
//! its stacks), into `target/test-helpers/go/`, with Debian's Go (1.19) or a newer one from
//! bookworm-backports ([`GoToolchain`]). A binary newer than every file of its source
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
const INSTALL_HINT: &str = "install Debian's golang-go and golang-google-grpc-dev, and golang-1.21-go, \
     golang-1.22-go and golang-1.23-go from bookworm-backports (`cargo xtask setup --test-deps` does all of it)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GoBuild {
    /// With Go's symbol table and DWARF.
    Normal,
    /// `-ldflags="-s -w"`: no `.symtab`, no DWARF (`.gopclntab` stays), as many production
    /// binaries ship.
    Stripped,
}

/// Which Go compiles a test program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GoToolchain {
    /// Debian 12's `go` (1.19), on PATH.
    Debian,
    /// `/usr/lib/go-1.<minor>/bin/go` from Debian's bookworm-backports (`golang-1.<minor>-go`,
    /// which `cargo xtask setup --test-deps` installs): 21, 22 and 23.
    Backports(u32),
}

impl GoToolchain {
    /// The newer Go toolchains the tests build with besides Debian's own.
    pub const BACKPORTS: [GoToolchain; 3] = [GoToolchain::Backports(21), GoToolchain::Backports(22), GoToolchain::Backports(23)];

    fn go(self) -> PathBuf {
        match self {
            GoToolchain::Debian => PathBuf::from("go"),
            GoToolchain::Backports(minor) => PathBuf::from(format!("/usr/lib/go-1.{minor}/bin/go")),
        }
    }

    /// `go1.19`, `go1.23`: the version this toolchain stamps into binaries, as `go version` says.
    pub fn version(self) -> String {
        let output = Command::new(self.go()).arg("version").output().unwrap_or_else(|err| panic!("{}: {err}; {INSTALL_HINT}", self.go().display()));
        let text = String::from_utf8_lossy(&output.stdout);
        let word = text.split_whitespace().nth(2).unwrap_or_else(|| panic!("`go version` said {text:?}"));
        word.split('.').take(2).collect::<Vec<_>>().join(".")
    }
}

/// `go tool pprof ARGS` with Debian's Go, as a user opens a profile: its standard output.
/// Panics with its stderr when it fails. Profiles it fetches over HTTP are saved under
/// `target/test-helpers/pprof` (its `PPROF_TMPDIR`), not in the home directory.
#[track_caller]
pub fn go_tool_pprof(args: &[&str]) -> String {
    let saved = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-helpers/pprof");
    let go = GoToolchain::Debian.go();
    let output = Command::new(&go)
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", &saved)
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}; {INSTALL_HINT}", go.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go tool pprof {args:?} failed ({}):\n{stderr}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A page of `go tool pprof -http`'s web view of `profile` (`/ui/top`, `/ui/flamegraph`), as a
/// browser would get it: the server is started without a browser on a free loopback port,
/// asked until it answers, and stopped.
#[track_caller]
pub fn go_tool_pprof_web(profile: &Path, page: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port").port();
    let go = GoToolchain::Debian.go();
    let mut server = Command::new(&go)
        .args(["tool", "pprof", "-no_browser", &format!("-http=127.0.0.1:{port}")])
        .arg(profile)
        .env("PPROF_TMPDIR", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-helpers/pprof"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{}: {err}; {INSTALL_HINT}", go.display()));
    let url = format!("http://127.0.0.1:{port}{page}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        match ureq::get(&url).call() {
            Ok(response) => break response.into_body().read_to_string().map_err(|err| err.to_string()),
            Err(_) if std::time::Instant::now() < deadline => thread::sleep(std::time::Duration::from_millis(200)),
            Err(err) => break Err(err.to_string()),
        }
    };
    let _ = server.kill();
    let _ = server.wait();
    answer.unwrap_or_else(|err| panic!("go tool pprof -http {}: GET {url}: {err}", profile.display()))
}

/// The built program `helpers/go/<name>`, built at most once per test process (and not at all
/// while the binary is newer than its sources). Panics with the fix when Go or grpc-go is
/// missing, and with the compiler's output when the build fails.
pub fn go_program(name: &str, build: GoBuild) -> PathBuf {
    go_program_with(name, build, GoToolchain::Debian)
}

/// [`go_program`] with the given toolchain.
pub fn go_program_with(name: &str, build: GoBuild, toolchain: GoToolchain) -> PathBuf {
    type Key = (String, GoBuild, GoToolchain);
    static BUILT: Mutex<BTreeMap<Key, PathBuf>> = Mutex::new(BTreeMap::new());
    // Held while building: the tests of one binary run on parallel threads.
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (name.to_string(), build, toolchain);
    if let Some(binary) = built.get(&key) {
        return binary.clone();
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("helpers/go").join(name);
    let out_dir = manifest.join("../target/test-helpers/go");
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", out_dir.display()));
    let toolchain_suffix = match toolchain {
        GoToolchain::Debian => String::new(),
        GoToolchain::Backports(minor) => format!("-go1.{minor}"),
    };
    let binary = out_dir.join(match build {
        GoBuild::Normal => format!("{name}{toolchain_suffix}"),
        GoBuild::Stripped => format!("{name}{toolchain_suffix}-stripped"),
    });
    if !up_to_date(&binary, &source) {
        compile(&source, &binary, build, toolchain, &out_dir);
    }
    built.insert(key, binary.clone());
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

fn compile(source: &Path, binary: &Path, build: GoBuild, toolchain: GoToolchain, out_dir: &Path) {
    if !Path::new(GRPC_SOURCE).is_dir() {
        panic!("building {}: grpc-go is missing ({GRPC_SOURCE}); {INSTALL_HINT}", source.display());
    }
    if let GoToolchain::Backports(_) = toolchain
        && !toolchain.go().exists()
    {
        panic!("building {}: {} is missing; {INSTALL_HINT}", source.display(), toolchain.go().display());
    }
    let temporary =
        out_dir.join(format!(".{}.{}.tmp", binary.file_name().unwrap().to_string_lossy(), std::process::id()));
    let mut go = Command::new(toolchain.go());
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
/// messages, stdin is a pipe (lines can be sent; its closing ends the program). Killed on drop.
pub struct GoProcess {
    what: String,
    child: Child,
    stdin: ChildStdin,
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
        Self { what, child, stdin, stdout, stderr, stderr_reader: Some(stderr_reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` and a newline to its stdin.
    #[track_caller]
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap_or_else(|err| panic!("{}: writing to its stdin: {err}", self.what));
    }

    /// Waits for it to exit (after its stdin is closed by drop, or by itself).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap_or_else(|err| panic!("{}: waiting: {err}", self.what))
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

/// A test program's server mode (`-mode server`), listening on a free loopback port.
#[derive(Debug)]
pub struct GoServer {
    pub process: GoProcess,
    pub addr: SocketAddr,
}

impl GoServer {
    /// Starts `binary -mode server` and waits until it prints `listening ADDR`.
    #[track_caller]
    pub fn start(binary: &Path) -> Self {
        let mut process =
            GoProcess::spawn(binary, &["-mode".into(), "server".into(), "-listen".into(), "127.0.0.1:0".into()]);
        let line = process.next_line();
        let addr = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{}: expected \"listening ADDR\", got {line:?}", binary.display()));
        Self { process, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl GoServer {
    /// `grpcleak -mode server` of Debian's Go: a gRPC server with grpc-go's health service.
    #[track_caller]
    pub fn grpc(build: GoBuild) -> Self {
        Self::start(&go_program("grpcleak", build))
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
    /// The leak from two application functions (`main.dialOrders`, `main.dialPayments`, in
    /// turn), through the same grpc-go call.
    LeakTwo,
    /// `httpleak`: `http.Get` per message, the body never closed.
    HttpLeak,
    /// `httpleak`: `http.Get` per message, the body read and closed (one pooled connection).
    HttpClosed,
}

impl ClientMode {
    pub fn flag(self) -> &'static str {
        match self {
            ClientMode::Leak | ClientMode::HttpLeak => "leak",
            ClientMode::Churn => "churn",
            ClientMode::Shared => "shared",
            ClientMode::LeakTcp => "leak-tcp",
            ClientMode::LeakTwo => "leak-two",
            ClientMode::HttpClosed => "closed",
        }
    }

    /// The test program that has this mode.
    pub fn program(self) -> &'static str {
        match self {
            ClientMode::HttpLeak | ClientMode::HttpClosed => "httpleak",
            _ => "grpcleak",
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

/// A test program's client process (`grpcleak` or `httpleak`).
#[derive(Debug)]
pub struct GoClient {
    pub process: GoProcess,
    pub mode: ClientMode,
    handled: u64,
}

impl GoClient {
    /// A client of Debian's Go.
    #[track_caller]
    pub fn start(build: GoBuild, mode: ClientMode, target: SocketAddr, messages: Messages) -> Self {
        Self::start_binary(&go_program(mode.program(), build), mode, target, messages)
    }

    #[track_caller]
    pub fn start_binary(binary: &Path, mode: ClientMode, target: SocketAddr, messages: Messages) -> Self {
        let mut args = vec!["-mode".into(), mode.flag().into(), "-target".into(), target.to_string()];
        args.extend(["-rate".into(), messages.per_second.to_string()]);
        if let Some(count) = messages.count {
            args.extend(["-count".into(), count.to_string()]);
        }
        Self { process: GoProcess::spawn(binary, &args), mode, handled: 0 }
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
                .unwrap_or_else(|| panic!("{} {}: expected \"handled N\", got {line:?}", self.mode.program(), self.mode.flag()));
        }
    }
}
