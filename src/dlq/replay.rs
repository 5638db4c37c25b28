//! `sunset dlq replay`: republishes what failed to the work queue, and removes each dead letter
//! once all it came to is confirmed.
//!
//! Sends whose outcome is unknown (`unknown` in `x-sunset-kinds`: handed over, no answer back)
//! are replayed only with `--include-unknown`. Without it a dead letter holding only those stays
//! where it is, and one holding others too is replaced, at the end of the queue, by one holding
//! just those.

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::filter::Filter;
use super::letter::DeadLetter;
use super::table::plural;
use crate::batch::{Batch, CampaignId};
use crate::broker::{Broker, Hold, Route, attempt_headers};
use crate::channel::Channel;

/// What one replayed dead letter comes to, for the output line.
fn describe_replay(letter: &DeadLetter, batches: &[Batch]) -> String {
    let recipients: usize = batches.iter().map(|b| b.recipients.len()).sum();
    let channels: BTreeSet<Channel> = batches
        .iter()
        .flat_map(|b| b.channels.iter().copied())
        .collect();
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let batch = letter.batch();
    let mut line = format!(
        "{} ({}): {} by {} in {}",
        batch.map_or("-", |b| b.batch_id.as_str()),
        letter.campaign().map_or("-", CampaignId::as_str),
        plural(recipients, "recipient", "recipients"),
        channels.join(","),
        plural(batches.len(), "batch", "batches"),
    );
    let deadline_passed = batch
        .and_then(|b| b.deadline)
        .is_some_and(|deadline| chrono::Utc::now() >= deadline);
    if deadline_passed {
        line.push_str(" (its deadline has passed: the worker will dead-letter it again)");
    }
    line
}

/// `sunset dlq replay`: republishes what failed to the work queue (attempt 1), each dead letter
/// acked only once all its batches are confirmed; prints a line per dead letter and a total.
/// Sends of unknown outcome stay in the dead-letter queue unless `include_unknown`: a dead
/// letter of only those is left where it is; of others too, it is replaced by one of just
/// those, published (and confirmed) before the original is acked.
pub(super) async fn replay(
    broker: &Broker,
    filter: &Filter,
    limit: Option<usize>,
    dry_run: bool,
    include_unknown: bool,
) -> anyhow::Result<()> {
    let mut hold = Hold::take(broker, &broker.names().dlq, DeadLetter::read)
        .await
        .context("Failed to read the dead-letter queue")?;
    let names = broker.names();
    let verb = if dry_run { "would replay" } else { "replayed" };
    let (mut moved, mut recipients, mut batches_sent) = (0, 0, 0);
    let (mut undecodable, mut empty) = (0, 0);
    // Sends of unknown outcome left in the queue, and dead letters published to hold them.
    let (mut unknown_left, mut requeued) = (0, 0);
    for i in 0..hold.messages().len() {
        if limit.is_some_and(|limit| moved >= limit) {
            break;
        }
        let (tag, letter) = &hold.messages()[i];
        if !filter.matches(letter) {
            continue;
        }
        let split = if include_unknown {
            None
        } else {
            letter.split_unknown()
        };
        let unknown = split.as_ref().map(|(_, unknown)| unknown);
        let kept = unknown.map_or(0, DeadLetter::failure_count);
        let replayable = match &split {
            None => letter,
            Some((Some(rest), _)) => rest,
            Some((None, _)) => {
                unknown_left += kept;
                continue;
            }
        };
        let batches = replayable.replay_batches();
        if batches.is_empty() {
            if replayable.batch().is_some() {
                empty += 1;
            } else {
                undecodable += 1;
            }
            continue;
        }
        let (tag, mut line) = (*tag, describe_replay(replayable, &batches));
        if kept > 0 {
            line.push_str(&format!(
                "; {} of unknown outcome {} in {}",
                plural(kept, "send", "sends"),
                if dry_run { "would stay" } else { "stay" },
                names.dlq
            ));
        }
        if !dry_run {
            for batch in &batches {
                broker
                    .publish(Route::Work, &batch.encode(), attempt_headers(1))
                    .await
                    .with_context(|| {
                        format!(
                            "Failed to republish {} to the work queue; the dead letter stays \
                             in the dead-letter queue (batches of it already republished will \
                             be sent again by the next replay)",
                            batch.batch_id
                        )
                    })?;
            }
            if let Some(unknown) = unknown
                && let Some(batch) = unknown.batch()
            {
                let kinds: Vec<&str> = unknown.kinds.iter().map(String::as_str).collect();
                let attempt = unknown.attempts.unwrap_or(1);
                broker
                    .dead_letter(batch, attempt, &unknown.reason, &kinds)
                    .await
                    .with_context(|| {
                        format!(
                            "Failed to keep the sends of unknown outcome of {} in the \
                             dead-letter queue; the dead letter stays whole (its batches \
                             already republished will be sent again by the next replay)",
                            batch.batch_id
                        )
                    })?;
                requeued += 1;
            }
            hold.remove(tag)
                .await
                .with_context(|| format!("Failed to remove replayed {line} from the dead-letter queue; it may be replayed again"))?;
        }
        crate::say!("{verb} {line}")?;
        moved += 1;
        unknown_left += kept;
        recipients += batches.iter().map(|b| b.recipients.len()).sum::<usize>();
        batches_sent += batches.len();
    }
    let left = hold.kept() + requeued;
    hold.release(broker).await;
    if moved == 0 {
        crate::say!("no dead letters{} to replay", filter.describe())?;
    } else if dry_run {
        crate::say!(
            "dry run: would replay {} ({} in {}) to {}; nothing moved",
            plural(moved, "dead letter", "dead letters"),
            plural(recipients, "recipient", "recipients"),
            plural(batches_sent, "batch", "batches"),
            names.work
        )?;
    } else {
        crate::say!(
            "replayed {} ({} in {}) to {}; {} left in {}",
            plural(moved, "dead letter", "dead letters"),
            plural(recipients, "recipient", "recipients"),
            plural(batches_sent, "batch", "batches"),
            names.work,
            left,
            names.dlq
        )?;
    }
    if unknown_left > 0 {
        crate::say!(
            "{} of unknown outcome {} in {}: each was handed over and no answer came back, so \
             it may have arrived and a replay may send it twice; --include-unknown replays them",
            plural(unknown_left, "send", "sends"),
            if dry_run { "would stay" } else { "left" },
            names.dlq
        )?;
    }
    if undecodable > 0 {
        crate::say!(
            "{} not replayed: the body is not a batch (see `sunset dlq list`)",
            plural(undecodable, "dead letter", "dead letters")
        )?;
    }
    if empty > 0 {
        crate::say!(
            "{} not replayed: its failures name none of its recipients",
            plural(empty, "dead letter", "dead letters")
        )?;
    }
    Ok(())
}
