//! What `send` reports and how every command exits: recipients (not attempts) per channel,
//! exit 3 when some were not reached, 130 on Ctrl-C with the command that resumes, 2 for bad
//! input or configuration; and `status --watch` until the campaign drains.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{
    TestEnv, UNLIMITED_RATES, assert_everyone_told_once, audience_csv, campaign_args,
    output_within, sinks_config, table_row, unique, until_emails,
};

const NO_LEDGER: &str = "[ledger]\nurl = \"\"\n";

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    env.command(args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sunset")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_email_refused_exits_3_counting_recipients_not_attempts() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    // Transient refusals, three attempts each: 15 attempts, 5 recipients.
    let env = TestEnv::with_broker(&sinks_config(
        &smtp,
        &push,
        &format!(
            "{UNLIMITED_RATES}{NO_LEDGER}[worker]\nmax_attempts = 3\nretry_delays_ms = [100, 200]\n"
        ),
    ));
    env.write("audience.csv", &audience_csv(5, |_| "example.com".into()));
    for i in 1..=5 {
        smtp.reject(&format!("u{i}@example.com"), 451);
    }
    let run = env
        .sunset_async(&campaign_args("send", &unique("refused"), &[]))
        .await
        .expect_code(3);
    let out = run.stdout();
    assert_eq!(table_row(&out, "email"), [5, 0, 0, 5, 0, 0, 0, 0], "{out}");
    assert_eq!(table_row(&out, "push"), [5, 5, 0, 0, 0, 0, 0, 0], "{out}");
    assert!(
        run.stderr()
            .contains("5 recipient × channel pairs not reached (email 5)"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_with_the_ledger_exits_3_and_the_ledger_counts_it() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED_RATES));
    env.write("audience.csv", &audience_csv(4, |_| "example.com".into()));
    for i in 1..=4 {
        smtp.reject(&format!("u{i}@example.com"), 550);
    }
    let run = env
        .sunset_async(&campaign_args("send", &unique("rejected"), &[]))
        .await
        .expect_code(3);
    let out = run.stdout();
    assert_eq!(table_row(&out, "email"), [4, 0, 0, 4, 0, 0, 0, 0], "{out}");
    assert_eq!(table_row(&out, "push"), [4, 4, 0, 0, 0, 0, 0, 0], "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_of_a_finished_campaign_sends_nothing_and_counts_everyone_as_earlier() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, UNLIMITED_RATES));
    env.write("audience.csv", &audience_csv(6, |_| "example.com".into()));
    let campaign = unique("rerun");
    let args = campaign_args("send", &campaign, &[]);
    let first = env.sunset_async(&args).await.expect_code(0).stdout();
    assert_eq!(
        table_row(&first, "email"),
        [6, 6, 0, 0, 0, 0, 0, 0],
        "{first}"
    );
    let again = env.sunset_async(&args).await.expect_code(0).stdout();
    assert_eq!(
        table_row(&again, "email"),
        [6, 0, 6, 0, 0, 0, 0, 0],
        "{again}"
    );
    assert_eq!(
        table_row(&again, "push"),
        [6, 0, 6, 0, 0, 0, 0, 0],
        "{again}"
    );
    assert!(again.contains("every recipient reached"), "{again}");
    assert_everyone_told_once(&smtp, &push, 6);
}

/// Runs `send ARGS`, interrupts it with SIGINT once 20 emails are out, and returns its exit
/// code, stdout and stderr.
async fn interrupted_send(
    env: &TestEnv,
    smtp: &SmtpSink,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let child = spawn(env, args);
    until_emails(smtp, 20).await;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = output_within(child, Duration::from_secs(60)).await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sinks paced so that a 200-recipient campaign takes seconds.
const PACED: &str = "[rate]\nemail_per_sec = 40\npush_per_sec = 40\n";

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_send_exits_130_saying_what_is_left_and_the_resume_finishes_once() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, PACED));
    env.write("audience.csv", &audience_csv(200, |_| "example.com".into()));
    let campaign = unique("interrupted");
    let args = campaign_args("send", &campaign, &["--batch-size", "10"]);
    let (code, stdout, stderr) = interrupted_send(&env, &smtp, &args).await;
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert!(
        table_row(&stdout, "email")[7] > 0,
        "something is left: {stdout}"
    );
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    assert!(stderr.contains("pairs not reached"), "{stderr}");
    let resume = format!(
        "resume with: {} {}",
        env!("CARGO_BIN_EXE_sunset"),
        args.join(" ")
    );
    assert!(stderr.contains(&resume), "{stderr}");

    let resumed = env.sunset_async(&args).await.expect_code(0).stdout();
    let email = table_row(&resumed, "email");
    assert_eq!((email[0], email[1] + email[2]), (200, 200), "{resumed}");
    assert!(
        email[2] >= 20,
        "the first run's emails count as earlier: {resumed}"
    );
    assert_everyone_told_once(&smtp, &push, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_ledger_ctrl_c_names_a_draining_worker_that_finishes_the_campaign_once() {
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push, &format!("{PACED}{NO_LEDGER}")));
    env.write("audience.csv", &audience_csv(200, |_| "example.com".into()));
    let campaign = unique("interrupted");
    let args = campaign_args("send", &campaign, &["--batch-size", "10"]);
    let (code, stdout, stderr) = interrupted_send(&env, &smtp, &args).await;
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    let resume = format!(
        "resume with: {} worker --exit-when-idle",
        env!("CARGO_BIN_EXE_sunset")
    );
    assert!(stderr.contains(&resume), "{stderr}");
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_everyone_told_once(&smtp, &push, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_watch_prints_a_line_per_look_until_the_campaign_drains() {
    let push = PushSink::start().await;
    push.pace(40);
    let env = TestEnv::with_broker(&format!(
        "{UNLIMITED_RATES}[push]\ntransport = \"http\"\nurl = \"{}\"\n",
        push.url()
    ));
    env.write("audience.csv", &audience_csv(40, |_| "example.com".into()));
    let campaign = unique("watched");
    env.sunset_async(&campaign_args(
        "enqueue",
        &campaign,
        &["--channels", "push", "--deadline", "2099-01-01T00:00:00Z"],
    ))
    .await
    .expect_code(0);
    let watch = spawn(
        &env,
        &[
            "status",
            "--campaign",
            &campaign,
            "--watch",
            "--interval-ms",
            "100",
        ],
    );
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    let output = output_within(watch, Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 2, "one line per look: {stdout}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("campaign {campaign}: push "))),
        "{stdout}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("push  40/40 (100.0%), done")),
        "{stdout}"
    );
    let status = common::status_json(&env, &campaign).await;
    assert_eq!(status["deadline"], "2099-01-01T00:00:00+00:00");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_status_watch_with_130() {
    let env = TestEnv::with_broker("");
    env.write("audience.csv", &audience_csv(3, |_| "example.com".into()));
    let campaign = unique("undrained");
    // Enqueued, and no worker: it never drains.
    env.sunset_async(&campaign_args("enqueue", &campaign, &[]))
        .await
        .expect_code(0);
    let mut child = spawn(&env, &["status", "--campaign", &campaign, "--watch"]);
    let stdout = child.stdout.take().expect("piped");
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
        line
    });
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("a first look in time")
        .expect("join");
    assert!(first.contains("email 0/3"), "{first}");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = output_within(child, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stopped by SIGINT: stopped watching campaign {campaign}"
        )),
        "{stderr}"
    );
}

