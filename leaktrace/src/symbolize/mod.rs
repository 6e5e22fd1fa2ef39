//! Symbolized call sites (issue 4): the raw user stacks the kernel takes at connect/accept,
//! turned into frames people read (function, file, line, module, inlined calls), for native,
//! Rust, Go (stripped too), JIT and containerised programs, and for processes that have exited.
//!
//! - [`Symbolizer`]: the handle the event loop and the views share. [`Symbolizer::note_process`]
//!   is called at every open event and costs a hash lookup; a capture thread then records the
//!   process's mappings and pins its files ([`capture`]). [`Symbolizer::symbolize`] resolves
//!   stacks on the symbolizer thread that owns blazesym ([`engine`]), each distinct stack once.
//! - [`Frame`], [`SymbolizedStack`]: what the JSON report and the text views show; the text form
//!   lives in [`format`], the choice of the most telling frame in [`telling`], the truncation
//!   mark in [`truncation`].
//! - Sources: blazesym (ELF symbols, DWARF), `.gopclntab` for stripped Go ([`gopclntab`]), perf
//!   maps for JIT code ([`perfmap`]).
pub mod capture;
mod engine;
pub mod format;
pub mod gopclntab;
pub mod perfmap;
mod recover;
pub mod telling;
pub mod truncation;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use capture::{CaptureError, ProcessKey, Registry, Slot, SlotState};

use crate::pyruntime::names::FrameNames;

/// How many processes' captures are kept (oldest forgotten first).
const MAX_PROCESSES: usize = 16_384;

/// One frame of a user stack, as the JSON report shows it (design contract: function, file,
/// line, module, address as "0x..." hex string).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The address the kernel recorded (a return address for every frame but the first).
    #[serde(with = "crate::event::hex_u64")]
    pub address: u64,
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file, as the debug information (or Go's table) names it: usually a full path.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The mapped file (as the process sees its path), `[vdso]`, `[anon]` (JIT code without a
    /// perf map), the perf map's path for JIT code it names, or null (in no mapping).
    pub module: Option<String>,
    /// An inlined call: listed before the frame it was inlined into, same address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
    /// A caller the kernel's frame-pointer walk skipped, recovered from the call instruction
    /// before the next frame's return address: its function and module are known, its line is
    /// not, and `address` is the function's entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// A frame of a Go goroutine's ancestry rather than of the connecting thread: the stack of
    /// the goroutine that ran the `go` statement, `1` for the connecting goroutine's spawner,
    /// `2` for the spawner's spawner... (see `goroutine`'s frames in the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_by: Option<u32>,
    /// An interpreted language's frame rather than machine code: `"python"` for a CPython
    /// frame (its `address` is the code object's, its `module` null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FrameRuntime>,
}

/// The interpreter whose frame a [`Frame`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameRuntime {
    Python,
}

/// A stack's frames, innermost first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SymbolizedStack {
    pub frames: Vec<Frame>,
    /// Index in `frames` of the most telling frame: the first that belongs to the application
    /// rather than to a runtime, standard library or libc (issue item 6).
    pub telling_frame: Option<usize>,
    /// The frame-pointer walk is known to have stopped short of the thread's root (issue item 7).
    pub truncated: bool,
}

impl SymbolizedStack {
    /// A stack nothing could be said about: its addresses alone (each goroutine hop's marked).
    pub fn addresses_only(stack: &[u64]) -> Self {
        let (native, python) = crate::pyruntime::stack::split(stack);
        let mut frames: Vec<Frame> = goroutine_segments(native)
            .flat_map(|(spawned_by, segment)| {
                segment.iter().map(move |&address| Frame {
                    runtime: None,
                    address,
                    function: None,
                    file: None,
                    line: None,
                    module: None,
                    inlined: false,
                    recovered: false,
                    spawned_by,
                })
            })
            .collect();
        frames.extend(python.map(|(code, _)| crate::pyruntime::stack::frame(code, None)));
        Self {
            frames,
            telling_frame: None,
            truncated: false,
        }
    }

    /// The most telling frame, if one was chosen.
    pub fn telling(&self) -> Option<&Frame> {
        self.frames.get(self.telling_frame?)
    }
}

