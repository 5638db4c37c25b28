//! `sunset dlq list/replay/purge` with the built binary and real RabbitMQ: dead letters it does
//! not remove stay in the queue unchanged and in order; replays reach the work queue whole.

mod common;

use common::UNLIMITED_RATES;

use std::fmt::Write as _;

use common::TestEnv;
use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use sunset::Channel;
use sunset::batch::{Batch, CampaignId, EmailAddress, Failure, Recipient, UserId, VERSION};
use sunset::broker::{Route, attempt_headers, attempt_of};
use sunset::render::{TemplateName, Vars};

/// Config for SMTP and HTTP push into the sinks, no rate limits.
fn sinks_config(smtp: &SmtpSink, push: &PushSink) -> String {
    format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"{}\"\n{UNLIMITED_RATES}",
        smtp.url(),
        push.url()
    )
}

/// An audience CSV of `n` users `u-0001`… at `u<i>@example.com`.
fn audience(n: usize) -> String {
    let mut csv = String::from("user_id,email,locale,name\n");
    for i in 1..=n {
        let _ = writeln!(csv, "u-{i:04},u{i}@example.com,en-US,User {i}");
    }
    csv
}

/// A dead letter as the worker writes it: batch `<campaign>:<seq>` holding the users of
/// `failed`, with those recipient × channel failures.
fn dead_letter(campaign: &str, seq: usize, failed: &[(&str, Channel)]) -> Batch {
    let mut recipients: Vec<Recipient> = Vec::new();
    for (user, _) in failed {
        if recipients.iter().all(|r| r.user_id.as_str() != *user) {
            recipients.push(Recipient {
                user_id: UserId::parse(user).expect("user id"),
                email: Some(EmailAddress::parse(&format!("{user}@example.com")).expect("email")),
                locale: Some("en".into()),
                name: None,
                vars: Vars::new(),
            });
        }
    }
    Batch {
        version: VERSION,
        campaign_id: CampaignId::parse(campaign).expect("campaign id"),
        batch_id: format!("{campaign}:{seq:06}"),
        template: TemplateName::parse("xiami-shutdown").expect("template"),
        channels: Channel::ALL.to_vec(),
        deadline: None,
        vars: Vars::new(),
        recipients,
        failures: failed
            .iter()
            .map(|(user, channel)| Failure {
                user_id: UserId::parse(user).expect("user id"),
                channel: *channel,
                error: "550 5.1.1 Mailbox unavailable".into(),
            })
            .collect(),
    }
}

/// Publishes `count` dead letters: every third of campaign `beta`, the rest `alpha`, each with
/// one failed email; returns them in queue order.
async fn publish_mixed(env: &TestEnv, count: usize) -> Vec<Batch> {
    let broker = env.broker().await;
    let mut letters = Vec::new();
    for i in 1..=count {
        let campaign = if i % 3 == 0 { "beta" } else { "alpha" };
        let letter = dead_letter(campaign, i, &[(&format!("u-{i}"), Channel::Email)]);
        broker
            .dead_letter(&letter, 2, "550 5.1.1 Mailbox unavailable", &["rejected"])
            .await
            .expect("dead letter published");
        letters.push(letter);
    }
    broker.close().await;
    letters
}

/// Ready messages in the dead-letter queue.
async fn dlq_len(env: &TestEnv) -> u32 {
    queue_len(env, &env.names().dlq).await
}

async fn queue_len(env: &TestEnv, queue: &str) -> u32 {
    let broker = env.broker().await;
    let count = broker.ready_count(queue).await.expect("queue length");
    broker.close().await;
    count
}

/// The batch ids of the dead letters now in the queue, in order (taking them off); `-` for a
/// body that is not a batch.
async fn drain_batch_ids(env: &TestEnv) -> Vec<String> {
    env.dead_letters()
        .await
        .iter()
        .map(|(body, _)| Batch::decode(body).map_or_else(|_| "-".to_string(), |b| b.batch_id))
        .collect()
}

