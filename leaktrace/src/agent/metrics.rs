//! The agent's `/metrics`: a [`Scrape`] (the report and leaktrace's own health, taken when
//! Prometheus asks) written in the Prometheus text format or OpenMetrics by prometheus-client.
//! Nothing is counted per event: every value is read from the scrape's report.
//!
//! Cardinality is bounded on purpose: only the `top` call sites and processes (most live, then
//! fastest growing: the report's order) get series of their own; the rest are summed into one
//! `call_site="other"` / `comm="other"` series, and a dropped label sums the series it told
//! apart. Series of call sites and processes the tracker has forgotten are simply not written,
//! nor those of processes that exited with nothing live left.
use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue},
    metrics::MetricType,
    registry::Registry,
};

use super::Scrape;
use crate::{
    container,
    report::CallSite,
    tracker::{Direction, ProcessView, Verdict},
};

/// The labels of the per-call-site series, in the order they are written. `verdict` is only on
/// `leaktrace_call_site_live_connections` and `leaktrace_call_site_verdict`.
pub const SITE_LABELS: &[&str] = &["pid", "comm", "container", "pod", "namespace", "direction", "call_site"];
/// The labels `--metrics-drop-label` may drop (every label but `verdict`, which is what the
/// verdict series are about).
pub const DROPPABLE_LABELS: &[&str] = SITE_LABELS;

/// The value of `call_site` and `comm` for the series summing everything past the top N.
pub const OTHER: &str = "other";

#[derive(Debug, thiserror::Error)]
pub enum MetricsConfigError {
    #[error("--metrics-drop-label {0}: no such label; the labels are: {labels}", labels = DROPPABLE_LABELS.join(", "))]
    UnknownLabel(String),
    #[error("--metrics-top must be at least 1")]
    ZeroTop,
}

/// What `/metrics` shows, from the command line.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Call sites (and processes) with series of their own.
    pub top: usize,
    /// Labels left out of every series.
    pub dropped: Vec<&'static str>,
}

impl MetricsConfig {
    pub fn new(top: usize, drop: &[String]) -> Result<Self, MetricsConfigError> {
        if top == 0 {
            return Err(MetricsConfigError::ZeroTop);
        }
        let dropped = drop
            .iter()
            .map(|name| {
                DROPPABLE_LABELS.iter().copied().find(|label| label == name).ok_or_else(|| MetricsConfigError::UnknownLabel(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { top, dropped })
    }

    fn keeps(&self, label: &str) -> bool {
        !self.dropped.contains(&label)
    }
}

/// The exposition formats Prometheus reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what promtool and most tools read).
    Text,
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else text.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The whole exposition of one scrape.
pub fn render(scrape: Arc<Scrape>, config: &MetricsConfig, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition { scrape, config: config.clone() }));
    let mut text = String::new();
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
    }
    Ok(text)
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Exposition {
    scrape: Arc<Scrape>,
    config: MetricsConfig,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let out = &mut encoder;
        let report = &self.scrape.report;
        host(out, &self.scrape)?;
        let ended = &self.scrape.ended;
        let running = |pid: u32, live: u64| live > 0 || !ended.contains(&pid);
        let call_sites: Vec<CallSite> = report.call_sites.iter().filter(|site| running(site.pid, site.live)).cloned().collect();
        sites(out, &call_sites, &self.config)?;
        let processes_now: Vec<ProcessView> =
            report.processes.iter().filter(|process| running(process.pid, process.live)).cloned().collect();
        processes(out, &processes_now, &self.config)?;
        health(out, &self.scrape)
    }
}

fn gauge<V: EncodeGaugeValue>(out: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, V)]) -> fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// A counter family; `name` without `_total`, which the encoders add.
fn counter<V: EncodeCounterValue>(out: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, V)]) -> fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric.encode_family(labels)?.encode_counter::<Labels, _, f64>(value, None)?;
    }
    Ok(())
}

fn one<V>(value: V) -> [(Labels, V); 1] {
    [(Vec::new(), value)]
}

