//! `worker::process_batch` driven directly with in-memory senders: no broker, no network.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::shipped_templates;
use futures::future::BoxFuture;
use serde_json::json;
use sunset::batch::{Batch, CampaignId, EmailAddress, Recipient, UserId, VERSION};
use sunset::channel::{Channel, Delivery, Outcome, Sender};
use sunset::config::{PerDomainRates, RateConfig};
use sunset::ledger::{CampaignState, Claims, Entry, Ledger, LedgerError, Mark, Pair, Recorded};
use sunset::limit::Limits;
use sunset::render::{TemplateName, Vars};
use sunset::shaping::Rules;
use sunset::worker::{
    Books, BreakerPolicy, Breakers, DeadLetterKind, Deps, Owed, RetryPolicy, Verdict, process_batch,
};

/// Records what it is asked to send by its channel and answers from a table (default: delivered).
struct MemorySender {
    channel: Channel,
    sent: Mutex<Vec<(String, String)>>,
    answers: HashMap<String, Outcome>,
}

impl MemorySender {
    fn new(channel: Channel) -> MemorySender {
        MemorySender {
            channel,
            sent: Mutex::default(),
            answers: HashMap::new(),
        }
    }

    fn answering(channel: Channel, user: &str, outcome: Outcome) -> MemorySender {
        MemorySender {
            answers: [(user.to_string(), outcome)].into(),
            ..MemorySender::new(channel)
        }
    }

    /// (user, email subject or push title), sorted by user.
    fn sent(&self) -> Vec<(String, String)> {
        let mut sent = self.sent.lock().expect("lock").clone();
        sent.sort();
        sent
    }
}

impl Sender for MemorySender {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let user = delivery.recipient.user_id.to_string();
        let notice = delivery.notice;
        let headline = match self.channel {
            Channel::Email => notice.email.as_ref().map(|e| e.subject.clone()),
            Channel::Push => notice.push.as_ref().map(|p| p.title.clone()),
        };
        let headline = headline.expect("the part of this channel was rendered");
        self.sent
            .lock()
            .expect("lock")
            .push((user.clone(), headline));
        self.answers
            .get(&user)
            .cloned()
            .unwrap_or(Outcome::Delivered)
    }
}

fn unlimited() -> Arc<Limits> {
    let rates = RateConfig {
        email_per_sec: 0,
        push_per_sec: 0,
        per_domain_per_sec: PerDomainRates {
            default: 0,
            domains: Default::default(),
        },
        ..RateConfig::default()
    };
    Arc::new(Limits::new(&rates, Rules::default()))
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        delays: vec![
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
        ],
    }
}

fn deps(email: MemorySender, push: MemorySender) -> Deps<MemorySender, MemorySender> {
    Deps::new(
        shipped_templates(),
        "en".into(),
        email,
        push,
        unlimited(),
        8,
        policy(),
    )
}

/// The dead letter a verdict owes, if any: (batch, reason).
fn dead_letter(verdict: &Verdict) -> Option<(&Batch, &str)> {
    verdict.owed.iter().find_map(|owed| match owed {
        Owed::DeadLetter { batch, reason, .. } => Some((batch.as_ref(), reason.as_str())),
        Owed::Retry { .. } => None,
    })
}

/// The retries a verdict owes: (batch, queue, attempt).
fn retries(verdict: &Verdict) -> Vec<(&Batch, usize, u32)> {
    verdict
        .owed
        .iter()
        .filter_map(|owed| match owed {
            Owed::Retry {
                batch,
                queue,
                attempt,
                ..
            } => Some((batch.as_ref(), *queue, *attempt)),
            Owed::DeadLetter { .. } => None,
        })
        .collect()
}

async fn process(batch: &Batch, attempt: u32, deps: &Deps<MemorySender, MemorySender>) -> Verdict {
    process_batch(batch, attempt, &HashSet::new(), deps).await
}

fn recipient(id: &str, email: Option<&str>, locale: &str) -> Recipient {
    Recipient {
        user_id: UserId::parse(id).expect("id"),
        email: email.map(|e| EmailAddress::parse(e).expect("address")),
        locale: Some(locale.into()),
        name: None,
        vars: Vars::new(),
    }
}

