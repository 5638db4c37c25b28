//! Where every report ends: the ledger, with the `[feedback]` policy, counted and logged.

use std::sync::Arc;

use crate::config::FeedbackConfig;
use crate::ledger::{Ledger, LedgerError, ReportEffect, TokenRecipient};
use crate::suppression::Report;
use crate::token::Token;

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
        self.record_first(std::slice::from_ref(report)).await
    }

    /// Records the first of `alternatives` (one event, its recipient named in different ways,
    /// best first) whose recipient the ledger knows; what it did is logged and counted once.
    pub async fn record_first(&self, alternatives: &[Report]) -> Result<ReportEffect, LedgerError> {
        let mut effect = ReportEffect::UnknownRecipient;
        let mut recorded = alternatives.first();
        for report in alternatives {
            effect = self.ledger.record_report(report, &self.policy).await?;
            recorded = Some(report);
            if effect != ReportEffect::UnknownRecipient {
                break;
            }
        }
        let Some(report) = recorded else {
            return Ok(effect);
        };
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
        self.ledger.recipient_of(token).await
    }
}
