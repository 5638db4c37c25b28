//! A relay or gateway that is down opens its channel's breaker end to end: sends are held
//! without spending attempts, one error is logged (not one per recipient), `/readyz` and
//! `/metrics` show it, the other channel keeps flowing, and once a server answers on the
//! transport's port everyone is told exactly once — real RabbitMQ, SMTP and HTTP sinks, a
//! real worker process.

mod common;

use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::scrape::{self, free_address};
use common::smtp_sink::SmtpSink;
use common::worker_process::WorkerProcess;
use common::{TestEnv, audience_csv, campaign_args, emails_per_address, pushes_per_user, unique};
use sunset::Channel;

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
    outage(Channel::Email, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_push_gateway_holds_push_while_email_goes_until_it_answers() {
    outage(Channel::Push, Duration::from_secs(2)).await;
}

/// The measurement of docs/benchmarks.md: log lines over a 30 s outage.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a 30 s measurement: cargo test --test breaker -- --ignored --nocapture"]
async fn a_30_s_outage_logs_one_error() {
    outage(Channel::Email, Duration::from_secs(30)).await;
}

/// A port free a moment ago: nothing listens there now.
fn closed_port() -> u16 {
    free_address()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a port")
}

/// Runs a campaign while `channel`'s transport is down for `down` after its breaker opened,
/// then starts a server on its port, and checks everyone is told once with one error logged.
async fn outage(channel: Channel, down: Duration) {
    // Arrange: nothing listens on the down transport's port; two attempts 0.3 s apart would
    // dead-letter everyone within a second if holding spent attempts.
    let port = closed_port();
    let (smtp_up, push_up) = match channel {
        Channel::Email => (None, Some(PushSink::start().await)),
        Channel::Push => (Some(SmtpSink::start()), None),
    };
    let smtp_url = smtp_up
        .as_ref()
        .map_or(format!("smtp://127.0.0.1:{port}"), SmtpSink::url);
    let push_url = push_up
        .as_ref()
        .map_or(format!("http://127.0.0.1:{port}/push"), PushSink::url);
    let env = TestEnv::with_broker(&format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{smtp_url}\"\n\
         [push]\ntransport = \"http\"\nurl = \"{push_url}\"\n\
         [rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n\
         [worker]\nmax_attempts = 2\nretry_delays_ms = [200, 300]\nbreaker_after = 3\nbreaker_probe_ms = 500\n"
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

    // Act and assert: the other channel flows while this one is down; the breaker shows.
    match (&smtp_up, &push_up) {
        (Some(smtp), _) => drop(smtp.wait_for_async(USERS, Duration::from_secs(30)).await),
        (_, Some(push)) => drop(push.wait_for(USERS, Duration::from_secs(30)).await),
        (None, None) => unreachable!("one transport is up"),
    }
    until_readyz(&address, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains(&format!("breaker open: {channel}"))
    })
    .await;
    let (_, metrics) = scrape::get(&address, "/metrics").expect("/metrics answers");
    for other in Channel::ALL {
        let open = scrape::sum(
            &metrics,
            "sunset_channel_breaker_open",
            &[("channel", other.as_str())],
        );
        assert_eq!(open, f64::from(other == channel), "{other}");
    }
    // The outage lasts several probe intervals and many trips through the delay queues.
    tokio::time::sleep(down).await;
    let back = Instant::now();
    let (smtp, push) = match channel {
        Channel::Email => (SmtpSink::start_on(port), push_up.expect("push is up")),
        Channel::Push => (
            smtp_up.expect("email is up"),
            PushSink::start_on(port).await,
        ),
    };
    let last = match channel {
        Channel::Email => smtp
            .wait_for_async(USERS, Duration::from_secs(30))
            .await
            .iter()
            .map(|m| m.at)
            .max(),
        Channel::Push => push
            .wait_for(USERS, Duration::from_secs(30))
            .await
            .iter()
            .map(|r| r.at)
            .max(),
    };
    let resumed_in = last.expect("sends") - back;
    println!("measured: every {channel} sent {resumed_in:?} after its transport came back");
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
        .filter(|line| line.contains(&format!("holding {channel} sends")))
        .collect();
    assert_eq!(opened.len(), 1, "{log}");
    assert!(
        opened[0].contains(&format!("127.0.0.1:{port}")),
        "names the transport: {}",
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
