//! `--pprof FILE` and the agent's `/debug/pprof/connections`: the report as a pprof profile of
//! live connections by the stack that opened them, the way Go's heap profile counts objects in
//! use. One sample per call site, valued in each sample type, labelled with its process,
//! direction, verdict and container; its stack becomes locations whose lines name the
//! symbolizer's functions, files and lines (inlined calls folded into their caller's location,
//! as pprof represents them). gzip-compressed, as pprof reads it.
use std::{
    borrow::Cow,
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use foldhash::HashMap;
use prost::Message;

use super::{frame_name, profile_proto as proto, stackless_frame};
use crate::{
    report::{CallSite, Report},
    symbolize::Frame,
};

/// A sample type's name, and what a call site counts in it.
type SampleType = (&'static str, fn(&CallSite) -> u64);

/// The sample types, in the profile's order; the first is pprof's default. Each is a count of
/// the call site's connections.
pub const SAMPLE_TYPES: [SampleType; 3] = [
    // Open now: what a leak accumulates.
    ("live_connections", |site| site.live),
    // Of those, the ones whose peer hung up and whose owner never closed them.
    ("close_wait", |site| site.close_wait),
    // Opened since tracing started, closed or not (the churn view).
    ("opened", |site| site.opened),
];

/// The profile of `report`, taken at `taken_at`, gzipped.
pub fn encode(report: &Report, taken_at: SystemTime) -> Vec<u8> {
    let bytes = profile(report, taken_at).encode_to_vec();
    // The fastest level, as Go's runtime/pprof writes its profiles: they are rewritten often.
    let mut gzip = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    gzip.write_all(&bytes).expect("gzip into memory");
    gzip.finish().expect("gzip into memory")
}

/// The profile of `report`, uncompressed.
pub fn profile(report: &Report, taken_at: SystemTime) -> proto::Profile {
    let mut builder = Builder::default();
    builder.string(""); // string_table[0] is "" by the format's rule.
    let count = builder.string("count");
    for (name, _) in SAMPLE_TYPES {
        let r#type = builder.string(name);
        builder.profile.sample_type.push(proto::ValueType { r#type, unit: count });
    }
    let default_type = builder.profile.sample_type[0];
    builder.profile.default_sample_type = default_type.r#type;
    builder.profile.period_type = Some(default_type);
    builder.profile.period = 1;
    builder.profile.time_nanos = taken_at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as i64);
    builder.profile.duration_nanos = (report.duration_s * 1e9) as i64;
    for comment in [
        format!("leaktrace {}: TCP connections by the stack that opened them", env!("CARGO_PKG_VERSION")),
        format!("{} call sites, {} leak(s), over {:.1}s", report.call_sites.len(), report.leaks(), report.duration_s),
    ] {
        let index = builder.string(&comment);
        builder.profile.comment.push(index);
    }
    for site in &report.call_sites {
        let value: Vec<i64> = SAMPLE_TYPES.iter().map(|(_, count)| count(site) as i64).collect();
        // A call site with nothing to count in any sample type adds nothing.
        if value.iter().all(|&v| v == 0) {
            continue;
        }
        if let Some(exe) = &site.exe {
            // The executable before its libraries: pprof takes mapping[0] as the main binary.
            builder.mapping(exe);
        }
        let location_id = builder.stack(site);
        let label = builder.labels(site);
        builder.profile.sample.push(proto::Sample { location_id, value, label });
    }
    builder.profile
}

/// Interns strings, functions, mappings and locations: each is written once, referenced by id.
#[derive(Default)]
struct Builder {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    /// By (name, file).
    functions: HashMap<(i64, i64), u64>,
    /// By module path.
    mappings: HashMap<String, u64>,
    locations: HashMap<LocationKey, u64>,
}

/// What makes two locations the same: mapping, address and lines.
#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping_id: u64,
    address: u64,
    lines: Vec<(u64, i64)>,
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        // Most strings are seen many times (a module per frame): looked up without a copy.
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), index);
        index
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (self.string(name), file.map_or(0, |file| self.string(file)));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(proto::Function { id, name: key.0, system_name: key.0, filename: key.1, start_line: 0 });
        self.functions.insert(key, id);
        id
    }

    fn mapping(&mut self, module: &str) -> u64 {
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        // The address ranges are not known here (frames carry none). Every frame was already
        // symbolized as far as it can be, so pprof is told not to try again with the binary.
        self.profile.mapping.push(proto::Mapping {
            id,
            filename,
            has_functions: true,
            has_inline_frames: true,
            ..proto::Mapping::default()
        });
        self.mappings.insert(module.to_string(), id);
        id
    }

    fn location(&mut self, key: LocationKey) -> u64 {
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let line = key.lines.iter().map(|&(function_id, line)| proto::Line { function_id, line, column: 0 }).collect();
        self.profile.location.push(proto::Location { id, mapping_id: key.mapping_id, address: key.address, line, is_folded: false });
        self.locations.insert(key, id);
        id
    }

    /// The call site's locations, leaf first. An inlined frame joins the location of the frame
    /// it was inlined into (the next one, same address); a call site without a stack gets one
    /// frame saying why.
    fn stack(&mut self, site: &CallSite) -> Vec<u64> {
        if let Some(text) = stackless_frame(site) {
            let function_id = self.function(&text, None);
            return vec![self.location(LocationKey { mapping_id: 0, address: 0, lines: vec![(function_id, 0)] })];
        }
        let mut ids = Vec::with_capacity(site.frames.len());
        let mut inlined: Vec<(u64, i64)> = Vec::new();
        for frame in &site.frames {
            let mapping_id = frame.module.as_deref().map_or(0, |module| self.mapping(module));
            if mapping_id != 0 {
                let mapping = &mut self.profile.mapping[mapping_id as usize - 1];
                mapping.has_filenames |= frame.file.is_some();
                mapping.has_line_numbers |= frame.line.is_some();
            }
            let line = self.line(frame);
            if frame.inlined {
                inlined.push(line);
                continue;
            }
            let lines = inlined.drain(..).chain([line]).collect();
            ids.push(self.location(LocationKey { mapping_id, address: frame.address, lines }));
        }
        // Inlined calls whose caller the walk did not reach keep a location of their own.
        if let Some(last) = site.frames.last().filter(|_| !inlined.is_empty()) {
            let mapping_id = last.module.as_deref().map_or(0, |module| self.mapping(module));
            ids.push(self.location(LocationKey { mapping_id, address: last.address, lines: inlined }));
        }
        ids
    }

    /// The frame's function, file and line; a frame nothing could name is named by its address
    /// and module (as the table shows it), so that pprof tells such frames apart.
    fn line(&mut self, frame: &Frame) -> (u64, i64) {
        let name: Cow<str> = frame_name(frame);
        (self.function(&name, frame.file.as_deref()), frame.line.map_or(0, i64::from))
    }

    fn labels(&mut self, site: &CallSite) -> Vec<proto::Label> {
        let pid = self.string("pid");
        let mut labels = vec![proto::Label { key: pid, num: i64::from(site.pid), ..proto::Label::default() }];
        let container = site.container.as_ref();
        let strings = [
            ("comm", Some(site.comm.as_str())),
            ("direction", Some(site.direction.name())),
            ("verdict", Some(site.verdict.name())),
            ("container", container.map(|c| c.name.as_deref().unwrap_or_else(|| c.short_id()))),
            ("pod", container.and_then(|c| c.pod.as_deref())),
            ("namespace", container.and_then(|c| c.namespace.as_deref())),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                let (key, str) = (self.string(key), self.string(value));
                labels.push(proto::Label { key, str, ..proto::Label::default() });
            }
        }
        labels
    }
}
