//! `leaktrace diff BEFORE AFTER`: two reports compared call site by call site, the way
//! `pprof -diff_base` compares two profiles: live connections before and after, what grew,
//! shrank, appeared or went away, and whether what AFTER judges a leak is still growing.
//! Call sites are matched by [`SiteIdentity`]: exact within one run, portable across runs.
pub mod input;
pub mod render;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    report::{CallSite, identity::SiteIdentity},
    tracker::{Direction, Verdict},
};

pub const DIFF_VERSION: u32 = 1;

/// How call sites of BEFORE are matched with those of AFTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Matching {
    /// Exact for two points of one file (one recording, one jsonl stream) and for a recording
    /// against a report; portable otherwise.
    Auto,
    /// Within one run: the same process (pid) and the same stack addresses.
    Exact,
    /// Across runs: the process's name and container, the direction and the stack's function
    /// names; call sites that differ only by pid, address or line are summed.
    Portable,
}

/// What happened to a call site between BEFORE and AFTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    New,
    Grew,
    Shrank,
    Gone,
    Unchanged,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Grew => "grew",
            Self::Shrank => "shrank",
            Self::Gone => "gone",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One side's figures for a call site: the sum over the call sites sharing its identity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SideCounts {
    pub live: u64,
    pub opened: u64,
    pub closed: u64,
    pub close_wait: u64,
    /// The most severe verdict among the summed call sites.
    pub verdict: Verdict,
    /// How many call sites of the report were summed (more than one: several processes of
    /// one program, or lines of one function).
    pub call_sites: usize,
    pub pids: Vec<u32>,
}

/// One call site of the diff.
#[derive(Clone, Debug, Serialize)]
pub struct SiteDiff {
    pub change: Change,
    pub comm: String,
    /// The container's short name (`pod/container`, or the id's first 12 digits); null on the host.
    pub container: Option<String>,
    pub direction: Direction,
    /// The telling frame, as the table shows it (AFTER's where the call site is in AFTER).
    pub call_site: String,
    pub born_before_start: bool,
    pub before: Option<SideCounts>,
    pub after: Option<SideCounts>,
    /// Live connections after minus before (0 for a side where the call site is absent).
    pub live_change: i64,
    /// Connections opened and closed between the two reports: only where both are points of
    /// one run (exact matching) and AFTER's counters continue BEFORE's; null otherwise.
    pub opened_between: Option<u64>,
    pub closed_between: Option<u64>,
    /// AFTER's verdict (null for a call site gone from AFTER).
    pub verdict: Option<Verdict>,
    /// AFTER judges it a leak and it has more live connections than in BEFORE (or is new).
    pub leaking: bool,
    /// The stack, one `function file:line` (or address) per frame, innermost first, as shown
    /// in the side it is named by.
    pub frames: Vec<String>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub version: u32,
    /// `exact` or `portable`: what was used (never `auto`).
    pub matching: Matching,
    pub before: SideSummary,
    pub after: SideSummary,
    pub summary: ChangeCounts,
    /// Most grown first; the unchanged ones only when asked (`--all`).
    pub call_sites: Vec<SiteDiff>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SideSummary {
    /// The argument as given (`rec.jsonl@30s`).
    pub source: String,
    pub kind: input::InputKind,
    /// The report's time since its trace started.
    pub duration_s: f64,
    pub call_sites: usize,
    pub live: u64,
    pub leaks: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub new: usize,
    pub grew: usize,
    pub shrank: usize,
    pub gone: usize,
    pub unchanged: usize,
    /// Call sites with `leaking` set: the exit status is 1 when this is not 0.
    pub leaking: usize,
}

impl Diff {
    /// Compares `before` with `after`; `matching` is `Exact` or `Portable` (resolve `Auto`
    /// first); `all` keeps the unchanged call sites in the list.
    pub fn new(before: &input::Input, after: &input::Input, matching: Matching, all: bool) -> Self {
        let exact = matching == Matching::Exact;
        let mut groups: BTreeMap<SiteIdentity, Group> = BTreeMap::new();
        for (side, report) in [(Side::Before, &before.report), (Side::After, &after.report)] {
            for site in &report.call_sites {
                let identity = identity_of(site, exact);
                groups.entry(identity).or_default().add(side, site);
            }
        }
        let mut summary = ChangeCounts::default();
        let mut call_sites = Vec::new();
        for group in groups.into_values() {
            let site = group.into_diff(exact);
            match site.change {
                Change::New => summary.new += 1,
                Change::Grew => summary.grew += 1,
                Change::Shrank => summary.shrank += 1,
                Change::Gone => summary.gone += 1,
                Change::Unchanged => summary.unchanged += 1,
            }
            summary.leaking += usize::from(site.leaking);
            if all || site.change != Change::Unchanged {
                call_sites.push(site);
            }
        }
        // Most grown first; then most live after, then by name for a stable order.
        call_sites.sort_by(|a, b| {
            let live = |site: &SiteDiff| site.after.as_ref().map_or(0, |after| after.live);
            b.live_change
                .cmp(&a.live_change)
                .then(live(b).cmp(&live(a)))
                .then_with(|| (&a.comm, &a.call_site, a.direction).cmp(&(&b.comm, &b.call_site, b.direction)))
        });
        Self {
            version: DIFF_VERSION,
            matching,
            before: SideSummary::new(before),
            after: SideSummary::new(after),
            summary,
            call_sites,
        }
    }

