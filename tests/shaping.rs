//! Shaping by evidence against a real RabbitMQ and SMTP servers that behave like providers:
//! per-recipient deferrals, a relay that throttles above 100/s, rules from a file, a bounded
//! shutdown. Timing comparisons live in `cargo bench --bench campaign -- shaping`.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::smtp_sink::SmtpSink;
use common::worker_process::WorkerProcess;
use common::{TestEnv, emails_per_address, unique};

/// Email only, 300/s, no per-domain limit but `domains` (`"x.example" = 5`); short retry
/// delays; attempts to spare.
fn config(smtp: &SmtpSink, rate_extra: &str, worker_extra: &str, domains: &str) -> String {
    // No push: the push URL is never called with `--channels email`.
    let push = "http://127.0.0.1:9/push";
    format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"{push}\"\n\
         [rate]\nemail_per_sec = 300\npush_per_sec = 0\n{rate_extra}\n\
         [worker]\nretry_delays_ms = [300, 600]\nmax_attempts = 10\n{worker_extra}\n\
         [rate.per_domain_per_sec]\ndefault = 0\n{domains}\n",
        smtp.url()
    )
}

/// `n` users at `domain`: `u1@domain`…
fn audience(n: usize, domain: &str) -> String {
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=n {
        let _ = writeln!(csv, "u{i},u{i}@{domain},en");
    }
    csv
}

async fn enqueue(env: &TestEnv, campaign: &str) {
    let args = common::campaign_args(
        "enqueue",
        campaign,
        &["--channels", "email", "--batch-size", "100"],
    );
    env.sunset_async(&args).await.expect_code(0);
}

