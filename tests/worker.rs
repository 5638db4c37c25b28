//! `worker::process_batch` driven directly with in-memory senders: no broker, no network.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::shipped_templates;
use serde_json::json;
use sunset::batch::{Batch, CampaignId, EmailAddress, Recipient, UserId, VERSION};
use sunset::channel::{Channel, Delivery, Outcome, Sender};
use sunset::config::{PerDomainRates, RateConfig};
use sunset::limit::Limits;
use sunset::render::{TemplateName, Vars};
use sunset::worker::{Deps, Verdict, process_batch};

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
    };
    Arc::new(Limits::new(&rates))
}

fn deps(email: MemorySender, push: MemorySender) -> Deps<MemorySender, MemorySender> {
    Deps::new(
        shipped_templates(),
        "en".into(),
        email,
        push,
        unlimited(),
        8,
    )
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
        "shutdown_date": "2021-02-05",
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
    let verdict = process_batch(&batch, &deps).await;
    let Verdict::Delivered(report) = verdict else {
        panic!("expected delivered: {verdict:?}");
    };
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
    let by_channel = report.by_channel();
    assert_eq!(by_channel[&Channel::Email].delivered, 2);
    assert_eq!(by_channel[&Channel::Push].delivered, 3);
}

#[tokio::test]
async fn only_failed_recipients_are_dead_lettered_with_their_reasons() {
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
    let Verdict::DeadLetter {
        dead_letter,
        reason,
        report,
    } = process_batch(&batch, &deps).await
    else {
        panic!("expected a dead letter");
    };
    let failed: Vec<&str> = dead_letter
        .recipients
        .iter()
        .map(|r| r.user_id.as_str())
        .collect();
    assert_eq!(failed, ["u2", "u3"]);
    let mut failures: Vec<(String, Channel, String)> = dead_letter
        .failures
        .iter()
        .map(|f| (f.user_id.to_string(), f.channel, f.error.clone()))
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            (
                "u2".into(),
                Channel::Email,
                "550 mailbox unavailable".into()
            ),
            ("u3".into(), Channel::Push, "503 from gateway".into())
        ]
    );
    assert!(reason.contains("2 sends failed"), "{reason}");
    assert_eq!(dead_letter.batch_id, batch.batch_id);
    let by_channel = report.by_channel();
    assert_eq!(
        (
            by_channel[&Channel::Email].delivered,
            by_channel[&Channel::Email].failed
        ),
        (2, 1)
    );
    assert_eq!(
        (
            by_channel[&Channel::Push].delivered,
            by_channel[&Channel::Push].failed
        ),
        (2, 1)
    );
}

#[tokio::test]
async fn a_missing_campaign_variable_is_a_permanent_failure_and_nothing_is_sent() {
    let deps = deps(
        MemorySender::new(Channel::Email),
        MemorySender::new(Channel::Push),
    );
    let mut batch = batch(vec![recipient("u1", Some("a@example.com"), "en")]);
    batch.vars.remove("export_url");
    let Verdict::DeadLetter { dead_letter, .. } = process_batch(&batch, &deps).await else {
        panic!("expected a dead letter");
    };
    assert_eq!(dead_letter.failures.len(), 2, "{:?}", dead_letter.failures);
    assert!(
        dead_letter
            .failures
            .iter()
            .all(|f| f.error.contains("`export_url`")),
        "{:?}",
        dead_letter.failures
    );
    assert!(deps.email.sent().is_empty() && deps.push.sent().is_empty());
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
    let Verdict::DeadLetter { dead_letter, .. } = process_batch(&batch, &deps).await else {
        panic!("expected a dead letter");
    };
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
    assert!(matches!(
        process_batch(&batch, &deps).await,
        Verdict::Delivered(_)
    ));
    assert!(deps.email.sent().is_empty());
    assert_eq!(deps.push.sent().len(), 1);
}
