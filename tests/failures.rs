//! Failure handling end to end: retries through the delay queues, dead letters, the deadline,
//! poison messages and a connection closed by the broker — real RabbitMQ, SMTP and HTTP sinks.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{TestEnv, assert_everyone_told_once, sinks_config, until_emails};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use sunset::batch::Batch;
use sunset::channel::{Channel, Delivery, Outcome, Sender};
use sunset::config::{BrokerConfig, DEFAULT_BROKER_URL, RateConfig};
use sunset::daemon::{self, Live, Readiness, Until};
use sunset::limit::Limits;
use sunset::shaping::Rules;
use sunset::worker::{Deps, RetryPolicy};
use tokio_util::sync::CancellationToken;

const UNLIMITED: &str =
    "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";
/// Short delays so retries come back within the test.
const QUICK_RETRIES: &str = "[worker]\nretry_delays_ms = [500, 1000]\n";

/// SMTP and push into the sinks, with `rate` and `worker` sections.
fn config(smtp: &SmtpSink, push: &PushSink, rate: &str, worker: &str) -> String {
    sinks_config(smtp, push, &format!("{rate}{worker}"))
}

fn audience(n: usize) -> String {
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=n {
        let _ = writeln!(csv, "u{i},u{i}@example.com,en");
    }
    csv
}

async fn enqueue(env: &TestEnv, extra: &[&str]) {
    env.sunset_async(&common::campaign_args("enqueue", "f", extra))
        .await
        .expect_code(0);
}

/// Dead letters with their attempt header: (batch, x-sunset-error, x-sunset-attempt).
async fn dead_letters(env: &TestEnv) -> Vec<(Batch, String, u32)> {
    let connection = lapin::Connection::connect(DEFAULT_BROKER_URL, Default::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(
            env.names().dlq.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let error = match headers.inner().get(sunset::broker::ERROR_HEADER) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            _ => String::new(),
        };
        let attempt = sunset::broker::attempt_of(&message.delivery.properties);
        letters.push((
            Batch::decode(&message.delivery.data).expect("batch"),
            error,
            attempt,
        ));
    }
    let _ = connection.close(200, "bye".into()).await;
    letters
}

