//! `sunset status`: a campaign's numbers per channel and locale, its rate and an ETA.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde_json::{Value, json};

use super::{CampaignState, LedgerError, Mark};
use crate::batch::CampaignId;
use crate::channel::Channel;
use crate::suppression::{Reason, UnknownReason};

/// The window the rate is measured over.
pub(super) const RATE_WINDOW_MS: i64 = 60_000;

/// Sends of one channel and locale (or a sum of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Planned by `enqueue` (or, for pairs it did not plan, as many as were recorded).
    pub total: u64,
    /// Accepted by the relay or gateway.
    pub delivered: u64,
    /// Failed for now, a retry scheduled.
    pub failed: u64,
    /// Dead-lettered.
    pub dead: u64,
    /// Not sent: the campaign was cancelled.
    pub cancelled: u64,
    /// Handed over with no answer: may or may not have arrived; not retried unless asked.
    pub unknown: u64,
    /// Not sent for now (campaign paused, worker lease or ledger away); its batch comes back.
    pub held: u64,
    /// Not sent: the address is on the suppression list.
    pub suppressed: u64,
}

impl Counts {
    /// Not yet tried, or being sent now.
    pub fn pending(&self) -> u64 {
        self.total.saturating_sub(
            self.delivered
                + self.failed
                + self.dead
                + self.cancelled
                + self.unknown
                + self.held
                + self.suppressed,
        )
    }

    /// Sends delivered, dead, cancelled, unknown or suppressed: nothing left to try on their own.
    pub fn done(&self) -> u64 {
        self.delivered + self.dead + self.cancelled + self.unknown + self.suppressed
    }

    /// Every send delivered, dead, cancelled, unknown or suppressed.
    pub fn settled(&self) -> bool {
        self.done() >= self.total
    }

    fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
        self.unknown += other.unknown;
        self.held += other.held;
        self.suppressed += other.suppressed;
    }

    fn json(&self) -> Value {
        json!({
            "total": self.total,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "unknown": self.unknown,
            "held": self.held,
            "suppressed": self.suppressed,
            "pending": self.pending(),
        })
    }
}

/// What came back about a campaign's emails: first reports per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feedback {
    /// Permanent failures reported after acceptance.
    pub hard_bounces: u64,
    /// Temporary failures reported after acceptance.
    pub soft_bounces: u64,
    /// Spam complaints.
    pub complaints: u64,
    /// Unsubscribes.
    pub unsubscribes: u64,
}

/// `part` per `whole`, none when `whole` is 0.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// A rate as a percentage with two decimals, `-` when there is none.
fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}

/// A campaign as the ledger knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The campaign.
    pub campaign: CampaignId,
    /// Template, state and recipients, if the campaign is recorded.
    pub recorded: Option<(String, CampaignState, u64)>,
    /// Whether `enqueue` planned its totals (else it was first seen in a batch).
    pub planned: bool,
    /// Counts per channel and template locale.
    pub rows: BTreeMap<(Channel, String), Counts>,
    /// Deliveries in the last minute.
    pub last_minute: u64,
    /// `--deadline`, if the campaign has one.
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Why the ledger paused the campaign (its complaint rate), while it stays paused.
    pub paused_reason: Option<String>,
    /// Bounces, complaints and unsubscribes reported.
    pub feedback: Feedback,
}

impl Status {
    /// Counts per channel, all locales together.
    pub fn channels(&self) -> BTreeMap<Channel, Counts> {
        self.sum_by(|(channel, _)| *channel)
    }

