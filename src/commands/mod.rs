//! The commands that talk to RabbitMQ or the ledger: `topology`, `enqueue`, `worker`, `send`,
//! `status`, `campaign`; and `dkim-record`, which reads the config's DKIM key(s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::batch::CampaignId;
use crate::broker::{self, Broker, Carrier, InProcess, Inbox};
use crate::campaign_list::CampaignList;
use crate::channel::email::{self, EmailSender};
use crate::channel::push::PushSender;
use crate::cli::{CampaignAction, CampaignArgs, PreviewArgs, StatusArgs, WorkerArgs};
use crate::config::Config;
use crate::daemon::{Live, Until};
use crate::enqueue::{self, Options, Plan};
use crate::exporter::Exporter;
use crate::invalid_input::InvalidInput;
use crate::ledger::{Campaign, CampaignState, Ledger};
use crate::preview;
use crate::progress::{self, Meter, Sample};
use crate::results::{self, Signal, Source, Unfinished, read_status};
use crate::secret::redact;
use crate::worker::Deps;

mod work;

use work::{Consume, cancel_on_signal, deps, open_ledger, queue_names, work};

async fn connect(config: &Config) -> anyhow::Result<Broker> {
    Broker::connect(&config.broker, queue_names(config))
        .await
        .with_context(|| {
            format!(
                "Failed to connect to RabbitMQ at {}",
                redact(&broker::url(&config.broker))
            )
        })
}

/// `sunset topology`.
pub async fn topology(config: &Config) -> anyhow::Result<()> {
    broker::refuse_in_process(&config.broker, "topology")?;
    let broker = connect(config).await?;
    for queue in broker.names().all() {
        crate::say!("declared {queue}")?;
    }
    broker.close().await;
    Ok(())
}

fn options(args: &CampaignArgs) -> Options {
    Options {
        campaign_id: args.campaign.clone(),
        template: args.template.clone(),
        audience: args.audience.clone(),
        channels: args.channels.clone(),
        vars: args.vars.clone(),
        delimiter: args.delimiter,
        batch_size: args.batch_size,
        deadline: args.deadline.clone(),
        skip_invalid: args.skip_invalid,
    }
}

/// Validates, then (unless `--dry-run`) publishes — to `in_process` when given, else to
/// RabbitMQ; `None` on a dry run.
async fn enqueue_plan(
    config: &Config,
    args: &CampaignArgs,
    in_process: Option<&InProcess>,
) -> anyhow::Result<Option<Plan>> {
    // Before the audience is read or the campaign recorded: a bad broker.url leaves nothing done.
    if let Some(url) = config.broker.url.as_deref().filter(|url| !url.is_empty()) {
        broker::check_url(url)?;
    }
    let plan = enqueue::prepare(config, &options(args))?;
    if args.dry_run {
        crate::say!(
            "dry run: campaign {} would be {} recipients in {} batches, {} rejected; nothing published",
            plan.campaign,
            plan.recipients,
            plan.batches(),
            plan.rejected
        )?;
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
    let summary = match in_process {
        Some(queue) => enqueue::publish(queue, &plan).await,
        None => {
            let broker = connect(config).await?;
            let summary = enqueue::publish(&broker, &plan).await;
            broker.close().await;
            summary
        }
    };
    crate::say!("enqueued campaign {}: {}", plan.campaign, summary?)?;
    Ok(Some(plan))
}

/// `sunset enqueue`.
pub async fn enqueue(config: &Config, args: &CampaignArgs) -> anyhow::Result<()> {
    if !args.dry_run {
        broker::require_rabbitmq(&config.broker, "enqueue").await?;
    }
    enqueue_plan(config, args, None).await.map(drop)
}

/// The ledger, required: `status` and `campaign` have nothing to work on without it.
pub(crate) fn require_ledger(config: &Config) -> anyhow::Result<Arc<Ledger>> {
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
    let shown = if args.watch {
        watch(&ledger, &campaign, Duration::from_millis(args.interval_ms)).await
    } else {
        match read_status(&ledger, &campaign).await {
            Ok(status) if args.json => crate::say!("{}", status.json()),
            Ok(status) => crate::stdout::print(format_args!("{status}")),
            Err(e) => Err(e),
        }
    };
    ledger.close().await;
    shown
}

/// `status --watch`: a line per channel every `interval` (redrawn on a terminal, printed one
/// look per line otherwise) until the campaign has nothing pending, or a signal.
async fn watch(ledger: &Ledger, campaign: &CampaignId, interval: Duration) -> anyhow::Result<()> {
    let terminal = progress::on_terminal();
    let mut meter = None;
    let mut tick = tokio::time::interval(interval);
    let stop = CancellationToken::new();
    let signal = tokio::spawn(cancel_on_signal(stop.clone()));
    let watched = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            _ = tick.tick() => {}
        }
        let status = match read_status(ledger, campaign).await {
            Ok(status) => status,
            Err(e) => break Some(Err(e)),
        };
        let samples: Vec<Sample> = status
            .channels()
            .into_iter()
            .map(|(channel, counts)| Sample {
                channel,
                done: counts.done(),
                total: counts.total,
            })
            .collect();
        let lines = meter
            .get_or_insert_with(|| Meter::new(status.deadline))
            .lines(&samples);
        if terminal {
            progress::draw(lines);
        } else {
            if let Err(e) = crate::say!("campaign {campaign}: {}", lines.join("; ")) {
                break Some(Err(e));
            }
        }
        if status.total().settled() {
            break Some(Ok(()));
        }
    };
    progress::keep();
    match watched {
        Some(watched) => {
            signal.abort();
            watched
        }
        None => {
            let signal = signal.await.unwrap_or(Signal::Interrupt);
            let what = format!("stopped watching campaign {campaign}");
            Err(Unfinished::Interrupted { signal, what }.into())
        }
    }
}

