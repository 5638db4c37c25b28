//! Feedback on the SQLite ledger: the recipient a token names, reports and the suppressions
//! they make, each on the writer thread inside its group's transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::LedgerError;
use super::reports::{self, Complaints, GLOBAL, Paused, ReportEffect, Target, TokenRecipient};
use super::sqlite::Store;
use crate::batch::{CampaignId, EmailAddress};
use crate::config::FeedbackConfig;
use crate::suppression::{About, Reason, Report, Source};
use crate::token::Token;

const TOKEN_OF: &str = "SELECT campaign_id, user_id, address, locale FROM deliveries
    WHERE feedback_token = ?1 AND address IS NOT NULL LIMIT 1";
const ADDRESS_OF: &str = "SELECT address FROM deliveries
    WHERE campaign_id = ?1 AND user_id = ?2 AND channel = 'email'";
const REPORT: &str =
    "INSERT INTO feedback_reports (address, campaign_id, reason, source, detail, at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (address, reason, campaign_id) WHERE reason <> 'soft-bounce' DO NOTHING";
const COUNT_REPORT: &str =
    "INSERT INTO campaign_feedback (campaign_id, reason, n) VALUES (?1, ?2, 1)
    ON CONFLICT (campaign_id, reason) DO UPDATE SET n = n + 1";
const SOFT_BOUNCES: &str = "SELECT COUNT(*) FROM feedback_reports
    WHERE address = ?1 AND reason = 'soft-bounce' AND at >= ?2";
const SUPPRESS: &str = "INSERT INTO suppressions (address, reason, scope, source, detail, since)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (address, reason, scope) DO NOTHING";
const COMPLAINTS: &str = "SELECT c.state, c.complaints_at_resume,
        COALESCE((SELECT n FROM campaign_feedback
                  WHERE campaign_id = c.id AND reason = 'complaint'), 0),
        COALESCE((SELECT SUM(n) FROM campaign_counts
                  WHERE campaign_id = c.id AND channel = 'email' AND status = 'delivered'), 0)
    FROM campaigns c WHERE c.id = ?1";
/// The addresses among ?1 (a JSON array) no email of campaign ?2 goes to; ?3: unsubscribes
/// do not count (a legal notice).
const SUPPRESSED: &str = "SELECT DISTINCT address FROM suppressions
    WHERE address IN (SELECT value FROM json_each(?1)) AND scope IN ('', ?2)
      AND NOT (?3 AND reason = 'unsubscribe')";
const UNSUPPRESS: &str = "DELETE FROM suppressions WHERE address = ?1";
const SUPPRESSIONS: &str =
    "SELECT address, reason, scope, since FROM suppressions ORDER BY address, reason, scope";
const PAUSE: &str =
    "UPDATE campaigns SET state = 'paused', paused_reason = ?2 WHERE id = ?1 AND state = 'running'";