fn batch(recipients: Vec<Recipient>) -> Batch {
    let vars = json!({
        "shutdown_at": "2021-02-05T00:00:00+08:00",
        "shutdown_zone": "Asia/Shanghai",
        "help_url": "https://help.xiami.example/",
        "export_url": "https://www.xiami.example/export",
        "successor_url": "https://music.conch.example/"
    });
    Batch {
        version: VERSION,
        campaign_id: CampaignId::parse("xiami-test").expect("id"),
        batch_id: "xiami-test:000001".into(),
        template: TemplateName::parse("xiami-shutdown").expect("name"),
        channels: Channel::ALL.to_vec(),
        deadline: None,
        vars: vars.as_object().expect("object").clone(),
        recipients,
        failures: Vec::new(),
    }
}

#[tokio::test]
async fn every_recipient_is_sent_once_per_channel_in_their_language() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let batch = batch(vec![
        recipient("u1", Some("a@example.com"), "ar-EG"),
        recipient("u2", Some("b@example.com"), "zh-TW"),
        recipient("u3", None, "en-GB"),
    ]);
    let verdict = process(&batch, 1, &deps).await;
    assert!(verdict.owed.is_empty(), "{verdict:?}");
    let report = verdict.report;
    let emails = deps.email.sent();
    assert_eq!(emails.len(), 2, "u3 has no email: {emails:?}");
    assert!(emails[0].1.contains("شيامي"), "{emails:?}");
    assert!(emails[1].1.contains("蝦米音樂"), "{emails:?}");
    let pushes = deps.push.sent();
    assert_eq!(pushes.len(), 3, "{pushes:?}");
    assert!(
        pushes[2].1.starts_with("Xiami Music closes on"),
        "{pushes:?}"
    );
    assert_eq!(report.no_email, 1);
    assert_eq!(report.counts[&Channel::Email].delivered, 2);
    assert_eq!(report.counts[&Channel::Push].delivered, 3);
}

#[tokio::test]
async fn permanent_failures_are_dead_lettered_and_transient_ones_retried_per_channel() {
    let email = MemorySender::answering(
        Channel::Email,
        "u2",
        Outcome::permanent("550 mailbox unavailable"),
    );
    let push = MemorySender::answering(Channel::Push, "u3", Outcome::transient("503 from gateway"));
    let deps = deps(email, push);
    let batch = batch(vec![
        recipient("u1", Some("a@example.com"), "en"),
        recipient("u2", Some("b@example.com"), "zh"),
        recipient("u3", Some("c@example.com"), "ar"),
    ]);
    let verdict = process(&batch, 1, &deps).await;
    let (dead, reason) = dead_letter(&verdict).expect("u2's email is owed to the DLQ");
    let failed: Vec<&str> = dead.recipients.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(failed, ["u2"]);
    assert_eq!(dead.failures.len(), 1);
    assert_eq!(
        (dead.failures[0].channel, dead.failures[0].error.as_str()),
        (Channel::Email, "550 mailbox unavailable")
    );
    assert_eq!(reason, "550 mailbox unavailable");
    assert_eq!(dead.batch_id, batch.batch_id);

    let retries = retries(&verdict);
    assert_eq!(retries.len(), 1, "{retries:?}");
    let (retry, queue, attempt) = retries[0];
    assert_eq!((queue, attempt), (0, 2));
    assert_eq!(
        retry.channels,
        [Channel::Push],
        "u3's email went out; only the push is retried"
    );
    assert_eq!(retry.recipients.len(), 1);
    assert_eq!(retry.recipients[0].user_id.as_str(), "u3");

    // Recipients by fate: u3's push waits for its retry, so it is not counted yet.
    let counts = &verdict.report.counts;
    assert_eq!(
        (
            counts[&Channel::Email].delivered,
            counts[&Channel::Email].dead
        ),
        (2, 1)
    );
    assert_eq!(
        (
            counts[&Channel::Push].delivered,
            counts[&Channel::Push].dead
        ),
        (2, 0)
    );
}

#[tokio::test]
async fn a_transient_failure_on_the_last_attempt_is_dead_lettered_saying_so() {
    let push = MemorySender::answering(Channel::Push, "u1", Outcome::transient("503 from gateway"));
    let deps = deps(MemorySender::new(Channel::Email), push);
    let batch = batch(vec![recipient("u1", Some("a@example.com"), "en")]);
    let verdict = process(&batch, 3, &deps).await;
    assert!(retries(&verdict).is_empty());
    let (dead, reason) = dead_letter(&verdict).expect("dead letter");
    assert_eq!(reason, "gave up after 3 attempts: 503 from gateway");
    assert_eq!(dead.failures[0].channel, Channel::Push);
}