/// `sunset campaign list|pause|resume|cancel`.
pub async fn campaign(config: &Config, action: &CampaignAction) -> anyhow::Result<()> {
    let (which, state) = match action {
        CampaignAction::List { json } => return list_campaigns(config, *json).await,
        CampaignAction::Pause(which) => (which, CampaignState::Paused),
        CampaignAction::Resume(which) => (which, CampaignState::Running),
        CampaignAction::Cancel(which) => (which, CampaignState::Cancelled),
    };
    let campaign = campaign_id(which.id())?;
    let ledger = require_ledger(config)?;
    let changed = ledger.set_state(&campaign, state).await.with_context(|| {
        format!(
            "Failed to change campaign {campaign} in the ledger at {}",
            ledger.url()
        )
    });
    ledger.close().await;
    changed?;
    crate::say!("campaign {campaign}: {}", state.as_str())?;
    Ok(())
}

/// `sunset campaign list`.
async fn list_campaigns(config: &Config, json: bool) -> anyhow::Result<()> {
    let ledger = require_ledger(config)?;
    let listed = ledger.campaigns().await.with_context(|| {
        format!(
            "Failed to list the campaigns in the ledger at {}",
            ledger.url()
        )
    });
    ledger.close().await;
    let list = CampaignList(listed?);
    if json {
        crate::say!("{}", list.json())
    } else {
        crate::stdout::print(format_args!("{list}"))
    }
}

/// `sunset dkim-record`: one zone-file line per key of `email.dkim.key_file`.
pub fn dkim_record(config: &Config) -> anyhow::Result<()> {
    let signer = email::dkim_signer(&config.email)?.ok_or_else(|| {
        InvalidInput("email.dkim.key_file is not set: there is no DKIM key to publish".into())
    })?;
    for record in signer.dns_records() {
        crate::say!("{record}")?;
    }
    Ok(())
}

/// `sunset preview --serve`, until SIGTERM or SIGINT.
pub async fn preview_serve(config: &Config, args: &PreviewArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    preview::serve::run(config, args, shutdown).await
}