/// The batch column of `dlq list`'s table (between the header and the count).
fn listed_batch_ids(table: &str) -> Vec<String> {
    let lines: Vec<&str> = table.lines().collect();
    lines[1..lines.len() - 1]
        .iter()
        .map(|line| {
            line.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The output without its last column (age, which may tick between two runs).
fn without_age(out: &str) -> String {
    out.lines()
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(head, _)| head.trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ids(letters: &[Batch]) -> Vec<String> {
    letters.iter().map(|b| b.batch_id.clone()).collect()
}

/// Publishes `batch` to the work queue and requeues it until RabbitMQ's delivery limit moves it
/// to the dead-letter queue, as it would for a batch that crashes every worker.
async fn poison(env: &TestEnv, batch: &Batch) {
    let broker = env.broker().await;
    broker
        .publish(Route::Work, &batch.encode(), attempt_headers(4))
        .await
        .expect("published");
    let channel = broker.open_channel().await.expect("channel");
    let work = env.names().work;
    let mut deliveries = 0;
    while let Some(message) = channel
        .basic_get(work.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        deliveries += 1;
        assert!(deliveries <= 20, "the delivery limit never applied");
        channel
            .basic_nack(
                message.delivery.delivery_tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .expect("nack");
    }
    let _ = channel.close(200, "done".into()).await;
    for _ in 0..200 {
        if broker.ready_count(&env.names().dlq).await.expect("count") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_twice_shows_the_same_dead_letters_in_the_same_order_and_takes_none() {
    let env = TestEnv::with_broker("");
    // More than 32: the size at which requeued quorum-queue messages would come back reordered.
    let letters = publish_mixed(&env, 40).await;
    let broker = env.broker().await;
    broker
        .dead_letter_raw(b"{not json", "invalid batch: key must be a string")
        .await
        .expect("published");
    broker.close().await;
    let before = dlq_len(&env).await;

    let first = env.sunset_async(&["dlq", "list"]).await.expect_code(0);
    let second = env.sunset_async(&["dlq", "list"]).await.expect_code(0);
    let first_json = env
        .sunset_async(&["dlq", "list", "--json"])
        .await
        .expect_code(0);
    let second_json = env
        .sunset_async(&["dlq", "list", "--json"])
        .await
        .expect_code(0);

    assert_eq!(without_age(&first.stdout()), without_age(&second.stdout()));
    let mut expected = ids(&letters);
    expected.push("-".into());
    assert_eq!(listed_batch_ids(&first.stdout()), expected);
    assert!(
        first.stdout().ends_with("41 dead letters, 40 recipients\n"),
        "{}",
        first.stdout()
    );
    let strip_age = |out: String| -> Vec<serde_json::Value> {
        out.lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).expect("JSON");
                value["age_secs"] = serde_json::Value::Null;
                value
            })
            .collect()
    };
    assert_eq!(
        strip_age(first_json.stdout()),
        strip_age(second_json.stdout())
    );
    assert_eq!(dlq_len(&env).await, before, "list took dead letters");
    assert_eq!(
        drain_batch_ids(&env).await,
        expected,
        "the queue itself is still in its original order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_by_campaign_and_json_gives_every_field_per_dead_letter() {
    let env = TestEnv::with_broker("");
    let broker = env.broker().await;
    let alpha = dead_letter(
        "alpha",
        1,
        &[("u-1", Channel::Email), ("u-2", Channel::Push)],
    );
    let beta = dead_letter("beta", 1, &[("u-9", Channel::Email)]);
    broker
        .dead_letter(&alpha, 3, "2 failed", &["rejected", "rejected"])
        .await
        .expect("published");
    broker
        .dead_letter_raw(b"\x00\x01", "invalid batch: expected value")
        .await
        .expect("published");
    broker
        .dead_letter(&beta, 1, "550 5.1.1 Mailbox unavailable", &["rejected"])
        .await
        .expect("published");
    broker.close().await;

    let table = env
        .sunset_async(&["dlq", "list", "--campaign", "alpha"])
        .await
        .expect_code(0)
        .stdout();
    assert_eq!(listed_batch_ids(&table), ["alpha:000001"], "{table}");
    let header = table.lines().next().expect("header");
    for column in [
        "campaign",
        "batch",
        "recipients",
        "channel",
        "reason",
        "attempts",
        "age",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().nth(1).expect("row");
    assert!(
        row.contains("email,push") && row.contains("2 failed"),
        "{row}"
    );

    let json = env
        .sunset_async(&["dlq", "list", "--json"])
        .await
        .expect_code(0)
        .stdout();
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(lines.len(), 3, "{json}");
    assert_eq!(lines[0]["campaign"], "alpha");
    assert_eq!(lines[0]["batch"], "alpha:000001");
    assert_eq!(lines[0]["recipients"], 2);
    assert_eq!(lines[0]["channels"], serde_json::json!(["email", "push"]));
    assert_eq!(lines[0]["reason"], "2 failed");
    assert_eq!(lines[0]["attempts"], 3);
    assert_eq!(lines[0]["user_ids"], serde_json::json!(["u-1", "u-2"]));
    assert_eq!(lines[0]["failures"][1]["channel"], "push");
    assert_eq!(lines[1]["kind"], "undecodable");
    assert_eq!(lines[1]["campaign"], serde_json::Value::Null);
    assert_eq!(lines[1]["reason"], "invalid batch: expected value");
    assert_eq!(lines[2]["campaign"], "beta");

    let only_beta = env
        .sunset_async(&["dlq", "list", "--json", "--campaign", "beta"])
        .await
        .expect_code(0)
        .stdout();
    assert_eq!(only_beta.lines().count(), 1, "{only_beta}");
    let none = env
        .sunset_async(&["dlq", "list", "--campaign", "gamma"])
        .await
        .expect_code(0)
        .stdout();
    assert_eq!(none, "no dead letters of campaign gamma\n");
    env.sunset_async(&["dlq", "list", "--campaign", "not valid"])
        .await
        .expect_code(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_dead_letter_queue_says_so() {
    let env = TestEnv::with_broker("");
    let out = env.sunset_async(&["dlq", "list"]).await.expect_code(0);
    assert_eq!(out.stdout(), "no dead letters\n");
    let replay = env.sunset_async(&["dlq", "replay"]).await.expect_code(0);
    assert_eq!(replay.stdout(), "no dead letters to replay\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_rabbitmq_dead_lettered_after_too_many_deliveries_is_listed_and_replayed_whole() {
    let env = TestEnv::with_broker("");
    let mut batch = dead_letter(
        "poison",
        1,
        &[("u-1", Channel::Email), ("u-2", Channel::Email)],
    );
    batch.failures.clear();
    poison(&env, &batch).await;

    let table = env
        .sunset_async(&["dlq", "list"])
        .await
        .expect_code(0)
        .stdout();
    let row = table.lines().nth(1).expect("row");
    assert!(row.contains("poison:000001"), "{table}");
    assert!(row.contains("delivery limit"), "{table}");
    assert!(row.contains("email,push"), "{table}");
    assert!(
        !row.ends_with('-'),
        "the age comes from x-death's time: {row}"
    );

    let out = env
        .sunset_async(&["dlq", "replay"])
        .await
        .expect_code(0)
        .stdout();
    assert!(
        out.contains("replayed poison:000001 (poison): 2 recipients by email,push in 1 batch"),
        "{out}"
    );
    assert_eq!(dlq_len(&env).await, 0);
    let broker = env.broker().await;
    let channel = broker.open_channel().await.expect("channel");
    let message = channel
        .basic_get(
            env.names().work.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the batch is back on the work queue");
    assert_eq!(
        Batch::decode(&message.delivery.data).expect("a batch"),
        batch
    );
    assert_eq!(
        attempt_of(&message.delivery.properties),
        1,
        "attempts reset"
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_after_the_cause_is_fixed_sends_only_the_failed_email_once_and_empties_the_queue() {
    let smtp = SmtpSink::start();
    let push = PushSink::start().await;
    smtp.reject("u3@example.com", 550);
    smtp.reject("u7@example.com", 550);
    let env = TestEnv::with_broker(&sinks_config(&smtp, &push));
    env.write("audience.csv", &audience(20));
    env.sunset_async(&common::campaign_args(
        "enqueue",
        "bounce",
        &["--batch-size", "5"],
    ))
    .await
    .expect_code(0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);
    assert_eq!(smtp.messages().len(), 18);
    assert_eq!(push.requests().len(), 20);
    assert_eq!(dlq_len(&env).await, 2);

    smtp.accept("u3@example.com");
    smtp.accept("u7@example.com");
    let out = env
        .sunset_async(&["dlq", "replay"])
        .await
        .expect_code(0)
        .stdout();
    assert!(
        out.contains("replayed bounce:000001 (bounce): 1 recipient by email in 1 batch"),
        "{out}"
    );
    assert!(
        out.contains("replayed 2 dead letters (2 recipients in 2 batches)"),
        "{out}"
    );
    assert_eq!(dlq_len(&env).await, 0);
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    assert_eq!(smtp.messages_to("u3@example.com").len(), 1);
    assert_eq!(smtp.messages_to("u7@example.com").len(), 1);
    assert_eq!(smtp.messages().len(), 20, "nobody else was emailed again");
    assert_eq!(
        push.requests().len(),
        20,
        "push had worked: the replay sends email only"
    );
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_one_campaign_leaves_the_others_and_undecodable_ones_in_order() {
    let env = TestEnv::with_broker("");
    let letters = publish_mixed(&env, 40).await;
    let broker = env.broker().await;
    broker
        .dead_letter_raw(b"{not json", "invalid batch")
        .await
        .expect("published");
    broker.close().await;
    let alpha = letters
        .iter()
        .filter(|b| b.campaign_id.as_str() == "alpha")
        .count();

    let out = env
        .sunset_async(&["dlq", "replay", "--campaign", "alpha"])
        .await
        .expect_code(0)
        .stdout();
    assert!(
        out.contains(&format!("replayed {alpha} dead letters")),
        "{out}"
    );
    assert_eq!(
        queue_len(&env, &env.names().work).await as usize,
        alpha,
        "one batch per dead letter"
    );
    let mut expected: Vec<String> = letters
        .iter()
        .filter(|b| b.campaign_id.as_str() == "beta")
        .map(|b| b.batch_id.clone())
        .collect();
    expected.push("-".into());
    assert_eq!(drain_batch_ids(&env).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_at_most_limit_dead_letters_and_keeps_the_rest_in_order() {
    let env = TestEnv::with_broker("");
    let letters = publish_mixed(&env, 6).await; // alpha 1, 2, 4, 5; beta 3, 6

    let out = env
        .sunset_async(&["dlq", "replay", "--campaign", "alpha", "--limit", "2"])
        .await
        .expect_code(0)
        .stdout();
    assert!(out.contains("replayed alpha:000001"), "{out}");
    assert!(out.contains("replayed alpha:000002"), "{out}");
    assert!(!out.contains("alpha:000004"), "{out}");
    assert!(out.contains("replayed 2 dead letters"), "{out}");
    assert_eq!(queue_len(&env, &env.names().work).await, 2);
    let left: Vec<String> = ids(&letters)[2..].to_vec();
    assert_eq!(drain_batch_ids(&env).await, left);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_replay_says_what_would_move_and_moves_nothing() {
    let env = TestEnv::with_broker("");
    let letters = publish_mixed(&env, 3).await;

    let out = env
        .sunset_async(&["dlq", "replay", "--dry-run"])
        .await
        .expect_code(0)
        .stdout();
    assert!(
        out.contains("would replay alpha:000001 (alpha): 1 recipient by email in 1 batch"),
        "{out}"
    );
    assert!(
        out.contains("dry run: would replay 3 dead letters (3 recipients in 3 batches)"),
        "{out}"
    );
    assert!(out.contains("nothing moved"), "{out}");
    assert_eq!(queue_len(&env, &env.names().work).await, 0);
    assert_eq!(drain_batch_ids(&env).await, ids(&letters));
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_without_yes_exits_2_says_how_many_and_deletes_nothing() {
    let env = TestEnv::with_broker("");
    let letters = publish_mixed(&env, 6).await;

    let run = env
        .sunset_async(&["dlq", "purge", "--campaign", "alpha"])
        .await
        .expect_code(2);
    let err = run.stderr();
    assert!(err.contains("pass --yes"), "{err}");
    assert!(err.contains("4 dead letters of campaign alpha"), "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert_eq!(drain_batch_ids(&env).await, ids(&letters));
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_with_yes_deletes_only_that_campaign_and_says_how_many() {
    let env = TestEnv::with_broker("");
    // 100 of alpha: far more acks than a channel keeps in flight (32) before it stashes them,
    // and loses the stash if it closes first.
    let letters = publish_mixed(&env, 150).await;
    let broker = env.broker().await;
    broker
        .dead_letter_raw(b"{not json", "invalid batch")
        .await
        .expect("published");
    broker.close().await;

    let out = env
        .sunset_async(&["dlq", "purge", "--campaign", "alpha", "--yes"])
        .await
        .expect_code(0)
        .stdout();
    assert!(
        out.starts_with("purged 100 dead letters of campaign alpha (100 recipients); 51 left"),
        "{out}"
    );
    assert_eq!(queue_len(&env, &env.names().work).await, 0);
    let mut expected: Vec<String> = letters
        .iter()
        .filter(|b| b.campaign_id.as_str() == "beta")
        .map(|b| b.batch_id.clone())
        .collect();
    expected.push("-".into());
    assert_eq!(drain_batch_ids(&env).await, expected);
}

/// Takes every batch off the work queue; returns the user ids of each, in order.
async fn drain_work_users(env: &TestEnv) -> Vec<Vec<String>> {
    let broker = env.broker().await;
    let channel = broker.open_channel().await.expect("channel");
    let mut users = Vec::new();
    while let Some(message) = channel
        .basic_get(
            env.names().work.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let batch = Batch::decode(&message.delivery.data).expect("a batch");
        users.push(
            batch
                .recipients
                .iter()
                .map(|r| r.user_id.as_str().to_string())
                .collect(),
        );
    }
    broker.close().await;
    users
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_leaves_sends_of_unknown_outcome_unless_asked_and_says_how_many() {
    // Arrange: one rejected send, one unknown, and one dead letter holding one of each.
    let env = TestEnv::with_broker("");
    let broker = env.broker().await;
    let letters = [
        (
            dead_letter("alpha", 1, &[("u-1", Channel::Email)]),
            vec!["rejected"],
        ),
        (
            dead_letter("alpha", 2, &[("u-2", Channel::Email)]),
            vec!["unknown"],
        ),
        (
            dead_letter(
                "alpha",
                3,
                &[("u-3", Channel::Email), ("u-4", Channel::Email)],
            ),
            vec!["rejected", "unknown"],
        ),
    ];
    for (letter, kinds) in &letters {
        broker
            .dead_letter(letter, 2, "sends failed", kinds)
            .await
            .expect("dead letter published");
    }
    broker.close().await;

    // Act: a dry run, then a replay
    let dry = env
        .sunset_async(&["dlq", "replay", "--dry-run"])
        .await
        .expect_code(0)
        .stdout();
    let dry_queue = (
        dlq_len(&env).await,
        queue_len(&env, &env.names().work).await,
    );
    let out = env
        .sunset_async(&["dlq", "replay"])
        .await
        .expect_code(0)
        .stdout();

    // Assert: the dry run says what the replay does, and moves nothing
    let dlq = env.names().dlq;
    assert!(dry.contains("would replay alpha:000001 (alpha)"), "{dry}");
    assert!(!dry.contains("alpha:000002"), "{dry}");
    assert!(
        dry.contains(&format!(
            "would replay alpha:000003 (alpha): 1 recipient by email in 1 batch; 1 send of \
             unknown outcome would stay in {dlq}"
        )),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("2 sends of unknown outcome would stay in {dlq}")),
        "{dry}"
    );
    assert!(dry.contains("--include-unknown"), "{dry}");
    assert_eq!(dry_queue, (3, 0), "the dry run moved something");
    assert!(
        out.contains("replayed 2 dead letters (2 recipients in 2 batches)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("2 sends of unknown outcome left in {dlq}")),
        "{out}"
    );
    assert!(out.contains("may have arrived"), "{out}");
    assert_eq!(drain_work_users(&env).await, [["u-1"], ["u-3"]]);
    let listed = env
        .sunset_async(&["dlq", "list", "--json"])
        .await
        .expect_code(0)
        .stdout();
    let listed: Vec<serde_json::Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["batch"], "alpha:000002", "left in its place");
    assert_eq!(listed[1]["batch"], "alpha:000003");
    assert_eq!(listed[1]["user_ids"], serde_json::json!(["u-4"]));
    assert_eq!(listed[1]["failures"][0]["kind"], "unknown");
    assert_eq!(listed[1]["reason"], "sends failed");
    assert_eq!(listed[1]["attempts"], 2);

    // Act: asked to, the replay takes them too
    let included = env
        .sunset_async(&["dlq", "replay", "--include-unknown"])
        .await
        .expect_code(0)
        .stdout();

    // Assert
    assert!(
        included.contains("replayed 2 dead letters (2 recipients in 2 batches)"),
        "{included}"
    );
    assert!(!included.contains("unknown outcome"), "{included}");
    assert_eq!(dlq_len(&env).await, 0);
    assert_eq!(drain_work_users(&env).await, [["u-2"], ["u-4"]]);
}
