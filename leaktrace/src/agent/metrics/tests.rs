//! The metric families on a synthetic report: names, types and labels as Prometheus reads them,
//! the top-N rule and its `other` series, dropped labels, and the two formats.
use std::{collections::BTreeMap, sync::Arc};

use super::*;
use crate::{
    agent::{Health, Scrape},
    kernel::KernelCounters,
    report::Report,
    symbolize::Frame,
    tracker::{Thresholds, TrackerStats},
};

fn frame(function: &str) -> Frame {
    Frame {
        runtime: None,
        address: 0x401000,
        function: Some(function.into()),
        file: Some("/src/main.go".into()),
        line: Some(42),
        module: None,
        inlined: false,
        recovered: false,
        spawned_by: None,
    }
}

fn site(pid: u32, comm: &str, function: &str, live: u64, opened: u64, verdict: Verdict) -> CallSite {
    let mut site = crate::report::testing::call_site(pid, comm, vec![frame(function)], live, opened, verdict);
    (site.close_wait, site.oldest_age_s, site.growth_per_s) = (1, live as f64, 0.5);
    site
}

fn process(pid: u32, comm: &str, live: u64, verdict: Verdict) -> ProcessView {
    ProcessView {
        pid,
        start_ns: 1,
        comm: comm.into(),
        live,
        live_born_before_start: 0,
        opened: live,
        closed: 0,
        failed: 0,
        close_wait: 1,
        call_sites: 1,
        verdict,
        container: None,
    }
}

/// A leaking client (pid 100), a churning one (200), three quiet pools (300, 301, 302) with the
/// same call site, most live first as the tracker sorts them.
fn scrape() -> Arc<Scrape> {
    let call_sites = vec![
        site(100, "grpcleak", "main.dialBackend", 95, 95, Verdict::Leak),
        site(200, "fixed", "main.dialPerMessage", 40, 400, Verdict::Churn),
        site(300, "pool", "main.pool", 5, 5, Verdict::Ok),
        site(301, "pool", "main.pool", 4, 4, Verdict::Ok),
        site(302, "pool", "main.pool", 3, 3, Verdict::Suspect),
    ];
    let processes = vec![
        process(100, "grpcleak", 95, Verdict::Leak),
        process(200, "fixed", 40, Verdict::Churn),
        process(300, "pool", 5, Verdict::Ok),
        process(301, "pool", 4, Verdict::Ok),
        process(302, "pool", 3, Verdict::Suspect),
    ];
    let report = Report {
        version: 1,
        duration_s: 12.5,
        events: Some(KernelCounters { produced: 1206, received: 1200, lost: 6, ..KernelCounters::default() }),
        tracker: TrackerStats { events: 1200, opened: 507, closed: 360, failed: 2, ..TrackerStats::default() },
        thresholds: Thresholds::default(),
        call_sites,
        processes,
    };
    let health = Health {
        kernel_tracked_sockets: Some(150),
        max_sockets: 131_072,
        tracker_connections: 147,
        inventories_taken: 6,
        ..Health::default()
    };
    Arc::new(Scrape { report, health, ended: Default::default() })
}

/// One sample: its name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an exposition (the label values written here have no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_string(), value.trim_matches('"').to_string())
                })
                .collect();
            Sample { name: name.into(), labels, value: value.parse().unwrap() }
        })
        .collect()
}

fn render_with(top: usize, drop: &[&str], format: Format) -> String {
    let drop: Vec<String> = drop.iter().map(|label| label.to_string()).collect();
    render(scrape(), &MetricsConfig::new(top, &drop).unwrap(), format).unwrap()
}

/// The samples of `name` whose labels include `labels`.
fn find<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value)))
        .collect()
}

#[track_caller]
fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(all, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:#?}");
    found[0].value
}

