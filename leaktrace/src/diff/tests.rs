//! The diff's matching on hand-made reports, its outputs against golden files under
//! `diff/golden/` (`UPDATE_GOLDEN=1` rewrites them), and the three input kinds read from real
//! files, malformed ones included.
use std::{io::Write, time::Duration};

use super::{
    input::{Input, InputKind, InputSpec},
    *,
};
use crate::{
    event::{ConnOpen, Event, EventBody, Owner, SocketId, StateChange},
    recording::{Mark, RECORDING_VERSION, write_line},
    report::{CallSite, REPORT_VERSION, Report, testing},
    symbolize::Frame,
    tcp::TcpState,
    tracker::{Filter, Thresholds, TrackerStats},
};

fn frame(address: u64, function: &str, line: u32) -> Frame {
    Frame {
        runtime: None,
        address,
        function: Some(function.to_string()),
        file: Some("main.go".into()),
        line: Some(line),
        module: Some("/srv/app".into()),
        inlined: false,
        recovered: false,
        spawned_by: None,
    }
}

/// A call site of `comm` (pid `pid`) dialing from a function at a line, its stack at `base`.
fn site(pid: u32, comm: &str, (function, line): (&str, u32), base: u64, live: u64, opened: u64, verdict: Verdict) -> CallSite {
    let mut site = testing::call_site(pid, comm, vec![frame(base + 0x10, function, line), frame(base + 0x90, "main.main", 20)], live, opened, verdict);
    site.process_start_ns = 0;
    site
}

fn input(source: &str, duration_s: f64, call_sites: Vec<CallSite>) -> Input {
    let report = Report {
        version: REPORT_VERSION,
        duration_s,
        events: None,
        tracker: TrackerStats::default(),
        thresholds: Thresholds::default(),
        call_sites,
        processes: Vec::new(),
    };
    Input { spec: InputSpec::parse(source).unwrap(), kind: InputKind::Report, report }
}

/// Before a fix: a leaking dial, a pool, a server, a cache client that will be gone.
fn before() -> Input {
    input(
        "before.json",
        60.0,
        vec![
            site(100, "orders", ("main.dialPayments", 42), 0x40_0000, 40, 40, Verdict::Leak),
            site(100, "orders", ("main.dialPool", 77), 0x41_0000, 5, 5, Verdict::Ok),
            site(300, "server", ("main.serve", 12), 0x50_0000, 3, 90, Verdict::Churn),
            site(100, "orders", ("main.dialCache", 30), 0x42_0000, 2, 2, Verdict::Ok),
        ],
    )
}

/// After it, in another run (other pids, addresses, lines): the dial still leaks, two
/// processes of one program share a function, a new call site leaks, the cache is gone.
fn after() -> Input {
    input(
        "after.json",
        90.0,
        vec![
            site(2100, "orders", ("main.dialPayments", 45), 0x60_0000, 120, 125, Verdict::Leak),
            site(2100, "orders", ("main.dialPool", 80), 0x61_0000, 5, 9, Verdict::Ok),
            site(2300, "server", ("main.serve", 12), 0x70_0000, 1, 400, Verdict::Churn),
            site(2301, "server", ("main.serve", 14), 0x70_0000, 1, 80, Verdict::Suspect),
            site(2100, "orders", ("main.dialAudit", 50), 0x62_0000, 15, 15, Verdict::Leak),
        ],
    )
}

fn find<'a>(diff: &'a Diff, call_site: &str) -> &'a SiteDiff {
    diff.call_sites
        .iter()
        .find(|site| site.call_site.starts_with(call_site))
        .unwrap_or_else(|| panic!("no {call_site} in {:#?}", diff.call_sites))
}

