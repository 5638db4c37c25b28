//! `sunset dlq`: list, replay and purge dead letters, leaving every message it does not remove
//! in the dead-letter queue as it was and in its place.
//!
//! How the queue is read, and why (RabbitMQ 3.10 quorum queues, checked by `tests/dlq.rs`):
//! one consumer on a channel of its own takes every dead letter and holds them unacked; closing
//! that channel gives them all back in their original order, because the queue returns a departed
//! consumer's messages sorted by delivery. The obvious alternatives reorder: messages taken with
//! `basic.get` (one consumer each) or requeued with `basic.nack` come back in hash order once more
//! than 32 are involved. And a channel with more than 32 settlements in flight stashes the rest
//! and drops them if it closes first (acked messages reappear), so removals are acked at most
//! [`ACKS_PER_BARRIER`] at a time, each group followed by a `basic.get` round trip that the queue
//! answers only after applying them.
//!
//! Sends whose outcome is unknown (`unknown` in `x-sunset-kinds`: handed over, no answer back)
//! are replayed only with `--include-unknown`. Without it a dead letter holding only those stays
//! where it is, and one holding others too is replaced, at the end of the queue, by one holding
//! just those.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, DeliveryTag, FieldTable};
use lapin::{BasicProperties, Consumer};
use tracing::warn;

use crate::batch::{Batch, CampaignId, Failure};
use crate::broker::{
    self, ATTEMPT_HEADER, Broker, BrokerError, ERROR_HEADER, KINDS_HEADER, QueueNames, Route,
    attempt_headers, attempt_of, redact,
};
use crate::channel::Channel;
use crate::cli::{DlqAction, InvalidInput};
use crate::config::Config;
use crate::dead_letter::DeadLetterKind;

/// Acks sent before waiting for the queue to apply them: well under the 32 a channel keeps in
/// flight before it starts stashing (and, on close, losing) settlements.
const ACKS_PER_BARRIER: usize = 16;
/// Most dead letters held at once (the largest prefetch AMQP allows); the rest wait their turn.
const MAX_HELD: usize = u16::MAX as usize;
/// How long to wait for held dead letters to be back in the queue after the channel closes.
const RETURN_WAIT: Duration = Duration::from_secs(10);
/// Reasons longer than this are cut in the table (`--json` has them whole).
const REASON_WIDTH: usize = 60;
/// Bytes of an undecodable body shown by `--json`.
const BODY_PREVIEW: usize = 200;
/// Consumer tag of the holding consumer, to recognise it in the management UI.
const CONSUMER_TAG: &str = "sunset-dlq";
/// How long a new consumer waits for the dead letters that were ready when it came.
const FIRST_DELIVERIES: Duration = Duration::from_secs(10);

/// Runs `sunset dlq <action>`.
pub async fn run(config: &Config, action: &DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { campaign, json } => {
            let filter = Filter::parse(campaign.as_deref())?;
            let broker = connect(config).await?;
            let listed = list(&broker, &filter, *json).await;
            broker.close().await;
            crate::stdout::print(format_args!("{}", listed?))?;
            Ok(())
        }
        DlqAction::Replay {
            campaign,
            limit,
            dry_run,
            include_unknown,
        } => {
            let filter = Filter::parse(campaign.as_deref())?;
            let broker = connect(config).await?;
            let replayed = replay(&broker, &filter, *limit, *dry_run, *include_unknown).await;
            broker.close().await;
            replayed
        }
        DlqAction::Purge { campaign, yes } => {
            let campaign = parse_campaign(campaign)?;
            if !*yes {
                return Err(refuse_purge(config, &campaign).await.into());
            }
            let broker = connect(config).await?;
            let purged = purge(&broker, &campaign).await;
            broker.close().await;
            purged
        }
    }
}

async fn connect(config: &Config) -> anyhow::Result<Broker> {
    broker::require_rabbitmq(&config.broker, "dlq").await?;
    let names = QueueNames::new(&config.broker.queue, &config.worker.retry_delays_ms);
    Broker::connect(&config.broker, names)
        .await
        .with_context(|| {
            format!(
                "Failed to connect to RabbitMQ at {}",
                redact(&broker::url(&config.broker))
            )
        })
}

