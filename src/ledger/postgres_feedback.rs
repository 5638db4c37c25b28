//! Feedback on the PostgreSQL ledger: the recipient a token names, reports and the suppressions
//! they make, each report in one transaction.

use sqlx::{PgConnection, Row};

use super::LedgerError;
use super::postgres::Store;
use super::reports::{self, Complaints, GLOBAL, Paused, ReportEffect, Target, TokenRecipient};
use crate::batch::{CampaignId, EmailAddress};
use crate::config::FeedbackConfig;
use crate::suppression::{About, Reason, Report, Source};
use crate::token::Token;

const TOKEN_OF: &str = "SELECT campaign_id, user_id, address, locale FROM deliveries
    WHERE feedback_token = $1 AND address IS NOT NULL LIMIT 1";
const ADDRESS_OF: &str = "SELECT address FROM deliveries
    WHERE campaign_id = $1 AND user_id = $2 AND channel = 'email'";
const REPORT: &str =
    "INSERT INTO feedback_reports (address, campaign_id, reason, source, detail, at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (address, reason, campaign_id) WHERE reason <> 'soft-bounce' DO NOTHING";
const COUNT_REPORT: &str =
    "INSERT INTO campaign_feedback (campaign_id, reason, n) VALUES ($1, $2, 1)
    ON CONFLICT (campaign_id, reason) DO UPDATE SET n = campaign_feedback.n + 1";
const SOFT_BOUNCES: &str = "SELECT COUNT(*) FROM feedback_reports
    WHERE address = $1 AND reason = 'soft-bounce' AND at >= $2";
const SUPPRESS: &str = "INSERT INTO suppressions (address, reason, scope, source, detail, since)
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (address, reason, scope) DO NOTHING";
/// The campaign row is locked: two complaints recorded at once judge one after the other.
const COMPLAINTS: &str = "SELECT c.state, c.complaints_at_resume,
        COALESCE((SELECT n FROM campaign_feedback
                  WHERE campaign_id = c.id AND reason = 'complaint'), 0)::bigint,
        COALESCE((SELECT SUM(n) FROM campaign_counts
                  WHERE campaign_id = c.id AND channel = 'email' AND status = 'delivered'), 0)::bigint
    FROM campaigns c WHERE c.id = $1 FOR UPDATE";
/// The addresses among $1 no email of campaign $2 goes to; $3: unsubscribes do not count (a
/// legal notice).
const SUPPRESSED: &str = "SELECT DISTINCT address FROM suppressions
    WHERE address = ANY($1::text[]) AND scope IN ('', $2)
      AND NOT ($3 AND reason = 'unsubscribe')";
const SUPPRESS_ALL: &str =
    "INSERT INTO suppressions (address, reason, scope, source, detail, since)
    SELECT t.a, $2, '', $3, '', $4 FROM UNNEST($1::text[]) AS t(a)
    ON CONFLICT (address, reason, scope) DO NOTHING";
const UNSUPPRESS: &str = "DELETE FROM suppressions WHERE address = ANY($1::text[])";
const SUPPRESSIONS: &str =
    "SELECT address, reason, scope, since FROM suppressions ORDER BY address, reason, scope";
/// Addresses one statement of `add_suppressions` carries.
const CHUNK: usize = 10_000;
const PAUSE: &str =
    "UPDATE campaigns SET state = 'paused', paused_reason = $2 WHERE id = $1 AND state = 'running'";