fn recipient_of(c: &Connection, token: &str) -> Result<Option<TokenRecipient>, LedgerError> {
    let row = c
        .prepare_cached(TOKEN_OF)?
        .query_row([token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(campaign, user, address, locale)| reports::recipient(campaign, user, address, locale))
        .transpose()
}

/// The address and campaign a report names, if the ledger knows them.
fn target(c: &Connection, about: &About) -> Result<Option<Target>, LedgerError> {
    match about {
        About::Token(token) => Ok(recipient_of(c, token.as_str())?.map(|r| Target {
            address: r.address,
            campaign: Some(r.campaign),
        })),
        About::Message { campaign, user } => {
            let address: Option<Option<String>> = c
                .prepare_cached(ADDRESS_OF)?
                .query_row([campaign.as_str(), user.as_str()], |r| r.get(0))
                .optional()?;
            address
                .flatten()
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
fn judge_complaints(
    c: &Connection,
    campaign: &CampaignId,
    policy: &FeedbackConfig,
) -> Result<Option<Paused>, LedgerError> {
    let row: Option<(String, i64, i64, i64)> = c
        .prepare_cached(COMPLAINTS)?
        .query_row([campaign.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((state, at_resume, complaints, delivered)) = row else {
        return Ok(None);
    };
    let judged = Complaints {
        complaints,
        at_resume,
        delivered,
    };
    if state != "running" || !judged.pause(policy) {
        return Ok(None);
    }
    let reason = judged.paused_reason(policy);
    c.prepare_cached(PAUSE)?
        .execute(params![campaign.as_str(), reason])?;
    Ok(Some(Paused {
        campaign: campaign.clone(),
        rate: judged.rate(),
        reason,
    }))
}

fn record_report(
    c: &Connection,
    report: &Report,
    policy: &FeedbackConfig,
    now: i64,
) -> Result<(ReportEffect, Option<Paused>), LedgerError> {
    let Some(target) = target(c, &report.about)? else {
        return Ok((ReportEffect::UnknownRecipient, None));
    };
    let address = target.address.as_str();
    let campaign = target.campaign.as_ref().map_or(GLOBAL, CampaignId::as_str);
    let reason = report.reason.as_str();
    let source = report.source.as_str();
    let first = c.prepare_cached(REPORT)?.execute(params![
        address,
        campaign,
        reason,
        source,
        report.detail,
        now
    ])? == 1;
    if first && !campaign.is_empty() {
        c.prepare_cached(COUNT_REPORT)?
            .execute(params![campaign, reason])?;
    }
    let scope = match reports::scope(report.reason, policy, target.campaign.as_ref()) {
        Some(scope) => Some(scope),
        None => {
            let counted: i64 = c.prepare_cached(SOFT_BOUNCES)?.query_row(
                params![address, reports::soft_window_start(now, policy)],
                |r| r.get(0),
            )?;
            reports::soft_bounces_suppress(counted, policy).then(|| GLOBAL.to_string())
        }
    };
    if let Some(scope) = &scope {
        c.prepare_cached(SUPPRESS)?.execute(params![
            address,
            reason,
            scope,
            source,
            report.detail,
            now
        ])?;
    }
    let paused = match &target.campaign {
        Some(campaign) if first && report.reason == Reason::Complaint => {
            judge_complaints(c, campaign, policy)?
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
        let token = token.as_str().to_string();
        self.writer.run(move |c| recipient_of(c, &token)).await
    }

    pub(super) async fn suppressed(
        &self,
        campaign: &CampaignId,
        addresses: &[&EmailAddress],
        legal_notice: bool,
    ) -> Result<Vec<String>, LedgerError> {
        let list = serde_json::to_string(&addresses.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .map_err(|e| LedgerError::Corrupt(format!("addresses: {e}")))?;
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| {
                Ok(c.prepare_cached(SUPPRESSED)?
                    .query_map(params![list, campaign, legal_notice], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            })
            .await
    }

    pub(super) async fn add_suppressions(
        &self,
        addresses: Vec<String>,
        reason: Reason,
        source: Source,
        now: i64,
    ) -> Result<u64, LedgerError> {
        self.writer
            .run(move |c| {
                let mut insert = c.prepare_cached(SUPPRESS)?;
                let mut added = 0;
                for address in &addresses {
                    added += insert.execute(params![
                        address,
                        reason.as_str(),
                        GLOBAL,
                        source.as_str(),
                        "",
                        now
                    ])? as u64;
                }
                Ok(added)
            })
            .await
    }

    pub(super) async fn remove_suppressions(
        &self,
        addresses: Vec<String>,
    ) -> Result<u64, LedgerError> {
        self.writer
            .run(move |c| {
                let mut delete = c.prepare_cached(UNSUPPRESS)?;
                let mut removed = 0;
                for address in &addresses {
                    removed += delete.execute([address])? as u64;
                }
                Ok(removed)
            })
            .await
    }

    pub(super) async fn suppressions(
        &self,
    ) -> Result<Vec<(String, String, String, i64)>, LedgerError> {
        self.writer
            .run(|c| {
                Ok(c.prepare_cached(SUPPRESSIONS)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?)
            })
            .await
    }

    pub(super) async fn record_report(
        &self,
        report: &Report,
        policy: &FeedbackConfig,
        now: i64,
    ) -> Result<(ReportEffect, Option<Paused>), LedgerError> {
        let (report, policy) = (report.clone(), policy.clone());
        self.writer
            .run(move |c| record_report(c, &report, &policy, now))
            .await
    }
}