fn parse_campaign(id: &str) -> Result<CampaignId, InvalidInput> {
    CampaignId::parse(id).map_err(|e| InvalidInput(format!("--campaign: {e}")))
}

/// Which dead letters a command acts on: all, or one campaign's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Option<CampaignId>);

impl Filter {
    /// `--campaign ID` if given (an invalid id is a usage error), else every dead letter.
    pub fn parse(campaign: Option<&str>) -> Result<Filter, InvalidInput> {
        campaign.map(parse_campaign).transpose().map(Filter)
    }

    /// Whether `letter` belongs to the campaign (an undecodable one belongs to none).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        match &self.0 {
            None => true,
            Some(campaign) => letter.campaign() == Some(campaign),
        }
    }

    /// ` of campaign ID`, or nothing.
    fn describe(&self) -> String {
        self.0
            .as_ref()
            .map(|c| format!(" of campaign {c}"))
            .unwrap_or_default()
    }
}

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

    /// One line of `--json`: the table's fields plus user ids and failures.
    pub fn to_json(&self, now: u64) -> serde_json::Value {
        let batch = self.batch();
        let mut value = serde_json::json!({
            "kind": self.kind(),
            "campaign": self.campaign().map(CampaignId::as_str),
            "batch": batch.map(|b| b.batch_id.as_str()),
            "recipients": batch.map_or(0, |b| b.recipients.len()),
            "channels": self.channels().iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "reason": self.reason,
            "attempts": self.attempts,
            "age_secs": self.age_secs(now),
            "user_ids": batch.map_or_else(Vec::new, |b| {
                b.recipients.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>()
            }),
            "failures": batch.map_or_else(Vec::new, |b| {
                b.failures
                    .iter()
                    .enumerate()
                    .map(|(i, failure)| {
                        let mut value = serde_json::json!(failure);
                        if let Some(kind) = self.kinds.get(i) {
                            value["kind"] = kind.as_str().into();
                        }
                        value
                    })
                    .collect::<Vec<_>>()
            }),
        });
        if let Content::Undecodable(body) = &self.content {
            let preview = &body[..body.len().min(BODY_PREVIEW)];
            value["body"] = String::from_utf8_lossy(preview).into();
        }
        value
    }

    fn cells(&self, now: u64) -> [String; 7] {
        let dash = || "-".to_string();
        let batch = self.batch();
        let channels = self.channels();
        [
            self.campaign().map_or_else(dash, ToString::to_string),
            batch.map_or_else(dash, |b| b.batch_id.clone()),
            batch.map_or_else(dash, |b| b.recipients.len().to_string()),
            if channels.is_empty() {
                dash()
            } else {
                channels
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            cut(&self.reason, REASON_WIDTH),
            self.attempts.map_or_else(dash, |a| a.to_string()),
            self.age_secs(now).map_or_else(dash, age),
        ]
    }
}

fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(key)
}

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

fn death_time(properties: &BasicProperties) -> Option<u64> {
    match first_death(properties)?.inner().get("time")? {
        AMQPValue::Timestamp(time) => Some(*time),
        _ => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(width - 1).collect();
        short.push('…');
        short
    }
}

