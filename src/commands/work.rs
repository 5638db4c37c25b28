//! Running the daemon for `worker` and `send`: the senders, limits and ledger it needs, signals
//! wired to its shutdown, and the metrics, pruner and heartbeat beside it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::{InProcess, Inbox, QueueNames};
use crate::channel::email::EmailSender;
use crate::channel::push::PushSender;
use crate::config::Config;
use crate::daemon::{self, Live, Readiness, Until};
use crate::exporter::Exporter;
use crate::ledger::Ledger;
use crate::limit::Limits;
use crate::results::Signal;
use crate::token::TokenKey;
use crate::worker::{BreakerPolicy, Breakers, Deps, Report, RetryPolicy};

/// What the daemon consumes, and until when.
pub(super) enum Consume {
    /// RabbitMQ's work queue, until `Until` says.
    RabbitMq(Until),
    /// The in-process queue, until it has nothing left.
    InProcess(Arc<InProcess>, Inbox),
}

/// How often the keyed per-domain limiter forgets idle domains.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(super) fn queue_names(config: &Config) -> QueueNames {
    QueueNames::new(&config.broker.queue, &config.worker.retry_delays_ms)
}

/// The ledger of `ledger.url`, or `None` when it is empty (sending without a ledger).
pub(super) fn open_ledger(config: &Config) -> anyhow::Result<Option<Arc<Ledger>>> {
    let url = config.ledger.url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    Ledger::open(url)
        .map(Some)
        .context("Failed to open the delivery ledger (ledger.url)")
}

pub(super) fn deps(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Deps<EmailSender, PushSender>>> {
    let email = EmailSender::from_config(&config.email, &config.feedback)
        .context("Failed to set up the email channel")?;
    let push =
        PushSender::from_config(&config.push).context("Failed to set up the push channel")?;
    let deps = Deps::new(
        config.templates.dir.clone(),
        config.templates.default_locale.clone(),
        email,
        push,
        Arc::new(Limits::from_config(&config.rate)?),
        config.worker.concurrency,
        RetryPolicy {
            max_attempts: config.worker.max_attempts,
            delays: config
                .worker
                .retry_delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        },
    )
    .with_shutdown(
        shutdown.clone(),
        Duration::from_millis(config.worker.shutdown_timeout_ms),
    );
    let breakers = Arc::new(Breakers::new(BreakerPolicy::from_config(&config.worker)?));
    let deps = deps.with_breakers(breakers);
    Ok(Arc::new(match open_ledger(config)? {
        Some(ledger) => {
            // Each email row keeps its feedback token, for `sunset feedback` to look up.
            if !config.feedback.secret_file.as_os_str().is_empty() {
                ledger.use_token_key(TokenKey::load(&config.feedback.secret_file)?);
            }
            deps.with_ledger(ledger)
        }
        None => deps,
    }))
}

/// What a run of the daemon came to.
pub(super) struct Worked {
    /// What this process processed.
    pub(super) report: Report,
    /// The signal that stopped it, if one did.
    pub(super) stopped_by: Option<Signal>,
}

/// Runs the daemon on what `consume` names with signals wired to shutdown,
/// serving `exporter` (if metrics are on) until the daemon has settled its batches (on
/// shutdown: sends in flight for at most `worker.shutdown_timeout_ms`, the rest handed back);
/// `live` shows what it has processed so far. `shutdown` is the token `deps` was built with.
/// The caller closes the ledger.
pub(super) async fn work(
    config: &Config,
    (deps, shutdown): (Arc<Deps<EmailSender, PushSender>>, CancellationToken),
    consume: Consume,
    exporter: Option<Exporter>,
    live: &Live,
) -> anyhow::Result<Worked> {
    let signal = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let readiness = Readiness::default();
    let stop_exporter = CancellationToken::new();
    let exporter = exporter.map(|exporter| {
        exporter.spawn(
            readiness.clone(),
            Arc::clone(deps.breakers()),
            stop_exporter.clone(),
        )
    });
    let pruner = deps.limits.spawn_pruner(PRUNE_EVERY, shutdown.clone());
    let ledger = deps.ledger().cloned();
    if let Some(ledger) = &ledger {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = ledger.warm_up() => {}
        }
    }
    let heartbeat = ledger.as_ref().map(|l| l.spawn_heartbeat(shutdown.clone()));
    let report = match consume {
        Consume::InProcess(queue, inbox) => {
            let prefetch = config.broker.prefetch;
            let queue = (queue, inbox);
            daemon::run_in_process(queue, prefetch, deps, shutdown.clone(), live).await
        }
        Consume::RabbitMq(until) => {
            let names = queue_names(config);
            let (broker, stop) = (&config.broker, shutdown.clone());
            daemon::run(broker, names, deps, until, stop, &readiness, live).await
        }
    };
    // Only the signal handler cancels `shutdown` before the daemon returns.
    let stopped_by = if shutdown.is_cancelled() {
        signal.await.ok()
    } else {
        signal.abort();
        None
    };
    shutdown.cancel();
    stop_exporter.cancel();
    if let Some(exporter) = exporter {
        let _ = exporter.await;
    }
    let _ = pruner.await;
    if let Some(heartbeat) = heartbeat {
        let _ = heartbeat.await;
    }
    Ok(Worked {
        report: report?,
        stopped_by,
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT and returns which. Listens from the call on, not
/// from the first poll: a signal that comes just after the future is spawned is not missed.
pub(super) fn cancel_on_signal(
    shutdown: CancellationToken,
) -> impl Future<Output = Signal> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    let received = |listener: std::io::Result<tokio::signal::unix::Signal>| async move {
        match listener {
            Ok(mut listener) => {
                listener.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    async move {
        let signal = tokio::select! {
            _ = received(interrupt) => Signal::Interrupt,
            _ = received(terminate) => Signal::Terminate,
        };
        info!(%signal, "shutdown requested: handing back sends not started, finishing those in flight");
        shutdown.cancel();
        signal
    }
}
