//! `--flamegraph FILE.svg`: live connections by the stack that opened them, as a flame graph
//! (inferno, Brendan Gregg's format, opened in a browser): a tower per process, each frame as
//! wide as the connections opened through it that are still open. The function a leaking call
//! site is named by is red, a suspect one's orange, everything else in neutral blues: one look
//! shows where the connections are and which of them leak.
use std::collections::HashSet;

use inferno::flamegraph::{
    self, Options, Palette,
    color::{BasicPalette, Color, PaletteMap},
};

use super::{frame_name, stackless_frame};
use crate::{
    report::{CallSite, Report},
    symbolize::Frame,
    tracker::Verdict,
};

/// The fill of the frame a `leak` call site is named by.
pub const LEAK_COLOUR: Color = Color { r: 215, g: 38, b: 38 };
/// The fill of the frame a `suspect` call site is named by.
pub const SUSPECT_COLOUR: Color = Color { r: 245, g: 150, b: 30 };

pub const TITLE: &str = "Live TCP connections by the stack that opened them";

/// Shown when nothing is live: a flame graph needs one stack to draw.
const NOTHING_LIVE: &str = "(no live connections)";

/// The SVG.
pub fn render(report: &Report) -> std::io::Result<Vec<u8>> {
    let lines = folded(report);
    let live: u64 = report.call_sites.iter().map(|site| site.live).sum();
    // Colours go by name (frames of one function are one box). A suspect's frame that a leaking
    // stack also passes through stays neutral: orange there would point at the leak's library.
    let drawn = |verdict: Verdict| report.call_sites.iter().filter(move |site| site.verdict == verdict && site.live > 0);
    let in_leaks: HashSet<String> = drawn(Verdict::Leak).flat_map(|site| site.frames.iter().map(graph_name)).collect();
    let mut palette = PaletteMap::default();
    for site in drawn(Verdict::Suspect) {
        let name = naming_frame(site);
        if !in_leaks.contains(&name) {
            palette.insert(name, SUSPECT_COLOUR);
        }
    }
    for site in drawn(Verdict::Leak) {
        palette.insert(naming_frame(site), LEAK_COLOUR);
    }
    let suspects = report.call_sites.iter().filter(|site| site.verdict == Verdict::Suspect).count();
    let mut options = Options::default();
    options.title = TITLE.to_string();
    options.subtitle = Some(format!(
        "leaktrace, {:.1}s: {live} live; {} leaking call site(s) in red, {suspects} suspect in orange",
        report.duration_s,
        report.leaks()
    ));
    options.count_name = "connections".to_string();
    options.colors = Palette::Basic(BasicPalette::Aqua);
    // Colours by name, not at random: the same graph for the same report.
    options.deterministic = true;
    options.palette_map = Some(&mut palette);
    let mut svg = Vec::new();
    let fallback = [format!("{NOTHING_LIVE} 1")];
    let lines = if lines.is_empty() { &fallback[..] } else { &lines[..] };
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

/// The stacks in folded form (`root;...;leaf count`), one line per call site with live
/// connections: the process, then its frames outermost first.
pub fn folded(report: &Report) -> Vec<String> {
    report
        .call_sites
        .iter()
        .filter(|site| site.live > 0)
        .map(|site| {
            let mut names = vec![clean(&format!("{} (pid {})", site.comm, site.pid))];
            match stackless_frame(site) {
                Some(text) => names.push(text),
                None => names.extend(outermost_first(&site.frames)),
            }
            format!("{} {}", names.join(";"), site.live)
        })
        .collect()
}

/// The frames' names, outermost first; where a Go call site's stack goes on in the goroutine
/// that spawned the dialing one, a frame marks the `go` statement, as the final report does.
fn outermost_first(frames: &[Frame]) -> Vec<String> {
    let mut names = Vec::with_capacity(frames.len() + 1);
    let mut hop = None;
    for frame in frames {
        if frame.spawned_by != hop {
            hop = frame.spawned_by;
            if let Some(hop) = hop {
                names.push(format!("(go statement: the goroutine above started here, hop {hop})"));
            }
        }
        names.push(graph_name(frame));
    }
    names.reverse();
    names
}

/// The frame's name in the graph (frames are merged by name, as pprof's function view does).
fn graph_name(frame: &Frame) -> String {
    clean(&frame_name(frame))
}

/// The name of the frame the call site is named by (the table's).
fn naming_frame(site: &CallSite) -> String {
    if let Some(text) = stackless_frame(site) {
        return text;
    }
    let index = site.telling_frame.filter(|&index| index < site.frames.len()).unwrap_or(0);
    graph_name(&site.frames[index])
}

/// `;` separates frames in the folded form, and a line ends a stack.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}