    /// All channels and locales together.
    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        for counts in self.rows.values() {
            total.add(counts);
        }
        total
    }

    fn sum_by<K: Ord>(&self, key: impl Fn(&(Channel, String)) -> K) -> BTreeMap<K, Counts> {
        let mut sums: BTreeMap<K, Counts> = BTreeMap::new();
        for (k, counts) in &self.rows {
            sums.entry(key(k)).or_default().add(counts);
        }
        sums
    }

    /// Emails delivered, the base of the bounce and complaint rates.
    fn emails_delivered(&self) -> u64 {
        self.channels()
            .get(&Channel::Email)
            .map_or(0, |counts| counts.delivered)
    }

    /// Hard bounces per delivered email; none before the first delivery.
    pub fn bounce_rate(&self) -> Option<f64> {
        rate(self.feedback.hard_bounces, self.emails_delivered())
    }

    /// Complaints per delivered email; none before the first delivery.
    pub fn complaint_rate(&self) -> Option<f64> {
        rate(self.feedback.complaints, self.emails_delivered())
    }

    /// Deliveries per second over the last minute.
    pub fn rate(&self) -> f64 {
        self.last_minute as f64 / (RATE_WINDOW_MS as f64 / 1000.0)
    }

    /// Seconds until everything pending, held or failing is done at the current rate; none
    /// while the campaign is paused.
    pub fn eta_seconds(&self) -> Option<u64> {
        let total = self.total();
        let left = total.pending() + total.failed + total.held;
        let paused = matches!(self.recorded, Some((_, CampaignState::Paused, _)));
        if left == 0 {
            Some(0)
        } else if paused || self.last_minute == 0 {
            None
        } else {
            Some((left as f64 / self.rate()).ceil() as u64)
        }
    }

    /// The stable JSON form (`status --json`).
    pub fn json(&self) -> Value {
        let (template, state, recipients) = match &self.recorded {
            Some((template, state, recipients)) => {
                (json!(template), json!(state.as_str()), json!(recipients))
            }
            None => (Value::Null, Value::Null, Value::Null),
        };
        let channels: serde_json::Map<String, Value> = self
            .channels()
            .iter()
            .map(|(channel, counts)| (channel.to_string(), counts.json()))
            .collect();
        let locales: serde_json::Map<String, Value> = self
            .sum_by(|(_, locale)| locale.clone())
            .iter()
            .map(|(locale, counts)| (locale.clone(), counts.json()))
            .collect();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|((channel, locale), counts)| {
                let mut row = counts.json();
                row["channel"] = json!(channel.as_str());
                row["locale"] = json!(locale);
                row
            })
            .collect();
        json!({
            "campaign": self.campaign.as_str(),
            "template": template,
            "state": state,
            "recipients": recipients,
            "total": self.total().json(),
            "channels": channels,
            "locales": locales,
            "rows": rows,
            "rate_per_second": (self.rate() * 10.0).round() / 10.0,
            "eta_seconds": self.eta_seconds(),
            "deadline": self.deadline.map(|d| d.to_rfc3339()),
            "paused_reason": self.paused_reason,
            "feedback": {
                "hard_bounces": self.feedback.hard_bounces,
                "soft_bounces": self.feedback.soft_bounces,
                "complaints": self.feedback.complaints,
                "unsubscribes": self.feedback.unsubscribes,
                "suppressed": self.total().suppressed,
                "bounce_rate": self.bounce_rate(),
                "complaint_rate": self.complaint_rate(),
            },
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.recorded {
            Some((template, state, recipients)) if self.planned => writeln!(
                f,
                "campaign {} ({template}): {}, {recipients} recipients",
                self.campaign,
                state.as_str()
            )?,
            Some((template, state, _)) => writeln!(
                f,
                "campaign {} ({template}): {}, first seen in a batch (totals are what was claimed)",
                self.campaign,
                state.as_str()
            )?,
            None => writeln!(
                f,
                "campaign {} (not recorded by enqueue: totals are what was sent)",
                self.campaign
            )?,
        }
        writeln!(
            f,
            "{:<8} {:<8} {:>9} {:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>10} {:>8}",
            "channel",
            "locale",
            "total",
            "delivered",
            "failed",
            "dead",
            "unknown",
            "held",
            "cancelled",
            "suppressed",
            "pending"
        )?;
        let line = |f: &mut fmt::Formatter<'_>, channel: &str, locale: &str, c: &Counts| {
            writeln!(
                f,
                "{channel:<8} {locale:<8} {:>9} {:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>10} {:>8}",
                c.total,
                c.delivered,
                c.failed,
                c.dead,
                c.unknown,
                c.held,
                c.cancelled,
                c.suppressed,
                c.pending()
            )
        };
        for ((channel, locale), counts) in &self.rows {
            line(f, channel.as_str(), locale, counts)?;
        }
        line(f, "all", "", &self.total())?;
        writeln!(
            f,
            "feedback: {} hard bounces ({} of delivered emails), {} complaints ({}), {} soft bounces, {} unsubscribes",
            self.feedback.hard_bounces,
            percent(self.bounce_rate()),
            self.feedback.complaints,
            percent(self.complaint_rate()),
            self.feedback.soft_bounces,
            self.feedback.unsubscribes
        )?;
        if let Some(reason) = &self.paused_reason {
            writeln!(
                f,
                "paused by the ledger: {reason}; `sunset campaign resume {}` resumes it",
                self.campaign
            )?;
        }
        let paused = matches!(self.recorded, Some((_, CampaignState::Paused, _)));
        let eta = match self.eta_seconds() {
            _ if paused => "paused, no ETA".to_string(),
            Some(0) => "done".to_string(),
            Some(secs) => format!("ETA {}m {:02}s", secs / 60, secs % 60),
            None => "no deliveries in the last minute, no ETA".to_string(),
        };
        write!(
            f,
            "rate: {:.1} deliveries/s over the last minute; {eta}",
            self.rate()
        )?;
        match (self.deadline, self.eta_seconds()) {
            (None, _) | (Some(_), Some(0)) => writeln!(f),
            (Some(deadline), eta) => {
                let now = chrono::Utc::now();
                let late = now >= deadline
                    || eta.is_some_and(|secs| {
                        now + chrono::Duration::seconds(secs as i64) > deadline
                    });
                let flag = if late { " (the ETA passes it)" } else { "" };
                writeln!(f, "; deadline {}{flag}", deadline.to_rfc3339())
            }
        }
    }
}

