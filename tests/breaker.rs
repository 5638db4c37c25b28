//! A relay that is down opens the email breaker end to end: sends are held without spending
//! attempts, one error is logged (not one per recipient), `/readyz` and `/metrics` show it,
//! push keeps flowing, and once an SMTP server answers on the relay's port everyone is told
//! exactly once — real RabbitMQ, SMTP and HTTP sinks, a real worker process.

mod common;

use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::scrape::{self, free_address};
use common::smtp_sink::SmtpSink;
use common::worker_process::WorkerProcess;
use common::{TestEnv, audience_csv, campaign_args, emails_per_address, pushes_per_user, unique};

const USERS: usize = 40;

/// Polls `/readyz` until its body satisfies `wanted`; panics after `timeout` with the last body.
async fn until_readyz(address: &str, timeout: Duration, wanted: impl Fn(u16, &str) -> bool) {
    let started = Instant::now();
    loop {
        let answer = scrape::get(address, "/readyz");
        if let Some((status, body)) = &answer
            && wanted(*status, body)
        {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "/readyz not as wanted within {timeout:?}; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_relay_holds_email_without_spending_attempts_until_it_answers() {
    outage(Duration::from_secs(3)).await;
}

/// The measurement of docs/benchmarks.md: log lines over a 30 s outage.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a 30 s measurement: cargo test --test breaker -- --ignored --nocapture"]
async fn a_30_s_outage_logs_one_error() {
    outage(Duration::from_secs(30)).await;
}

/// Runs a campaign while the relay is down for `down` (after the breaker opened), then starts
/// an SMTP server on its port, and checks everyone is told once with one error logged.
async fn outage(down: Duration) {
    // Arrange: nothing listens on the relay's port; two attempts 0.3 s apart would dead-letter
    // everyone within a second if holding spent attempts.
    let relay_port = free_address()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .expect("a port");
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&format!(
        "[email]\ntransport = \"smtp\"\nurl = \"smtp://127.0.0.1:{relay_port}\"\n\
         [push]\ntransport = \"http\"\nurl = \"{}\"\n\
         [rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\
         [worker]\nmax_attempts = 2\nretry_delays_ms = [200, 300]\nbreaker_after = 3\nbreaker_probe_ms = 500\n",
        push.url()
    ));
    env.write(
        "audience.csv",
        &audience_csv(USERS, |_| "example.com".into()),
    );
    let campaign = unique("breaker");
    env.sunset_async(&campaign_args(
        "enqueue",
        &campaign,
        &["--batch-size", "10"],
    ))
    .await
    .expect_code(0);
    let address = free_address();
    let log_path = env.path().join("worker.log");
    let mut command = env.command(
        &["worker", "--exit-when-idle"],
        &[("SUNSET__METRICS__LISTEN", address.as_str())],
    );
    command.stderr(std::fs::File::create(&log_path).expect("log file"));
    let worker = WorkerProcess::spawn(command);

    // Act and assert: push flows while the relay is down; the breaker shows.
    push.wait_for(USERS, Duration::from_secs(30)).await;
    until_readyz(&address, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains("breaker open: email")
    })
    .await;
    let (_, metrics) = scrape::get(&address, "/metrics").expect("/metrics answers");
    assert_eq!(
        scrape::sum(
            &metrics,
            "sunset_channel_breaker_open",
            &[("channel", "email")]
        ),
        1.0
    );
    assert_eq!(
        scrape::sum(
            &metrics,
            "sunset_channel_breaker_open",
            &[("channel", "push")]
        ),
        0.0
    );
    // The outage lasts several probe intervals and many trips through the delay queues.
    tokio::time::sleep(down).await;
    let smtp = SmtpSink::start_on(relay_port);
    let back = Instant::now();
    let received = smtp.wait_for_async(USERS, Duration::from_secs(30)).await;
    let resumed_in = received
        .iter()
        .map(|message| message.at)
        .max()
        .expect("messages")
        - back;
    println!("measured: every email delivered {resumed_in:?} after the relay came back");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker exits once idle");
    assert!(status.success(), "{status}");

    // Assert: everyone told once on each channel, nobody dead-lettered, one error logged.
    let emails = emails_per_address(&smtp);
    assert_eq!(emails.len(), USERS);
    assert!(emails.values().all(|n| *n == 1), "{emails:?}");
    let pushes = pushes_per_user(&push);
    assert_eq!(pushes.len(), USERS);
    assert!(pushes.values().all(|n| *n == 1), "{pushes:?}");
    assert!(env.dead_letters().await.is_empty());
    let log = std::fs::read_to_string(&log_path).expect("worker log");
    let opened: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("holding email sends"))
        .collect();
    assert_eq!(opened.len(), 1, "{log}");
    assert!(
        opened[0].contains(&format!("127.0.0.1:{relay_port} unreachable")),
        "{}",
        opened[0]
    );
    assert!(
        !log.lines().any(|line| line.contains("send failed")),
        "no per-recipient failure lines: {log}"
    );
    assert!(log.contains("sends resume"), "{log}");
    let warnings = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .count();
    println!(
        "measured: {warnings} WARN/ERROR lines, {} lines in all, over a {down:?} outage",
        log.lines().count()
    );
}

#[test]
fn a_probe_interval_of_zero_is_refused_naming_the_key() {
    let env = TestEnv::new();
    env.write_config(
        "[templates]\ndir = \"templates\"\n[worker]\nbreaker_probe_ms = 0\n[ledger]\nurl = \"\"\n",
    );
    let run = env.sunset(&["worker"]).expect_code(2);
    assert!(
        run.stderr().contains("worker.breaker_probe_ms"),
        "{}",
        run.stderr()
    );
    assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
}