#[test]
fn portable_matching_follows_functions_across_a_restart() {
    let diff = Diff::new(&before(), &after(), Matching::Portable, true);
    let payments = find(&diff, "main.dialPayments");
    assert_eq!((payments.change, payments.live_change, payments.leaking), (Change::Grew, 80, true));
    assert_eq!(payments.before.as_ref().unwrap().pids, [100]);
    assert_eq!(payments.after.as_ref().unwrap().pids, [2100]);
    assert_eq!(payments.call_site, "main.dialPayments main.go:45", "named as AFTER shows it");
    // Across runs the counters start again: nothing to say about what happened in between.
    assert_eq!((payments.opened_between, payments.closed_between), (None, None));

    let audit = find(&diff, "main.dialAudit");
    assert_eq!((audit.change, audit.live_change, audit.leaking, audit.before.is_none()), (Change::New, 15, true, true));
    let cache = find(&diff, "main.dialCache");
    assert_eq!((cache.change, cache.live_change, cache.verdict, cache.leaking), (Change::Gone, -2, None, false));
    let pool = find(&diff, "main.dialPool");
    assert_eq!((pool.change, pool.leaking), (Change::Unchanged, false));
    assert_eq!(diff.summary, ChangeCounts { new: 1, grew: 1, shrank: 1, gone: 1, unchanged: 1, leaking: 2 });
    assert!(diff.leaking());
}

#[test]
fn call_sites_sharing_one_portable_identity_are_summed() {
    let diff = Diff::new(&before(), &after(), Matching::Portable, false);
    let serve = find(&diff, "main.serve");
    let after = serve.after.as_ref().unwrap();
    assert_eq!((after.live, after.opened, after.call_sites, after.pids.clone()), (2, 480, 2, vec![2300, 2301]));
    assert_eq!(after.verdict, Verdict::Suspect, "the most severe of the summed verdicts");
    assert_eq!((serve.change, serve.live_change), (Change::Shrank, -1));
}

#[test]
fn sorted_by_growth_and_unchanged_hidden_unless_asked() {
    let diff = Diff::new(&before(), &after(), Matching::Portable, false);
    let order: Vec<(Change, i64)> = diff.call_sites.iter().map(|site| (site.change, site.live_change)).collect();
    assert_eq!(order, [(Change::Grew, 80), (Change::New, 15), (Change::Shrank, -1), (Change::Gone, -2)]);
    assert_eq!(diff.summary.unchanged, 1, "counted though not listed");
    assert_eq!(Diff::new(&before(), &after(), Matching::Portable, true).call_sites.len(), 5);
}

#[test]
fn exact_matching_tells_runs_apart_and_counts_what_happened_in_between() {
    // Across runs, exact matching finds nothing in common.
    let diff = Diff::new(&before(), &after(), Matching::Exact, false);
    assert_eq!((diff.summary.new, diff.summary.gone, diff.summary.grew), (5, 4, 0));

    // Two points of one run: the same pid and addresses, counters that continue.
    let later = input(
        "run.jsonl@90s",
        90.0,
        vec![
            site(100, "orders", ("main.dialPayments", 42), 0x40_0000, 70, 75, Verdict::Leak),
            site(100, "orders", ("main.dialPool", 77), 0x41_0000, 5, 5, Verdict::Ok),
            site(300, "server", ("main.serve", 12), 0x50_0000, 3, 160, Verdict::Churn),
            // Same function, other addresses: another call site to exact matching.
            site(100, "orders", ("main.dialPayments", 42), 0x43_0000, 4, 4, Verdict::Suspect),
        ],
    );
    let diff = Diff::new(&before(), &later, Matching::Exact, true);
    assert_eq!(diff.matching, Matching::Exact);
    let grown = diff.call_sites.first().unwrap();
    assert_eq!((grown.change, grown.live_change, grown.opened_between, grown.closed_between), (Change::Grew, 30, Some(35), Some(5)));
    let serve = find(&diff, "main.serve");
    assert_eq!((serve.change, serve.opened_between, serve.closed_between), (Change::Unchanged, Some(70), Some(70)));
    let new = diff.call_sites.iter().find(|site| site.change == Change::New).unwrap();
    assert_eq!((new.opened_between, new.leaking), (Some(4), false), "suspect, not leak: not counted as leaking");
    assert_eq!(diff.summary.leaking, 1);
}

