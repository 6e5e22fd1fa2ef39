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
    time::Instant,
};

use blazesym::symbolize::{self as blaze, Input, Symbolized};

use super::{
    Frame, Shared, StackRequest, SymbolizedStack,
    capture::{FileId, PinnedFile, ProcessImage, ProcessKey, Region, SlotState},
    gopclntab::GoBinary,
    perfmap::PerfMap,
    telling, truncation,
};

/// Cache bounds: past them a cache is emptied and refilled (distinct stacks are few in
/// practice; these only stop a pathological stream from growing memory without end).
const MAX_CACHED_STACKS: usize = 1 << 16;
const MAX_CACHED_SITES: usize = 1 << 20;

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
}

impl Engine {
    pub fn new(shared: Arc<Shared>) -> Self {
        let blaze = blaze::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self {
            shared,
            blaze,
            stacks: HashMap::new(),
            cached_stacks: 0,
            sites: HashMap::new(),
            go: HashMap::new(),
            perf_maps: HashMap::new(),
        }
    }

    pub fn symbolize(&mut self, requests: &[StackRequest]) -> Vec<SymbolizedStack> {
        requests.iter().map(|request| self.symbolize_stack(request)).collect()
    }

    fn symbolize_stack(&mut self, request: &StackRequest) -> SymbolizedStack {
        let key = ProcessKey { pid: request.pid, start_ns: request.process_start_ns };
        if let Some(hit) = self.stacks.get(&key).and_then(|stacks| stacks.get(request.stack.as_slice())) {
            self.shared.counters.stack_cache_hits.fetch_add(1, Ordering::Relaxed);
            return hit.clone();
        }
        let started = Instant::now();
        let image = self.image(key);
        let mut frames = Vec::with_capacity(request.stack.len());
        for (index, &address) in request.stack.iter().enumerate() {
            let lookup = if index == 0 { address } else { address.saturating_sub(1) };
            self.frames_at(image.as_deref(), address, lookup, &mut frames);
        }
        let truncated =
            !frames.is_empty() && truncation::is_truncated(&frames, request.stack.len(), leaktrace_common::MAX_STACK_DEPTH);
        let stack = SymbolizedStack { telling_frame: telling::pick(&frames), frames, truncated };

        if self.cached_stacks >= MAX_CACHED_STACKS {
            self.stacks.clear();
            self.cached_stacks = 0;
        }
        self.stacks.entry(key).or_default().insert(request.stack.clone(), stack.clone());
        self.cached_stacks += 1;
        let counters = &self.shared.counters;
        counters.stacks_symbolized.fetch_add(1, Ordering::Relaxed);
        counters.symbolize_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stack
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

    fn frames_at(&mut self, image: Option<&ProcessImage>, address: u64, lookup: u64, frames: &mut Vec<Frame>) {
        let unknown = |module: Option<String>| Frame { address, function: None, file: None, line: None, module, inlined: false };
        let Some(image) = image else {
            frames.push(unknown(None));
            return;
        };
        let Some(mapping) = image.mapping_at(lookup) else {
            frames.push(unknown(None));
            return;
        };
        match &mapping.region {
            Region::File { path, file: Some(pinned) } => {
                let offset = lookup - mapping.start + mapping.offset;
                for located in self.locate_in_file(pinned, offset).iter() {
                    frames.push(Frame {
                        address,
                        function: located.function.clone(),
                        file: located.file.clone(),
                        line: located.line,
                        module: Some(path.clone()),
                        inlined: located.inlined,
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
        counters.address_cache_misses.fetch_add(1, Ordering::Relaxed);
        let go = self.go.entry(pinned.id).or_insert_with(|| GoBinary::open(pinned.file()));
        let located: Arc<[Located]> = match go {
            GoBinary::Stripped(table) => {
                let location = table.file_offset_to_address(offset).and_then(|address| table.lookup(address));
                let location = location.map(|location| Located {
                    function: Some(location.function),
                    file: location.file,
                    line: location.line,
                    inlined: false,
                });
                Arc::new([location.unwrap_or_default()])
            }
            GoBinary::NotNeeded => self.locate_with_blazesym(pinned, offset).into(),
        };
        if self.sites.len() >= MAX_CACHED_SITES {
            self.sites.clear();
        }
        self.sites.insert((pinned.id, offset), Arc::clone(&located));
        located
    }

    fn locate_with_blazesym(&self, pinned: &PinnedFile, offset: u64) -> Vec<Located> {
        let source = blaze::source::Source::Elf(blaze::source::Elf::new(pinned.path()));
        let sym = match self.blaze.symbolize_single(&source, Input::FileOffset(offset)) {
            Ok(Symbolized::Sym(sym)) => sym,
            Ok(Symbolized::Unknown(_)) => return vec![Located::default()],
            Err(err) => {
                log::debug!("symbolizing offset {offset:#x} of {:?}: {err}", pinned.id);
                return vec![Located::default()];
            }
        };
        let code = |info: Option<&blaze::CodeInfo<'_>>| match info {
            Some(info) => (Some(info.to_path().to_string_lossy().into_owned()), info.line),
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
                Located { function: Some(inlined.name.to_string()), file, line, inlined: true }
            })
            .collect();
        let (file, line) = code(sym.code_info.as_deref());
        located.push(Located { function: Some(sym.name.to_string()), file, line, inlined: false });
        located
    }

    /// The perf-map name of a JIT address, re-reading the map if it grew.
    fn perf_map_symbol(&mut self, image: &ProcessImage, address: u64) -> Option<String> {
        let (file, map) = self.perf_maps.entry(image.key).or_insert_with(|| {
            (image.perf_map.as_ref().and_then(|file| file.try_clone().ok()), PerfMap::default())
        });
        if file.is_none() {
            // Not there at capture: the runtime may have written it since (while it lives).
            *file = File::open(image.perf_map_path()).ok();
        }
        if let Some(file) = file {
            if let Err(err) = map.refresh(file) {
                log::debug!("reading the perf map of pid {}: {err}", image.key.pid);
            }
        }
        map.lookup(address).map(str::to_string)
    }
}
