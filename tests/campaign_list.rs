//! `sunset campaign list` and the one spelling of a campaign id (`--campaign ID`, with
//! `--campaign-id` and the bare id still read), on SQLite and PostgreSQL ledgers, with the built
//! binary, real RabbitMQ and real SMTP and push sinks.

mod common;

use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use common::{Db, TestEnv, UNLIMITED_RATES, audience_csv, sinks_config, unique};
use serde_json::Value;

/// The campaign `id` in `campaign list --json`.
fn listed<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .expect("campaign list --json is an array")
        .iter()
        .find(|c| c["campaign"] == id)
        .unwrap_or_else(|| panic!("{id} not listed in {list}"))
}

async fn list_json(env: &TestEnv) -> Value {
    let run = env
        .sunset_async(&["campaign", "list", "--json"])
        .await
        .expect_code(0);
    serde_json::from_str(&run.stdout()).expect("campaign list --json is JSON")
}

async fn campaigns_are_listed_with_their_state_and_delivered_share(db: Db) {
    // Arrange: one campaign sent in full (spelled `--campaign-id`), one enqueued with a deadline
    // and email only, then paused (spelled `--campaign`).
    let (smtp, push) = (SmtpSink::start(), PushSink::start().await);
    let env = TestEnv::with_broker(&sinks_config(
        &smtp,
        &push,
        &format!("{UNLIMITED_RATES}{}", db.section()),
    ));
    env.write("audience.csv", &audience_csv(8, |_| "example.com".into()));
    let (sent, waiting) = (unique("listed-sent"), unique("listed-waiting"));
    let send = [
        "send",
        "--campaign-id",
        &sent,
        "--template",
        "xiami-shutdown",
        "--audience",
        "audience.csv",
    ];
    env.sunset_async(&send).await.expect_code(0);
    let enqueue = common::campaign_args(
        "enqueue",
        &waiting,
        &["--channels", "email", "--deadline", "2099-01-01T00:00:00Z"],
    );
    env.sunset_async(&enqueue).await.expect_code(0);
    env.sunset_async(&["campaign", "pause", "--campaign", &waiting])
        .await
        .expect_code(0);

    // Act
    let list = list_json(&env).await;
    let table = env
        .sunset_async(&["campaign", "list"])
        .await
        .expect_code(0)
        .stdout();

    // Assert
    let done = listed(&list, &sent);
    assert_eq!(done["template"], "xiami-shutdown", "{done}");
    assert_eq!(done["state"], "running", "{done}");
    assert_eq!(done["recipients"], 8, "{done}");
    assert_eq!(done["channels"]["email"]["delivered"], 8, "{done}");
    assert_eq!(
        done["channels"]["push"]["delivered_percent"], 100.0,
        "{done}"
    );
    assert_eq!(done["delivered_percent"], 100.0, "{done}");
    assert_eq!(done["deadline"], Value::Null, "{done}");
    let paused = listed(&list, &waiting);
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["channels"]["email"]["total"], 8, "{paused}");
    assert_eq!(
        paused["channels"]["email"]["delivered_percent"], 0.0,
        "{paused}"
    );
    assert_eq!(paused["channels"]["push"], Value::Null, "{paused}");
    assert_eq!(paused["deadline"], "2099-01-01T00:00:00+00:00", "{paused}");
    let sent_at = list
        .as_array()
        .and_then(|all| all.iter().position(|c| c["campaign"] == sent.as_str()));
    let waiting_at = list
        .as_array()
        .and_then(|all| all.iter().position(|c| c["campaign"] == waiting.as_str()));
    assert!(sent_at < waiting_at, "oldest first: {list}");

    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line(&sent)[1..7],
        [
            "xiami-shutdown",
            "running",
            "8",
            "100.0%",
            "100.0%",
            "100.0%"
        ],
        "{table}"
    );
    assert_eq!(
        line(&waiting)[1..8],
        [
            "xiami-shutdown",
            "paused",
            "8",
            "0.0%",
            "-",
            "0.0%",
            "2099-01-01T00:00:00+00:00"
        ],
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_are_listed_with_their_state_and_delivered_share_on_sqlite() {
    campaigns_are_listed_with_their_state_and_delivered_share(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_are_listed_with_their_state_and_delivered_share_on_postgres() {
    campaigns_are_listed_with_their_state_and_delivered_share(Db::Postgres).await;
}

#[test]
fn an_empty_ledger_lists_no_campaigns_and_no_ledger_is_exit_2() {
    let env = TestEnv::new();
    let run = env.sunset(&["campaign", "list"]).expect_code(0);
    assert_eq!(run.stdout(), "no campaigns in the ledger\n");
    let run = env.sunset(&["campaign", "list", "--json"]).expect_code(0);
    assert_eq!(run.stdout().trim(), "[]");

    env.write_config("[templates]\ndir = \"templates\"\n[ledger]\nurl = \"\"\n");
    let run = env.sunset(&["campaign", "list"]).expect_code(2);
    assert!(
        run.stderr().contains("ledger.url is empty"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_campaign_is_named_once_by_one_of_its_spellings() {
    let env = TestEnv::new();
    let unknown = unique("nobody");
    for spelling in [
        vec!["campaign", "resume", "--campaign", &unknown],
        vec!["campaign", "resume", "--campaign-id", &unknown],
        vec!["campaign", "resume", &unknown],
        vec!["status", "--campaign-id", &unknown],
    ] {
        let run = env.sunset(&spelling).expect_code(2);
        assert!(
            run.stderr().contains("not in the ledger"),
            "{spelling:?}: {}",
            run.stderr()
        );
    }
    let run = env
        .sunset(&["campaign", "resume", "--campaign", "a", "b"])
        .expect_code(2);
    assert!(
        run.stderr().contains("cannot be used with"),
        "{}",
        run.stderr()
    );
    let run = env.sunset(&["campaign", "resume"]).expect_code(2);
    assert!(run.stderr().contains("--campaign <ID>"), "{}", run.stderr());
}
