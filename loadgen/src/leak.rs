//! A connection leak on purpose, for measuring how soon leaktrace calls it one: a client that
//! opens `--rate` connections a second to a server in the same process (loopback), which
//! accepts and holds them, and closes none, until `--duration` ends or stdin closes. Then every
//! connection is closed (RST on the client ends, so no TIME_WAIT is left behind). The first
//! connect is stamped with CLOCK_MONOTONIC, the clock of leaktrace's events.
use std::{
    io::{self, BufRead},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use socket2::SockRef;

use crate::{
    fdlimit::{nofile_limits, set_soft_nofile},
    server,
};

/// Descriptors needed besides the leaked connections' (stdio, the listener, the runtime).
const SPARE_FDS: u64 = 64;

/// What `leak` is told to do.
pub struct LeakPlan {
    /// 0: a port the kernel picks.
    pub port: u16,
    pub rate: f64,
    pub duration: f64,
    /// Wait for a line on stdin before the first connect (the tracer is attached by then).
    pub wait_for_start: bool,
}

/// Why the leak ended.
#[derive(Clone, Copy)]
enum Ended {
    Duration,
    StdinClosed,
}

/// Listens, says where (`listening`), leaks (`leak_started`), closes everything and says how
/// many it opened (`leak_ended`).
pub fn leak(plan: &LeakPlan) -> Result<()> {
    if !(plan.rate.is_finite() && plan.rate > 0.0) {
        bail!(
            "--rate {}: must be a positive number of connections per second",
            plan.rate
        );
    }
    if !(plan.duration.is_finite() && plan.duration > 0.0) {
        bail!(
            "--duration {}: must be a positive number of seconds",
            plan.duration
        );
    }
    make_room_for(2 * (plan.rate * plan.duration).ceil() as u64 + SPARE_FDS)?;
    let listener = server::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, plan.port)))?;
    let address = listener
        .local_addr()
        .context("reading the listener's address")?;
    crate::print_json(&serde_json::json!({
        "type": "listening",
        "address": address.ip(),
        "port": address.port(),
    }))?;
    let stdin = stdin_lines()?;
    if plan.wait_for_start && stdin.recv().is_err() {
        return print_ended(0, Duration::ZERO, Ended::StdinClosed);
    }
    let mut held = Vec::new();
    let leaked = open_until_ended(&listener, plan, &stdin, &mut held);
    let opened = held.len();
    release(held);
    let (ended, elapsed) = leaked?;
    print_ended(opened, elapsed, ended)
}

/// Opens a connection every 1/rate seconds on an absolute schedule, accepts its server end,
/// and keeps both in `held`, until the duration ends or stdin closes. Returns why it ended and
/// how long the leak ran.
fn open_until_ended(
    listener: &TcpListener,
    plan: &LeakPlan,
    stdin: &Receiver<()>,
    held: &mut Vec<(TcpStream, TcpStream)>,
) -> Result<(Ended, Duration)> {
    let address = listener.local_addr()?;
    let first_connect_ns = monotonic_ns();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(plan.duration);
    let mut k = 0u64;
    loop {
        let due = started + Duration::from_secs_f64(k as f64 / plan.rate);
        if due >= end {
            let ended = if stdin_closed_before(stdin, end) {
                Ended::StdinClosed
            } else {
                Ended::Duration
            };
            return Ok((ended, started.elapsed()));
        }
        if stdin_closed_before(stdin, due) {
            return Ok((Ended::StdinClosed, started.elapsed()));
        }
        let client = TcpStream::connect(address)
            .with_context(|| format!("connection {} to {address}", k + 1))?;
        let (server_end, _) = listener
            .accept()
            .with_context(|| format!("accepting connection {}", k + 1))?;
        held.push((client, server_end));
        if k == 0 {
            crate::print_json(&serde_json::json!({
                "type": "leak_started",
                "monotonic_ns": first_connect_ns,
                "rate": plan.rate,
            }))?;
        }
        k += 1;
    }
}

/// Waits until `due`, and says whether stdin closed first (lines read meanwhile are ignored).
fn stdin_closed_before(stdin: &Receiver<()>, due: Instant) -> bool {
    loop {
        match stdin.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(()) => continue,
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
}

/// One message per line of stdin; the sender is dropped at its end.
fn stdin_lines() -> Result<Receiver<()>> {
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for _ in io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.send(()).is_err() {
                    return;
                }
            }
        })
        .context("spawning the stdin reader")?;
    Ok(lines_rx)
}

/// Closes every connection, the client ends with RST.
fn release(held: Vec<(TcpStream, TcpStream)>) {
    for (client, _) in &held {
        let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
    }
    drop(held);
}

fn print_ended(opened: usize, elapsed: Duration, ended: Ended) -> Result<()> {
    crate::print_json(&serde_json::json!({
        "type": "leak_ended",
        "opened": opened,
        "seconds": elapsed.as_secs_f64(),
        "ended_by": match ended {
            Ended::Duration => "duration",
            Ended::StdinClosed => "stdin",
        },
    }))
}

/// Raises the soft fd limit to `needed` (within the hard limit, no privilege needed): each
/// leaked connection takes two descriptors, and soft limits of 1024 are common.
fn make_room_for(needed: u64) -> Result<()> {
    let (soft, hard) = nofile_limits()?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "the leak needs {needed} file descriptors (2 per connection) and the hard limit is {hard}: \
             lower --rate or --duration, or raise the limit (ulimit -Hn, as root)"
        );
    }
    set_soft_nofile(needed, hard)
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of leaktrace's event timestamps.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
