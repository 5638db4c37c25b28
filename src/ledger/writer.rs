//! The outcome writer: outcomes wait in one queue and are written in groups, several groups at
//! once, kept and tried again while the database refuses them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::LedgerError;
use super::rows::{Fenced, Recorded};
use super::store::Store;

/// Outcomes written in one statement group at most.
const MAX_GROUP: usize = 1024;
/// Groups of outcomes being written at once.
const GROUPS_IN_FLIGHT: usize = 4;
/// The longest pause between two tries to write outcomes the database refused.
const RECORD_BACKOFF: Duration = Duration::from_secs(2);

/// One outcome waiting to be written, and who waits for the answer.
pub(super) struct Waiting {
    pub(super) outcome: Fenced,
    pub(super) done: oneshot::Sender<Result<Recorded, Arc<LedgerError>>>,
}

/// The outcome writer: takes every outcome waiting (up to `MAX_GROUP`) as one group and writes
/// it, with up to `GROUPS_IN_FLIGHT` groups being written at once, so a group's round trip does
/// not hold the next one up (SQLite's thread takes the groups waiting into one transaction;
/// PostgreSQL writes them on connections of their own). A group the database refuses for now
/// is kept and tried again until it is written; meanwhile `backlog` stops new sends.
pub(super) async fn write_outcomes(
    store: Arc<Store>,
    backlog: Arc<AtomicBool>,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
) {
    let mut writing = futures::stream::FuturesUnordered::new();
    loop {
        let next = if writing.len() < GROUPS_IN_FLIGHT {
            tokio::select! {
                waiting = queue.recv() => waiting.map(Some),
                Some(()) = futures::StreamExt::next(&mut writing) => Some(None),
            }
        } else {
            futures::StreamExt::next(&mut writing).await.map(|()| None)
        };
        match next {
            Some(Some(first)) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(waiting) => group.push(waiting),
                        Err(_) => break,
                    }
                }
                writing.push(write_group(Arc::clone(&store), Arc::clone(&backlog), group));
            }
            Some(None) => {}
            None if writing.is_empty() => break,
            None => {}
        }
    }
}

/// Writes one group of outcomes, trying again while the database is away, and answers each.
async fn write_group(store: Arc<Store>, backlog: Arc<AtomicBool>, group: Vec<Waiting>) {
    let outcomes: Vec<Fenced> = group.iter().map(|w| w.outcome.clone()).collect();
    let mut pause = Duration::from_millis(50);
    let result = loop {
        match store.record(&outcomes).await {
            Ok(recorded) => {
                if backlog.swap(false, Ordering::Relaxed) {
                    info!(outcomes = outcomes.len(), "the ledger takes outcomes again");
                }
                break Ok(recorded);
            }
            Err(e) if e.is_unavailable() => {
                if !backlog.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, outcomes = outcomes.len(), "the ledger refuses outcomes; keeping them and starting no send until they are written");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECORD_BACKOFF);
            }
            Err(e) => break Err(Arc::new(e)),
        }
    };
    for (i, waiting) in group.into_iter().enumerate() {
        let answer = match &result {
            Ok(recorded) => Ok(recorded.get(i).copied().unwrap_or(Recorded::FencedOut)),
            Err(e) => Err(Arc::clone(e)),
        };
        let _ = waiting.done.send(answer);
    }
}
