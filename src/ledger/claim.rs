//! Who may send a pair: a worker's lease, how other workers' liveness is judged, and the pure
//! decision a claim makes about a row it found.
//!
//! Liveness rests on durations measured on one clock only, never on timestamps compared across
//! hosts. A worker's lease counts from the *start* of its last successful renewal (a beat: the
//! `workers.beat` counter goes up by one) and lasts [`LEASE`]. Another worker judges it dead
//! only after it has watched that counter stand still for [`CLAIM_EXPIRES`] on its own
//! monotonic clock, and then takes over by deleting the stalled worker's row conditionally on
//! the beat it watched: a renewal that commits later finds no row and tells its worker that its
//! lease is lost. `CLAIM_EXPIRES - LEASE` is the margin that keeps a worker from starting a send
//! after its rows can be taken, however far the hosts' wall clocks are apart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::rows::{Claims, Mark, Pair};
use crate::batch::{CampaignId, UserId};
use crate::channel::Channel;

/// How often a worker renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a lease lasts after the start of its last successful renewal.
pub const LEASE: Duration = Duration::from_secs(8);
/// How long another worker watches a beat stand still before it takes that worker's rows.
pub const CLAIM_EXPIRES: Duration = Duration::from_secs(15);

/// This worker's identity in `workers` and how long it may still start sends.
pub(super) struct Lease {
    held: Mutex<Held>,
}

struct Held {
    owner: Arc<str>,
    until: Option<Instant>,
}

fn new_owner() -> Arc<str> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{:x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "sunset".into()),
        std::process::id(),
        nanos
    )
    .into()
}

impl Lease {
    pub(super) fn new() -> Lease {
        Lease {
            held: Mutex::new(Held {
                owner: new_owner(),
                until: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner name claims are made under now.
    pub(super) fn owner(&self) -> Arc<str> {
        Arc::clone(&self.lock().owner)
    }

    /// Whether a claim made under `owner` may start a send now.
    pub(super) fn valid(&self, owner: &str) -> bool {
        let held = self.lock();
        &*held.owner == owner && held.until.is_some_and(|until| Instant::now() < until)
    }

    /// `owner`'s renewal that started at `started` succeeded.
    pub(super) fn renewed(&self, owner: &str, started: Instant) {
        let mut held = self.lock();
        if &*held.owner == owner {
            held.until = Some(started + LEASE);
        }
    }

    /// `owner`'s row was gone: its rows may have been taken. Claims under it never send again;
    /// the worker goes on under a new name, to be registered.
    pub(super) fn lost(&self, owner: &str) -> Arc<str> {
        let mut held = self.lock();
        if &*held.owner == owner {
            held.owner = new_owner();
            held.until = None;
        }
        Arc::clone(&held.owner)
    }
}

/// Everything one claim needs to decide, shared with the thread or task that runs it.
#[derive(Clone)]
pub(super) struct ClaimJob {
    pub(super) campaign: CampaignId,
    pub(super) pairs: Vec<Pair>,
    /// The feedback token of each pair (email pairs, with a token key), in `pairs`' order.
    pub(super) tokens: Vec<Option<String>>,
    pub(super) owner: Arc<str>,
    pub(super) token: i64,
    /// This worker's claims still at work, as they stand when the claim decides.
    pub(super) active: Arc<Active>,
    pub(super) watch: Arc<Watch>,
}

/// What this worker has seen of other workers' beats, and since when (its own clock).
#[derive(Default)]
pub(super) struct Watch {
    seen: Mutex<HashMap<String, (i64, Instant)>>,
}

/// What a claim concludes about another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Liveness {
    /// Beating (or not watched long enough).
    Alive,
    /// Its beat stood still at this value for `CLAIM_EXPIRES`: its rows may be taken after its
    /// row is deleted at this beat.
    Stalled(i64),
    /// No row: it stopped cleanly or was taken over.
    Gone,
}

impl Watch {
    /// Judges `owner`, whose beat reads `beat` now (`None`: no row).
    pub(super) fn judge(&self, owner: &str, beat: Option<i64>) -> Liveness {
        let Some(beat) = beat else {
            return Liveness::Gone;
        };
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(owner) {
            Some((last, since)) if *last == beat => {
                if now.duration_since(*since) >= CLAIM_EXPIRES {
                    Liveness::Stalled(beat)
                } else {
                    Liveness::Alive
                }
            }
            _ => {
                seen.insert(owner.to_string(), (beat, now));
                Liveness::Alive
            }
        }
    }
}

#[cfg(test)]
impl Watch {
    /// Pretends `owner`'s beat has read `beat` since `since`.
    pub(super) fn seen_since(&self, owner: &str, beat: i64, since: Instant) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(owner.to_string(), (beat, since));
    }
}

/// A row a claim did not insert, as it found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) mark: Mark,
    pub(super) owner: Option<String>,
    pub(super) token: Option<i64>,
    pub(super) locale: String,
}

/// What a claim does with a row it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Delivered before: skip.
    Delivered,
    /// Cancelled: skip.
    Cancelled,
    /// Another live claim has it: try later.
    Held,
    /// Take it, if it is still as found (compare and set); `Some` names a stalled worker whose
    /// row must be deleted at that beat first.
    Take(Option<(String, i64)>),
    /// Ask for the owner's liveness first.
    Judge(String),
}