/// A call stack's parts: the thread's own stack (`None`), then each spawning goroutine's stack
/// (`Some(1)`, `Some(2)`...), as [`crate::event::ConnOpen::call_stack`] joined them.
pub fn goroutine_segments(stack: &[u64]) -> impl Iterator<Item = (Option<u32>, &[u64])> {
    stack
        .split(|&address| address == crate::event::GOROUTINE_BOUNDARY)
        .enumerate()
        .map(|(hop, segment)| ((hop > 0).then_some(hop as u32), segment))
}

/// A stack to symbolize: the owner's (pid, start time) from [`crate::event::Owner`] and the raw
/// stack from [`crate::event::ConnOpen::stack`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackRequest {
    pub pid: u32,
    pub process_start_ns: u64,
    pub stack: Vec<u64>,
}

/// What symbolization has cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SymbolizerStats {
    /// Distinct processes noted, and how many of them were captured / could not be.
    pub processes_noted: u64,
    pub processes_captured: u64,
    /// Gone before the capture thread reached them (or pid reused).
    pub processes_missed: u64,
    /// Stacks asked for that were already symbolized.
    pub stack_cache_hits: u64,
    /// Distinct stacks symbolized.
    pub stacks_symbolized: u64,
    /// Per-address (file, offset) cache, shared across processes mapping the same binary.
    pub address_cache_hits: u64,
    pub address_cache_misses: u64,
    /// Callers a frame-pointer walk skipped, recovered from call instructions.
    pub callers_recovered: u64,
    /// Time spent symbolizing the distinct stacks (cache misses).
    pub symbolize_time: Duration,
}

impl SymbolizerStats {
    /// Share of stack requests answered from the cache.
    pub fn stack_hit_rate(&self) -> f64 {
        let total = self.stack_cache_hits + self.stacks_symbolized;
        if total == 0 {
            0.0
        } else {
            self.stack_cache_hits as f64 / total as f64
        }
    }

    /// Distinct stacks symbolized per second of symbolizing.
    pub fn stacks_per_second(&self) -> f64 {
        let seconds = self.symbolize_time.as_secs_f64();
        if seconds == 0.0 {
            0.0
        } else {
            self.stacks_symbolized as f64 / seconds
        }
    }
}

#[derive(Default)]
struct Counters {
    processes_noted: AtomicU64,
    processes_captured: AtomicU64,
    processes_missed: AtomicU64,
    stack_cache_hits: AtomicU64,
    stacks_symbolized: AtomicU64,
    address_cache_hits: AtomicU64,
    address_cache_misses: AtomicU64,
    callers_recovered: AtomicU64,
    symbolize_ns: AtomicU64,
}

