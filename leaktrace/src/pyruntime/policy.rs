//! Which processes get the Python walk, and what their call sites are told.
//!
//! Only CPython processes pay for it: those running when tracing starts (a scan of `/proc` for
//! processes whose maps name `libpython` or `python`) and those first seen in an open event
//! later (whose first connection is then walked from the next one on). The pid and cgroup
//! filters apply to both. A CPython leaktrace cannot walk (a version outside 3.8 to 3.13)
//! keeps its native stack; the log says so once per reason, and its call sites say so in
//! `python_frames`. Processes that exit are detached; their named frames stay for the report.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use leaktrace_common::PROCESS_START_TOLERANCE_NS;

use super::{Detection, PythonProcess, detect, detect::maps_name_python, names::FrameNames};
use crate::{
    event::Owner,
    kernel::{Tracer, TracerOptions},
    report::Report,
    symbolize::{FrameRuntime, capture::{self, ProcessKey}},
};

/// Most processes whose decision is remembered; past it, those that are not walked are
/// forgotten (and decided again if seen again).
const MAX_PROCESSES: usize = 1 << 16;

enum State {
    Walked { python: PythonProcess },
    /// CPython that is not walked, and why.
    NotWalked(String),
    NotPython,
}

pub struct PythonPolicy {
    names: Arc<FrameNames>,
    pids: Vec<u32>,
    cgroups: Vec<u64>,
    processes: HashMap<ProcessKey, State>,
    /// Reasons already logged.
    warned: HashSet<String>,
    /// Walked processes that exited (detached from the probes).
    detached: HashSet<ProcessKey>,
}

impl PythonPolicy {
    pub fn new(names: Arc<FrameNames>, options: &TracerOptions) -> Self {
        Self {
            names,
            pids: options.pids.clone(),
            cgroups: options.cgroups.clone(),
            processes: HashMap::new(),
            warned: HashSet::new(),
            detached: HashSet::new(),
        }
    }

