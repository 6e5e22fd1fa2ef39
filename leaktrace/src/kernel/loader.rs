//! Loading and attaching the probes, with errors that say what failed and what to do.
use std::time::Duration;
use std::os::fd::AsFd;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use leaktrace_common::{ClassicStateFormat, Config, IouringFormat, filter, reported_states};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    btf::{BtfError, KernelBtf},
    privileges::{self, MissingPrivileges},
    reader::Reader,
    tracefs::{self, TracefsError},
};

/// Which attachment of `inet_sock_set_state` to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StateHook {
    /// Two `tp_btf` programs (the classic tracepoint where `tp_btf` does not load), each
    /// covering the transitions the kernel skips for the other (nested runs); every transition
    /// is applied once.
    #[default]
    Auto,
    /// Only `tp_btf`.
    Btf,
    /// Only the classic tracepoint.
    Classic,
}

/// The oldest kernel whose verifier the probes with the Python walk are tried on: 5.10's and
/// 6.1's give up on them (`cargo xtask vmtest`), 6.12's and 6.18's take them; a failed try costs
/// seconds of verification, minutes under emulation.
const PYTHON_WALK_KERNEL: (u32, u32) = (6, 2);

#[derive(Clone, Debug)]
pub struct TracerOptions {
    /// Trace only these processes (tgids). Empty: all.
    pub pids: Vec<u32>,
    /// Trace only tasks in these cgroups (cgroup v2 ids). Empty: all.
    pub cgroups: Vec<u64>,
    /// Trace only connections with one of these local or remote ports. Empty: all.
    pub ports: Vec<u16>,
    pub ring_buffer_bytes: u32,
    pub max_sockets: u32,
    pub state_hook: StateHook,
    /// How often the reader drains the ring buffer when no wakeup came.
    pub drain_interval: Duration,
    /// Which state transitions reach userspace.
    pub transitions: Transitions,
    /// Take the user stack at each open (off only to measure what the stack walk costs).
    pub user_stacks: bool,
}

/// Which TCP state transitions the probes send to userspace. Every transition is followed in
/// the kernel either way (the socket map entry's state, the missed-transition counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transitions {
    /// Every transition.
    #[default]
    All,
    /// Those the leak tracker uses: into ESTABLISHED, CLOSE_WAIT and CLOSE. A connection
    /// closed normally costs 3 records per end instead of 5.
    Essential,
}

impl Transitions {
    fn reported_states(self) -> u32 {
        match self {
            Self::All => reported_states::ALL,
            Self::Essential => reported_states::ESSENTIAL,
        }
    }
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            pids: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            ring_buffer_bytes: 8 << 20,
            max_sockets: 131_072,
            state_hook: StateHook::Auto,
            drain_interval: Duration::from_millis(25),
            transitions: Transitions::All,
            user_stacks: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Privileges(#[from] MissingPrivileges),
    #[error("{0}")]
    Memlock(String),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "this leaktrace was built without its kernel programs (AYA_BUILD_SKIP was set)\n\
         hint: build with `cargo xtask build`, which installs what the eBPF build needs"
    )]
    NotEmbedded,
    #[error("--ring-buffer-kib: {0} bytes is not a power of two of at least one page")]
    RingBufferSize(u32),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("program {program} is missing from the eBPF object (userspace and kernel programs out of step?)")]
    ProgramMissing { program: &'static str },
    #[error("failed to load program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("failed to attach program {program} to {hook}: {source}")]
    Attach {
        program: &'static str,
        hook: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
}

/// A probe and the hook it was attached to, for the user and for the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedHook {
    pub program: &'static str,
    pub hook: String,
}

