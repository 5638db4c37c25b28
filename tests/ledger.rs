//! The delivery ledger end to end: the built binary, real RabbitMQ, SQLite files in the test's
//! folder and the PostgreSQL on 127.0.0.1:5432, a real SMTP server and push gateway. Counts are
//! taken at the sinks; every test has its own queues and campaign ids.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::rabbitmqctl::Rabbitmqctl;
use common::smtp_sink::SmtpSink;
use common::tcp_proxy::TcpProxy;
use common::worker_process::signal;
use common::{
    Db, TestEnv, assert_everyone_told_once, audience_csv, campaign_args, emails_per_address,
    exit_by, pushes_per_user, sample_vars, sinks_config, status_json, unique, until_emails,
};
use serde_json::Value;
use sunset::batch::Batch;

/// `[rate]` with `email` per second (0 = unlimited), push and domains unlimited.
fn email_rate(email: u32) -> String {
    format!(
        "[rate]\nemail_per_sec = {email}\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n"
    )
}

/// A `[ledger]` on a port nothing listens on.
const UNREACHABLE_LEDGER: &str = "[ledger]\nurl = \"postgres://postgres@127.0.0.1:1/test\"\n";

/// Which ledger a test runs on.
/// Sinks, `db`, `rate` and a `[worker]` section with quick retries and `worker` keys.
fn config(smtp: &SmtpSink, push: &PushSink, db: Db, rate: &str, worker: &str) -> String {
    sinks_config(
        smtp,
        push,
        &format!(
            "{rate}{}[worker]\nretry_delays_ms = [200, 500]\n{worker}",
            db.section()
        ),
    )
}

async fn enqueue(env: &TestEnv, campaign: &str, extra: &[&str]) {
    env.sunset_async(&campaign_args("enqueue", campaign, extra))
        .await
        .expect_code(0);
}

fn number(value: &Value, path: &[&str]) -> u64 {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {value}"))
}

