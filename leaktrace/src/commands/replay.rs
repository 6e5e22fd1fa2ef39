//! `leaktrace replay FILE`: the report built from a recording instead of the kernel, exactly
//! as the live view would have built it (same tracker, same thresholds), with JSON lines every
//! `--interval` of the recording's own time. Returns whether leaks were found. [`Replayer`] is
//! the part `leaktrace diff` shares: a recording fed record by record into the tracker.
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
    report::{AddressesOnly, Report, Resolver},
    tracker::{Filter, Limits, Thresholds, Tracker},
};

pub fn run(args: &ReplayArgs) -> anyhow::Result<bool> {
    let thresholds = args.judge.thresholds()?;
    let interval_ns = args.view.interval()?.as_nanos() as u64;
    let exports = Exports::new(&args.export)?;
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(BufReader::new(io::stdin()))
    } else {
        let file = File::open(&args.file).with_context(|| format!("replay: cannot open {}", args.file.display()))?;
        if file.metadata().is_ok_and(|metadata| metadata.is_dir()) {
            anyhow::bail!("replay: {} is a directory; name a recording (--record FILE, `leaktrace events > FILE`)", args.file.display());
        }
        Box::new(BufReader::new(file))
    };
    let filter = Filter {
        pids: args.pids.clone(),
        comms: args.judge.comms.clone(),
        ports: args.ports.clone(),
        cgroups: args.cgroups.clone(),
    };
    let mut view = View::new(args.view.format, args.view.top);
    let mut replayer = Replayer::new(thresholds, args.limits.limits()?, filter);
    let mut next_refresh_ns = None;

    for record in recording::read(input) {
        let record = record.with_context(|| format!("replay: {}", args.file.display()))?;
        let start = replayer.begin(&record);
        let next_refresh_ns = next_refresh_ns.get_or_insert(start.saturating_add(interval_ns));
        if let Record::Event(event) = &record {
            // Refresh at each interval boundary the recording's time crosses.
            while event.ts_ns >= *next_refresh_ns {
                view.refresh(&replayer.report_at(*next_refresh_ns))?;
                *next_refresh_ns += interval_ns;
            }
        }
        replayer.apply(record);
    }
    let report = replayer.finish().with_context(|| format!("replay: {} holds no events", args.file.display()))?;
    view.finish(&report)?;
    exports.write(&report)?;
    Ok(report.leaks() > 0)
}

/// A recording applied to a tracker record by record, as the live view applied what the
/// kernel and the inventories gave it; reports at any time of the recording's own clock.
pub struct Replayer {
    thresholds: Thresholds,
    limits: Limits,
    filter: Filter,
    tracker: Option<Tracker>,
    counters: Option<KernelCounters>,
    end_ns: Option<u64>,
}

impl Replayer {
    pub fn new(thresholds: Thresholds, limits: Limits, filter: Filter) -> Self {
        Self { thresholds, limits, filter, tracker: None, counters: None, end_ns: None }
    }

    /// The time a record carries, where it carries one.
    pub fn time_of(record: &Record) -> Option<u64> {
        match record {
            Record::Event(event) => Some(event.ts_ns),
            Record::Mark(Mark::Start { ts_ns, .. } | Mark::End { ts_ns }) => Some(*ts_ns),
            Record::Mark(Mark::Seed(inventory) | Mark::Inventory(inventory)) => Some(inventory.ts_ns),
            Record::Mark(Mark::Counters(_)) => None,
        }
    }

    /// Starts the tracker at the recording's first record, if this is it, and returns the
    /// recording's start. A recording without a start line (`leaktrace events` before version
    /// 1 marks) starts at its first event.
    pub fn begin(&mut self, record: &Record) -> u64 {
        let tracker = self.tracker.get_or_insert_with(|| {
            let start = match record {
                Record::Event(event) => event.ts_ns,
                Record::Mark(Mark::Start { ts_ns, .. }) => *ts_ns,
                _ => 0,
            };
            Tracker::new(self.thresholds.clone(), self.limits.clone(), self.filter.clone(), start)
        });
        tracker.started_ns()
    }

    pub fn apply(&mut self, record: Record) {
        self.begin(&record);
        let tracker = self.tracker.as_mut().expect("begun above");
        match record {
            Record::Event(event) => tracker.apply(&event),
            Record::Mark(Mark::Seed(inventory)) => tracker.seed(&inventory),
            Record::Mark(Mark::Inventory(inventory)) => tracker.observe(&inventory),
            Record::Mark(Mark::Counters(final_counters)) => self.counters = Some(final_counters),
            Record::Mark(Mark::End { ts_ns }) => self.end_ns = Some(ts_ns),
            Record::Mark(Mark::Start { .. }) => {}
        }
    }

    /// The recording's start, once a record was applied.
    pub fn started_ns(&self) -> Option<u64> {
        self.tracker.as_ref().map(Tracker::started_ns)
    }

    /// Where the recording ends: its end line, else its newest event.
    pub fn end_ns(&self) -> Option<u64> {
        let tracker = self.tracker.as_ref()?;
        Some(self.end_ns.unwrap_or_else(|| tracker.latest_ns()))
    }

    /// The report as the live view would have shown it at `now_ns` (the records applied so
    /// far being everything up to then), frames as bare addresses. Before any record: an empty
    /// report at `now_ns`.
    pub fn report_at(&mut self, now_ns: u64) -> Report {
        self.report_with(now_ns, &AddressesOnly)
    }

    /// [`Replayer::report_at`], stacks and executables from `resolver`.
    pub fn report_with(&mut self, now_ns: u64, resolver: &dyn Resolver) -> Report {
        let tracker = self.tracker.get_or_insert_with(|| {
            Tracker::new(self.thresholds.clone(), self.limits.clone(), self.filter.clone(), now_ns)
        });
        tracker.expire(now_ns);
        Report::new(&tracker.snapshot(now_ns), self.counters, &self.thresholds, resolver)
    }

    /// The final report, at the recording's end; `None` for a recording without records.
    pub fn finish(self) -> Option<Report> {
        self.finish_with(&AddressesOnly)
    }

    /// [`Replayer::finish`], stacks and executables from `resolver`.
    pub fn finish_with(self, resolver: &dyn Resolver) -> Option<Report> {
        let end = self.end_ns()?;
        let tracker = self.tracker.as_ref()?;
        Some(Report::new(&tracker.snapshot(end), self.counters, &self.thresholds, resolver))
    }
}
