//! The live view (leaktrace's default command): trace, track, and show per call site the
//! connections opened and never closed, refreshed every `--interval`; at Ctrl-C, SIGTERM or
//! `--duration`, detach, drain, and print the final report. Returns whether leaks were found.
//! With `--format table` on a terminal the refreshes go to the interactive view ([`crate::tui`]),
//! which `q` also stops.
use std::io::IsTerminal;

use tokio::signal::unix::{SignalKind, signal};

use super::{
    clock::sleep_until,
    events::report_counters,
    live::{Live, LiveOptions, Stepped},
    view::View,
};
use crate::{
    cli::{Format, WatchArgs, positive, run_duration},
    export::BackgroundExports,
    tui::Tui,
};

pub async fn run(args: &WatchArgs) -> anyhow::Result<bool> {
    let interval = args.view.interval()?;
    let inventory_interval = positive("inventory-interval", args.inventory_interval)?;
    let duration = run_duration(args.duration)?;
    let mut exports = BackgroundExports::new(&args.export)?;
    let mut live = Live::start(&LiveOptions {
        trace: &args.trace,
        judge: &args.judge,
        limits: &args.limits,
        go: &args.go,
        containers: &args.containers,
        record: args.record.as_deref(),
        seed: !args.no_seed,
        inventory_interval,
    })
    .await?;
    let mut view = View::new(args.view.format, args.view.top);
    let interactive = args.view.format == Format::Table && !args.plain && std::io::stdout().is_terminal();
    let mut tui = if interactive { Some(Tui::start()?) } else { None };

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);

    loop {
        tokio::select! {
            stepped = live.step() => {
                if let Stepped::InventoryFailed(err) = stepped? {
                    return Err(err);
                }
            }
            _ = refresh.tick() => {
                let report = live.report()?;
                exports.refresh(&report);
                match &mut tui {
                    Some(tui) => tui.refresh(report)?,
                    None => view.refresh(&report)?,
                }
            }
            input = Tui::next(tui.as_mut()) => {
                if let Some(tui) = &mut tui && tui.input(input)? {
                    break;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = sleep_until(deadline) => break,
        }
    }

    // The terminal as it was, before the final report is printed on it.
    drop(tui);
    let (report, counters) = live.finish()?;
    view.finish(&report)?;
    exports.finish(&report).await?;
    report_counters(&counters);
    Ok(report.leaks() > 0)
}