#[test]
fn a_leak_that_stopped_growing_is_not_leaking() {
    let mut same = before();
    same.spec = InputSpec::parse("after.json").unwrap();
    let diff = Diff::new(&before(), &same, Matching::Portable, true);
    assert!(diff.call_sites.iter().all(|site| site.change == Change::Unchanged));
    assert!(!diff.leaking(), "a leak judged again with no more live connections: exit 0");
}

#[test]
fn stacks_without_symbols_stay_apart_under_portable_matching() {
    let unsymbolized = |base: u64| {
        let mut site = site(100, "orders", ("x", 1), base, 3, 3, Verdict::Ok);
        for frame in &mut site.frames {
            (frame.function, frame.file, frame.line, frame.module) = (None, None, None, None);
        }
        site
    };
    let one = identity_of(&unsymbolized(0x40_0000), false);
    assert_ne!(one, identity_of(&unsymbolized(0x41_0000), false));
    assert_eq!(one, identity_of(&unsymbolized(0x40_0000), false));
    // Frames only a symbolized report has (inlined, recovered) do not change an exact identity.
    let plain = site(100, "orders", ("main.dial", 1), 0x40_0000, 1, 1, Verdict::Ok);
    let mut symbolized = plain.clone();
    let mut inlined = frame(0x40_0010, "net.Dial", 9);
    inlined.inlined = true;
    symbolized.frames.insert(0, inlined);
    assert_eq!(identity_of(&plain, true), identity_of(&symbolized, true));
}

fn golden(name: &str, actual: &str) {
    testing::golden("diff", name, actual);
}

#[test]
fn table_reads_as_expected() {
    let diff = Diff::new(&before(), &after(), Matching::Portable, false);
    golden("diff.txt", &render::render_table(&diff));
    let all = render::render_table(&Diff::new(&before(), &after(), Matching::Portable, true));
    assert!(all.contains("UNCHANGED") && !all.contains("not shown"), "{all}");
}

#[test]
fn json_matches_the_contract() {
    let diff = Diff::new(&before(), &after(), Matching::Portable, false);
    let text = render::render_json(&diff).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["matching"], "portable");
    assert_eq!((json["before"]["kind"].as_str(), json["after"]["live"].as_u64()), (Some("report"), Some(142)));
    assert_eq!(json["summary"]["leaking"], 2);
    for site in json["call_sites"].as_array().unwrap() {
        assert!(["new", "grew", "shrank", "gone", "unchanged"].contains(&site["change"].as_str().unwrap()), "{site}");
        assert!(site["live_change"].is_i64() && site["comm"].is_string() && site["call_site"].is_string());
        assert!(site["leaking"].is_boolean() && site["frames"].is_array());
        for side in ["before", "after"] {
            assert!(site[side].is_null() || site[side]["live"].is_u64(), "{side} in {site}");
        }
    }
    golden("diff.json", &text);
}

// Input kinds, read from files as the command reads them.

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-diff-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::File::create(&path).unwrap().write_all(content).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(text: &str) -> Result<Input, String> {
    let spec = InputSpec::parse(text).map_err(|err| err.to_string())?;
    input::read(&spec, &Thresholds::default(), &Filter::default()).map_err(|err| err.to_string())
}

const S: u64 = 1_000_000_000;
const START: u64 = 1000 * S;

fn open_event(sk: u64, ts_ns: u64) -> Event {
    let open = ConnOpen {
        owner: Owner { pid: 42, tid: 42, process_start_ns: S, cgroup_id: 1, comm: "leaker".into() },
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:9000".parse().unwrap(),
        state: TcpState::SynSent,
        stack: vec![0x40_1000, 0x40_2000],
        stack_error: None,
        goroutine: None,
        python: vec![],
        python_status: None,
    };
    Event { ts_ns, cpu: 0, socket: SocketId { sk, birth_ns: ts_ns }, cookie: sk, body: EventBody::Connect(open) }
}

