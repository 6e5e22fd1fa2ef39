//! The most telling frame of a call site (issue 4 item 6): the first frame, innermost first,
//! that belongs to the application rather than to a runtime, a standard library or libc. A
//! stack with no application frame falls back to its first well-known client library frame
//! (gRPC, libcurl, hyper...), which then says more than `connect`.
use super::Frame;

/// Where a frame's code comes from, as far as choosing a call site goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The language runtime, its standard library, libc, the loader, an interpreter's own code.
    Runtime,
    /// A well-known client library: shown, chosen only when the application has no frame.
    Library,
    /// Anything else: the program's own code.
    Application,
    /// An address nothing could be said about (not in any mapping): never chosen.
    Unknown,
}

/// Go, Rust and C++ standard library and runtime namespaces (after any leading `<` or `&`).
const RUNTIME_PREFIXES: &[&str] = &[
    // Go: the runtime and the standard library packages a dial goes through.
    "runtime.",
    "runtime/",
    "syscall.",
    "internal/",
    "net.",
    "net/",
    "crypto/",
    "sync.",
    "context.",
    "io.",
    "os.",
    "time.",
    "reflect.",
    "bufio.",
    "fmt.",
    "errors.",
    "database/sql.",
    "vendor/",
    // Rust and C++.
    "std::",
    "core::",
    "alloc::",
    "__rust",
    "_start",
    "__libc_",
    "__GI_",
    "__gnu_cxx::",
    // CPython's interpreter loop when it has no perf map.
    "_Py",
    "Py",
    "method_vectorcall",
    "cfunction_",
];

/// Well-known client libraries and async runtimes, by namespace.
const LIBRARY_PREFIXES: &[&str] = &[
    "google.golang.org/grpc",
    "golang.org/x/",
    "github.com/segmentio/kafka-go",
    "github.com/IBM/sarama",
    "github.com/Shopify/sarama",
    "github.com/redis/go-redis",
    "github.com/go-redis/",
    "github.com/jackc/pgx",
    "github.com/lib/pq",
    "github.com/go-sql-driver/mysql",
    "go.mongodb.org/mongo-driver",
    "tokio::",
    "mio::",
    "socket2::",
    "hyper::",
    "hyper_util::",
    "reqwest::",
    "h2::",
    "tonic::",
    "tower::",
    "futures_util::",
    "async_std::",
    "sqlx::",
    "redis::",
    "grpc::",
    "boost::asio::",
    "curl_",
];

/// Shared objects that are the runtime, by file name prefix.
const RUNTIME_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "libstdc++",
    "libgcc_s",
    "libm.so",
    "libresolv",
    "libnss_",
    "libdl",
    "librt",
    "libpython",
    "python",
    "libjvm",
    "java",
    "node",
    "libnode",
    "libruby",
    "ruby",
    "perl",
    "libperl",
    "php",
    "[vdso]",
];

/// Shared objects that are well-known client libraries.
const LIBRARY_MODULES: &[&str] = &[
    "libcurl",
    "libssl",
    "libcrypto",
    "libgnutls",
    "libpq",
    "libmysqlclient",
    "libmariadb",
    "libgrpc",
    "libzmq",
    "libhiredis",
    "libmongoc",
    "librdkafka",
    "libevent",
    "libuv",
];

/// Perf-map names of interpreted code that lives in the runtime's own library directory.
const RUNTIME_SOURCE_DIRS: &[&str] = &[
    "/lib/python3",
    "/lib/python2",
    "/lib/jvm/",
    "node:internal",
    "/lib/ruby/",
];

/// Directories of Python packages: a library's, native code or Python alike (urllib3,
/// psycopg2 and its `_psycopg` extension).
const PYTHON_PACKAGE_DIRS: &[&str] = &["/site-packages/", "/dist-packages/"];

/// Where CPython's standard library lives: `/usr/lib/python3.11/`, `.../versions/3.12.1/lib/python3.12/`.
const PYTHON_STDLIB_DIRS: &[&str] = &["/lib/python3.", "/lib64/python3.", "/lib/python2."];

/// A Python frame's origin, by its file: the standard library (`socket.py`, `http/client.py`
/// under the interpreter's `lib/python3.X`) and frozen modules are the runtime, installed
/// packages libraries, anything else the application.
fn python_origin(frame: &Frame) -> Origin {
    let Some(file) = frame.file.as_deref() else { return Origin::Unknown };
    if PYTHON_PACKAGE_DIRS.iter().any(|dir| file.contains(dir)) {
        Origin::Library
    } else if file.starts_with("<frozen ") || PYTHON_STDLIB_DIRS.iter().any(|dir| file.contains(dir)) {
        Origin::Runtime
    } else {
        Origin::Application
    }
}

