//! What tests of the report's consumers share: a call site built from the few figures a test
//! is about, and golden files (`UPDATE_GOLDEN=1` rewrites them after an intended change).
use std::path::Path;

use super::{CallSite, WindowCounts};
use crate::{
    symbolize::Frame,
    tracker::{Direction, Verdict},
};

/// A connect call site of `comm` with these frames, `live` of `opened` still open.
pub fn call_site(pid: u32, comm: &str, frames: Vec<Frame>, live: u64, opened: u64, verdict: Verdict) -> CallSite {
    CallSite {
        pid,
        process_start_ns: 1,
        comm: comm.into(),
        exe: None,
        container: None,
        direction: Direction::Connect,
        frames,
        telling_frame: Some(0),
        stack_truncated: false,
        stack_error: None,
        born_before_start: false,
        opened,
        closed: opened - live,
        failed: 0,
        live,
        close_wait: 0,
        close_wait_stuck: 0,
        oldest_age_s: 1.0,
        oldest_close_wait_s: None,
        growth_per_s: 0.0,
        window: WindowCounts { span_s: 10.0, opened: 0, closed: 0 },
        idle_known: 0,
        idle_live: 0,
        max_idle_s: None,
        lifetime_s: None,
        destinations: Vec::new(),
        verdict,
        findings: Vec::new(),
        go_ancestry: None,
        python_frames: None,
    }
}

/// Compares `actual` with `src/<dir>/golden/<name>`.
pub fn golden(dir: &str, name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir).join("golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert!(expected == actual, "{name} differs from {}:\n{actual}", path.display());
}
