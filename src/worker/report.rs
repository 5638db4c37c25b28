//! What processing came to: counts per channel, the report of one or more batches, and a
//! batch's verdict (what it still owes before its ack).

use std::collections::BTreeMap;

use super::{DeadLetterKind, Owed};
use crate::batch::UserId;
use crate::channel::Channel;

/// What became of the recipients of one channel: each counts once, by its final fate in this
/// process (a transient failure with a retry scheduled is not counted until the retry decides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accepted by the relay or gateway (here, or before as the ledger or a redelivery says).
    pub delivered: u64,
    /// Dead-lettered: refused for good, attempts exhausted, deadline passed, unrenderable.
    pub dead: u64,
    /// Handed over with no answer: may or may not have arrived; dead-lettered as unknown.
    pub unknown: u64,
    /// Not sent: the address is on the suppression list.
    pub suppressed: u64,
}

/// What happened in one or more batches, per channel: recipients, not attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Batches processed.
    pub batches: u64,
    /// Recipients by their fate, per channel.
    pub counts: BTreeMap<Channel, Counts>,
    /// Recipients with no email address, for whom the email channel was skipped.
    pub no_email: u64,
}

impl Report {
    /// Adds another report's numbers to this one.
    pub fn merge(&mut self, other: &Report) {
        self.batches += other.batches;
        self.no_email += other.no_email;
        for (channel, counts) in &other.counts {
            let entry = self.counts.entry(*channel).or_default();
            entry.delivered += counts.delivered;
            entry.dead += counts.dead;
            entry.unknown += counts.unknown;
            entry.suppressed += counts.suppressed;
        }
    }

    /// Counts the pairs a batch delivered and the ones it dead-letters.
    pub(super) fn tally(&mut self, delivered: &[(UserId, Channel)], owed: &[Owed]) {
        for (_, channel) in delivered {
            self.counts.entry(*channel).or_default().delivered += 1;
        }
        for owed in owed {
            let Owed::DeadLetter { batch, kinds, .. } = owed else {
                continue;
            };
            for (failure, kind) in batch.failures.iter().zip(kinds) {
                let counts = self.counts.entry(failure.channel).or_default();
                if *kind == DeadLetterKind::Unknown {
                    counts.unknown += 1;
                } else {
                    counts.dead += 1;
                }
            }
        }
    }
}

/// What became of a batch: the numbers, the pairs delivered, and what it still owes. The
/// daemon publishes everything owed (confirmed), then acks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Counts per channel and locale.
    pub report: Report,
    /// Every recipient × channel delivered now or before.
    pub delivered: Vec<(UserId, Channel)>,
    /// Retries and dead letters to publish before the ack.
    pub owed: Vec<Owed>,
}