/// The loaded, attached probes and their ring-buffer reader.
pub struct Tracer {
    pub(super) ebpf: Ebpf,
    pub(super) reader: Reader,
    hooks: Vec<AttachedHook>,
    options: TracerOptions,
    pub(super) kernel_offsets: leaktrace_common::KernelOffsets,
    /// Why the goroutine probe did not load, if it did not (ancestry is then unavailable).
    pub(super) go_probe_unavailable: Option<String>,
    pub(super) ancestry: super::go_ancestry::AncestryLinks,
    /// Why the probes were loaded without the Python walk, if they were.
    pub(super) python_frames_unavailable: Option<String>,
    /// Reads the probes' own messages (rare anomalies) while the probes run.
    _kernel_log: Option<super::kernel_log::KernelLog>,
}

#[cfg(leaktrace_ebpf_embedded)]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));
#[cfg(not(leaktrace_ebpf_embedded))]
static EBPF_OBJECT: &[u8] = &[];

type Loaded = (Ebpf, Option<super::kernel_log::KernelLog>, Vec<AttachedHook>);

/// Loads the object with `config` and attaches the state and accept probes.
fn load_and_attach(config: &Config, options: &TracerOptions) -> Result<Loaded, LoadError> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global("CONFIG", config, true)
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        .map_max_entries("SOCKETS", options.max_sockets);
    super::kernel_log::set_level(&mut loader);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(LoadError::Object)?;
    let kernel_log = super::kernel_log::start(&mut ebpf);
    fill_filters(&mut ebpf, options)?;
    let mut hooks = attach_state_probes(&mut ebpf, options.state_hook)?;
    hooks.extend(attach_accept_probes(&mut ebpf)?);
    Ok((ebpf, kernel_log, hooks))
}

const STATE_BTF: &str = "inet_sock_set_state_btf";
const STATE_BTF_TWIN: &str = "inet_sock_set_state_btf_twin";
const STATE_CLASSIC: &str = "inet_sock_set_state_classic";
const ACCEPT4: &str = "sys_exit_accept4";
const ACCEPT: &str = "sys_exit_accept";
const IOURING_SUBMIT: &str = "io_uring_submit_req";
const IOURING_COMPLETE: &str = "io_uring_complete";

impl Tracer {
    /// Loads and attaches the probes. Must run inside a tokio runtime (the reader registers
    /// the ring buffer's fd with it).
    pub fn start(options: TracerOptions) -> Result<Self, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        privileges::check()?;
        for limitation in privileges::limitations() {
            log::warn!("{limitation}");
        }
        privileges::raise_memlock_rlimit().map_err(LoadError::Memlock)?;
        let page = 4096;
        if !options.ring_buffer_bytes.is_power_of_two() || options.ring_buffer_bytes < page {
            return Err(LoadError::RingBufferSize(options.ring_buffer_bytes));
        }

        let offsets = KernelBtf::from_sys_fs()?.offsets()?;
        let (tracefs_root, mounted) = tracefs::ensure_mounted()?;
        if mounted {
            log::info!("mounted tracefs at {}", tracefs_root.display());
        }
        let classic = classic_state_format(&tracefs_root)?;
        let iouring = iouring_format(&tracefs_root, &offsets);
        if let Err(reason) = &iouring {
            log::info!("io_uring accepts not traced: {reason}");
        }
        let config = Config {
            offsets,
            classic,
            iouring: iouring.as_ref().map(|(format, _)| *format).unwrap_or_default(),
            filters: filter_bits(&options),
            // Wake the reader once an eighth of the buffer is pending; below that, the timed
            // drain collects records in batches.
            wakeup_bytes: options.ring_buffer_bytes / 8,
            reported_states: options.transitions.reported_states(),
            user_stacks: u32::from(options.user_stacks),
            python_frames: u32::from(privileges::kernel_at_least(PYTHON_WALK_KERNEL.0, PYTHON_WALK_KERNEL.1)),
        };

