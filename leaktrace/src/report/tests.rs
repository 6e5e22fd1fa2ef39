//! Golden tests: the JSON report and the text views of a fixed synthetic stream, compared with
//! files under `report/golden/` (`UPDATE_GOLDEN=1` rewrites them after an intended change).
use super::*;
use crate::{
    event::{ConnOpen, Event, EventBody, Owner, SocketId, StateChange},
    tcp::TcpState,
    tracker::{Filter, Inventory, Limits, ObservedOwner, ObservedSocket, Tracker},
};

const S: u64 = 1_000_000_000;
const START: u64 = 500 * S;

fn event(sk: u64, ts_ns: u64, body: EventBody) -> Event {
    Event { ts_ns, cpu: 0, socket: SocketId { sk, birth_ns: START }, cookie: sk, body }
}

fn connect(sk: u64, ts_ns: u64, pid: u32, comm: &str, stack: &[u64], remote: &str, accept: bool) -> Event {
    let open = ConnOpen {
        owner: Owner { pid, tid: pid, process_start_ns: S, cgroup_id: 1, comm: comm.into() },
        local: "127.0.0.1:0".parse().unwrap(),
        remote: remote.parse().unwrap(),
        state: if accept { TcpState::Established } else { TcpState::SynSent },
        stack: stack.to_vec(),
        stack_error: None,
        goroutine: None,
        python: vec![],
        python_status: None,
    };
    event(sk, ts_ns, if accept { EventBody::Accept(open) } else { EventBody::Connect(open) })
}

fn change(sk: u64, ts_ns: u64, old: TcpState, new: TcpState) -> Event {
    let change = StateChange {
        old_state: old,
        new_state: new,
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:9000".parse().unwrap(),
    };
    event(sk, ts_ns, EventBody::State(change))
}

/// Symbols as a replay has them; the leaking client in a named pod, the server in a podman
/// container, the others on the host.
struct InContainers;

impl Resolver for InContainers {
    fn resolve(&self, stacks: &[(ProcessKey, Arc<[u64]>)]) -> Vec<SymbolizedStack> {
        AddressesOnly.resolve(stacks)
    }

    fn exe(&self, _: ProcessKey) -> Option<String> {
        None
    }

    fn container(&self, process: ProcessKey) -> Option<Workload> {
        let id = |digit: &str| digit.repeat(64);
        match process.pid {
            100 => Some(Workload {
                id: id("a"),
                runtime: crate::container::Runtime::Containerd,
                name: Some("consumer".into()),
                pod: Some("orders-7d9f8b6c4-x2kqp".into()),
                namespace: Some("shop".into()),
                image: Some("registry.example.com/shop/orders:1.4.2".into()),
            }),
            400 => Some(Workload {
                id: format!("5e687ed3797e{}", &id("b")[12..]),
                runtime: crate::container::Runtime::Podman,
                name: None,
                pod: None,
                namespace: None,
                image: None,
            }),
            _ => None,
        }
    }
}

/// Three programs: one leaking, one churning, one server stuck in CLOSE_WAIT; and a
/// connection born before start.
pub(crate) fn scenario() -> Report {
    let mut tracker = Tracker::new(Thresholds::default(), Limits::default(), Filter::default(), START);
    tracker.seed(&Inventory {
        ts_ns: START,
        complete: true,
        unlisted_pids: vec![],
        sockets: vec![ObservedSocket {
            cookie: 1,
            state: TcpState::Established,
            local: "10.1.0.2:39000".parse().unwrap(),
            remote: "10.1.0.3:5432".parse().unwrap(),
            direction: None,
            idle_ms: Some(1500),
            owner: Some(ObservedOwner { pid: 300, start_ns: S, comm: "pgclient".into(), cgroup_id: 1 }),
        }],
    });
    let mut sk = 0x1000;
    for i in 0..100 {
        let ts = START + i * S / 20;
        sk += 1;
        tracker.apply(&connect(sk, ts, 100, "grpcleak", &[0x4a1000, 0x4a2000, 0x401000], "127.0.0.1:9000", false));
        tracker.apply(&change(sk, ts + 1000, TcpState::SynSent, TcpState::Established));
        sk += 1;
        tracker.apply(&connect(sk, ts, 200, "fixed", &[0x4b1000, 0x401000], "127.0.0.1:9000", false));
        tracker.apply(&change(sk, ts + 1000, TcpState::SynSent, TcpState::Established));
        tracker.apply(&change(sk, ts + 3_000_000, TcpState::Established, TcpState::FinWait1));
        tracker.apply(&change(sk, ts + 3_100_000, TcpState::FinWait1, TcpState::FinWait2));
        tracker.apply(&change(sk, ts + 3_200_000, TcpState::FinWait2, TcpState::Close));
    }
    for i in 0..2 {
        sk += 1;
        tracker.apply(&connect(sk, START + i * S, 400, "server", &[0x4c1000], "10.1.0.9:51000", true));
        tracker.apply(&change(sk, START + i * S + 1000, TcpState::Established, TcpState::CloseWait));
    }
    let snapshot = tracker.snapshot(START + 15 * S);
    let counters = KernelCounters { produced: 1206, received: 1206, ..KernelCounters::default() };
    Report::new(&snapshot, Some(counters), tracker.thresholds(), &InContainers)
}

fn golden(name: &str, actual: &str) {
    super::testing::golden("report", name, actual);
}

