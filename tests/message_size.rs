//! `broker.max_message_bytes`: a delivery larger is dead-lettered before it is parsed, keeping a
//! bounded copy; smaller batches go out as usual.

mod common;

use std::fs;

use common::TestEnv;
use serde_json::{Value, json};
use sunset::broker::{KEPT_OF_OVERSIZED, Route, attempt_headers};

const LIMIT: usize = 100_000;

fn batch(env: &TestEnv, id: &str, recipients: usize) -> Vec<u8> {
    let recipients: Vec<Value> = (0..recipients)
        .map(|i| json!({"user_id": format!("{id}-{i}"), "locale": "en", "name": "Layla"}))
        .collect();
    json!({
        "version": 1,
        "campaign_id": "sized",
        "batch_id": format!("sized:{id}"),
        "template": "xiami-shutdown",
        "channels": ["push"],
        "vars": common::sample_vars(env),
        "recipients": recipients,
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_delivery_over_max_message_bytes_is_dead_lettered_unparsed_with_a_bounded_copy() {
    let env = TestEnv::with_broker(&format!(
        "max_message_bytes = {LIMIT}\n[ledger]\nurl = \"\"\n[rate]\npush_per_sec = 0\n"
    ));
    let valid_but_large = batch(&env, "large", 3_000);
    let garbage = vec![b'x'; 3 * LIMIT];
    let small = batch(&env, "small", 2);
    assert!(valid_but_large.len() > LIMIT && small.len() < LIMIT);
    let broker = env.broker().await;
    for body in [&valid_but_large, &garbage, &small] {
        broker
            .publish(Route::Work, body, attempt_headers(1))
            .await
            .expect("published");
    }
    broker.close().await;

    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 2, "the two large ones");
    for body in [&valid_but_large, &garbage] {
        let (letter, reason) = letters
            .iter()
            .find(|(letter, _)| body.starts_with(letter))
            .expect("dead-lettered");
        assert_eq!(letter.len(), KEPT_OF_OVERSIZED, "a bounded copy");
        let reason = reason.as_deref().expect("x-sunset-error");
        assert!(
            reason.contains(&format!(
                "message of {} bytes is over broker.max_message_bytes ({LIMIT})",
                body.len()
            )),
            "{reason}"
        );
    }
    // Nobody of the large batch was told; both of the small one were.
    let pushed = fs::read_to_string(env.path().join("outbox/push.jsonl")).expect("push outbox");
    assert_eq!(pushed.lines().count(), 2, "{pushed}");
    assert!(!pushed.contains("large-"), "{pushed}");
}
