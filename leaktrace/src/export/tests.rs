//! Golden tests of both profiles from one fixed report (the report's own scenario, its stacks
//! given the symbols a live view would have): the pprof profile decoded back and written out as
//! text (what pprof reads, field by field), the flame graph's stacks and its SVG; files under
//! `export/golden/` (`UPDATE_GOLDEN=1` rewrites them after an intended change).
use std::{
    fmt::Write as _,
    io::Read,
    time::{Duration, UNIX_EPOCH},
};

use prost::Message;

use super::{profile_proto as proto, *};
use crate::{
    report::{testing::golden, tests::scenario},
    symbolize::Frame,
    tracker::Verdict,
};

fn frame(address: u64, function: Option<&str>, file: Option<&str>, line: Option<u32>, module: Option<&str>) -> Frame {
    Frame {
        runtime: None,
        address,
        function: function.map(String::from),
        file: file.map(String::from),
        line,
        module: module.map(String::from),
        inlined: false,
        recovered: false,
        spawned_by: None,
    }
}

/// The report scenario's call sites with symbolized stacks: the leaking client's across a
/// goroutine hop, with an inlined call and a frame nothing could name, the server's with a frame in no mapping; plus a
/// suspect call site whose stack the kernel could not take.
fn fixture() -> Report {
    let mut report = scenario();
    let grpcleak = Some("/usr/bin/grpcleak");
    for site in &mut report.call_sites {
        match site.comm.as_str() {
            "grpcleak" => {
                site.exe = grpcleak.map(String::from);
                let mut inlined = frame(0x4a2000, Some("main.dialBackend"), Some("/src/grpcleak/main.go"), Some(40), grpcleak);
                inlined.inlined = true;
                // The dial on a goroutine of its own; from main.dialBackend on, its spawner's stack.
                let spawned = |mut frame: Frame| {
                    frame.spawned_by = Some(1);
                    frame
                };
                site.frames = vec![
                    frame(0x4a1000, Some("net.(*netFD).connect"), Some("/usr/lib/go-1.19/src/net/fd_unix.go"), Some(59), grpcleak),
                    frame(0x4a0800, Some("runtime.goexit"), Some("/usr/lib/go-1.19/src/runtime/asm_amd64.s"), Some(1594), grpcleak),
                    spawned(inlined),
                    spawned(frame(0x4a2000, Some("main.dialGRPC"), Some("/src/grpcleak/main.go"), Some(227), grpcleak)),
                    spawned(frame(0x401000, None, None, None, grpcleak)),
                ];
                site.telling_frame = Some(3);
            }
            "server" => {
                site.frames = vec![
                    frame(0x4c1000, Some("main.serve"), Some("/src/server/main.go"), Some(104), Some("/usr/bin/server")),
                    frame(0x7f0000001000, None, None, None, None),
                ];
                site.telling_frame = Some(0);
            }
            "fixed" => {
                site.frames = vec![frame(0x4b1000, Some("main.dialOnce"), Some("/src/fixed/main.go"), Some(12), Some("/usr/bin/fixed"))];
                site.telling_frame = Some(0);
            }
            _ => {}
        }
    }
    let mut stackless = report.call_sites.iter().find(|site| site.comm == "fixed").unwrap().clone();
    stackless.pid = 500;
    stackless.comm = "nostack".into();
    stackless.frames.clear();
    stackless.telling_frame = None;
    stackless.stack_error = Some(-14);
    (stackless.live, stackless.opened, stackless.closed) = (3, 3, 0);
    stackless.verdict = Verdict::Suspect;
    report.call_sites.push(stackless);
    report
}

const TAKEN_AT: Duration = Duration::from_secs(1_800_000_000);

fn decoded(report: &Report) -> proto::Profile {
    let gzipped = pprof::encode(report, UNIX_EPOCH + TAKEN_AT);
    assert_eq!(&gzipped[..2], [0x1f, 0x8b], "gzip, as pprof reads it");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut bytes).unwrap();
    proto::Profile::decode(&bytes[..]).unwrap()
}

