//! What `teacher-server` and `student-trainer` expose to operators over plain HTTP on
//! `--metrics-listen ADDR` (off by default):
//!
//! - `GET /metrics`: every metric of the process's [`Registry`] in the Prometheus text exposition
//!   format (version 0.0.4). Counters are counters (`*_total`), never rates: Prometheus derives
//!   rates with `rate()`.
//! - `GET /readyz`: `200 ready` while the process takes work, `503 not ready: REASON` otherwise
//!   (a teacher loading its model or draining on SIGTERM). Plain HTTP on purpose: the kubelet's
//!   gRPC probe sends no client certificate, so under mTLS it cannot probe the gRPC port.
//! - `GET /livez`: `200 alive` while the process answers at all.
//!
//! A scrape only reads atomics (the `prometheus` crate's counters, gauges and histograms) and
//! runs on its own tasks: it never waits for a forward pass or a training step.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use prometheus;

/// Whether the process takes work now: `Ok(())`, or `Err(reason)` (e.g. `loading the model`).
/// Called on every `GET /readyz`; it must not block.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A readiness that is always ready (a process without a loading phase).
pub fn always_ready() -> Readiness {
    Arc::new(|| Ok(()))
}

/// The HTTP endpoint serving `/metrics`, `/readyz` and `/livez`; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `registry` and `readiness` on the
    /// current tokio runtime until the returned handle is dropped.
    ///
    /// # Errors
    /// The bind error, with the address in its message.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding --metrics-listen {addr}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let app = router(registry, readiness);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, %addr, "the metrics endpoint stopped");
            }
        });
        tracing::info!(%addr, "metrics and readiness on http://{addr}/metrics and /readyz");
        Ok(MetricsServer { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_text(&registry) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route("/livez", get(|| async { "alive\n" }))
}

/// `registry` in the Prometheus text format, as a `/metrics` response.
fn metrics_text(registry: &Registry) -> impl IntoResponse + use<> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            format!("encoding metrics: {e}\n").into_bytes(),
        ),
    }
}

/// Histogram buckets in seconds for latencies from 100 µs to about 50 s (doubling).
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-4, 2.0, 20).unwrap_or_default()
}

/// Histogram buckets for batch sizes in samples: 1, 2, 4, ... up to `max` (and `max` itself).
pub fn size_buckets(max: usize) -> Vec<f64> {
    let mut b = Vec::new();
    let mut v = 1usize;
    while v < max {
        b.push(v as f64);
        v *= 2;
    }
    b.push(max.max(1) as f64);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, Opts};
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (code, body)
    }

    #[tokio::test]
    async fn metrics_parse_as_prometheus_text_and_readiness_follows_its_function() {
        let registry = Registry::new();
        let c = IntCounter::with_opts(Opts::new("things_total", "Things done.")).unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            if r.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("loading the model".into())
            }
        });
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry, readiness)
            .await
            .unwrap();
        let (code, body) = get(server.addr(), "/metrics").await;
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == "things_total")
            .unwrap();
        assert!(matches!(s.value, prometheus_parse::Value::Counter(v) if v == 3.0));
        let (code, body) = get(server.addr(), "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (503, "not ready: loading the model\n")
        );
        ready.store(true, Ordering::Release);
        assert_eq!(get(server.addr(), "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(server.addr(), "/livez").await.0, 200);
        assert_eq!(get(server.addr(), "/nope").await.0, 404);
    }

    #[test]
    fn size_buckets_double_up_to_the_maximum() {
        assert_eq!(size_buckets(10), vec![1.0, 2.0, 4.0, 8.0, 10.0]);
        assert_eq!(size_buckets(1), vec![1.0]);
        let l = latency_buckets();
        assert_eq!(l.len(), 20);
        assert!(l[0] == 1e-4 && l[19] > 50.0);
    }
}
