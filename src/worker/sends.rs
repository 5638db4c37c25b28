//! A batch's sends, fanned out over its lanes, and the decision on what they came to.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use futures::future::join_all;

use super::deps::{Deps, Sent, entry};
use super::lanes;
use super::owed::{Failed, Fate, failure, held_back, owed};
use super::plan::{Item, Plan, Unsendable};
use super::{DeadLetterKind, Owed, Verdict};
use crate::batch::{Batch, EmailAddress, Failure, Recipient, UserId};
use crate::channel::{Channel, Outcome, Sender};
use crate::events;
use crate::ledger::{Claims, Entry, Mark};
use crate::render::BatchCache;

/// What the ledger said of a batch's pairs: the claims, and the addresses no email goes to.
#[derive(Clone, Copy)]
pub(super) struct Sending<'a> {
    pub(super) claims: Option<&'a Claims>,
    pub(super) suppressed: &'a HashSet<EmailAddress>,
}

impl Sending<'_> {
    /// Whether `recipient`'s email is not to be sent.
    fn suppressed(&self, recipient: &Recipient, channel: Channel) -> bool {
        channel == Channel::Email
            && !self.suppressed.is_empty()
            && recipient
                .email
                .as_ref()
                .is_some_and(|email| self.suppressed.contains(email))
    }
}

/// Sends the plan's pairs this worker holds, recording suppressed ones as such (never sent,
/// never retried); returns what became of each sent one, and the pairs held back by the claims.
pub(super) async fn send_all<E: Sender, P: Sender>(
    batch: &Batch,
    plan: &Plan,
    sending: Sending<'_>,
    deps: &Deps<E, P>,
    verdict: &mut Verdict,
) -> (Vec<(Item, Sent)>, Vec<Failure>) {
    let claims = sending.claims;
    // The parts every recipient of a locale shares, rendered once for the batch.
    let alike = Mutex::new(BatchCache::default());
    let mut todo = Vec::with_capacity(plan.todo.len());
    let mut held = Vec::new();
    let mut suppressed = Vec::new();
    let contested = claims.is_some_and(|c| !c.all_ours());
    for &(index, channel) in &plan.todo {
        let recipient: &Recipient = &batch.recipients[index];
        if let (true, Some(claims)) = (contested, claims) {
            let key = (recipient.user_id.clone(), channel);
            if claims.delivered.contains(&key) {
                verdict.delivered.push(key);
                continue;
            } else if claims.held.contains(&key) {
                held.push(failure(
                    recipient,
                    channel,
                    "being sent by another worker".into(),
                ));
                continue;
            } else if claims.cancelled.contains(&key) {
                continue;
            }
        }
        if sending.suppressed(recipient, channel) {
            let locale = plan.locale(index);
            events::suppressed(&recipient.user_id, channel, locale);
            verdict.report.counts.entry(channel).or_default().suppressed += 1;
            suppressed.push(entry(
                batch,
                &recipient.user_id,
                (channel, locale),
                Mark::Suppressed,
                None,
            ));
            continue;
        }
        todo.push((index, channel));
    }
    join_all(suppressed.into_iter().map(|entry| deps.note(claims, entry))).await;
    let alike = &alike;
    let lanes = lanes::lanes(batch, todo);
    let sent = lanes::drive(
        lanes,
        deps.concurrency,
        // An unrenderable batch waits for nothing: each pair is recorded dead straight away.
        |(index, channel)| async move {
            let domain = batch.recipients[index].email.as_ref().map(|e| e.domain());
            match &plan.renderer {
                Ok(renderer) => Ok((renderer, deps.wait(channel, domain).await)),
                Err(unsendable) => Err(unsendable),
            }
        },
        |(index, channel), waited| async move {
            let recipient: &Recipient = &batch.recipients[index];
            let sent = match waited {
                Ok((renderer, waited)) => {
                    let render = || {
                        let mut alike = alike.lock().unwrap_or_else(PoisonError::into_inner);
                        renderer
                            .render_cached(&batch.vars, recipient, &[channel], &mut alike)
                            .map_err(|e| Unsendable::Render(e.to_string()))
                    };
                    let to = (recipient, plan.locale(index));
                    deps.send(channel, to, render, batch, claims, waited).await
                }
                Err(unsendable) => {
                    let error = Some(unsendable.to_string());
                    let dead = entry(batch, &recipient.user_id, (channel, "-"), Mark::Dead, error);
                    deps.note(claims, dead).await;
                    Sent::Unsendable(unsendable.clone())
                }
            };
            ((index, channel), sent)
        },
    )
    .await;
    (sent, held)
}