        // The Python walk makes the open probes the verifier's longest work. Kernels older than
        // PYTHON_WALK_KERNEL load them without it at once; where a later kernel's verifier still
        // gives up on them, they are loaded again without it.
        let skipped = (config.python_frames == 0).then(|| {
            let (major, minor) = PYTHON_WALK_KERNEL;
            let reason = format!(
                "the verifier of kernels before {major}.{minor} gives up on the Python walk at its 1M-instruction \
                 limit (5.10 and 6.1 measured)"
            );
            log::info!("Python frames unavailable: {reason}");
            reason
        });
        let (mut ebpf, kernel_log, mut hooks, python_frames_unavailable) = match load_and_attach(&config, &options) {
            Ok((ebpf, log, hooks)) => (ebpf, log, hooks, skipped),
            Err(err) if skipped.is_some() => return Err(err),
            Err(err) => {
                let reason = err.to_string();
                log::warn!("Python frames unavailable: the probes with the Python walk did not load ({reason}); loading them without it");
                let (ebpf, log, hooks) = load_and_attach(&Config { python_frames: 0, ..config }, &options)?;
                (ebpf, log, hooks, Some(reason))
            }
        };
        if let Ok((_, submit)) = &iouring {
            match attach_iouring_probes(&mut ebpf, submit) {
                Ok(attached) => hooks.extend(attached),
                Err(err) => log::warn!("io_uring accepts not traced: {err}"),
            }
        }
        for hook in &hooks {
            log::info!("probe {} attached to {}", hook.program, hook.hook);
        }
        let go_probe_unavailable = super::go_ancestry::load_go_probe(&mut ebpf);
        if let Some(reason) = &go_probe_unavailable {
            log::warn!("goroutine ancestry unavailable: the uprobe did not load: {reason}");
        }

