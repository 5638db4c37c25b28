//! The broker restarts mid-campaign: the worker waits, reconnects and finishes; nobody is
//! missed or told twice. Its own test binary, so no other test sees the broker go down.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;
use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_campaign_loses_and_duplicates_no_one() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"{}\"\n\
         [rate]\nemail_per_sec = 200\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\
         [worker]\nretry_delays_ms = [500, 1000]\n",
        smtp.url(),
        push.url()
    ));
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=800 {
        let _ = writeln!(csv, "u{i},u{i}@example.com,zh-CN");
    }
    env.write("audience.csv", &csv);
    env.sunset_async(&[
        "enqueue",
        "--campaign-id",
        "restart",
        "--template",
        "xiami-shutdown",
        "--audience",
        "audience.csv",
        "--batch-size",
        "40",
    ])
    .await
    .expect_code(0);
    let mut worker = env
        .command(&["worker", "--exit-when-idle"], &[])
        .spawn()
        .expect("worker");
    let started = Instant::now();
    while smtp.messages().len() < 150 {
        assert!(started.elapsed() < Duration::from_secs(30), "nothing sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await
    .expect("join");
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status}");
    let mut per_address: HashMap<String, usize> = HashMap::new();
    for message in smtp.messages() {
        *per_address.entry(message.to[0].clone()).or_default() += 1;
    }
    assert_eq!(per_address.len(), 800, "everyone told");
    let twice: Vec<_> = per_address.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "told twice: {twice:?}");
    assert_eq!(push.requests().len(), 800);
}
