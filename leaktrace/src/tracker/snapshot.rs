//! A moment's picture of every call site: the facts the verdict rules read, the verdict, and
//! what the views show. Taking one walks the live connections once (ages, CLOSE_WAIT, idle).
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use serde::Serialize;

use super::{
    Connection, Destination, Direction, Lifetimes, ProcessKey, Tracker, TrackerStats,
    verdict::{self, Finding, SiteFacts, Verdict},
};

pub struct Snapshot {
    pub now_ns: u64,
    pub started_ns: u64,
    /// Most live first, then fastest growing.
    pub sites: Vec<SiteView>,
    /// Most live first.
    pub processes: Vec<ProcessView>,
    pub stats: TrackerStats,
}

#[derive(Clone, Debug)]
pub struct SiteView {
    pub process: ProcessKey,
    pub comm: String,
    pub cgroup_id: u64,
    pub direction: Direction,
    pub stack: Arc<[u64]>,
    pub stack_error: Option<i32>,
    pub born_before_start: bool,
    pub facts: SiteFacts,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    pub lifetimes: Option<Lifetimes>,
    /// The longest a live connection has gone without data (seconds), where known.
    pub max_idle_s: Option<f64>,
    pub destinations: Vec<(Option<SocketAddr>, Destination)>,
}

/// A process's totals over all its call sites, seeded connections included.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    #[serde(skip)]
    pub start_ns: u64,
    pub comm: String,
    pub live: u64,
    pub live_born_before_start: u64,
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub close_wait: u64,
    pub call_sites: u64,
    pub verdict: Verdict,
    /// The process's container: filled by the report from its resolver (`null` on the host).
    pub container: Option<crate::container::Workload>,
}

/// What the walk over live connections gathers per site.
#[derive(Default)]
struct LiveFacts {
    unclosed: u64,
    oldest_open_ns: Option<u64>,
    close_wait_stuck: u64,
    oldest_close_wait_ns: Option<u64>,
    idle_known: u64,
    idle_live: u64,
    quiet_live: u64,
    max_idle_ns: Option<u64>,
}

const NS: f64 = 1e9;

impl Tracker {
    /// The picture at `now_ns` (CLOCK_MONOTONIC; in a replay, the recording's end).
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        let t = &self.thresholds;
        let clock = Clock {
            now_ns,
            started_ns: self.started_ns,
            inventory_ns: self.inventory_ns.unwrap_or(now_ns),
            min_age: t.min_age.as_nanos() as u64,
            close_wait_after: t.close_wait_after.as_nanos() as u64,
            idle_after: t.idle_after.as_nanos() as u64,
        };
        // Indexed by site id: one slot per site beats a hash lookup per connection.
        let mut live: Vec<LiveFacts> = Vec::new();
        live.resize_with(self.sites.len(), LiveFacts::default);
        let all = self.connections.values().chain(self.seeded.values());
        for connection in all {
            let facts = &mut live[connection.site as usize];
            walk(facts, connection, &clock);
        }

