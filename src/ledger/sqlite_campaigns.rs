//! Campaigns on the SQLite ledger: their record and totals, their state, and the snapshot
//! `status` is built from.

use rusqlite::{Connection, OptionalExtension, params};

use super::LedgerError;
use super::rows::{Campaign, CampaignState};
use super::sqlite::Store;
use super::status::Snapshot;
use crate::batch::CampaignId;

const RECORD_CAMPAIGN: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES (?1, ?2, ?3, ?4, 'running', ?5)
    ON CONFLICT (id) DO UPDATE SET template = excluded.template,
        recipients = excluded.recipients, deadline = excluded.deadline";
const FIRST_SIGHT: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES (?1, ?2, -1, NULL, 'running', ?3) ON CONFLICT (id) DO NOTHING";
const CLEAR_TOTALS: &str = "DELETE FROM campaign_totals WHERE campaign_id = ?1";
const TOTAL: &str =
    "INSERT INTO campaign_totals (campaign_id, channel, locale, total) VALUES (?1, ?2, ?3, ?4)";
const STATE: &str = "SELECT state FROM campaigns WHERE id = ?1";
const CAMPAIGN_IDS: &str = "SELECT id FROM campaigns ORDER BY created_at, id";
/// A change of state by hand clears the ledger's pause reason and sets aside the complaints
/// counted so far: only later ones can pause the campaign again.
const SET_STATE: &str = "UPDATE campaigns SET state = ?2, paused_reason = NULL,
        complaints_at_resume = COALESCE((SELECT n FROM campaign_feedback
                                         WHERE campaign_id = ?1 AND reason = 'complaint'), 0)
    WHERE id = ?1";
const CAMPAIGN: &str =
    "SELECT template, state, recipients, deadline, paused_reason FROM campaigns WHERE id = ?1";
const FEEDBACK: &str = "SELECT reason, n FROM campaign_feedback WHERE campaign_id = ?1";
const TOTALS: &str = "SELECT channel, locale, total FROM campaign_totals WHERE campaign_id = ?1";
const COUNTS: &str =
    "SELECT channel, locale, status, n FROM campaign_counts WHERE campaign_id = ?1";
const LAST_MINUTE: &str = "SELECT COALESCE(SUM(delivered), 0) FROM campaign_rates
    WHERE campaign_id = ?1 AND bucket >= ?2";

fn snapshot(c: &Connection, campaign: &str, since_bucket: i64) -> Result<Snapshot, LedgerError> {
    let recorded = c
        .prepare_cached(CAMPAIGN)?
        .query_row([campaign], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let feedback = c
        .prepare_cached(FEEDBACK)?
        .query_map([campaign], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let totals = c
        .prepare_cached(TOTALS)?
        .query_map([campaign], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let counts = c
        .prepare_cached(COUNTS)?
        .query_map([campaign], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let last_minute = c
        .prepare_cached(LAST_MINUTE)?
        .query_row(params![campaign, since_bucket], |r| r.get(0))?;
    Ok(Snapshot {
        recorded,
        totals,
        counts,
        last_minute,
        feedback,
    })
}

impl Store {
    pub(super) async fn record_campaign(
        &self,
        campaign: Campaign,
        now: i64,
    ) -> Result<(), LedgerError> {
        self.writer
            .run(move |c| {
                let id = campaign.id.as_str();
                c.prepare_cached(RECORD_CAMPAIGN)?.execute(params![
                    id,
                    campaign.template,
                    campaign.recipients as i64,
                    campaign.deadline.map(|d| d.to_rfc3339()),
                    now
                ])?;
                c.prepare_cached(CLEAR_TOTALS)?.execute([id])?;
                let mut total = c.prepare_cached(TOTAL)?;
                for ((channel, locale), n) in &campaign.totals {
                    total.execute(params![id, channel.as_str(), locale, *n as i64])?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn first_sight(
        &self,
        campaign: &CampaignId,
        template: &str,
        now: i64,
    ) -> Result<(), LedgerError> {
        let (campaign, template) = (campaign.as_str().to_string(), template.to_string());
        self.writer
            .run(move |c| {
                c.prepare_cached(FIRST_SIGHT)?
                    .execute(params![campaign, template, now])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn state(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<CampaignState>, LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| {
                let state: Option<String> = c
                    .prepare_cached(STATE)?
                    .query_row([campaign], |r| r.get(0))
                    .optional()?;
                state.map(|s| s.parse()).transpose()
            })
            .await
    }

    pub(super) async fn campaign_ids(&self) -> Result<Vec<String>, LedgerError> {
        self.writer
            .run(|c| {
                Ok(c.prepare_cached(CAMPAIGN_IDS)?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            })
            .await
    }

    pub(super) async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| {
                c.prepare_cached(SET_STATE)?
                    .execute(params![campaign, state.as_str()])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn snapshot(
        &self,
        campaign: &CampaignId,
        since_bucket: i64,
    ) -> Result<Snapshot, LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| snapshot(c, &campaign, since_bucket))
            .await
    }
}
