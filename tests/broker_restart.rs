//! The broker restarts mid-campaign: the worker waits, reconnects and finishes; nobody is
//! missed or told twice. The broker is a RabbitMQ node of the test's own, so nothing else sees
//! it go down.

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::push_sink::PushSink;
use common::rabbit_node::RabbitNode;
use common::smtp_sink::SmtpSink;
use common::worker_process::WorkerProcess;
use common::{TestEnv, assert_everyone_told_once, sinks_config, unique, until_emails};

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_campaign_loses_and_duplicates_no_one() {
    let node = tokio::task::block_in_place(RabbitNode::start);
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker_on(
        &node,
        &sinks_config(
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
        ),
    );
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=800 {
        let _ = writeln!(csv, "u{i},u{i}@example.com,zh-CN");
    }
    env.write("audience.csv", &csv);
    env.sunset_async(&common::campaign_args(
        "enqueue",
        &unique("restart"),
        &["--batch-size", "40"],
    ))
    .await
    .expect_code(0);
    let worker = WorkerProcess::spawn(env.command(&["worker", "--exit-when-idle"], &[]));
    until_emails(&smtp, 150).await;
    tokio::task::block_in_place(|| {
        node.stop_app();
        // The outage: the worker is to wait through it, not merely see a dropped connection.
        std::thread::sleep(Duration::from_secs(2));
        node.start_app();
    });
    let status = worker.wait().await;
    assert!(status.success(), "{status}");
    assert_everyone_told_once(&smtp, &push, 800);
}
