//! The agent's HTTP server (axum): each route turns a request into a fresh [`Scrape`] from the
//! event loop and hands it to its exporter (metrics, the JSON report, the pprof profile);
//! `/healthz` and `/readyz` answer without it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Scrape, ScrapeRequest, api,
    metrics::{self, Format, MetricsConfig},
};

/// How long a request waits for the event loop's answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub requests: mpsc::Sender<ScrapeRequest>,
    /// Probes attached and the first socket inventory applied.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<MetricsConfig>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/api/v1/report", get(report))
        .route("/debug/pprof/connections", get(pprof_connections))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the probes are attaching or the first socket inventory is not taken yet\n")
            .into_response()
    }
}

async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let scrape = match fresh_scrape(&state).await {
        Ok(scrape) => scrape,
        Err(response) => return response,
    };
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()));
    match metrics::render(scrape, &state.metrics, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response(),
    }
}

async fn report(State(state): State<AppState>, Query(params): Query<Vec<(String, String)>>) -> Response {
    let report = match filtered_report(&state, &params).await {
        Ok(report) => report,
        Err(response) => return response,
    };
    match serde_json::to_string(&report) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the report failed: {err}\n")).into_response(),
    }
}

/// The pprof profile of live connections by stack, narrowed by the report API's parameters:
/// `go tool pprof http://HOST:PORT/debug/pprof/connections`.
async fn pprof_connections(State(state): State<AppState>, Query(params): Query<Vec<(String, String)>>) -> Response {
    let report = match filtered_report(&state, &params).await {
        Ok(report) => report,
        Err(response) => return response,
    };
    let profile = crate::export::pprof::encode(&report, std::time::SystemTime::now());
    ([(header::CONTENT_TYPE, "application/octet-stream")], profile).into_response()
}

/// A fresh report narrowed by the report API's parameters; a 400 for a bad parameter, a 503
/// when the event loop cannot answer.
async fn filtered_report(state: &AppState, params: &[(String, String)]) -> Result<crate::report::Report, Response> {
    let filter = api::ReportFilter::parse(params).map_err(|err| (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response())?;
    let scrape = fresh_scrape(state).await?;
    Ok(filter.apply(&scrape.report))
}

/// Asks the event loop for a scrape; a 503 when it is stopping or does not answer in time.
async fn fresh_scrape(state: &AppState) -> Result<Arc<Scrape>, Response> {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why + "\n").into_response();
    let (reply, answer) = oneshot::channel();
    if state.requests.send(reply).await.is_err() {
        return Err(unavailable("the agent is stopping".into()));
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, answer).await {
        Ok(Ok(Ok(scrape))) => Ok(scrape),
        Ok(Ok(Err(err))) => Err(unavailable(err)),
        Ok(Err(_)) => Err(unavailable("the agent is stopping".into())),
        Err(_) => Err(unavailable(format!("the event loop did not answer within {SCRAPE_TIMEOUT:?}"))),
    }
}
