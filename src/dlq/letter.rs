//! A dead letter as read from its body and headers: what it holds, why it failed, and what
//! replaying it publishes.

use std::collections::BTreeSet;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::batch::{Batch, CampaignId, Failure};
use crate::broker::{ATTEMPT_HEADER, ERROR_HEADER, KINDS_HEADER, attempt_of};
use crate::channel::Channel;
use crate::dead_letter::DeadLetterKind;

/// What a dead letter holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A batch: the worker's (only the failed recipients, with `failures`), or one RabbitMQ
    /// dead-lettered itself after too many deliveries (the whole batch, no `failures`).
    Batch(Batch),
    /// A body that is not a batch this build reads, as it came.
    Undecodable(Vec<u8>),
}

/// One dead letter, read from its body and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The body.
    pub content: Content,
    /// `x-sunset-error`; for a message RabbitMQ dead-lettered, its own reason
    /// (`delivery limit`); `-` when neither says.
    pub reason: String,
    /// `x-sunset-attempt`, when present.
    pub attempts: Option<u32>,
    /// Seconds since the Unix epoch when it became a dead letter, when known: RabbitMQ's
    /// `x-death` time if RabbitMQ dead-lettered it, else the `timestamp` it was published with.
    pub since: Option<u64>,
    /// `x-sunset-kinds`: why each of the batch's `failures` failed, in the same order
    /// (`rejected`, `exhausted`, `unknown`, …); empty when the header is absent.
    pub kinds: Vec<String>,
}

impl DeadLetter {
    /// Reads a dead-letter message; never fails (what does not decode is `Undecodable`).
    pub fn read(body: &[u8], properties: &BasicProperties) -> DeadLetter {
        let content = match Batch::decode(body) {
            Ok(batch) => Content::Batch(batch),
            Err(_) => Content::Undecodable(body.to_vec()),
        };
        let reason = header(properties, ERROR_HEADER)
            .and_then(text)
            .or_else(|| broker_reason(properties))
            .map(|reason| one_line(&reason))
            .unwrap_or_else(|| "-".into());
        let attempts = header(properties, ATTEMPT_HEADER).map(|_| attempt_of(properties));
        let since = death_time(properties).or(*properties.timestamp());
        let kinds = match header(properties, KINDS_HEADER) {
            Some(AMQPValue::FieldArray(kinds)) => kinds
                .as_slice()
                .iter()
                .map(|kind| text(kind).unwrap_or_default())
                .collect(),
            _ => Vec::new(),
        };
        DeadLetter {
            content,
            reason,
            attempts,
            since,
            kinds,
        }
    }

    /// The batch, unless the body is undecodable.
    pub fn batch(&self) -> Option<&Batch> {
        match &self.content {
            Content::Batch(batch) => Some(batch),
            Content::Undecodable(_) => None,
        }
    }

    /// The campaign, unless the body is undecodable.
    pub fn campaign(&self) -> Option<&CampaignId> {
        self.batch().map(|batch| &batch.campaign_id)
    }

    /// `failed-recipients`, `whole-batch` (dead-lettered by RabbitMQ) or `undecodable`.
    pub fn kind(&self) -> &'static str {
        match self.batch() {
            Some(batch) if !batch.failures.is_empty() => "failed-recipients",
            Some(_) => "whole-batch",
            None => "undecodable",
        }
    }

    /// The channels that failed (those of `failures`), or the batch's channels when it failed
    /// whole; none for an undecodable body.
    pub fn channels(&self) -> Vec<Channel> {
        let Some(batch) = self.batch() else {
            return Vec::new();
        };
        if batch.failures.is_empty() {
            return batch.channels.clone();
        }
        let failed: BTreeSet<Channel> = batch.failures.iter().map(|f| f.channel).collect();
        failed.into_iter().collect()
    }

    /// What replaying it publishes: per set of failed channels, a batch of the recipients that
    /// still need them; the whole batch when it has no `failures`; nothing when undecodable.
    pub fn replay_batches(&self) -> Vec<Batch> {
        match self.batch() {
            None => Vec::new(),
            Some(batch) if batch.failures.is_empty() => vec![batch.clone()],
            Some(batch) => batch.regroup(&batch.failures),
        }
    }

    /// Whether `failures[i]`'s outcome is unknown: handed over, with no answer back.
    fn unknown(&self, i: usize) -> bool {
        self.kinds
            .get(i)
            .is_some_and(|kind| kind == DeadLetterKind::Unknown.as_str())
    }

    /// Recipient × channel pairs that failed (`failures`).
    pub fn failure_count(&self) -> usize {
        self.batch().map_or(0, |batch| batch.failures.len())
    }

    /// When some of its failures have an unknown outcome: the dead letter without them (`None`
    /// if nothing else is left), and the dead letter of just them — each with only its own
    /// recipients, failures and kinds, and the same reason and attempts.
    pub fn split_unknown(&self) -> Option<(Option<DeadLetter>, DeadLetter)> {
        let batch = self.batch()?;
        let count = batch.failures.len();
        if !(0..count).any(|i| self.unknown(i)) {
            return None;
        }
        let part = |unknown: bool| {
            let picked: Vec<usize> = (0..count).filter(|&i| self.unknown(i) == unknown).collect();
            if picked.is_empty() {
                return None;
            }
            let failures: Vec<Failure> =
                picked.iter().map(|&i| batch.failures[i].clone()).collect();
            Some(DeadLetter {
                content: Content::Batch(batch.failed(failures)),
                reason: self.reason.clone(),
                attempts: self.attempts,
                since: self.since,
                kinds: picked
                    .iter()
                    .filter_map(|&i| self.kinds.get(i).cloned())
                    .collect(),
            })
        };
        Some((part(false), part(true)?))
    }

    /// Seconds since it was published or dead-lettered, when known.
    pub fn age_secs(&self, now: u64) -> Option<u64> {
        self.since.map(|since| now.saturating_sub(since))
    }
}