async fn recipient_of(
    c: &mut PgConnection,
    token: &str,
) -> Result<Option<TokenRecipient>, LedgerError> {
    let row = sqlx::query(TOKEN_OF)
        .bind(token)
        .fetch_optional(&mut *c)
        .await?;
    row.map(|r| reports::recipient(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
        .transpose()
}

/// The address and campaign a report names, if the ledger knows them.
async fn target(c: &mut PgConnection, about: &About) -> Result<Option<Target>, LedgerError> {
    match about {
        About::Token(token) => Ok(recipient_of(c, token.as_str()).await?.map(|r| Target {
            address: r.address,
            campaign: Some(r.campaign),
        })),
        About::Message { campaign, user } => {
            let row = sqlx::query(ADDRESS_OF)
                .bind(campaign.as_str())
                .bind(user.as_str())
                .fetch_optional(&mut *c)
                .await?;
            let address: Option<String> = row.map(|r| r.try_get(0)).transpose()?.flatten();
            address
                .map(|address| {
                    Ok(Target {
                        address: reports::address(&address)?,
                        campaign: Some(campaign.clone()),
                    })
                })
                .transpose()
        }
        About::Address(address) => Ok(Some(Target {
            address: address.clone(),
            campaign: None,
        })),
    }
}

/// Pauses `campaign` if its complaints now pass the policy's rate.
async fn judge_complaints(
    c: &mut PgConnection,
    campaign: &CampaignId,
    policy: &FeedbackConfig,
) -> Result<Option<Paused>, LedgerError> {
    let Some(row) = sqlx::query(COMPLAINTS)
        .bind(campaign.as_str())
        .fetch_optional(&mut *c)
        .await?
    else {
        return Ok(None);
    };
    let state: String = row.try_get(0)?;
    let judged = Complaints {
        at_resume: row.try_get(1)?,
        complaints: row.try_get(2)?,
        delivered: row.try_get(3)?,
    };
    if state != "running" || !judged.pause(policy) {
        return Ok(None);
    }
    let reason = judged.paused_reason(policy);
    sqlx::query(PAUSE)
        .bind(campaign.as_str())
        .bind(&reason)
        .execute(&mut *c)
        .await?;
    Ok(Some(Paused {
        campaign: campaign.clone(),
        rate: judged.rate(),
        reason,
    }))
}

async fn record_report(
    c: &mut PgConnection,
    report: &Report,
    policy: &FeedbackConfig,
    now: i64,
) -> Result<(ReportEffect, Option<Paused>), LedgerError> {
    let Some(target) = target(c, &report.about).await? else {
        return Ok((ReportEffect::UnknownRecipient, None));
    };
    let address = target.address.as_str();
    let campaign = target.campaign.as_ref().map_or(GLOBAL, CampaignId::as_str);
    let reason = report.reason.as_str();
    let source = report.source.as_str();
    let first = sqlx::query(REPORT)
        .bind(address)
        .bind(campaign)
        .bind(reason)
        .bind(source)
        .bind(&report.detail)
        .bind(now)
        .execute(&mut *c)
        .await?
        .rows_affected()
        == 1;
    if first && !campaign.is_empty() {
        sqlx::query(COUNT_REPORT)
            .bind(campaign)
            .bind(reason)
            .execute(&mut *c)
            .await?;
    }
    let scope = match reports::scope(report.reason, policy, target.campaign.as_ref()) {
        Some(scope) => Some(scope),
        None => {
            let counted: i64 = sqlx::query(SOFT_BOUNCES)
                .bind(address)
                .bind(reports::soft_window_start(now, policy))
                .fetch_one(&mut *c)
                .await?
                .try_get(0)?;
            reports::soft_bounces_suppress(counted, policy).then(|| GLOBAL.to_string())
        }
    };
    if let Some(scope) = &scope {
        sqlx::query(SUPPRESS)
            .bind(address)
            .bind(reason)
            .bind(scope)
            .bind(source)
            .bind(&report.detail)
            .bind(now)
            .execute(&mut *c)
            .await?;
    }
    let paused = match &target.campaign {
        Some(campaign) if first && report.reason == Reason::Complaint => {
            judge_complaints(c, campaign, policy).await?
        }
        _ => None,
    };
    Ok((
        reports::effect(target, report.reason, scope.is_some()),
        paused,
    ))
}

impl Store {
    pub(super) async fn recipient_of(
        &self,
        token: &Token,
    ) -> Result<Option<TokenRecipient>, LedgerError> {
        let mut c = self.pool.acquire().await?;
        recipient_of(&mut c, token.as_str()).await
    }

    pub(super) async fn suppressed(
        &self,
        campaign: &CampaignId,
        addresses: &[&EmailAddress],
        legal_notice: bool,
    ) -> Result<Vec<String>, LedgerError> {
        let list: Vec<&str> = addresses.iter().map(|a| a.as_str()).collect();
        let rows = sqlx::query(SUPPRESSED)
            .bind(list)
            .bind(campaign.as_str())
            .bind(legal_notice)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub(super) async fn add_suppressions(
        &self,
        addresses: &[String],
        reason: Reason,
        source: Source,
        now: i64,
    ) -> Result<u64, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for chunk in addresses.chunks(CHUNK) {
            added += sqlx::query(SUPPRESS_ALL)
                .bind(chunk)
                .bind(reason.as_str())
                .bind(source.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    pub(super) async fn remove_suppressions(
        &self,
        addresses: &[String],
    ) -> Result<u64, LedgerError> {
        Ok(sqlx::query(UNSUPPRESS)
            .bind(addresses)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub(super) async fn suppressions(
        &self,
    ) -> Result<Vec<(String, String, String, i64)>, LedgerError> {
        sqlx::query(SUPPRESSIONS)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    pub(super) async fn record_report(
        &self,
        report: &Report,
        policy: &FeedbackConfig,
        now: i64,
    ) -> Result<(ReportEffect, Option<Paused>), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let done = record_report(&mut tx, report, policy, now).await?;
        tx.commit().await?;
        Ok(done)
    }
}