/// Waits until the sink's email count has not moved for `quiet`, then returns it.
async fn settled_count(smtp: &SmtpSink, quiet: Duration) -> usize {
    let mut last = smtp.messages().len();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = smtp.messages().len();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

async fn the_same_batch_published_twice_is_sent_once(db: Db) {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(&smtp, &push, db, &email_rate(0), ""));
    let campaign = unique("twice");
    let mut batch = Batch::decode(
        serde_json::json!({
            "version": 1,
            "campaign_id": campaign,
            "batch_id": format!("{campaign}:000001"),
            "template": "xiami-shutdown",
            "channels": ["email", "push"],
            "vars": sample_vars(&env),
            "recipients": [],
        })
        .to_string()
        .as_bytes(),
    )
    .expect("a valid batch");
    for i in 1..=100 {
        batch.recipients.push(sunset::batch::Recipient {
            user_id: sunset::batch::UserId::parse(&format!("u-{i:04}")).expect("id"),
            email: Some(
                sunset::batch::EmailAddress::parse(&format!("u{i}@example.com")).expect("email"),
            ),
            locale: Some(["ar-EG", "zh-CN", "zh-TW", "en-US"][i % 4].into()),
            name: None,
            vars: Default::default(),
        });
    }
    let broker = env.broker().await;
    broker.enqueue(&batch).await.expect("publish");
    broker.enqueue(&batch).await.expect("publish again");
    broker.close().await;

    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_everyone_told_once(&smtp, &push, 100);
    assert_eq!(smtp.messages().len(), 100);
    assert_eq!(push.requests().len(), 100);
    let status = status_json(&env, &campaign).await;
    assert_eq!(number(&status, &["channels", "email", "delivered"]), 100);
    assert_eq!(number(&status, &["channels", "push", "delivered"]), 100);
    assert_eq!(number(&status, &["total", "delivered"]), 200);

    // Published a third time later: nothing more is sent.
    let broker = env.broker().await;
    broker.enqueue(&batch).await.expect("publish a third time");
    broker.close().await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_eq!(smtp.messages().len(), 100);
    assert_eq!(push.requests().len(), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_batch_published_twice_is_sent_once_on_sqlite() {
    the_same_batch_published_twice_is_sent_once(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_batch_published_twice_is_sent_once_on_postgres() {
    the_same_batch_published_twice_is_sent_once(Db::Postgres).await;
}

/// A worker SIGKILLed mid-campaign, then a second one: everyone gets the email, and the only
/// duplicates are sends that were in flight at the kill (at most `worker.concurrency`).
async fn a_killed_worker_duplicates_at_most_its_sends_in_flight(db: Db) {
    const N: usize = 2000;
    const CONCURRENCY: usize = 16;
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate = &email_rate(400);
    let env = TestEnv::with_broker(&config(
        &smtp,
        &push,
        db,
        rate,
        &format!("concurrency = {CONCURRENCY}\n"),
    ));
    let campaign = unique("crash");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(
        &env,
        &campaign,
        &["--batch-size", "100", "--channels", "email"],
    )
    .await;

    let first = env.command(&["worker"], &[]).spawn().expect("start worker");
    until_emails(&smtp, 500).await;
    let status = signal(first, "-KILL").await;
    assert!(!status.success(), "killed: {status}");
    let at_kill = smtp.messages().len();
    assert!(at_kill < N, "the first worker should not have finished");

    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let per_address = emails_per_address(&smtp);
    assert_eq!(per_address.len(), N, "every recipient got the email");
    let duplicates: usize = per_address.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates; at most {CONCURRENCY} sends were in flight at the kill"
    );
    let status = status_json(&env, &campaign).await;
    assert_eq!(
        number(&status, &["channels", "email", "delivered"]),
        N as u64
    );
    assert_eq!(number(&status, &["total", "pending"]), 0);
    eprintln!("{db:?}: {at_kill} emails at the kill, {duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_duplicates_at_most_its_sends_in_flight_on_sqlite() {
    a_killed_worker_duplicates_at_most_its_sends_in_flight(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_duplicates_at_most_its_sends_in_flight_on_postgres() {
    a_killed_worker_duplicates_at_most_its_sends_in_flight(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_on_one_postgres_ledger_never_send_a_redelivered_batch_twice() {
    const N: usize = 1000;
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate = &email_rate(250);
    let env = TestEnv::with_broker(&config(&smtp, &push, Db::Postgres, rate, ""));
    let campaign = unique("pair");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(&env, &campaign, &["--batch-size", "50"]).await;

    let a = env.command(&["worker", "--exit-when-idle"], &[]);
    let b = env.command(&["worker", "--exit-when-idle"], &[]);
    let workers: Vec<_> = [a, b]
        .into_iter()
        .map(|mut command| {
            tokio::task::spawn_blocking(move || command.output().expect("run worker"))
        })
        .collect();
    until_emails(&smtp, 300).await;
    // Both workers lose their connection while sending: their unacked batches are redelivered,
    // to either, while the batches' first copies are still being sent.
    Rabbitmqctl::shared()
        .close_connections_named(&format!("sunset {}", env.queue.as_deref().expect("queue")));
    for worker in workers {
        let output = worker.await.expect("join");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_everyone_told_once(&smtp, &push, N);
    let status = status_json(&env, &campaign).await;
    assert_eq!(number(&status, &["total", "delivered"]), 2 * N as u64);
}

/// Recipients of the pause and cancel campaigns.
const N: usize = 600;

/// An email-only campaign of `N` at 100 emails/s on SQLite, enqueued: (sink, env, campaign id).
async fn paced_campaign(prefix: &str) -> (SmtpSink, TestEnv, String) {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate = &email_rate(100);
    let env = TestEnv::with_broker(&config(&smtp, &push, Db::Sqlite, rate, ""));
    let campaign = unique(prefix);
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(
        &env,
        &campaign,
        &["--batch-size", "50", "--channels", "email"],
    )
    .await;
    (smtp, env, campaign)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_campaign_sends_nothing_until_resumed_then_completes() {
    let (smtp, env, campaign) = paced_campaign("pause").await;

    let worker = env.command(&["worker"], &[]).spawn().expect("start worker");
    until_emails(&smtp, 100).await;
    env.sunset_async(&["campaign", "pause", &campaign])
        .await
        .expect_code(0);
    // Sends that passed the state check before the pause (cached 2 s) finish; then nothing.
    let paused = settled_count(&smtp, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.messages().len(), paused, "sent while paused");
    assert!(paused < N, "the pause came too late to test: {paused}");
    let status = status_json(&env, &campaign).await;
    assert_eq!(status["state"], "paused");
    assert_eq!(number(&status, &["total", "delivered"]), paused as u64);

    env.sunset_async(&["campaign", "resume", &campaign])
        .await
        .expect_code(0);
    until_emails(&smtp, N).await;
    assert!(signal(worker, "-TERM").await.success());
    let per_address = emails_per_address(&smtp);
    assert_eq!(per_address.len(), N);
    assert!(per_address.values().all(|n| *n == 1), "sent twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_campaign_never_sends_the_rest_and_records_it_as_cancelled() {
    let (smtp, env, campaign) = paced_campaign("cancel").await;

    let worker = tokio::spawn({
        let mut command = env.command(&["worker", "--exit-when-idle"], &[]);
        async move {
            tokio::task::spawn_blocking(move || command.output().expect("worker"))
                .await
                .expect("join")
        }
    });
    until_emails(&smtp, 100).await;
    env.sunset_async(&["campaign", "cancel", &campaign])
        .await
        .expect_code(0);
    // The worker acks the cancelled batches and, with nothing left, exits.
    let output = worker.await.expect("join");
    assert!(output.status.success());
    let sent = smtp.messages().len();
    assert!(sent < N, "the cancel came too late to test: {sent}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages().len(), sent);

    let status = status_json(&env, &campaign).await;
    assert_eq!(status["state"], "cancelled");
    assert_eq!(number(&status, &["total", "delivered"]), sent as u64);
    let cancelled = number(&status, &["total", "cancelled"]);
    let pending = number(&status, &["total", "pending"]);
    assert_eq!(sent as u64 + cancelled + pending, N as u64);
    assert_eq!(
        cancelled,
        (N - sent) as u64,
        "everyone not sent is recorded as cancelled"
    );

    let run = env
        .sunset_async(&["campaign", "resume", &campaign])
        .await
        .expect_code(2);
    assert!(run.stderr().contains("cancelled"), "{}", run.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_ledger_unreachable_nothing_is_sent_and_the_batch_goes_out_once_when_it_is_back() {
    const N: usize = 200;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&sinks_config(
        &smtp,
        &push,
        &format!(
            "{}[ledger]\nurl = \"postgres://postgres@127.0.0.1:{}/test\"\n[worker]\nretry_delays_ms = [200, 500]\n",
            email_rate(0),
            proxy.port()
        ),
    ));
    let campaign = unique("away");
    env.write("audience.csv", &audience_csv(N, |_| "example.com".into()));
    enqueue(&env, &campaign, &["--batch-size", "50"]).await;

    proxy.down();
    let worker = env.command(&["worker"], &[]).spawn().expect("start worker");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(smtp.messages().len(), 0, "sent blind without a ledger");
    assert_eq!(push.requests().len(), 0, "sent blind without a ledger");

    proxy.up();
    until_emails(&smtp, N).await;
    push.wait_for(N, Duration::from_secs(30)).await;
    settled_count(&smtp, Duration::from_secs(1)).await;
    assert!(signal(worker, "-TERM").await.success());
    assert_everyone_told_once(&smtp, &push, N);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_equals_what_the_sinks_received_per_channel_and_locale() {
    const N: usize = 200;
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(
        &smtp,
        &push,
        Db::Sqlite,
        &email_rate(0),
        "max_attempts = 1\n",
    ));
    let campaign = unique("numbers");
    // Every tenth user has no email; every twentieth address is refused for good.
    let mut csv = audience_csv(N, |_| "example.com".into());
    csv = csv
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i > 0 && i % 10 == 0 {
                let mut fields: Vec<&str> = line.split(',').collect();
                fields[1] = "";
                fields.join(",")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    env.write("audience.csv", &csv);
    for i in (5..=N).step_by(20) {
        smtp.reject(&format!("u{i}@example.com"), 550);
    }
    enqueue(&env, &campaign, &["--batch-size", "40"]).await;
    let planned = status_json(&env, &campaign).await;
    assert_eq!(
        number(&planned, &["total", "pending"]),
        (N + N - N / 10) as u64
    );
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    let status = status_json(&env, &campaign).await;
    let emails = smtp.messages().len() as u64;
    assert_eq!(number(&status, &["channels", "email", "delivered"]), emails);
    assert_eq!(
        number(&status, &["channels", "email", "dead"]),
        (N / 20) as u64
    );
    assert_eq!(
        number(&status, &["channels", "push", "delivered"]),
        push.requests().len() as u64
    );
    assert_eq!(number(&status, &["total", "pending"]), 0);
    let mut per_language: HashMap<String, u64> = HashMap::new();
    for message in smtp.messages() {
        let language = message
            .parsed()
            .header_raw("Content-Language")
            .map(|v| v.trim().to_string())
            .expect("Content-Language");
        *per_language.entry(language).or_default() += 1;
    }
    for (locale, count) in per_language {
        let row = status["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["channel"] == "email" && r["locale"] == locale.as_str())
            .unwrap_or_else(|| panic!("no email row for {locale}"));
        assert_eq!(row["delivered"].as_u64(), Some(count), "email {locale}");
    }
    let pushes = pushes_per_user(&push);
    assert_eq!(pushes.len(), N);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_dead_letter_whose_recipient_was_in_fact_delivered_is_skipped() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&config(&smtp, &push, Db::Sqlite, &email_rate(0), ""));
    let campaign = unique("replay");
    env.write("audience.csv", &audience_csv(20, |_| "example.com".into()));
    enqueue(&env, &campaign, &["--batch-size", "20"]).await;
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_everyone_told_once(&smtp, &push, 20);

    // A dead letter for recipients who were delivered (say, dead-lettered by a worker whose
    // ack was lost), replayed by an operator.
    let broker = env.broker().await;
    let delivered = Batch::decode(
        serde_json::json!({
            "version": 1,
            "campaign_id": campaign,
            "batch_id": format!("{campaign}:000001"),
            "template": "xiami-shutdown",
            "channels": ["email", "push"],
            "vars": sample_vars(&env),
            "recipients": [
                {"user_id": "u-0001", "email": "u1@example.com", "locale": "ar-EG"},
                {"user_id": "u-0002", "email": "u2@example.com", "locale": "zh-CN"}
            ],
            "failures": [
                {"user_id": "u-0001", "channel": "email", "error": "421 timeout"},
                {"user_id": "u-0002", "channel": "push", "error": "503"}
            ],
        })
        .to_string()
        .as_bytes(),
    )
    .expect("batch");
    broker
        .dead_letter(&delivered, 1, "421 timeout", &["exhausted", "exhausted"])
        .await
        .expect("dead-letter");
    broker.close().await;
    env.sunset_async(&["dlq", "replay"]).await.expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_everyone_told_once(&smtp, &push, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_outbox_respects_the_ledger_on_a_second_send() {
    let env = TestEnv::with_broker("");
    let campaign = unique("outbox");
    env.write("audience.csv", &audience_csv(30, |_| "example.com".into()));
    let send = campaign_args("send", &campaign, &[]);
    env.sunset_async(&send).await.expect_code(0);
    let outbox = env.path().join("outbox");
    let emails = outbox.join("email");
    let pushes = outbox.join("push.jsonl");
    assert_eq!(std::fs::read_dir(&emails).expect("outbox").count(), 30);
    assert_eq!(
        std::fs::read_to_string(&pushes)
            .expect("push outbox")
            .lines()
            .count(),
        30
    );
    std::fs::remove_dir_all(&outbox).expect("empty the outbox");

    let again = env.sunset_async(&send).await.expect_code(0);
    assert!(
        !emails.exists() || std::fs::read_dir(&emails).expect("outbox").count() == 0,
        "emails written again:\n{}",
        again.stdout()
    );
    let pushed_again = std::fs::read_to_string(&pushes).unwrap_or_default();
    assert_eq!(
        pushed_again,
        "",
        "pushes written again:\n{}",
        again.stdout()
    );
    // Per channel: 30 recipients, none reached now, all 30 earlier, nothing dead, suppressed
    // or pending.
    for channel in ["email", "push"] {
        assert!(
            again.stdout().lines().any(|line| line
                .split_whitespace()
                .eq([channel, "30", "0", "30", "0", "0", "0", "0", "0"])),
            "{}",
            again.stdout()
        );
    }
}

#[test]
fn status_and_campaign_commands_exit_2_on_what_the_user_must_fix() {
    let env = TestEnv::new();
    let unknown = unique("nobody");
    let run = env
        .sunset(&["status", "--campaign", &unknown])
        .expect_code(2);
    assert!(run.stderr().contains(&unknown), "{}", run.stderr());
    let run = env.sunset(&["campaign", "pause", &unknown]).expect_code(2);
    assert!(
        run.stderr().contains("not in the ledger"),
        "{}",
        run.stderr()
    );
    let run = env
        .sunset(&["status", "--campaign", "bad id!"])
        .expect_code(2);
    assert!(run.stderr().contains("campaign id"), "{}", run.stderr());

    env.write_config("[templates]\ndir = \"templates\"\n[ledger]\nurl = \"mysql://db/sunset\"\n");
    let run = env.sunset(&["status", "--campaign", "x"]).expect_code(2);
    assert!(run.stderr().contains("ledger.url"), "{}", run.stderr());

    env.write_config("[templates]\ndir = \"templates\"\n[ledger]\nurl = \"\"\n");
    let run = env.sunset(&["campaign", "cancel", "x"]).expect_code(2);
    assert!(
        run.stderr().contains("ledger.url is empty"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_readies_its_ledger_before_it_consumes_and_starts_anyway_when_it_is_away() {
    // Nothing to consume: only the warm-up can have created the ledger file.
    let env = TestEnv::with_broker(&Db::Sqlite.section());
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert!(run.stderr().contains("ledger ready"), "{}", run.stderr());
    assert!(
        env.path().join("sunset-ledger.db").exists(),
        "the schema was not created before the first batch"
    );

    let env = TestEnv::with_broker(UNREACHABLE_LEDGER);
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert!(
        run.stderr().contains("ledger not ready"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_with_the_ledger_unreachable_fails_and_publishes_nothing() {
    let env = TestEnv::with_broker(UNREACHABLE_LEDGER);
    env.write("audience.csv", &audience_csv(10, |_| "example.com".into()));
    let run = env
        .sunset_async(&campaign_args("enqueue", "nowhere", &[]))
        .await
        .expect_code(1);
    assert!(
        run.stderr().contains("nothing was published"),
        "{}",
        run.stderr()
    );
    let broker = env.broker().await;
    assert_eq!(
        broker.ready_count(&env.names().work).await.expect("count"),
        0
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_finishes_when_a_running_worker_takes_most_of_the_batches() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&config(&smtp, &push, Db::Postgres, &email_rate(100), ""));
    let campaign = unique("beside");
    env.write("audience.csv", &audience_csv(200, |_| "example.com".into()));
    let mut worker = env
        .command(&["worker"], &[])
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut send = env
        .command(
            &campaign_args("send", &campaign, &["--batch-size", "20"]),
            &[],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start send");
    let started = Instant::now();
    let status =
        tokio::task::block_in_place(|| exit_by(&mut send, started, Duration::from_secs(60)));
    let _ = send.kill();
    let _ = worker.kill();
    let _ = worker.wait();

    let status = status.expect("send did not finish beside a running worker");
    assert!(status.success(), "{status}");
    assert_everyone_told_once(&smtp, &push, 200);
}
