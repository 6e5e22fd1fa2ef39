//! loadgen: TCP connection churn over loopback, the workload of leaktrace's benchmarks.
//! Every connection is connect, request, response, close (normal or RST), spread over several
//! server ports, saturating or at a fixed rate, from N client threads; or N connections opened
//! and held (`hold`); or a connection leak on purpose (`leak`). Results are one JSON object per
//! line on stdout; diagnostics on stderr.
mod client;
mod exchange;
mod fdlimit;
mod hold;
mod leak;
mod netns;
mod server;
mod usage;

use std::{
    io::{self, BufRead, Write},
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    client::{ClientPlan, ClientStats, Stop},
    exchange::{CloseMode, Exchange},
    server::{Server, ServerStats},
    usage::{CpuTime, TcpCounters},
};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "TCP connection churn over loopback (connect, request, response, close)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Server and clients in one process: the benchmarks' workload. Prints one `result` line.
    Run {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        exchange: ExchangeArgs,
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// Only the server: prints a `listening` line with its ports, serves until stdin closes
    /// (or --duration), then prints a `served` line.
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        exchange: ExchangeArgs,
        /// Stop after this many seconds even if stdin stays open.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
    },
    /// Only the clients, against a server elsewhere. Prints one `result` line.
    Client {
        /// Server address, repeatable: connections go round-robin over them.
        #[arg(long = "target", value_name = "ADDR:PORT", required = true)]
        targets: Vec<SocketAddr>,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        exchange: ExchangeArgs,
    },
    /// Opens N connections and holds them until stdin closes: prints a `held` line once they
    /// are all open, and a `released` line once they are all closed. Spread over worker
    /// processes, each within the file descriptor limit (2 per connection).
    Hold {
        /// Live connections to hold.
        #[arg(long, value_name = "N")]
        connections: usize,
        /// Connections per worker process (default: as many as its fd limit allows).
        #[arg(long, value_name = "N")]
        per_process: Option<usize>,
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// A connection leak on purpose: a server and a client in one process over loopback; the
    /// client opens --rate connections a second and closes none, until --duration ends or stdin
    /// closes. Prints `listening` (the port), `leak_started` (the CLOCK_MONOTONIC ns of the first
    /// connect) and, once everything is closed, `leak_ended` (how many it opened).
    Leak {
        /// Port to listen on (default: one the kernel picks).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Connections opened per second.
        #[arg(long, value_name = "CONN_PER_S", default_value_t = 20.0)]
        rate: f64,
        /// Leak for this many seconds at most.
        #[arg(long, value_name = "SECONDS")]
        duration: f64,
        /// Start leaking only once a line arrives on stdin (after `listening`): the tracer
        /// attaches meanwhile.
        #[arg(long)]
        wait_for_start: bool,
    },
    /// One worker of `hold` (started by it).
    #[command(hide = true)]
    HoldWorker {
        #[arg(long)]
        connections: usize,
    },
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// How many server ports (one listener each).
    #[arg(long, default_value_t = 4)]
    ports: usize,
    /// Server threads in all, at least one per port.
    #[arg(long, default_value_t = 4)]
    server_threads: usize,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections per second, over all threads (default: as fast as possible).
    #[arg(long, value_name = "CONN_PER_S")]
    rate: Option<f64>,
    /// Run this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        conflicts_with = "connections",
        required_unless_present = "connections"
    )]
    duration: Option<f64>,
    /// Make this many connections.
    #[arg(long, value_name = "N")]
    connections: Option<u64>,
    /// How the client ends a connection once it has the response.
    #[arg(long, value_enum, default_value_t = CloseArg::Normal)]
    close: CloseArg,
}

#[derive(Args, Clone, Copy)]
struct ExchangeArgs {
    /// Bytes the client sends per connection.
    #[arg(long, default_value_t = 64)]
    request_bytes: usize,
    /// Bytes the server answers per connection.
    #[arg(long, default_value_t = 64)]
    response_bytes: usize,
}