#[tokio::test]
async fn a_requested_wait_picks_a_delay_queue_at_least_that_long() {
    let push = MemorySender::answering(
        Channel::Push,
        "u1",
        Outcome::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(5)),
            throttled: true,
        },
    );
    let deps = deps(MemorySender::new(Channel::Email), push);
    let batch = batch(vec![recipient("u1", None, "en")]);
    let verdict = process(&batch, 1, &deps).await;
    assert_eq!(
        retries(&verdict)[0].1,
        1,
        "1 s is shorter than the 5 s asked for; 10 s is not"
    );
    assert_eq!(policy().queue(2, Duration::ZERO), 1);
    assert_eq!(
        policy().queue(9, Duration::ZERO),
        2,
        "past the last delay, the last queue"
    );
    assert_eq!(policy().queue(1, Duration::from_secs(3600)), 2);
}

#[tokio::test]
async fn pairs_delivered_before_are_not_sent_again() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let batch = batch(vec![
        recipient("u1", Some("a@example.com"), "en"),
        recipient("u2", Some("b@example.com"), "en"),
    ]);
    let already: HashSet<(UserId, Channel)> =
        [(UserId::parse("u1").expect("id"), Channel::Email)].into();
    let verdict = process_batch(&batch, 1, &already, &deps).await;
    assert!(verdict.owed.is_empty());
    assert_eq!(deps.email.sent().len(), 1, "only u2's email");
    assert_eq!(deps.push.sent().len(), 2);
    assert_eq!(verdict.delivered.len(), 4, "u1's email counts as delivered");
}

#[tokio::test]
async fn a_batch_past_its_deadline_sends_nothing_and_dead_letters_everyone_with_reason_deadline() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let mut batch = batch(vec![
        recipient("u1", Some("a@example.com"), "en"),
        recipient("u2", None, "zh"),
    ]);
    batch.deadline =
        Some(chrono::DateTime::parse_from_rfc3339("2021-02-05T00:00:00+08:00").expect("date"));
    let verdict = process(&batch, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    let (dead, reason) = dead_letter(&verdict).expect("dead letter");
    assert_eq!(reason, "deadline");
    assert_eq!(dead.recipients.len(), 2);
    assert_eq!(dead.failures.len(), 3);
    assert!(dead.failures.iter().all(|f| f.error == "deadline"));
}

#[tokio::test]
async fn a_retry_that_would_come_after_the_deadline_is_dead_lettered_instead() {
    let push = MemorySender::answering(Channel::Push, "u1", Outcome::transient("503"));
    let deps = deps(MemorySender::new(Channel::Email), push);
    let mut batch = batch(vec![recipient("u1", None, "en")]);
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(500);
    batch.deadline = Some(soon.fixed_offset());
    let verdict = process(&batch, 1, &deps).await;
    assert!(retries(&verdict).is_empty());
    let (_, reason) = dead_letter(&verdict).expect("dead letter");
    assert_eq!(reason, "deadline");
}

#[tokio::test]
async fn a_missing_campaign_variable_fails_the_channel_using_it_and_the_other_goes_out() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let mut batch = batch(vec![recipient("u1", Some("a@example.com"), "en")]);
    // Only the email uses it: each send renders its own channel's parts.
    batch.vars.remove("export_url");
    let verdict = process(&batch, 1, &deps).await;
    let (dead_letter, _) = dead_letter(&verdict).expect("dead letter");
    assert_eq!(dead_letter.failures.len(), 1, "{:?}", dead_letter.failures);
    assert_eq!(dead_letter.failures[0].channel, Channel::Email);
    assert!(
        dead_letter
            .failures
            .iter()
            .all(|f| f.error.contains("`export_url`")),
        "{:?}",
        dead_letter.failures
    );
    assert!(deps.email.sent().is_empty());
    assert_eq!(deps.push.sent().len(), 1);
}

#[tokio::test]
async fn an_unknown_template_fails_every_recipient_naming_the_template() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let mut batch = batch(vec![
        recipient("u1", Some("a@example.com"), "en"),
        recipient("u2", None, "zh"),
    ]);
    batch.template = TemplateName::parse("no-such-notice").expect("name");
    let verdict = process(&batch, 1, &deps).await;
    let (dead_letter, _) = dead_letter(&verdict).expect("dead letter");
    assert_eq!(dead_letter.recipients.len(), 2);
    assert_eq!(
        dead_letter.failures.len(),
        3,
        "email+push for u1, push for u2"
    );
    assert!(
        dead_letter.failures[0].error.contains("no-such-notice"),
        "{:?}",
        dead_letter.failures
    );
}