/// The profile as text, every index resolved, in the profile's order.
fn describe(profile: &proto::Profile) -> String {
    let s = |index: i64| profile.string_table[index as usize].as_str();
    let value_type = |t: &proto::ValueType| format!("{}/{}", s(t.r#type), s(t.unit));
    let mut out = String::new();
    let types: Vec<String> = profile.sample_type.iter().map(value_type).collect();
    writeln!(out, "sample types: {}; default {}", types.join(", "), s(profile.default_sample_type)).unwrap();
    let period = profile.period_type.as_ref().map(value_type).unwrap_or_default();
    writeln!(out, "period: {} {period}; time_nanos {}; duration_nanos {}", profile.period, profile.time_nanos, profile.duration_nanos)
        .unwrap();
    for &comment in &profile.comment {
        writeln!(out, "comment: {}", s(comment)).unwrap();
    }
    for m in &profile.mapping {
        let has = [(m.has_functions, "functions"), (m.has_filenames, "filenames"), (m.has_line_numbers, "lines"), (m.has_inline_frames, "inline")];
        let has: Vec<&str> = has.iter().filter(|(yes, _)| *yes).map(|(_, what)| *what).collect();
        writeln!(out, "mapping {}: {} [{:#x}, {:#x}) has {}", m.id, s(m.filename), m.memory_start, m.memory_limit, has.join(" ")).unwrap();
    }
    for sample in &profile.sample {
        let values: Vec<String> = sample.value.iter().zip(&profile.sample_type).map(|(v, t)| format!("{}={v}", s(t.r#type))).collect();
        let labels: Vec<String> = sample
            .label
            .iter()
            .map(|label| if label.str != 0 { format!("{}={}", s(label.key), s(label.str)) } else { format!("{}=#{}", s(label.key), label.num) })
            .collect();
        writeln!(out, "sample {} {{{}}}", values.join(" "), labels.join(" ")).unwrap();
        for &id in &sample.location_id {
            let location = &profile.location[id as usize - 1];
            assert_eq!(location.id, id);
            let lines: Vec<String> = location
                .line
                .iter()
                .map(|line| {
                    let function = &profile.function[line.function_id as usize - 1];
                    format!("{} {}:{}", s(function.name), s(function.filename), line.line)
                })
                .collect();
            writeln!(out, "  location {id} {:#x} mapping {}: {}", location.address, location.mapping_id, lines.join(" | ")).unwrap();
        }
    }
    out
}

#[test]
fn pprof_profile_reads_as_pprof_would_read_it() {
    let profile = decoded(&fixture());
    assert_eq!(profile.string_table[0], "", "the format's rule");
    let text = describe(&profile);
    // Live connections are the default view; a call site with none is kept for `opened`.
    assert!(text.starts_with("sample types: live_connections/count, close_wait/count, opened/count; default live_connections\n"), "{text}");
    assert!(text.contains("sample live_connections=0 close_wait=0 opened=100 {pid=#200 comm=fixed direction=connect verdict=churn}"), "{text}");
    // The inlined call shares its caller's location, innermost first.
    assert!(text.contains("main.dialBackend /src/grpcleak/main.go:40 | main.dialGRPC /src/grpcleak/main.go:227"), "{text}");
    assert!(text.contains("(born before start) :0") && text.contains("(no stack: error -14) :0"), "{text}");
    assert!(text.contains("container=consumer pod=orders-7d9f8b6c4-x2kqp namespace=shop"), "{text}");
    assert!(text.contains("container=5e687ed3797e}"), "a container without a name is its short id: {text}");
    // Every referenced id exists: pprof refuses a profile that points nowhere.
    for location in &profile.location {
        assert!(location.mapping_id as usize <= profile.mapping.len());
        for line in &location.line {
            assert!(line.function_id >= 1 && line.function_id as usize <= profile.function.len());
        }
    }
    golden("export", "connections.pprof.txt", &text);
}

#[test]
fn a_call_site_with_nothing_to_count_adds_no_sample() {
    let mut report = fixture();
    for site in &mut report.call_sites {
        if site.comm == "fixed" {
            (site.live, site.close_wait, site.opened) = (0, 0, 0);
        }
    }
    let text = describe(&decoded(&report));
    assert!(!text.contains("comm=fixed"), "{text}");
    assert_eq!(text.matches("\nsample ").count(), 4, "{text}");
}

#[test]
fn flame_graph_draws_live_connections_with_leaks_in_red() {
    let report = fixture();
    let folded = flamegraph::folded(&report).join("\n") + "\n";
    // The churning call site has nothing live: no tower.
    assert!(!folded.contains("fixed"), "{folded}");
    let hop = "main.dialGRPC;main.dialBackend;(go statement: the goroutine above started here, hop 1);runtime.goexit;";
    assert!(folded.contains(hop), "{folded}");
    golden("export", "flamegraph.folded", &folded);
    let svg = String::from_utf8(flamegraph::render(&report).unwrap()).unwrap();
    let fill = |colour: inferno::flamegraph::color::Color| format!("fill=\"rgb({},{},{})\"", colour.r, colour.g, colour.b);
    let frame_of = |name: &str| {
        let start = svg.find(&format!("<title>{name} (")).unwrap_or_else(|| panic!("{name} not in the SVG"));
        svg[start..].split("</g>").next().unwrap().to_string()
    };
    // The frames the leaking call sites are named by are red, the suspect one orange, the rest not.
    for name in ["main.dialGRPC", "main.serve"] {
        assert!(frame_of(name).contains(&fill(flamegraph::LEAK_COLOUR)), "{}", frame_of(name));
    }
    assert!(frame_of("(no stack: error -14)").contains(&fill(flamegraph::SUSPECT_COLOUR)));
    for name in ["main.dialBackend", "(born before start)", "grpcleak (pid 100)"] {
        let frame = frame_of(name);
        assert!(!frame.contains(&fill(flamegraph::LEAK_COLOUR)) && !frame.contains(&fill(flamegraph::SUSPECT_COLOUR)), "{frame}");
    }
    assert!(svg.contains(flamegraph::TITLE));
    golden("export", "flamegraph.svg", &svg);
}

#[test]
fn a_suspect_named_by_a_frame_of_a_leaking_stack_does_not_colour_the_leak_orange() {
    let mut report = fixture();
    let leak = report.call_sites.iter().find(|site| site.comm == "grpcleak").unwrap().clone();
    let suspect = report.call_sites.iter_mut().find(|site| site.comm == "nostack").unwrap();
    suspect.frames = leak.frames[..2].to_vec();
    suspect.telling_frame = Some(0);
    let svg = String::from_utf8(flamegraph::render(&report).unwrap()).unwrap();
    let orange = format!("fill=\"rgb({},{},{})\"", flamegraph::SUSPECT_COLOUR.r, flamegraph::SUSPECT_COLOUR.g, flamegraph::SUSPECT_COLOUR.b);
    assert!(!svg.contains(&orange), "{svg}");
}

#[test]
fn a_flame_graph_of_nothing_live_says_so() {
    let mut report = fixture();
    report.call_sites.retain(|site| site.live == 0);
    let svg = String::from_utf8(flamegraph::render(&report).unwrap()).unwrap();
    assert!(svg.contains("(no live connections)"), "{svg}");
}

#[test]
fn files_are_checked_before_tracing_and_replaced_whole() {
    let dir = std::env::temp_dir().join(format!("leaktrace-export-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let missing = ExportArgs { pprof: Some(dir.join("no/such/dir/x.pb.gz")), flamegraph: None };
    let err = format!("{:#}", Exports::new(&missing).unwrap_err());
    assert!(err.starts_with(&format!("--pprof {}/no/such/dir/x.pb.gz: cannot write", dir.display())), "{err}");
    let a_directory = ExportArgs { pprof: None, flamegraph: Some(dir.clone()) };
    assert!(format!("{:#}", Exports::new(&a_directory).unwrap_err()).ends_with("is a directory; name a file"));

    let args = ExportArgs { pprof: Some(dir.join("live.pb.gz")), flamegraph: Some(dir.join("live.svg")) };
    let exports = Exports::new(&args).unwrap();
    assert!(!dir.join("live.pb.gz.tmp").exists(), "the check leaves nothing behind");
    exports.write(&fixture()).unwrap();
    let mut names: Vec<String> = fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["live.pb.gz", "live.svg"]);
    assert!(fs::read_to_string(dir.join("live.svg")).unwrap().contains("main.dialGRPC"));
    fs::remove_dir_all(&dir).unwrap();
}
