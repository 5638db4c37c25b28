//! The delivery ledger: who was told, on which channel, and when — in SQLite or PostgreSQL.
//!
//! Before a batch is sent its recipient × channel pairs are *claimed*: a pair already delivered
//! is skipped, a pair another live worker holds is left to it, and every other pair is marked
//! `sending` under this worker's name and the claim's token. A send starts only while the
//! worker's lease holds (see [`claim`]); its outcome is written only where the row still carries
//! the claim's name and token, and before the send's slot (`worker.concurrency`) is given back,
//! so a worker killed or stalled at any moment duplicates at most the sends it had in flight.
//! Outcomes that cannot be written are kept and written when the database is back; meanwhile
//! no send starts. `status` reads counters kept beside the rows, never the rows themselves.

mod claim;
mod error;
mod postgres;
mod postgres_campaigns;
mod postgres_claims;
mod postgres_feedback;
#[cfg(test)]
mod report_tests;
mod reports;
mod rows;
mod sqlite;
mod sqlite_campaigns;
mod sqlite_claims;
mod sqlite_feedback;
mod status;
mod store;
mod suppressions;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::CampaignId;
use crate::channel::Channel;
use crate::secret::redact;
use crate::token::TokenKey;
use claim::{Active, ClaimJob, HEARTBEAT, Lease, Watch};
use rows::Fenced;
use store::Store;
use writer::{Waiting, write_outcomes};

pub use error::LedgerError;
pub use reports::{Feedback, PAUSE_MIN_DELIVERED, ReportEffect, TokenRecipient};
pub use rows::{Campaign, CampaignState, Claims, Entry, Mark, Pair, Recorded};
pub use status::{Counts, Status};
pub use suppressions::Suppression;

/// How long a campaign's state is trusted before it is read again.
const STATE_TTL: Duration = Duration::from_secs(1);
/// How long a worker waits for its ledger before it starts consuming.
const WARM_UP_LIMIT: Duration = Duration::from_secs(3);

