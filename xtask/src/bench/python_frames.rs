//! What the Python walk at connect costs in the kernel, side by side in one run: the probes'
//! run time per connection (BPF run-time statistics, as in `kernel_cost`) for a non-Python
//! client (a thread of this process), for a CPython client that is not registered (it pays
//! the one hash lookup every process pays), and for the same client registered for Python frames
//! (`python PID` to `leaktrace-bench trace`), whose every connect walks its frame chain. The
//! Python client is `tests/helpers/python/connect_loop.py`, run by Debian's `python3`.
use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Bench,
    children::{Running, Stdout},
    figures::Spread,
    report::{Section, Table},
    rig,
};
use crate::{cargo, cmd};

const EPOCHS: usize = 3;
const CONNECTS: u64 = 5_000;
const SMOKE_CONNECTS: u64 = 200;
/// Frames of `nested` between the module and the connect loop: the walk takes this many + 4
/// Python frames per connect (`connect_once`, `connect_all`, `nested` DEPTH + 1 times, `<module>`).
const DEPTH: u32 = 10;
const TIMEOUT: Duration = Duration::from_secs(120);
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    NotPython,
    PythonUnregistered,
    PythonRegistered,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::NotPython, Variant::PythonUnregistered, Variant::PythonRegistered];

    fn label(self) -> &'static str {
        match self {
            Variant::NotPython => "non-Python client (a Rust thread)",
            Variant::PythonUnregistered => "Python client, not registered",
            Variant::PythonRegistered => "Python client, registered (frames walked)",
        }
    }
}

pub fn section(bench: &Bench) -> Result<Section> {
    let (epochs, connects) = if bench.options.smoke { (1, SMOKE_CONNECTS) } else { (EPOCHS, CONNECTS) };
    // Debian's interpreter (what CI installs), not whatever python3 comes first on PATH.
    let python = [std::path::PathBuf::from(DEBIAN_PYTHON)]
        .into_iter()
        .find(|path| path.exists())
        .or_else(|| cmd::which("python3"))
        .context("the Python frames rows need python3\nfix: cargo xtask setup --test-deps (installs python3)")?;
    let script = cargo::workspace_root().join("tests/helpers/python/connect_loop.py");
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let port_text = port.to_string();
    let mut trace = rig::start_bench_trace(&bench.bins.bench, &["trace", "--run-time-stats", "--port", &port_text])?;
    let mut runs: Vec<Vec<f64>> = Variant::ALL.iter().map(|_| Vec::new()).collect();
    let mut version = String::new();
    for epoch in 0..epochs {
        for (index, &variant) in Variant::ALL.iter().enumerate() {
            let ns = match variant {
                Variant::NotPython => measure(&mut trace, connects, || connect_loop(port, connects)),
                _ => measure_python(&mut trace, &python, &script, port, connects, variant == Variant::PythonRegistered, &mut version),
            }
            .with_context(|| format!("{}, epoch {}", variant.label(), epoch + 1))?;
            say!("bench: python frames, {}: {ns:.0} ns per connection", variant.label());
            runs[index].push(ns);
        }
    }
    let last = rig::finish_bench_trace(trace)?;
    let counter = |name: &str| last.pointer(&format!("/counters/{name}")).and_then(Value::as_u64).unwrap_or(0);
    let (walks, failed) = (counter("python_walks"), counter("python_walks_failed"));
    if walks < connects * epochs as u64 || failed > 0 {
        bail!("the registered client's connects were not all walked: {walks} walks, {failed} failed, {} connects", connects * epochs as u64);
    }
    let spreads: Vec<Option<Spread>> = runs.iter().map(|series| Spread::of(series)).collect();
    let median = |index: usize| spreads[index].map(|s| s.median);
    let mut table = Table::new(&[
        "client",
        "kernel ns per connection, all programs: median (p25–p75)",
        "added over the non-Python client",
        "added by the walk",
    ]);
    for (index, &variant) in Variant::ALL.iter().enumerate() {
        let added = |base: Option<f64>| match (median(index), base) {
            (Some(ns), Some(base)) => format!("{:+.0} ns", ns - base),
            _ => "–".into(),
        };
        table.row(vec![
            variant.label().into(),
            spreads[index].map_or("–".into(), |s| s.show(|ns| format!("{ns:.0}"))),
            if variant == Variant::NotPython { "–".into() } else { added(median(0)) },
            if variant == Variant::PythonRegistered { added(median(1)) } else { "–".into() },
        ]);
    }
    Ok(Section {
        title: "Python frames at connect".into(),
        what: format!(
            "`leaktrace-bench trace --run-time-stats --port PORT` (the live view's probes) while a client makes \
             {connects} loopback connects to PORT one after another, each reset at once, accepted by a thread of this \
             process: a Rust thread of this process; `connect_loop.py` ({version}) not registered; and the same \
             registered for Python frames, its connects {} Python frames deep. Kernel time is `run_time_ns` summed \
             over every program (both ends of each connection: the connect, the accept, the transitions) divided by \
             the connects; {epochs} interleaved epoch(s). {walks} walks, {failed} failed.",
            DEPTH + 4
        ),
        table,
        targets: Vec::new(),
        notes: vec![
            "Every process pays the one hash lookup in PYTHON_PROCESSES at each open (in all three rows); only a \
             registered process pays the walk: its thread state found by thread id (two reads per thread state \
             passed), then one read of each frame's first bytes (bpf_probe_read_user). The clients differ in more \
             than the walk (the Rust thread connects faster, so its connects and the accepts overlap more): the \
             walk's own cost is the registered row against the unregistered one."
                .into(),
        ],
        figures: Vec::new(),
    })
}

