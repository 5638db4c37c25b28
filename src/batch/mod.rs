//! The wire format: a `Batch` of recipients as published on the work queue, and its parsed fields.

mod decode;
mod field_error;
mod ids;
mod recipient;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::names::{Channel, TemplateName, Vars};
pub use decode::{DecodeError, bounded, json_error};
pub use field_error::FieldError;
pub use ids::{CampaignId, EMAIL_MAX, EmailAddress, UserId};
pub use recipient::{NAME_MAX, RECIPIENT_VARS_MAX, Recipient};

/// The only wire-format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Most recipients in one batch. A batch is sent within one delivery of the work queue, which
/// RabbitMQ takes back after `consumer_timeout` (30 min by default): 10,000 emails to one
/// domain at 50/s take 200 s; 100,000 would take 33 min and be redelivered forever.
pub const MAX_RECIPIENTS: usize = 10_000;

/// Largest campaign `vars`, in bytes of JSON: a batch carries them, and every notice may
/// render them (a few URLs and dates in practice).
pub const CAMPAIGN_VARS_MAX: usize = 64 * 1024;

/// Checks the campaign `vars` against [`CAMPAIGN_VARS_MAX`].
pub fn check_campaign_vars(vars: &Vars) -> Result<(), FieldError> {
    let bytes = serde_json::to_string(vars).map_or(usize::MAX, |json| json.len());
    if bytes > CAMPAIGN_VARS_MAX {
        return Err(FieldError::TooLong {
            field: "campaign vars",
            bytes,
            max: CAMPAIGN_VARS_MAX,
        });
    }
    Ok(())
}

/// Why one recipient was not reached on one channel (dead letters only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Who.
    pub user_id: UserId,
    /// By which channel.
    pub channel: Channel,
    /// The last error, short.
    pub error: String,
}

/// A message on the work queue: one campaign's notice for up to `--batch-size` recipients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Wire-format version, [`VERSION`].
    pub version: u32,
    /// The campaign the batch belongs to.
    pub campaign_id: CampaignId,
    /// `<campaign_id>:<6-digit sequence>`, deterministic for an audience file.
    #[serde(default)]
    pub batch_id: String,
    /// The notice's template.
    pub template: TemplateName,
    /// Channels to send by.
    #[serde(default = "all_channels")]
    pub channels: Vec<Channel>,
    /// After this instant nothing more is sent for the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Campaign variables.
    #[serde(default)]
    pub vars: Vars,
    /// Who to tell; in a dead letter, only the failed ones.
    pub recipients: Vec<Recipient>,
    /// Dead letters only: why each recipient × channel failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

fn all_channels() -> Vec<Channel> {
    Channel::ALL.to_vec()
}

impl Batch {
    /// The batch as a dead letter of `failures`: only the recipients they name, each failure
    /// with them.
    pub fn failed(&self, failures: Vec<Failure>) -> Batch {
        let recipients = self
            .recipients
            .iter()
            .filter(|r| failures.iter().any(|f| f.user_id == r.user_id))
            .cloned()
            .collect();
        Batch {
            recipients,
            failures,
            ..self.clone()
        }
    }

    /// The recipient × channel pairs of `failures` as new batches, one per set of channels a
    /// recipient still needs (so a channel that worked is never sent again), without `failures`.
    pub fn regroup(&self, failures: &[Failure]) -> Vec<Batch> {
        let mut groups: Vec<(Vec<Channel>, Vec<Recipient>)> = Vec::new();
        for recipient in &self.recipients {
            let channels: Vec<Channel> = Channel::ALL
                .into_iter()
                .filter(|c| {
                    failures
                        .iter()
                        .any(|f| f.channel == *c && f.user_id == recipient.user_id)
                })
                .collect();
            if channels.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(set, _)| *set == channels) {
                Some((_, recipients)) => recipients.push(recipient.clone()),
                None => groups.push((channels, vec![recipient.clone()])),
            }
        }
        groups
            .into_iter()
            .map(|(channels, recipients)| Batch {
                channels,
                recipients,
                failures: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regroup_keeps_only_the_failed_channels_of_each_recipient() {
        let recipient = |id: &str| Recipient {
            user_id: UserId::parse(id).expect("id"),
            email: None,
            locale: None,
            name: None,
            vars: Vars::new(),
        };
        let failure = |id: &str, channel| Failure {
            user_id: UserId::parse(id).expect("id"),
            channel,
            error: "x".into(),
        };
        let batch = Batch {
            version: VERSION,
            campaign_id: CampaignId::parse("c").expect("id"),
            batch_id: "c:000001".into(),
            template: TemplateName::parse("t").expect("name"),
            channels: Channel::ALL.to_vec(),
            deadline: None,
            vars: Vars::new(),
            recipients: vec![
                recipient("a"),
                recipient("b"),
                recipient("c"),
                recipient("d"),
            ],
            failures: Vec::new(),
        };
        let groups = batch.regroup(&[
            failure("a", Channel::Push),
            failure("b", Channel::Email),
            failure("b", Channel::Push),
            failure("d", Channel::Push),
        ]);
        let shape: Vec<(Vec<Channel>, Vec<&str>)> = groups
            .iter()
            .map(|b| {
                (
                    b.channels.clone(),
                    b.recipients.iter().map(|r| r.user_id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (vec![Channel::Push], vec!["a", "d"]),
                (vec![Channel::Email, Channel::Push], vec!["b"])
            ]
        );
        assert!(
            groups
                .iter()
                .all(|b| b.failures.is_empty() && b.batch_id == "c:000001")
        );
    }
}