    /// At start: registers the CPython processes already running (within the filters).
    pub fn scan(&mut self, tracer: &mut Tracer) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            if !self.pids.is_empty() && !self.pids.contains(&pid) {
                continue;
            }
            if !self.cgroups.is_empty() && !crate::commands::inventory::cgroup_of(pid).is_some_and(|id| self.cgroups.contains(&id)) {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { continue };
            if !maps_name_python(&maps) {
                continue;
            }
            let Some(start_ns) = capture::process_start_ns(pid) else { continue };
            self.consider(ProcessKey { pid, start_ns }, tracer);
        }
    }

    /// At an open event (the kernel applied the filters): the first of a process decides
    /// whether it is walked; names the event's Python frames while the process runs.
    pub fn on_open(&mut self, owner: &Owner, tracer: Option<&mut Tracer>) {
        let key = ProcessKey { pid: owner.pid, start_ns: owner.process_start_ns };
        if self.processes.contains_key(&key) {
            return;
        }
        // The scan read the start time from /proc, in whole clock ticks: the event's is exact.
        let scanned = self
            .processes
            .keys()
            .find(|known| known.pid == key.pid && known.start_ns.abs_diff(key.start_ns) <= PROCESS_START_TOLERANCE_NS)
            .copied();
        if let Some(scanned) = scanned {
            let state = self.processes.remove(&scanned).expect("a key just found");
            if let State::Walked { python } = &state {
                self.names.forget(scanned);
                self.names.register(key, python.clone());
            }
            self.processes.insert(key, state);
            return;
        }
        if let Some(tracer) = tracer {
            self.consider(key, tracer);
        }
    }

    fn consider(&mut self, key: ProcessKey, tracer: &mut Tracer) {
        if self.processes.len() >= MAX_PROCESSES {
            self.processes.retain(|_, state| matches!(state, State::Walked { .. }));
        }
        let state = match detect(key.pid) {
            Err(err) => {
                log::debug!("Python frames: {err}");
                State::NotPython
            }
            Ok(Detection::NotPython) => State::NotPython,
            Ok(Detection::Unsupported { module, reason, .. }) => {
                let said = format!("{module}: {reason}; its connections keep their native stack");
                if self.warned.insert(reason.clone()) {
                    log::warn!("Python frames: pid {} runs {said}", key.pid);
                }
                State::NotWalked(said)
            }
            Ok(Detection::Python(python)) => {
                match tracer.attach_python(key.pid, python.layout.offsets(python.runtime, key.start_ns)) {
                    Ok(()) => {
                        log::info!("Python frames: pid {} runs {} ({})", key.pid, python.version, python.module);
                        self.names.register(key, python.clone());
                        State::Walked { python }
                    }
                    Err(err) => {
                        let said = format!("{}: not walked: {err}", python.version);
                        if self.warned.insert(err.to_string()) {
                            log::warn!("Python frames: pid {}: {said}", key.pid);
                        }
                        State::NotWalked(said)
                    }
                }
            }
        };
        self.processes.insert(key, state);
    }

    /// After each periodic report: detaches from processes that exited, forgets what no call
    /// site needs any more, and says on call sites what their Python frames are.
    pub fn after_report(&mut self, report: &mut Report, tracer: &mut Tracer) {
        self.detach_exited(tracer);
        // An exited process's decision and named frames stay while its call sites are reported.
        let tracked: HashSet<ProcessKey> =
            report.processes.iter().map(|process| ProcessKey { pid: process.pid, start_ns: process.start_ns }).collect();
        let (names, detached) = (&self.names, &mut self.detached);
        self.processes.retain(|key, state| {
            let walked = matches!(state, State::Walked { .. });
            let keep = tracked.contains(key) || (walked && !detached.contains(key));
            if !keep {
                detached.remove(key);
                if walked {
                    names.forget(*key);
                }
            }
            keep
        });
        self.annotate(report);
    }

    /// Detaches the walk from processes that exited (their decision is kept).
    pub fn detach_exited(&mut self, tracer: &mut Tracer) {
        let gone: Vec<ProcessKey> = self
            .processes
            .iter()
            .filter(|(key, state)| {
                matches!(state, State::Walked { .. }) && !self.detached.contains(*key) && !capture::is_running(**key)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            tracer.detach_python(key.pid);
            self.detached.insert(key);
        }
    }

    /// Says on the call sites of CPython processes that are not walked why they have no Python
    /// frames (the final report: nothing attaches).
    pub fn annotate(&self, report: &mut Report) {
        for site in &mut report.call_sites {
            if site.born_before_start || site.frames.iter().any(|frame| frame.runtime == Some(FrameRuntime::Python)) {
                continue;
            }
            let key = ProcessKey { pid: site.pid, start_ns: site.process_start_ns };
            site.python_frames = match self.processes.get(&key) {
                Some(State::NotWalked(reason)) => Some(reason.clone()),
                Some(State::Walked { python }) => Some(format!(
                    "{}: no Python frames were taken at these connections: opened before leaktrace registered \
                     the process (its first connection after tracing started), or by a thread running no Python code",
                    python.version
                )),
                Some(State::NotPython) | None => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pyruntime::PythonVersion,
        report::testing::call_site,
        tracker::{Thresholds, TrackerStats, Verdict},
    };

    fn policy(states: Vec<(u32, State)>) -> PythonPolicy {
        let mut policy = PythonPolicy::new(Arc::default(), &TracerOptions::default());
        for (pid, state) in states {
            policy.processes.insert(ProcessKey { pid, start_ns: 1 }, state);
        }
        policy
    }

    fn python(minor: u32) -> PythonProcess {
        let version = PythonVersion { major: 3, minor, micro: Some(2) };
        PythonProcess {
            version,
            layout: super::super::PythonLayout::of(version).unwrap(),
            runtime: 0x1000,
            code_type: None,
            module: "/usr/bin/python3.11".into(),
        }
    }

    #[test]
    fn call_sites_without_python_frames_say_why_and_others_say_nothing() {
        let named = crate::pyruntime::stack::frame(0x7f00, None);
        let native = vec![crate::symbolize::SymbolizedStack::addresses_only(&[0x401000]).frames[0].clone()];
        let mut report = Report {
            version: 1,
            duration_s: 1.0,
            events: None,
            tracker: TrackerStats::default(),
            thresholds: Thresholds::default(),
            call_sites: vec![
                call_site(10, "python3.7", native.clone(), 1, 1, Verdict::Ok),
                call_site(11, "python3.11", native.clone(), 1, 1, Verdict::Ok),
                call_site(11, "python3.11", vec![named], 1, 1, Verdict::Ok),
                call_site(12, "curl", native, 1, 1, Verdict::Ok),
            ],
            processes: Vec::new(),
        };
        let policy = policy(vec![
            (10, State::NotWalked("/usr/bin/python3.7: Python 3.7: not walked".into())),
            (11, State::Walked { python: python(11) }),
            (12, State::NotPython),
        ]);
        policy.annotate(&mut report);
        let notes: Vec<Option<&str>> = report.call_sites.iter().map(|site| site.python_frames.as_deref()).collect();
        assert_eq!(notes[0], Some("/usr/bin/python3.7: Python 3.7: not walked"));
        assert!(notes[1].is_some_and(|note| note.starts_with("Python 3.11.2: no Python frames")), "{notes:?}");
        assert_eq!((notes[2], notes[3]), (None, None));
    }
}
