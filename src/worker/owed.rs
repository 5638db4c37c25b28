//! What a processed batch owes before its ack: retries on delay queues and dead letters.

use std::time::{Duration, SystemTime};

use chrono::Utc;

use super::DEADLINE;
use crate::batch::{Batch, Failure, Recipient};
use crate::channel::Channel;
use crate::dead_letter::DeadLetterKind;

/// One thing a processed batch still owes before it may be acked.
#[derive(Debug, Clone, PartialEq)]
pub enum Owed {
    /// Transient failures: publish `batch` (just those recipient × channel pairs) to delay queue
    /// number `queue` (0-based index into `worker.retry_delays_ms`) with attempt `attempt`.
    Retry {
        /// The pairs to try again.
        batch: Box<Batch>,
        /// Which delay queue.
        queue: usize,
        /// The attempt number the retry will be.
        attempt: u32,
        /// When the peer asked for a longer wait than the queue's delay: not sent before then
        /// (the worker parks it again if it comes back sooner).
        not_before: Option<SystemTime>,
    },
    /// Permanent failures, exhausted attempts or a passed deadline: publish `batch` (failed
    /// recipients with per-recipient `failures`) to the dead-letter queue.
    DeadLetter {
        /// The failed recipients and why.
        batch: Box<Batch>,
        /// Short reason for the `x-sunset-error` header.
        reason: String,
        /// The attempt that failed last, for the `x-sunset-attempt` header.
        attempt: u32,
        /// Why each of `batch.failures` failed, in the same order.
        kinds: Vec<DeadLetterKind>,
    },
}

/// How long a held batch (paused campaign, ledger away) waits at least before it is looked at again.
const HOLD: Duration = Duration::from_secs(5);

/// How a batch is retried: `worker.max_attempts` and `worker.retry_delays_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per recipient × channel before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay of each delay queue, in order.
    pub delays: Vec<Duration>,
}

impl RetryPolicy {
    /// The delay queue for the retry after attempt `attempt`: the attempt's own delay, or a
    /// later (longer) one if the peer asked to wait at least `at_least`.
    pub fn queue(&self, attempt: u32, at_least: Duration) -> usize {
        let last = self.delays.len().saturating_sub(1);
        let mut queue = (attempt.saturating_sub(1) as usize).min(last);
        while queue < last && self.delays[queue] < at_least {
            queue += 1;
        }
        queue
    }
}

/// What a failed send is worth: another try (not before the wait the peer asked for), or a
/// dead letter of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Retry(Option<Duration>),
    Dead(DeadLetterKind),
}

/// A failed send and its fate.
pub(super) struct Failed {
    pub(super) failure: Failure,
    pub(super) fate: Fate,
    pub(super) locale: String,
}

/// The whole batch, dead-lettered with `reason` (the ledger refused it).
pub(super) fn rejected(batch: &Batch, attempt: u32, reason: &str) -> Vec<Owed> {
    let failures = everyone(batch, reason);
    let kinds = vec![DeadLetterKind::LedgerRefused; failures.len()];
    vec![dead_letter(
        batch,
        failures,
        kinds,
        reason.to_string(),
        attempt,
    )]
}

/// The whole batch, back to a delay queue at the same attempt (waiting does not use up attempts).
pub(super) fn hold(batch: &Batch, attempt: u32, reason: &str, policy: &RetryPolicy) -> Vec<Owed> {
    held_back(batch, attempt, everyone(batch, reason), policy)
}

/// Every recipient × channel of `batch`, failed for `reason`.
fn everyone(batch: &Batch, reason: &str) -> Vec<Failure> {
    batch
        .recipients
        .iter()
        .flat_map(|r| {
            batch
                .channels
                .iter()
                .map(|c| failure(r, *c, reason.to_string()))
        })
        .collect()
}

/// Pairs that were not tried (held back), to a delay queue at the same attempt; with no
/// delay queue configured they are dead-lettered, to be replayed.
pub(super) fn held_back(
    batch: &Batch,
    attempt: u32,
    held: Vec<Failure>,
    policy: &RetryPolicy,
) -> Vec<Owed> {
    if policy.delays.is_empty() {
        let reason = format!(
            "held back ({}) and worker.retry_delays_ms is empty",
            held[0].error
        );
        let kinds = vec![DeadLetterKind::HeldBack; held.len()];
        return vec![dead_letter(batch, held, kinds, reason, attempt)];
    }
    let queue = policy.queue(1, HOLD);
    batch
        .regroup(&held)
        .into_iter()
        .map(|batch| Owed::Retry {
            batch: Box::new(batch),
            queue,
            attempt,
            not_before: None,
        })
        .collect()
}

pub(super) fn failure(recipient: &Recipient, channel: Channel, error: String) -> Failure {
    Failure {
        user_id: recipient.user_id.clone(),
        channel,
        error,
    }
}