const VERDICTS: [Verdict; 4] = [Verdict::Leak, Verdict::Suspect, Verdict::Churn, Verdict::Ok];

fn host(out: &mut DescriptorEncoder, scrape: &Scrape) -> fmt::Result {
    let report = &scrape.report;
    let sites = &report.call_sites;
    let live: u64 = sites.iter().map(|site| site.live).sum();
    gauge(out, "leaktrace_live_connections", "Connections opened and not closed yet, over every call site.", &one(live))?;
    let stats = &report.tracker;
    counter(out, "leaktrace_connections_opened", "Connections opened since leaktrace started.", &one(stats.opened))?;
    counter(out, "leaktrace_connections_closed", "Connections that ended since leaktrace started (born before start included).", &one(stats.closed))?;
    counter(out, "leaktrace_connections_failed", "Connects that ended without ever being established.", &one(stats.failed))?;
    let close_wait: u64 = sites.iter().map(|site| site.close_wait).sum();
    gauge(out, "leaktrace_close_wait_connections", "Live connections in CLOSE_WAIT: the peer hung up, the owner has not closed.", &one(close_wait))?;
    let oldest = sites.iter().filter(|site| site.live > 0).map(|site| site.oldest_age_s).fold(0.0, f64::max);
    gauge(out, "leaktrace_oldest_connection_age_seconds", "Age of the oldest live connection (0 with none live).", &one(oldest))?;
    let by_verdict: Vec<(Labels, u64)> = VERDICTS
        .iter()
        .map(|&verdict| (vec![("verdict", verdict.name().to_string())], sites.iter().filter(|site| site.verdict == verdict).count() as u64))
        .collect();
    gauge(out, "leaktrace_call_sites", "Call sites the tracker keeps, by verdict (all of them, not only the top N).", &by_verdict)
}

/// One call site's figures, or the sum of those sharing its labels.
#[derive(Default)]
struct SiteSum {
    live: u64,
    opened: u64,
    closed: u64,
    failed: u64,
    close_wait: u64,
    oldest_age_s: f64,
    growth_per_s: f64,
    verdict: Option<Verdict>,
}

impl SiteSum {
    fn add(&mut self, site: &CallSite) {
        self.live += site.live;
        self.opened += site.opened;
        self.closed += site.closed;
        self.failed += site.failed;
        self.close_wait += site.close_wait;
        if site.live > 0 {
            self.oldest_age_s = self.oldest_age_s.max(site.oldest_age_s);
        }
        self.growth_per_s += site.growth_per_s;
        self.verdict = self.verdict.max(Some(site.verdict));
    }

    fn verdict(&self) -> Verdict {
        self.verdict.unwrap_or(Verdict::Ok)
    }
}

/// Where a call site or a process runs, for the `container`, `pod` and `namespace` labels
/// (empty on the host).
#[derive(Default)]
struct Workload<'a> {
    /// The container's name in its pod, else its id's first 12 digits.
    container: &'a str,
    pod: &'a str,
    namespace: &'a str,
}

impl<'a> Workload<'a> {
    fn of(container: Option<&'a container::Workload>) -> Self {
        let Some(container) = container else { return Self::default() };
        Self {
            container: container.name.as_deref().unwrap_or_else(|| container.short_id()),
            pod: container.pod.as_deref().unwrap_or_default(),
            namespace: container.namespace.as_deref().unwrap_or_default(),
        }
    }
}

fn site_workload(site: &CallSite) -> Workload<'_> {
    Workload::of(site.container.as_ref())
}

fn process_workload(process: &ProcessView) -> Workload<'_> {
    Workload::of(process.container.as_ref())
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Connect => "connect",
        Direction::Accept => "accept",
    }
}