impl Decision {
    /// Files the pair `key` under `claims` when the claim does not take it; when it does,
    /// returns the stalled worker to evict first, if any.
    pub(super) fn settle(
        self,
        claims: &mut Claims,
        key: (UserId, Channel),
    ) -> Option<Option<(String, i64)>> {
        match self {
            Decision::Delivered => {
                claims.delivered.insert(key);
            }
            Decision::Cancelled => {
                claims.cancelled.insert(key);
            }
            Decision::Held | Decision::Judge(_) => {
                claims.held.insert(key);
            }
            Decision::Take(evict) => return Some(evict),
        }
        None
    }
}

/// Decides about `found` for a claim by `me`; `active` says whether a claim of this worker is
/// still at work (asked at decision time: a claim made meanwhile by another batch counts),
/// `liveness` what is known of the owner (asked for with `Decision::Judge` when unknown).
pub(super) fn decide(
    found: &Found,
    me: &str,
    active: &dyn Fn(i64) -> bool,
    liveness: Option<Liveness>,
) -> Decision {
    match found.mark {
        Mark::Delivered => Decision::Delivered,
        Mark::Cancelled => Decision::Cancelled,
        // A suppressed row is taken again: the batch checks the suppression list anew, so an
        // address removed from it is sent to.
        Mark::Failed | Mark::Dead | Mark::Unknown | Mark::Held | Mark::Suppressed => {
            Decision::Take(None)
        }
        Mark::Sending => match (&found.owner, found.token) {
            (Some(owner), Some(token)) if owner == me => {
                if active(token) {
                    Decision::Held
                } else {
                    Decision::Take(None)
                }
            }
            (Some(owner), _) => match liveness {
                None => Decision::Judge(owner.clone()),
                Some(Liveness::Alive) => Decision::Held,
                Some(Liveness::Gone) => Decision::Take(None),
                Some(Liveness::Stalled(beat)) => Decision::Take(Some((owner.clone(), beat))),
            },
            (None, _) => Decision::Take(None),
        },
    }
}

/// Claims of this worker's batches still at work (their `sending` rows are not left behind).
#[derive(Default)]
pub(super) struct Active(Mutex<HashSet<i64>>);

impl Active {
    pub(super) fn insert(&self, token: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token);
    }

    pub(super) fn remove(&self, token: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
    }

    pub(super) fn contains(&self, token: i64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sending(owner: &str, token: i64) -> Found {
        Found {
            mark: Mark::Sending,
            owner: Some(owner.into()),
            token: Some(token),
            locale: "en".into(),
        }
    }

    #[test]
    fn delivered_and_cancelled_rows_are_never_taken_and_failed_ones_always() {
        let none = |_: i64| false;
        let row = |mark| Found {
            mark,
            owner: None,
            token: None,
            locale: "en".into(),
        };
        assert_eq!(
            decide(&row(Mark::Delivered), "me", &none, None),
            Decision::Delivered
        );
        assert_eq!(
            decide(&row(Mark::Cancelled), "me", &none, None),
            Decision::Cancelled
        );
        for mark in [
            Mark::Failed,
            Mark::Dead,
            Mark::Unknown,
            Mark::Held,
            Mark::Suppressed,
        ] {
            assert_eq!(decide(&row(mark), "me", &none, None), Decision::Take(None));
        }
    }

    #[test]
    fn a_row_of_another_worker_is_taken_only_once_it_has_stalled_or_gone() {
        let none = |_: i64| false;
        let row = sending("other", 1);
        assert_eq!(
            decide(&row, "me", &none, None),
            Decision::Judge("other".into())
        );
        assert_eq!(
            decide(&row, "me", &none, Some(Liveness::Alive)),
            Decision::Held
        );
        assert_eq!(
            decide(&row, "me", &none, Some(Liveness::Gone)),
            Decision::Take(None)
        );
        assert_eq!(
            decide(&row, "me", &none, Some(Liveness::Stalled(7))),
            Decision::Take(Some(("other".into(), 7)))
        );
        let set = HashSet::from([1]);
        let active = |t: i64| set.contains(&t);
        assert_eq!(
            decide(&sending("me", 1), "me", &active, None),
            Decision::Held
        );
        assert_eq!(
            decide(&sending("me", 2), "me", &active, None),
            Decision::Take(None)
        );
    }

    #[test]
    fn a_beat_that_moves_keeps_its_worker_alive_and_a_first_sight_never_judges_it_dead() {
        let watch = Watch::default();
        assert_eq!(watch.judge("w", None), Liveness::Gone);
        assert_eq!(watch.judge("w", Some(3)), Liveness::Alive);
        assert_eq!(watch.judge("w", Some(3)), Liveness::Alive);
        {
            let mut seen = watch.seen.lock().expect("lock");
            let since = Instant::now()
                .checked_sub(CLAIM_EXPIRES)
                .expect("monotonic clock past CLAIM_EXPIRES");
            seen.insert("w".into(), (3, since));
        }
        assert_eq!(watch.judge("w", Some(3)), Liveness::Stalled(3));
        assert_eq!(watch.judge("w", Some(4)), Liveness::Alive, "it beat again");
    }

    #[test]
    fn a_lease_is_valid_from_a_renewal_for_its_owner_only_and_a_lost_one_takes_a_new_name() {
        let lease = Lease::new();
        let owner = lease.owner();
        assert!(!lease.valid(&owner), "not renewed yet");
        lease.renewed(&owner, Instant::now());
        assert!(lease.valid(&owner));
        let old = Instant::now().checked_sub(LEASE).expect("clock");
        lease.renewed(&owner, old);
        assert!(!lease.valid(&owner), "expired");
        let next = lease.lost(&owner);
        assert_ne!(next, owner);
        lease.renewed(&next, Instant::now());
        assert!(lease.valid(&next));
        assert!(
            !lease.valid(&owner),
            "claims under the old name never send again"
        );
    }
}