#[test]
fn host_totals_and_health_follow_the_naming_conventions() {
    let text = render_with(50, &[], Format::Text);
    let all = samples(&text);
    assert_eq!(value(&all, "leaktrace_live_connections", &[]), 147.0);
    assert_eq!(value(&all, "leaktrace_connections_opened_total", &[]), 507.0);
    assert_eq!(value(&all, "leaktrace_connections_closed_total", &[]), 360.0);
    assert_eq!(value(&all, "leaktrace_close_wait_connections", &[]), 5.0);
    assert_eq!(value(&all, "leaktrace_oldest_connection_age_seconds", &[]), 95.0);
    assert_eq!(value(&all, "leaktrace_call_sites", &[("verdict", "leak")]), 1.0);
    assert_eq!(value(&all, "leaktrace_call_sites", &[("verdict", "ok")]), 2.0);
    assert_eq!(value(&all, "leaktrace_events_produced_total", &[]), 1206.0);
    assert_eq!(value(&all, "leaktrace_events_lost_total", &[]), 6.0);
    assert_eq!(value(&all, "leaktrace_kernel_tracked_sockets", &[]), 150.0);
    assert_eq!(value(&all, "leaktrace_kernel_socket_map_capacity", &[]), 131_072.0);
    assert_eq!(value(&all, "leaktrace_tracker_connections", &[]), 147.0);
    assert_eq!(value(&all, "leaktrace_inventories_total", &[]), 6.0);
    assert_eq!(value(&all, "leaktrace_uptime_seconds", &[]), 12.5);
    assert!(text.contains("# TYPE leaktrace_events_lost_total counter\n"), "{text}");
    assert!(text.contains("# TYPE leaktrace_live_connections gauge\n"), "{text}");
    // Every counter ends in _total, and nothing else does.
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
        assert!(name.starts_with("leaktrace_"), "{line}");
    }
}

#[test]
fn each_call_site_has_its_verdict_and_its_figures() {
    let all = samples(&render_with(50, &[], Format::Text));
    let leak = [("pid", "100"), ("comm", "grpcleak"), ("direction", "connect"), ("call_site", "main.dialBackend main.go:42")];
    let with_verdict = [&leak[..], &[("verdict", "leak")]].concat();
    assert_eq!(value(&all, "leaktrace_call_site_live_connections", &with_verdict), 95.0);
    assert_eq!(value(&all, "leaktrace_call_site_verdict", &with_verdict), 1.0);
    assert_eq!(value(&all, "leaktrace_call_site_connections_opened_total", &leak), 95.0);
    assert_eq!(value(&all, "leaktrace_call_site_close_wait_connections", &leak), 1.0);
    // The verdict is a label of the verdict and live series only: counters keep their identity
    // when a verdict changes.
    let opened = find(&all, "leaktrace_call_site_connections_opened_total", &leak);
    assert!(!opened[0].labels.contains_key("verdict"));
    assert_eq!(value(&all, "leaktrace_call_site_verdict", &[("pid", "200"), ("verdict", "churn")]), 1.0);
    // Outside a container there is no container, pod or namespace label at all.
    assert!(all.iter().all(|sample| !sample.labels.contains_key("pod")));
    assert_eq!(value(&all, "leaktrace_process_live_connections", &[("pid", "100"), ("comm", "grpcleak")]), 95.0);
    assert_eq!(value(&all, "leaktrace_process_verdict", &[("pid", "302"), ("verdict", "suspect")]), 1.0);
    assert_eq!(value(&all, "leaktrace_call_sites_summed", &[]), 0.0);
}

#[test]
fn past_the_top_n_call_sites_are_summed_into_other() {
    let all = samples(&render_with(2, &[], Format::Text));
    let live = find(&all, "leaktrace_call_site_live_connections", &[]);
    assert_eq!(live.len(), 3, "two call sites and other: {live:#?}");
    // The three pools (5 + 4 + 3 live), judged by the most severe of them.
    let other = [("call_site", OTHER)];
    assert_eq!(value(&all, "leaktrace_call_site_live_connections", &[("call_site", OTHER), ("verdict", "suspect")]), 12.0);
    assert_eq!(value(&all, "leaktrace_call_site_close_wait_connections", &other), 3.0);
    assert!(!find(&all, "leaktrace_call_site_live_connections", &other)[0].labels.contains_key("pid"));
    // A sum over a changing set of call sites is no counter: other has none.
    assert!(find(&all, "leaktrace_call_site_connections_opened_total", &other).is_empty());
    assert_eq!(find(&all, "leaktrace_call_site_connections_opened_total", &[]).len(), 2);
    assert_eq!(value(&all, "leaktrace_call_sites_summed", &[]), 3.0);
    assert_eq!(value(&all, "leaktrace_process_live_connections", &[("comm", OTHER)]), 12.0);
    // Host totals count every call site.
    assert_eq!(value(&all, "leaktrace_live_connections", &[]), 147.0);
}

