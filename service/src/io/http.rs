//! The service's HTTP endpoints, on a small tokio runtime of their own: `/healthz` (the
//! processing loop turned within the last 30 s), `/readyz` (every assigned partition's state
//! is restored) and `/metrics` (Prometheus's text format; see [`crate::obs::metrics`]). The same
//! runtime turns SIGTERM and SIGINT into a shutdown request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Kind, ResultExt};
use crate::obs::metrics::Metrics;
use crate::obs::now_ms;

/// The loop is alive when it turned within this many ms.
const ALIVE_WITHIN_MS: i64 = 30_000;

/// Process-wide flags shared by the service loop, the HTTP server and the signal handler.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once every assigned partition's state is restored; cleared during rebalances.
    pub ready: AtomicBool,
    /// SIGTERM/SIGINT seen: finish the transaction and leave.
    pub shutdown: AtomicBool,
    /// Wall-clock ms of the loop's last turn (liveness).
    pub alive_ms: AtomicI64,
    /// SIGHUP seen: compile the pattern files again and activate them.
    pub reload: AtomicBool,
}

/// A running server; dropping it stops the runtime.
#[derive(Debug)]
pub struct Server {
    _runtime: tokio::runtime::Runtime,
}

/// Binds `addr` and serves in the background.
pub fn start(addr: &str, health: Arc<Health>, metrics: Arc<Metrics>) -> Result<Server, Error> {
    let addr: SocketAddr = addr
        .parse()
        .or_fail_with(Kind::Usage, || format!("service.http_addr `{addr}` is not an address (host:port)"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tripline-http")
        .enable_all()
        .build()
        .or_fail(Kind::Usage, "cannot start the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .or_fail_with(Kind::Usage, || format!("cannot listen on {addr} (service.http_addr)"))?;
    let bound = listener.local_addr().or_fail(Kind::Usage, "the HTTP listener's address")?;
    let probes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health.clone());
    let app = probes.merge(Router::new().route("/metrics", get(serve_metrics)).with_state(metrics));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server: {e}");
        }
    });
    runtime.spawn(signals(health));
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
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

async fn serve_metrics(State(m): State<Arc<Metrics>>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

async fn signals(health: Arc<Health>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot handle SIGTERM/SIGHUP: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the patterns");
                health.reload.store(true, Ordering::Relaxed);
                continue;
            }
        }
        health.shutdown.store(true, Ordering::Relaxed);
        return;
    }
}