/// `45s`, `12m`, `5h`, `3d`: coarse on purpose, it only has to tell old from new.
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The table of `sunset dlq list`, ending with a count.
pub fn table(letters: &[&DeadLetter], now: u64) -> String {
    const HEADERS: [&str; 7] = [
        "campaign",
        "batch",
        "recipients",
        "channel",
        "reason",
        "attempts",
        "age",
    ];
    // Numbers are right-aligned.
    const RIGHT: [bool; 7] = [false, false, true, false, false, true, true];
    let rows: Vec<[String; 7]> = letters.iter().map(|l| l.cells(now)).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(RIGHT)
            .map(|((cell, width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(HEADERS);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    let recipients: usize = letters
        .iter()
        .filter_map(|l| l.batch())
        .map(|b| b.recipients.len())
        .sum();
    out.push_str(&format!(
        "{}, {}\n",
        plural(letters.len(), "dead letter", "dead letters"),
        plural(recipients, "recipient", "recipients")
    ));
    out
}

/// `sunset dlq list`: the table (or JSON lines); every dead letter stays where it was.
async fn list(broker: &Broker, filter: &Filter, json: bool) -> anyhow::Result<String> {
    let hold = Hold::take(broker)
        .await
        .context("Failed to read the dead-letter queue")?;
    let now = now();
    let shown: Vec<&DeadLetter> = hold
        .letters
        .iter()
        .map(|(_, letter)| letter)
        .filter(|letter| filter.matches(letter))
        .collect();
    let out = if json {
        shown
            .iter()
            .map(|letter| format!("{}\n", letter.to_json(now)))
            .collect()
    } else if shown.is_empty() {
        format!("no dead letters{}\n", filter.describe())
    } else {
        let mut out = table(&shown, now);
        if hold.truncated {
            out.push_str(&format!(
                "(only the first {MAX_HELD} dead letters in the queue were read)\n"
            ));
        }
        out
    };
    hold.release(broker).await;
    Ok(out)
}

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
async fn replay(
    broker: &Broker,
    filter: &Filter,
    limit: Option<usize>,
    dry_run: bool,
    include_unknown: bool,
) -> anyhow::Result<()> {
    let mut hold = Hold::take(broker)
        .await
        .context("Failed to read the dead-letter queue")?;
    let names = broker.names();
    let verb = if dry_run { "would replay" } else { "replayed" };
    let (mut moved, mut recipients, mut batches_sent) = (0, 0, 0);
    let (mut undecodable, mut empty) = (0, 0);
    // Sends of unknown outcome left in the queue, and dead letters published to hold them.
    let (mut unknown_left, mut requeued) = (0, 0);
    for i in 0..hold.letters.len() {
        if limit.is_some_and(|limit| moved >= limit) {
            break;
        }
        let (tag, letter) = &hold.letters[i];
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
    let left = hold.letters.len() - hold.removed + requeued;
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

/// `sunset dlq purge --yes`: acks (deletes) the campaign's dead letters, keeps the rest in order.
async fn purge(broker: &Broker, campaign: &CampaignId) -> anyhow::Result<()> {
    let filter = Filter(Some(campaign.clone()));
    let mut hold = Hold::take(broker)
        .await
        .context("Failed to read the dead-letter queue")?;
    let mut recipients = 0;
    for i in 0..hold.letters.len() {
        let (tag, letter) = &hold.letters[i];
        if !filter.matches(letter) {
            continue;
        }
        let (tag, count) = (*tag, letter.batch().map_or(0, |b| b.recipients.len()));
        hold.remove(tag)
            .await
            .context("Failed to delete a dead letter")?;
        recipients += count;
    }
    let (purged, left) = (hold.removed, hold.letters.len() - hold.removed);
    hold.release(broker).await;
    crate::say!(
        "purged {} of campaign {campaign} ({}); {left} left in {}",
        plural(purged, "dead letter", "dead letters"),
        plural(recipients, "recipient", "recipients"),
        broker.names().dlq
    )?;
    Ok(())
}

/// The usage error of `purge` without `--yes`, saying how many it would delete when the broker
/// can tell (nothing is deleted either way).
async fn refuse_purge(config: &Config, campaign: &CampaignId) -> InvalidInput {
    let count = async {
        let broker = connect(config).await?;
        let hold = Hold::take(&broker).await;
        let count = match hold {
            Ok(hold) => {
                let filter = Filter(Some(campaign.clone()));
                let n = hold
                    .letters
                    .iter()
                    .filter(|(_, l)| filter.matches(l))
                    .count();
                hold.release(&broker).await;
                Ok(n)
            }
            Err(e) => Err(anyhow::Error::new(e)),
        };
        broker.close().await;
        count
    }
    .await;
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

/// Every dead letter in the queue, delivered to one consumer on a channel of its own and not yet
/// settled: closing the channel ([`Hold::release`]) puts back all not removed, in order.
struct Hold {
    channel: lapin::Channel,
    queue: String,
    /// In queue order, with the delivery tag to ack them by.
    letters: Vec<(DeliveryTag, DeadLetter)>,
    /// Acked (deleted) so far.
    removed: usize,
    /// Acks sent since the last barrier.
    unsynced: usize,
    /// The queue had more than [`MAX_HELD`]: only the first are here.
    truncated: bool,
}

impl Hold {
    /// Takes every dead letter ready now (and any that arrive meanwhile), up to [`MAX_HELD`].
    async fn take(broker: &Broker) -> Result<Hold, BrokerError> {
        let queue = broker.names().dlq.clone();
        let ready = broker.ready_count(&queue).await? as usize;
        let channel = broker.open_channel().await?;
        channel
            .basic_qos(MAX_HELD as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut hold = Hold {
            channel,
            queue,
            letters: Vec::new(),
            removed: 0,
            unsynced: 0,
            truncated: false,
        };
        // The queue hands a new consumer its messages at its own pace (slowly on a busy broker):
        // a barrier before they are all out would take one itself, and give it back out of
        // order. So first wait for those ready before the consumer came.
        let waited = tokio::time::Instant::now() + FIRST_DELIVERIES;
        while hold.letters.len() < ready.min(MAX_HELD) {
            match tokio::time::timeout_at(waited, consumer.next()).await {
                Ok(Some(delivery)) => hold.keep(delivery?),
                Ok(None) => return Err(BrokerError::ConsumerEnded),
                Err(_) => break,
            }
        }
        // While this consumer has credit, the queue hands it every message as soon as it is
        // ready, so a barrier finds the queue empty; the deliveries it made before are on the
        // wire ahead of the barrier's reply. Done when a barrier brings nothing new.
        loop {
            hold.barrier().await?;
            let fresh = hold.drain(&mut consumer)?;
            if fresh == 0 || hold.truncated {
                break;
            }
        }
        Ok(hold)
    }

    /// Moves the deliveries already received into `letters`; returns how many.
    fn drain(&mut self, consumer: &mut Consumer) -> Result<usize, BrokerError> {
        let mut fresh = 0;
        while let Some(next) = consumer.next().now_or_never() {
            let delivery = match next {
                Some(delivery) => delivery?,
                None => return Err(BrokerError::ConsumerEnded),
            };
            self.keep(delivery);
            fresh += 1;
            if self.letters.len() >= MAX_HELD {
                self.truncated = true;
                break;
            }
        }
        Ok(fresh)
    }

    /// Holds a delivered dead letter.
    fn keep(&mut self, delivery: lapin::message::Delivery) {
        let letter = DeadLetter::read(&delivery.data, &delivery.properties);
        self.letters.push((delivery.delivery_tag, letter));
    }

    /// A `basic.get` round trip: the queue answers it after applying everything this channel
    /// sent before it. It finds the queue empty unless the consumer's credit ran out.
    async fn barrier(&mut self) -> Result<(), BrokerError> {
        self.unsynced = 0;
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        if let Some(message) = got {
            // Only past MAX_HELD: give it straight back (it lands just ahead of those held).
            self.truncated = true;
            self.channel
                .basic_nack(
                    message.delivery.delivery_tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Acks (deletes) one held dead letter.
    async fn remove(&mut self, tag: DeliveryTag) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await?;
        self.removed += 1;
        self.unsynced += 1;
        if self.unsynced >= ACKS_PER_BARRIER {
            self.barrier().await?;
        }
        Ok(())
    }

    /// Closes the channel, which puts back every dead letter not removed, in order; then waits
    /// (a little) until the queue shows them, so a command run next sees them all.
    async fn release(mut self, broker: &Broker) {
        if self.unsynced > 0
            && let Err(e) = self.barrier().await
        {
            warn!(error = %e, "could not confirm the last deletions");
        }
        let kept = self.letters.len() - self.removed;
        if let Err(e) = self.channel.close(200, "done".into()).await {
            warn!(error = %e, "closing the dead-letter channel failed; RabbitMQ puts its messages back when the connection ends");
            return;
        }
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        loop {
            match broker.ready_count(&self.queue).await {
                Ok(ready) if ready as usize >= kept => return,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(ready) => {
                    warn!(
                        ready,
                        kept, "dead letters are still on their way back to the queue"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "could not count the dead letters put back");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Failure, Recipient, UserId, VERSION};
    use crate::render::{TemplateName, Vars};
    use lapin::types::{FieldArray, LongString};

    fn recipient(id: &str) -> Recipient {
        Recipient {
            user_id: UserId::parse(id).expect("id"),
            email: None,
            locale: None,
            name: None,
            vars: Vars::new(),
        }
    }

    fn batch(failures: &[(&str, Channel)]) -> Batch {
        Batch {
            version: VERSION,
            campaign_id: CampaignId::parse("c").expect("id"),
            batch_id: "c:000007".into(),
            template: TemplateName::parse("t").expect("name"),
            channels: Channel::ALL.to_vec(),
            deadline: None,
            vars: Vars::new(),
            recipients: vec![recipient("a"), recipient("b")],
            failures: failures
                .iter()
                .map(|(id, channel)| Failure {
                    user_id: UserId::parse(id).expect("id"),
                    channel: *channel,
                    error: "550 5.1.1 Mailbox unavailable".into(),
                })
                .collect(),
        }
    }

    fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in headers {
            table.insert((*key).into(), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

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
    fn an_undecodable_body_is_kept_and_shown_with_dashes() {
        let letter = DeadLetter::read(
            b"{not json",
            &properties(&[(ERROR_HEADER, long("invalid batch: key must be a string"))]),
        );
        assert_eq!(letter.content, Content::Undecodable(b"{not json".to_vec()));
        assert!(letter.replay_batches().is_empty());
        assert!(!Filter::parse(Some("c")).expect("valid").matches(&letter));
        assert!(Filter::parse(None).expect("valid").matches(&letter));
        let json = letter.to_json(0);
        assert_eq!(json["campaign"], serde_json::Value::Null);
        assert_eq!(json["body"], "{not json");
        let out = table(&[&letter], 0);
        let row = out.lines().nth(1).expect("a row");
        assert!(row.starts_with("-  "), "{out}");
        assert!(row.contains("invalid batch"), "{out}");
    }

    #[test]
    fn the_table_lines_up_and_counts() {
        let one = DeadLetter::read(
            &batch(&[("a", Channel::Push)]).encode(),
            &properties(&[(ERROR_HEADER, long("x".repeat(80).as_str()))]),
        );
        let out = table(&[&one, &one], 100);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0].find("reason"), lines[1].find("xxx"), "{out}");
        assert!(lines[1].contains(&format!("{}…", "x".repeat(REASON_WIDTH - 1))));
        assert_eq!(lines[3], "2 dead letters, 4 recipients");
    }

    #[test]
    fn sends_of_unknown_outcome_split_off_with_their_recipients_and_kinds() {
        let mut both = batch(&[("a", Channel::Email), ("b", Channel::Email)]);
        both.failures.push(Failure {
            user_id: UserId::parse("a").expect("id"),
            channel: Channel::Push,
            error: "handed over, no reply".into(),
        });
        let kinds = |kinds: &[&str]| {
            AMQPValue::FieldArray(FieldArray::from(
                kinds.iter().map(|kind| long(kind)).collect::<Vec<_>>(),
            ))
        };
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
        assert_eq!(letter.to_json(0)["failures"][2]["kind"], "unknown");

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

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(10_800), "3h");
        assert_eq!(age(864_000), "10d");
    }

    #[test]
    fn a_bad_campaign_id_is_a_usage_error() {
        assert!(Filter::parse(Some("has space")).is_err());
    }
}