/// The ledger of one process: its database, this worker's lease and the outcome writer.
pub struct Ledger {
    store: Arc<Store>,
    url: String,
    ready: OnceCell<()>,
    lease: Lease,
    watch: Arc<Watch>,
    active: Arc<Active>,
    tokens: AtomicI64,
    states: Mutex<HashMap<CampaignId, (CampaignState, Instant)>>,
    writes: mpsc::UnboundedSender<Waiting>,
    /// Outcomes wait for a database that refuses them: no send starts meanwhile.
    backlog: Arc<AtomicBool>,
    /// `feedback.secret_file`'s key: claims store each email pair's feedback token.
    token_key: OnceLock<TokenKey>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Ledger {
    /// A ledger on `url`. Nothing is connected yet: the first query connects and creates or
    /// updates the schema, so a worker starts even while its database is away.
    pub fn open(url: &str) -> Result<Arc<Ledger>, LedgerError> {
        let store = if let Some(path) = url.strip_prefix("sqlite:") {
            Store::Sqlite(sqlite::Store::open(path)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(Box::new(postgres::Store::open(url)?))
        } else {
            return Err(LedgerError::Url(redact(url)));
        };
        let store = Arc::new(store);
        let backlog = Arc::new(AtomicBool::new(false));
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_outcomes(
            Arc::clone(&store),
            Arc::clone(&backlog),
            queue,
        ));
        Ok(Arc::new(Ledger {
            store,
            url: redact(url),
            ready: OnceCell::new(),
            lease: Lease::new(),
            watch: Arc::default(),
            active: Arc::default(),
            tokens: AtomicI64::new(1),
            states: Mutex::default(),
            writes,
            backlog,
            token_key: OnceLock::new(),
        }))
    }

    /// Claims store, from now on, each email pair's feedback token made with `key`, so that
    /// [`Ledger::recipient_of`] finds the recipient of a bounce or unsubscribe. Set once: a
    /// second key is ignored (a process has one `feedback.secret_file`).
    pub fn use_token_key(&self, key: TokenKey) {
        let _ = self.token_key.set(key);
    }

    /// The URL, with any password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema in place and this worker registered with a fresh lease.
    async fn ready(&self) -> Result<(), LedgerError> {
        self.ready
            .get_or_try_init(|| async {
                // Two processes creating a fresh SQLite file race on the migrations table; the
                // loser finds the schema there on its next try.
                let mut tries = 0;
                loop {
                    match self.store.migrate().await {
                        Ok(()) => break,
                        Err(e) if tries < 3 => {
                            tries += 1;
                            warn!(error = %e, "ledger schema not ready; trying again");
                            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let owner = self.lease.owner();
                let started = Instant::now();
                self.store.register(&owner).await?;
                self.lease.renewed(&owner, started);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Connects, creates or updates the schema and registers this worker, waiting at most
    /// `WARM_UP_LIMIT`: a worker calls it before it consumes, so its first batches do not wait
    /// for all that. A ledger not ready is only logged: each batch holds back while it is away.
    pub async fn warm_up(&self) {
        let ready = async {
            self.ready().await?;
            self.store.warm().await
        };
        match tokio::time::timeout(WARM_UP_LIMIT, ready).await {
            Ok(Ok(())) => info!(ledger = %self.url, "ledger ready"),
            Ok(Err(e)) => warn!(error = %e, "ledger not ready; batches hold back while it is away"),
            Err(_) => warn!(
                limit = ?WARM_UP_LIMIT,
                "ledger not ready in time; batches hold back while it is away"
            ),
        }
    }

    /// Renews this worker's lease every `HEARTBEAT` (on a connection of its own) until
    /// `shutdown`; then removes the worker, so what it still claims is free at once. A renewal
    /// that finds the worker's row gone means another worker took its rows: the worker goes on
    /// under a new name, and claims made under the old one never start a send again.
    pub fn spawn_heartbeat(
        self: &Arc<Ledger>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let ledger = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if ledger.ready.initialized() {
                    ledger.beat().await;
                }
            }
            if ledger.ready.initialized()
                && let Err(e) = ledger.store.retire(&ledger.lease.owner()).await
            {
                warn!(error = %e, "could not remove this worker from the ledger");
            }
        })
    }

    async fn beat(&self) {
        let owner = self.lease.owner();
        let started = Instant::now();
        match self.store.renew(&owner).await {
            Ok(true) => self.lease.renewed(&owner, started),
            Ok(false) => {
                let next = self.lease.lost(&owner);
                warn!(
                    old = %owner,
                    new = %next,
                    "this worker's rows were taken over while it stalled; going on under a new name"
                );
                let started = Instant::now();
                match self.store.register(&next).await {
                    Ok(()) => self.lease.renewed(&next, started),
                    Err(e) => warn!(error = %e, "could not register this worker again"),
                }
            }
            Err(e) => {
                warn!(error = %e, "ledger heartbeat failed; no send starts once the lease runs out")
            }
        }
    }

    /// Records a campaign and its planned sends (again on a second `enqueue`: the totals are
    /// replaced, the state is kept).
    pub async fn record_campaign(&self, campaign: &Campaign) -> Result<(), LedgerError> {
        self.ready().await?;
        self.store.record_campaign(campaign).await
    }

    /// Pauses, resumes or cancels a campaign. A cancelled campaign stays cancelled.
    pub async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        self.ready().await?;
        let current = self
            .store
            .state(campaign)
            .await?
            .ok_or_else(|| LedgerError::UnknownCampaign(campaign.clone()))?;
        if current == CampaignState::Cancelled && state != CampaignState::Cancelled {
            return Err(LedgerError::Cancelled(campaign.clone()));
        }
        self.store.set_state(campaign, state).await?;
        info!(%campaign, from = current.as_str(), to = state.as_str(), "campaign state changed");
        Ok(())
    }

    /// A campaign's state as workers see it, read at most `STATE_TTL` ago. A campaign the
    /// ledger does not know (its batches published by other means) is recorded as it is first
    /// seen, with `template`, so that `status` and `campaign pause|resume|cancel` work for it.
    pub async fn state(
        &self,
        campaign: &CampaignId,
        template: &str,
    ) -> Result<CampaignState, LedgerError> {
        {
            let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((state, read)) = states.get(campaign)
                && read.elapsed() < STATE_TTL
            {
                return Ok(*state);
            }
        }
        self.ready().await?;
        let read = Instant::now();
        let state = match self.store.state(campaign).await? {
            Some(state) => state,
            None => {
                self.store.first_sight(campaign, template).await?;
                info!(%campaign, "campaign first seen in a batch; recorded in the ledger");
                CampaignState::Running
            }
        };
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(campaign.clone(), (state, read));
        Ok(state)
    }

    /// Claims `pairs` of `campaign` for this worker (each pair once, however often it is
    /// listed); returns the pairs it did not get.
    pub async fn claim(
        &self,
        campaign: &CampaignId,
        pairs: &[Pair],
    ) -> Result<Claims, LedgerError> {
        self.ready().await?;
        let owner = self.lease.owner();
        if !self.lease.valid(&owner) {
            return Err(LedgerError::NoLease);
        }
        let mut seen = HashSet::with_capacity(pairs.len());
        let pairs: Vec<Pair> = pairs
            .iter()
            .filter(|p| seen.insert((&p.user_id, p.channel)))
            .cloned()
            .collect();
        let tokens = pairs
            .iter()
            .map(|p| match (self.token_key.get(), p.channel, &p.address) {
                (Some(key), Channel::Email, Some(_)) => {
                    Some(key.token(campaign, &p.user_id, Channel::Email).to_string())
                }
                _ => None,
            })
            .collect();
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let job = ClaimJob {
            campaign: campaign.clone(),
            pairs,
            tokens,
            owner,
            token,
            active: Arc::clone(&self.active),
            watch: Arc::clone(&self.watch),
        };
        self.active.insert(token);
        let claims = self.store.claim(job).await;
        if claims.is_err() {
            self.active.remove(token);
        }
        claims
    }

    /// Whether a send under `claims` may start now: the lease it was made under holds and no
    /// outcome waits for the database.
    pub fn may_send(&self, claims: &Claims) -> bool {
        self.lease.valid(&claims.owner) && !self.backlog.load(Ordering::Relaxed)
    }

    /// Done with a claim: rows it left `sending` may be claimed again.
    pub fn finished(&self, token: i64) {
        self.active.remove(token);
    }

    /// Records one outcome under `claims`; returns once it is committed (grouped with others
    /// waiting). While the database refuses it the outcome is kept and tried again.
    pub async fn record(&self, claims: &Claims, entry: Entry) -> Result<Recorded, LedgerError> {
        let (done, written) = oneshot::channel();
        self.writes
            .send(Waiting {
                outcome: Fenced {
                    entry,
                    owner: Arc::clone(&claims.owner),
                    token: claims.token,
                },
                done,
            })
            .map_err(|_| LedgerError::Stopped)?;
        written
            .await
            .map_err(|_| LedgerError::Stopped)?
            .map_err(LedgerError::Record)
    }

    /// Records many outcomes under `claims` (a cancelled batch, notices that did not render).
    pub async fn record_all(
        &self,
        claims: &Claims,
        entries: Vec<Entry>,
    ) -> Result<Vec<Recorded>, LedgerError> {
        futures::future::try_join_all(entries.into_iter().map(|e| self.record(claims, e))).await
    }

    /// Failed pairs that will not be retried (attempts exhausted, deadline) are dead now.
    pub async fn give_up(&self, entries: Vec<Entry>) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.ready().await?;
        self.store.give_up(entries).await
    }

    /// Counts for `status`.
    pub async fn status(&self, campaign: &CampaignId) -> Result<Status, LedgerError> {
        self.ready().await?;
        status::build(campaign, self.store.snapshot(campaign).await?)
    }

    /// Every recorded campaign's counts, oldest first.
    pub async fn campaigns(&self) -> Result<Vec<Status>, LedgerError> {
        self.ready().await?;
        let mut all = Vec::new();
        for id in self.store.campaign_ids().await? {
            let campaign = CampaignId::parse(&id)
                .map_err(|e| LedgerError::Corrupt(format!("campaign id `{id}`: {e}")))?;
            all.push(self.status(&campaign).await?);
        }
        Ok(all)
    }

    /// Removes this process from `workers` (a command such as `status` registers too) and
    /// closes the database.
    pub async fn close(&self) {
        if self.ready.initialized()
            && let Err(e) = self.store.retire(&self.lease.owner()).await
        {
            warn!(error = %e, "could not remove this process from the ledger's workers");
        }
        self.store.close().await;
    }
}