fn established(sk: u64, ts_ns: u64) -> Event {
    let change = StateChange {
        old_state: TcpState::SynSent,
        new_state: TcpState::Established,
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:9000".parse().unwrap(),
    };
    Event { ts_ns, cpu: 0, socket: SocketId { sk, birth_ns: ts_ns }, cookie: sk, body: EventBody::State(change) }
}

/// 10 s of a program opening 5 connections a second and closing none.
fn recording() -> Vec<u8> {
    let mut out = Vec::new();
    write_line(&mut out, &Mark::Start { ts_ns: START, version: RECORDING_VERSION }).unwrap();
    for i in 0..50 {
        let ts = START + i * S / 5 + 1;
        write_line(&mut out, &open_event(0x1000 + i, ts)).unwrap();
        write_line(&mut out, &established(0x1000 + i, ts + 1000)).unwrap();
    }
    write_line(&mut out, &Mark::End { ts_ns: START + 10 * S }).unwrap();
    out
}

fn report_json(duration_s: f64, live: u64, compact: bool) -> String {
    let report = input(
        "x",
        duration_s,
        vec![site(7, "leaker", ("main.dial", 3), 0x40_0000, live, live, if live > 10 { Verdict::Leak } else { Verdict::Ok })],
    )
    .report;
    if compact { serde_json::to_string(&report).unwrap() } else { serde_json::to_string_pretty(&report).unwrap() }
}

#[test]
fn each_input_kind_is_told_by_its_content_not_its_name() {
    let dir = TempDir::new("kinds");
    let pretty = dir.file("report.jsonl", report_json(5.0, 3, false).as_bytes());
    let lines = format!("{}\n{}\n{}\n", report_json(1.0, 1, true), report_json(2.0, 2, true), report_json(3.0, 30, true));
    let stream = dir.file("reports.json", lines.as_bytes());
    let recorded = dir.file("events.txt", &recording());

    let one = read(&pretty).unwrap();
    assert_eq!((one.kind, one.report.call_sites[0].live), (InputKind::Report, 3));
    let last = read(&stream).unwrap();
    assert_eq!((last.kind, last.report.duration_s), (InputKind::Reports, 3.0), "the last report of a stream");
    let nearest = read(&format!("{stream}@1.8s")).unwrap();
    assert_eq!(nearest.report.duration_s, 2.0, "the report nearest the time");
    let replayed = read(&recorded).unwrap();
    assert_eq!((replayed.kind, replayed.report.duration_s, replayed.report.call_sites[0].live), (InputKind::Recording, 10.0, 50));
}

#[test]
fn a_recording_at_a_time_is_the_report_as_it_stood_then() {
    let dir = TempDir::new("at");
    let recorded = dir.file("rec.jsonl", &recording());
    let at_4 = read(&format!("{recorded}@4s")).unwrap();
    assert_eq!((at_4.report.duration_s, at_4.report.call_sites[0].opened), (4.0, 20));
    let at_start = read(&format!("{recorded}@0")).unwrap();
    assert!(at_start.report.call_sites.is_empty());
    let at_end = read(&format!("{recorded}@10")).unwrap();
    assert_eq!(at_end.report.call_sites[0].opened, 50);

    // Two points of one recording: matched exactly, grown, judged a leak.
    let matching = resolve(Matching::Auto, &at_4, &at_end);
    assert_eq!(matching, Matching::Exact);
    // A recording against a report: only addresses can pair them, so exactly too.
    assert_eq!(resolve(Matching::Auto, &at_4, &before()), Matching::Exact);
    assert_eq!(resolve(Matching::Auto, &before(), &after()), Matching::Portable);
    let other_recording = Input { spec: InputSpec::parse(&dir.file("other.jsonl", &recording())).unwrap(), ..at_end.clone() };
    assert_eq!(resolve(Matching::Auto, &at_4, &other_recording), Matching::Portable, "two runs' recordings");
    let diff = Diff::new(&at_4, &at_end, matching, false);
    let site = &diff.call_sites[0];
    assert_eq!((site.change, site.live_change, site.opened_between), (Change::Grew, 30, Some(30)));
    assert_eq!((site.verdict, diff.leaking()), (Some(Verdict::Leak), true));
}