/// The labels `config` keeps, in the order given; an empty value is no label (as Prometheus
/// reads it anyway).
fn kept<const N: usize>(config: &MetricsConfig, labels: [(&'static str, String); N]) -> Labels {
    labels.into_iter().filter(|(name, value)| config.keeps(name) && !value.is_empty()).collect()
}

/// The `call_site` label: the telling frame, else the innermost frame (an address where
/// nothing could be symbolized), else why there is no stack.
fn call_site_label(site: &CallSite) -> String {
    match (site.telling_frame, site.frames.first()) {
        (None, Some(innermost)) if !site.born_before_start => innermost.short(),
        _ => site.telling_frame_text(),
    }
}

fn site_labels(site: &CallSite, config: &MetricsConfig) -> Labels {
    let workload = site_workload(site);
    kept(
        config,
        [
            ("pid", site.pid.to_string()),
            ("comm", site.comm.clone()),
            ("container", workload.container.to_string()),
            ("pod", workload.pod.to_string()),
            ("namespace", workload.namespace.to_string()),
            ("direction", direction_name(site.direction).to_string()),
            ("call_site", call_site_label(site)),
        ],
    )
}

fn with_verdict(labels: &Labels, verdict: Verdict) -> Labels {
    let mut labels = labels.clone();
    labels.push(("verdict", verdict.name().to_string()));
    labels
}

fn sites(out: &mut DescriptorEncoder, call_sites: &[CallSite], config: &MetricsConfig) -> fmt::Result {
    let top = call_sites.len().min(config.top);
    let mut summed: BTreeMap<Labels, SiteSum> = BTreeMap::new();
    for site in &call_sites[..top] {
        summed.entry(site_labels(site, config)).or_default().add(site);
    }
    let mut other = SiteSum::default();
    for site in &call_sites[top..] {
        other.add(site);
    }
    let other_labels: Labels = kept(
        config,
        [
            ("pid", String::new()),
            ("comm", String::new()),
            ("container", String::new()),
            ("pod", String::new()),
            ("namespace", String::new()),
            ("direction", String::new()),
            ("call_site", OTHER.to_string()),
        ],
    );
    let with_other = |value: &dyn Fn(&SiteSum) -> f64| -> Vec<(Labels, f64)> {
        let mut series: Vec<(Labels, f64)> = summed.iter().map(|(labels, sum)| (labels.clone(), value(sum))).collect();
        if top < call_sites.len() {
            series.push((other_labels.clone(), value(&other)));
        }
        series
    };
    let only_top = |value: &dyn Fn(&SiteSum) -> u64| -> Vec<(Labels, u64)> {
        summed.iter().map(|(labels, sum)| (labels.clone(), value(sum))).collect()
    };

    let mut live: Vec<(Labels, u64)> = summed.iter().map(|(labels, sum)| (with_verdict(labels, sum.verdict()), sum.live)).collect();
    if top < call_sites.len() {
        live.push((with_verdict(&other_labels, other.verdict()), other.live));
    }
    gauge(
        out,
        "leaktrace_call_site_live_connections",
        "Live connections opened at this call site, with the call site's verdict.",
        &live,
    )?;
    let mut verdicts: Vec<(Labels, u64)> = summed.iter().map(|(labels, sum)| (with_verdict(labels, sum.verdict()), 1)).collect();
    if top < call_sites.len() {
        verdicts.push((with_verdict(&other_labels, other.verdict()), 1));
    }
    gauge(
        out,
        "leaktrace_call_site_verdict",
        "Always 1: the call site's verdict (leak, suspect, churn, ok) is its verdict label.",
        &verdicts,
    )?;
    counter(out, "leaktrace_call_site_connections_opened", "Connections opened at this call site (top N only).", &only_top(&|s| s.opened))?;
    counter(out, "leaktrace_call_site_connections_closed", "Connections of this call site that ended (top N only).", &only_top(&|s| s.closed))?;
    counter(
        out,
        "leaktrace_call_site_connections_failed",
        "Connects of this call site that ended without being established (top N only).",
        &only_top(&|s| s.failed),
    )?;
    gauge(
        out,
        "leaktrace_call_site_close_wait_connections",
        "Live connections of this call site in CLOSE_WAIT.",
        &with_other(&|s| s.close_wait as f64),
    )?;
    gauge(
        out,
        "leaktrace_call_site_oldest_connection_age_seconds",
        "Age of the call site's oldest live connection (0 with none live).",
        &with_other(&|s| s.oldest_age_s),
    )?;
    gauge(
        out,
        "leaktrace_call_site_growth_connections_per_second",
        "Growth of the call site's live connections over the verdict window, per second.",
        &with_other(&|s| s.growth_per_s),
    )?;
    let summed_away = (call_sites.len() - top) as u64;
    gauge(out, "leaktrace_call_sites_summed", "Call sites past the top N, summed into the call_site=\"other\" series.", &one(summed_away))
}

/// One process's figures, or the sum of those sharing its labels.
#[derive(Default)]
struct ProcessSum {
    live: u64,
    live_born_before_start: u64,
    close_wait: u64,
    call_sites: u64,
    verdict: Option<Verdict>,
}

impl ProcessSum {
    fn add(&mut self, process: &ProcessView) {
        self.live += process.live;
        self.live_born_before_start += process.live_born_before_start;
        self.close_wait += process.close_wait;
        self.call_sites += process.call_sites;
        self.verdict = self.verdict.max(Some(process.verdict));
    }
}

fn processes(out: &mut DescriptorEncoder, processes: &[ProcessView], config: &MetricsConfig) -> fmt::Result {
    let top = processes.len().min(config.top);
    let labels_of = |pid: String, comm: String, workload: Workload| -> Labels {
        kept(
            config,
            [
                ("pid", pid),
                ("comm", comm),
                ("container", workload.container.to_string()),
                ("pod", workload.pod.to_string()),
                ("namespace", workload.namespace.to_string()),
            ],
        )
    };
    let mut summed: BTreeMap<Labels, ProcessSum> = BTreeMap::new();
    for process in &processes[..top] {
        summed.entry(labels_of(process.pid.to_string(), process.comm.clone(), process_workload(process))).or_default().add(process);
    }
    if top < processes.len() {
        let other = summed.entry(labels_of(String::new(), OTHER.to_string(), Workload::default())).or_default();
        for process in &processes[top..] {
            other.add(process);
        }
    }
    let series = |value: &dyn Fn(&ProcessSum) -> u64| -> Vec<(Labels, u64)> {
        summed.iter().map(|(labels, sum)| (labels.clone(), value(sum))).collect()
    };
    gauge(out, "leaktrace_process_live_connections", "Live connections the process opened or accepted.", &series(&|p| p.live))?;
    gauge(
        out,
        "leaktrace_process_live_born_before_start_connections",
        "Of those, connections that existed before leaktrace started.",
        &series(&|p| p.live_born_before_start),
    )?;
    gauge(out, "leaktrace_process_close_wait_connections", "Live connections of the process in CLOSE_WAIT.", &series(&|p| p.close_wait))?;
    gauge(out, "leaktrace_process_call_sites", "Call sites of the process the tracker keeps.", &series(&|p| p.call_sites))?;
    let verdicts: Vec<(Labels, u64)> =
        summed.iter().map(|(labels, sum)| (with_verdict(labels, sum.verdict.unwrap_or(Verdict::Ok)), 1)).collect();
    gauge(
        out,
        "leaktrace_process_verdict",
        "Always 1: the most severe verdict of the process's call sites is its verdict label.",
        &verdicts,
    )
}

fn health(out: &mut DescriptorEncoder, scrape: &Scrape) -> fmt::Result {
    let health = &scrape.health;
    if let Some(events) = &scrape.report.events {
        counter(out, "leaktrace_events_produced", "Records the kernel probes tried to write to the ring buffer.", &one(events.produced))?;
        counter(out, "leaktrace_events_received", "Records leaktrace took off the ring buffer.", &one(events.received))?;
        counter(
            out,
            "leaktrace_events_lost",
            "Records lost because the ring buffer was full (raise --ring-buffer-kib).",
            &one(events.lost),
        )?;
        counter(out, "leaktrace_events_undecodable", "Records that did not decode.", &one(events.undecodable))?;
        counter(
            out,
            "leaktrace_kernel_socket_map_full",
            "Connections not tracked because the kernel socket map was full (raise --max-sockets).",
            &one(events.socket_map_full),
        )?;
        counter(out, "leaktrace_kernel_stack_failures", "Opens reported without a user stack.", &one(events.stack_failures))?;
        counter(
            out,
            "leaktrace_kernel_transitions_missed",
            "State transitions of tracked sockets no probe saw.",
            &one(events.transitions_missed),
        )?;
    }
    if let Some(tracked) = health.kernel_tracked_sockets {
        gauge(out, "leaktrace_kernel_tracked_sockets", "Entries of the kernel socket map (one per tracked socket).", &one(tracked))?;
    }
    gauge(
        out,
        "leaktrace_kernel_socket_map_capacity",
        "Most entries the kernel socket map holds (--max-sockets).",
        &one(u64::from(health.max_sockets)),
    )?;
    let tracker = &scrape.report.tracker;
    counter(out, "leaktrace_tracker_events", "Events the tracker applied.", &one(tracker.events))?;
    gauge(
        out,
        "leaktrace_tracker_connections",
        "Connections the tracker follows (traced and born before start).",
        &one(health.tracker_connections),
    )?;
    gauge(out, "leaktrace_tracker_call_sites", "Call sites the tracker keeps.", &one(scrape.report.call_sites.len() as u64))?;
    counter(out, "leaktrace_tracker_call_sites_expired", "Call sites forgotten (quiet without live connections).", &one(tracker.sites_expired))?;
    counter(
        out,
        "leaktrace_tracker_call_sites_evicted",
        "Call sites forgotten before their time for want of room (over --max-call-sites).",
        &one(tracker.sites_evicted),
    )?;
    counter(
        out,
        "leaktrace_tracker_closes_inferred",
        "Connections ended without a CLOSE seen (socket reused or gone from the inventory).",
        &one(tracker.closes_inferred),
    )?;
    counter(
        out,
        "leaktrace_tracker_orphan_transitions",
        "Transitions of sockets whose open never arrived.",
        &one(tracker.orphan_transitions),
    )?;
    let symbols = &health.symbolizer;
    counter(out, "leaktrace_symbolizer_processes_noted", "Processes whose mappings were queued for capture.", &one(symbols.processes_noted))?;
    counter(out, "leaktrace_symbolizer_processes_captured", "Processes captured for symbolization.", &one(symbols.processes_captured))?;
    counter(
        out,
        "leaktrace_symbolizer_processes_missed",
        "Processes gone before their capture (their frames stay addresses).",
        &one(symbols.processes_missed),
    )?;
    let backlog = symbols.processes_noted.saturating_sub(symbols.processes_captured + symbols.processes_missed);
    gauge(out, "leaktrace_symbolizer_capture_backlog", "Processes queued for capture and not captured yet.", &one(backlog))?;
    counter(out, "leaktrace_symbolizer_stacks_symbolized", "Distinct stacks symbolized.", &one(symbols.stacks_symbolized))?;
    counter(out, "leaktrace_symbolizer_stack_cache_hits", "Stacks answered from the cache.", &one(symbols.stack_cache_hits))?;
    counter(
        out,
        "leaktrace_symbolizer_seconds",
        "Time spent symbolizing distinct stacks.",
        &one(symbols.symbolize_time.as_secs_f64()),
    )?;
    counter(out, "leaktrace_inventories", "Socket inventories applied.", &one(health.inventories_taken))?;
    counter(
        out,
        "leaktrace_inventory_failures",
        "Socket inventories that could not be taken (the agent went on).",
        &one(health.inventories_failed),
    )?;
    gauge(out, "leaktrace_uptime_seconds", "Time since the probes were attached.", &one(scrape.report.duration_s))?;
    gauge(
        out,
        "leaktrace_build_info",
        "Always 1: the running leaktrace's version is its version label.",
        &[(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1u64)],
    )
}

#[cfg(test)]
mod tests;
