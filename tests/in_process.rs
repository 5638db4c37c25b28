//! `send` with no RabbitMQ: `broker.url` unset and nothing answering at the default address, or
//! `broker.url = ""`, runs the campaign on an in-process queue — retries after their delay, dead
//! letters to a file — while the commands whose work must outlive the process refuse to run,
//! and a URL that is set never falls back.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{
    Run, TestEnv, UNLIMITED_RATES, assert_everyone_told_once, audience_csv, campaign_args,
    output_within, sinks_config, table_row, unique, until_emails,
};

/// An AMQP URL where nothing listens: a port bound, then let go.
fn silent_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// A test folder whose config sends into the sinks, with `broker` as its `[broker]` table.
fn env_with(smtp: &SmtpSink, push: &PushSink, broker: &str, rest: &str) -> TestEnv {
    let env = TestEnv::new();
    env.write_config(&format!(
        "[templates]\ndir = \"templates\"\n[broker]\n{broker}\n{}",
        sinks_config(smtp, push, rest)
    ));
    env
}

/// Runs `sunset ARGS` with `env_vars`, off the async runtime so the sinks keep serving.
async fn run_with(env: &TestEnv, args: &[&str], env_vars: &[(&str, &str)]) -> Run {
    let mut command = env.command(args, env_vars);
    tokio::task::spawn_blocking(move || Run(command.output().expect("run sunset")))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_broker_url_unset_and_no_rabbitmq_runs_in_process_and_reaches_everyone() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = env_with(&smtp, &push, "", UNLIMITED_RATES);
    env.write("audience.csv", &audience_csv(12, |_| "example.com".into()));
    let url = silent_url();
    let campaign = unique("bare");
    let run = run_with(
        &env,
        &campaign_args("send", &campaign, &["--batch-size", "5"]),
        &[("SUNSET_BROKER_FALLBACK_URL", &url)],
    )
    .await
    .expect_code(0);
    let address = url.trim_start_matches("amqp://guest:guest@");
    let address = address.trim_end_matches("/%2f");
    let said = format!(
        "no RabbitMQ at {address} and broker.url unset: running this campaign in-process; \
         dead letters go to dead-letters.jsonl"
    );
    let stderr = run.stderr();
    assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    assert_eq!(
        table_row(&run.stdout(), "email"),
        [12, 12, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(table_row(&run.stdout(), "push"), [12, 12, 0, 0, 0, 0, 0, 0]);
    assert_everyone_told_once(&smtp, &push, 12);
    assert!(!env.path().join("dead-letters.jsonl").exists());

    let status = run_with(&env, &["status", "--campaign", &campaign, "--json"], &[])
        .await
        .expect_code(0)
        .stdout();
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["total"]["delivered"], 24, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_refusal_in_process_comes_back_after_its_delay_and_is_delivered() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let rest = format!("{UNLIMITED_RATES}[worker]\nretry_delays_ms = [400]\n");
    let env = env_with(&smtp, &push, "url = \"\"", &rest);
    env.write("audience.csv", &audience_csv(4, |_| "example.com".into()));
    smtp.reject_times("u2@example.com", 451, "4.7.1 try again later", 1);
    let started = Instant::now();
    let run = run_with(&env, &campaign_args("send", &unique("retry"), &[]), &[])
        .await
        .expect_code(0);
    assert!(
        run.stderr()
            .contains("broker.url is \"\": running this campaign in-process"),
        "{}",
        run.stderr()
    );
    let refused = smtp.refusals();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let delivered = smtp.messages_to("u2@example.com");
    assert_eq!(delivered.len(), 1, "the retry is delivered, once");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the retry waited for its delay"
    );
    assert_eq!(table_row(&run.stdout(), "email"), [4, 4, 0, 0, 0, 0, 0, 0]);
    assert_everyone_told_once(&smtp, &push, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_in_process_lands_in_the_dead_letter_file_and_the_same_send_redrives_it()
 {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = env_with(
        &smtp,
        &push,
        "url = \"\"\ndead_letter_file = \"failed.jsonl\"",
        UNLIMITED_RATES,
    );
    env.write("audience.csv", &audience_csv(3, |_| "example.com".into()));
    smtp.reject_times("u3@example.com", 550, "5.1.1 no such user", 1);
    let campaign = unique("dead");
    let run = run_with(&env, &campaign_args("send", &campaign, &[]), &[])
        .await
        .expect_code(3);
    assert!(
        run.stderr().contains("dead letters go to failed.jsonl"),
        "{}",
        run.stderr()
    );
    assert_eq!(table_row(&run.stdout(), "email"), [3, 2, 0, 1, 0, 0, 0, 0]);
    let file = std::fs::read_to_string(env.path().join("failed.jsonl")).expect("dead letters");
    let letters: Vec<serde_json::Value> = file
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 1, "{file}");
    let letter = &letters[0];
    assert_eq!(letter["kind"], "failed-recipients");
    assert_eq!(letter["campaign"], campaign.as_str());
    assert_eq!(letter["attempt"], 1);
    assert_eq!(letter["kinds"], serde_json::json!(["rejected"]));
    assert!(
        letter["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{letter}"
    );
    let failures = &letter["batch"]["failures"];
    assert_eq!(failures[0]["user_id"], "u-0003", "{letter}");
    assert_eq!(failures[0]["channel"], "email", "{letter}");
    assert!(
        failures[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such user")),
        "{letter}"
    );
    assert_eq!(letter["batch"]["recipients"][0]["user_id"], "u-0003");

    // The same command again: the ledger skips everyone reached and sends the dead letter's
    // pair, which the relay now takes.
    let again = run_with(&env, &campaign_args("send", &campaign, &[]), &[])
        .await
        .expect_code(0);
    assert_eq!(
        table_row(&again.stdout(), "email"),
        [3, 1, 2, 0, 0, 0, 0, 0]
    );
    assert_everyone_told_once(&smtp, &push, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_worker_and_dlq_without_rabbitmq_exit_2_naming_broker_url() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = env_with(&smtp, &push, "url = \"\"", UNLIMITED_RATES);
    env.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
    let campaign = unique("refused");
    let enqueue = campaign_args("enqueue", &campaign, &[]);
    for args in [
        enqueue.as_slice(),
        &["worker", "--exit-when-idle"],
        &["dlq", "list"],
        &["topology"],
    ] {
        let run = run_with(&env, args, &[]).await.expect_code(2);
        let stderr = run.stderr();
        assert!(stderr.contains("broker.url is \"\""), "{args:?}: {stderr}");
        assert!(stderr.contains("needs RabbitMQ"), "{args:?}: {stderr}");
    }

    // Unset and nothing answering: the work of `enqueue` and `dlq` would not outlive them.
    let unset = env_with(&smtp, &push, "", UNLIMITED_RATES);
    unset.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
    let fallback = silent_url();
    for args in [enqueue.as_slice(), &["dlq", "list"]] {
        let run = run_with(&unset, args, &[("SUNSET_BROKER_FALLBACK_URL", &fallback)])
            .await
            .expect_code(2);
        let stderr = run.stderr();
        assert!(
            stderr.contains("broker.url unset") && stderr.contains("needs RabbitMQ"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(smtp.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_a_broker_url_set_but_unreachable_gives_up_as_before_and_never_runs_in_process() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let broker = format!("url = \"{}\"\ngive_up_after_ms = 300", silent_url());
    let env = env_with(&smtp, &push, &broker, UNLIMITED_RATES);
    env.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
    let run = run_with(&env, &campaign_args("send", &unique("set"), &[]), &[]).await;
    assert_ne!(run.code(), 0, "{}", run.stderr());
    let stderr = run.stderr();
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("in-process"), "{stderr}");
    assert_eq!(smtp.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_in_process_exits_130_with_the_resume_command_and_the_resume_finishes_once() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let paced = "[rate]\nemail_per_sec = 40\npush_per_sec = 40\n";
    let env = env_with(&smtp, &push, "url = \"\"", paced);
    env.write("audience.csv", &audience_csv(200, |_| "example.com".into()));
    let campaign = unique("interrupted");
    let args = campaign_args("send", &campaign, &["--batch-size", "10"]);
    let child = env
        .command(&args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sunset");
    until_emails(&smtp, 20).await;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = output_within(child, Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let resume = format!(
        "resume with: {} {}",
        env!("CARGO_BIN_EXE_sunset"),
        args.join(" ")
    );
    assert!(stderr.contains(&resume), "{stderr}");

    let resumed = run_with(&env, &args, &[]).await.expect_code(0).stdout();
    let email = table_row(&resumed, "email");
    assert_eq!((email[0], email[1] + email[2]), (200, 200), "{resumed}");
    assert_everyone_told_once(&smtp, &push, 200);
}
