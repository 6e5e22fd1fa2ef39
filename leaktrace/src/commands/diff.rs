//! `leaktrace diff BEFORE AFTER`: reads both sides, compares them, prints the table or the JSON
//! object. Returns whether a call site AFTER judges a leak grew (or is new).
use std::io::Write;

use anyhow::Context;

use crate::{
    cli::{DiffArgs, DiffFormat},
    diff::{
        Diff,
        input::{self, InputSpec},
        render, resolve,
    },
    tracker::Filter,
};

pub fn run(args: &DiffArgs) -> anyhow::Result<bool> {
    let thresholds = args.judge.thresholds()?;
    let filter =
        Filter { pids: args.pids.clone(), comms: args.judge.comms.clone(), ports: args.ports.clone(), ..Filter::default() };
    let mut sides = Vec::new();
    for (name, text) in [("BEFORE", &args.before), ("AFTER", &args.after)] {
        let spec = InputSpec::parse(text).with_context(|| format!("diff: {name}"))?;
        let mut side = input::read(&spec, &thresholds, &filter).with_context(|| format!("diff: {name}"))?;
        // A report's call sites, kept as a recording's were.
        let (comms, pids) = (&args.judge.comms, &args.pids);
        side.report.call_sites.retain(|site| {
            (comms.is_empty() || comms.contains(&site.comm)) && (pids.is_empty() || pids.contains(&site.pid))
        });
        sides.push(side);
    }
    let (before, after) = (&sides[0], &sides[1]);
    let diff = Diff::new(before, after, resolve(args.matching, before, after), args.all);
    let text = match args.format {
        DiffFormat::Table => render::render_table(&diff),
        DiffFormat::Json => render::render_json(&diff)?,
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if !super::is_broken_pipe(&err) => return Err(err).context("diff: writing the output"),
        _ => {}
    }
    Ok(diff.leaking())
}
