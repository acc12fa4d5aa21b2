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

/// The endpoints' runtime; dropping it stops the server and the signal handling.
#[derive(Debug)]
pub struct Server {
    runtime: tokio::runtime::Runtime,
}

impl Server {
    /// Starts the runtime and installs the SIGTERM, SIGINT and SIGHUP handlers before it returns:
    /// the service calls it first thing, so that from then on SIGTERM is a clean stop (the
    /// service loop sees `shutdown`), never the default action's death, even during start-up.
    pub fn start(health: Arc<Health>) -> Result<Server, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tripline-http")
            .enable_all()
            .build()
            .or_fail(Kind::Usage, "cannot start the HTTP runtime")?;
        let handlers = runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        });
        let (term, int, hup) = match handlers {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(Error::new(Kind::Usage, format!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}")))
            }
        };
        runtime.spawn(signals(health, term, int, hup));
        Ok(Server { runtime })
    }

    /// Binds `addr` and serves the endpoints in the background.
    pub fn serve(&self, addr: &str, health: Arc<Health>, metrics: Arc<Metrics>) -> Result<(), Error> {
        let addr: SocketAddr = addr
            .parse()
            .or_fail_with(Kind::Usage, || format!("service.http_addr `{addr}` is not an address (host:port)"))?;
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .or_fail_with(Kind::Usage, || format!("cannot listen on {addr} (service.http_addr)"))?;
        let bound = listener.local_addr().or_fail(Kind::Usage, "the HTTP listener's address")?;
        let probes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(health);
        let app = probes.merge(Router::new().route("/metrics", get(serve_metrics)).with_state(metrics));
        self.runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("HTTP server: {e}");
            }
        });
        tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
        Ok(())
    }
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

async fn signals(
    health: Arc<Health>,
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    mut hup: tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
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