#[test]
fn a_stream_still_being_written_gives_its_last_complete_report() {
    let dir = TempDir::new("cut");
    let cut = format!("{}\n{}\n{}", report_json(1.0, 1, true), report_json(2.0, 2, true), &report_json(3.0, 3, true)[..40]);
    let stream = dir.file("live.jsonl", cut.as_bytes());
    assert_eq!(read(&stream).unwrap().report.duration_s, 2.0);
}

#[test]
fn bad_input_is_named_with_its_file_and_line() {
    let dir = TempDir::new("bad");
    let missing = dir.0.join("missing.json");
    let missing = missing.to_str().unwrap();
    let err = read(missing).unwrap_err();
    assert!(err.starts_with(&format!("{missing}: cannot read it: No such file")), "{err}");

    let broken = dir.file("broken.jsonl", format!("{}\nnot json\n{}\n", report_json(1.0, 1, true), report_json(2.0, 2, true)).as_bytes());
    let err = read(&broken).unwrap_err();
    assert!(err.starts_with(&format!("{broken}: line 2: expected ident")), "{err}");

    let mut bad_event = recording();
    bad_event.extend_from_slice(b"{\"type\":\"connect\",\"ts_ns\":1}\n");
    let bad_recording = dir.file("bad-rec.jsonl", &bad_event);
    let err = read(&bad_recording).unwrap_err();
    assert!(err.starts_with(&format!("{bad_recording}: line 103: missing field")), "{err}");

    let err = read(&dir.file("empty.json", b"\n\n")).unwrap_err();
    assert!(err.ends_with("empty.json: the file is empty"), "{err}");

    let mut idle = Vec::new();
    write_line(&mut idle, &Mark::Start { ts_ns: START, version: RECORDING_VERSION }).unwrap();
    write_line(&mut idle, &Mark::End { ts_ns: START + S }).unwrap();
    let err = read(&dir.file("idle.jsonl", &idle)).unwrap_err();
    assert!(err.ends_with("idle.jsonl: the recording holds no events"), "{err}");

    let mut future = Vec::new();
    write_line(&mut future, &Mark::Start { ts_ns: START, version: RECORDING_VERSION + 1 }).unwrap();
    future.extend_from_slice(&recording());
    let err = read(&dir.file("future.jsonl", &future)).unwrap_err();
    assert!(err.ends_with("future.jsonl: recording version 2 is not one this leaktrace reads (it reads version 1)"), "{err}");

    let recorded = dir.file("rec.jsonl", &recording());
    let err = read(&format!("{recorded}@11s")).unwrap_err();
    assert_eq!(err, format!("{recorded}: 11s is past the end of the recording (it covers 10s)"));
    let stream = dir.file("stream.jsonl", format!("{}\n{}\n", report_json(1.0, 1, true), report_json(2.0, 2, true)).as_bytes());
    let err = read(&format!("{stream}@3s")).unwrap_err();
    assert_eq!(err, format!("{stream}: 3s is past the end of the reports (the last is at 2s)"));
    let compact = dir.file("compact.json", format!("{}\n", report_json(2.0, 2, true)).as_bytes());
    assert_eq!(read(&compact).unwrap().kind, InputKind::Report, "one report on one line (the agent's, saved)");
    let err = read(&format!("{compact}@1s")).unwrap_err();
    assert!(err.ends_with("a time applies to a recording or a --format jsonl file, not to a single report"), "{err}");
    let cut = dir.file("cut.jsonl", &report_json(2.0, 2, true).as_bytes()[..30]);
    assert!(read(&cut).unwrap_err().starts_with(&format!("{cut}: line 1: EOF while parsing")), "nothing complete to fall back on");
    let pretty = dir.file("one.json", report_json(5.0, 3, false).as_bytes());
    let err = read(&format!("{pretty}@3s")).unwrap_err();
    assert!(err.ends_with("a time applies to a recording or a --format jsonl file, not to a single report"), "{err}");
    let err = read(&format!("{pretty}@soon")).unwrap_err();
    assert!(err.ends_with("@soon: not a time after @ (seconds, e.g. 30 or 30s)"), "{err}");

    let newer = dir.file("v2.json", report_json(1.0, 1, false).replacen("\"version\": 1", "\"version\": 2", 1).as_bytes());
    let err = read(&newer).unwrap_err();
    assert_eq!(err, format!("{newer}: report version 2 is not one this leaktrace reads (it reads version 1)"));
    let shapeless = dir.file("shapeless.json", b"{\n  \"version\": 1,\n  \"call_sites\": 3\n}\n");
    let err = read(&shapeless).unwrap_err();
    assert!(err.starts_with(&format!("{shapeless}: not a leaktrace report: ")), "{err}");
    let stream = dir.file("v2.jsonl", format!("{}\n{}\n", report_json(1.0, 1, true), report_json(2.0, 2, true).replacen("\"version\":1", "\"version\":2", 1)).as_bytes());
    let err = read(&stream).unwrap_err();
    assert_eq!(err, format!("{stream}: line 2: report version 2 is not one this leaktrace reads (it reads version 1)"));
    let other = dir.file("other.json", b"[1, 2, 3]\n");
    assert!(read(&other).unwrap_err().ends_with("neither a leaktrace report (--format json or jsonl) nor a recording (--record, `leaktrace events`)"));
}

