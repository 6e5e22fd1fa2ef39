//! leaktrace-bench: the parts of `cargo xtask bench` that need leaktrace's library (xtask itself
//! must build before the BPF toolchain is set up, so it cannot link it). Each subcommand talks
//! to xtask in JSON lines on stdout; diagnostics go to stderr.
//!
//! - `trace`: hosts the real probes (`leaktrace::kernel::Tracer`), optionally paused or with
//!   BPF run-time statistics on, drains and decodes every event as leaktrace does, and reports
//!   counters, per-program cost and map memory when asked.
//! - `others`: the tracing programs loaded on the host (other people's tracers).
//! - `aggregate`: the aggregator alone on a synthetic stream (events/s per core), or its
//!   memory per live connection (`--live N`).
mod aggregate;
mod others;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "leaktrace-bench",
    about = "Benchmark helpers that need leaktrace's library (run by `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the probes, drain their events, answer `snapshot` / `snapshot sockets`
    /// lines on stdin with a JSON line, and stop at `stop`, stdin EOF, SIGINT or SIGTERM with a
    /// `final` line.
    Trace(trace::TraceArgs),
    /// List the tracing programs loaded on this host, as one JSON line.
    Others,
    /// Time the tracker alone on a synthetic stream built in memory (events/s per core), or
    /// measure its memory per live connection (`--live N`); one JSON line.
    Aggregate(aggregate::AggregateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No logger is installed: leaktrace's `log` messages (hooks attached...) are dropped, as a
    // benchmark wants; errors still reach stderr below.
    let result = match cli.command {
        Command::Trace(args) => trace::run(&args),
        Command::Others => others::run(),
        Command::Aggregate(args) => aggregate::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leaktrace-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes `value` as one JSON line on stdout, flushed: xtask reads these as they come.
fn print_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")
}
