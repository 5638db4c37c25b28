//! What the ledger's rows hold: campaign states, marks, pairs, outcomes, claims — nouns that
//! know nothing of databases.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};

use super::LedgerError;
use crate::batch::{CampaignId, EmailAddress, UserId};
use crate::channel::Channel;

/// Whether a campaign's batches are sent, held back or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignState {
    /// Sending.
    Running,
    /// Batches go back to a delay queue until resumed.
    Paused,
    /// Batches are acked and their recipients recorded as cancelled; nothing more is sent.
    Cancelled,
}

impl CampaignState {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Cancelled => "cancelled",
        }
    }
}

impl FromStr for CampaignState {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<CampaignState, LedgerError> {
        match s {
            "running" => Ok(CampaignState::Running),
            "paused" => Ok(CampaignState::Paused),
            "cancelled" => Ok(CampaignState::Cancelled),
            other => Err(LedgerError::Corrupt(format!("campaign state `{other}`"))),
        }
    }
}

/// Where a recipient × channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mark {
    /// Claimed by a worker that is sending it now.
    Sending,
    /// Accepted by the relay or gateway.
    Delivered,
    /// Failed for now; a retry is scheduled.
    Failed,
    /// Dead-lettered: permanent failure, attempts exhausted or deadline.
    Dead,
    /// Handed over with no answer: it may or may not have arrived.
    Unknown,
    /// Not sent now (campaign paused, lease or ledger away); its batch comes back.
    Held,
    /// Not sent because the campaign was cancelled.
    Cancelled,
    /// Not sent because the address is on the suppression list; never retried.
    Suppressed,
}

impl Mark {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Sending => "sending",
            Mark::Delivered => "delivered",
            Mark::Failed => "failed",
            Mark::Dead => "dead",
            Mark::Unknown => "unknown",
            Mark::Held => "held",
            Mark::Cancelled => "cancelled",
            Mark::Suppressed => "suppressed",
        }
    }
}

impl FromStr for Mark {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Mark, LedgerError> {
        match s {
            "sending" => Ok(Mark::Sending),
            "delivered" => Ok(Mark::Delivered),
            "failed" => Ok(Mark::Failed),
            "dead" => Ok(Mark::Dead),
            "unknown" => Ok(Mark::Unknown),
            "held" => Ok(Mark::Held),
            "cancelled" => Ok(Mark::Cancelled),
            "suppressed" => Ok(Mark::Suppressed),
            other => Err(LedgerError::Corrupt(format!("delivery status `{other}`"))),
        }
    }
}

/// One recipient × channel of a batch, with the template locale it is (to be) sent in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The recipient.
    pub user_id: UserId,
    /// The channel.
    pub channel: Channel,
    /// The negotiated template locale (`-` when the notice could not be rendered).
    pub locale: String,
    /// The address an email pair goes to, kept on its row by the claim so that bounces and
    /// unsubscribes find it; `None` on push (and in outcomes, which do not change it).
    pub address: Option<EmailAddress>,
}

/// One outcome to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The campaign.
    pub campaign: CampaignId,
    /// Recipient, channel and locale.
    pub pair: Pair,
    /// The new status (never `Sending`).
    pub mark: Mark,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Entry {
    /// Attempts the outcome adds: a send was made, or not.
    pub(super) fn attempts(&self) -> i64 {
        match self.mark {
            Mark::Delivered | Mark::Failed | Mark::Dead | Mark::Unknown => 1,
            Mark::Sending | Mark::Held | Mark::Cancelled | Mark::Suppressed => 0,
        }
    }
}

/// An outcome with the claim it was made under: written only where the row still carries it.
#[derive(Debug, Clone)]
pub(super) struct Fenced {
    pub(super) entry: Entry,
    pub(super) owner: Arc<str>,
    pub(super) token: i64,
}

/// What a claim found: the pairs it did not get. Every other pair is now this worker's to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Delivered before: skip, count as delivered.
    pub delivered: HashSet<(UserId, Channel)>,
    /// Being sent by another live worker (or by another copy of the batch here): try later.
    pub held: HashSet<(UserId, Channel)>,
    /// Recorded as cancelled: skip.
    pub cancelled: HashSet<(UserId, Channel)>,
    /// Which claim this was; `Ledger::finished` when the batch is done with it.
    pub token: i64,
    /// The name the claim was made under.
    pub(super) owner: Arc<str>,
}

impl Claims {
    /// A claim of `token` under `owner` that got every pair (a fake ledger's answer).
    pub fn all(token: i64, owner: &str) -> Claims {
        Claims {
            token,
            owner: owner.into(),
            ..Claims::default()
        }
    }

    /// Whether every pair is this worker's to send.
    pub fn all_ours(&self) -> bool {
        self.delivered.is_empty() && self.held.is_empty() && self.cancelled.is_empty()
    }
}

/// Whether an outcome reached its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written.
    Written,
    /// The row no longer carries the claim (taken over while this worker stalled): the new
    /// holder records it.
    FencedOut,
}

/// A campaign as `enqueue` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Its id.
    pub id: CampaignId,
    /// The template it uses.
    pub template: String,
    /// Recipients enqueued.
    pub recipients: u64,
    /// Nothing is sent after it.
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Sends planned per channel and template locale.
    pub totals: HashMap<(Channel, String), u64>,
}

/// Counter changes a write makes, applied in the same transaction: per campaign, channel,
/// locale and status (`rows` counts the rows themselves), and deliveries per 10-second bucket.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) counts: HashMap<(String, String, String, String), i64>,
    pub(super) delivered: HashMap<(String, i64), i64>,
}

impl Tally {
    pub(super) fn add(
        &mut self,
        campaign: &str,
        channel: &str,
        locale: &str,
        status: &str,
        n: i64,
    ) {
        *self
            .counts
            .entry((
                campaign.into(),
                channel.into(),
                locale.into(),
                status.into(),
            ))
            .or_default() += n;
    }

    /// A claim took a row it found as `found`: the row leaves its status's count (a row taken
    /// from another worker was `sending`, which is not counted).
    pub(super) fn taken(&mut self, campaign: &str, channel: &str, locale: &str, found: Mark) {
        if found != Mark::Sending {
            self.add(campaign, channel, locale, found.as_str(), -1);
        }
    }

    /// A failed row that will not be retried is dead now.
    pub(super) fn given_up(&mut self, campaign: &str, channel: &str, locale: &str) {
        self.add(campaign, channel, locale, Mark::Failed.as_str(), -1);
        self.add(campaign, channel, locale, Mark::Dead.as_str(), 1);
    }

    pub(super) fn delivered(&mut self, campaign: &str, now_ms: i64) {
        *self
            .delivered
            .entry((campaign.into(), now_ms / RATE_BUCKET_MS))
            .or_default() += 1;
    }
}

/// Deliveries are counted per bucket of this many milliseconds for `status`'s rate.
pub(super) const RATE_BUCKET_MS: i64 = 10_000;