        let mut sites: Vec<SiteView> = self
            .sites()
            .map(|(id, site)| {
                let walked = std::mem::take(&mut live[id as usize]);
                let lifetimes = site.lifetimes();
                let facts = SiteFacts {
                    born_before_start: site.key.born_before_start,
                    opened: site.opened,
                    closed: site.closed,
                    failed: site.failed,
                    live: site.live,
                    unclosed: walked.unclosed,
                    close_wait: site.close_wait,
                    close_wait_stuck: walked.close_wait_stuck,
                    oldest_close_wait_s: walked.oldest_close_wait_ns.map(|since| now_ns.saturating_sub(since) as f64 / NS),
                    oldest_age_s: walked.oldest_open_ns.map(|opened| now_ns.saturating_sub(opened) as f64 / NS),
                    idle_known: walked.idle_known,
                    idle_live: walked.idle_live,
                    quiet_live: walked.quiet_live,
                    window: site.window.facts(now_ns, site.first_seen_ns),
                    open_seconds: site.open_seconds,
                    active_span_s: site.last_open_ns.saturating_sub(site.first_seen_ns) as f64 / NS,
                    median_lifetime_s: lifetimes.map(|l| l.p50_s),
                };
                let (verdict, findings) = verdict::judge(&facts, t);
                let process = self.processes.get(site.key.process);
                SiteView {
                    process: site.key.process,
                    comm: process.map(|p| p.comm.clone()).unwrap_or_default(),
                    cgroup_id: process.map_or(0, |p| p.cgroup_id),
                    direction: site.key.direction,
                    stack: Arc::clone(&site.key.stack),
                    stack_error: site.stack_error,
                    born_before_start: site.key.born_before_start,
                    facts,
                    verdict,
                    findings,
                    lifetimes,
                    max_idle_s: walked.max_idle_ns.map(|ns| ns as f64 / NS),
                    destinations: site.top_destinations(5),
                }
            })
            .collect();
        sites.sort_by(|a, b| {
            b.facts
                .live
                .cmp(&a.facts.live)
                .then(b.facts.window.growth_per_s.total_cmp(&a.facts.window.growth_per_s))
                .then(b.verdict.cmp(&a.verdict))
                .then(b.facts.opened.cmp(&a.facts.opened))
                .then(a.process.cmp(&b.process))
                .then(a.direction.cmp(&b.direction))
                .then(a.stack.cmp(&b.stack))
        });
        let processes = processes(&sites);
        Snapshot { now_ns, started_ns: self.started_ns, sites, processes, stats: self.stats }
    }
}

/// The times a snapshot judges connections by (ns).
#[derive(Clone, Copy)]
struct Clock {
    now_ns: u64,
    started_ns: u64,
    /// When the idle times were measured: a connection busy then may look idle by now.
    inventory_ns: u64,
    min_age: u64,
    close_wait_after: u64,
    idle_after: u64,
}

fn walk(facts: &mut LiveFacts, connection: &Connection, clock: &Clock) {
    let Clock { now_ns, started_ns, inventory_ns, min_age, close_wait_after, idle_after } = *clock;
    // A connection born before start is at least as old as the tracing.
    let opened = connection.opened_ns.get().unwrap_or(started_ns);
    if now_ns.saturating_sub(opened) >= min_age {
        facts.unclosed += 1;
    }
    if connection.opened_ns.is_some() {
        facts.oldest_open_ns = Some(facts.oldest_open_ns.map_or(opened, |oldest| oldest.min(opened)));
    }
    if let Some(since) = connection.close_wait_since_ns.get() {
        if now_ns.saturating_sub(since) >= close_wait_after {
            facts.close_wait_stuck += 1;
        }
        facts.oldest_close_wait_ns = Some(facts.oldest_close_wait_ns.map_or(since, |oldest| oldest.min(since)));
    }
    if let Some(last) = connection.last_activity_ns.get() {
        let idle = now_ns.saturating_sub(last);
        facts.idle_known += 1;
        if idle >= idle_after {
            facts.idle_live += 1;
        }
        if inventory_ns.saturating_sub(last) >= min_age {
            facts.quiet_live += 1;
        }
        facts.max_idle_ns = Some(facts.max_idle_ns.map_or(idle, |max| max.max(idle)));
    }
}

fn processes(sites: &[SiteView]) -> Vec<ProcessView> {
    let mut by_process: HashMap<ProcessKey, ProcessView> = HashMap::new();
    for site in sites {
        let view = by_process.entry(site.process).or_insert_with(|| ProcessView {
            pid: site.process.pid,
            start_ns: site.process.start_ns,
            comm: site.comm.clone(),
            live: 0,
            live_born_before_start: 0,
            opened: 0,
            closed: 0,
            failed: 0,
            close_wait: 0,
            call_sites: 0,
            verdict: Verdict::Ok,
            container: None,
        });
        view.live += site.facts.live;
        if site.born_before_start {
            view.live_born_before_start += site.facts.live;
        }
        view.opened += site.facts.opened;
        view.closed += site.facts.closed;
        view.failed += site.facts.failed;
        view.close_wait += site.facts.close_wait;
        view.call_sites += 1;
        view.verdict = view.verdict.max(site.verdict);
    }
    let mut all: Vec<ProcessView> = by_process.into_values().collect();
    all.sort_by(|a, b| b.live.cmp(&a.live).then(a.pid.cmp(&b.pid)).then(a.start_ns.cmp(&b.start_ns)));
    all
}
