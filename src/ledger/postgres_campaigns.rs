//! Campaigns on the PostgreSQL ledger: their record and totals, their state, and the snapshot
//! `status` is built from.

use sqlx::Row;

use super::LedgerError;
use super::postgres::Store;
use super::rows::{Campaign, CampaignState};
use super::status::Snapshot;
use crate::batch::CampaignId;

const RECORD_CAMPAIGN: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES ($1, $2, $3, $4, 'running', $5)
    ON CONFLICT (id) DO UPDATE SET template = excluded.template,
        recipients = excluded.recipients, deadline = excluded.deadline";
const FIRST_SIGHT: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES ($1, $2, -1, NULL, 'running', $3) ON CONFLICT (id) DO NOTHING";
const CLEAR_TOTALS: &str = "DELETE FROM campaign_totals WHERE campaign_id = $1";
const TOTALS_IN: &str = "INSERT INTO campaign_totals (campaign_id, channel, locale, total)
    SELECT $1, t.c, t.l, t.n FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS t(c, l, n)";
const STATE: &str = "SELECT state FROM campaigns WHERE id = $1";
const CAMPAIGN_IDS: &str = "SELECT id FROM campaigns ORDER BY created_at, id";
/// A change of state by hand clears the ledger's pause reason and sets aside the complaints
/// counted so far: only later ones can pause the campaign again.
const SET_STATE: &str = "UPDATE campaigns SET state = $2, paused_reason = NULL,
        complaints_at_resume = COALESCE((SELECT n FROM campaign_feedback
                                         WHERE campaign_id = $1 AND reason = 'complaint'), 0)
    WHERE id = $1";
const CAMPAIGN: &str =
    "SELECT template, state, recipients, deadline, paused_reason FROM campaigns WHERE id = $1";
const FEEDBACK: &str = "SELECT reason, n FROM campaign_feedback WHERE campaign_id = $1";
const TOTALS: &str = "SELECT channel, locale, total FROM campaign_totals WHERE campaign_id = $1";
const COUNTS: &str =
    "SELECT channel, locale, status, n FROM campaign_counts WHERE campaign_id = $1";
const LAST_MINUTE: &str = "SELECT COALESCE(SUM(delivered), 0)::bigint FROM campaign_rates
    WHERE campaign_id = $1 AND bucket >= $2";

impl Store {
    pub(super) async fn record_campaign(
        &self,
        campaign: &Campaign,
        now: i64,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let id = campaign.id.as_str();
        sqlx::query(RECORD_CAMPAIGN)
            .bind(id)
            .bind(campaign.template.as_str())
            .bind(campaign.recipients as i64)
            .bind(campaign.deadline.map(|d| d.to_rfc3339()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(CLEAR_TOTALS).bind(id).execute(&mut *tx).await?;
        let (mut channels, mut locales, mut totals) = (Vec::new(), Vec::new(), Vec::new());
        for ((channel, locale), n) in &campaign.totals {
            channels.push(channel.as_str());
            locales.push(locale.as_str());
            totals.push(*n as i64);
        }
        sqlx::query(TOTALS_IN)
            .bind(id)
            .bind(channels)
            .bind(locales)
            .bind(totals)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn first_sight(
        &self,
        campaign: &CampaignId,
        template: &str,
        now: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(FIRST_SIGHT)
            .bind(campaign.as_str())
            .bind(template)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn state(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<CampaignState>, LedgerError> {
        let row = sqlx::query(STATE)
            .bind(campaign.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>(0)?.parse()).transpose()
    }

    pub(super) async fn campaign_ids(&self) -> Result<Vec<String>, LedgerError> {
        Ok(sqlx::query_scalar(CAMPAIGN_IDS)
            .fetch_all(&self.pool)
            .await?)
    }

    pub(super) async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        sqlx::query(SET_STATE)
            .bind(campaign.as_str())
            .bind(state.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn snapshot(
        &self,
        campaign: &CampaignId,
        since_bucket: i64,
    ) -> Result<Snapshot, LedgerError> {
        let id = campaign.as_str();
        let recorded = sqlx::query(CAMPAIGN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .transpose()?;
        let feedback = sqlx::query(FEEDBACK)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let totals = sqlx::query(TOTALS)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let counts = sqlx::query(COUNTS)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let last_minute = sqlx::query(LAST_MINUTE)
            .bind(id)
            .bind(since_bucket)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(Snapshot {
            recorded,
            totals,
            counts,
            last_minute,
            feedback,
        })
    }
}
