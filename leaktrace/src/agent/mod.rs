//! `leaktrace agent`: the live view's probes and tracker on a node, without a terminal, read
//! over HTTP. The sensor (the shared [`Live`] session) does not know who reads it: each request
//! for `/metrics` or `/api/v1/report` asks the event loop for a fresh [`Scrape`] over a channel,
//! so values are computed from the tracker when they are read, and nothing is counted per event
//! for them. The exporters ([`metrics`], [`api`]) are small modules over that one type.
//!
//! Bad moments do not stop it: a socket inventory that fails is logged and counted, events the
//! ring buffer could not hold are counted by the kernel and exported, a process gone before its
//! capture keeps raw addresses. SIGTERM or Ctrl-C detach the probes and log the final counters.
pub mod api;
mod http;
pub mod metrics;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    cli::{AgentArgs, positive},
    commands::{
        events::report_counters,
        live::{Live, LiveOptions, Stepped},
    },
    report::Report,
    symbolize::SymbolizerStats,
};
use metrics::MetricsConfig;

/// How often the agent looks at its call sites when nobody asks: quiet ones are forgotten, and
/// (unless `--go-ancestry off`) goroutine ancestry is attached where a report shows the need,
/// as the live view does at each refresh.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What one request sees: the report now, and leaktrace's own health.
#[derive(Debug)]
pub struct Scrape {
    pub report: Report,
    pub health: Health,
    /// Processes that have exited with nothing live left: the tracker keeps their call sites
    /// a while (the report shows them), the metrics drop their series at once.
    pub ended: BTreeSet<u32>,
}

/// leaktrace's own state, beside the report's kernel and tracker counters.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Entries of the kernel socket map (`None` when it could not be read).
    pub kernel_tracked_sockets: Option<u64>,
    pub max_sockets: u32,
    /// Connections the tracker follows, traced and born before start.
    pub tracker_connections: u64,
    pub symbolizer: SymbolizerStats,
    pub inventories_taken: u64,
    pub inventories_failed: u64,
}

/// A request from the HTTP side to the event loop.
type ScrapeRequest = oneshot::Sender<Result<Arc<Scrape>, String>>;

pub async fn run(args: &AgentArgs) -> anyhow::Result<bool> {
    let metrics = MetricsConfig::new(args.metrics_top, &args.metrics_drop_labels)?;
    let inventory_interval = positive("inventory-interval", args.inventory_interval)?;
    // Listen first: a port in use is a plain error, before any probe is loaded.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there (in use, or not an address of this host)", args.listen))?;
    let mut live = Live::start(&LiveOptions {
        trace: &args.trace,
        judge: &args.judge,
        limits: &args.limits,
        go: &args.go,
        containers: &args.containers,
        record: None,
        seed: !args.no_seed,
        inventory_interval,
    })
    .await?;

    let (requests, mut scrapes) = mpsc::channel::<ScrapeRequest>(16);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let router = http::router(http::AppState { requests, ready: Arc::clone(&ready), metrics: Arc::new(metrics) });
    let address = listener.local_addr().context("reading the listening address")?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = server_stopped.await;
        })
        .await
    });
    log::info!("agent: serving /metrics, /api/v1/report, /healthz and /readyz on http://{address}");

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut maintain = tokio::time::interval_at(tokio::time::Instant::now() + MAINTAIN_EVERY, MAINTAIN_EVERY);
    loop {
        tokio::select! {
            stepped = live.step() => match stepped? {
                Stepped::Events => {}
                Stepped::Inventory => {
                    if !ready.swap(true, Ordering::Relaxed) {
                        log::info!("agent: ready (probes attached, first socket inventory taken)");
                    }
                }
                Stepped::InventoryFailed(err) => {
                    // Said once, then every 30th time: a failure that persists does not flood the log.
                    let (_, failed) = live.inventories();
                    if failed % 30 == 1 {
                        log::warn!("agent: socket inventory failed ({failed} so far), trying again later: {err:#}");
                    } else {
                        log::debug!("agent: socket inventory failed: {err:#}");
                    }
                }
            },
            Some(reply) = scrapes.recv() => {
                let scrape = scrape(&mut live).map(Arc::new).map_err(|err| format!("{err:#}"));
                if let Err(err) = &scrape {
                    log::warn!("agent: cannot build the report for a request: {err}");
                }
                let _ = reply.send(scrape);
            }
            _ = maintain.tick() => {
                if live.go_ancestry_wanted() {
                    if let Err(err) = live.report() {
                        log::warn!("agent: cannot build the periodic report: {err:#}");
                    }
                } else {
                    live.expire();
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }

    log::info!("agent: stopping");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_server.send(());
    // Requests in flight wait on the event loop, which is stopping: answer them with an error.
    scrapes.close();
    while let Ok(reply) = scrapes.try_recv() {
        let _ = reply.send(Err("the agent is stopping".into()));
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(err))) => log::warn!("agent: the HTTP server ended with an error: {err}"),
        Ok(_) => {}
        Err(_) => log::warn!("agent: requests still open after {SHUTDOWN_GRACE:?}; not waiting for them"),
    }
    let (report, counters) = live.finish()?;
    log::info!(
        "agent: {} call sites, {} live connections, {} leak(s) at the end",
        report.call_sites.len(),
        report.call_sites.iter().map(|site| site.live).sum::<u64>(),
        report.leaks()
    );
    report_counters(&counters);
    Ok(false)
}

/// The report and the health figures, now.
fn scrape(live: &mut Live) -> anyhow::Result<Scrape> {
    let report = live.report()?;
    let kernel_tracked_sockets = match live.tracer().tracked_sockets() {
        Ok(count) => Some(count),
        Err(err) => {
            log::debug!("agent: {err}");
            None
        }
    };
    let (inventories_taken, inventories_failed) = live.inventories();
    let health = Health {
        kernel_tracked_sockets,
        max_sockets: live.tracer_options().max_sockets,
        tracker_connections: live.tracker().live_connections() as u64,
        symbolizer: live.symbolizer().stats(),
        inventories_taken,
        inventories_failed,
    };
    let ended = report
        .processes
        .iter()
        .filter(|process| process.live == 0 && !Path::new(&format!("/proc/{}", process.pid)).exists())
        .map(|process| process.pid)
        .collect();
    Ok(Scrape { report, health, ended })
}
