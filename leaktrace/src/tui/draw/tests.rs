//! Frames drawn from a fixed report into ratatui's TestBackend, read back cell by cell: the
//! table, a call site's detail, the keys, and a terminal too small.
use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

use crate::{
    report::{AncestryNote, AncestryStatus},
    symbolize::Frame,
    tui::{
        state::{Key, State},
        tests::fixture,
    },
};

fn frame(function: &str, file: &str, line: u32, module: &str, address: u64, spawned_by: Option<u32>) -> Frame {
    Frame {
        runtime: None,
        address,
        function: Some(function.into()),
        file: Some(file.into()),
        line: Some(line),
        module: Some(module.into()),
        inlined: false,
        recovered: false,
        spawned_by,
    }
}

/// The golden report, its leaking client given a symbolized Go stack joined with its spawner's.
fn state() -> State {
    let mut report = fixture();
    let leak = &mut report.call_sites[0];
    leak.frames = vec![
        frame("net.(*Dialer).DialContext", "/usr/lib/go/src/net/dial.go", 428, "/usr/bin/grpcleak", 0x4a1000, None),
        frame("google.golang.org/grpc.(*addrConn).resetTransport", "/go/grpc/clientconn.go", 1142, "/usr/bin/grpcleak", 0x4a2000, None),
        frame("main.dialGRPC", "/src/main.go", 227, "/usr/bin/grpcleak", 0x4a3000, Some(1)),
    ];
    leak.telling_frame = Some(2);
    leak.exe = Some("/usr/bin/grpcleak".into());
    leak.go_ancestry = Some(AncestryNote { status: AncestryStatus::Joined, detail: "joined through 1 hop".into() });
    let mut state = State::default();
    state.update(report);
    state
}

fn render(state: &mut State, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| super::draw(frame, state, None)).unwrap();
    terminal.backend().buffer().clone()
}

/// The screen's lines, trailing blanks cut.
fn lines(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (0..area.height)
        .map(|y| (0..area.width).map(|x| buffer[(x, y)].symbol()).collect::<String>().trim_end().to_string())
        .collect()
}

#[track_caller]
fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
    lines.iter().find(|line| line.contains(text)).unwrap_or_else(|| panic!("no line shows {text:?}:\n{}", lines.join("\n")))
}

#[test]
fn the_table_shows_the_plain_tables_cells_counters_and_the_sorted_column() {
    let mut state = state();
    let buffer = render(&mut state, 200, 20);
    let screen = lines(&buffer);
    assert!(screen[0].starts_with("leaktrace 15.0s · 4 processes · 4 call sites · 103 live · 1206 events, 0 lost"), "{}", screen[0]);
    line_with(&screen, "kernel: 1206 produced, 1206 received, 0 lost");
    line_with(&screen, "tracker: 704 events, 202 opened, 100 closed, 0 failed, 1 seeded");
    let heading = line_with(&screen, "CALL SITE");
    for column in ["PID", "COMM", "CONTAINER", "DIR", "PEER", "LIVE▼", "GROWTH/s", "OPENED", "CLOSED", "CLOSE_WAIT", "OLDEST", "IDLE", "TREND", "VERDICT"] {
        assert!(heading.contains(column), "{column} missing from {heading}");
    }
    let leak = line_with(&screen, "grpcleak");
    for cell in ["100", "orders-7d9f8b6c4-x2…", "connect", "main.dialGRPC main.go:227", "127.0.0.1:9000", "+0.0", "15.0s", "█", "LEAK"] {
        assert!(leak.contains(cell), "{cell} missing from {leak}");
    }
    line_with(&screen, "(born before start)");
    assert!(line_with(&screen, "fixed").contains("CHURN"));
    // The selected row (the first) is drawn reversed.
    let row = screen.iter().position(|line| line.contains("grpcleak")).unwrap() as u16;
    assert!(buffer[(3, row)].modifier.contains(ratatui::style::Modifier::REVERSED));
    line_with(&screen, "Enter open");
}

#[test]
fn the_detail_shows_the_whole_stack_the_reasons_peers_and_lifetimes() {
    let mut state = state();
    state.key(Key::Enter);
    let buffer = render(&mut state, 160, 30);
    let screen = lines(&buffer);
    line_with(&screen, "LEAK · pid 100 grpcleak (/usr/bin/grpcleak) · connect · 100 live, 100 opened, 0 closed, +0.0/s");
    line_with(&screen, "container: aaaa");
    line_with(&screen, "why: 100 of 100 connections opened here are still open (0 closed, 0 failed), opened over 5.0s");
    line_with(&screen, "goroutine ancestry (joined): joined through 1 hop");
    line_with(&screen, "stack (3 frames)");
    line_with(&screen, "0x4a1000 net.(*Dialer).DialContext dial.go:428 (/usr/bin/grpcleak)");
    line_with(&screen, "-- the goroutine above was started here, at a go statement (hop 1) --");
    let telling = line_with(&screen, "=> 0x4a3000 main.dialGRPC main.go:227 (/usr/bin/grpcleak)");
    // The telling frame is highlighted.
    let row = screen.iter().position(|line| line.as_str() == telling).unwrap() as u16;
    let column = telling.find("=>").unwrap() as u16;
    assert_eq!(buffer[(column, row)].fg, ratatui::style::Color::Yellow);
    line_with(&screen, "peers (to)");
    line_with(&screen, "127.0.0.1:9000  100 live / 100 opened");
    line_with(&screen, "none closed yet");
    line_with(&screen, "live over time (now 100, max 100)");
    line_with(&screen, "Esc/Backspace back");
}

