//! `sunset dlq list`: the dead letters as a table (or JSON lines); every one stays where it was.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::filter::Filter;
use super::letter::DeadLetter;
use super::table::table;
use crate::broker::{Broker, Hold, MAX_HELD};

/// The dead letters `filter` picks, as a table (or JSON lines, with `json`); every dead letter
/// is back in its place when it returns.
pub(super) async fn list(broker: &Broker, filter: &Filter, json: bool) -> anyhow::Result<String> {
    let hold = Hold::take(broker, &broker.names().dlq, DeadLetter::read)
        .await
        .context("Failed to read the dead-letter queue")?;
    let now = now();
    let shown: Vec<&DeadLetter> = hold
        .messages()
        .iter()
        .map(|(_, letter)| letter)
        .filter(|letter| filter.matches(letter))
        .collect();
    let out = if json {
        shown
            .iter()
            .map(|letter| format!("{}\n", letter.to_json(now)))
            .collect()
    } else if shown.is_empty() {
        format!("no dead letters{}\n", filter.describe())
    } else {
        let mut out = table(&shown, now);
        if hold.truncated() {
            out.push_str(&format!(
                "(only the first {MAX_HELD} dead letters in the queue were read)\n"
            ));
        }
        out
    };
    hold.release(broker).await;
    Ok(out)
}

/// Seconds since the Unix epoch, to tell each dead letter's age.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
