//! `sunset dlq`: list, replay and purge dead letters, leaving every message it does not remove
//! in the dead-letter queue as it was and in its place (the queue is read by holding it:
//! [`crate::broker::Hold`]).

mod filter;
mod letter;
mod list;
mod purge;
mod replay;
#[cfg(test)]
mod samples;
mod table;

use anyhow::Context as _;

pub use filter::Filter;

use crate::broker::{self, Broker, QueueNames};
use crate::cli::DlqAction;
use crate::config::Config;
use crate::secret::redact;

/// Runs `sunset dlq <action>`.
pub async fn run(config: &Config, action: &DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { campaign, json } => {
            let filter = Filter::parse(campaign.as_deref())?;
            let listed = with_broker(config, async |broker| {
                list::list(broker, &filter, *json).await
            })
            .await?;
            crate::stdout::print(format_args!("{listed}"))?;
            Ok(())
        }
        DlqAction::Replay {
            campaign,
            limit,
            dry_run,
            include_unknown,
        } => {
            let filter = Filter::parse(campaign.as_deref())?;
            with_broker(config, async |broker| {
                replay::replay(broker, &filter, *limit, *dry_run, *include_unknown).await
            })
            .await
        }
        DlqAction::Purge { campaign, yes } => {
            let campaign = filter::parse_campaign(campaign)?;
            if !*yes {
                let count = with_broker(config, async |broker| {
                    Ok(purge::count(broker, &campaign).await?)
                })
                .await;
                return Err(purge::refusal(&campaign, count).into());
            }
            with_broker(config, async |broker| purge::purge(broker, &campaign).await).await
        }
    }
}

/// `command` run on a connection to the configured RabbitMQ, closed after it whatever it
/// returns.
async fn with_broker<T>(
    config: &Config,
    command: impl AsyncFnOnce(&Broker) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    broker::require_rabbitmq(&config.broker, "dlq").await?;
    let names = QueueNames::new(&config.broker.queue, &config.worker.retry_delays_ms);
    let broker = Broker::connect(&config.broker, names)
        .await
        .with_context(|| {
            format!(
                "Failed to connect to RabbitMQ at {}",
                redact(&broker::url(&config.broker))
            )
        })?;
    let result = command(&broker).await;
    broker.close().await;
    result
}