#[test]
fn bad_input_and_configuration_exit_2_naming_what_to_fix() {
    let env = TestEnv::new();
    env.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
    let campaign = unique("bad");
    let missing = env
        .sunset(&common::notice_args(
            "enqueue",
            &campaign,
            &["--audience", "nowhere.csv"],
        ))
        .expect_code(2);
    assert!(
        missing.stderr().contains("audience file nowhere.csv"),
        "{}",
        missing.stderr()
    );
    assert!(
        !missing.stderr().contains("panicked"),
        "{}",
        missing.stderr()
    );

    let vars = env
        .sunset(&campaign_args(
            "enqueue",
            &campaign,
            &["--vars", "nowhere.json"],
        ))
        .expect_code(2);
    assert!(
        vars.stderr().contains("--vars nowhere.json"),
        "{}",
        vars.stderr()
    );

    let past = env
        .sunset(&campaign_args(
            "enqueue",
            &campaign,
            &["--deadline", "2021-02-05T00:00:00+08:00"],
        ))
        .expect_code(2);
    assert!(past.stderr().contains("--deadline"), "{}", past.stderr());
    assert!(past.stderr().contains("has passed"), "{}", past.stderr());

    env.write_config(
        "[templates]\ndir = \"templates\"\n[push]\noutbox = \"/proc/none/push.jsonl\"\n",
    );
    let outbox = env
        .sunset(&campaign_args("send", &campaign, &[]))
        .expect_code(2);
    assert!(
        outbox.stderr().contains("key `push.outbox`"),
        "{}",
        outbox.stderr()
    );

    for args in [
        vec!["status", "--campaign", campaign.as_str()],
        vec!["status", "--campaign", campaign.as_str(), "--watch"],
        vec!["campaign", "pause", campaign.as_str()],
    ] {
        let unknown = env.sunset(&args).expect_code(2);
        assert!(unknown.stderr().contains(&campaign), "{}", unknown.stderr());
    }
}

#[test]
fn a_broker_url_that_is_not_amqp_exits_2_for_every_command_that_connects() {
    let env = TestEnv::new();
    env.write_config(
        "[templates]\ndir = \"templates\"\n[broker]\nurl = \"http://127.0.0.1:15672/\"\n",
    );
    env.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
    let campaign = unique("http");
    let started = Instant::now();
    for args in [
        campaign_args("enqueue", &campaign, &[]),
        campaign_args("send", &campaign, &[]),
        vec!["worker"],
        vec!["topology"],
    ] {
        let run = env.sunset(&args).expect_code(2);
        assert!(
            run.stderr().contains("key `broker.url`"),
            "{}",
            run.stderr()
        );
        assert!(run.stderr().contains("not an AMQP URL"), "{}", run.stderr());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a bad URL is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_push_url_exits_2_like_a_bad_email_url_and_publishes_nothing() {
    let smtp = SmtpSink::start();
    for (section, key) in [
        (
            format!(
                "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"ftp://127.0.0.1/push\"\n",
                smtp.url()
            ),
            "key `push.url`",
        ),
        (
            "[email]\ntransport = \"smtp\"\nurl = \"http://127.0.0.1:1025\"\n".to_string(),
            "key `email.url`",
        ),
    ] {
        let env = TestEnv::with_broker(&section);
        env.write("audience.csv", &audience_csv(2, |_| "example.com".into()));
        let run = env
            .sunset_async(&campaign_args("send", &unique("badurl"), &[]))
            .await
            .expect_code(2);
        assert!(run.stderr().contains(key), "{}", run.stderr());
        let broker = env.broker().await;
        let queued = broker
            .ready_count(&env.names().work)
            .await
            .expect("queue length");
        broker.close().await;
        assert_eq!(queued, 0, "nothing published");
    }
}