/// Asserts every address of `audience(n, domain)` got exactly one email.
fn assert_told_once(smtp: &SmtpSink, n: usize, domain: &str) {
    let counts = emails_per_address(smtp);
    let told: HashSet<&String> = counts.keys().filter(|a| a.ends_with(domain)).collect();
    assert_eq!(told.len(), n, "{domain}: everyone told");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "told twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_percent_try_again_later_never_slows_the_domain_and_everyone_is_told() {
    // Arrange: 10 % of recipients defer their first attempt, as greylisting does.
    let smtp = SmtpSink::start();
    let env = TestEnv::with_broker(&config(&smtp, "", "", ""));
    env.write("audience.csv", &audience(300, "example.com"));
    for i in (1..=300).step_by(10) {
        smtp.reject_times(
            &format!("u{i}@example.com"),
            451,
            "4.7.1 Try again later",
            1,
        );
    }
    enqueue(&env, &unique("greylist")).await;

    // Act
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    // Assert
    let err = run.stderr();
    assert!(!err.contains("rate lowered"), "{err}");
    assert_eq!(smtp.refusals().len(), 30);
    assert_told_once(&smtp, 300, "@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_throttling_above_100_per_second_slows_the_domain_without_hammering_it() {
    // Arrange: the relay takes 100 recipients a second and answers 421 to the rest.
    let smtp = SmtpSink::start();
    smtp.throttle_above(100.0, 421, "4.7.0 Too many messages, slow down");
    let env = TestEnv::with_broker(&config(&smtp, "", "", ""));
    env.write("audience.csv", &audience(1000, "example.com"));
    enqueue(&env, &unique("relay")).await;

    // Act
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    // Assert
    let err = run.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("rate lowered") && l.contains("rate-wording")),
        "the rule that fired is named: {err}"
    );
    assert_told_once(&smtp, 1000, "@example.com");
    let attempts = smtp.count() + smtp.refusals().len();
    println!("measured: {attempts} attempts for 1000 messages");
    assert!(attempts <= 1300, "{attempts} attempts for 1000 messages");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_from_the_file_fires_on_its_pattern_and_holds_the_domain_for_its_duration() {
    // Arrange: a rule of the operator's suspends paused.example for 2 s on "4.7.999".
    let smtp = SmtpSink::start();
    let rules = "[[rule]]\nname = \"custom-pause\"\ndomains = [\"paused.example\"]\n\
                 pattern = \"4\\\\.7\\\\.999\"\nscope = \"domain\"\naction = \"suspend\"\nduration_secs = 2\n";
    let rate = "shaping_file = \"rules.toml\"";
    // Sends to the domain trickle (5/s), so the suspension finds some still to start.
    let env = TestEnv::with_broker(&config(&smtp, rate, "", "\"paused.example\" = 5"));
    env.write("rules.toml", rules);
    env.write("audience.csv", &audience(40, "paused.example"));
    smtp.reject_times("u1@paused.example", 451, "4.7.999 Sending paused", 1);
    enqueue(&env, &unique("pause")).await;

    // Act
    let run = env
        .sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    // Assert: the log names the rule; no send reached the domain while it was suspended.
    let err = run.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("sends suspended") && l.contains("custom-pause")),
        "{err}"
    );
    assert!(err.contains("suspension over"), "{err}");
    let refused_at = smtp.refusals()[0].1;
    // One send may already have passed the limits when the reply came back.
    let during: Vec<Duration> = smtp
        .messages()
        .iter()
        .filter(|m| m.at > refused_at)
        .map(|m| m.at - refused_at)
        .filter(|&after| after < Duration::from_millis(1900))
        .collect();
    assert!(during.len() <= 1, "sent while suspended: {during:?}");
    assert_told_once(&smtp, 40, "@paused.example");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_domain_held_back_exits_within_the_bound_and_loses_nobody() {
    // Arrange: the domain is suspended for 10 minutes after its first reply.
    let smtp = SmtpSink::start();
    let rules = "[[rule]]\nname = \"long-pause\"\npattern = \"4\\\\.7\\\\.999\"\nscope = \"domain\"\n\
                 action = \"suspend\"\nduration_secs = 600\n";
    let domains = "\"held.example\" = 5";
    let env = TestEnv::with_broker(&config(
        &smtp,
        "shaping_file = \"rules.toml\"",
        "shutdown_timeout_ms = 5000",
        domains,
    ));
    env.write("rules.toml", rules);
    env.write("audience.csv", &audience(60, "held.example"));
    smtp.reject_times("u1@held.example", 451, "4.7.999 Sending paused", 1);
    enqueue(&env, &unique("held")).await;
    let worker = WorkerProcess::spawn(env.command(&["worker"], &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.refusals().is_empty() {
        assert!(Instant::now() < deadline, "no reply within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act
    let stopping = Instant::now();
    let status = worker.terminate().await;
    let took = stopping.elapsed();

    // Assert: out within the bound (5 s, plus the broker's goodbye), then a second worker
    // without the rule tells everyone, once.
    println!("measured: worker exited {took:?} after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(7), "{took:?}");
    assert!(smtp.count() < 60, "the suspension held sends back");
    let queue = env.queue.as_deref().expect("a queue");
    env.write_config(&format!(
        "[templates]\ndir = \"templates\"\n[broker]\nqueue = \"{queue}\"\n{}",
        config(&smtp, "", "", domains)
    ));
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_told_once(&smtp, 60, "@held.example");
}

#[test]
fn a_bad_rule_or_shaping_setting_stops_the_worker_with_exit_2_naming_the_file_line_or_key() {
    let env = TestEnv::new();
    env.write(
        "rules.toml",
        "[[rule]]\nname = \"fine\"\npattern = \"x\"\nscope = \"domain\"\n\n\
         [[rule]]\nname = \"broken\"\npattern = \"(\"\nscope = \"domain\"\n",
    );
    env.write_config("[templates]\ndir = \"templates\"\n[rate]\nshaping_file = \"rules.toml\"\n");
    let err = env.sunset(&["worker"]).expect_code(2).stderr();
    assert!(err.contains("rules.toml: line 6"), "{err}");
    assert!(err.contains("rule `broken`: key `pattern`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    env.write_config("[templates]\ndir = \"templates\"\n[rate]\nshaping_threshold = 1.5\n");
    let err = env.sunset(&["worker"]).expect_code(2).stderr();
    assert!(err.contains("rate.shaping_threshold"), "{err}");

    env.write_config("[templates]\ndir = \"templates\"\n[rate]\nshaping_file = \"missing.toml\"\n");
    let err = env.sunset(&["worker"]).expect_code(2).stderr();
    assert!(err.contains("missing.toml"), "{err}");
}