#[test]
fn times_take_seconds_with_or_without_a_unit() {
    assert_eq!(input::parse_seconds("30"), Some(Duration::from_secs(30)));
    assert_eq!(input::parse_seconds("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(input::parse_seconds("-1"), None);
    assert_eq!(input::parse_seconds("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(input::parse_seconds("5 parsecs"), None);
    // A file whose name has an @ is read as a whole where it exists.
    let dir = TempDir::new("at-name");
    let named = dir.file("me@host.json", b"{}");
    assert_eq!(InputSpec::parse(&named).unwrap().at, None);
}

#[test]
fn the_command_line_takes_two_inputs_and_its_options() {
    use crate::cli::{Cli, Command, DiffFormat};
    use clap::Parser;
    let parse = |args: &[&str]| match Cli::try_parse_from([&["leaktrace", "diff"], args].concat()).map(|cli| cli.command) {
        Ok(Some(Command::Diff(args))) => Ok(args),
        Ok(_) => panic!("parsed as another command"),
        Err(err) => Err(err.to_string()),
    };
    let args = parse(&["rec.jsonl@10s", "rec.jsonl@60s"]).unwrap();
    assert_eq!((args.before.as_str(), args.after.as_str()), ("rec.jsonl@10s", "rec.jsonl@60s"));
    assert_eq!((args.matching, args.format, args.all), (Matching::Auto, DiffFormat::Table, false));
    let args = parse(&["a.json", "b.json", "--match", "portable", "--format", "json", "--all", "--comm", "orders"]).unwrap();
    assert_eq!((args.matching, args.format, args.all, args.judge.comms), (Matching::Portable, DiffFormat::Json, true, vec!["orders".into()]));
    assert!(parse(&["a.json"]).unwrap_err().contains("<AFTER>"));
    assert!(parse(&["a.json", "b.json", "--format", "jsonl"]).unwrap_err().contains("possible values: table, json"));
}
