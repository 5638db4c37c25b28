//! The metrics listener of `sunset worker` end to end: `/metrics` counts what the SMTP and push
//! sinks received and what was dead-lettered; `/healthz` and `/readyz` follow the process and
//! the broker connection; the listener goes away with the worker.

mod common;

use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::scrape::{self, free_address, until_status};
use common::smtp_sink::SmtpSink;
use common::tcp_proxy::TcpProxy;
use common::worker_process::WorkerProcess;
use common::{Run, TestEnv, audience_csv, campaign_args, sinks_config, unique};
use sunset::Channel;
use sunset::channel::Outcome;
use sunset::config::{RateConfig, WORKER_METRICS_LISTEN};
use sunset::limit::Limits;
use sunset::shaping::Rules;

const UNLIMITED: &str = "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\"qq.com\" = 20\n";

/// Starts `sunset worker` with its metrics on `address`; stderr goes to `worker.log`.
fn spawn_worker(env: &TestEnv, address: &str) -> WorkerProcess {
    let log = std::fs::File::create(env.path().join("worker.log")).expect("log file");
    let mut command = env.command(&["worker"], &[("SUNSET__METRICS__LISTEN", address)]);
    command.stderr(log);
    WorkerProcess::spawn(command)
}

async fn enqueue(env: &TestEnv, campaign: &str) {
    env.sunset_async(&campaign_args("enqueue", campaign, &["--batch-size", "5"]))
        .await
        .expect_code(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_the_sinks_received_and_what_was_dead_lettered() {
    // Arrange: 20 recipients in 4 batches; u7's mailbox does not exist, u-0003's push is refused.
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    smtp.reject_with(
        "u7@example.com",
        550,
        "5.1.1 <u7@example.com>: Recipient address rejected",
    );
    push.respond("u-0003", 400, None);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED));
    env.write("audience.csv", &audience_csv(20, |_| "example.com".into()));
    enqueue(&env, &unique("metrics")).await;
    let address = free_address();

    // Act
    let worker = spawn_worker(&env, &address);
    smtp.wait_for_async(19, Duration::from_secs(30)).await;
    push.wait_for(20, Duration::from_secs(30)).await;
    // Settled: every batch counted (the last ack comes a moment after the last send).
    let started = std::time::Instant::now();
    let text = loop {
        let text = scrape::get(&address, "/metrics").map(|(_, body)| body);
        let settled = text
            .as_deref()
            .is_some_and(|t| scrape::sum(t, "sunset_batches_total", &[]) >= 4.0);
        if settled || started.elapsed() > Duration::from_secs(15) {
            break text.expect("/metrics answers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert: the counters are what the sinks saw.
    let sum = |name: &str, labels: &[(&str, &str)]| scrape::sum(&text, name, labels);
    let email = [("channel", "email")];
    let push_channel = [("channel", "push")];
    let delivered_push = push
        .requests()
        .iter()
        .filter(|r| r.user_id() != Some("u-0003"))
        .count();
    assert_eq!(
        sum(
            "sunset_sends_total",
            &[("channel", "email"), ("outcome", "delivered")]
        ),
        smtp.messages().len() as f64,
        "{text}"
    );
    assert_eq!(
        sum(
            "sunset_sends_total",
            &[("channel", "push"), ("outcome", "delivered")]
        ),
        delivered_push as f64,
        "{text}"
    );
    assert_eq!(
        sum("sunset_sends_total", &push_channel),
        push.requests().len() as f64,
        "every push request counted once: {text}"
    );
    assert_eq!(sum("sunset_sends_total", &[("outcome", "permanent")]), 2.0);
    assert_eq!(
        sum(
            "sunset_sends_total",
            &[("channel", "email"), ("locale", "zh-Hant")]
        ),
        5.0,
        "per template locale: u2, u6, u10, u14 and u18 are zh-TW: {text}"
    );
    assert_eq!(
        sum(
            "sunset_sends_total",
            &[
                ("channel", "email"),
                ("locale", "en"),
                ("outcome", "permanent")
            ]
        ),
        1.0,
        "u7 is en-US: {text}"
    );
    assert_eq!(
        sum("sunset_dead_letters_total", &[("reason", "rejected")]),
        2.0,
        "{text}"
    );
    assert_eq!(sum("sunset_dead_letters_total", &[]), 2.0);
    assert_eq!(
        env.dead_letters().await.len(),
        2,
        "one dead letter per batch with a failure"
    );
    assert_eq!(sum("sunset_batches_total", &[]), 4.0, "{text}");
    assert_eq!(
        sum("sunset_batches_total", &[("verdict", "dead_lettered")]),
        2.0
    );
    assert_eq!(
        sum("sunset_batches_total", &[("verdict", "completed")]),
        2.0
    );
    assert_eq!(sum("sunset_send_seconds_count", &email), 20.0, "{text}");
    assert_eq!(sum("sunset_send_seconds_count", &push_channel), 20.0);
    assert!(
        text.contains("# TYPE sunset_send_seconds histogram"),
        "{text}"
    );
    assert_eq!(sum("sunset_rate_limit_wait_seconds_count", &email), 20.0);
    assert_eq!(
        sum("sunset_inflight_sends", &[]),
        0.0,
        "nothing in flight at the end"
    );
    assert_eq!(
        sum("sunset_domain_rate", &[("domain", "qq.com")]),
        20.0,
        "{text}"
    );
    assert_eq!(sum("sunset_domain_rate", &[("domain", "default")]), 0.0);
    assert!(
        !text.contains("domain=\"example.com\""),
        "an unthrottled, unlisted domain gets no series of its own: {text}"
    );

    // And the listener stops with the worker.
    assert!(worker.terminate().await.success());
    assert!(
        scrape::get(&address, "/healthz").is_none(),
        "the listener is gone once the worker exits"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_until_the_broker_is_reachable_and_again_while_it_is_lost() {
    // Arrange: the worker reaches RabbitMQ only through a proxy, down at first.
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    proxy.down();
    let url = format!(
        "url = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\n",
        proxy.port()
    );
    let env = TestEnv::with_broker(&url);
    let address = free_address();
    let worker = spawn_worker(&env, &address);

    // Up but not ready while the broker cannot be reached.
    until_status(&address, "/healthz", 200, Duration::from_secs(30)).await;
    for _ in 0..10 {
        let (status, _) = scrape::get(&address, "/readyz").expect("/readyz answers");
        assert_eq!(status, 503, "not ready without a broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ready once it consumes.
    proxy.up();
    until_status(&address, "/readyz", 200, Duration::from_secs(30)).await;

    // Not ready while the connection is lost, ready again once it is back.
    proxy.down();
    until_status(&address, "/readyz", 503, Duration::from_secs(10)).await;
    assert_eq!(
        scrape::get(&address, "/healthz").map(|(status, _)| status),
        Some(200),
        "the process is still up"
    );
    proxy.up();
    until_status(&address, "/readyz", 200, Duration::from_secs(60)).await;

    let status = worker.terminate().await;
    let log = std::fs::read_to_string(env.path().join("worker.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
}

#[test]
fn a_metrics_address_that_is_taken_or_malformed_stops_the_command_naming_it() {
    let env = TestEnv::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let run = env
        .sunset_with_env(&["worker"], &[("SUNSET__METRICS__LISTEN", &address)])
        .expect_code(2);
    assert!(
        run.stderr()
            .contains(&format!("Failed to listen on {address} (metrics.listen)")),
        "{}",
        run.stderr()
    );
    let send = common::notice_args("send", "taken", &["--audience", "never-read.csv"]);
    let run = env
        .sunset_with_env(&send, &[("SUNSET__METRICS__LISTEN", &address)])
        .expect_code(2);
    assert!(
        run.stderr().contains("(metrics.listen)"),
        "send binds first, before the audience is read: {}",
        run.stderr()
    );
    let run = env
        .sunset_with_env(
            &["worker"],
            &[("SUNSET__METRICS__LISTEN", "127.0.0.1:http")],
        )
        .expect_code(2);
    assert!(
        run.stderr()
            .contains("metrics.listen `127.0.0.1:http` is not host:port"),
        "{}",
        run.stderr()
    );
}

#[test]
fn domain_rate_gauges_and_the_rule_counter_follow_shaping_for_configured_and_slowed_domains_only() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let mut rates = RateConfig {
        email_per_sec: 200,
        shaping_recover_ms: 20,
        ..RateConfig::default()
    };
    rates.per_domain_per_sec.default = 50;
    rates.per_domain_per_sec.domains = [("qq.com".to_string(), 20)].into();
    let rate = |domain: &str| {
        scrape::sum(
            &handle.render(),
            "sunset_domain_rate",
            &[("domain", domain)],
        )
    };
    let too_fast = Outcome::Transient {
        reason: "421 4.7.0 Too many messages, slow down".into(),
        retry_after: None,
        throttled: true,
    };

    metrics::with_local_recorder(&recorder, || {
        let limits = Limits::new(&rates, Rules::default());
        assert_eq!((rate("qq.com"), rate("default")), (20.0, 50.0));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(limits.acquire(Channel::Email, Some("example.org")));
        for domain in ["qq.com", "gmail.com"] {
            for _ in 0..10 {
                limits.observed(Channel::Email, Some(domain), &too_fast, Instant::now());
            }
        }
        assert_eq!((rate("qq.com"), rate("gmail.com")), (10.0, 25.0));
        assert_eq!(
            scrape::sum(
                &handle.render(),
                "sunset_shaping_rule_fired_total",
                &[("rule", "rate-wording")]
            ),
            2.0
        );
        assert!(
            !handle.render().contains("example.org"),
            "a domain that was never slowed down has no series"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while (rate("qq.com"), rate("gmail.com")) != (20.0, 50.0) {
            assert!(
                Instant::now() < deadline,
                "not back at the configured rates"
            );
            std::thread::sleep(Duration::from_millis(10));
            limits.prune();
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn send_serves_metrics_only_when_metrics_listen_is_set_and_a_worker_keeps_its_default() {
    // The worker's default port, taken: by this test, or already by someone else.
    let _held = std::net::TcpListener::bind(WORKER_METRICS_LISTEN);
    let env = TestEnv::with_broker("[ledger]\nurl = \"\"\n");
    env.write("audience.csv", &audience_csv(3, |_| "example.com".into()));
    let unset = |args: &[&str]| {
        let mut command = env.command(args, &[]);
        command.env_remove("SUNSET__METRICS__LISTEN");
        Run(command.output().expect("run sunset"))
    };

    let args = campaign_args("send", "no-metrics", &[]);
    let sent = tokio::task::block_in_place(|| unset(&args)).expect_code(0);
    assert!(
        !sent.stderr().contains("metrics.listen"),
        "{}",
        sent.stderr()
    );

    let run = tokio::task::block_in_place(|| unset(&["worker"])).expect_code(2);
    assert!(
        run.stderr().contains(&format!(
            "Failed to listen on {WORKER_METRICS_LISTEN} (metrics.listen)"
        )),
        "{}",
        run.stderr()
    );
}