#[tokio::test]
async fn push_only_batches_never_touch_the_email_sender() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let mut batch = batch(vec![recipient("u1", Some("a@example.com"), "en")]);
    batch.channels = vec![Channel::Push];
    assert!(process(&batch, 1, &deps).await.owed.is_empty());
    assert!(deps.email.sent().is_empty());
    assert_eq!(deps.push.sent().len(), 1);
}

/// A SQLite ledger in a temp folder, and its URL for a second worker's ledger on the same file.
fn ledger() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    (dir, url)
}

#[tokio::test]
async fn pairs_another_live_worker_is_sending_wait_at_the_same_attempt_and_are_not_sent() {
    let (_dir, url) = ledger();
    let other = Ledger::open(&url).expect("open");
    let batch = batch(vec![
        recipient("u1", Some("u1@example.com"), "en"),
        recipient("u2", Some("u2@example.com"), "ar"),
    ]);
    other
        .claim(
            &batch.campaign_id,
            &[Pair {
                user_id: UserId::parse("u1").expect("id"),
                channel: Channel::Email,
                locale: "en".into(),
                address: Some(EmailAddress::parse("u1@example.com").expect("address")),
            }],
        )
        .await
        .expect("the other worker claims u1's email");
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    )
    .with_ledger(Ledger::open(&url).expect("open"));

    let verdict = process(&batch, 2, &deps).await;
    let emailed: Vec<String> = deps
        .email
        .sent()
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    assert_eq!(emailed, ["u2"]);
    assert_eq!(deps.push.sent().len(), 2);
    let retries = retries(&verdict);
    assert_eq!(retries.len(), 1);
    let (held, _, attempt) = retries[0];
    assert_eq!(attempt, 2, "waiting does not use up an attempt");
    assert_eq!(held.channels, [Channel::Email]);
    assert_eq!(held.recipients.len(), 1);
    assert_eq!(held.recipients[0].user_id.as_str(), "u1");

    // The same batch again: everything it sent is skipped and counted as delivered.
    let again = process(&batch, 2, &deps).await;
    assert_eq!(deps.email.sent().len(), 1);
    assert_eq!(deps.push.sent().len(), 2);
    assert_eq!(again.delivered.len(), 3);
}

#[tokio::test]
async fn a_paused_campaign_holds_the_whole_batch_and_a_cancelled_one_sends_nothing_and_owes_nothing()
 {
    let (_dir, url) = ledger();
    let ledger = Ledger::open(&url).expect("open");
    let batch = batch(vec![recipient("u1", Some("u1@example.com"), "en")]);
    ledger
        .record_campaign(&sunset::ledger::Campaign {
            id: batch.campaign_id.clone(),
            template: "xiami-shutdown".into(),
            recipients: 1,
            deadline: None,
            totals: HashMap::new(),
        })
        .await
        .expect("record");
    ledger
        .set_state(&batch.campaign_id, CampaignState::Paused)
        .await
        .expect("pause");
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    )
    .with_ledger(Ledger::open(&url).expect("open"));

    let paused = process(&batch, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    let retries = retries(&paused);
    assert_eq!(retries.len(), 1);
    assert_eq!((retries[0].0.recipients.len(), retries[0].2), (1, 1));

    ledger
        .set_state(&batch.campaign_id, CampaignState::Cancelled)
        .await
        .expect("cancel");
    // The state is cached for a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cancelled = process(&batch, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    assert!(cancelled.owed.is_empty());
    let status = ledger.status(&batch.campaign_id).await.expect("status");
    assert_eq!(status.total().cancelled, 2);
}

/// The ledger as the worker sees it, faked: a state per call (the last one repeats), a claim
/// answer, whether sends may start, and every outcome recorded.
struct FakeBooks {
    states: Mutex<Vec<CampaignState>>,
    claim: fn() -> Result<Claims, LedgerError>,
    may_send: bool,
    recorded: Mutex<Vec<Entry>>,
}

impl FakeBooks {
    fn new(claim: fn() -> Result<Claims, LedgerError>) -> FakeBooks {
        FakeBooks {
            states: Mutex::new(vec![CampaignState::Running]),
            claim,
            may_send: true,
            recorded: Mutex::default(),
        }
    }

