//! Live connections by the hundred thousand: `hold` opens N connections and keeps them open
//! until its stdin closes. A process may hold only RLIMIT_NOFILE descriptors (raising the hard
//! limit needs CAP_SYS_RESOURCE, which containers often lack), and each connection held here
//! takes two (its client and its server end), so the connections are spread over worker
//! processes, each connecting to a listener of its own. Client ends close with RST, so the
//! release leaves no TIME_WAIT behind.
use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use socket2::SockRef;

use crate::{
    fdlimit::{nofile_limits, set_soft_nofile},
    server,
};

/// Connections opened before the worker accepts them: well inside the listen backlog.
const BATCH: usize = 1024;
/// Descriptors a worker keeps for itself (stdio, the listener, the runtime).
const SPARE_FDS: u64 = 64;
/// Most connections per worker even where the fd limit allows more: a modest fd table each.
const MAX_PER_WORKER: usize = 100_000;

/// The parent: starts the workers, says when everything is open, and when everything is closed.
pub fn hold(total: usize, per_process: Option<usize>) -> Result<()> {
    if total == 0 {
        bail!("--connections must be at least 1");
    }
    let capacity = match per_process {
        Some(0) => bail!("--per-process must be at least 1"),
        Some(n) => n,
        None => worker_capacity()?,
    };
    let exe = std::env::current_exe().context("finding loadgen's own executable")?;
    let started = Instant::now();
    let mut workers = Vec::new();
    if let Err(err) = open_all(&exe, total, capacity, &mut workers) {
        release(workers);
        return Err(err);
    }
    crate::print_json(&serde_json::json!({
        "type": "held",
        "connections": total,
        "processes": workers.len(),
        "seconds": started.elapsed().as_secs_f64(),
    }))?;
    // Hold until the controlling process closes our stdin.
    let _ = io::stdin().lock().lines().count();
    let releasing = Instant::now();
    release(workers);
    crate::print_json(
        &serde_json::json!({ "type": "released", "seconds": releasing.elapsed().as_secs_f64() }),
    )
}

/// Starts workers until `total` connections are held, at most one per CPU opening at a time:
/// a host's connections accumulate, they are not opened by a hundred processes at once (which
/// would also starve every other process of CPU, a tracer's reader included).
fn open_all(exe: &Path, total: usize, capacity: usize, workers: &mut Vec<Worker>) -> Result<()> {
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut remaining = total;
    let mut opening: VecDeque<usize> = VecDeque::new();
    while remaining > 0 {
        if opening.len() == parallel
            && let Some(index) = opening.pop_front()
        {
            workers[index].wait_held()?;
        }
        let count = remaining.min(capacity);
        let child = Command::new(exe)
            .args(["hold-worker", "--connections", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a hold worker")?;
        workers.push(Worker { child, count });
        opening.push_back(workers.len() - 1);
        remaining -= count;
    }
    opening
        .into_iter()
        .try_for_each(|index| workers[index].wait_held())
}

struct Worker {
    child: Child,
    count: usize,
}

impl Worker {
    /// Waits for the worker's `held N` line.
    fn wait_held(&mut self) -> Result<()> {
        let stdout = self.child.stdout.as_mut().context("worker stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading a hold worker")?;
        if line.trim() != format!("held {}", self.count) {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!(
                "a hold worker did not open its {} connections ({status}; its error is above)",
                self.count
            );
        }
        Ok(())
    }
}

/// Closes every worker's stdin (they exit, closing their connections) and reaps them.
fn release(workers: Vec<Worker>) {
    let mut children: Vec<Child> = workers.into_iter().map(|w| w.child).collect();
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
}

/// How many connections one worker can hold within its fd limit.
fn worker_capacity() -> Result<usize> {
    let (_, hard) = nofile_limits()?;
    let capacity = hard.saturating_sub(SPARE_FDS) / 2;
    if capacity == 0 {
        bail!("the fd limit ({hard}) leaves no room for connections");
    }
    Ok((capacity as usize).min(MAX_PER_WORKER))
}

/// A worker: raise the fd limit to its hard maximum, open `count` connections to its own
/// listener, say `held N`, and hold them until stdin closes.
pub fn worker(count: usize) -> Result<()> {
    raise_nofile_limit()?;
    let listener = server::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let address = listener.local_addr()?;
    let mut held: Vec<TcpStream> = Vec::with_capacity(2 * count);
    let mut opened = 0;
    while opened < count {
        let batch = (count - opened).min(BATCH);
        for _ in 0..batch {
            let client = TcpStream::connect(address)
                .with_context(|| format!("connection {} of {count} to {address}", opened + 1))?;
            SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
            held.push(client);
        }
        for _ in 0..batch {
            held.push(listener.accept().context("accepting a held connection")?.0);
        }
        opened += batch;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "held {count}").and_then(|()| out.flush())?;
    io::stdin().read_to_end(&mut Vec::new())?;
    Ok(())
}

fn raise_nofile_limit() -> Result<()> {
    let (_, hard) = nofile_limits()?;
    set_soft_nofile(hard, hard)
}