        let events = ebpf.take_map("EVENTS").ok_or(LoadError::Map { map: "EVENTS", message: "missing".into() })?;
        let ring = RingBuf::try_from(events).map_err(|err| LoadError::Map { map: "EVENTS", message: err.to_string() })?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped
        // with the AsyncFd.
        let ring: AsyncFd<RingBuf<MapData>> = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| LoadError::Map { map: "EVENTS", message: format!("cannot poll the ring buffer: {err}") })?;
        let reader = Reader::new(ring, options.drain_interval);
        Ok(Self {
            ebpf,
            reader,
            hooks,
            options,
            kernel_offsets: offsets,
            go_probe_unavailable,
            ancestry: Default::default(),
            python_frames_unavailable,
            _kernel_log: kernel_log,
        })
    }

    pub fn hooks(&self) -> &[AttachedHook] {
        &self.hooks
    }

    pub fn options(&self) -> &TracerOptions {
        &self.options
    }

    /// `recursion_misses` summed over the attached programs (0 where the kernel predates it).
    pub(super) fn nested_skips(&self) -> u64 {
        self.hooks
            .iter()
            .filter_map(|hook| self.ebpf.program(hook.program))
            .filter_map(|program| program.fd().ok())
            .map(|fd| super::prog_info::recursion_misses(fd.as_fd()).unwrap_or(0))
            .sum()
    }

    /// Detaches every probe: nothing is produced after this returns, so a final drain and
    /// counter read balance exactly.
    pub(super) fn detach_all(&mut self) {
        for hook in &self.hooks {
            let Some(program) = self.ebpf.program_mut(hook.program) else { continue };
            let result = match program {
                aya::programs::Program::BtfTracePoint(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
            if let Err(err) = result {
                log::warn!("detaching {}: {err}", hook.program);
            }
        }
    }
}

fn classic_state_format(root: &std::path::Path) -> Result<ClassicStateFormat, TracefsError> {
    let offsets = tracefs::field_offsets(
        root,
        "sock",
        "inet_sock_set_state",
        &["skaddr", "oldstate", "newstate", "protocol"],
    )?;
    Ok(ClassicStateFormat { skaddr: offsets[0], oldstate: offsets[1], newstate: offsets[2], protocol: offsets[3] })
}

/// Where the io_uring tracepoints keep what the probes read, and the submission tracepoint's
/// name (older kernels call it `io_uring_submit_sqe`). `Err` says why io_uring is not traced: a
/// kernel without io_uring, or a record without a field the probes need. Older records name no
/// request (`req`) or no request flags (`flags`): those are left 0, and the probes then do
/// without what they give (telling a request by its opcode at completion; io-wq connects).
fn iouring_format(
    root: &std::path::Path,
    offsets: &leaktrace_common::KernelOffsets,
) -> Result<(IouringFormat, &'static str), String> {
    if offsets.io_kiocb_opcode == 0 {
        return Err("this kernel's BTF has no struct io_kiocb (no io_uring)".into());
    }
    let submit_fields = ["ctx", "user_data", "opcode", "sq_thread"];
    let (submit, name) = match tracefs::field_offsets(root, "io_uring", IOURING_SUBMIT, &submit_fields) {
        Ok(found) => (found, IOURING_SUBMIT),
        Err(newer) => match tracefs::field_offsets(root, "io_uring", "io_uring_submit_sqe", &submit_fields) {
            Ok(found) => (found, "io_uring_submit_sqe"),
            Err(_) => return Err(newer.to_string()),
        },
    };
    let complete_fields = ["ctx", "user_data", "res", "cflags"];
    let complete =
        tracefs::field_offsets(root, "io_uring", IOURING_COMPLETE, &complete_fields).map_err(|err| err.to_string())?;
    let optional = |tracepoint: &str, field: &str| {
        tracefs::field_offsets(root, "io_uring", tracepoint, &[field]).map_or(0, |found| found[0])
    };
    let format = IouringFormat {
        submit_ctx: submit[0],
        submit_req: optional(name, "req"),
        submit_user_data: submit[1],
        submit_opcode: submit[2],
        submit_flags: optional(name, "flags"),
        submit_sq_thread: submit[3],
        complete_ctx: complete[0],
        complete_req: optional(IOURING_COMPLETE, "req"),
        complete_user_data: complete[1],
        complete_res: complete[2],
        complete_cflags: complete[3],
    };
    Ok((format, name))
}

fn filter_bits(options: &TracerOptions) -> u32 {
    let mut bits = 0;
    if !options.pids.is_empty() {
        bits |= filter::PIDS;
    }
    if !options.cgroups.is_empty() {
        bits |= filter::CGROUPS;
    }
    if !options.ports.is_empty() {
        bits |= filter::PORTS;
    }
    bits
}

fn fill_filters(ebpf: &mut Ebpf, options: &TracerOptions) -> Result<(), LoadError> {
    fn fill<K: aya::Pod>(ebpf: &mut Ebpf, map: &'static str, keys: &[K]) -> Result<(), LoadError> {
        let err = |message: String| LoadError::Map { map, message };
        let handle = ebpf.map_mut(map).ok_or_else(|| err("missing".into()))?;
        let mut table: HashMap<_, K, u8> = HashMap::try_from(handle).map_err(|e| err(e.to_string()))?;
        for key in keys {
            table.insert(key, 1, 0).map_err(|e| err(format!("too many entries? {e}")))?;
        }
        Ok(())
    }
    fill(ebpf, "FILTER_PIDS", &options.pids)?;
    fill(ebpf, "FILTER_CGROUPS", &options.cgroups)?;
    fill(ebpf, "FILTER_PORTS", &options.ports)?;
    Ok(())
}

fn attach_state_probes(ebpf: &mut Ebpf, preference: StateHook) -> Result<Vec<AttachedHook>, LoadError> {
    let mut hooks = Vec::new();
    if preference != StateHook::Classic {
        match attach_state_btf(ebpf, STATE_BTF) {
            Ok(hook) => hooks.push(hook),
            Err(err) if preference == StateHook::Btf => return Err(err),
            Err(err) => {
                log::warn!("tp_btf hook unavailable, using the classic tracepoint alone: {}", one_line(&err));
                log::debug!("tp_btf: {err}");
            }
        }
    }
    if preference == StateHook::Auto && !hooks.is_empty() {
        match attach_state_btf(ebpf, STATE_BTF_TWIN) {
            Ok(hook) => {
                hooks.push(hook);
                return Ok(hooks);
            }
            Err(err) => {
                log::warn!("second tp_btf program unavailable, the classic tracepoint covers instead: {}", one_line(&err));
                log::debug!("second tp_btf program: {err}");
            }
        }
    }
    if preference != StateHook::Btf {
        hooks.push(attach_tracepoint(ebpf, STATE_CLASSIC, "sock", "inet_sock_set_state")?);
    }
    Ok(hooks)
}

/// A load error in one line: its first line and, for a program the verifier rejected, the
/// verifier's reason (the last line before its statistics), not its whole log.
fn one_line(err: &LoadError) -> String {
    let text = err.to_string();
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default();
    let reason = lines.take_while(|line| !line.starts_with("verification time")).last();
    match reason {
        Some(reason) => format!("{first} ... {reason}"),
        None => first.to_string(),
    }
}

fn attach_state_btf(ebpf: &mut Ebpf, name: &'static str) -> Result<AttachedHook, LoadError> {
    let btf = Btf::from_sys_fs().map_err(|err| LoadError::Program {
        program: name,
        source: ProgramError::Btf(err),
    })?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::ProgramMissing { program: name })?
        .try_into()
        .map_err(|source| LoadError::Program { program: name, source })?;
    program.load("inet_sock_set_state", &btf).map_err(|source| LoadError::Program { program: name, source })?;
    let hook = "tp_btf/inet_sock_set_state".to_string();
    program.attach().map_err(|source| LoadError::Attach { program: name, hook: hook.clone(), source })?;
    Ok(AttachedHook { program: name, hook })
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
) -> Result<AttachedHook, LoadError> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::ProgramMissing { program: name })?
        .try_into()
        .map_err(|source| LoadError::Program { program: name, source })?;
    program.load().map_err(|source| LoadError::Program { program: name, source })?;
    let hook = format!("tracepoint/{category}/{tracepoint}");
    program.attach(category, tracepoint).map_err(|source| LoadError::Attach { program: name, hook: hook.clone(), source })?;
    Ok(AttachedHook { program: name, hook })
}