    fn marks(&self) -> Vec<(String, Channel, Mark)> {
        let mut marks: Vec<_> = self
            .recorded
            .lock()
            .expect("lock")
            .iter()
            .map(|e| (e.pair.user_id.to_string(), e.pair.channel, e.mark))
            .collect();
        marks.sort();
        marks
    }
}

impl Books for FakeBooks {
    fn state<'a>(
        &'a self,
        _: &'a CampaignId,
        _: &'a str,
    ) -> BoxFuture<'a, Result<CampaignState, LedgerError>> {
        let mut states = self.states.lock().expect("lock");
        let state = if states.len() > 1 {
            states.remove(0)
        } else {
            states[0]
        };
        Box::pin(async move { Ok(state) })
    }

    fn suppressed<'a>(
        &'a self,
        _: &'a CampaignId,
        _: &'a [&'a EmailAddress],
        _: bool,
    ) -> BoxFuture<'a, Result<HashSet<EmailAddress>, LedgerError>> {
        Box::pin(async { Ok(HashSet::new()) })
    }

    fn claim<'a>(
        &'a self,
        _: &'a CampaignId,
        _: &'a [Pair],
    ) -> BoxFuture<'a, Result<Claims, LedgerError>> {
        Box::pin(async move { (self.claim)() })
    }

    fn may_send(&self, _: &Claims) -> bool {
        self.may_send
    }

    fn record<'a>(
        &'a self,
        _: &'a Claims,
        entry: Entry,
    ) -> BoxFuture<'a, Result<Recorded, LedgerError>> {
        self.recorded.lock().expect("lock").push(entry);
        Box::pin(async { Ok(Recorded::Written) })
    }

    fn give_up(&self, _: Vec<Entry>) -> BoxFuture<'_, Result<(), LedgerError>> {
        Box::pin(async { Ok(()) })
    }

    fn finished(&self, _: i64) {}
}

fn all_ours() -> Result<Claims, LedgerError> {
    Ok(Claims::all(1, "fake"))
}

fn with_books(
    email: MemorySender,
    push: MemorySender,
    books: &Arc<FakeBooks>,
) -> Deps<MemorySender, MemorySender> {
    deps(email, push).with_books(Arc::clone(books) as Arc<dyn Books>)
}

