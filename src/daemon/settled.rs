//! The messages this process has settled, by message id: what a redelivery after a lost ack
//! still owes, so a process never sends a pair twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::batch::UserId;
use crate::broker::Message;
use crate::channel::Channel;

/// Messages this process has processed, by message id: the pairs already delivered, and
/// whether what they owed was published. After a connection loss lapin may report an ack as
/// done that the broker never got, and the broker redelivers the message: a redelivery of a
/// settled message is only acked, and a half-done one skips its delivered pairs, so this
/// process never sends twice. (Across processes the delivery ledger does this.) The key is the
/// message, not the batch: a batch held back or retried is published anew with the same body
/// and attempt, and that copy is new work even when it, too, comes redelivered.
#[derive(Default)]
pub(super) struct Settled(Mutex<HashMap<u64, Settlement>>);

#[derive(Default, Clone)]
pub(super) struct Settlement {
    pub(super) delivered: HashSet<(UserId, Channel)>,
    pub(super) owed_published: bool,
    since: Option<Instant>,
}

/// How long a processed batch is remembered.
const SETTLED_TTL: Duration = Duration::from_secs(3600);
/// Entries kept before expired ones are swept (about 100 bytes each when settled).
const SETTLED_SWEEP_AT: usize = 50_000;

impl Settled {
    /// The message id every sunset publish sets; body and attempt for a message without one.
    pub(super) fn key<R>(message: &Message<R>) -> u64 {
        let mut hasher = DefaultHasher::new();
        match &message.id {
            Some(id) => id.hash(&mut hasher),
            None => {
                message.body.hash(&mut hasher);
                message.attempt.hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    pub(super) fn get(&self, key: u64) -> Settlement {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key).cloned().unwrap_or_default()
    }

    /// Records delivered pairs; once `owed_published`, the pairs are no longer needed.
    pub(super) fn record(&self, key: u64, delivered: &[(UserId, Channel)], owed_published: bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SETTLED_SWEEP_AT {
            map.retain(|_, s| s.since.is_some_and(|since| since.elapsed() < SETTLED_TTL));
        }
        let entry = map.entry(key).or_default();
        entry.since.get_or_insert_with(Instant::now);
        if owed_published {
            entry.owed_published = true;
            entry.delivered = HashSet::new();
        } else {
            entry.delivered.extend(delivered.iter().cloned());
        }
    }
}
