//! The symbolizer's own thread: owns blazesym's `Symbolizer` (it is `!Send`) and the caches, and
//! turns each distinct (process, stack) into frames once.
//!
//! Every address is resolved through the process's captured mappings to a (pinned file, file
//! offset) pair, so a process that has exited, or whose binary lives in another mount namespace,
//! resolves like a live one; the result is cached per (file, offset), shared by every process
//! that maps the same binary. Return addresses are looked up at `address - 1` (the call
//! instruction) for every frame but the first, or lines and inlined frames come out wrong.
use std::{
    collections::HashMap,
    fs::File,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use blazesym::symbolize::{self as blaze, Input, Symbolized};

use super::{
    Frame, Shared, StackRequest, SymbolizedStack,
    capture::{FileId, PinnedFile, ProcessImage, ProcessKey, Region, SlotState},
    gopclntab::GoBinary,
    perfmap::PerfMap,
    recover, telling, truncation,
};

/// Cache bounds: past them a cache is emptied and refilled (distinct stacks are few in
/// practice; these only stop a pathological stream from growing memory without end).
const MAX_CACHED_STACKS: usize = 1 << 16;
const MAX_CACHED_SITES: usize = 1 << 20;
const MAX_PERF_MAPS: usize = 1 << 12;
/// Distinct files whose symbols (blazesym's parsed ELF and DWARF, Go line tables) are kept: a
/// few MiB each. Past it every file's are dropped and parsed again as stacks ask for them, so a
/// node that runs ever new executables does not grow without end.
const MAX_CACHED_FILES: usize = 256;
/// How often a live process whose stacks fall outside its captured mappings is captured again.
const RECAPTURE_INTERVAL: Duration = Duration::from_secs(1);

fn new_blazesym() -> blaze::Symbolizer {
    blaze::Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

/// What one resolved address says, before the module and address are attached.
#[derive(Clone, Debug, Default)]
struct Located {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    inlined: bool,
}

pub(super) struct Engine {
    shared: Arc<Shared>,
    blaze: blaze::Symbolizer,
    stacks: HashMap<ProcessKey, HashMap<Vec<u64>, SymbolizedStack>>,
    cached_stacks: usize,
    sites: HashMap<(FileId, u64), Arc<[Located]>>,
    go: HashMap<FileId, GoBinary>,
    /// Perf maps by process: the file (pinned at capture, or opened later) and its last parse.
    perf_maps: HashMap<ProcessKey, (Option<File>, PerfMap)>,
    /// When each process was last captured again (see `needs_recapture`).
    recaptured: HashMap<ProcessKey, Instant>,
}

impl Engine {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            blaze: new_blazesym(),
            stacks: HashMap::new(),
            cached_stacks: 0,
            sites: HashMap::new(),
            go: HashMap::new(),
            perf_maps: HashMap::new(),
            recaptured: HashMap::new(),
        }
    }

    pub fn symbolize(&mut self, requests: &[StackRequest]) -> Vec<SymbolizedStack> {
        requests
            .iter()
            .map(|request| self.symbolize_stack(request))
            .collect()
    }

    fn symbolize_stack(&mut self, request: &StackRequest) -> SymbolizedStack {
        let key = ProcessKey {
            pid: request.pid,
            start_ns: request.process_start_ns,
        };
        if let Some(hit) = self
            .stacks
            .get(&key)
            .and_then(|stacks| stacks.get(request.stack.as_slice()))
        {
            self.shared
                .counters
                .stack_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return hit.clone();
        }
        let started = Instant::now();
        let (native, python) = crate::pyruntime::stack::split(&request.stack);
        let mut image = self.image(key);
        if image
            .as_deref()
            .is_some_and(|image| self.needs_recapture(image, native))
        {
            if let Some(fresh) = self.shared.registry.recapture(key) {
                image = Some(fresh);
            }
            if self.recaptured.len() >= MAX_CACHED_STACKS {
                self.recaptured
                    .retain(|_, last| last.elapsed() < RECAPTURE_INTERVAL);
            }
            self.recaptured.insert(key, Instant::now());
        }
        let mut frames = Vec::with_capacity(request.stack.len());
        let mut truncated = false;
        for (spawned_by, segment) in super::goroutine_segments(native) {
            let first = frames.len();
            for (index, &address) in segment.iter().enumerate() {
                if index == 1
                    && let Some(lost) = image
                        .as_deref()
                        .and_then(|image| self.lost_caller(image, address, &frames[first..]))
                {
                    frames.push(lost);
                }
                let lookup = if index == 0 {
                    address
                } else {
                    address.saturating_sub(1)
                };
                self.frames_at(image.as_deref(), address, lookup, &mut frames);
            }
            for frame in &mut frames[first..] {
                frame.spawned_by = spawned_by;
            }
            // Only the thread's own walk can be cut short; a spawn's stack is kept to a depth.
            if spawned_by.is_none() {
                // Without a capture nothing is known about the stack, its end included.
                truncated = image.is_some()
                    && frames.len() > first
                    && truncation::is_truncated(
                        &frames[first..],
                        segment.len(),
                        leaktrace_common::MAX_STACK_DEPTH,
                    );
            }
        }
        // Python frames are the callers of the native ones, named at event time. The native walk
        // of an interpreter without frame pointers stops early; its Python frames go on to the
        // interpreter's outermost, so such a stack is not marked cut short.
        for (code, instr) in python {
            let name = self.shared.python.frame(key, code, instr);
            frames.push(crate::pyruntime::stack::frame(code, name.as_deref()));
            truncated = false;
        }
        let stack = SymbolizedStack {
            telling_frame: telling::pick(&frames),
            frames,
            truncated,
        };

        if self.cached_stacks >= MAX_CACHED_STACKS {
            self.stacks.clear();
            self.cached_stacks = 0;
        }
        self.stacks
            .entry(key)
            .or_default()
            .insert(request.stack.clone(), stack.clone());
        self.cached_stacks += 1;
        let counters = &self.shared.counters;
        counters.stacks_symbolized.fetch_add(1, Ordering::Relaxed);
        counters
            .symbolize_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stack
    }

    /// Whether `stack` has return addresses outside every mapping captured for its process, as
    /// after an exec or a dlopen since the capture (not for addresses too low to be code: those
    /// are the garbage of a walk through frameless code). At most once a second a process.
    fn needs_recapture(&self, image: &ProcessImage, stack: &[u64]) -> bool {
        const LOWEST_CODE_ADDRESS: u64 = 0x10000;
        let missing = stack.iter().enumerate().any(|(index, &address)| {
            let lookup = if index == 0 {
                address
            } else {
                address.saturating_sub(1)
            };
            lookup >= LOWEST_CODE_ADDRESS && image.mapping_at(lookup).is_none()
        });
        missing
            && self
                .recaptured
                .get(&image.key)
                .is_none_or(|last| last.elapsed() >= RECAPTURE_INTERVAL)
    }

    /// The capture of `key`, taking it now if the process was never noted (or its capture is
    /// still queued).
    fn image(&self, key: ProcessKey) -> Option<Arc<ProcessImage>> {
        let slot = match self.shared.registry.slot(key) {
            SlotState::New(slot) | SlotState::Known(slot) => slot,
        };
        let (image, outcome) = self.shared.registry.fill(key, &slot);
        if let Some(outcome) = outcome {
            self.shared.counters.count_capture(key, &outcome);
        }
        image
    }

    fn frames_at(
        &mut self,
        image: Option<&ProcessImage>,
        address: u64,
        lookup: u64,
        frames: &mut Vec<Frame>,
    ) {
        let unknown = |module: Option<String>| Frame {
            runtime: None,
            address,
            function: None,
            file: None,
            line: None,
            module,
            inlined: false,
            recovered: false,
            spawned_by: None,
        };
        let Some(image) = image else {
            frames.push(unknown(None));
            return;
        };
        let Some(mapping) = image.mapping_at(lookup) else {
            frames.push(unknown(None));
            return;
        };
        match &mapping.region {
            Region::File {
                path,
                file: Some(pinned),
            } => {
                let offset = lookup - mapping.start + mapping.offset;
                for located in self.locate_in_file(pinned, offset).iter() {
                    frames.push(Frame {
                        runtime: None,
                        address,
                        function: located.function.clone(),
                        file: located.file.clone(),
                        line: located.line,
                        module: Some(path.clone()),
                        inlined: located.inlined,
                        recovered: false,
                        spawned_by: None,
                    });
                }
            }
            Region::File { path, file: None } => frames.push(unknown(Some(path.clone()))),
            Region::Vdso => frames.push(unknown(Some("[vdso]".into()))),
            Region::Anonymous => match self.perf_map_symbol(image, lookup) {
                Some(function) => frames.push(Frame {
                    function: Some(function),
                    module: Some(format!("/tmp/perf-{}.map", image.namespaced_pid)),
                    ..unknown(None)
                }),
                None => frames.push(unknown(Some("[anon]".into()))),
            },
        }
    }

    /// The function(s) at `offset` of `pinned`, innermost (inlined) first.
    fn locate_in_file(&mut self, pinned: &PinnedFile, offset: u64) -> Arc<[Located]> {
        let counters = &self.shared.counters;
        if let Some(hit) = self.sites.get(&(pinned.id, offset)) {
            counters.address_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(hit);
        }
        counters
            .address_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        if !self.go.contains_key(&pinned.id) && self.go.len() >= MAX_CACHED_FILES {
            self.forget_files();
        }
        let go = self
            .go
            .entry(pinned.id)
            .or_insert_with(|| GoBinary::open(pinned.file()));
        let located: Arc<[Located]> = match go {
            GoBinary::Stripped(table) => {
                let locations = table
                    .file_offset_to_address(offset)
                    .and_then(|address| table.lookup(address));
                match locations {
                    Some(locations) => locations
                        .into_iter()
                        .map(|location| Located {
                            function: Some(location.function),
                            file: location.file,
                            line: location.line,
                            inlined: location.inlined,
                        })
                        .collect(),
                    None => Arc::new([Located::default()]),
                }
            }
            GoBinary::NotNeeded => self.locate_with_blazesym(pinned, offset).into(),
        };
        if self.sites.len() >= MAX_CACHED_SITES {
            self.sites.clear();
        }
        self.sites.insert((pinned.id, offset), Arc::clone(&located));
        located
    }

    /// Drops every file's parsed symbols (blazesym keeps them per path until it is dropped) and
    /// the addresses resolved through them.
    fn forget_files(&mut self) {
        log::debug!("symbols of {} files cached: dropping them all", self.go.len());
        self.blaze = new_blazesym();
        self.go.clear();
        self.sites.clear();
    }

    fn locate_with_blazesym(&self, pinned: &PinnedFile, offset: u64) -> Vec<Located> {
        let source = blaze::source::Source::Elf(blaze::source::Elf::new(pinned.path()));
        let sym = match self
            .blaze
            .symbolize_single(&source, Input::FileOffset(offset))
        {
            Ok(Symbolized::Sym(sym)) => sym,
            Ok(Symbolized::Unknown(_)) => return vec![Located::default()],
            Err(err) => {
                log::debug!("symbolizing offset {offset:#x} of {:?}: {err}", pinned.id);
                return vec![Located::default()];
            }
        };
        let code = |info: Option<&blaze::CodeInfo<'_>>| match info {
            Some(info) => (
                Some(info.to_path().to_string_lossy().into_owned()),
                info.line,
            ),
            None => (None, None),
        };
        // blazesym lists inlined calls outermost first, each with the location inside it; the
        // symbol's own location is the call site of the first inlined function.
        let mut located: Vec<Located> = sym
            .inlined
            .iter()
            .rev()
            .map(|inlined| {
                let (file, line) = code(inlined.code_info.as_ref());
                Located {
                    function: Some(inlined.name.to_string()),
                    file,
                    line,
                    inlined: true,
                }
            })
            .collect();
        let (file, line) = code(sym.code_info.as_deref());
        located.push(Located {
            function: Some(sym.name.to_string()),
            file,
            line,
            inlined: false,
        });
        located
    }

    /// The caller a frame-pointer walk loses when the innermost function keeps no frame (libc's
    /// `connect`): the walk resumes at its caller's return address, skipping the caller. The
    /// call instruction just before that return address names the function it called; when
    /// that is a function entry other than the innermost frame's, it is the lost caller.
    /// Recovered with its name and module, without a line (where in it the call was is lost).
    fn lost_caller(
        &mut self,
        image: &ProcessImage,
        return_address: u64,
        inner: &[Frame],
    ) -> Option<Frame> {
        // May be unnamed (a static function of a stripped library, such as liburing's inside
        // io_uring_submit): a named call target cannot be that function then.
        let innermost = inner.iter().rfind(|frame| !frame.inlined)?.function.as_deref();
        let mapping = image.mapping_at(return_address.checked_sub(1)?)?;
        let Region::File {
            file: Some(pinned), ..
        } = &mapping.region
        else {
            return None;
        };
        let target = recover::direct_call_target(
            pinned.file(),
            return_address - mapping.start + mapping.offset,
        )
        .map(|relative| return_address.wrapping_add_signed(relative))?;
        let target_mapping = image.mapping_at(target)?;
        let Region::File {
            path,
            file: Some(target_file),
        } = &target_mapping.region
        else {
            return None;
        };
        let offset = target - target_mapping.start + target_mapping.offset;
        let (name, file) = self.function_starting_at(target_file, offset)?;
        // Only a call to some other function than the innermost names a lost caller.
        if innermost == Some(name.as_str()) {
            return None;
        }
        self.shared
            .counters
            .callers_recovered
            .fetch_add(1, Ordering::Relaxed);
        Some(Frame {
            runtime: None,
            address: target,
            function: Some(name),
            file,
            line: None,
            module: Some(path.clone()),
            inlined: false,
            recovered: true,
            spawned_by: None,
        })
    }

    /// The function (and its source file) that starts exactly at `offset` of `pinned`: only a
    /// call to the very start of a named function counts (not a PLT stub, not bytes that merely
    /// look like a call).
    fn function_starting_at(
        &mut self,
        pinned: &PinnedFile,
        offset: u64,
    ) -> Option<(String, Option<String>)> {
        let go = self
            .go
            .entry(pinned.id)
            .or_insert_with(|| GoBinary::open(pinned.file()));
        if let GoBinary::Stripped(table) = go {
            let name = table.function_starting_at(table.file_offset_to_address(offset)?)?;
            let file = table
                .lookup(table.file_offset_to_address(offset)?)?
                .pop()?
                .file;
            return Some((name, file));
        }
        let source = blaze::source::Source::Elf(blaze::source::Elf::new(pinned.path()));
        let Ok(Symbolized::Sym(sym)) = self
            .blaze
            .symbolize_single(&source, Input::FileOffset(offset))
        else {
            return None;
        };
        if sym.offset != 0 || sym.name.ends_with("@plt") {
            return None;
        }
        let file = sym
            .code_info
            .as_deref()
            .map(|info| info.to_path().to_string_lossy().into_owned());
        Some((sym.name.into_owned(), file))
    }

    /// The perf-map name of a JIT address, re-reading the map if it grew.
    fn perf_map_symbol(&mut self, image: &ProcessImage, address: u64) -> Option<String> {
        if self.perf_maps.len() >= MAX_PERF_MAPS && !self.perf_maps.contains_key(&image.key) {
            self.perf_maps.clear();
        }
        let (file, map) = self.perf_maps.entry(image.key).or_insert_with(|| {
            (
                image
                    .perf_map
                    .as_ref()
                    .and_then(|file| file.try_clone().ok()),
                PerfMap::default(),
            )
        });
        if file.is_none() {
            // Not there at capture: the runtime may have written it since (while it lives).
            *file = File::open(image.perf_map_path()).ok();
        }
        if let Some(file) = file
            && let Err(err) = map.refresh(file)
        {
            log::debug!("reading the perf map of pid {}: {err}", image.key.pid);
        }
        map.lookup(address).map(str::to_string)
    }
}