    /// Whether something leaks: a call site AFTER judges a leak has grown or is new.
    pub fn leaking(&self) -> bool {
        self.summary.leaking > 0
    }
}

impl SideSummary {
    fn new(input: &input::Input) -> Self {
        let report = &input.report;
        Self {
            source: input.spec.text.clone(),
            kind: input.kind,
            duration_s: report.duration_s,
            call_sites: report.call_sites.len(),
            live: report.call_sites.iter().map(|site| site.live).sum(),
            leaks: report.leaks(),
        }
    }
}

/// The identity call sites are matched by. Frames the kernel's walk did not record (inlined
/// calls, callers recovered from the code: only a symbolized report has them) are left out, so
/// a report and a replay of its recording match exactly; a frame nothing names (a replay has
/// no symbols) is named by its address, so such stacks stay apart under portable matching.
pub fn identity_of(site: &CallSite, exact: bool) -> SiteIdentity {
    let mut recorded = site.clone();
    recorded.frames.retain(|frame| !frame.inlined && !frame.recovered);
    if exact {
        // A report read back from JSON has no start time: pids alone, on both sides alike.
        recorded.process_start_ns = 0;
        return SiteIdentity::exact(&recorded);
    }
    for frame in &mut recorded.frames {
        if frame.function.is_none() && frame.module.is_none() {
            frame.module = Some(format!("{:#x}", frame.address));
        }
    }
    SiteIdentity::portable(&recorded)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Before,
    After,
}

/// The call sites of both reports that share one identity.
#[derive(Default)]
struct Group<'a> {
    before: Vec<&'a CallSite>,
    after: Vec<&'a CallSite>,
}

impl<'a> Group<'a> {
    fn add(&mut self, side: Side, site: &'a CallSite) {
        match side {
            Side::Before => self.before.push(site),
            Side::After => self.after.push(site),
        }
    }

    fn into_diff(self, exact: bool) -> SiteDiff {
        let before = counts(&self.before);
        let after = counts(&self.after);
        let live = |counts: &Option<SideCounts>| counts.as_ref().map_or(0, |counts| counts.live as i64);
        let live_change = live(&after) - live(&before);
        let change = match (&before, &after) {
            (None, _) => Change::New,
            (_, None) => Change::Gone,
            _ if live_change > 0 => Change::Grew,
            _ if live_change < 0 => Change::Shrank,
            _ => Change::Unchanged,
        };
        // Counters continue from one point of a run to a later one; across runs they do not.
        let between = |pick: fn(&SideCounts) -> u64| match (&before, &after) {
            (_, None) => None,
            _ if !exact => None,
            (None, Some(after)) => Some(pick(after)),
            (Some(before), Some(after)) => pick(after).checked_sub(pick(before)),
        };
        let opened_between = between(|counts| counts.opened);
        let closed_between = between(|counts| counts.closed);
        let verdict = after.as_ref().map(|after| after.verdict);
        let leaking = verdict == Some(Verdict::Leak) && (change == Change::New || live_change > 0);
        // Named as AFTER shows it, or as BEFORE did for a call site gone from AFTER.
        let shown = self.after.first().or(self.before.first()).expect("a group has a call site");
        SiteDiff {
            change,
            comm: shown.comm.clone(),
            container: shown.container.as_ref().map(|container| container.short()),
            direction: shown.direction,
            call_site: shown.telling_frame_text(),
            born_before_start: shown.born_before_start,
            before,
            after,
            live_change,
            opened_between,
            closed_between,
            verdict,
            leaking,
            frames: shown.frames.iter().map(|frame| frame.short()).collect(),
        }
    }
}

fn counts(sites: &[&CallSite]) -> Option<SideCounts> {
    let first = sites.first()?;
    let mut counts = SideCounts {
        live: 0,
        opened: 0,
        closed: 0,
        close_wait: 0,
        verdict: first.verdict,
        call_sites: sites.len(),
        pids: Vec::new(),
    };
    for site in sites {
        counts.live += site.live;
        counts.opened += site.opened;
        counts.closed += site.closed;
        counts.close_wait += site.close_wait;
        counts.verdict = counts.verdict.max(site.verdict);
        counts.pids.push(site.pid);
    }
    counts.pids.sort_unstable();
    counts.pids.dedup();
    Some(counts)
}

/// `Auto` resolved: exact for two points of one file, and for a recording against a report
/// (a recording's frames are addresses, a report's names: only exact matching can pair them,
/// and only within one run); portable otherwise.
pub fn resolve(matching: Matching, before: &input::Input, after: &input::Input) -> Matching {
    let recording = |side: &input::Input| side.kind == input::InputKind::Recording;
    match matching {
        Matching::Auto if input::same_file(&before.spec.path, &after.spec.path) => Matching::Exact,
        Matching::Auto if recording(before) != recording(after) => Matching::Exact,
        Matching::Auto => Matching::Portable,
        chosen => chosen,
    }
}

#[cfg(test)]
mod tests;