pub fn origin(frame: &Frame) -> Origin {
    if frame.runtime == Some(super::FrameRuntime::Python) {
        return python_origin(frame);
    }
    let module = frame
        .module
        .as_deref()
        .map(|module| module.rsplit('/').next().unwrap_or(module));
    if let Some(function) = frame.function.as_deref() {
        let name = function.trim_start_matches(['<', '&', '*', '(']);
        if RUNTIME_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            return Origin::Runtime;
        }
        if LIBRARY_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            return Origin::Library;
        }
        // Code a JIT or interpreter named through its perf map: judged by its source file.
        if module.is_some_and(|module| module.starts_with("perf-") && module.ends_with(".map")) {
            return if RUNTIME_SOURCE_DIRS.iter().any(|dir| function.contains(dir)) {
                Origin::Runtime
            } else {
                Origin::Application
            };
        }
    }
    match module {
        None => Origin::Unknown,
        Some(module)
            if RUNTIME_MODULES
                .iter()
                .any(|prefix| module.starts_with(prefix)) =>
        {
            Origin::Runtime
        }
        Some(module)
            if LIBRARY_MODULES
                .iter()
                .any(|prefix| module.starts_with(prefix)) =>
        {
            Origin::Library
        }
        Some("[anon]") if frame.function.is_none() => Origin::Unknown,
        // A Python package's native extension (`_psycopg.cpython-311-x86_64-linux-gnu.so`).
        Some(_) if frame.module.as_deref().is_some_and(|path| PYTHON_PACKAGE_DIRS.iter().any(|dir| path.contains(dir))) => {
            Origin::Library
        }
        // The standard library's extensions (`lib-dynload/_socket.cpython-311-...so`).
        Some(_) if frame.module.as_deref().is_some_and(|path| path.contains("/lib-dynload/")) => Origin::Runtime,
        Some(_) => Origin::Application,
    }
}

/// The index of the most telling frame: the first application frame (in the connecting
/// thread's stack, else in a spawning goroutine's), else the first library frame, else the
/// outermost named frame that is not the thread's own machinery (for a stack that is all
/// standard library, such as net/http's dial goroutine: `net/http.(*Transport).dialConnFor`
/// says more than nothing), else none.
pub fn pick(frames: &[Frame]) -> Option<usize> {
    let origins: Vec<Origin> = frames.iter().map(origin).collect();
    // In a Python process the application's Python function names the call site: the native
    // stack of an interpreter built without frame pointers can end in return addresses that
    // merely land in some library.
    if let Some(index) = frames
        .iter()
        .zip(&origins)
        .position(|(frame, &origin)| frame.runtime.is_some() && origin == Origin::Application)
    {
        return Some(index);
    }
    origins
        .iter()
        .position(|&origin| origin == Origin::Application)
        .or_else(|| origins.iter().position(|&origin| origin == Origin::Library))
        .or_else(|| frames.iter().rposition(|frame| frame.function.as_deref().is_some_and(|name| !is_thread_machinery(name))))
}

