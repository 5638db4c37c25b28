//! One batch → sends → a `Verdict`, with no broker in sight: a pure plan (pairs, notices),
//! admission by the ledger (state, claims), the sends, and a pure decision (outcomes → what
//! the batch owes).

use std::collections::HashSet;

use futures::future::join_all;

use crate::batch::{Batch, UserId};
use crate::channel::{Channel, Sender};
use crate::ledger::{Entry, Mark};

mod books;
mod breaker;
mod deps;
mod lanes;
mod owed;
mod plan;
mod report;
mod sends;

pub use crate::dead_letter::DeadLetterKind;
pub use books::Books;
pub use breaker::{BreakerPolicy, Breakers, OpenBreaker};
use deps::{Admit, passed};
pub use deps::{Deps, STOPPING};
pub use owed::{Owed, RetryPolicy};
use owed::{hold, rejected};
use plan::plan;
pub use report::{Counts, Report, Verdict};
use sends::{Sending, decide, send_all};

/// The reason recorded for sends not made because the batch's deadline passed.
pub const DEADLINE: &str = "deadline";

/// Tells the ledger a batch is done with its claim when dropped, also on a panic.
struct Finished<'a> {
    books: &'a dyn Books,
    token: i64,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.books.finished(self.token);
    }
}

/// Renders and sends every recipient × channel of `batch` concurrently (rate limits and the
/// concurrency bound permitting), skipping pairs in `already` (delivered before, as this
/// process remembers) and pairs the ledger says are delivered or being sent elsewhere, and
/// decides what the batch still owes. `attempt` is the delivery's `x-sunset-attempt`.
pub async fn process_batch<E: Sender, P: Sender>(
    batch: &Batch,
    attempt: u32,
    already: &HashSet<(UserId, Channel)>,
    deps: &Deps<E, P>,
) -> Verdict {
    let mut plan = plan(
        batch,
        already,
        deps.renderer(&batch.template),
        passed(batch.deadline),
        deps.books.is_some(),
    );
    let mut verdict = Verdict {
        report: Report {
            batches: 1,
            no_email: plan.no_email,
            ..Report::default()
        },
        ..Verdict::default()
    };
    for &(index, channel) in &plan.delivered {
        verdict
            .delivered
            .push((batch.recipients[index].user_id.clone(), channel));
    }
    // The pairs as the ledger claims them are needed for the claim only (or to record a
    // cancelled campaign): a batch's sends do not hold them.
    let pairs = std::mem::take(&mut plan.pairs);
    let legal_notice = plan
        .renderer
        .as_ref()
        .is_ok_and(|renderer| renderer.options().legal_notice);
    let (claims, suppressed) = match deps.admit(batch, &pairs, legal_notice).await {
        Admit::Go(claims, suppressed) => (claims, suppressed),
        Admit::Hold(reason) => {
            tracing::info!(%reason, "batch held back");
            verdict.report = Report::default();
            verdict.owed = hold(batch, attempt, &reason, &deps.retry);
            return verdict;
        }
        Admit::Refused(reason) => {
            tracing::error!(%reason, "batch dead-lettered");
            verdict.report = Report::default();
            verdict.owed = rejected(batch, attempt, &reason);
            verdict.report.tally(&[], &verdict.owed);
            return verdict;
        }
        Admit::Cancelled(claims) => {
            tracing::info!("campaign cancelled; recording the batch's recipients as cancelled");
            let _finished = deps.books.as_deref().map(|books| Finished {
                books,
                token: claims.token,
            });
            let cancelled = plan.todo.iter().zip(&pairs).filter(|(_, pair)| {
                let key = (pair.user_id.clone(), pair.channel);
                !claims.delivered.contains(&key)
                    && !claims.held.contains(&key)
                    && !claims.cancelled.contains(&key)
            });
            let notes = cancelled.map(|(_, pair)| {
                deps.note(
                    Some(&claims),
                    Entry {
                        campaign: batch.campaign_id.clone(),
                        pair: pair.clone(),
                        mark: Mark::Cancelled,
                        error: None,
                    },
                )
            });
            join_all(notes).await;
            return verdict;
        }
    };
    drop(pairs);
    let _finished = match (&deps.books, &claims) {
        (Some(books), Some(claims)) => Some(Finished {
            books: books.as_ref(),
            token: claims.token,
        }),
        _ => None,
    };
    let sending = Sending {
        claims: claims.as_ref(),
        suppressed: &suppressed,
    };
    let (sent, held) = send_all(batch, &plan, sending, deps, &mut verdict).await;
    decide(batch, attempt, &plan, sent, held, deps, verdict).await
}
