//! What the worker asks of the delivery ledger, as a trait: the ledger implements it, the
//! worker's tests fake it.

use std::collections::HashSet;

use futures::future::BoxFuture;

use crate::batch::{CampaignId, EmailAddress};
use crate::ledger::{CampaignState, Claims, Entry, Ledger, LedgerError, Pair, Recorded};

/// The ledger as the worker uses it.
pub trait Books: Send + Sync {
    /// The campaign's state, at most a second old (a campaign first seen is recorded running).
    fn state<'a>(
        &'a self,
        campaign: &'a CampaignId,
        template: &'a str,
    ) -> BoxFuture<'a, Result<CampaignState, LedgerError>>;

    /// The addresses among `addresses` no email of `campaign` may go to (unsubscribes aside
    /// for a `legal_notice`).
    fn suppressed<'a>(
        &'a self,
        campaign: &'a CampaignId,
        addresses: &'a [&'a EmailAddress],
        legal_notice: bool,
    ) -> BoxFuture<'a, Result<HashSet<EmailAddress>, LedgerError>>;

    /// Claims pairs; returns those it did not get.
    fn claim<'a>(
        &'a self,
        campaign: &'a CampaignId,
        pairs: &'a [Pair],
    ) -> BoxFuture<'a, Result<Claims, LedgerError>>;

    /// Whether a send under `claims` may start now.
    fn may_send(&self, claims: &Claims) -> bool;

    /// Records an outcome under `claims`, once it is durable.
    fn record<'a>(
        &'a self,
        claims: &'a Claims,
        entry: Entry,
    ) -> BoxFuture<'a, Result<Recorded, LedgerError>>;

    /// Failed pairs that will not be retried are dead now.
    fn give_up(&self, entries: Vec<Entry>) -> BoxFuture<'_, Result<(), LedgerError>>;

    /// Done with a claim.
    fn finished(&self, token: i64);
}

impl Books for Ledger {
    fn state<'a>(
        &'a self,
        campaign: &'a CampaignId,
        template: &'a str,
    ) -> BoxFuture<'a, Result<CampaignState, LedgerError>> {
        Box::pin(Ledger::state(self, campaign, template))
    }

    fn suppressed<'a>(
        &'a self,
        campaign: &'a CampaignId,
        addresses: &'a [&'a EmailAddress],
        legal_notice: bool,
    ) -> BoxFuture<'a, Result<HashSet<EmailAddress>, LedgerError>> {
        Box::pin(Ledger::suppressed(self, campaign, addresses, legal_notice))
    }

    fn claim<'a>(
        &'a self,
        campaign: &'a CampaignId,
        pairs: &'a [Pair],
    ) -> BoxFuture<'a, Result<Claims, LedgerError>> {
        Box::pin(Ledger::claim(self, campaign, pairs))
    }

    fn may_send(&self, claims: &Claims) -> bool {
        Ledger::may_send(self, claims)
    }

    fn record<'a>(
        &'a self,
        claims: &'a Claims,
        entry: Entry,
    ) -> BoxFuture<'a, Result<Recorded, LedgerError>> {
        Box::pin(Ledger::record(self, claims, entry))
    }

    fn give_up(&self, entries: Vec<Entry>) -> BoxFuture<'_, Result<(), LedgerError>> {
        Box::pin(Ledger::give_up(self, entries))
    }

    fn finished(&self, token: i64) {
        Ledger::finished(self, token);
    }
}
