//! `sunset status`: a campaign's numbers per channel and locale, its rate and an ETA.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

use super::{CampaignState, LedgerError, Mark};
use crate::batch::CampaignId;
use crate::channel::Channel;

/// The window the rate is measured over.
const RATE_WINDOW_MS: i64 = 60_000;

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
}

impl Counts {
    /// Neither delivered, failed, dead nor cancelled: not yet tried, or being sent now.
    pub fn pending(&self) -> u64 {
        self.total
            .saturating_sub(self.delivered + self.failed + self.dead + self.cancelled)
    }

    /// Every send delivered, dead or cancelled: nothing left to try.
    pub fn settled(&self) -> bool {
        self.delivered + self.dead + self.cancelled >= self.total
    }

    fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
    }

    fn json(&self) -> Value {
        json!({
            "total": self.total,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "pending": self.pending(),
        })
    }
}

/// A campaign as the ledger knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The campaign.
    pub campaign: CampaignId,
    /// Template, state and recipients, if `enqueue` recorded the campaign.
    pub recorded: Option<(String, CampaignState, u64)>,
    /// Counts per channel and template locale.
    pub rows: BTreeMap<(Channel, String), Counts>,
    /// Deliveries in the last minute.
    pub last_minute: u64,
}

impl Status {
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

    /// Deliveries per second over the last minute.
    pub fn rate(&self) -> f64 {
        self.last_minute as f64 / (RATE_WINDOW_MS as f64 / 1000.0)
    }

    /// Seconds until everything pending or failing is done at the current rate.
    pub fn eta_seconds(&self) -> Option<u64> {
        let total = self.total();
        let left = total.pending() + total.failed;
        if left == 0 {
            Some(0)
        } else if self.last_minute == 0 {
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
            .sum_by(|(channel, _)| *channel)
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
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.recorded {
            Some((template, state, recipients)) => writeln!(
                f,
                "campaign {} ({template}): {}, {recipients} recipients",
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
            "{:<8} {:<8} {:>9} {:>10} {:>7} {:>7} {:>9} {:>8}",
            "channel", "locale", "total", "delivered", "failed", "dead", "cancelled", "pending"
        )?;
        let line = |f: &mut fmt::Formatter<'_>, channel: &str, locale: &str, c: &Counts| {
            writeln!(
                f,
                "{channel:<8} {locale:<8} {:>9} {:>10} {:>7} {:>7} {:>9} {:>8}",
                c.total,
                c.delivered,
                c.failed,
                c.dead,
                c.cancelled,
                c.pending()
            )
        };
        for ((channel, locale), counts) in &self.rows {
            line(f, channel.as_str(), locale, counts)?;
        }
        line(f, "all", "", &self.total())?;
        let eta = match self.eta_seconds() {
            Some(0) => "done".to_string(),
            Some(secs) => format!("ETA {}m {:02}s", secs / 60, secs % 60),
            None => "no deliveries in the last minute, no ETA".to_string(),
        };
        writeln!(
            f,
            "rate: {:.1} deliveries/s over the last minute; {eta}",
            self.rate()
        )
    }
}

/// Reads a campaign's counts; an unknown campaign with no deliveries is an error.
pub(super) async fn read(
    pool: &AnyPool,
    campaign: &CampaignId,
    now_ms: i64,
) -> Result<Status, LedgerError> {
    let recorded = sqlx::query("SELECT template, state, recipients FROM campaigns WHERE id = $1")
        .bind(campaign.as_str())
        .fetch_optional(pool)
        .await?
        .map(|row| -> Result<_, LedgerError> {
            let state: String = row.try_get(1)?;
            let recipients: i64 = row.try_get(2)?;
            Ok((row.try_get(0)?, state.parse()?, recipients.max(0) as u64))
        })
        .transpose()?;
    let mut rows: BTreeMap<(Channel, String), Counts> = BTreeMap::new();
    let key = |channel: String, locale: String| -> Result<(Channel, String), LedgerError> {
        let channel = channel
            .parse()
            .map_err(|e| LedgerError::Corrupt(format!("{e}")))?;
        Ok((channel, locale))
    };
    let totals =
        sqlx::query("SELECT channel, locale, total FROM campaign_totals WHERE campaign_id = $1")
            .bind(campaign.as_str())
            .fetch_all(pool)
            .await?;
    for row in totals {
        let total: i64 = row.try_get(2)?;
        rows.entry(key(row.try_get(0)?, row.try_get(1)?)?)
            .or_default()
            .total = total.max(0) as u64;
    }
    let marks = sqlx::query(
        "SELECT channel, locale, status, COUNT(*) FROM deliveries
         WHERE campaign_id = $1 GROUP BY channel, locale, status",
    )
    .bind(campaign.as_str())
    .fetch_all(pool)
    .await?;
    let mut recorded_per_key: BTreeMap<(Channel, String), u64> = BTreeMap::new();
    for row in marks {
        let key = key(row.try_get(0)?, row.try_get(1)?)?;
        let mark: String = row.try_get(2)?;
        let count: i64 = row.try_get(3)?;
        let count = count.max(0) as u64;
        *recorded_per_key.entry(key.clone()).or_default() += count;
        let counts = rows.entry(key).or_default();
        match mark.parse()? {
            Mark::Delivered => counts.delivered += count,
            Mark::Failed => counts.failed += count,
            Mark::Dead => counts.dead += count,
            Mark::Cancelled => counts.cancelled += count,
            Mark::Sending => {}
        }
    }
    // Pairs `enqueue` did not plan (batches published by other means) count as they come.
    for (key, recorded) in recorded_per_key {
        let counts = rows.entry(key).or_default();
        counts.total = counts.total.max(recorded);
    }
    if recorded.is_none() && rows.is_empty() {
        return Err(LedgerError::UnknownCampaign(campaign.clone()));
    }
    let last_minute: i64 = sqlx::query(
        "SELECT COUNT(*) FROM deliveries
         WHERE campaign_id = $1 AND status = 'delivered' AND updated_at >= $2",
    )
    .bind(campaign.as_str())
    .bind(now_ms - RATE_WINDOW_MS)
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    Ok(Status {
        campaign: campaign.clone(),
        recorded,
        rows,
        last_minute: last_minute.max(0) as u64,
    })
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
            cancelled: 0,
        };
        Status {
            campaign: CampaignId::parse("c").expect("id"),
            recorded: Some(("xiami-shutdown".into(), CampaignState::Running, 100)),
            rows: BTreeMap::from([
                ((Channel::Email, "ar".to_string()), counts(40, 30, 2, 1)),
                ((Channel::Push, "ar".to_string()), counts(50, 20, 0, 0)),
                ((Channel::Push, "en".to_string()), counts(50, 50, 0, 0)),
            ]),
            last_minute,
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
    fn the_table_ends_with_totals_and_the_rate() {
        let table = sample(0).to_string();
        assert!(table.starts_with("campaign c (xiami-shutdown): running, 100 recipients"));
        assert!(table.contains("all"), "{table}");
        assert!(table.contains("no ETA"), "{table}");
    }
}
