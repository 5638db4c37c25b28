//! `sunset campaign list`: every campaign the ledger knows, one line (or one JSON object) each.

use std::fmt;

use serde_json::{Value, json};

use crate::channel::Channel;
use crate::ledger::{Counts, Status};

/// The campaigns of a ledger, oldest first, as `campaign list` shows them.
pub struct CampaignList(pub Vec<Status>);

/// `delivered` as a share of `total`, in percent; none for a channel with nothing planned.
fn delivered_percent(counts: &Counts) -> Option<f64> {
    (counts.total > 0).then(|| counts.delivered as f64 * 100.0 / counts.total as f64)
}

/// A percentage to one decimal, rounded down so that only a campaign delivered in full shows
/// 100.0%; or `-`.
fn shown(percent: Option<f64>) -> String {
    percent.map_or_else(
        || "-".into(),
        |p| format!("{:.1}%", (p * 10.0).floor() / 10.0),
    )
}

impl CampaignList {
    /// The stable JSON form (`campaign list --json`): an array, one object per campaign, its
    /// fields named and written as `status --json` writes them.
    pub fn json(&self) -> Value {
        let campaigns: Vec<Value> = self
            .0
            .iter()
            .map(|status| {
                let full = status.json();
                let channels: serde_json::Map<String, Value> = status
                    .channels()
                    .iter()
                    .map(|(channel, counts)| {
                        let shares = json!({
                            "total": counts.total,
                            "delivered": counts.delivered,
                            "delivered_percent": delivered_percent(counts),
                        });
                        (channel.to_string(), shares)
                    })
                    .collect();
                json!({
                    "campaign": full["campaign"],
                    "template": full["template"],
                    "state": full["state"],
                    "recipients": full["recipients"],
                    "channels": channels,
                    "delivered_percent": delivered_percent(&status.total()),
                    "deadline": full["deadline"],
                })
            })
            .collect();
        Value::Array(campaigns)
    }
}

impl fmt::Display for CampaignList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no campaigns in the ledger");
        }
        writeln!(
            f,
            "{:<24} {:<20} {:<9} {:>10} {:>7} {:>7} {:>7}  deadline",
            "campaign", "template", "state", "recipients", "email", "push", "all"
        )?;
        for status in &self.0 {
            let (template, state, recipients) = match &status.recorded {
                Some((template, state, recipients)) => {
                    (template.as_str(), state.as_str(), recipients.to_string())
                }
                None => ("-", "-", "-".into()),
            };
            let channels = status.channels();
            let share =
                |channel: Channel| shown(channels.get(&channel).and_then(delivered_percent));
            writeln!(
                f,
                "{:<24} {:<20} {:<9} {:>10} {:>7} {:>7} {:>7}  {}",
                status.campaign.as_str(),
                template,
                state,
                recipients,
                share(Channel::Email),
                share(Channel::Push),
                shown(delivered_percent(&status.total())),
                status
                    .deadline
                    .map_or_else(|| "-".into(), |d| d.to_rfc3339()),
            )?;
        }
        Ok(())
    }
}
