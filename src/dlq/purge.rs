//! `sunset dlq purge`: deletes one campaign's dead letters for good, and only with `--yes`;
//! without it, says how many it would delete.

use anyhow::Context as _;
use tracing::warn;

use super::filter::Filter;
use super::letter::DeadLetter;
use super::table::plural;
use crate::batch::CampaignId;
use crate::broker::{Broker, BrokerError, Hold};
use crate::invalid_input::InvalidInput;

/// `sunset dlq purge --yes`: acks (deletes) the campaign's dead letters, keeps the rest in order.
pub(super) async fn purge(broker: &Broker, campaign: &CampaignId) -> anyhow::Result<()> {
    let filter = Filter::campaign(campaign);
    let mut hold = Hold::take(broker, &broker.names().dlq, DeadLetter::read)
        .await
        .context("Failed to read the dead-letter queue")?;
    let mut recipients = 0;
    for i in 0..hold.messages().len() {
        let (tag, letter) = &hold.messages()[i];
        if !filter.matches(letter) {
            continue;
        }
        let (tag, count) = (*tag, letter.batch().map_or(0, |b| b.recipients.len()));
        hold.remove(tag)
            .await
            .context("Failed to delete a dead letter")?;
        recipients += count;
    }
    let (purged, left) = (hold.removed(), hold.kept());
    hold.release(broker).await;
    crate::say!(
        "purged {} of campaign {campaign} ({}); {left} left in {}",
        plural(purged, "dead letter", "dead letters"),
        plural(recipients, "recipient", "recipients"),
        broker.names().dlq
    )?;
    Ok(())
}

/// How many dead letters `purge` would delete; deletes nothing.
pub(super) async fn count(broker: &Broker, campaign: &CampaignId) -> Result<usize, BrokerError> {
    let filter = Filter::campaign(campaign);
    let hold = Hold::take(broker, &broker.names().dlq, DeadLetter::read).await?;
    let count = hold
        .messages()
        .iter()
        .filter(|(_, letter)| filter.matches(letter))
        .count();
    hold.release(broker).await;
    Ok(count)
}

/// The usage error of `purge` without `--yes`, saying how many it would delete when the broker
/// could tell (`count`; nothing is deleted either way).
pub(super) fn refusal(campaign: &CampaignId, count: anyhow::Result<usize>) -> InvalidInput {
    match count {
        Ok(n) => InvalidInput(format!(
            "purge deletes for good: pass --yes to delete the {} of campaign {campaign} \
             (nothing was deleted)",
            plural(n, "dead letter", "dead letters")
        )),
        Err(e) => {
            warn!(error = %e, "could not count the dead letters");
            InvalidInput(format!(
                "purge deletes for good: pass --yes to delete the dead letters of campaign \
                 {campaign} (nothing was deleted)"
            ))
        }
    }
}
