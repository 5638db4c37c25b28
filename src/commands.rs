//! The commands that talk to RabbitMQ: `topology`, `enqueue`, `worker`, `send`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::batch::CampaignId;
use crate::broker::{Broker, QueueNames, redact};
use crate::channel::email::EmailSender;
use crate::channel::push::PushSender;
use crate::cli::{CampaignAction, CampaignArgs, InvalidInput, PreviewArgs, StatusArgs, WorkerArgs};
use crate::config::Config;
use crate::daemon::{self, Readiness, Until};
use crate::enqueue::{self, Options, Plan};
use crate::exporter::Exporter;
use crate::ledger::{Campaign, CampaignState, Ledger};
use crate::limit::Limits;
use crate::preview;
use crate::worker::{Deps, Report, RetryPolicy};

/// How often the keyed per-domain limiter forgets idle domains.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

fn queue_names(config: &Config) -> QueueNames {
    QueueNames::new(&config.broker.queue, &config.worker.retry_delays_ms)
}

async fn connect(config: &Config) -> anyhow::Result<Broker> {
    Broker::connect(&config.broker, queue_names(config))
        .await
        .with_context(|| {
            format!(
                "Failed to connect to RabbitMQ at {}",
                redact(&config.broker.url)
            )
        })
}

/// `sunset topology`.
pub async fn topology(config: &Config) -> anyhow::Result<()> {
    let broker = connect(config).await?;
    for queue in broker.names().all() {
        println!("declared {queue}");
    }
    broker.close().await;
    Ok(())
}

fn options(args: &CampaignArgs) -> Options {
    Options {
        campaign_id: args.campaign_id.clone(),
        template: args.template.clone(),
        audience: args.audience.clone(),
        channels: args.channels.clone(),
        vars: args.vars.clone(),
        batch_size: args.batch_size,
        deadline: args.deadline.clone(),
        skip_invalid: args.skip_invalid,
    }
}

/// Validates, then (unless `--dry-run`) publishes; `None` on a dry run.
async fn enqueue_plan(config: &Config, args: &CampaignArgs) -> anyhow::Result<Option<Plan>> {
    let plan = enqueue::prepare(config, &options(args))?;
    if args.dry_run {
        println!(
            "dry run: campaign {} would be {} recipients in {} batches, {} rejected; nothing published",
            plan.campaign,
            plan.recipients,
            plan.batches(),
            plan.rejected
        );
        return Ok(None);
    }
    if let Some(ledger) = open_ledger(config)? {
        let recorded = ledger
            .record_campaign(&Campaign {
                id: plan.campaign.clone(),
                template: plan.template.to_string(),
                recipients: plan.recipients,
                deadline: plan.deadline,
                totals: plan.totals.clone(),
            })
            .await
            .with_context(|| {
                format!(
                    "Failed to record campaign {} in the ledger at {}; nothing was published",
                    plan.campaign,
                    ledger.url()
                )
            });
        ledger.close().await;
        recorded?;
    }
    let broker = connect(config).await?;
    let summary = enqueue::publish(&broker, &plan).await;
    broker.close().await;
    println!("enqueued campaign {}: {}", plan.campaign, summary?);
    Ok(Some(plan))
}

/// `sunset enqueue`.
pub async fn enqueue(config: &Config, args: &CampaignArgs) -> anyhow::Result<()> {
    enqueue_plan(config, args).await.map(drop)
}

/// The ledger of `ledger.url`, or `None` when it is empty (sending without a ledger).
fn open_ledger(config: &Config) -> anyhow::Result<Option<Arc<Ledger>>> {
    let url = config.ledger.url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    Ledger::open(url)
        .map(Some)
        .context("Failed to open the delivery ledger (ledger.url)")
}

/// The ledger, required: `status` and `campaign` have nothing to work on without it.
fn require_ledger(config: &Config) -> anyhow::Result<Arc<Ledger>> {
    open_ledger(config)?.ok_or_else(|| {
        InvalidInput("ledger.url is empty: this command needs the delivery ledger".into()).into()
    })
}

fn campaign_id(id: &str) -> anyhow::Result<CampaignId> {
    CampaignId::parse(id).map_err(|e| InvalidInput(format!("campaign id: {e}")).into())
}

/// `sunset status`.
pub async fn status(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let campaign = campaign_id(&args.campaign)?;
    let ledger = require_ledger(config)?;
    let status = ledger
        .status(&campaign)
        .await
        .with_context(|| format!("Failed to read the ledger at {}", ledger.url()));
    ledger.close().await;
    let status = status?;
    if args.json {
        println!("{}", status.json());
    } else {
        print!("{status}");
    }
    Ok(())
}

