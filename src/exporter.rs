//! The operations listener on `metrics.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (the worker is consuming; open breakers named in the
//! body), served beside the worker.

use std::fmt::Write as _;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{MetricsConfig, WORKER_METRICS_LISTEN};
use crate::daemon::Readiness;
use crate::events;
use crate::invalid_input::InvalidInput;
use crate::logging::MaskedText;
use crate::worker::Breakers;

/// How often histogram samples are folded into their buckets between scrapes, so memory stays
/// flat when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Prometheus exposition format version the text follows.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound listener and the process's metrics recorder, ready to serve.
pub struct Exporter {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl Exporter {
    /// Binds `metrics.listen` ([`WORKER_METRICS_LISTEN`] when unset) and installs the metrics
    /// recorder for the whole process; `None` when the address is empty (metrics off: the
    /// counting macros then do nothing).
    ///
    /// An address that is not `host:port`, or one that cannot be bound (in use, not ours), is a
    /// usage error naming the key ([`InvalidInput`], exit 2): the fix is another address.
    pub async fn bind(config: &MetricsConfig) -> anyhow::Result<Option<Exporter>> {
        let listen = config
            .listen
            .as_deref()
            .unwrap_or(WORKER_METRICS_LISTEN)
            .trim();
        if listen.is_empty() {
            return Ok(None);
        }
        check_host_port("metrics.listen", listen)?;
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            InvalidInput(format!(
                "Failed to listen on {listen} (metrics.listen): {e}; set metrics.listen to a free \
                 host:port, or to \"\" for no metrics"
            ))
        })?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(events::SEND_SECONDS.into()),
                events::SEND_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(events::RATE_LIMIT_WAIT_SECONDS.into()),
                events::WAIT_BUCKETS,
            )?
            .install_recorder()
            .context("Failed to install the metrics recorder")?;
        events::describe();
        Ok(Some(Exporter { listener, handle }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled; `/readyz` answers from `readiness` and `breakers`.
    pub fn spawn(
        self,
        readiness: Readiness,
        breakers: Arc<Breakers>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        if let Ok(address) = self.local_addr() {
            tracing::info!(%address, "serving /metrics, /healthz and /readyz");
        }
        let app = Router::new()
            .route("/metrics", get(metrics).with_state(self.handle.clone()))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz).with_state((readiness, breakers)));
        let handle = self.handle;
        let upkeep = async move {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            loop {
                ticks.tick().await;
                handle.run_upkeep();
            }
        };
        let serve = axum::serve(self.listener, app).into_future();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                served = serve => if let Err(error) = served {
                    tracing::error!(%error, "the metrics listener failed");
                },
                _ = upkeep => {}
            }
        })
    }
}

/// `host:port` with a port number, before any attempt to bind it; `key` names the setting.
pub fn check_host_port(key: &str, listen: &str) -> Result<(), InvalidInput> {
    let valid = listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "{key} `{listen}` is not host:port (e.g. 127.0.0.1:9185, or 0.0.0.0:9185 for every interface)"
        )))
    }
}

async fn metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while consuming, 503 otherwise. An open breaker leaves the status alone — the worker
/// still sends on the other channel and holds the rest without loss — and adds a line
/// `breaker open: <channel> for <N> s: <cause>` per channel.
async fn readyz(
    State((readiness, breakers)): State<(Readiness, Arc<Breakers>)>,
) -> (StatusCode, String) {
    let (status, mut body) = if readiness.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not consuming from RabbitMQ\n".to_string(),
        )
    };
    for open in breakers.open() {
        let _ = writeln!(
            body,
            "breaker open: {} for {} s: {}",
            open.channel,
            open.open_for.as_secs(),
            MaskedText(&open.cause)
        );
    }
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_need_a_host_and_a_port() {
        for good in [
            "127.0.0.1:9185",
            "0.0.0.0:0",
            "[::1]:9185",
            "localhost:9185",
        ] {
            assert!(check_host_port("metrics.listen", good).is_ok(), "{good}");
        }
        for bad in [
            "9185",
            ":9185",
            "127.0.0.1",
            "127.0.0.1:http",
            "127.0.0.1:70000",
        ] {
            assert!(check_host_port("metrics.listen", bad).is_err(), "{bad}");
        }
    }
}