#[tokio::test]
async fn a_ledger_error_waiting_cannot_fix_dead_letters_the_batch_and_one_it_can_holds_it() {
    let one = batch(vec![recipient("u1", Some("u1@example.com"), "en")]);
    let refused = Arc::new(FakeBooks::new(|| {
        Err(LedgerError::Corrupt("a value sunset never writes".into()))
    }));
    let deps = with_books(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
        &refused,
    );
    let verdict = process(&one, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    let Some(Owed::DeadLetter { reason, kinds, .. }) = verdict.owed.first() else {
        panic!("a dead letter: {verdict:?}");
    };
    assert!(reason.contains("ledger refused"), "{reason}");
    assert!(kinds.iter().all(|k| *k == DeadLetterKind::LedgerRefused));

    let away = Arc::new(FakeBooks::new(|| Err(LedgerError::NoLease)));
    let deps = with_books(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
        &away,
    );
    let verdict = process(&one, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    assert_eq!(retries(&verdict).len(), 1, "held back: {verdict:?}");
}

#[tokio::test]
async fn no_send_starts_without_a_lease_and_a_pause_seen_at_the_send_records_the_pairs_held() {
    let one = batch(vec![recipient("u1", Some("u1@example.com"), "en")]);
    let lapsed = Arc::new(FakeBooks {
        may_send: false,
        ..FakeBooks::new(all_ours)
    });
    let deps = with_books(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
        &lapsed,
    );
    let verdict = process(&one, 2, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    let retries = retries(&verdict);
    assert_eq!(
        (retries.len(), retries[0].2),
        (1, 2),
        "held at the same attempt"
    );

    // Running when the batch is admitted, paused when its sends get their slots.
    let paused = Arc::new(FakeBooks {
        states: Mutex::new(vec![CampaignState::Running, CampaignState::Paused]),
        ..FakeBooks::new(all_ours)
    });
    let deps = with_books(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
        &paused,
    );
    let verdict = process(&one, 1, &deps).await;
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
    assert_eq!(
        paused.marks(),
        [
            ("u1".to_string(), Channel::Email, Mark::Held),
            ("u1".to_string(), Channel::Push, Mark::Held)
        ]
    );
    assert!(
        dead_letter(&verdict).is_none(),
        "held pairs are not failures"
    );
}

#[tokio::test]
async fn an_unknown_email_is_recorded_unknown_and_dead_lettered_while_an_unknown_push_is_retried() {
    let one = batch(vec![recipient("u1", Some("u1@example.com"), "en")]);
    let books = Arc::new(FakeBooks::new(all_ours));
    let deps = with_books(
        MemorySender::answering(Channel::Email, "u1", Outcome::unknown("no final reply")),
        MemorySender::answering(Channel::Push, "u1", Outcome::unknown("no status")),
        &books,
    );
    let verdict = process(&one, 1, &deps).await;
    assert_eq!(
        books.marks(),
        [
            ("u1".to_string(), Channel::Email, Mark::Unknown),
            ("u1".to_string(), Channel::Push, Mark::Failed)
        ]
    );
    let Some(Owed::DeadLetter { batch, kinds, .. }) = verdict
        .owed
        .iter()
        .find(|o| matches!(o, Owed::DeadLetter { .. }))
    else {
        panic!("a dead letter: {verdict:?}");
    };
    assert_eq!(batch.failures[0].channel, Channel::Email);
    assert_eq!(kinds, &[DeadLetterKind::Unknown]);
    let retries = retries(&verdict);
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].0.channels, [Channel::Push]);
}

#[tokio::test]
async fn an_unreachable_relay_holds_email_at_the_same_attempt_and_push_still_goes() {
    let refused = Outcome::unreachable("SMTP relay 127.0.0.1:9 unreachable: connection refused");
    let users: Vec<String> = (1..=8).map(|i| format!("u{i}")).collect();
    let email = MemorySender {
        answers: users.iter().map(|u| (u.clone(), refused.clone())).collect(),
        ..MemorySender::new(Channel::Email)
    };
    let breakers = Arc::new(Breakers::new(BreakerPolicy {
        after: 3,
        probe_every: Duration::from_secs(3600),
    }));
    let deps = deps(email, MemorySender::new(Channel::Push)).with_breakers(Arc::clone(&breakers));
    let recipients = users
        .iter()
        .map(|u| recipient(u, Some(&format!("{u}@example.com")), "en"))
        .collect();
    let batch = batch(recipients);

    let verdict = process(&batch, 2, &deps).await;

    assert!(dead_letter(&verdict).is_none(), "{verdict:?}");
    let held = retries(&verdict);
    assert_eq!(held.len(), 1, "{verdict:?}");
    let (held, _, attempt) = held[0];
    assert_eq!(attempt, 2, "holding spends no attempt");
    assert_eq!(held.recipients.len(), 8);
    assert_eq!(held.channels, [Channel::Email]);
    assert_eq!(deps.push.sent().len(), 8, "push still goes");
    let email = verdict.report.counts.get(&Channel::Email);
    assert_eq!(
        email.map_or(0, |c| c.dead + c.unknown),
        0,
        "nothing given up"
    );
    let open = breakers.open();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].channel, Channel::Email);
    let tried = deps.email.sent().len();
    let again = process(&batch, 2, &deps).await;
    assert_eq!(
        deps.email.sent().len(),
        tried,
        "an open breaker starts no send until its probe is due"
    );
    assert_eq!(retries(&again).len(), 1);
}

#[tokio::test]
async fn with_the_breaker_off_an_unreachable_relay_spends_attempts() {
    let email = MemorySender::answering(
        Channel::Email,
        "u1",
        Outcome::unreachable("SMTP relay 127.0.0.1:9 unreachable: connection refused"),
    );
    let off = Arc::new(Breakers::new(BreakerPolicy {
        after: 0,
        probe_every: Duration::from_secs(1),
    }));
    let deps = deps(email, MemorySender::new(Channel::Push)).with_breakers(off);
    let batch = batch(vec![recipient("u1", Some("a@example.com"), "en")]);

    let verdict = process(&batch, 1, &deps).await;

    let retries = retries(&verdict);
    assert_eq!(retries.len(), 1, "{verdict:?}");
    assert_eq!(retries[0].2, 2, "the next attempt");
    let email = verdict.report.counts.get(&Channel::Email);
    assert_eq!(
        email.map_or(0, |c| c.delivered + c.dead),
        0,
        "pending, retried"
    );
}
