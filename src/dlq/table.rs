//! How `sunset dlq list` shows dead letters: a table that lines up and ends with a count, or one
//! JSON object a line; and the counted words the commands print.

use super::letter::{Content, DeadLetter};
use crate::batch::CampaignId;

/// Reasons longer than this are cut in the table (`--json` has them whole).
const REASON_WIDTH: usize = 60;
/// Bytes of an undecodable body shown by `--json`.
const BODY_PREVIEW: usize = 200;

impl DeadLetter {
    /// One line of `--json`: the table's fields plus user ids and failures.
    pub fn to_json(&self, now: u64) -> serde_json::Value {
        let batch = self.batch();
        let mut value = serde_json::json!({
            "kind": self.kind(),
            "campaign": self.campaign().map(CampaignId::as_str),
            "batch": batch.map(|b| b.batch_id.as_str()),
            "recipients": batch.map_or(0, |b| b.recipients.len()),
            "channels": self.channels().iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "reason": self.reason,
            "attempts": self.attempts,
            "age_secs": self.age_secs(now),
            "user_ids": batch.map_or_else(Vec::new, |b| {
                b.recipients.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>()
            }),
            "failures": batch.map_or_else(Vec::new, |b| {
                b.failures
                    .iter()
                    .enumerate()
                    .map(|(i, failure)| {
                        let mut value = serde_json::json!(failure);
                        if let Some(kind) = self.kinds.get(i) {
                            value["kind"] = kind.as_str().into();
                        }
                        value
                    })
                    .collect::<Vec<_>>()
            }),
        });
        if let Content::Undecodable(body) = &self.content {
            let preview = &body[..body.len().min(BODY_PREVIEW)];
            value["body"] = String::from_utf8_lossy(preview).into();
        }
        value
    }

    /// Its row of the table, in the columns' order.
    fn cells(&self, now: u64) -> [String; 7] {
        let dash = || "-".to_string();
        let batch = self.batch();
        let channels = self.channels();
        [
            self.campaign().map_or_else(dash, ToString::to_string),
            batch.map_or_else(dash, |b| b.batch_id.clone()),
            batch.map_or_else(dash, |b| b.recipients.len().to_string()),
            if channels.is_empty() {
                dash()
            } else {
                channels
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            cut(&self.reason, REASON_WIDTH),
            self.attempts.map_or_else(dash, |a| a.to_string()),
            self.age_secs(now).map_or_else(dash, age),
        ]
    }
}

/// `text` cut to `width` characters, the last one an ellipsis when it was longer.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(width - 1).collect();
        short.push('…');
        short
    }
}

/// `45s`, `12m`, `5h`, `3d`: coarse on purpose, it only has to tell old from new.
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `1 dead letter`, `2 dead letters`.
pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The table of `sunset dlq list`, ending with a count.
pub fn table(letters: &[&DeadLetter], now: u64) -> String {
    const HEADERS: [&str; 7] = [
        "campaign",
        "batch",
        "recipients",
        "channel",
        "reason",
        "attempts",
        "age",
    ];
    // Numbers are right-aligned.
    const RIGHT: [bool; 7] = [false, false, true, false, false, true, true];
    let rows: Vec<[String; 7]> = letters.iter().map(|l| l.cells(now)).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(RIGHT)
            .map(|((cell, width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(HEADERS);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    let recipients: usize = letters
        .iter()
        .filter_map(|l| l.batch())
        .map(|b| b.recipients.len())
        .sum();
    out.push_str(&format!(
        "{}, {}\n",
        plural(letters.len(), "dead letter", "dead letters"),
        plural(recipients, "recipient", "recipients")
    ));
    out
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;
    use crate::broker::{ATTEMPT_HEADER, ERROR_HEADER, KINDS_HEADER};
    use crate::channel::Channel;
    use crate::dlq::samples::{batch, kinds, long, properties};

    #[test]
    fn an_undecodable_body_is_shown_with_dashes() {
        let letter = DeadLetter::read(
            b"{not json",
            &properties(&[(ERROR_HEADER, long("invalid batch: key must be a string"))]),
        );
        let json = letter.to_json(0);
        assert_eq!(json["campaign"], serde_json::Value::Null);
        assert_eq!(json["body"], "{not json");
        let out = table(&[&letter], 0);
        let row = out.lines().nth(1).expect("a row");
        assert!(row.starts_with("-  "), "{out}");
        assert!(row.contains("invalid batch"), "{out}");
    }

    #[test]
    fn the_table_lines_up_and_counts() {
        let one = DeadLetter::read(
            &batch(&[("a", Channel::Push)]).encode(),
            &properties(&[(ERROR_HEADER, long("x".repeat(80).as_str()))]),
        );
        let out = table(&[&one, &one], 100);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0].find("reason"), lines[1].find("xxx"), "{out}");
        assert!(lines[1].contains(&format!("{}…", "x".repeat(REASON_WIDTH - 1))));
        assert_eq!(lines[3], "2 dead letters, 4 recipients");
    }

    #[test]
    fn each_failure_in_json_says_why_it_failed() {
        let letter = DeadLetter::read(
            &batch(&[("a", Channel::Email), ("b", Channel::Push)]).encode(),
            &properties(&[
                (ERROR_HEADER, long("2 sends failed")),
                (ATTEMPT_HEADER, AMQPValue::LongUInt(2)),
                (KINDS_HEADER, kinds(&["rejected", "unknown"])),
            ]),
        );
        let json = letter.to_json(0);
        assert_eq!(json["failures"][0]["kind"], "rejected");
        assert_eq!(json["failures"][1]["kind"], "unknown");
        assert_eq!(json["failures"][1]["channel"], "push");
    }

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(10_800), "3h");
        assert_eq!(age(864_000), "10d");
    }
}