/// `sunset campaign pause|resume|cancel`.
pub async fn campaign(config: &Config, action: &CampaignAction) -> anyhow::Result<()> {
    let (id, state) = match action {
        CampaignAction::Pause { id } => (id, CampaignState::Paused),
        CampaignAction::Resume { id } => (id, CampaignState::Running),
        CampaignAction::Cancel { id } => (id, CampaignState::Cancelled),
    };
    let campaign = campaign_id(id)?;
    let ledger = require_ledger(config)?;
    let changed = ledger.set_state(&campaign, state).await.with_context(|| {
        format!(
            "Failed to change campaign {campaign} in the ledger at {}",
            ledger.url()
        )
    });
    ledger.close().await;
    changed?;
    println!("campaign {campaign}: {}", state.as_str());
    Ok(())
}

fn deps(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Deps<EmailSender, PushSender>>> {
    let email =
        EmailSender::from_config(&config.email).context("Failed to set up the email channel")?;
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
    Ok(Arc::new(match open_ledger(config)? {
        Some(ledger) => deps.with_ledger(ledger),
        None => deps,
    }))
}

/// Runs the daemon with signals wired to shutdown, serving `exporter` (if metrics are on) until
/// the daemon has settled its batches (on shutdown: sends in flight for at most
/// `worker.shutdown_timeout_ms`, the rest handed back).
async fn work(config: &Config, until: Until, exporter: Option<Exporter>) -> anyhow::Result<Report> {
    // After the exporter installed the recorder: the limits report their domains' rates.
    let shutdown = CancellationToken::new();
    let deps = deps(config, &shutdown)?;
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let readiness = Readiness::default();
    let stop_exporter = CancellationToken::new();
    let exporter =
        exporter.map(|exporter| exporter.spawn(readiness.clone(), stop_exporter.clone()));
    let pruner = deps.limits.spawn_pruner(PRUNE_EVERY, shutdown.clone());
    let ledger = deps.ledger().cloned();
    if let Some(ledger) = &ledger {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = ledger.warm_up() => {}
        }
    }
    let heartbeat = ledger.as_ref().map(|l| l.spawn_heartbeat(shutdown.clone()));
    let report = daemon::run(
        &config.broker,
        queue_names(config),
        deps,
        until,
        shutdown.clone(),
        &readiness,
    )
    .await;
    shutdown.cancel();
    stop_exporter.cancel();
    if let Some(exporter) = exporter {
        let _ = exporter.await;
    }
    let _ = pruner.await;
    if let Some(heartbeat) = heartbeat {
        let _ = heartbeat.await;
    }
    if let Some(ledger) = ledger {
        ledger.close().await;
    }
    report
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    info!("shutdown requested: handing back sends not started, finishing those in flight");
    shutdown.cancel();
}

/// `sunset preview --serve`, until SIGTERM or SIGINT.
pub async fn preview_serve(config: &Config, args: &PreviewArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    preview::serve::run(config, args, shutdown).await
}

/// `sunset worker`.
pub async fn worker(config: &Config, args: &WorkerArgs) -> anyhow::Result<()> {
    let until = if args.exit_when_idle {
        Until::Idle
    } else {
        Until::Shutdown
    };
    let exporter = Exporter::bind(&config.metrics).await?;
    let report = work(config, until, exporter).await?;
    info!(batches = report.batches, "worker stopped");
    Ok(())
}

/// `sunset send`.
pub async fn send(config: &Config, args: &CampaignArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Bound before anything is published: a port in use stops the command with nothing sent.
    let exporter = if args.dry_run {
        None
    } else {
        Exporter::bind(&config.metrics).await?
    };
    let Some(plan) = enqueue_plan(config, args).await? else {
        return Ok(());
    };
    let until = Until::CampaignDone {
        campaign: plan.campaign.clone(),
        batches: plan.batches(),
    };
    let report = work(config, until, exporter).await?;
    print!("{}", summary(&plan.campaign, &report, started.elapsed()));
    Ok(())
}

/// The end-of-campaign table: per channel and locale, then totals and the rate.
pub fn summary(campaign: &CampaignId, report: &Report, elapsed: Duration) -> String {
    let mut out = format!("campaign {campaign}: {} batches\n", report.batches);
    out.push_str(&format!(
        "{:<8} {:<8} {:>10} {:>8}\n",
        "channel", "locale", "delivered", "failed"
    ));
    for ((channel, locale), counts) in &report.counts {
        out.push_str(&format!(
            "{channel:<8} {locale:<8} {:>10} {:>8}\n",
            counts.delivered, counts.failed
        ));
    }
    let delivered: u64 = report.counts.values().map(|c| c.delivered).sum();
    let failed: u64 = report.counts.values().map(|c| c.failed).sum();
    let secs = elapsed.as_secs_f64();
    out.push_str(&format!(
        "total: {delivered} delivered, {failed} failed, {} without email, {secs:.1}s, {:.0} sends/s\n",
        report.no_email,
        if secs > 0.0 { delivered as f64 / secs } else { 0.0 }
    ));
    out
}
