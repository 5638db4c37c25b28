//! Where every report ends: the ledger, with the `[feedback]` policy, counted and logged.

use std::sync::Arc;

use crate::config::FeedbackConfig;
use crate::ledger::{Ledger, LedgerError};
use crate::suppression::Report;
use crate::token::Token;
use pending::{ReportEffect, TokenRecipient};

use super::events;

/// The ledger and the policy reports are recorded under.
pub struct Desk {
    ledger: Arc<Ledger>,
    policy: FeedbackConfig,
}

impl Desk {
    /// Records into `ledger` under `policy` (soft-bounce threshold, unsubscribe scope, pause).
    pub fn new(ledger: Arc<Ledger>, policy: FeedbackConfig) -> Desk {
        Desk { ledger, policy }
    }

    /// Records `report`; what it did is logged and counted.
    pub async fn record(&self, report: &Report) -> Result<ReportEffect, LedgerError> {
        let effect = pending::record_report(&self.ledger, report, &self.policy).await?;
        let label = match &effect {
            ReportEffect::Suppressed { .. } => "suppressed",
            ReportEffect::Counted { .. } => "counted",
            ReportEffect::UnknownRecipient => "unknown-recipient",
        };
        events::recorded(report, label);
        Ok(effect)
    }

    /// The recipient `token` was made for, if the ledger knows it.
    pub async fn recipient_of(&self, token: &Token) -> Result<Option<TokenRecipient>, LedgerError> {
        pending::recipient_of(&self.ledger, token).await
    }
}

/// PENDING MERGE of i20-suppress: stands in for the ledger API until it is merged.
pub mod pending {
    use super::*;
    use crate::batch::{CampaignId, EmailAddress, UserId};
    use crate::suppression::Reason;
    pub enum ReportEffect {
        Suppressed {
            address: EmailAddress,
            reason: Reason,
        },
        Counted {
            address: EmailAddress,
        },
        UnknownRecipient,
    }
    pub struct TokenRecipient {
        pub campaign: CampaignId,
        pub user: UserId,
        pub address: EmailAddress,
        pub locale: String,
    }
    pub async fn record_report(
        _: &Ledger,
        _: &Report,
        _: &FeedbackConfig,
    ) -> Result<ReportEffect, LedgerError> {
        Ok(ReportEffect::UnknownRecipient)
    }
    pub async fn recipient_of(
        _: &Ledger,
        _: &Token,
    ) -> Result<Option<TokenRecipient>, LedgerError> {
        Ok(None)
    }
}
