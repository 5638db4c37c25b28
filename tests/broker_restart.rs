//! The broker restarts mid-campaign: the worker waits, reconnects and finishes; nobody is
//! missed or told twice. Its own test binary, so no other test sees the broker go down.

mod common;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{TestEnv, assert_everyone_told_once, sinks_config, until_emails};

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
    let env = TestEnv::with_broker(&sinks_config(
        &smtp,
        &push,
        "[rate]
email_per_sec = 200
push_per_sec = 0
[rate.per_domain_per_sec]
default = 0
\
         [worker]
retry_delays_ms = [500, 1000]
",
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
    until_emails(&smtp, 150).await;
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
    assert_everyone_told_once(&smtp, &push, 800);
}
