//! What a benchmark section produces (a table, the targets it checks, notes) and how the whole
//! run becomes BENCHMARKS.md: when, on what machine, what was run, the targets, the tables.
//! Text after the [`KEEP_MARKER`] line of an existing file is hand-written and kept.
use std::{fmt::Write as _, fs, path::Path, process::Command};

/// Everything below this line in BENCHMARKS.md survives a refresh.
pub const KEEP_MARKER: &str =
    "<!-- Everything below this line is hand-written and kept by `cargo xtask bench`. -->";

/// One section of the report.
pub struct Section {
    pub title: String,
    /// What was run, in a sentence or two.
    pub what: String,
    pub table: Table,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    /// Named figures that a target spanning sections reads ([`combined_memory_target`]).
    pub figures: Vec<(&'static str, f64)>,
}

/// [`Section::figures`]: the kernel's bytes per tracked socket (socket map entry), at the
/// largest live count measured.
pub const KERNEL_BYTES_PER_SOCKET: &str = "kernel_bytes_per_socket";
/// [`Section::figures`]: the userspace tracker's bytes per live connection, at the largest
/// live count measured.
pub const TRACKER_BYTES_PER_CONNECTION: &str = "tracker_bytes_per_connection";
/// The issue's target for both together.
const TARGET_BYTES_PER_CONNECTION: f64 = 256.0;

/// The memory target, kernel maps and userspace together: what one traced socket costs (a
/// connection to another host is one traced socket here; a loopback connection is two, both
/// ends being local). `None` unless both sections ran.
pub fn combined_memory_target(sections: &[Result<Section, String>]) -> Option<Target> {
    let figure = |name: &str| {
        sections.iter().flatten().flat_map(|s| &s.figures).find(|(n, _)| *n == name).map(|(_, v)| *v)
    };
    let kernel = figure(KERNEL_BYTES_PER_SOCKET)?;
    let tracker = figure(TRACKER_BYTES_PER_CONNECTION)?;
    let total = kernel + tracker;
    let met = total <= TARGET_BYTES_PER_CONNECTION;
    Some(Target {
        goal: format!(
            "<= {TARGET_BYTES_PER_CONNECTION:.0} bytes per live connection, kernel maps + userspace (per traced socket)"
        ),
        measured: format!(
            "{total:.0} B: {kernel:.0} B kernel (socket map entry) + {tracker:.0} B userspace tracker, at the largest live \
             count measured"
        ),
        met: Some(met),
        limit: (!met).then(|| {
            "the kernel's preallocated hash map entry (key, value and its bucket overhead) and the tracker's \
             connection table; see the two memory tables"
                .into()
        }),
    })
}

#[derive(Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self, out: &mut String) {
        let line = |cells: &[String]| {
            format!(
                "| {} |\n",
                cells
                    .iter()
                    .map(|c| c.replace('|', "\\|"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        out.push_str(&line(&self.header));
        out.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
    }
}

/// A goal of the issue, checked against a measured figure.
pub struct Target {
    pub goal: String,
    pub measured: String,
    /// `None` where this run could not decide (a smoke run, a rate the machine cannot reach).
    pub met: Option<bool>,
    /// When not met: what limits it.
    pub limit: Option<String>,
}

/// The whole report as markdown.
pub fn render(
    machine: &Machine,
    command: &str,
    sections: &[Result<Section, String>],
    kept: Option<&str>,
) -> String {
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        out,
        "Written by `{command}` on {}. Figures are ratios and medians of interleaved epochs on a shared, noisy machine: compare rows of one run, not runs of different days.\n",
        machine.date
    );
    let _ = writeln!(out, "- kernel: {}", machine.kernel);
    let _ = writeln!(
        out,
        "- CPU: {} ({} cores), {} memory",
        machine.cpu, machine.cores, machine.memory
    );
    let _ = writeln!(out, "- leaktrace: {}\n", machine.revision);

    out.push_str("## Targets\n\n");
    let mut targets = Table::new(&["target", "measured", "met", "what limits it"]);
    for section in sections.iter().flatten() {
        for target in &section.targets {
            let met = match target.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not decided",
            };
            targets.row(vec![
                target.goal.clone(),
                target.measured.clone(),
                met.into(),
                target.limit.clone().unwrap_or_default(),
            ]);
        }
    }
    targets.markdown(&mut out);
    out.push('\n');

    for section in sections {
        match section {
            Ok(section) => {
                let _ = writeln!(out, "## {}\n\n{}\n", section.title, section.what);
                section.table.markdown(&mut out);
                for note in &section.notes {
                    let _ = writeln!(out, "\n{note}");
                }
                out.push('\n');
            }
            Err(error) => {
                let _ = writeln!(out, "## A section failed\n\n```\n{error}\n```\n");
            }
        }
    }
    out.push_str(KEEP_MARKER);
    out.push('\n');
    if let Some(kept) = kept {
        out.push_str(kept);
    }
    out
}

/// The hand-written part of an existing report, after [`KEEP_MARKER`].
pub fn kept_part(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let (_, kept) = text.split_once(KEEP_MARKER)?;
    Some(kept.trim_start_matches('\n').to_string())
}

/// Where the figures were taken.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub revision: String,
}

impl Machine {
    pub fn describe(root: &Path) -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let output = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let revision =
            output(
                Command::new("git")
                    .current_dir(root)
                    .args(["rev-parse", "--short", "HEAD"]),
            )
            .map(|head| {
                let dirty = output(Command::new("git").current_dir(root).args([
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ]))
                .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{head} with uncommitted changes")
                } else {
                    head
                }
            })
            .unwrap_or_else(|| "unknown revision".into());
        Self {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            cores,
            memory: super::figures::bytes(memory_kib * 1024.0),
            revision,
        }
    }
}
