//! `leaktrace replay FILE`: the report built from a recording instead of the kernel, exactly
//! as the live view would have built it (same tracker, same thresholds), with JSON lines every
//! `--interval` of the recording's own time. Returns whether leaks were found.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
};

use anyhow::Context;

use super::view::View;
use crate::{
    cli::ReplayArgs,
    export::Exports,
    kernel::KernelCounters,
    recording::{self, Mark, Record},
    report::{AddressesOnly, Report},
    tracker::{Filter, Limits, Tracker},
};

pub fn run(args: &ReplayArgs) -> anyhow::Result<bool> {
    let thresholds = args.judge.thresholds()?;
    let interval_ns = args.view.interval()?.as_nanos() as u64;
    let exports = Exports::new(&args.export)?;
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(BufReader::new(io::stdin()))
    } else {
        let file = File::open(&args.file).with_context(|| format!("replay: cannot open {}", args.file.display()))?;
        Box::new(BufReader::new(file))
    };
    let filter = Filter {
        pids: args.pids.clone(),
        comms: args.judge.comms.clone(),
        ports: args.ports.clone(),
        cgroups: args.cgroups.clone(),
    };
    let mut view = View::new(args.view.format, args.view.top);
    let mut tracker: Option<Tracker> = None;
    let mut counters: Option<KernelCounters> = None;
    let mut end_ns: Option<u64> = None;
    let mut next_refresh_ns = u64::MAX;

    for record in recording::read(input) {
        let record = record.with_context(|| format!("replay: {}", args.file.display()))?;
        // A recording without a start line (`leaktrace events` before version 1 marks) starts
        // at its first event.
        let ts = match &record {
            Record::Event(event) => Some(event.ts_ns),
            Record::Mark(Mark::Start { ts_ns, .. }) => Some(*ts_ns),
            _ => None,
        };
        let tracker = tracker.get_or_insert_with(|| {
            let start = ts.unwrap_or(0);
            next_refresh_ns = start.saturating_add(interval_ns);
            Tracker::new(thresholds.clone(), Limits::default(), filter.clone(), start)
        });
        if let Record::Event(event) = &record {
            // Refresh at each interval boundary the recording's time crosses.
            while event.ts_ns >= next_refresh_ns {
                tracker.expire(next_refresh_ns);
                view.refresh(&Report::new(&tracker.snapshot(next_refresh_ns), counters, &thresholds, &AddressesOnly))?;
                next_refresh_ns += interval_ns;
            }
        }
        match record {
            Record::Event(event) => tracker.apply(&event),
            Record::Mark(Mark::Seed(inventory)) => tracker.seed(&inventory),
            Record::Mark(Mark::Inventory(inventory)) => tracker.observe(&inventory),
            Record::Mark(Mark::Counters(final_counters)) => counters = Some(final_counters),
            Record::Mark(Mark::End { ts_ns }) => end_ns = Some(ts_ns),
            Record::Mark(Mark::Start { .. }) => {}
        }
    }
    let tracker = tracker.with_context(|| format!("replay: {} holds no events", args.file.display()))?;
    let end = end_ns.unwrap_or_else(|| tracker.latest_ns());
    let report = Report::new(&tracker.snapshot(end), counters, &thresholds, &AddressesOnly);
    view.finish(&report)?;
    exports.write(&report)?;
    Ok(report.leaks() > 0)
}