#[tokio::test(flavor = "multi_thread")]
async fn a_451_twice_then_ok_is_delivered_once_on_the_third_attempt() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    smtp.reject_times("u1@example.com", 451, "4.7.1 Try again later", 2);
    let env = TestEnv::with_broker(&config(&smtp, &push, UNLIMITED, QUICK_RETRIES));
    env.write("audience.csv", &audience(3));
    enqueue(&env, &[]).await;
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_eq!(smtp.messages_to("u1@example.com").len(), 1, "exactly once");
    assert_eq!(smtp.messages().len(), 3);
    assert_eq!(
        push.requests().len(),
        3,
        "push went out once each, on the first attempt"
    );
    assert!(run.stderr().contains("\"attempt\":3"), "{}", run.stderr());
    assert!(dead_letters(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_550_is_dead_lettered_on_the_first_attempt() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    smtp.reject("u2@example.com", 550);
    let env = TestEnv::with_broker(&config(&smtp, &push, UNLIMITED, QUICK_RETRIES));
    env.write("audience.csv", &audience(3));
    enqueue(&env, &[]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 1);
    let (batch, error, attempt) = &letters[0];
    assert_eq!(*attempt, 1);
    assert!(error.contains("550"), "{error}");
    assert_eq!(batch.failures.len(), 1);
    assert_eq!(
        (
            batch.failures[0].user_id.as_str(),
            batch.failures[0].channel
        ),
        ("u2", Channel::Email)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_451_forever_is_dead_lettered_after_max_attempts_saying_so() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    smtp.reject_with(
        "u1@example.com",
        451,
        "4.3.0 Mailbox temporarily unavailable",
    );
    let env = TestEnv::with_broker(&config(
        &smtp,
        &push,
        UNLIMITED,
        "[worker]\nmax_attempts = 3\nretry_delays_ms = [500, 1000]\n",
    ));
    env.write("audience.csv", &audience(2));
    enqueue(&env, &["--channels", "email"]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (batch, error, attempt) = &letters[0];
    assert_eq!(*attempt, 3);
    assert!(error.starts_with("gave up after 3 attempts"), "{error}");
    assert_eq!(batch.recipients.len(), 1);
    assert_eq!(smtp.messages().len(), 1, "u2 once; u1 never");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_email_works_and_push_fails_only_the_push_is_retried() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    push.respond_times("u1", 503, None, 1);
    let env = TestEnv::with_broker(&config(&smtp, &push, UNLIMITED, QUICK_RETRIES));
    env.write("audience.csv", &audience(2));
    enqueue(&env, &[]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_eq!(
        smtp.messages_to("u1@example.com").len(),
        1,
        "the email is not sent again"
    );
    let u1: Vec<_> = push
        .requests()
        .into_iter()
        .filter(|r| r.user_id() == Some("u1"))
        .collect();
    assert_eq!(u1.len(), 2, "503, then delivered");
    assert!(dead_letters(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_as_the_least_delay() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    push.respond_times("u1", 429, Some(2), 1);
    // The first delay (0.5 s) is shorter than the 2 s asked for; the second (2.5 s) is not.
    let env = TestEnv::with_broker(&config(
        &smtp,
        &push,
        UNLIMITED,
        "[worker]\nretry_delays_ms = [500, 2500]\n",
    ));
    env.write("audience.csv", &audience(1));
    enqueue(&env, &["--channels", "push"]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let requests = push.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_longer_than_every_delay_is_honoured() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    push.respond_times("u1", 503, Some(2), 1);
    // Every delay queue is far shorter than the 2 s asked for: the retry is parked again,
    // attempt unchanged, until its x-sunset-not-before time.
    let env = TestEnv::with_broker(&config(
        &smtp,
        &push,
        UNLIMITED,
        "[worker]\nmax_attempts = 2\nretry_delays_ms = [100, 300]\n",
    ));
    env.write("audience.csv", &audience(1));
    enqueue(&env, &["--channels", "push"]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let requests = push.requests();
    assert_eq!(requests.len(), 2, "503, then delivered");
    assert!(requests[1].delivered());
    let waited = requests[1].at - requests[0].at;
    println!("measured: retried {waited:?} after a 503 asking for 2 s");
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(dead_letters(&env).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_passed_while_batches_wait_sends_nothing_and_dead_letters_everyone() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&config(&smtp, &push, UNLIMITED, QUICK_RETRIES));
    env.write("audience.csv", &audience(5));
    // A deadline already past is refused at enqueue (tests/results.rs); this one passes after.
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(5);
    enqueue(&env, &["--deadline", &deadline.to_rfc3339()]).await;
    while chrono::Utc::now() <= deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert!(smtp.messages().is_empty() && push.requests().is_empty());
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 1);
    let (batch, error, _) = &letters[0];
    assert_eq!(error, "deadline");
    assert_eq!(batch.recipients.len(), 5);
    assert_eq!(batch.failures.len(), 10);
}

/// Panics on user `poison`; delivers everyone else.
struct PanickingSender;

impl Sender for PanickingSender {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        assert_ne!(
            delivery.recipient.user_id.as_str(),
            "poison",
            "a bug that crashes processing"
        );
        Outcome::Delivered
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_batch_ends_in_the_dead_letter_queue_and_the_worker_stays_up() {
    let env = TestEnv::with_broker(QUICK_RETRIES);
    env.write("poison.csv", "user_id\npoison\n");
    env.write("audience.csv", "user_id\nok1\nok2\n");
    for (campaign, file) in [("p", "poison.csv"), ("ok", "audience.csv")] {
        env.sunset_async(&common::notice_args(
            "enqueue",
            campaign,
            &["--audience", file, "--channels", "push"],
        ))
        .await
        .expect_code(0);
    }
    let unlimited = RateConfig {
        email_per_sec: 0,
        push_per_sec: 0,
        per_domain_per_sec: sunset::config::PerDomainRates {
            default: 0,
            domains: Default::default(),
        },
        ..RateConfig::default()
    };
    let policy = RetryPolicy {
        max_attempts: 5,
        delays: vec![Duration::from_millis(500), Duration::from_millis(1000)],
    };
    let deps = Arc::new(Deps::new(
        common::shipped_templates(),
        "en".into(),
        PanickingSender,
        PanickingSender,
        Arc::new(Limits::new(&unlimited, Rules::default())),
        4,
        policy,
    ));
    let config = BrokerConfig {
        queue: env.names().work,
        ..BrokerConfig::default()
    };
    let report = daemon::run(
        &config,
        env.names(),
        deps,
        Until::Idle,
        CancellationToken::new(),
        &Readiness::default(),
        &Live::default(),
    )
    .await
    .expect("the worker survives the poison batch");
    assert_eq!(
        report.counts[&Channel::Push].delivered,
        2,
        "the good batch went out"
    );
    let connection = lapin::Connection::connect(DEFAULT_BROKER_URL, Default::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let poisoned = channel
        .basic_get(
            env.names().dlq.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the poison batch is in the DLQ");
    let batch = Batch::decode(&poisoned.delivery.data).expect("batch");
    assert_eq!(batch.recipients[0].user_id.as_str(), "poison");
    let _ = connection.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_by_the_broker_mid_campaign_loses_and_duplicates_no_one() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let limited = config(
        &smtp,
        &push,
        "[rate]\nemail_per_sec = 300\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n",
        QUICK_RETRIES,
    );
    let env = TestEnv::with_broker(&limited);
    env.write("audience.csv", &audience(1200));
    enqueue(&env, &["--batch-size", "50"]).await;
    let mut worker = env
        .command(&["worker", "--exit-when-idle"], &[])
        .spawn()
        .expect("worker");
    until_emails(&smtp, 200).await;
    let queue = env.names().work;
    tokio::task::spawn_blocking(move || {
        common::rabbitmqctl::Rabbitmqctl::shared()
            .close_connections_named(&format!("sunset {queue}"))
    })
    .await
    .expect("join");
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status}");
    assert_everyone_told_once(&smtp, &push, 1200);
}

#[test]
fn a_worker_without_a_broker_waits_then_gives_up_after_the_configured_time() {
    let env = TestEnv::new();
    env.write_config("[templates]\ndir = \"templates\"\n[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\ngive_up_after_ms = 1500\n");
    let started = Instant::now();
    let run = env.sunset(&["worker"]).expect_code(1);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let err = run.stderr();
    assert!(err.contains("cannot reach RabbitMQ; waiting"), "{err}");
    assert!(err.contains("Gave up: no RabbitMQ for 1500 ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_that_answers_421_too_fast_is_slowed_by_a_rule_and_everyone_is_told_once() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let rate =
        "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 20\n";
    let env = TestEnv::with_broker(&config(&smtp, &push, rate, QUICK_RETRIES));
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=50 {
        let _ = writeln!(
            csv,
            "s{i},s{i}@throttled.example,en\nf{i},f{i}@calm.example,en"
        );
    }
    // A rate is judged on at least ten attempts at it (shaping::MIN_ATTEMPTS).
    for i in 1..=10 {
        smtp.reject_times(
            &format!("s{i}@throttled.example"),
            421,
            "4.7.0 Too many messages, slow down",
            1,
        );
    }
    env.write("audience.csv", &csv);
    enqueue(&env, &["--channels", "email", "--batch-size", "100"]).await;
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let err = run.stderr();
    assert!(
        err.contains("rate lowered") && err.contains("rate-wording"),
        "the log names the rule: {err}"
    );
    assert!(
        !err.lines()
            .any(|line| line.contains("rate lowered") && line.contains("calm.example")),
        "{err}"
    );
    for domain in ["@throttled.example", "@calm.example"] {
        let told: std::collections::HashSet<String> = smtp
            .messages()
            .iter()
            .filter(|m| m.to[0].ends_with(domain))
            .map(|m| m.to[0].clone())
            .collect();
        assert_eq!(told.len(), 50, "{domain}: everyone told");
    }
    assert_eq!(smtp.count(), 100, "and once");
}