#[test]
fn a_dropped_label_sums_the_series_it_told_apart() {
    let text = render_with(50, &["pid"], Format::Text);
    assert!(!text.contains("pid="), "{text}");
    let all = samples(&text);
    // The three pools differ only by pid.
    assert_eq!(value(&all, "leaktrace_call_site_live_connections", &[("comm", "pool"), ("verdict", "suspect")]), 12.0);
    assert_eq!(value(&all, "leaktrace_call_site_connections_opened_total", &[("comm", "pool")]), 12.0);
    assert_eq!(value(&all, "leaktrace_process_live_connections", &[("comm", "pool")]), 12.0);
    let all = samples(&render_with(50, &["call_site", "comm"], Format::Text));
    assert_eq!(find(&all, "leaktrace_call_site_live_connections", &[]).len(), 5);
    assert!(all.iter().all(|sample| !sample.labels.contains_key("call_site") || sample.name.starts_with("leaktrace_call_sites")));
}

#[test]
fn an_ended_process_with_nothing_live_loses_its_series() {
    let mut scrape = Arc::into_inner(scrape()).unwrap();
    scrape.report.call_sites.push(site(400, "gone", "main.once", 0, 7, Verdict::Churn));
    scrape.report.processes.push(process(400, "gone", 0, Verdict::Churn));
    // pid 100 has exited too, but its connections are still open (a child holds them).
    scrape.ended = [100, 400].into();
    let text = render(Arc::new(scrape), &MetricsConfig::new(50, &[]).unwrap(), Format::Text).unwrap();
    assert!(!text.contains(r#"pid="400""#), "{text}");
    let all = samples(&text);
    assert_eq!(value(&all, "leaktrace_process_live_connections", &[("pid", "100")]), 95.0);
    // The tracker still keeps the call site: the host figures count it.
    assert_eq!(value(&all, "leaktrace_call_sites", &[("verdict", "churn")]), 2.0);
}

#[test]
fn a_container_names_its_series_by_container_pod_and_namespace() {
    let mut scrape = Arc::into_inner(scrape()).unwrap();
    let in_pod = crate::container::Workload {
        id: "5e687ed3".repeat(8),
        runtime: crate::container::Runtime::Containerd,
        name: Some("consumer".into()),
        pod: Some("orders-7d9f".into()),
        namespace: Some("shop".into()),
        image: None,
    };
    let off_cluster = crate::container::Workload { name: None, pod: None, namespace: None, ..in_pod.clone() };
    scrape.report.call_sites[0].container = Some(in_pod.clone());
    scrape.report.processes[0].container = Some(in_pod);
    scrape.report.call_sites[1].container = Some(off_cluster);
    let all = samples(&render(Arc::new(scrape), &MetricsConfig::new(50, &[]).unwrap(), Format::Text).unwrap());
    let named = [("container", "consumer"), ("pod", "orders-7d9f"), ("namespace", "shop"), ("verdict", "leak")];
    assert_eq!(value(&all, "leaktrace_call_site_verdict", &named), 1.0);
    assert_eq!(value(&all, "leaktrace_process_live_connections", &named[..3]), 95.0);
    // Off a cluster, a container is its id's first 12 digits, with no pod.
    let by_id = find(&all, "leaktrace_call_site_verdict", &[("container", "5e687ed35e68")]);
    assert_eq!(by_id.len(), 1);
    assert!(!by_id[0].labels.contains_key("pod"));
}

#[test]
fn openmetrics_when_asked_for_it() {
    assert_eq!(Format::from_accept(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")), Format::OpenMetrics);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
    assert_eq!(Format::from_accept(None), Format::Text);
    let text = render_with(50, &[], Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE leaktrace_events_lost counter\nleaktrace_events_lost_total 6\n"), "{text}");
}

#[test]
fn bad_configuration_is_refused_with_the_choices() {
    let err = MetricsConfig::new(50, &["verdict".into()]).unwrap_err().to_string();
    assert!(err.starts_with("--metrics-drop-label verdict: no such label; the labels are: pid, comm, container"), "{err}");
    assert_eq!(MetricsConfig::new(0, &[]).unwrap_err().to_string(), "--metrics-top must be at least 1");
    assert_eq!(MetricsConfig::new(3, &["pod".into()]).unwrap().dropped, vec!["pod"]);
}
