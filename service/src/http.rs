//! The service's HTTP endpoints, on a small tokio runtime of their own: `/healthz` (the
//! processing loop turned within the last 30 s) and `/readyz` (every assigned partition's state
//! is restored). The same runtime turns SIGTERM and SIGINT into a shutdown request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::run::{now_ms, Health};

/// The loop is alive when it turned within this many ms.
const ALIVE_WITHIN_MS: i64 = 30_000;

/// A running server; dropping it stops the runtime.
#[derive(Debug)]
pub struct Server {
    _runtime: tokio::runtime::Runtime,
}

/// Binds `addr` and serves in the background.
pub fn start(addr: &str, health: Arc<Health>) -> Result<Server, String> {
    let addr: SocketAddr =
        addr.parse().map_err(|e| format!("service.http_addr `{addr}` is not an address (host:port): {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tripline-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| format!("cannot listen on {addr} (service.http_addr): {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health.clone());
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server: {e}");
        }
    });
    runtime.spawn(signals(health));
    tracing::info!(addr = %bound, "serving /healthz and /readyz");
    Ok(Server { _runtime: runtime })
}

async fn healthz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if now_ms() - h.alive_ms.load(Ordering::Relaxed) <= ALIVE_WITHIN_MS {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the processing loop is stuck\n")
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "restoring state or joining the group\n")
    }
}

async fn signals(health: Arc<Health>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot handle SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    health.shutdown.store(true, Ordering::Relaxed);
}