/// A campaign's row: template, state, recipients, deadline and the ledger's pause reason.
pub(super) type CampaignRow = (String, String, i64, Option<String>, Option<String>);

/// What the database holds for one campaign's `status`: its row (template, state, recipients —
/// `-1` for a campaign first seen in a batch — and RFC 3339 deadline), planned totals and counters per channel, locale
/// and status, deliveries over the last minute, and first reports per reason.
pub(super) struct Snapshot {
    pub(super) recorded: Option<CampaignRow>,
    pub(super) totals: Vec<(String, String, i64)>,
    pub(super) counts: Vec<(String, String, String, i64)>,
    pub(super) last_minute: i64,
    pub(super) feedback: Vec<(String, i64)>,
}

fn key(channel: &str, locale: String) -> Result<(Channel, String), LedgerError> {
    let channel = channel
        .parse()
        .map_err(|e| LedgerError::Corrupt(format!("{e}")))?;
    Ok((channel, locale))
}

/// A campaign's status from its snapshot; an unknown campaign with no rows is an error.
pub(super) fn build(campaign: &CampaignId, snapshot: Snapshot) -> Result<Status, LedgerError> {
    let mut planned = true;
    let mut deadline = None;
    let mut paused_reason = None;
    let recorded = snapshot
        .recorded
        .map(
            |(template, state, recipients, until, why)| -> Result<_, LedgerError> {
                planned = recipients >= 0;
                paused_reason = why;
                deadline = until
                    .map(|d| DateTime::parse_from_rfc3339(&d))
                    .transpose()
                    .map_err(|e| LedgerError::Corrupt(format!("campaign deadline: {e}")))?;
                Ok((template, state.parse()?, recipients.max(0) as u64))
            },
        )
        .transpose()?;
    let mut rows: BTreeMap<(Channel, String), Counts> = BTreeMap::new();
    for (channel, locale, total) in snapshot.totals {
        rows.entry(key(&channel, locale)?).or_default().total = total.max(0) as u64;
    }
    let mut claimed: BTreeMap<(Channel, String), u64> = BTreeMap::new();
    for (channel, locale, status, n) in snapshot.counts {
        let key = key(&channel, locale)?;
        let n = n.max(0) as u64;
        if status == "rows" {
            *claimed.entry(key).or_default() += n;
            continue;
        }
        let counts = rows.entry(key).or_default();
        match status.parse()? {
            Mark::Delivered => counts.delivered += n,
            Mark::Failed => counts.failed += n,
            Mark::Dead => counts.dead += n,
            Mark::Cancelled => counts.cancelled += n,
            Mark::Unknown => counts.unknown += n,
            Mark::Held => counts.held += n,
            Mark::Suppressed => counts.suppressed += n,
            Mark::Sending => {}
        }
    }
    // Pairs `enqueue` did not plan (batches published by other means) count as they come.
    for (key, claimed) in claimed {
        let counts = rows.entry(key).or_default();
        counts.total = counts.total.max(claimed);
    }
    let mut feedback = Feedback::default();
    for (reason, n) in snapshot.feedback {
        let n = n.max(0) as u64;
        match reason
            .parse()
            .map_err(|e: UnknownReason| LedgerError::Corrupt(e.to_string()))?
        {
            Reason::HardBounce => feedback.hard_bounces += n,
            Reason::SoftBounce => feedback.soft_bounces += n,
            Reason::Complaint => feedback.complaints += n,
            Reason::Unsubscribe => feedback.unsubscribes += n,
            Reason::Manual => {}
        }
    }
    if recorded.is_none() && rows.is_empty() {
        return Err(LedgerError::UnknownCampaign(campaign.clone()));
    }
    let mut status = Status {
        campaign: campaign.clone(),
        recorded,
        planned,
        rows,
        last_minute: snapshot.last_minute.max(0) as u64,
        deadline,
        paused_reason,
        feedback,
    };
    if !status.planned
        && let Some((_, _, recipients)) = status.recorded.as_mut()
    {
        *recipients = status.rows.values().map(|c| c.total).max().unwrap_or(0);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(last_minute: u64) -> Status {
        let counts = |total, delivered, failed, dead| Counts {
            total,
            delivered,
            failed,
            dead,
            ..Counts::default()
        };
        Status {
            campaign: CampaignId::parse("c").expect("id"),
            recorded: Some(("xiami-shutdown".into(), CampaignState::Running, 100)),
            planned: true,
            rows: BTreeMap::from([
                ((Channel::Email, "ar".to_string()), counts(40, 30, 2, 1)),
                ((Channel::Push, "ar".to_string()), counts(50, 20, 0, 0)),
                ((Channel::Push, "en".to_string()), counts(50, 50, 0, 0)),
            ]),
            last_minute,
            deadline: None,
            paused_reason: None,
            feedback: Feedback::default(),
        }
    }

    #[test]
    fn pending_is_what_is_neither_done_nor_failing_and_the_eta_follows_the_last_minute() {
        let status = sample(600);
        let total = status.total();
        assert_eq!(
            (total.total, total.delivered, total.pending()),
            (140, 100, 37)
        );
        assert_eq!(status.rate(), 10.0);
        // 37 pending + 2 failing at 10/s.
        assert_eq!(status.eta_seconds(), Some(4));
        assert_eq!(sample(0).eta_seconds(), None);
    }

    #[test]
    fn json_has_totals_per_channel_and_per_locale() {
        let json = sample(60).json();
        assert_eq!(json["channels"]["push"]["delivered"], 70);
        assert_eq!(json["locales"]["ar"]["total"], 90);
        assert_eq!(json["locales"]["ar"]["pending"], 37);
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(3));
        assert_eq!(json["state"], "running");
        assert_eq!(json["eta_seconds"], 39);
    }

    #[test]
    fn the_table_flags_a_deadline_the_eta_passes() {
        let mut status = sample(60);
        status.deadline = Some((chrono::Utc::now() + chrono::Duration::seconds(10)).fixed_offset());
        let table = status.to_string();
        assert!(table.contains("ETA 0m 39s; deadline "), "{table}");
        assert!(table.ends_with("(the ETA passes it)\n"), "{table}");
        status.deadline = Some((chrono::Utc::now() + chrono::Duration::hours(1)).fixed_offset());
        assert!(!status.to_string().contains("passes"));
    }

    #[test]
    fn the_table_ends_with_totals_and_the_rate() {
        let table = sample(0).to_string();
        assert!(table.starts_with("campaign c (xiami-shutdown): running, 100 recipients"));
        assert!(table.contains("all"), "{table}");
        assert!(table.contains("no ETA"), "{table}");
    }
}
