//! The loop of `sunset send` on the in-process queue: takes batches, handles each as the
//! RabbitMQ loop does, and ends once nothing is left — every batch acked, no retry parked.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::handle::{Handled, handle};
use super::settled::Settled;
use super::{Live, Progress, Until, finish};
use crate::broker::{InProcess, Inbox};
use crate::channel::Sender;
use crate::worker::{Deps, Report};

/// Runs the campaign on `queue` until it has nothing outstanding, or `shutdown` (sends in
/// flight finish and are recorded; what is parked is dropped with the queue). At most
/// `batches_in_flight` batches are handled at once, as `broker.prefetch` bounds a worker.
pub async fn run_in_process<E, P>(
    (queue, mut inbox): (Arc<InProcess>, Inbox),
    batches_in_flight: u16,
    deps: Arc<Deps<E, P>>,
    shutdown: CancellationToken,
    live: &Live,
) -> anyhow::Result<Report>
where
    E: Sender + 'static,
    P: Sender + 'static,
{
    let until = Until::Idle;
    let mut progress = Progress {
        live: live.clone(),
        ..Progress::default()
    };
    let settled = Arc::new(Settled::default());
    let mut tasks: JoinSet<Handled> = JoinSet::new();
    let room = usize::from(batches_in_flight.max(1));
    while !(tasks.is_empty() && queue.outstanding() == 0) {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = inbox.next(), if tasks.len() < room => {
                // The queue holds a sender as long as it lives: the inbox never ends first.
                let Some(message) = message else { break };
                let (queue, deps, settled) = (Arc::clone(&queue), Arc::clone(&deps), Arc::clone(&settled));
                tasks.spawn(handle(queue, deps, settled, message));
            }
            Some(done) = tasks.join_next() => {
                // A batch whose task died was never acked: the queue would wait for it forever.
                let done = done.context("A batch task of the in-process queue failed")?;
                progress.record(&until, done);
            }
        }
    }
    if !shutdown.is_cancelled() {
        info!("in-process queue empty and nothing in flight");
    }
    finish(&mut tasks, &deps, &shutdown, &mut progress, &until).await;
    Ok(progress.report)
}
