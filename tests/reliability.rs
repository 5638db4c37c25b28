//! The reliability figure of docs/benchmarks.md: a 20,000-recipient campaign with 10 % transient
//! and 1 % permanent SMTP failures and one broker connection drop, counted at the sinks and the
//! DLQ.
//! Run with `cargo test --release --test reliability -- --ignored --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{TestEnv, emails_per_address, pushes_per_user, sinks_config, until_emails};
use lapin::options::BasicGetOptions;
use sunset::batch::Batch;

const RECIPIENTS: usize = 20_000;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a 20,000-recipient run for the reliability figure of docs/benchmarks.md; takes about a minute in release"]
async fn twenty_thousand_recipients_with_failures_and_a_broker_drop_lose_and_duplicate_no_one() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let mut csv = String::from("user_id,email,locale\n");
    let mut permanent = HashSet::new();
    for i in 1..=RECIPIENTS {
        let address = format!("u{i}@example.com");
        let _ = writeln!(csv, "u{i},{address},en");
        if i % 100 == 0 {
            smtp.reject(&address, 550);
            permanent.insert(format!("u{i}"));
        } else if i % 10 == 0 {
            smtp.reject_times(&address, 451, "4.4.1 Connection timed out, try again", 1);
        }
    }
    let env = TestEnv::with_broker(&sinks_config(
        &smtp,
        &push,
        "[rate]
email_per_sec = 0
push_per_sec = 0
[rate.per_domain_per_sec]
default = 0
\
         [worker]
retry_delays_ms = [1000, 2000]
",
    ));
    env.write("audience.csv", &csv);
    env.sunset_async(&common::campaign_args("enqueue", "rel", &[]))
        .await
        .expect_code(0);

    let started = Instant::now();
    let mut worker = env
        .command(&["worker", "--exit-when-idle"], &[])
        .spawn()
        .expect("worker");
    until_emails(&smtp, RECIPIENTS / 3).await;
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
    let drained = started.elapsed();
    assert!(status.success(), "{status}");

    let emails: HashMap<String, usize> = emails_per_address(&smtp)
        .into_iter()
        .map(|(address, n)| (address.trim_end_matches("@example.com").to_string(), n))
        .collect();
    let pushes = pushes_per_user(&push);
    let mut dead = HashSet::new();
    let connection =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    while let Some(message) = channel
        .basic_get(
            env.names().dlq.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let batch = Batch::decode(&message.delivery.data).expect("batch");
        dead.extend(batch.failures.iter().map(|f| f.user_id.to_string()));
    }
    let _ = connection.close(200, "bye".into()).await;

    let email_lost = (1..=RECIPIENTS)
        .map(|i| format!("u{i}"))
        .filter(|u| !emails.contains_key(u) && !dead.contains(u))
        .count();
    let push_lost = (1..=RECIPIENTS)
        .filter(|i| !pushes.contains_key(&format!("u{i}")))
        .count();
    let email_dup = emails.values().filter(|n| **n > 1).count();
    let push_dup = pushes.values().filter(|n| **n > 1).count();
    println!(
        "| recipients | delivered (email / push) | lost | duplicated | dead-lettered | drain time |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {RECIPIENTS} | {} / {} | {} | {} | {} (expected {}) | {:.1} s |",
        emails.len(),
        pushes.len(),
        email_lost + push_lost,
        email_dup + push_dup,
        dead.len(),
        permanent.len(),
        drained.as_secs_f64()
    );
    assert_eq!(email_lost + push_lost, 0, "lost");
    assert_eq!(email_dup + push_dup, 0, "duplicated");
    assert_eq!(
        dead, permanent,
        "the DLQ holds exactly the permanent failures"
    );
}