#[test]
fn the_detail_of_a_churning_call_site_charts_its_lifetimes() {
    let mut state = state();
    state.key(Key::End);
    state.key(Key::Enter);
    let screen = lines(&render(&mut state, 160, 30));
    line_with(&screen, "CHURN · pid 200 fixed");
    line_with(&screen, "why: 20.2 connections/s, median lifetime 3ms");
    line_with(&screen, "lifetimes of 100 closed: p50 3ms, p90 3ms, p99 3ms, max 3ms");
    // The histogram: every lifetime in the bucket up to 10ms, the others empty.
    let labels = line_with(&screen, "100ms");
    for bucket in ["1ms", "10ms", "100ms", "1s", "10s", "1m", "10m", "1h", "1d"] {
        assert!(labels.contains(bucket), "{bucket} missing from {labels}");
    }
    let row = screen.iter().position(|line| line.as_str() == labels).unwrap();
    let values = &screen[row - 1];
    let column = |line: &str, text: &str| line[..line.find(text).unwrap()].chars().count();
    let (label_at, value_at) = (column(labels, "10ms"), column(values, "100"));
    assert!(value_at.abs_diff(label_at) <= 2, "the count stands on its bucket:\n{}", screen[row - 6..=row].join("\n"));
}

#[test]
fn question_mark_shows_the_keys() {
    let mut state = state();
    state.key(Key::Char('?'));
    let screen = lines(&render(&mut state, 120, 30));
    line_with(&screen, "Enter            open the selected call site");
    line_with(&screen, "s  S             sort by the next or the previous column");
    line_with(&screen, "l                sort by LIVE");
    line_with(&screen, "q  Ctrl-C        quit and print the final report");
}

#[test]
fn a_terminal_too_small_gets_one_line() {
    let mut state = state();
    for (width, height) in [(30, 5), (59, 40), (200, 3), (1, 1)] {
        let screen = lines(&render(&mut state, width, height));
        assert!(screen[0].starts_with(&"terminal too small"[..usize::from(width).min(18)]), "{width}x{height}: {screen:?}");
    }
    // Just big enough: the table, no message.
    let screen = lines(&render(&mut state, super::MIN_WIDTH, super::MIN_HEIGHT));
    assert!(screen[0].starts_with("leaktrace"));
}

#[test]
fn a_narrow_terminal_leaves_columns_out_rather_than_cutting_figures() {
    let mut state = state();
    let screen = lines(&render(&mut state, 100, 14));
    let heading = line_with(&screen, "CALL SITE");
    assert!(!heading.contains("TREND") && !heading.contains("CONTAINER"), "{heading}");
    let leak = line_with(&screen, "grpcleak");
    assert!(leak.contains("main.dialGRPC main.go:227") && leak.contains(" 100 ") && leak.contains("15.0s"), "{leak}");
    let screen = lines(&render(&mut state, 80, 24));
    let heading = line_with(&screen, "CALL SITE");
    assert!(heading.contains("LIVE▼") && heading.contains("GROWTH/s") && heading.contains("VERDICT"), "{heading}");
    let leak = line_with(&screen, "main.dialGRPC");
    assert!(leak.contains(" 100 ") && leak.contains("+0.0") && leak.ends_with("LEAK"), "{leak}");
}

#[test]
fn a_long_stack_opens_at_its_telling_frame_and_scrolls() {
    let mut state = state();
    let mut report = state.report.clone().unwrap();
    let leak = &mut report.call_sites[0];
    leak.frames = (0..40u64).map(|i| frame(&format!("runtime.frame{i}"), "/src/x.go", 1, "/usr/bin/grpcleak", 0x1000 + i, None)).collect();
    leak.frames[35].function = Some("main.dialBackend".into());
    leak.telling_frame = Some(35);
    state.update(report);
    state.key(Key::Enter);
    let screen = lines(&render(&mut state, 120, 24));
    line_with(&screen, "=> 0x1023 main.dialBackend x.go:1");
    assert!(!screen.iter().any(|line| line.contains("runtime.frame0 ")), "scrolled to the telling frame");
    state.key(Key::Home);
    let screen = lines(&render(&mut state, 120, 24));
    line_with(&screen, "runtime.frame0 ");
    assert!(!screen.iter().any(|line| line.contains("main.dialBackend")));
    state.key(Key::PageDown);
    state.key(Key::PageDown);
    state.key(Key::PageDown);
    let screen = lines(&render(&mut state, 120, 24));
    line_with(&screen, "runtime.frame39 ");
}

#[test]
fn many_call_sites_scroll_with_the_selection() {
    let mut state = state();
    let mut report = state.report.clone().unwrap();
    let template = report.call_sites[3].clone();
    report.call_sites = (0..50u32)
        .map(|i| {
            let mut site = template.clone();
            site.pid = 1000 + i;
            site.live = u64::from(50 - i);
            site
        })
        .collect();
    state.update(report);
    // 20 lines: 3 of header, the table's heading, 15 rows, the keys.
    let screen = lines(&render(&mut state, 200, 20));
    line_with(&screen, "   1000 fixed");
    line_with(&screen, "   1014 fixed");
    assert!(!screen.iter().any(|line| line.contains("1015 fixed")));
    state.key(Key::End);
    let screen = lines(&render(&mut state, 200, 20));
    line_with(&screen, "   1049 fixed");
    line_with(&screen, "   1035 fixed");
    assert!(!screen.iter().any(|line| line.contains("1034 fixed")));
    state.key(Key::PageUp);
    let screen = lines(&render(&mut state, 200, 20));
    line_with(&screen, "   1034 fixed");
    assert!(!screen.iter().any(|line| line.contains("1049 fixed")), "{}", screen.join("\n"));
}