/// Transient failures become retries on the delay queue their attempt and requested wait call
/// for — unless attempts are exhausted or the retry would come after the deadline; everything
/// else becomes one dead letter.
pub(super) fn owed(
    batch: &Batch,
    attempt: u32,
    failed: Vec<Failed>,
    policy: &RetryPolicy,
) -> Vec<Owed> {
    let mut retry = Vec::new();
    let mut dead = Vec::new();
    let mut kinds = Vec::new();
    let mut at_least = Duration::ZERO;
    for Failed {
        mut failure, fate, ..
    } in failed
    {
        match fate {
            Fate::Retry(wait) if attempt < policy.max_attempts && !policy.delays.is_empty() => {
                at_least = at_least.max(wait.unwrap_or_default());
                retry.push(failure);
            }
            Fate::Retry(_) => {
                failure.error = format!("gave up after {attempt} attempts: {}", failure.error);
                dead.push(failure);
                kinds.push(DeadLetterKind::Exhausted);
            }
            Fate::Dead(kind) => {
                kinds.push(kind);
                dead.push(failure);
            }
        }
    }
    let mut owed = Vec::new();
    if !retry.is_empty() {
        let queue = policy.queue(attempt, at_least);
        let wait = policy.delays[queue].max(at_least);
        let not_before = (at_least > policy.delays[queue])
            .then(|| SystemTime::now().checked_add(at_least))
            .flatten();
        let delay = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        let too_late = batch
            .deadline
            .is_some_and(|deadline| Utc::now() + delay >= deadline);
        if too_late {
            kinds.extend(retry.iter().map(|_| DeadLetterKind::Deadline));
            dead.extend(retry.into_iter().map(|mut f| {
                f.error = format!(
                    "{DEADLINE} (next try would be after it; last error: {})",
                    f.error
                );
                f
            }));
        } else {
            owed.extend(batch.regroup(&retry).into_iter().map(|batch| Owed::Retry {
                batch: Box::new(batch),
                queue,
                attempt: attempt + 1,
                not_before,
            }));
        }
    }
    if !dead.is_empty() {
        let reason = dead_letter_reason(&dead, &kinds);
        owed.push(dead_letter(batch, dead, kinds, reason, attempt));
    }
    owed
}

/// The failed recipients of `batch`, with their `failures`, for the dead-letter queue.
fn dead_letter(
    batch: &Batch,
    failures: Vec<Failure>,
    kinds: Vec<DeadLetterKind>,
    reason: String,
    attempt: u32,
) -> Owed {
    Owed::DeadLetter {
        batch: Box::new(batch.failed(failures)),
        reason,
        attempt,
        kinds,
    }
}

/// `deadline` when every failure is the deadline, the failure itself when there is one, else a count.
fn dead_letter_reason(dead: &[Failure], kinds: &[DeadLetterKind]) -> String {
    if kinds.iter().all(|k| *k == DeadLetterKind::Deadline) {
        DEADLINE.to_string()
    } else if let [only] = dead {
        only.error.clone()
    } else {
        format!("{} sends failed; first: {}", dead.len(), dead[0].error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch::decode(
            br#"{"version":1,"campaign_id":"c","batch_id":"c:000001","template":"t",
                "channels":["email","push"],
                "recipients":[{"user_id":"a"},{"user_id":"b"},{"user_id":"c"},{"user_id":"d"}]}"#,
        )
        .expect("a batch")
    }

    fn failed(user: &str, error: &str, fate: Fate) -> Failed {
        Failed {
            failure: Failure {
                user_id: crate::batch::UserId::parse(user).expect("a user id"),
                channel: Channel::Email,
                error: error.into(),
            },
            fate,
            locale: "en".into(),
        }
    }

    #[test]
    fn each_dead_lettered_pair_has_the_kind_of_its_failure() {
        let policy = RetryPolicy {
            max_attempts: 2,
            delays: vec![Duration::from_secs(1)],
        };
        let failures = vec![
            failed(
                "a",
                "550 5.1.1 unknown user",
                Fate::Dead(DeadLetterKind::Rejected),
            ),
            failed(
                "b",
                "render: missing variable",
                Fate::Dead(DeadLetterKind::Unrenderable),
            ),
            failed("c", DEADLINE, Fate::Dead(DeadLetterKind::Deadline)),
            failed("d", "451 try later", Fate::Retry(None)),
        ];
        let owed = owed(&batch(), 2, failures, &policy);
        let [Owed::DeadLetter { batch, kinds, .. }] = owed.as_slice() else {
            panic!("one dead letter: {owed:?}");
        };
        assert_eq!(
            kinds,
            &[
                DeadLetterKind::Rejected,
                DeadLetterKind::Unrenderable,
                DeadLetterKind::Deadline,
                DeadLetterKind::Exhausted,
            ]
        );
        assert_eq!(kinds.len(), batch.failures.len());
    }

    #[test]
    fn a_wait_longer_than_every_delay_sets_a_not_before_time() {
        let policy = RetryPolicy {
            max_attempts: 5,
            delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
        };
        let asked = Duration::from_secs(2);
        let owed = owed(
            &batch(),
            1,
            vec![failed("a", "503", Fate::Retry(Some(asked)))],
            &policy,
        );
        let [
            Owed::Retry {
                queue, not_before, ..
            },
        ] = owed.as_slice()
        else {
            panic!("one retry: {owed:?}");
        };
        assert_eq!(*queue, 1, "the longest delay queue");
        let left = not_before
            .expect("a not-before time")
            .duration_since(SystemTime::now())
            .expect("still to come");
        assert!(left > Duration::from_millis(1500), "{left:?}");
        let owed = super::owed(
            &batch(),
            1,
            vec![failed(
                "a",
                "503",
                Fate::Retry(Some(Duration::from_millis(200))),
            )],
            &policy,
        );
        assert!(
            matches!(
                owed.as_slice(),
                [Owed::Retry {
                    queue: 1,
                    not_before: None,
                    ..
                }]
            ),
            "a delay queue long enough needs no not-before: {owed:?}"
        );
    }

    #[test]
    fn pairs_held_back_with_no_delay_queue_are_dead_lettered_as_held_back() {
        let policy = RetryPolicy {
            max_attempts: 5,
            delays: Vec::new(),
        };
        let owed = hold(&batch(), 1, "campaign paused", &policy);
        let [Owed::DeadLetter { kinds, .. }] = owed.as_slice() else {
            panic!("one dead letter: {owed:?}");
        };
        assert_eq!(kinds, &vec![DeadLetterKind::HeldBack; 8]);
    }
}
