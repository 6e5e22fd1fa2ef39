//! The tracker on synthetic streams: every rule and edge case without a kernel.
use std::net::SocketAddr;

use super::*;
use crate::event::{ConnOpen, Owner};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const START: u64 = 1000 * S;

/// Builds event streams the way the kernel writes them.
struct Stream {
    next_sk: u64,
    next_cookie: u64,
}

impl Stream {
    fn new() -> Self {
        Self { next_sk: 0xffff_8880_0000_1000, next_cookie: 100 }
    }

    fn socket(&mut self, birth_ns: u64) -> (SocketId, u64) {
        self.next_sk += 0x100;
        self.next_cookie += 1;
        (SocketId { sk: self.next_sk, birth_ns }, self.next_cookie)
    }
}

fn owner(pid: u32, comm: &str) -> Owner {
    Owner { pid, tid: pid, process_start_ns: 5 * S + u64::from(pid), cgroup_id: 1, comm: comm.into() }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn open(socket: SocketId, cookie: u64, ts_ns: u64, owner: Owner, accept: bool, stack: &[u64], remote: &str) -> Event {
    let open = ConnOpen {
        owner,
        local: addr("127.0.0.1:0"),
        remote: addr(remote),
        state: if accept { TcpState::Established } else { TcpState::SynSent },
        stack: stack.to_vec(),
        stack_error: None,
        goroutine: None,
        python: vec![],
        python_status: None,
    };
    let body = if accept { EventBody::Accept(open) } else { EventBody::Connect(open) };
    Event { ts_ns, cpu: 0, socket, cookie, body }
}

fn state(socket: SocketId, cookie: u64, ts_ns: u64, old: TcpState, new: TcpState) -> Event {
    let change = StateChange { old_state: old, new_state: new, local: addr("127.0.0.1:4000"), remote: addr("127.0.0.1:9000") };
    Event { ts_ns, cpu: 1, socket, cookie, body: EventBody::State(change) }
}

fn tracker() -> Tracker {
    Tracker::new(Thresholds::default(), Limits::default(), Filter::default(), START)
}

const DIAL: &[u64] = &[0x401000, 0x402000, 0x403000];
const OTHER: &[u64] = &[0x401000, 0x405000];

/// A client connecting `rate` times a second for `seconds`, closing after `lifetime` if any.
fn client(t: &mut Tracker, stream: &mut Stream, pid: u32, rate: u64, seconds: u64, lifetime: Option<u64>) {
    let mut events = Vec::new();
    for i in 0..rate * seconds {
        let ts = START + i * S / rate;
        let (socket, cookie) = stream.socket(ts);
        events.push(open(socket, cookie, ts, owner(pid, "client"), false, DIAL, "127.0.0.1:9000"));
        events.push(state(socket, cookie, ts + 50_000, TcpState::SynSent, TcpState::Established));
        if let Some(lifetime) = lifetime {
            events.push(state(socket, cookie, ts + lifetime, TcpState::Established, TcpState::FinWait1));
            events.push(state(socket, cookie, ts + lifetime + 10_000, TcpState::FinWait1, TcpState::FinWait2));
            events.push(state(socket, cookie, ts + lifetime + 20_000, TcpState::FinWait2, TcpState::Close));
        }
    }
    events.sort_by_key(|event| event.ts_ns);
    for event in &events {
        t.apply(event);
    }
}

fn only_site(snapshot: &Snapshot) -> &SiteView {
    assert_eq!(snapshot.sites.len(), 1, "{:#?}", snapshot.sites);
    &snapshot.sites[0]
}

#[test]
fn a_client_that_never_closes_is_a_leak_within_seconds() {
    let mut t = tracker();
    let mut stream = Stream::new();
    client(&mut t, &mut stream, 42, 20, 4, None);
    let snapshot = t.snapshot(START + 4 * S);
    let site = only_site(&snapshot);
    assert_eq!(site.verdict, Verdict::Leak, "{:?}", site.findings);
    assert_eq!((site.facts.opened, site.facts.closed, site.facts.live), (80, 0, 80));
    assert_eq!(site.direction, Direction::Connect);
    assert_eq!(&*site.stack, DIAL);
    assert_eq!(site.comm, "client");
    assert!((site.facts.window.growth_per_s - 20.0).abs() < 1e-9);
    assert!((site.facts.oldest_age_s.unwrap() - 4.0).abs() < 1e-6);
    assert_eq!(site.destinations, vec![(Some(addr("127.0.0.1:9000")), Destination { opened: 80, live: 80 })]);
    assert_eq!(snapshot.processes[0].live, 80);
    assert_eq!(snapshot.processes[0].verdict, Verdict::Leak);
}

#[test]
fn the_same_client_closing_after_use_is_churn() {
    let mut t = tracker();
    let mut stream = Stream::new();
    client(&mut t, &mut stream, 42, 20, 5, Some(2 * MS));
    let snapshot = t.snapshot(START + 5 * S);
    let site = only_site(&snapshot);
    assert_eq!(site.verdict, Verdict::Churn, "{:?}", site.findings);
    assert_eq!((site.facts.opened, site.facts.closed, site.facts.live), (100, 100, 0));
    let lifetimes = site.lifetimes.unwrap();
    assert_eq!(lifetimes.count, 100);
    assert!((lifetimes.p50_s - 0.00207).abs() < 0.0001, "{lifetimes:?}");
    assert_eq!(lifetimes.histogram, [0, 100, 0, 0, 0, 0, 0, 0, 0], "all between 1 and 10 ms");
}

#[test]
fn one_shared_connection_is_ok() {
    let mut t = tracker();
    let mut stream = Stream::new();
    client(&mut t, &mut stream, 42, 1, 1, None);
    let snapshot = t.snapshot(START + 600 * S);
    let site = only_site(&snapshot);
    assert_eq!(site.verdict, Verdict::Ok);
    assert_eq!(site.facts.live, 1);
    assert_eq!(site.facts.oldest_age_s, Some(600.0));
}

#[test]
fn a_pool_of_five_is_ok_once_warm_and_later() {
    let mut t = tracker();
    let mut stream = Stream::new();
    client(&mut t, &mut stream, 42, 5, 1, None);
    for at in [2 * S, 30 * S, 3600 * S] {
        let snapshot = t.snapshot(START + at);
        assert_eq!(only_site(&snapshot).verdict, Verdict::Ok, "at {at}");
    }
}

#[test]
fn call_sites_are_split_by_stack_direction_and_process() {
    let mut t = tracker();
    let mut stream = Stream::new();
    let mut emit = |t: &mut Tracker, pid: u32, accept: bool, stack: &[u64]| {
        let (socket, cookie) = stream.socket(START);
        t.apply(&open(socket, cookie, START, owner(pid, "svc"), accept, stack, "127.0.0.1:9000"));
    };
    emit(&mut t, 1, false, DIAL);
    emit(&mut t, 1, false, DIAL);
    emit(&mut t, 1, false, OTHER);
    emit(&mut t, 1, true, DIAL);
    emit(&mut t, 2, false, DIAL);
    let snapshot = t.snapshot(START + S);
    assert_eq!(snapshot.sites.len(), 4);
    assert_eq!(snapshot.sites[0].facts.live, 2, "most live first");
    assert_eq!(snapshot.processes.len(), 2);
    assert_eq!(snapshot.processes[0].live, 4);
    assert_eq!(snapshot.processes[0].call_sites, 3);
}

#[test]
fn a_server_that_never_closes_after_the_peer_hangs_up_leaks_in_close_wait() {
    let mut t = tracker();
    let mut stream = Stream::new();
    for i in 0..3 {
        let ts = START + i * S;
        let (socket, cookie) = stream.socket(ts - MS);
        t.apply(&open(socket, cookie, ts, owner(7, "server"), true, DIAL, "10.0.0.9:51000"));
        t.apply(&state(socket, cookie, ts + MS, TcpState::Established, TcpState::CloseWait));
    }
    let early = t.snapshot(START + 5 * S);
    assert_eq!(only_site(&early).facts.close_wait, 3);
    assert_eq!(only_site(&early).verdict, Verdict::Ok, "{:?}", only_site(&early).findings);
    let later = t.snapshot(START + 11 * S + 500 * MS);
    let site = only_site(&later);
    assert_eq!(site.verdict, Verdict::Leak);
    assert_eq!(site.findings[0].rule, "close_wait");
    assert_eq!(site.facts.close_wait_stuck, 2);
    assert_eq!(site.direction, Direction::Accept);
    // Accepted peers are grouped by address, not by their ephemeral port.
    assert_eq!(site.destinations[0].0, Some(addr("10.0.0.9:0")));
}

#[test]
fn close_wait_then_close_is_not_counted_any_more() {
    let mut t = tracker();
    let mut stream = Stream::new();
    let (socket, cookie) = stream.socket(START);
    t.apply(&open(socket, cookie, START, owner(7, "server"), true, DIAL, "10.0.0.9:51000"));
    t.apply(&state(socket, cookie, START + S, TcpState::Established, TcpState::CloseWait));
    t.apply(&state(socket, cookie, START + 20 * S, TcpState::CloseWait, TcpState::LastAck));
    t.apply(&state(socket, cookie, START + 20 * S + MS, TcpState::LastAck, TcpState::Close));
    let snapshot = t.snapshot(START + 30 * S);
    let site = only_site(&snapshot);
    assert_eq!((site.facts.close_wait, site.facts.live, site.facts.closed), (0, 0, 1));
    assert_eq!(site.verdict, Verdict::Ok);
    // An accept that finds the socket already in CLOSE_WAIT, then an RST.
    let (socket, cookie) = stream.socket(START);
    let mut accepted = open(socket, cookie, START + S, owner(7, "server"), true, DIAL, "10.0.0.9:51001");
    if let EventBody::Accept(open) = &mut accepted.body {
        open.state = TcpState::CloseWait;
    }
    t.apply(&accepted);
    assert_eq!(only_site(&t.snapshot(START + 2 * S)).facts.close_wait, 1);
    t.apply(&state(socket, cookie, START + 3 * S, TcpState::CloseWait, TcpState::Close));
    assert_eq!(only_site(&t.snapshot(START + 4 * S)).facts.close_wait, 0);
}

#[test]
fn refused_connects_are_failures_not_leaks_nor_closes() {
    let mut t = tracker();
    let mut stream = Stream::new();
    for i in 0..50 {
        let ts = START + i * S / 10;
        let (socket, cookie) = stream.socket(ts);
        t.apply(&open(socket, cookie, ts, owner(3, "dialer"), false, DIAL, "127.0.0.1:1"));
        t.apply(&state(socket, cookie, ts + 30_000, TcpState::SynSent, TcpState::Close));
    }
    let snapshot = t.snapshot(START + 5 * S);
    let site = only_site(&snapshot);
    assert_eq!((site.facts.failed, site.facts.closed, site.facts.live), (50, 0, 0));
    assert_eq!(site.lifetimes, None);
    assert_ne!(site.verdict, Verdict::Leak);
}

#[test]
fn a_reused_socket_address_ends_the_old_connection() {
    let mut t = tracker();
    let first = SocketId { sk: 0xabc0, birth_ns: START };
    let second = SocketId { sk: 0xabc0, birth_ns: START + S };
    t.apply(&open(first, 1, START, owner(3, "app"), false, DIAL, "127.0.0.1:9000"));
    // The first one's CLOSE was never seen; the address comes back with a new birth.
    t.apply(&open(second, 2, START + S, owner(3, "app"), false, DIAL, "127.0.0.1:9000"));
    // A late transition of the first (old birth) is not applied to the second.
    t.apply(&state(first, 1, START + S + 1, TcpState::SynSent, TcpState::Established));
    let snapshot = t.snapshot(START + 2 * S);
    let site = only_site(&snapshot);
    assert_eq!((site.facts.opened, site.facts.failed, site.facts.live), (2, 1, 1));
    assert_eq!(t.stats().closes_inferred, 1);
    assert_eq!(t.connections[&0xabc0].state, TcpState::SynSent);
}

#[test]
fn a_close_without_a_seen_open_is_an_orphan_and_changes_nothing() {
    let mut t = tracker();
    let socket = SocketId { sk: 0xdead, birth_ns: START };
    t.apply(&state(socket, 9, START + 1, TcpState::FinWait2, TcpState::Close));
    t.expire(START + 3 * S);
    assert_eq!(t.stats().orphan_transitions, 1);
    assert!(t.snapshot(START + 3 * S).sites.is_empty());
}

#[test]
fn a_transition_that_overtakes_its_open_is_applied_when_the_open_arrives() {
    let mut t = tracker();
    let socket = SocketId { sk: 0xbeef, birth_ns: START };
    t.apply(&state(socket, 5, START + 2, TcpState::Established, TcpState::CloseWait));
    t.apply(&open(socket, 5, START + 1, owner(8, "srv"), true, DIAL, "127.0.0.1:9000"));
    let snapshot = t.snapshot(START + S);
    assert_eq!(only_site(&snapshot).facts.close_wait, 1);
    assert_eq!(t.stats().orphan_transitions, 0);
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let mut t = tracker();
    let mut stream = Stream::new();
    let (a, ca) = stream.socket(START);
    let (b, cb) = stream.socket(START);
    t.apply(&open(a, ca, START, owner(77, "old"), false, DIAL, "127.0.0.1:9000"));
    let mut reborn = owner(77, "new");
    reborn.process_start_ns += 50 * S;
    t.apply(&open(b, cb, START + S, reborn, false, DIAL, "127.0.0.1:9000"));
    let snapshot = t.snapshot(START + 2 * S);
    assert_eq!(snapshot.sites.len(), 2);
    let comms: Vec<_> = snapshot.processes.iter().map(|p| p.comm.as_str()).collect();
    assert_eq!(comms.len(), 2);
    assert!(comms.contains(&"old") && comms.contains(&"new"));
}

#[test]
fn filtered_connections_are_ignored_quietly() {
    let filter = Filter { comms: vec!["wanted".into()], ..Filter::default() };
    let mut t = Tracker::new(Thresholds::default(), Limits::default(), filter, START);
    let mut stream = Stream::new();
    let (socket, cookie) = stream.socket(START);
    t.apply(&open(socket, cookie, START, owner(1, "other"), false, DIAL, "127.0.0.1:9000"));
    t.apply(&state(socket, cookie, START + 1, TcpState::SynSent, TcpState::Established));
    t.apply(&state(socket, cookie, START + 2, TcpState::Established, TcpState::Close));
    t.expire(START + 5 * S);
    assert!(t.snapshot(START + 5 * S).sites.is_empty());
    assert_eq!((t.stats().filtered, t.stats().orphan_transitions), (1, 0));
    assert!(t.ignored.is_empty());
}

fn observed(cookie: u64, state: TcpState, pid: u32, idle_ms: Option<u64>) -> ObservedSocket {
    ObservedSocket {
        cookie,
        state,
        local: addr("127.0.0.1:40000"),
        remote: addr("127.0.0.1:5432"),
        direction: Some(Direction::Connect),
        idle_ms,
        owner: Some(ObservedOwner { pid, start_ns: 5 * S + u64::from(pid) + 4 * MS, comm: "app".into(), cgroup_id: 1 }),
    }
}

#[test]
fn connections_born_before_start_are_seeded_without_stack_or_lifetime() {
    let mut t = tracker();
    let inventory = Inventory {
        ts_ns: START,
        complete: true,
        unlisted_pids: vec![],
        sockets: vec![
            observed(1, TcpState::Established, 9, Some(5000)),
            observed(2, TcpState::Established, 9, None),
            observed(3, TcpState::Listen, 9, None),
            observed(4, TcpState::TimeWait, 9, None),
            ObservedSocket { owner: None, ..observed(5, TcpState::FinWait2, 9, None) },
        ],
    };
    t.seed(&inventory);
    assert_eq!(t.stats().seeded, 2);
    // The same process then opens a traced connection: one process, two call sites.
    let mut stream = Stream::new();
    let (socket, cookie) = stream.socket(START + S);
    t.apply(&open(socket, cookie, START + S, owner(9, "app"), false, DIAL, "127.0.0.1:9000"));
    let snapshot = t.snapshot(START + 100 * S);
    assert_eq!(snapshot.sites.len(), 2);
    let seeded = snapshot.sites.iter().find(|s| s.born_before_start).unwrap();
    assert!(seeded.stack.is_empty());
    assert_eq!((seeded.facts.live, seeded.facts.opened), (2, 0));
    assert_eq!(seeded.facts.oldest_age_s, None, "no made-up age");
    assert_eq!(seeded.lifetimes, None);
    assert_eq!(seeded.max_idle_s, Some(105.0));
    assert_eq!(seeded.verdict, Verdict::Ok);
    assert_eq!(snapshot.processes.len(), 1);
    assert_eq!((snapshot.processes[0].live, snapshot.processes[0].live_born_before_start), (3, 2));
}

#[test]
fn inventories_give_idle_times_and_sweep_what_is_gone() {
    let mut t = tracker();
    t.seed(&Inventory { ts_ns: START, complete: true, unlisted_pids: vec![], sockets: vec![observed(1, TcpState::Established, 9, Some(0))] });
    let mut stream = Stream::new();
    let (socket, cookie) = stream.socket(START + S);
    t.apply(&open(socket, cookie, START + S, owner(9, "app"), false, DIAL, "127.0.0.1:9000"));
    t.apply(&state(socket, cookie, START + S + 1, TcpState::SynSent, TcpState::Established));
    // Both listed, the traced one idle for 70 s: idle is known.
    let both = vec![observed(1, TcpState::CloseWait, 9, Some(0)), observed(cookie, TcpState::Established, 9, Some(70_000))];
    t.observe(&Inventory { ts_ns: START + 80 * S, complete: true, unlisted_pids: vec![], sockets: both.clone() });
    let snapshot = t.snapshot(START + 80 * S);
    let traced = snapshot.sites.iter().find(|s| !s.born_before_start).unwrap();
    assert_eq!(traced.max_idle_s, Some(70.0));
    assert_eq!(traced.facts.idle_live, 1);
    let seeded = snapshot.sites.iter().find(|s| s.born_before_start).unwrap();
    assert_eq!(seeded.facts.close_wait, 1, "seeded state follows the inventory");
    // Gone from an incomplete inventory: nothing is concluded.
    t.observe(&Inventory { ts_ns: START + 81 * S, complete: false, unlisted_pids: vec![], sockets: vec![] });
    assert_eq!(t.live_connections(), 2);
    // Gone from a complete one: the seeded connection has ended (no probe reports it); the
    // traced one needs a second absence (its CLOSE may be in flight).
    t.observe(&Inventory { ts_ns: START + 82 * S, complete: true, unlisted_pids: vec![], sockets: vec![] });
    assert_eq!(t.live_connections(), 1);
    t.observe(&Inventory { ts_ns: START + 83 * S, complete: true, unlisted_pids: vec![], sockets: vec![] });
    assert_eq!(t.live_connections(), 0);
    assert_eq!(t.stats().closes_inferred, 1);
    let snapshot = t.snapshot(START + 84 * S);
    let traced = snapshot.sites.iter().find(|s| !s.born_before_start).unwrap();
    assert_eq!((traced.facts.closed, traced.lifetimes), (1, None), "an inferred close has no lifetime");
}

/// Without CAP_SYS_PTRACE (or under AppArmor) some processes' network namespaces cannot be
/// read: their sockets may be missing from an inventory that is otherwise complete, and their
/// connections must not be ended by that absence, while other processes' are.
#[test]
fn connections_of_processes_whose_namespace_could_not_be_read_are_not_swept() {
    let mut t = tracker();
    t.seed(&Inventory {
        ts_ns: START,
        complete: true,
        unlisted_pids: vec![],
        sockets: vec![observed(1, TcpState::Established, 9, None), observed(2, TcpState::Established, 7, None)],
    });
    let mut stream = Stream::new();
    let (hidden, hidden_cookie) = stream.socket(START + S);
    t.apply(&open(hidden, hidden_cookie, START + S, owner(9, "app"), false, DIAL, "127.0.0.1:9000"));
    let (seen, seen_cookie) = stream.socket(START + S);
    t.apply(&open(seen, seen_cookie, START + S, owner(7, "other"), false, DIAL, "127.0.0.1:9000"));
    for second in [80, 81] {
        t.observe(&Inventory { ts_ns: START + second * S, complete: true, unlisted_pids: vec![9], sockets: vec![] });
    }
    // pid 9's seeded and traced connections stay; pid 7's are gone.
    assert_eq!(t.live_connections(), 2);
    assert_eq!(t.stats().closes_inferred, 1);
    let snapshot = t.snapshot(START + 82 * S);
    let live_of = |pid: u32| snapshot.processes.iter().find(|p| p.pid == pid).map_or(0, |p| p.live);
    assert_eq!((live_of(9), live_of(7)), (2, 0));
}

#[test]
fn a_seeded_socket_that_turns_out_traced_is_not_counted_twice() {
    let mut t = tracker();
    let mut stream = Stream::new();
    let (socket, cookie) = stream.socket(START + 1);
    t.seed(&Inventory { ts_ns: START + 2, complete: true, unlisted_pids: vec![], sockets: vec![observed(cookie, TcpState::Established, 9, None)] });
    t.apply(&open(socket, cookie, START + 1, owner(9, "app"), false, DIAL, "127.0.0.1:9000"));
    assert_eq!(t.live_connections(), 1);
    assert_eq!(t.stats().seed_duplicates, 1);
}

#[test]
fn quiet_sites_age_out_and_memory_stays_bounded() {
    let limits = Limits { site_ttl: Duration::from_secs(60), max_sites: 3, max_pending: 16 };
    let mut t = Tracker::new(Thresholds::default(), limits, Filter::default(), START);
    let mut stream = Stream::new();
    for pid in 0..10u32 {
        let ts = START + u64::from(pid) * S;
        let (socket, cookie) = stream.socket(ts);
        t.apply(&open(socket, cookie, ts, owner(100 + pid, "short"), false, DIAL, "127.0.0.1:9000"));
        if pid != 0 {
            t.apply(&state(socket, cookie, ts + MS, TcpState::SynSent, TcpState::Close));
        }
    }
    t.expire(START + 20 * S);
    // Over max_sites: the quietest sites without live connections went; the live one stays.
    let snapshot = t.snapshot(START + 20 * S);
    assert_eq!(snapshot.sites.len(), 3);
    assert!(snapshot.sites.iter().any(|s| s.process.pid == 100 && s.facts.live == 1));
    assert!(snapshot.sites.iter().any(|s| s.process.pid == 109));
    t.expire(START + 200 * S);
    let snapshot = t.snapshot(START + 200 * S);
    assert_eq!(snapshot.sites.len(), 1);
    assert_eq!(snapshot.processes.len(), 1);
    assert_eq!(t.stats().sites_expired, 9);
    // A slot freed by expiry is reused.
    assert!(t.sites.len() <= 10);
}

#[test]
fn a_burst_is_quiet_by_the_idle_times_its_inventory_measured_not_by_the_time_since() {
    let judged = |idle_ms: u64| {
        let mut t = tracker();
        let mut stream = Stream::new();
        client(&mut t, &mut stream, 42, 30, 1, None);
        let sockets = (101..=130).map(|cookie| observed(cookie, TcpState::Established, 42, Some(idle_ms))).collect();
        t.observe(&Inventory { ts_ns: START + 4 * S, complete: true, unlisted_pids: vec![], sockets });
        // Judged 1.9 s after the inventory: busy connections then are not quiet now.
        let snapshot = t.snapshot(START + 5 * S + 900 * MS);
        let site = only_site(&snapshot);
        (site.verdict, site.facts.quiet_live, site.findings.first().map(|finding| finding.rule.to_string()))
    };
    assert_eq!(judged(100), (Verdict::Ok, 0, None));
    assert_eq!(judged(3000), (Verdict::Suspect, 30, Some("burst_held_open".to_string())));
}

#[test]
fn past_max_sites_the_quietest_closed_call_sites_are_evicted_and_counted_while_live_ones_stay() {
    let limits = Limits { max_sites: 10, ..Limits::default() };
    let mut t = Tracker::new(Thresholds::default(), limits, Filter::default(), START);
    let mut stream = Stream::new();
    // 30 call sites of one connection each, opened and closed; one more that leaks.
    for i in 0..30u64 {
        let ts = START + i * MS;
        let (socket, cookie) = stream.socket(ts);
        let stack = [0x401000, 0x500000 + i * 0x10];
        t.apply(&open(socket, cookie, ts, owner(7, "sprayer"), false, &stack, "127.0.0.1:9000"));
        t.apply(&state(socket, cookie, ts + 10, TcpState::SynSent, TcpState::Established));
        t.apply(&state(socket, cookie, ts + 20, TcpState::Established, TcpState::Close));
    }
    client(&mut t, &mut stream, 42, 20, 4, None);
    t.expire(START + 4 * S);
    let snapshot = t.snapshot(START + 4 * S);
    assert_eq!(snapshot.sites.len(), 10);
    assert_eq!((t.stats().sites_evicted, t.stats().sites_expired), (21, 21));
    let leak = snapshot.sites.iter().find(|site| site.comm == "client").expect("the live call site is kept");
    assert_eq!(leak.verdict, Verdict::Leak);
}

#[test]
fn two_python_functions_dialing_through_one_c_path_are_two_call_sites() {
    let mut t = tracker();
    let mut stream = Stream::new();
    let mut emit = |t: &mut Tracker, frames: &[(u64, u64)]| {
        let (socket, cookie) = stream.socket(START);
        let mut event = open(socket, cookie, START, owner(1, "python3"), false, DIAL, "127.0.0.1:5432");
        let EventBody::Connect(connect) = &mut event.body else { unreachable!() };
        connect.python = frames.iter().map(|&(code, instr)| crate::event::PythonFrameRef { code, instr }).collect();
        t.apply(&event);
    };
    // handle_job twice at one line, report_job once, and handle_job at another line.
    emit(&mut t, &[(0x7f00_1000, 0x7f00_10c4), (0x7f00_9000, 0x7f00_9030)]);
    emit(&mut t, &[(0x7f00_1000, 0x7f00_10c4), (0x7f00_9000, 0x7f00_9030)]);
    emit(&mut t, &[(0x7f00_2000, 0x7f00_20c4), (0x7f00_9000, 0x7f00_9060)]);
    emit(&mut t, &[(0x7f00_1000, 0x7f00_1100), (0x7f00_9000, 0x7f00_9030)]);
    let snapshot = t.snapshot(START + S);
    assert_eq!(snapshot.sites.len(), 3, "one native path, three Python call sites");
    assert_eq!(snapshot.sites[0].facts.live, 2);
}