/// The language runtime's scheduler, thread starts and stack roots: never a call site.
fn is_thread_machinery(function: &str) -> bool {
    function.starts_with("runtime.") || super::truncation::is_root(function)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            runtime: None,
            address: 0x1000,
            function: function.map(str::to_string),
            file: None,
            line: None,
            module: module.map(str::to_string),
            inlined: false,
            recovered: false,
            spawned_by: None,
        }
    }

    fn python(function: &str, file: &str) -> Frame {
        Frame { runtime: Some(super::super::FrameRuntime::Python), file: Some(file.to_string()), ..frame(Some(function), None) }
    }

    #[test]
    fn the_python_application_is_told_before_psycopg2_libpq_and_the_standard_library() {
        let frames = [
            frame(Some("__libc_connect"), Some("/usr/lib/x86_64-linux-gnu/libc.so.6")),
            frame(Some("PQconnectdb"), Some("/usr/lib/x86_64-linux-gnu/libpq.so.5.15")),
            frame(Some("conn_connect"), Some("/usr/lib/python3/dist-packages/psycopg2/_psycopg.cpython-311-x86_64-linux-gnu.so")),
            frame(Some("_PyEval_EvalFrameDefault"), Some("/usr/bin/python3.11")),
            python("connect", "/usr/lib/python3/dist-packages/psycopg2/__init__.py"),
            python("create_connection", "/usr/lib/python3.11/socket.py"),
            python("HTTPConnection.connect", "/root/.pyenv/versions/3.12.1/lib/python3.12/http/client.py"),
            python("<module>", "<frozen runpy>"),
            python("handle_job", "/srv/worker/jobs.py"),
            python("main", "/srv/worker/jobs.py"),
        ];
        let origins: Vec<Origin> = frames.iter().map(origin).collect();
        assert_eq!(origins[2], Origin::Library);
        assert_eq!(origins[4..8], [Origin::Library, Origin::Runtime, Origin::Runtime, Origin::Runtime]);
        assert_eq!(pick(&frames), Some(8));
        // A native frame the walk left in some unknown library does not outrank it.
        let mut with_stray = frames.to_vec();
        with_stray.insert(1, frame(Some("inflate"), Some("/usr/lib/x86_64-linux-gnu/libz.so.1")));
        assert_eq!(pick(&with_stray), Some(9));
        // A Python function whose name looks like CPython's own C functions is still the application's.
        assert_eq!(origin(&python("PyQueueWorker.run", "/srv/worker/queue.py")), Origin::Application);
        // Without the application's frames, the package says the most.
        assert_eq!(pick(&frames[..8]), Some(1));
    }

    #[test]
    fn go_runtime_and_net_frames_are_passed_over_for_the_application() {
        let exe = Some("/srv/consumer");
        let frames = [
            frame(Some("syscall.Syscall"), exe),
            frame(Some("net.(*netFD).connect"), exe),
            frame(
                Some("google.golang.org/grpc.(*addrConn).resetTransport"),
                exe,
            ),
            frame(Some("main.dialBackend"), exe),
            frame(Some("main.handleMessage"), exe),
            frame(Some("runtime.goexit"), exe),
        ];
        assert_eq!(pick(&frames), Some(3));
        // Without an application frame, the client library says the most.
        assert_eq!(pick(&frames[..3]), Some(2));
        // Without either, the outermost standard library frame: where the dial started.
        assert_eq!(pick(&frames[..2]), Some(1));
    }

    #[test]
    fn a_stack_of_the_standard_library_alone_names_its_outermost_frame_not_no_stack() {
        let exe = Some("/srv/client");
        let frames = [
            frame(Some("syscall.connect"), exe),
            frame(Some("net.(*netFD).connect"), exe),
            frame(Some("net/http.(*Transport).dialConn"), exe),
            frame(Some("net/http.(*Transport).dialConnFor"), exe),
            frame(Some("runtime.goexit"), exe),
        ];
        assert_eq!(pick(&frames), Some(3));
        assert_eq!(pick(&[frame(Some("runtime.goexit"), exe), frame(None, exe)]), Some(1), "an application address");
        assert_eq!(pick(&[frame(Some("runtime.goexit"), exe)]), None);
    }

    #[test]
    fn an_application_frame_of_a_spawning_goroutine_is_preferred_to_the_library() {
        let exe = Some("/srv/consumer");
        let mut spawned = frame(Some("main.dialBackend"), exe);
        spawned.spawned_by = Some(1);
        let frames = [
            frame(Some("net.(*netFD).connect"), exe),
            frame(Some("google.golang.org/grpc.(*addrConn).resetTransport"), exe),
            frame(Some("runtime.goexit"), exe),
            frame(Some("runtime.newproc1"), exe),
            frame(Some("google.golang.org/grpc.DialContext"), exe),
            spawned,
        ];
        assert_eq!(pick(&frames), Some(5));
    }

    #[test]
    fn libc_and_rust_std_are_runtime() {
        let frames = [
            frame(
                Some("__libc_connect"),
                Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ),
            frame(None, Some("/usr/lib/x86_64-linux-gnu/libc.so.6")),
            frame(
                Some("<std::net::tcp::TcpStream>::connect"),
                Some("/srv/app"),
            ),
            frame(Some("app::pool::Pool::open"), Some("/srv/app")),
        ];
        assert_eq!(pick(&frames), Some(3));
    }

    #[test]
    fn perf_map_frames_count_by_their_source_file() {
        let python = Some("/usr/bin/python3.12");
        let map = Some("/tmp/perf-41.map");
        let frames = [
            frame(Some("_PyEval_EvalFrameDefault"), python),
            frame(
                Some("py::create_connection:/usr/lib/python3.12/socket.py"),
                map,
            ),
            frame(Some("py::open_client:/srv/app/client.py"), map),
        ];
        assert_eq!(pick(&frames), Some(2));
    }

    #[test]
    fn unknown_addresses_are_never_chosen() {
        assert_eq!(
            pick(&[frame(None, None), frame(None, Some("[anon]"))]),
            None
        );
        assert_eq!(
            pick(&[frame(None, None), frame(None, Some("/srv/stripped"))]),
            Some(1)
        );
    }
}