impl Counters {
    fn count_capture(&self, key: ProcessKey, outcome: &Result<(), CaptureError>) {
        match outcome {
            Ok(()) => self.processes_captured.fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                log::debug!(
                    "no symbols for pid {} (started at {} ns): {err}",
                    key.pid,
                    key.start_ns
                );
                self.processes_missed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// State both threads and every handle share.
struct Shared {
    registry: Registry,
    counters: Counters,
    /// Python frames named at event time (see [`crate::pyruntime::names`]).
    python: Arc<FrameNames>,
}

enum CaptureMessage {
    Capture(ProcessKey, Arc<Slot>),
    /// Answered once every capture queued before it is done.
    Flush(mpsc::Sender<()>),
}

struct SymbolizeMessage {
    requests: Vec<StackRequest>,
    reply: mpsc::Sender<Vec<SymbolizedStack>>,
}

/// Owns the blazesym Symbolizer on its own thread (it is !Send); cheap to clone, Send + Sync.
/// The threads end when the last handle is dropped.
#[derive(Clone)]
pub struct Symbolizer {
    shared: Arc<Shared>,
    captures: mpsc::Sender<CaptureMessage>,
    requests: mpsc::Sender<SymbolizeMessage>,
}

impl Symbolizer {
    /// Starts the capture and symbolizer threads.
    pub fn spawn() -> Self {
        let shared = Arc::new(Shared {
            registry: Registry::new(MAX_PROCESSES),
            counters: Counters::default(),
            python: Arc::default(),
        });
        let (captures, capture_rx) = mpsc::channel::<CaptureMessage>();
        let (requests, request_rx) = mpsc::channel::<SymbolizeMessage>();
        let capturer = Arc::clone(&shared);
        thread::Builder::new()
            .name("leaktrace-capture".into())
            .spawn(move || {
                for message in capture_rx {
                    match message {
                        CaptureMessage::Capture(key, slot) => {
                            if let (_, Some(outcome)) = capturer.registry.fill(key, &slot) {
                                capturer.counters.count_capture(key, &outcome);
                            }
                        }
                        CaptureMessage::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("starting the symbolizer's capture thread: the system is out of threads");
        let engine_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("leaktrace-symbolize".into())
            .spawn(move || {
                let mut engine = engine::Engine::new(engine_shared);
                for message in request_rx {
                    let _ = message.reply.send(engine.symbolize(&message.requests));
                }
            })
            .expect("starting the symbolizer thread: the system is out of threads");
        Self {
            shared,
            captures,
            requests,
        }
    }

    /// Called by the event loop at every open event (must return in microseconds: it will be
    /// called at 50k connections/s); at the first sight of a process (pid, process_start_ns)
    /// queue the capture of what symbolizing it later needs (mappings, pinned files), so stacks
    /// still symbolize after it exits.
    pub fn note_process(&self, pid: u32, process_start_ns: u64) {
        let key = ProcessKey {
            pid,
            start_ns: process_start_ns,
        };
        if let SlotState::New(slot) = self.shared.registry.slot(key) {
            self.shared
                .counters
                .processes_noted
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.captures.send(CaptureMessage::Capture(key, slot));
        }
    }

    /// The Python frames of CPython processes, named while they run: the event loop names
    /// each open event's frames there, the symbolizer reads them.
    pub fn python_names(&self) -> &Arc<FrameNames> {
        &self.shared.python
    }

    /// Waits until every process noted so far has been captured (or found gone). For tests and
    /// for a final report that must not race the capture thread.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.captures.send(CaptureMessage::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Symbolize stacks (cached per distinct (process, stack)); blocking, called by the views
    /// once per refresh for the call sites they show. Answers in the order asked.
    pub fn symbolize(&self, requests: Vec<StackRequest>) -> Vec<SymbolizedStack> {
        let (reply, answer) = mpsc::channel();
        let fallback: Vec<SymbolizedStack> = requests
            .iter()
            .map(|request| SymbolizedStack::addresses_only(&request.stack))
            .collect();
        if self
            .requests
            .send(SymbolizeMessage { requests, reply })
            .is_err()
        {
            log::error!("the symbolizer thread has stopped; showing raw addresses");
            return fallback;
        }
        answer.recv().unwrap_or_else(|_| {
            log::error!("the symbolizer thread panicked; showing raw addresses");
            fallback
        })
    }

    pub fn stats(&self) -> SymbolizerStats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SymbolizerStats {
            processes_noted: load(&counters.processes_noted),
            processes_captured: load(&counters.processes_captured),
            processes_missed: load(&counters.processes_missed),
            stack_cache_hits: load(&counters.stack_cache_hits),
            stacks_symbolized: load(&counters.stacks_symbolized),
            address_cache_hits: load(&counters.address_cache_hits),
            address_cache_misses: load(&counters.address_cache_misses),
            callers_recovered: load(&counters.callers_recovered),
            symbolize_time: Duration::from_nanos(load(&counters.symbolize_ns)),
        }
    }
}

impl Symbolizer {
    /// The executable of a process noted earlier, as it saw the path at its capture (`None` if
    /// it was never noted, not captured yet, or gone before its capture).
    pub fn executable(&self, pid: u32, process_start_ns: u64) -> Option<String> {
        let key = ProcessKey {
            pid,
            start_ns: process_start_ns,
        };
        match self.shared.registry.slot(key) {
            SlotState::Known(slot) => slot.get().cloned().flatten()?.exe.clone(),
            // Not noted before: the lookup just made an empty slot; fill it like a first sight.
            SlotState::New(slot) => {
                let _ = self.captures.send(CaptureMessage::Capture(key, slot));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(a_function_to_find as *const () as u64)
    }

    fn own_request(stack: Vec<u64>) -> StackRequest {
        let pid = std::process::id();
        StackRequest {
            pid,
            process_start_ns: capture::process_start_ns(pid).expect("own /proc/self/stat"),
            stack,
        }
    }

    #[test]
    fn this_process_symbolizes_through_its_capture_and_the_second_time_from_the_cache() {
        let symbolizer = Symbolizer::spawn();
        let request = own_request(vec![a_function_to_find()]);
        symbolizer.note_process(request.pid, request.process_start_ns);
        symbolizer.note_process(request.pid, request.process_start_ns);
        symbolizer.flush();
        let stack = symbolizer.symbolize(vec![request.clone()]).pop().unwrap();
        let frame = &stack.frames[0];
        assert!(
            frame
                .function
                .as_deref()
                .is_some_and(|name| name.ends_with("a_function_to_find")),
            "{frame}"
        );
        assert!(
            frame
                .file
                .as_deref()
                .is_some_and(|file| file.ends_with("symbolize/mod.rs")),
            "{frame}"
        );
        let exe = std::env::current_exe().unwrap();
        assert_eq!(frame.module.as_deref(), exe.to_str(), "{frame}");
        assert_eq!(symbolizer.symbolize(vec![request]).pop().unwrap(), stack);
        let stats = symbolizer.stats();
        assert_eq!(
            (
                stats.processes_noted,
                stats.processes_captured,
                stats.processes_missed
            ),
            (1, 1, 0)
        );
        assert_eq!((stats.stacks_symbolized, stats.stack_cache_hits), (1, 1));
        assert_eq!(stats.stack_hit_rate(), 0.5);
    }

    #[test]
    fn code_mapped_after_the_capture_is_found_by_capturing_again() {
        let symbolizer = Symbolizer::spawn();
        let request = own_request(vec![a_function_to_find()]);
        let key = ProcessKey {
            pid: request.pid,
            start_ns: request.process_start_ns,
        };
        symbolizer.note_process(key.pid, key.start_ns);
        symbolizer.flush();
        // Map this binary's code a second time, as a dlopen would, after the capture.
        let image = capture::capture(key, &capture::Pins::default()).unwrap();
        let mapping = image.mapping_at(request.stack[0]).unwrap();
        let file_offset = request.stack[0] - mapping.start + mapping.offset;
        let page_offset = file_offset & !0xfff;
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        // SAFETY: a fresh private read-only mapping of a file this test opened; unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x2000,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&exe),
                page_offset as libc::off_t,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let copy = base as u64 + (file_offset - page_offset);
        let stack = symbolizer
            .symbolize(vec![StackRequest {
                stack: vec![copy],
                ..request
            }])
            .pop()
            .unwrap();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, 0x2000) };
        let frame = &stack.frames[0];
        assert!(
            frame
                .function
                .as_deref()
                .is_some_and(|name| name.ends_with("a_function_to_find")),
            "{frame}"
        );
    }

    #[test]
    fn a_reused_pid_is_not_symbolized_with_the_new_process_s_files() {
        let symbolizer = Symbolizer::spawn();
        let mut request = own_request(vec![a_function_to_find()]);
        request.process_start_ns += 10_000_000_000;
        let stack = symbolizer.symbolize(vec![request]).pop().unwrap();
        assert_eq!(stack.frames[0].module, None);
        assert_eq!(
            (stack.telling_frame, stack.truncated),
            (None, false),
            "nothing is known"
        );
        assert_eq!(symbolizer.stats().processes_missed, 1);
    }

    #[test]
    fn frames_serialize_as_the_report_contract_says() {
        let frame = Frame {
            runtime: None,
            address: 0x401234,
            function: Some("dial".into()),
            file: Some("/src/sockpuppet.c".into()),
            line: Some(83),
            module: Some("/usr/bin/sockpuppet".into()),
            inlined: false,
            recovered: false,
            spawned_by: None,
        };
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            json,
            r#"{"address":"0x401234","function":"dial","file":"/src/sockpuppet.c","line":83,"module":"/usr/bin/sockpuppet"}"#
        );
        assert_eq!(serde_json::from_str::<Frame>(&json).unwrap(), frame);
        let inlined = serde_json::to_string(&Frame {
            inlined: true,
            ..frame
        })
        .unwrap();
        assert!(inlined.ends_with(r#","inlined":true}"#), "{inlined}");
    }
}