/// The io_uring pair: the submission (named `submit`) records an accept's submitter, the
/// completion attributes its socket. Both or neither.
fn attach_iouring_probes(ebpf: &mut Ebpf, submit: &str) -> Result<Vec<AttachedHook>, LoadError> {
    let complete = attach_tracepoint(ebpf, IOURING_COMPLETE, "io_uring", IOURING_COMPLETE)?;
    let submitted = attach_tracepoint(ebpf, IOURING_SUBMIT, "io_uring", submit);
    match submitted {
        Ok(submitted) => Ok(vec![submitted, complete]),
        Err(err) => {
            if let Some(aya::programs::Program::TracePoint(program)) = ebpf.program_mut(IOURING_COMPLETE) {
                let _ = program.unload();
            }
            Err(err)
        }
    }
}

/// accept4(2) everywhere; accept(2) where the architecture has it (not on arm64).
fn attach_accept_probes(ebpf: &mut Ebpf) -> Result<Vec<AttachedHook>, LoadError> {
    let mut hooks = vec![attach_tracepoint(ebpf, ACCEPT4, "syscalls", "sys_exit_accept4")?];
    match attach_tracepoint(ebpf, ACCEPT, "syscalls", "sys_exit_accept") {
        Ok(hook) => hooks.push(hook),
        Err(err) => log::info!("accept(2) not traced (accept4 is): {err}"),
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracefs tree holding `io_uring` format files, removed on drop.
    struct FormatTree(std::path::PathBuf);

    impl FormatTree {
        fn new(test: &str, formats: &[(&str, &String)]) -> Self {
            let root = std::env::temp_dir().join(format!("leaktrace-{test}-{}", std::process::id()));
            for (tracepoint, fields) in formats {
                let dir = root.join("events/io_uring").join(tracepoint);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("format"), fields).unwrap();
            }
            Self(root)
        }
    }

    impl Drop for FormatTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn io_uring_kernel() -> leaktrace_common::KernelOffsets {
        leaktrace_common::KernelOffsets { io_kiocb_opcode: 36, ..Default::default() }
    }

    /// A `format` file's field lines, from `(declaration, offset)` pairs.
    fn format_file(fields: &[(&str, u32)]) -> String {
        fields
            .iter()
            .map(|(declared, offset)| format!("\tfield:{declared};\toffset:{offset};\tsize:8;\tsigned:0;\n"))
            .collect()
    }

    /// The layout of a kernel whose submission tracepoint is still `io_uring_submit_sqe` and
    /// whose records name no request: traced, with the request's offsets left 0.
    #[test]
    fn older_io_uring_records_are_read_without_the_request() {
        let submit = [
            ("void * ctx", 8),
            ("u8 opcode", 16),
            ("u64 user_data", 24),
            ("bool force_nonblock", 32),
            ("bool sq_thread", 33),
        ];
        let complete = [("void * ctx", 8), ("u64 user_data", 16), ("int res", 24), ("unsigned cflags", 28)];
        let tree = FormatTree::new("old-io-uring", &[
            ("io_uring_submit_sqe", &format_file(&submit)),
            ("io_uring_complete", &format_file(&complete)),
        ]);
        let (format, name) = iouring_format(&tree.0, &io_uring_kernel()).unwrap();
        assert_eq!(name, "io_uring_submit_sqe");
        let submitted = (format.submit_ctx, format.submit_opcode, format.submit_user_data, format.submit_sq_thread);
        assert_eq!(submitted, (8, 16, 24, 33));
        assert_eq!((format.submit_req, format.submit_flags, format.complete_req), (0, 0, 0), "absent: 0");
        assert_eq!((format.complete_user_data, format.complete_res, format.complete_cflags), (16, 24, 28));
    }

    #[test]
    fn io_uring_is_not_traced_without_a_field_the_probes_need_and_says_which() {
        let submit = [("void * ctx", 8), ("u8 opcode", 32), ("u64 user_data", 24), ("bool sq_thread", 48)];
        let tree = FormatTree::new("no-res", &[
            ("io_uring_submit_req", &format_file(&submit)),
            ("io_uring_complete", &format_file(&[("void * ctx", 8), ("u64 user_data", 24)])),
        ]);
        let err = iouring_format(&tree.0, &io_uring_kernel()).unwrap_err();
        assert!(err.contains("io_uring_complete") && err.contains("`res`"), "{err}");
        let err = iouring_format(&tree.0, &leaktrace_common::KernelOffsets::default()).unwrap_err();
        assert!(err.contains("no struct io_kiocb"), "{err}");
    }

    /// This kernel's own tracepoints, where it has io_uring: every field found.
    #[test]
    fn this_kernels_io_uring_records_have_every_field() {
        let root = std::path::Path::new(super::tracefs::TRACEFS);
        if !root.join("events/io_uring").is_dir() {
            eprintln!("skipped: no io_uring tracepoints under {} (not mounted, or no io_uring)", root.display());
            return;
        }
        let (format, name) = iouring_format(root, &io_uring_kernel()).unwrap();
        assert_eq!(name, IOURING_SUBMIT);
        assert!(format.submit_req > 0 && format.submit_flags > 0 && format.complete_req > 0, "{format:?}");
    }

    #[test]
    fn a_verifier_rejection_is_logged_as_one_line_with_its_reason() {
        // As the verifier of Linux 5.10 rejects the tp_btf program (shaped like aya's error).
        let message = "Verifier output: arg#0 type is not a struct\n    0: (bf) r7 = r1\n    \
                       103: (85) call bpf_get_socket_cookie#46\n    unknown func bpf_get_socket_cookie#46\n    \
                       verification time 2878 usec\n    stack depth 48+0\n";
        let err = LoadError::Map { map: "X", message: message.to_string() };
        assert_eq!(
            one_line(&err),
            "map X: Verifier output: arg#0 type is not a struct ... unknown func bpf_get_socket_cookie#46"
        );
        let plain = LoadError::RingBufferSize(3);
        assert_eq!(one_line(&plain), plain.to_string());
    }
}
