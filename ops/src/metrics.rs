//! Prometheus metrics over HTTP (`--metrics ADDR`): a small hyper server that answers
//! `GET /metrics` with the text encoding of a `prometheus_client` registry, and [`Gather`], a
//! collector that reads a program's own counters at each scrape (so libraries keep plain
//! atomics and snapshots, and only the binaries know Prometheus).
//!
//! The endpoint is off unless asked for. It is bounded like everything facing a network: at
//! most [`MAX_CONNECTIONS`] connections at once (more are closed at accept), a request's
//! headers must arrive within [`HEADER_TIMEOUT`], and a connection lasts at most
//! [`CONNECTION_TIMEOUT`]. Anything but `GET /metrics` gets 404 or 405.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Scrapers at once: Prometheus uses one connection per target; a few more allow a person with
/// curl beside it. More are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// A request's headers must arrive within this (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it does (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The content type of the OpenMetrics text encoding.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running metrics endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `registry` at `http://addr/metrics` until the returned handle is dropped. Warns when
/// `addr` is not a loopback address: the counters say who is registered and how much moves.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    if addr.ip().is_loopback() {
        info!(%addr, "metrics at http://{addr}/metrics");
    } else {
        warn!(%addr, "metrics at http://{addr}/metrics, reachable from other hosts: firewall it");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%from, "metrics: too many connections; closed");
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%from, error = %e, "metrics: connection ended"),
                    Err(_) => debug!(%from, "metrics: connection timed out"),
                }
                drop(permit);
            });
        }
    });
    Ok(MetricsServer { addr, task })
}

fn answer<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let status = |code: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = code;
        r
    };
    if req.uri().path() != "/metrics" {
        return status(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!(error = %e, "metrics: encoding failed");
        return status(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(text)));
    if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Adds `<prefix>_build_info{version, binary} 1` to `registry`.
pub fn register_build_info(registry: &mut Registry, binary: &'static str, version: &'static str) {
    let info =
        prometheus_client::metrics::info::Info::new(vec![("version", version), ("binary", binary)]);
    registry.register("build", "The running build", info);
}

/// A [`Collector`] that calls `f` at each scrape to emit constant metrics read from the
/// program's own counters and snapshots.
pub struct Gather<F>(pub F);

impl<F> std::fmt::Debug for Gather<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gather")
    }
}

impl<F> Collector for Gather<F>
where
    F: Fn(&mut Emit<'_>) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
{
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut emit = Emit { encoder };
        (self.0)(&mut emit)
    }
}

/// Labels of one series, e.g. `&[("reason", "timeout")]`.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Writes constant metrics during a scrape (see [`Gather`]). Names get the registry's prefix;
/// counters get `_total`.
pub struct Emit<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl std::fmt::Debug for Emit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emit")
    }
}

impl Emit<'_> {
    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        self.single(name, help, ConstCounter::new(value))
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
        self.single(name, help, ConstGauge::new(value))
    }

    /// One counter family: a series per label set.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels<'_>, u64)],
    ) -> Result<(), std::fmt::Error> {
        let series = series.iter().map(|(l, v)| (*l, ConstCounter::new(*v)));
        self.family(name, help, MetricType::Counter, series)
    }

    /// One gauge family: a series per label set.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels<'_>, i64)],
    ) -> Result<(), std::fmt::Error> {
        let series = series.iter().map(|(l, v)| (*l, ConstGauge::new(*v)));
        self.family(name, help, MetricType::Gauge, series)
    }

    fn single<M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> Result<(), std::fmt::Error> {
        let encoder = self
            .encoder
            .encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(encoder)
    }

    fn family<'l, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        series: impl Iterator<Item = (Labels<'l>, M)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, metric_type)?;
        for (labels, metric) in series {
            let labels: Vec<(&str, &str)> = labels.to_vec();
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Saturating conversion for gauges of counts.
pub fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_registry_and_the_gathered_metrics_and_nothing_else() {
        let mut registry = Registry::with_prefix("t");
        register_build_info(&mut registry, "test", "1.2.3");
        registry.register_collector(Box::new(Gather(|e: &mut Emit<'_>| {
            e.counter("hits", "Hits", 7)?;
            e.gauges("open", "Open by path", &[(&[("path", "direct")], 2)])
        })));
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let addr = server.local_addr();
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("t_hits_total 7"), "{ok}");
        assert!(ok.contains("t_open{path=\"direct\"} 2"), "{ok}");
        assert!(
            ok.contains("t_build_info{version=\"1.2.3\",binary=\"test\"} 1"),
            "{ok}"
        );
        let other = get(
            addr,
            "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let garbage = get(addr, "\x00\x01garbage\r\n\r\n").await;
        assert!(!garbage.contains("hits"), "{garbage}");
    }
}
