//! The suppression list and feedback as the ledger's users see them: reports recorded under
//! the policy of `[feedback]`, the recipient a token names, a batch's check, and the entries an
//! operator adds, lists and removes with `sunset suppress`.

use std::collections::HashSet;
use std::sync::PoisonError;

use chrono::{DateTime, Utc};
use tracing::warn;

use super::reports::{self, ReportEffect, TokenRecipient};
use super::{Ledger, LedgerError};
use crate::batch::{CampaignId, EmailAddress};
use crate::config::FeedbackConfig;
use crate::suppression::{Reason, Report, Source};
use crate::token::Token;

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// The address, normalised.
    pub address: EmailAddress,
    /// Why.
    pub reason: Reason,
    /// The one campaign it holds for (an unsubscribe in campaign scope); `None`: every campaign.
    pub campaign: Option<CampaignId>,
    /// When it was added.
    pub since: DateTime<Utc>,
}

impl Ledger {
    /// Records a bounce, complaint or unsubscribe and suppresses its address as `policy` says:
    /// hard bounces, complaints and manual entries at once and for every campaign; soft bounces
    /// once `soft_bounces_to_suppress` fall within `soft_bounce_window_ms`; unsubscribes in
    /// `unsubscribe_scope`. A repeat changes nothing. A complaint that takes its campaign's
    /// complaint rate past `pause_complaint_rate` pauses the campaign.
    pub async fn record_report(
        &self,
        report: &Report,
        policy: &FeedbackConfig,
    ) -> Result<ReportEffect, LedgerError> {
        self.ready().await?;
        let (effect, paused) = self.store.record_report(report, policy).await?;
        if let Some(paused) = paused {
            warn!(
                campaign = %paused.campaign,
                rate = paused.rate,
                limit = policy.pause_complaint_rate,
                reason = %paused.reason,
                "campaign paused: its complaint rate passed feedback.pause_complaint_rate"
            );
            self.states
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&paused.campaign);
        }
        Ok(effect)
    }

    /// The recipient `token` was made for, if an email with it was claimed here.
    pub async fn recipient_of(&self, token: &Token) -> Result<Option<TokenRecipient>, LedgerError> {
        self.ready().await?;
        self.store.recipient_of(token).await
    }

    /// The addresses among `addresses` that no email of `campaign` may go to: suppressed for
    /// every campaign or for this one, unsubscribes aside when the notice is a `legal_notice`.
    /// One query, whatever the number of addresses.
    pub async fn suppressed(
        &self,
        campaign: &CampaignId,
        addresses: &[&EmailAddress],
        legal_notice: bool,
    ) -> Result<HashSet<EmailAddress>, LedgerError> {
        if addresses.is_empty() {
            return Ok(HashSet::new());
        }
        self.ready().await?;
        self.store
            .suppressed(campaign, addresses, legal_notice)
            .await?
            .iter()
            .map(|stored| reports::address(stored))
            .collect()
    }

    /// Adds `addresses` to the suppression list for every campaign, for `reason` (an
    /// operator's entry: no report is counted for any campaign). All or none: one transaction.
    /// Returns how many entries are new.
    pub async fn suppress(
        &self,
        addresses: &[EmailAddress],
        reason: Reason,
    ) -> Result<u64, LedgerError> {
        self.ready().await?;
        self.store
            .add_suppressions(addresses, reason, Source::Operator)
            .await
    }

    /// Removes every entry (any reason, any scope) of `addresses`; returns how many went.
    pub async fn unsuppress(&self, addresses: &[EmailAddress]) -> Result<u64, LedgerError> {
        self.ready().await?;
        self.store.remove_suppressions(addresses).await
    }

    /// The whole suppression list, by address, reason and scope.
    pub async fn suppressions(&self) -> Result<Vec<Suppression>, LedgerError> {
        self.ready().await?;
        self.store
            .suppressions()
            .await?
            .into_iter()
            .map(|(address, reason, scope, since)| {
                Ok(Suppression {
                    address: reports::address(&address)?,
                    reason: reason
                        .parse()
                        .map_err(|e: crate::suppression::UnknownReason| {
                            LedgerError::Corrupt(e.to_string())
                        })?,
                    campaign: (scope != reports::GLOBAL)
                        .then(|| CampaignId::parse(&scope))
                        .transpose()
                        .map_err(|e| LedgerError::Corrupt(format!("campaign id: {e}")))?,
                    since: DateTime::from_timestamp_millis(since).unwrap_or_default(),
                })
            })
            .collect()
    }
}