/// The pure decision (with the ledger told which failed pairs are given up): counts, delivered
/// pairs, and what the batch owes.
pub(super) async fn decide<E: Sender, P: Sender>(
    batch: &Batch,
    attempt: u32,
    plan: &Plan,
    sent: Vec<(Item, Sent)>,
    mut held: Vec<Failure>,
    deps: &Deps<E, P>,
    mut verdict: Verdict,
) -> Verdict {
    let mut failed = Vec::new();
    for ((index, channel), sent) in sent {
        let recipient = &batch.recipients[index];
        let locale = plan.locale(index);
        let fail = |reason: String, fate: Fate| Failed {
            failure: failure(recipient, channel, reason),
            fate,
            locale: locale.to_string(),
        };
        let outcome = match sent {
            Sent::Outcome(outcome) => outcome,
            Sent::Unsendable(unsendable) => {
                let kind = unsendable.kind();
                failed.push(fail(unsendable.to_string(), Fate::Dead(kind)));
                continue;
            }
            Sent::Held(reason) => {
                held.push(failure(recipient, channel, reason));
                continue;
            }
            Sent::Cancelled => continue,
        };
        events::sent(&recipient.user_id, channel, locale, &outcome);
        match outcome {
            Outcome::Delivered => verdict.delivered.push((recipient.user_id.clone(), channel)),
            Outcome::Transient {
                reason,
                retry_after,
                ..
            } => failed.push(fail(reason, Fate::Retry(retry_after))),
            Outcome::Unknown { reason } if channel == Channel::Push => {
                failed.push(fail(reason, Fate::Retry(None)))
            }
            Outcome::Unknown { reason } => {
                failed.push(fail(reason, Fate::Dead(DeadLetterKind::Unknown)))
            }
            Outcome::Permanent { reason } => {
                failed.push(fail(reason, Fate::Dead(DeadLetterKind::Rejected)))
            }
            // Nothing was handed over: held, with no attempt spent.
            Outcome::Unreachable { reason } => held.push(failure(recipient, channel, reason)),
        }
    }
    // Transient failures that will not be retried (attempts exhausted, deadline) are dead now.
    let retried: Vec<Entry> = failed
        .iter()
        .filter(|f| matches!(f.fate, Fate::Retry(_)))
        .map(|f| {
            let error = Some(f.failure.error.clone());
            let to = (f.failure.channel, f.locale.as_str());
            entry(batch, &f.failure.user_id, to, Mark::Dead, error)
        })
        .collect();
    verdict.owed = owed(batch, attempt, failed, &deps.retry);
    let dead_letters: HashSet<(&UserId, Channel)> = verdict
        .owed
        .iter()
        .filter_map(|owed| match owed {
            Owed::DeadLetter { batch, .. } => Some(batch.failures.iter()),
            Owed::Retry { .. } => None,
        })
        .flatten()
        .map(|f| (&f.user_id, f.channel))
        .collect();
    let given_up: Vec<Entry> = retried
        .into_iter()
        .filter(|e| dead_letters.contains(&(&e.pair.user_id, e.pair.channel)))
        .collect();
    if let Some(books) = &deps.books
        && let Err(e) = books.give_up(given_up).await
    {
        tracing::error!(error = %e, "could not record given-up sends as dead in the ledger");
    }
    if !held.is_empty() {
        verdict
            .owed
            .extend(held_back(batch, attempt, held, &deps.retry));
    }
    verdict.report.tally(&verdict.delivered, &verdict.owed);
    verdict
}