#[test]
fn json_report_matches_the_contract() {
    let report = scenario();
    let json = serde_json::to_value(&report).unwrap();
    // The contract's fields, by name and type.
    assert_eq!(json["version"], 1);
    assert!(json["duration_s"].is_f64());
    assert!(json["events"]["received"].is_u64() && json["events"]["lost"].is_u64());
    let sites = json["call_sites"].as_array().unwrap();
    for site in sites {
        for field in ["pid", "opened", "closed", "live", "close_wait"] {
            assert!(site[field].is_u64(), "{field} in {site}");
        }
        assert!(site["comm"].is_string() && site["oldest_age_s"].is_f64());
        assert!(["connect", "accept"].contains(&site["direction"].as_str().unwrap()));
        assert!(["leak", "suspect", "churn", "ok"].contains(&site["verdict"].as_str().unwrap()));
        for frame in site["frames"].as_array().unwrap() {
            assert!(frame["address"].as_str().unwrap().starts_with("0x"));
            for field in ["function", "file", "line", "module"] {
                assert!(frame.get(field).is_some(), "{field} missing from {frame}");
            }
        }
    }
    let lives: Vec<u64> = sites.iter().map(|site| site["live"].as_u64().unwrap()).collect();
    assert!(lives.windows(2).all(|pair| pair[0] >= pair[1]), "most live first: {lives:?}");
    let verdicts: Vec<(&str, &str)> =
        sites.iter().map(|site| (site["comm"].as_str().unwrap(), site["verdict"].as_str().unwrap())).collect();
    assert_eq!(verdicts, [("grpcleak", "leak"), ("server", "leak"), ("pgclient", "ok"), ("fixed", "churn")]);
    // Every call site and process names its container, or null on the host.
    for entry in sites.iter().chain(json["processes"].as_array().unwrap()) {
        let container = &entry["container"];
        match entry["pid"].as_u64().unwrap() {
            100 => {
                let named = (container["pod"].as_str(), container["runtime"].as_str());
                assert_eq!(named, (Some("orders-7d9f8b6c4-x2kqp"), Some("containerd")));
            }
            400 => assert_eq!((container["name"].is_null(), container["runtime"].as_str()), (true, Some("podman"))),
            _ => assert!(container.is_null(), "{entry}"),
        }
    }
    golden("report.json", &(serde_json::to_string_pretty(&report).unwrap() + "\n"));
}

#[test]
fn table_and_final_report_read_as_expected() {
    let report = scenario();
    golden("table.txt", &table::render_table(&report, 20));
    golden("final.txt", &table::render_final(&report, 20));
    let two_rows = table::render_table(&report, 2);
    assert!(two_rows.contains("... and 2 more call sites"), "{two_rows}");
}

#[test]
fn workload_filters_keep_the_containers_asked_for() {
    let filter = |containers: &[&str], pods: &[&str]| WorkloadFilter {
        containers: containers.iter().map(|s| s.to_string()).collect(),
        pods: pods.iter().map(|s| s.to_string()).collect(),
        namespaces: Vec::new(),
    };
    let pids = |report: &Report| (report.call_sites.iter().map(|site| site.pid).collect::<Vec<_>>(), report.processes.len());
    let mut report = scenario();
    report.retain_workloads(&filter(&[], &[]));
    assert_eq!(pids(&report).1, 4, "no filter keeps everything");
    report.retain_workloads(&filter(&["5e687ed3", "consumer"], &[]));
    assert_eq!(pids(&report), (vec![100, 400], 2));
    report.retain_workloads(&filter(&[], &["orders-7d9f8b6c4-x2kqp"]));
    assert_eq!(pids(&report), (vec![100], 1));
}

#[test]
fn a_json_report_reads_back_as_it_was_written() {
    let report = scenario();
    let text = serde_json::to_string_pretty(&report).unwrap();
    let read: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_string_pretty(&read).unwrap(), text);
}

#[test]
fn exact_identities_tell_every_call_site_apart_and_portable_ones_survive_a_restart() {
    use super::identity::SiteIdentity;
    let report = scenario();
    let exact: std::collections::HashSet<_> = report.call_sites.iter().map(SiteIdentity::exact).collect();
    assert_eq!(exact.len(), report.call_sites.len());

    // The same program started again: another pid, other addresses, the same functions.
    let mut restarted = report.call_sites[0].clone();
    restarted.pid += 1000;
    restarted.process_start_ns += 1;
    for frame in &mut restarted.frames {
        frame.address += 0x10_0000;
        frame.line = frame.line.map(|line| line + 3);
    }
    assert_ne!(SiteIdentity::exact(&restarted), SiteIdentity::exact(&report.call_sites[0]));
    assert_eq!(SiteIdentity::portable(&restarted), SiteIdentity::portable(&report.call_sites[0]));
    let other_function = report.call_sites.iter().find(|site| site.comm != restarted.comm).unwrap();
    assert_ne!(SiteIdentity::portable(other_function), SiteIdentity::portable(&restarted));
}

#[test]
fn the_table_shows_the_peer_that_tells_two_dial_sites_apart() {
    let report = scenario();
    let table = table::render_table(&report, 20);
    let row = |comm: &str| table.lines().find(|line| line.contains(comm)).unwrap().to_string();
    assert!(row("grpcleak").contains("127.0.0.1:9000"), "{table}");
    assert!(row("server").contains(" 10.1.0.9 "), "accepts name the client's address, not its port: {table}");

    // The peer holding most live connections leads, the others are counted, `other` never leads.
    let mut site = report.call_sites[0].clone();
    site.destinations = vec![
        DestinationCount { address: "other".into(), live: 90, opened: 90 },
        DestinationCount { address: "10.0.0.1:5432".into(), live: 1, opened: 40 },
        DestinationCount { address: "10.0.0.2:5432".into(), live: 7, opened: 8 },
    ];
    assert_eq!(table::peer(&site, 25), "10.0.0.2:5432 +2");
    assert_eq!(table::peer(&site, 10), "10.0.0… +2");
    site.destinations.clear();
    assert_eq!(table::peer(&site, 25), "-");
}