#[derive(Args, Clone, Copy)]
struct NetnsArg {
    /// `private`: a network namespace of its own (root), so the load neither takes the host's
    /// ephemeral ports nor mixes its TCP counters with others'; `host`: the host's loopback.
    #[arg(long, value_enum, default_value_t = NetnsMode::Private)]
    netns: NetnsMode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum NetnsMode {
    Private,
    Host,
}

#[derive(Clone, Copy, ValueEnum)]
enum CloseArg {
    /// FIN: the client closes first, the server after reading the end.
    Normal,
    /// RST: SO_LINGER 0, both sides go straight to CLOSE.
    Rst,
}

impl From<CloseArg> for CloseMode {
    fn from(arg: CloseArg) -> Self {
        match arg {
            CloseArg::Normal => CloseMode::Normal,
            CloseArg::Rst => CloseMode::Rst,
        }
    }
}

impl From<ExchangeArgs> for Exchange {
    fn from(args: ExchangeArgs) -> Self {
        Exchange {
            request_bytes: args.request_bytes,
            response_bytes: args.response_bytes,
        }
    }
}

/// The `result` line of `run` and `client`.
#[derive(Serialize)]
struct RunResult {
    r#type: &'static str,
    /// Connections completed by the clients (connect, request, response, close).
    connections: u64,
    /// Connections the server completed (`run` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_connections: Option<u64>,
    /// Failed connects or exchanges (clients and server).
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    seconds: f64,
    conn_per_s: f64,
    target_rate: Option<f64>,
    /// The furthest the paced clients fell behind their schedule, in ms (rate mode).
    max_lag_ms: f64,
    /// CPU time of this whole process (all threads) during the load, from getrusage.
    cpu_user_s: f64,
    cpu_sys_s: f64,
    cpu_us_per_conn: f64,
    threads: usize,
    ports: Vec<u16>,
    close: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsMode>,
    /// TCP counters of this network namespace during the load (`private` netns: only this
    /// load's; `host`: everyone's). A listen overflow costs a connection a 1 s SYN retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpCounters>,
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            server,
            client,
            exchange,
            netns,
        } => {
            enter_netns(netns.netns)?;
            let server_started = Server::start(
                server.listen,
                server.ports,
                server.server_threads,
                exchange.into(),
            )?;
            let targets = server_started.addresses();
            let ports = server_started.ports().to_vec();
            let tcp_before = TcpCounters::read().ok();
            let cpu_before = CpuTime::of_process()?;
            let clients = client::run(&plan(&client, exchange, targets)?);
            let served = server_started.stop();
            let cpu = CpuTime::of_process()?.since(cpu_before);
            let tcp = tcp_before.and_then(|before| Some(TcpCounters::read().ok()?.since(before)));
            print_json(&result(
                &client,
                clients,
                Some(served),
                cpu,
                ports,
                Some(netns.netns),
                tcp,
            ))
        }
        Command::Serve {
            server,
            exchange,
            duration,
        } => serve(&server, exchange, duration),
        Command::Client {
            targets,
            client,
            exchange,
        } => {
            let ports = targets.iter().map(SocketAddr::port).collect();
            let cpu_before = CpuTime::of_process()?;
            let clients = client::run(&plan(&client, exchange, targets)?);
            let cpu = CpuTime::of_process()?.since(cpu_before);
            print_json(&result(&client, clients, None, cpu, ports, None, None))
        }
        Command::Hold {
            connections,
            per_process,
            netns,
        } => {
            enter_netns(netns.netns)?;
            hold::hold(connections, per_process)
        }
        Command::Leak {
            port,
            rate,
            duration,
            wait_for_start,
        } => leak::leak(&leak::LeakPlan {
            port,
            rate,
            duration,
            wait_for_start,
        }),
        Command::HoldWorker { connections } => hold::worker(connections),
    }
}

fn enter_netns(mode: NetnsMode) -> Result<()> {
    match mode {
        NetnsMode::Private => netns::enter_private(),
        NetnsMode::Host => Ok(()),
    }
}

fn plan(args: &ClientArgs, exchange: ExchangeArgs, targets: Vec<SocketAddr>) -> Result<ClientPlan> {
    let stop = match (args.duration, args.connections) {
        (Some(seconds), _) if seconds.is_finite() && seconds > 0.0 => {
            Stop::After(Duration::from_secs_f64(seconds))
        }
        (Some(seconds), _) => bail!("--duration {seconds}: must be a positive number of seconds"),
        (None, Some(count)) => Stop::Count(count),
        (None, None) => bail!("give --duration or --connections"),
    };
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate {rate}: must be a positive number of connections per second");
    }
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    Ok(ClientPlan {
        targets,
        threads: args.threads,
        rate: args.rate,
        stop,
        close: args.close.into(),
        exchange: exchange.into(),
    })
}

fn result(
    args: &ClientArgs,
    clients: ClientStats,
    served: Option<ServerStats>,
    cpu: CpuTime,
    ports: Vec<u16>,
    netns: Option<NetnsMode>,
    tcp: Option<TcpCounters>,
) -> RunResult {
    let seconds = clients.elapsed.as_secs_f64();
    let per_conn = |s: f64| {
        if clients.connections == 0 {
            0.0
        } else {
            s * 1e6 / clients.connections as f64
        }
    };
    let (user, sys) = (cpu.user.as_secs_f64(), cpu.sys.as_secs_f64());
    RunResult {
        r#type: "result",
        connections: clients.connections,
        server_connections: served.as_ref().map(|s| s.connections),
        errors: clients.errors + served.as_ref().map_or(0, |s| s.errors),
        last_error: clients.last_error.or(served.and_then(|s| s.last_error)),
        seconds,
        conn_per_s: if seconds > 0.0 {
            clients.connections as f64 / seconds
        } else {
            0.0
        },
        target_rate: args.rate,
        max_lag_ms: clients.max_lag.as_secs_f64() * 1e3,
        cpu_user_s: user,
        cpu_sys_s: sys,
        cpu_us_per_conn: per_conn(user + sys),
        threads: args.threads,
        ports,
        close: match args.close {
            CloseArg::Normal => "normal",
            CloseArg::Rst => "rst",
        },
        netns,
        tcp,
    }
}

/// `serve`: listen, say where, serve until stdin closes or the duration ends.
fn serve(args: &ServerArgs, exchange: ExchangeArgs, duration: Option<f64>) -> Result<()> {
    let server = Server::start(
        args.listen,
        args.ports,
        args.server_threads,
        exchange.into(),
    )?;
    print_json(
        &serde_json::json!({ "type": "listening", "address": args.listen, "ports": server.ports() }),
    )?;
    let started = Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to EOF: the controlling process closes stdin to stop the server.
        let _ = io::stdin().lock().lines().count();
        let _ = done_tx.send(());
    });
    match duration {
        Some(seconds) => {
            let _ = done_rx.recv_timeout(Duration::from_secs_f64(seconds.max(0.0)));
        }
        None => {
            let _ = done_rx.recv();
        }
    }
    let served = server.stop();
    print_json(&serde_json::json!({
        "type": "served",
        "connections": served.connections,
        "errors": served.errors,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}