/// `sunset feedback`, until SIGTERM or SIGINT.
pub async fn feedback(config: &Config) -> anyhow::Result<()> {
    let ledger = require_ledger(config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let served = crate::feedback::run(config, Arc::clone(&ledger), shutdown).await;
    ledger.close().await;
    served
}

/// `sunset worker`.
pub async fn worker(config: &Config, args: &WorkerArgs) -> anyhow::Result<()> {
    broker::refuse_in_process(&config.broker, "worker")?;
    let until = if args.exit_when_idle {
        Until::Idle
    } else {
        Until::Shutdown
    };
    let exporter = Exporter::bind(&config.metrics).await?;
    // After the exporter installed the recorder: the limits report their domains' rates.
    let shutdown = CancellationToken::new();
    let deps = deps(config, &shutdown)?;
    let ledger = deps.ledger().cloned();
    let worked = work(
        config,
        (deps, shutdown),
        Consume::RabbitMq(until),
        exporter,
        &Live::default(),
    )
    .await;
    if let Some(ledger) = ledger {
        ledger.close().await;
    }
    info!(batches = worked?.report.batches, "worker stopped");
    Ok(())
}

/// `sunset send`: exits 0 only when every recipient was reached on every requested channel.
pub async fn send(config: &Config, args: &CampaignArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.dry_run {
        return enqueue_plan(config, args, None).await.map(drop);
    }
    let campaign =
        CampaignId::parse(&args.campaign).map_err(|e| InvalidInput(format!("--campaign: {e}")))?;
    let in_process = match broker::carrier(&config.broker).await {
        Carrier::RabbitMq => None,
        Carrier::InProcess { why } => {
            eprintln!(
                "{why}: running this campaign in-process; dead letters go to {}",
                config.broker.dead_letter_file.display()
            );
            Some(InProcess::new(&config.broker, &queue_names(config)))
        }
    };
    // Only when asked for: a one-box run needs no listener, and one beside a worker would take
    // its port. Bound before anything is published: a port in use stops the command with
    // nothing sent.
    let exporter = match config.metrics.listen {
        Some(_) => Exporter::bind(&config.metrics).await?,
        None => None,
    };
    // Set up before anything is published too: a bad email.url or push.url sends nothing.
    let shutdown = CancellationToken::new();
    let deps = deps(config, &shutdown)?;
    let ledger = deps.ledger().cloned();
    let sent = send_with(
        config,
        (args, &campaign),
        (deps, shutdown),
        in_process,
        exporter,
        started,
    )
    .await;
    if let Some(ledger) = ledger {
        ledger.close().await;
    }
    sent
}

/// `send` once its senders and ledger are set up: the campaign's numbers before, enqueue, work
/// (with the live lines on a terminal), then the table and how the command ends. The batches go
/// through RabbitMQ, or `in_process`, which holds all of them in memory until they are sent.
async fn send_with(
    config: &Config,
    (args, campaign): (&CampaignArgs, &CampaignId),
    deps: (Arc<Deps<EmailSender, PushSender>>, CancellationToken),
    in_process: Option<(Arc<InProcess>, Inbox)>,
    exporter: Option<Exporter>,
    started: Instant,
) -> anyhow::Result<()> {
    let ledger = deps.0.ledger().cloned();
    let before = match &ledger {
        Some(ledger) => results::before(ledger, campaign).await?,
        None => None,
    };
    let publish_to = in_process.as_ref().map(|(queue, _)| queue.as_ref());
    let Some(plan) = enqueue_plan(config, args, publish_to).await? else {
        return Ok(());
    };
    // In-process, the batches are gone with this process: the same command resumes.
    let resumed_by_send = ledger.is_some() || in_process.is_some();
    let consume = match in_process {
        Some((queue, inbox)) => Consume::InProcess(queue, inbox),
        None => Consume::RabbitMq(Until::CampaignDone {
            campaign: plan.campaign.clone(),
            batches: plan.batches(),
        }),
    };
    let live = Live::default();
    let done = CancellationToken::new();
    let working = async {
        let worked = work(config, deps, consume, exporter, &live).await;
        done.cancel();
        worked
    };
    let source = Source {
        ledger: ledger.as_deref(),
        before: before.as_ref(),
        plan: &plan,
    };
    let (worked, ()) = tokio::join!(working, source.draw_until(&live, &done));
    let worked = worked?;
    let results = source.results(&worked.report).await?;
    crate::stdout::print(format_args!(
        "{}",
        results.table(worked.report.batches, started.elapsed())
    ))?;
    if let Some(signal) = worked.stopped_by {
        let args: Vec<String> = std::env::args().collect();
        let resume = results::resume_command(&args, resumed_by_send);
        let what = format!("{results}; resume with: {resume}");
        return Err(Unfinished::Interrupted { signal, what }.into());
    }
    if results.not_reached() > 0 {
        return Err(Unfinished::NotReached {
            campaign: plan.campaign.clone(),
            results: Box::new(results),
        }
        .into());
    }
    Ok(())
}