/// The header `key`, when the message has it.
fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(key)
}

/// A header's text (as RabbitMQ and AMQP clients send strings), lossily decoded.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The first `x-death` entry: RabbitMQ's record of why it dead-lettered the message.
fn first_death(properties: &BasicProperties) -> Option<&FieldTable> {
    match header(properties, "x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

/// `delivery limit`, `expired`, `rejected`, `maxlen`: RabbitMQ's reason, in words.
fn broker_reason(properties: &BasicProperties) -> Option<String> {
    header(properties, "x-first-death-reason")
        .and_then(text)
        .or_else(|| {
            first_death(properties)?
                .inner()
                .get("reason")
                .and_then(text)
        })
        .map(|reason| reason.replace('_', " "))
}

/// When RabbitMQ dead-lettered the message (its first `x-death` entry's `time`).
fn death_time(properties: &BasicProperties) -> Option<u64> {
    match first_death(properties)?.inner().get("time")? {
        AMQPValue::Timestamp(time) => Some(*time),
        _ => None,
    }
}

/// `text` on one line, every run of whitespace (line breaks of an SMTP reply too) one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;
    use crate::batch::UserId;
    use crate::dlq::samples::{batch, kinds, long, properties};

    #[test]
    fn a_worker_dead_letter_shows_its_failed_channels_reason_and_attempts() {
        let body = batch(&[("a", Channel::Email), ("b", Channel::Email)]).encode();
        let letter = DeadLetter::read(
            &body,
            &properties(&[
                (ERROR_HEADER, long("550 5.1.1\r\nMailbox unavailable")),
                (ATTEMPT_HEADER, AMQPValue::LongUInt(3)),
            ]),
        );
        assert_eq!(letter.kind(), "failed-recipients");
        assert_eq!(letter.channels(), [Channel::Email]);
        assert_eq!(letter.reason, "550 5.1.1 Mailbox unavailable");
        assert_eq!(letter.attempts, Some(3));
        assert_eq!(letter.since, None);
        let batches = letter.replay_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].channels, [Channel::Email]);
        assert!(batches[0].failures.is_empty());
    }

    #[test]
    fn a_batch_rabbitmq_dead_lettered_is_replayed_whole_with_its_reason_and_age() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("time".into(), AMQPValue::Timestamp(1_000));
        let letter = DeadLetter::read(
            &batch(&[]).encode(),
            &properties(&[
                (
                    "x-death",
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
                ),
                ("x-first-death-reason", long("delivery_limit")),
            ]),
        );
        assert_eq!(letter.kind(), "whole-batch");
        assert_eq!(letter.reason, "delivery limit");
        assert_eq!(letter.attempts, None);
        assert_eq!(letter.age_secs(1_090), Some(90));
        assert_eq!(letter.channels(), Channel::ALL);
        assert_eq!(letter.replay_batches(), [batch(&[])]);
    }

    #[test]
    fn an_undecodable_body_is_kept_as_it_came_and_replays_nothing() {
        let letter = DeadLetter::read(
            b"{not json",
            &properties(&[(ERROR_HEADER, long("invalid batch: key must be a string"))]),
        );
        assert_eq!(letter.content, Content::Undecodable(b"{not json".to_vec()));
        assert_eq!(letter.kind(), "undecodable");
        assert!(letter.replay_batches().is_empty());
    }

    #[test]
    fn sends_of_unknown_outcome_split_off_with_their_recipients_and_kinds() {
        let mut both = batch(&[("a", Channel::Email), ("b", Channel::Email)]);
        both.failures.push(Failure {
            user_id: UserId::parse("a").expect("id"),
            channel: Channel::Push,
            error: "handed over, no reply".into(),
        });
        let read = |batch: &Batch, labels: &[&str]| {
            DeadLetter::read(
                &batch.encode(),
                &properties(&[
                    (ERROR_HEADER, long("3 sends failed")),
                    (ATTEMPT_HEADER, AMQPValue::LongUInt(2)),
                    (KINDS_HEADER, kinds(labels)),
                ]),
            )
        };
        let letter = read(&both, &["rejected", "exhausted", "unknown"]);

        let (rest, unknown) = letter.split_unknown().expect("some unknown");
        let rest = rest.expect("others left");

        let users = |letter: &DeadLetter| -> Vec<String> {
            let batch = letter.batch().expect("a batch");
            batch
                .recipients
                .iter()
                .map(|r| r.user_id.as_str().to_string())
                .collect()
        };
        assert_eq!(users(&rest), ["a", "b"]);
        assert_eq!(rest.kinds, ["rejected", "exhausted"]);
        assert_eq!(rest.failure_count(), 2);
        assert_eq!(users(&unknown), ["a"]);
        assert_eq!(unknown.kinds, ["unknown"]);
        assert_eq!(
            unknown.batch().map(|b| b.failures[0].channel),
            Some(Channel::Push)
        );
        assert_eq!(
            (unknown.reason.as_str(), unknown.attempts),
            ("3 sends failed", Some(2))
        );

        let only = read(&batch(&[("a", Channel::Email)]), &["unknown"]);
        assert!(matches!(only.split_unknown(), Some((None, _))));
        assert!(
            read(&batch(&[("a", Channel::Email)]), &["rejected"])
                .split_unknown()
                .is_none()
        );
        let unlabelled =
            DeadLetter::read(&batch(&[("a", Channel::Email)]).encode(), &properties(&[]));
        assert!(unlabelled.kinds.is_empty());
        assert!(unlabelled.split_unknown().is_none());
    }
}
