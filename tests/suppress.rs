//! The suppression list end to end: `sunset suppress` through the binary on SQLite and
//! PostgreSQL, and campaigns sent through the real RabbitMQ to the file outbox that skip
//! suppressed addresses — reports recorded with `Ledger::record_report`, as `sunset feedback`
//! does.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;

use common::{Db, TestEnv, campaign_args, status_json, unique};
use sunset::TokenKey;
use sunset::batch::{CampaignId, EmailAddress, UserId};
use sunset::channel::Channel;
use sunset::config::{FeedbackConfig, UnsubscribeScope};
use sunset::ledger::{Ledger, ReportEffect};
use sunset::suppression::{About, Reason, Report, Source};

fn list(env: &TestEnv) -> Vec<serde_json::Value> {
    env.sunset(&["suppress", "list", "--json"])
        .expect_code(0)
        .stdout()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

/// Our entries of the list, as (address, reason, scope).
fn ours(env: &TestEnv, tag: &str) -> HashSet<(String, String, String)> {
    list(env)
        .into_iter()
        .filter(|e| e["address"].as_str().is_some_and(|a| a.contains(tag)))
        .map(|e| {
            let field = |k: &str| e[k].as_str().expect("a string").to_string();
            (field("address"), field("reason"), field("scope"))
        })
        .collect()
}

fn entry(address: &str, reason: &str) -> (String, String, String) {
    (address.into(), reason.into(), "global".into())
}

fn the_suppress_commands(db: Db) {
    let env = TestEnv::new();
    env.write_config(&db.section());
    let tag = unique("sup");
    let a = format!("{tag}-a@example.com");
    let b = format!("{tag}-b@example.com");
    let added = env
        .sunset(&["suppress", "add", &a, &format!("{tag}-b@EXAMPLE.com")])
        .expect_code(0);
    assert!(added.stdout().contains("2 added"), "{}", added.stdout());
    let again = env
        .sunset(&["suppress", "add", &a, "--reason", "complaint"])
        .expect_code(0);
    assert!(again.stdout().contains("1 added"), "{}", again.stdout());
    assert_eq!(
        ours(&env, &tag),
        HashSet::from([
            entry(&a, "manual"),
            entry(&b, "manual"),
            entry(&a, "complaint")
        ]),
        "the domain is stored lower-case"
    );
    let table = env.sunset(&["suppress", "list"]).expect_code(0).stdout();
    assert!(
        table.contains(&a) && table.contains("global") && table.contains("complaint"),
        "{table}"
    );

    // One address a line, with comments and blank lines; then a CSV with an `email` column.
    env.write(
        "lines.txt",
        &format!("# exported\n{tag}-c@example.com\n\n  {tag}-d@example.com  \n"),
    );
    let imported = env
        .sunset(&["suppress", "import", "lines.txt", "--reason", "unsubscribe"])
        .expect_code(0);
    assert!(
        imported.stdout().contains("2 addresses read"),
        "{}",
        imported.stdout()
    );
    env.write(
        "export.csv",
        &format!("id,Email,name\n1,{tag}-e@example.com,\"E, Jr.\"\n2,,no address\n"),
    );
    env.sunset(&["suppress", "import", "export.csv"])
        .expect_code(0);
    let before = ours(&env, &tag);
    assert!(before.contains(&entry(&format!("{tag}-c@example.com"), "unsubscribe")));
    assert!(before.contains(&entry(&format!("{tag}-e@example.com"), "manual")));
    assert_eq!(before.len(), 6, "{before:?}");

    // A bad line names its line and imports nothing.
    env.write(
        "bad.txt",
        &format!("{tag}-f@example.com\n# fine\nnot an address\n{tag}-g@example.com\n"),
    );
    let bad = env
        .sunset(&["suppress", "import", "bad.txt"])
        .expect_code(2);
    assert!(bad.stderr().contains("bad.txt:3:"), "{}", bad.stderr());
    assert!(
        bad.stderr().contains("nothing imported"),
        "{}",
        bad.stderr()
    );
    assert_eq!(ours(&env, &tag), before, "nothing of the bad file");
    let bad_arg = env.sunset(&["suppress", "add", "nobody"]).expect_code(2);
    assert!(
        bad_arg.stderr().contains("`nobody`"),
        "{}",
        bad_arg.stderr()
    );
    env.sunset(&["suppress", "add", &a, "--reason", "sometimes"])
        .expect_code(2);
    env.sunset(&["suppress", "import", "missing.txt"])
        .expect_code(2);

    let removed = env
        .sunset(&["suppress", "remove", &a, &format!("{tag}-c@example.com")])
        .expect_code(0);
    assert!(
        removed.stdout().contains("3 entries removed"),
        "{}",
        removed.stdout()
    );
    assert_eq!(ours(&env, &tag).len(), 3);
    // A PostgreSQL ledger is shared: no entry of this test may stop another's email.
    let left: Vec<String> = ours(&env, &tag).into_iter().map(|(a, _, _)| a).collect();
    let mut remove = vec!["suppress", "remove"];
    remove.extend(left.iter().map(String::as_str));
    env.sunset(&remove).expect_code(0);
    assert!(ours(&env, &tag).is_empty());
}

#[test]
fn suppress_adds_imports_lists_and_removes_addresses_on_sqlite() {
    the_suppress_commands(Db::Sqlite);
}

#[test]
fn suppress_adds_imports_lists_and_removes_addresses_on_postgres() {
    the_suppress_commands(Db::Postgres);
}

#[test]
fn suppress_without_a_ledger_exits_2_naming_ledger_url() {
    let env = TestEnv::new();
    env.write_config("[ledger]\nurl = \"\"\n");
    let run = env
        .sunset(&["suppress", "add", "a@example.com"])
        .expect_code(2);
    assert!(run.stderr().contains("ledger.url"), "{}", run.stderr());
}

#[test]
fn a_hundred_thousand_addresses_import_in_one_go() {
    use std::fmt::Write as _;
    let env = TestEnv::new();
    let mut file = String::new();
    for i in 0..100_000 {
        let _ = writeln!(file, "user{i}@example.com");
    }
    env.write("many.txt", &file);
    let run = env
        .sunset(&["suppress", "import", "many.txt"])
        .expect_code(0);
    assert!(run.stdout().contains("100000 added"), "{}", run.stdout());
    assert_eq!(list(&env).len(), 100_000);
}

/// The feedback key of a campaign test, in an owner-only file.
fn key_file(env: &TestEnv) -> TokenKey {
    let path = env.write("feedback.key", "a feedback key of the campaign tests");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    TokenKey::load(&path).expect("key")
}

/// Which addresses each .eml of the outbox went to, and how many pushes went out.
fn outbox(env: &TestEnv) -> (Vec<String>, usize) {
    let mut to = Vec::new();
    for file in std::fs::read_dir(env.path().join("outbox/email")).expect("outbox") {
        let raw = std::fs::read(file.expect("entry").path()).expect("read .eml");
        let message = mail_parser::MessageParser::default()
            .parse(&raw)
            .expect("an email");
        let address = message
            .to()
            .and_then(|to| to.first())
            .and_then(|a| a.address())
            .expect("a To address");
        to.push(address.to_string());
    }
    to.sort();
    let pushes = std::fs::read_to_string(env.path().join("outbox/push.jsonl"))
        .map_or(0, |p| p.lines().count());
    (to, pushes)
}

/// The ledger of the test's `sunset` runs (the default `sunset-ledger.db` in its folder).
fn test_ledger(env: &TestEnv) -> std::sync::Arc<Ledger> {
    let file = env.path().join("sunset-ledger.db");
    Ledger::open(&format!("sqlite://{}", file.display())).expect("open the test's ledger")
}

fn clear_outbox(env: &TestEnv) {
    let _ = std::fs::remove_dir_all(env.path().join("outbox"));
}

async fn send(env: &TestEnv, campaign: &str, template: &str) {
    let mut args = campaign_args("send", campaign, &[]);
    args[4] = template;
    env.sunset_async(&args).await.expect_code(0);
}

fn policy(scope: UnsubscribeScope) -> FeedbackConfig {
    FeedbackConfig {
        unsubscribe_scope: scope,
        soft_bounces_to_suppress: 3,
        ..FeedbackConfig::default()
    }
}

fn mail(i: usize) -> String {
    format!("u{i}@example.com")
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_skip_suppressed_addresses_and_legal_notices_skip_only_bounces_and_complaints() {
    let env = TestEnv::with_broker("[feedback]\nsecret_file = \"feedback.key\"\n");
    let key = key_file(&env);
    env.write(
        "audience.csv",
        &common::audience_csv(7, |_| "example.com".into()),
    );
    // An ordinary notice (the shipped one made no legal notice) and a legal notice beside it.
    let legal = env.templates().join("legal");
    common::copy_dir(&env.templates().join("xiami-shutdown"), &legal);
    std::fs::write(legal.join("template.toml"), "legal_notice = true\n").expect("write");
    std::fs::write(env.template_file("template.toml"), "").expect("write");

    env.sunset(&["suppress", "add", &mail(1)]).expect_code(0);
    let first = unique("first");
    send(&env, &first, "xiami-shutdown").await;
    let (to, pushes) = outbox(&env);
    assert_eq!(to, (2..=7).map(mail).collect::<Vec<_>>(), "no email to u1");
    assert_eq!(pushes, 7, "push to u1 is not affected");
    let status = status_json(&env, &first).await;
    assert_eq!(status["channels"]["email"]["suppressed"], 1, "{status}");
    assert_eq!(status["channels"]["email"]["pending"], 0, "{status}");
    assert_eq!(status["channels"]["push"]["suppressed"], 0, "{status}");
    assert_eq!(status["feedback"]["suppressed"], 1, "{status}");

    // What came back from the first campaign.
    let ledger = test_ledger(&env);
    let id = CampaignId::parse(&first).expect("id");
    let token = |user: usize| {
        About::Token(key.token(
            &id,
            &UserId::parse(&format!("u-{user:04}")).expect("user"),
            Channel::Email,
        ))
    };
    let report = |reason, about| Report {
        reason,
        about,
        source: Source::Dsn,
        detail: String::new(),
    };
    let global = policy(UnsubscribeScope::Global);
    let record = |reason, about, policy: FeedbackConfig| {
        let ledger = &ledger;
        async move {
            ledger
                .record_report(&report(reason, about), &policy)
                .await
                .expect("record")
        }
    };
    // u2 unsubscribed from everything, u3 hard-bounced (found by its Message-ID), u4
    // unsubscribed from the first campaign only, u5 soft-bounced three times, u6 twice.
    record(Reason::Unsubscribe, token(2), global.clone()).await;
    let by_message = About::Message {
        campaign: id.clone(),
        user: UserId::parse("u-0003").expect("user"),
    };
    assert_eq!(
        record(Reason::HardBounce, by_message, global.clone()).await,
        ReportEffect::Suppressed {
            address: EmailAddress::parse(&mail(3)).expect("address"),
            reason: Reason::HardBounce
        }
    );
    record(
        Reason::Unsubscribe,
        token(4),
        policy(UnsubscribeScope::Campaign),
    )
    .await;
    for _ in 0..3 {
        record(Reason::SoftBounce, token(5), global.clone()).await;
    }
    for _ in 0..2 {
        record(Reason::SoftBounce, token(6), global.clone()).await;
    }
    ledger.close().await;
    let status = status_json(&env, &first).await;
    assert_eq!(status["feedback"]["hard_bounces"], 1, "{status}");
    assert_eq!(status["feedback"]["unsubscribes"], 2, "{status}");
    assert!(
        (status["feedback"]["bounce_rate"].as_f64().expect("a rate") - 1.0 / 6.0).abs() < 1e-9,
        "{status}"
    );

    // A legal notice goes to the unsubscribed, not to the bounced.
    clear_outbox(&env);
    let notice = unique("legal");
    send(&env, &notice, "legal").await;
    let (to, _) = outbox(&env);
    assert_eq!(to, [2, 4, 6, 7].map(mail), "u1 manual, u3 hard, u5 soft");

    // An ordinary notice skips every unsubscribe that holds for it.
    clear_outbox(&env);
    let second = unique("second");
    send(&env, &second, "xiami-shutdown").await;
    let (to, pushes) = outbox(&env);
    assert_eq!(
        to,
        [4, 6, 7].map(mail),
        "u4 unsubscribed from the first campaign only; u6 has two soft bounces of three"
    );
    assert_eq!(pushes, 7);
    let status = status_json(&env, &second).await;
    assert_eq!(status["channels"]["email"]["suppressed"], 4, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complaint_rate_past_the_limit_pauses_the_campaign_until_resumed() {
    let env = TestEnv::with_broker("[feedback]\nsecret_file = \"feedback.key\"\n");
    let key = key_file(&env);
    env.write(
        "audience.csv",
        &common::audience_csv(1000, |_| "example.com".into()),
    );
    let campaign = unique("complaints");
    env.sunset_async(&campaign_args("send", &campaign, &["--channels", "email"]))
        .await
        .expect_code(0);
    let ledger = test_ledger(&env);
    let id = CampaignId::parse(&campaign).expect("id");
    for user in 1..=4 {
        let about = About::Token(key.token(
            &id,
            &UserId::parse(&format!("u-{user:04}")).expect("user"),
            Channel::Email,
        ));
        let report = Report {
            reason: Reason::Complaint,
            about,
            source: Source::Arf,
            detail: String::new(),
        };
        ledger
            .record_report(&report, &FeedbackConfig::default())
            .await
            .expect("record");
    }
    ledger.close().await;
    let status = status_json(&env, &campaign).await;
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["feedback"]["complaints"], 4, "{status}");
    assert!(
        status["paused_reason"]
            .as_str()
            .is_some_and(|r| r.contains("0.40%") && r.contains("pause_complaint_rate")),
        "{status}"
    );
    let table = env
        .sunset_async(&["status", "--campaign", &campaign])
        .await
        .expect_code(0)
        .stdout();
    assert!(table.contains("4 complaints (0.40%)"), "{table}");
    assert!(table.contains("campaign resume"), "{table}");
    env.sunset_async(&["campaign", "resume", &campaign])
        .await
        .expect_code(0);
    let status = status_json(&env, &campaign).await;
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["paused_reason"], serde_json::Value::Null, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suppressed_send_is_counted_under_its_own_outcome_in_the_metrics() {
    use common::scrape::{self, free_address};
    use common::worker_process::WorkerProcess;
    let env = TestEnv::with_broker("");
    env.write(
        "audience.csv",
        &common::audience_csv(3, |_| "example.com".into()),
    );
    env.sunset(&["suppress", "add", &mail(2)]).expect_code(0);
    env.sunset_async(&campaign_args("enqueue", &unique("metrics"), &[]))
        .await
        .expect_code(0);
    let address = free_address();
    let _worker = WorkerProcess::spawn(env.command(
        &["worker"],
        &[("SUNSET__METRICS__LISTEN", address.as_str())],
    ));
    let started = std::time::Instant::now();
    let text = loop {
        let text = scrape::get(&address, "/metrics").map(|(_, body)| body);
        if text
            .as_deref()
            .is_some_and(|t| scrape::sum(t, "sunset_batches_total", &[]) >= 1.0)
        {
            break text.expect("scraped");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no batch settled in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let sends = |channel: &str, outcome: &str| {
        scrape::sum(
            &text,
            "sunset_sends_total",
            &[("channel", channel), ("outcome", outcome)],
        )
    };
    assert_eq!(sends("email", "suppressed"), 1.0, "{text}");
    assert_eq!(sends("email", "delivered"), 2.0, "{text}");
    assert_eq!(sends("push", "delivered"), 3.0, "{text}");
    assert_eq!(sends("push", "suppressed"), 0.0, "{text}");
}
