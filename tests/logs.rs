//! What the worker logs: JSON lines off a terminal, one span per batch, recipient addresses
//! masked and no secret (broker, SMTP or push) anywhere — checked on the stderr of whole runs.

mod common;

use std::time::Duration;

use common::push_sink::PushSink;
use common::rabbit_node::RabbitNode;
use common::smtp_auth::SmtpAuthFront;
use common::smtp_sink::SmtpSink;
use common::tcp_proxy::TcpProxy;
use common::worker_process::WorkerProcess;
use common::{TestEnv, audience_csv, unique};

/// A RabbitMQ user of its own, so the broker password is one no other text contains. Adding
/// a user reconfigures the broker: the user is on a node of the test's own, gone with it.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn create(node: &RabbitNode) -> BrokerUser {
        let user = BrokerUser {
            name: unique("sunset-log-test"),
            password: unique("broker-pw"),
        };
        let rabbitmqctl = node.rabbitmqctl();
        rabbitmqctl.run(&["add_user", &user.name, &user.password]);
        rabbitmqctl.run(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_log_of_a_whole_run_masks_addresses_and_holds_no_secret() {
    // Arrange: a broker user with its own password, reached through a proxy that is down when
    // the worker starts (so it logs the broker URL); SMTP with a user and a password; a push
    // token; a recipient whose refusal quotes their address, and one whose push is refused.
    let node = tokio::task::block_in_place(RabbitNode::start);
    let broker = tokio::task::block_in_place(|| BrokerUser::create(&node));
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", node.port())).await;
    let (smtp_password, push_token) = (unique("smtp-pw"), unique("push-token"));
    let smtp = SmtpSink::start();
    let front = SmtpAuthFront::start(smtp.port(), "relay", &smtp_password).await;
    let push = PushSink::start().await;
    smtp.reject_with(
        "u7@example.com",
        550,
        "5.1.1 <u7@example.com>: Recipient address rejected",
    );
    push.respond("u-0005", 404, None);
    let recipients = 12;
    let env = TestEnv::with_broker_via(
        &node,
        &format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            broker.name,
            broker.password,
            proxy.port()
        ),
        &format!(
            "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n\
             [push]\ntransport = \"http\"\nurl = \"{}\"\n\
             [rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n",
            front.url("relay"),
            push.url()
        ),
    );
    env.write(
        "audience.csv",
        &audience_csv(recipients, |_| "example.com".into()),
    );
    let secrets = [
        ("SUNSET_SMTP_PASSWORD", smtp_password.as_str()),
        ("SUNSET_PUSH_TOKEN", push_token.as_str()),
        ("SUNSET_LOG_FORMAT", "json"),
    ];
    let enqueued = env
        .command(
            &common::campaign_args("enqueue", &unique("logs"), &["--batch-size", "4"]),
            &secrets,
        )
        .output()
        .expect("run sunset enqueue");
    assert!(enqueued.status.success(), "{enqueued:?}");

    // Act: the worker starts without the broker, gets it, sends everything, and is stopped.
    proxy.down();
    let log_path = env.path().join("worker.log");
    let mut command = env.command(&["worker"], &secrets);
    command.stderr(std::fs::File::create(&log_path).expect("log file"));
    let worker = WorkerProcess::spawn(command);
    // lapin retries within its connect timeout (10 s) before the worker says it waits.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("cannot reach RabbitMQ")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no broker warning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.up();
    smtp.wait_for_async(recipients - 1, Duration::from_secs(30))
        .await;
    push.wait_for(recipients, Duration::from_secs(30)).await;
    // The last batch's dead letter and ack come just after its sends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = worker.terminate().await;
    let log = std::fs::read_to_string(&log_path).expect("the worker's log");
    assert!(status.success(), "{log}");

    // The secrets were in use: SMTP logins and push requests carried them.
    assert!(front.logins() > 0, "sunset logged in to SMTP");
    let bearer = format!("Bearer {push_token}");
    assert_eq!(
        push.requests()[0].header("authorization"),
        Some(bearer.as_str())
    );

    // Assert: JSON lines, with the batch span on what happens inside a batch.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let in_batch = lines
        .iter()
        .find(|line| line["event"] == "send_failed")
        .unwrap_or_else(|| panic!("a send_failed event in:\n{log}"));
    for field in ["campaign", "batch", "attempt"] {
        assert!(
            !in_batch["span"][field].is_null(),
            "{field} in the batch span: {in_batch}"
        );
    }
    assert!(
        log.contains("cannot reach RabbitMQ"),
        "the broker URL was logged: {log}"
    );
    // No secret, no whole address, but the masked ones (so the check is not vacuous).
    let worker_and_enqueue = format!("{log}\n{}", String::from_utf8_lossy(&enqueued.stderr));
    for secret in [&broker.password, &smtp_password, &push_token] {
        assert!(
            !worker_and_enqueue.contains(secret.as_str()),
            "{secret} leaked:\n{worker_and_enqueue}"
        );
    }
    for i in 1..=recipients {
        let address = format!("u{i}@example.com");
        assert!(
            !worker_and_enqueue.contains(&address),
            "{address} leaked:\n{worker_and_enqueue}"
        );
    }
    assert!(
        log.contains("<u***@example.com>: Recipient address rejected"),
        "the refusal is logged, masked: {log}"
    );
}

#[test]
fn a_password_written_into_the_smtp_url_is_refused_without_being_repeated() {
    let env = TestEnv::new();
    env.write_config(
        "[templates]\ndir = \"templates\"\n\
         [email]\ntransport = \"smtp\"\nurl = \"smtp://relay:hunter2-in-url@127.0.0.1:2525\"\n",
    );
    let run = env.sunset(&["worker"]).expect_code(2);
    assert!(
        run.stderr().contains("SUNSET_SMTP_PASSWORD"),
        "{}",
        run.stderr()
    );
    assert!(!run.stderr().contains("hunter2-in-url"), "{}", run.stderr());
}