/// Kernel ns per connection while `load` makes `connects` connections.
fn measure(trace: &mut Running, connects: u64, load: impl FnOnce() -> Result<()>) -> Result<f64> {
    let before = run_time_ns(&rig::snapshot(trace, "snapshot")?)?;
    load()?;
    let after = run_time_ns(&rig::snapshot(trace, "snapshot")?)?;
    Ok((after - before) / connects as f64)
}

fn measure_python(
    trace: &mut Running,
    python: &std::path::Path,
    script: &std::path::Path,
    port: u16,
    connects: u64,
    register: bool,
    version: &mut String,
) -> Result<f64> {
    let mut command = Command::new(python);
    command.arg(script).args([port.to_string(), connects.to_string(), DEPTH.to_string()]);
    let mut client = Running::spawn("connect_loop.py", &mut command, Stdout::Lines)?;
    client.wait_line(TIMEOUT, "ready", |line| line == "ready")?;
    if register {
        trace.send_line(&format!("python {}", client.pid()))?;
        let answer = trace.wait_line(TIMEOUT, "the Python registration", |line| line.starts_with(r#"{"type":"python""#))?;
        let answer: Value = serde_json::from_str(&answer).context("a registration answer that is not JSON")?;
        match answer["version"].as_str() {
            Some(found) => *version = found.to_string(),
            None => bail!("registering the Python client failed: {}", answer["error"]),
        }
    }
    let ns = measure(trace, connects, || {
        client.send_line("go")?;
        client.wait_line(TIMEOUT, "its connects", |line| line.starts_with("connected "))?;
        Ok(())
    })?;
    let ended = client.close_stdin_and_wait(TIMEOUT)?;
    if !ended.success {
        bail!("connect_loop.py failed ({})", ended.status);
    }
    Ok(ns)
}

/// `connects` loopback connects from this process, each reset at once (as the Python client's).
fn connect_loop(port: u16, connects: u64) -> Result<()> {
    let reset = libc::linger { l_onoff: 1, l_linger: 0 };
    for _ in 0..connects {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to the loopback listener")?;
        // SAFETY: a valid socket and a linger struct of the size given.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&reset as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
        }
    }
    Ok(())
}

/// Run time of every program so far, summed, from a snapshot's `programs`.
fn run_time_ns(snapshot: &Value) -> Result<f64> {
    let programs = snapshot.get("programs").and_then(Value::as_array).context("a snapshot without programs")?;
    Ok(programs.iter().filter_map(|program| program.get("run_time_ns").and_then(Value::as_f64)).sum())
}
