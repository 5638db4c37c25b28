//! The campaign path end to end: the built binary, real RabbitMQ, a real SMTP server and a real
//! HTTP push gateway on 127.0.0.1. Each test has its own queues, deleted afterwards.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{
    TestEnv, UNLIMITED_RATES, assert_everyone_told_once, audience_csv as audience, sinks_config,
    until_emails,
};
use mail_parser::MimeHeaders;
use sunset::batch::Batch;
use sunset::broker::Route;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_recipients_get_exactly_one_email_and_one_push_in_their_language() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED_RATES));
    env.write(
        "audience.csv",
        &audience(1000, |i| {
            if i % 2 == 0 {
                "example.com".into()
            } else {
                "example.net".into()
            }
        }),
    );

    let enqueued = env
        .sunset_async(&common::campaign_args(
            "enqueue",
            "e2e",
            &["--batch-size", "100"],
        ))
        .await
        .expect_code(0);
    assert!(
        enqueued
            .stdout()
            .contains("1000 recipients in 10 batches, 0 rejected"),
        "{}",
        enqueued.stdout()
    );
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    assert_everyone_told_once(&smtp, &push, 1000);
    let messages = smtp.messages();
    let by_to: HashMap<&str, &common::smtp_sink::Received> =
        messages.iter().map(|m| (m.to[0].as_str(), m)).collect();
    // u-0001 is zh-CN, u-0002 zh-TW, u-0003 en-US, u-0004 ar-EG.
    let expectations = [
        (
            "u1@example.net",
            "u-0001",
            "zh",
            "虾米音乐将于2021年2月5日停止服务",
        ),
        (
            "u2@example.com",
            "u-0002",
            "zh-Hant",
            "蝦米音樂將於2021年2月5日停止服務",
        ),
        (
            "u3@example.net",
            "u-0003",
            "en",
            "Xiami Music closes on February 5, 2021",
        ),
        (
            "u4@example.com",
            "u-0004",
            "ar",
            "ستتوقف خدمة شيامي ميوزك في ٥ فبراير ٢٠٢١",
        ),
    ];
    for (address, user, locale, subject) in expectations {
        let message = by_to[address].parsed();
        assert!(
            message.subject().unwrap_or_default().starts_with(subject),
            "{address}: {:?}",
            message.subject()
        );
        assert_eq!(
            message.message_id(),
            Some(format!("e2e.{user}@xiami.example").as_str())
        );
        let header = |name: &str| message.header_raw(name).map(str::trim).map(str::to_string);
        assert_eq!(
            header("Content-Language").as_deref(),
            Some(locale),
            "{address}"
        );
        assert_eq!(header("X-Sunset-Campaign").as_deref(), Some("e2e"));
        assert_eq!(
            message.content_type().map(|c| c.subtype()),
            Some(Some("alternative"))
        );
        assert_eq!(message.text_body_count(), 1);
        assert_eq!(message.html_body_count(), 1);
        let to = message
            .to()
            .and_then(|to| to.first())
            .and_then(|a| a.name())
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            to,
            format!(
                "User {}",
                user.trim_start_matches("u-").trim_start_matches('0')
            )
        );
    }
    assert!(
        by_to["u4@example.com"]
            .parsed()
            .body_html(0)
            .unwrap_or_default()
            .contains(r#"dir="rtl""#)
    );

    let requests = push.requests();
    let arabic = requests
        .iter()
        .find(|r| r.user_id() == Some("u-0004"))
        .expect("u-0004 pushed");
    assert_eq!(arabic.header("idempotency-key"), Some("e2e:u-0004:push"));
    assert_eq!(arabic.body["campaign_id"], "e2e");
    assert_eq!(arabic.body["locale"], "ar");
    assert_eq!(arabic.body["dir"], "rtl");
    assert_eq!(arabic.body["title"], "ستتوقف شيامي ميوزك في ٥ فبراير ٢٠٢١");
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_messages_are_dead_lettered_with_a_reason_and_later_batches_still_go_out() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED_RATES));
    let broker = env.broker().await;
    let bad: [&[u8]; 3] = [
        b"{not json",
        br#"{"version": 2, "campaign_id": "c", "template": "xiami-shutdown", "recipients": []}"#,
        br#"{"version": 1, "campaign_id": "c", "recipients": []}"#,
    ];
    for body in bad {
        broker
            .publish(Route::Work, body, Default::default())
            .await
            .expect("published");
    }
    broker.close().await;
    env.write("audience.csv", &audience(10, |_| "example.com".into()));
    env.sunset_async(&common::campaign_args("enqueue", "after", &[]))
        .await
        .expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    assert_eq!(smtp.messages().len(), 10);
    assert_eq!(push.requests().len(), 10);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    let reasons: Vec<String> = letters
        .iter()
        .map(|(_, reason)| reason.clone().unwrap_or_default())
        .collect();
    assert!(reasons[0].contains("invalid batch"), "{reasons:?}");
    assert!(
        reasons[1].contains("unknown batch version 2"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("template"), "{reasons:?}");
    assert_eq!(letters[0].0, bad[0], "the body is kept as it came");
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_550_dead_letters_only_those_recipients_with_their_reasons() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    smtp.reject("u3@example.com", 550);
    smtp.reject("u7@example.com", 550);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED_RATES));
    env.write("audience.csv", &audience(20, |_| "example.com".into()));
    env.sunset_async(&common::campaign_args(
        "enqueue",
        "bounce",
        &["--batch-size", "5"],
    ))
    .await
    .expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    assert_eq!(smtp.messages().len(), 18);
    assert_eq!(
        push.requests().len(),
        20,
        "push is unaffected by the email bounce"
    );
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2, "one dead letter per batch with a failure");
    let mut failed = Vec::new();
    for (body, reason) in &letters {
        let batch = Batch::decode(body).expect("a dead letter is a batch");
        assert_eq!(batch.recipients.len(), 1);
        assert_eq!(batch.failures.len(), 1);
        assert!(
            batch.failures[0].error.contains("550"),
            "{:?}",
            batch.failures
        );
        assert!(
            reason.as_deref().unwrap_or_default().contains("550"),
            "{reason:?}"
        );
        failed.push(batch.failures[0].user_id.to_string());
    }
    failed.sort();
    assert_eq!(failed, ["u-0003", "u-0007"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audience_with_bad_rows_exits_2_naming_the_lines_and_publishes_nothing() {
    let env = TestEnv::with_broker("");
    env.write(
        "audience.csv",
        "user_id,email,locale,name\nu1,a@example.com,en,A\nu2,not-an-email,en,B\n,c@example.com,en,C\nu1,d@example.com,en,D\nu5,e@example.com,!!,E\n",
    );
    let run = env
        .sunset_async(&common::campaign_args("enqueue", "bad", &[]))
        .await
        .expect_code(2);
    let err = run.stderr();
    for expected in [
        "audience.csv: line 3: `not-an-email` is not an email address",
        "audience.csv: line 4: user_id is missing",
        "audience.csv: line 5: duplicate user_id `u1` (first on line 2)",
        "3 invalid row(s); nothing was published",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let broker = env.broker().await;
    assert_eq!(
        broker.ready_count(&env.names().work).await.expect("count"),
        0
    );
    broker.close().await;
}

/// The largest number of receive instants inside any window of `window` length.
fn busiest_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn email_never_arrives_faster_than_the_configured_rate_plus_burst() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate =
        "[rate]\nemail_per_sec = 20\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, rate));
    env.write(
        "audience.csv",
        &audience(70, |i| format!("d{}.example", i % 7)),
    );
    env.sunset_async(&common::campaign_args(
        "enqueue",
        "rate",
        &["--batch-size", "10", "--channels", "email"],
    ))
    .await
    .expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let times: Vec<Instant> = smtp.messages().iter().map(|m| m.at).collect();
    assert_eq!(times.len(), 70);
    let burst = 2; // max(1, 20 / 10), see src/limit/
    let busiest = busiest_window(times, Duration::from_secs(1));
    assert!(
        busiest <= 20 + burst,
        "{busiest} emails arrived within one second"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_at_its_limit_does_not_hold_up_other_domains() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate = "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\"slow.example\" = 1\n";
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, rate));
    // One batch: users 1-4 on slow.example, 5-40 on fast.example, interleaved in file order.
    env.write(
        "audience.csv",
        &audience(40, |i| {
            if i % 10 == 1 || i <= 3 {
                "slow.example".into()
            } else {
                "fast.example".into()
            }
        }),
    );
    env.sunset_async(&common::campaign_args(
        "enqueue",
        "domains",
        &["--channels", "email"],
    ))
    .await
    .expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let messages = smtp.messages();
    let (slow, fast): (Vec<_>, Vec<_>) = messages
        .iter()
        .partition(|m| m.to[0].ends_with("@slow.example"));
    let mut slow_times: Vec<Instant> = slow.iter().map(|m| m.at).collect();
    slow_times.sort();
    let last_fast = fast.iter().map(|m| m.at).max().expect("fast mail");
    assert!(slow_times.len() >= 3 && fast.len() + slow.len() == 40);
    assert!(
        last_fast < slow_times[1],
        "fast.example mail waited behind slow.example's 1/s budget"
    );
    assert!(
        slow_times[slow_times.len() - 1] - slow_times[0] >= Duration::from_millis(1900),
        "slow.example exceeded 1/s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_campaign_hands_unstarted_sends_back_and_a_second_worker_delivers_the_rest() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    let rate =
        "[rate]\nemail_per_sec = 300\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, rate));
    env.write("audience.csv", &audience(1500, |_| "example.com".into()));
    env.sunset_async(&common::campaign_args(
        "enqueue",
        "term",
        &["--batch-size", "50"],
    ))
    .await
    .expect_code(0);

    let mut first = env.command(&["worker"], &[]).spawn().expect("start worker");
    until_emails(&smtp, 300).await;
    let pid = first.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let status = tokio::task::spawn_blocking(move || first.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "worker exit status after SIGTERM: {status}"
    );
    let after_first = smtp.messages().len();
    assert!(
        after_first < 1500,
        "the first worker should not have finished the campaign"
    );
    // Sends not yet started when SIGTERM came were handed back, held, for the next worker.

    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_everyone_told_once(&smtp, &push, 1500);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_the_default_file_outbox_tells_everyone_and_prints_a_summary() {
    let env = TestEnv::with_broker(UNLIMITED_RATES);
    env.write("audience.jsonl", "{\"user_id\": \"a1\", \"email\": \"a1@example.com\", \"locale\": \"ar-EG\"}\n\n{\"user_id\": \"z1\", \"locale\": \"zh-HK\", \"name\": \"陳\"}\n");
    let run = env
        .sunset_async(&common::notice_args(
            "send",
            "demo",
            &["--audience", "audience.jsonl"],
        ))
        .await
        .expect_code(0);
    let out = run.stdout();
    assert!(out.contains("2 recipients in 1 batches"), "{out}");
    assert!(
        out.contains("every recipient reached on every channel"),
        "{out}"
    );
    assert!(out.contains("1 recipients have no email address"), "{out}");
    let emails: Vec<_> = std::fs::read_dir(env.path().join("outbox/email"))
        .expect("outbox")
        .collect();
    assert_eq!(emails.len(), 1);
    let pushes =
        std::fs::read_to_string(env.path().join("outbox/push.jsonl")).expect("push outbox");
    assert_eq!(pushes.lines().count(), 2);
    assert!(pushes.contains("蝦米音樂"), "{pushes}");
}
