//! The delivery ledger: who was told, on which channel, and when — in SQLite or PostgreSQL.
//!
//! Before a batch is sent its recipient × channel pairs are *claimed* in one statement: a pair
//! already delivered is skipped, a pair another live worker is sending is left to it, and every
//! other pair is marked `sending` by this worker. Each send's outcome is written right after the
//! send, grouped with the outcomes that arrive within half a millisecond into one
//! statement; the send's slot (`worker.concurrency`) is held until its row is written, so a
//! worker killed at any moment leaves at most `worker.concurrency` sends done but not recorded.
//! A claim of a worker that stopped beating (killed) expires after `CLAIM_EXPIRES`.

mod deliveries;
mod status;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::{CampaignId, UserId};
use crate::broker::redact;
use crate::channel::Channel;

pub use status::{Counts, Status};

/// How often a worker tells the ledger it is alive.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// A claim whose worker has not beaten for this long is free to take (the worker died).
pub const CLAIM_EXPIRES: Duration = Duration::from_secs(15);
/// How long a campaign's state is trusted before it is read again.
const STATE_TTL: Duration = Duration::from_secs(2);
/// Connections a worker opens at start (at most the pool's size), enough for the claims of its
/// first batches and the outcome writer; more open on demand.
const WARM_CONNECTIONS: u32 = 4;
/// How long a worker waits for its ledger before it starts consuming.
const WARM_UP_LIMIT: Duration = Duration::from_secs(3);
/// How long a query waits for a connection before the ledger counts as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database refused or could not be reached.
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be created or updated.
    #[error("ledger schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `ledger.url` is neither `sqlite:` nor `postgres:`.
    #[error("ledger.url `{0}`: expected sqlite://FILE or postgres://…")]
    Url(String),
    /// No such campaign in the ledger.
    #[error(
        "campaign `{0}` is not in the ledger (it is recorded by `sunset enqueue` or `sunset send`)"
    )]
    UnknownCampaign(CampaignId),
    /// A cancelled campaign stays cancelled.
    #[error("campaign `{0}` is cancelled; it cannot be paused or resumed")]
    Cancelled(CampaignId),
    /// An outcome could not be written even after retrying.
    #[error("could not record the outcome: {0}")]
    Record(String),
    /// A value in the database is not one sunset writes.
    #[error("unexpected value in the ledger: {0}")]
    Corrupt(String),
}

impl LedgerError {
    /// Whether the user must fix the command or config (exit 2), not wait for the database.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LedgerError::Url(_) | LedgerError::UnknownCampaign(_) | LedgerError::Cancelled(_)
        )
    }
}

/// Whether a campaign's batches are sent, held back or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignState {
    /// Sending.
    Running,
    /// Batches go back to a delay queue until resumed.
    Paused,
    /// Batches are acked and their recipients recorded as cancelled; nothing more is sent.
    Cancelled,
}

impl CampaignState {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Cancelled => "cancelled",
        }
    }
}

impl FromStr for CampaignState {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<CampaignState, LedgerError> {
        match s {
            "running" => Ok(CampaignState::Running),
            "paused" => Ok(CampaignState::Paused),
            "cancelled" => Ok(CampaignState::Cancelled),
            other => Err(LedgerError::Corrupt(format!("campaign state `{other}`"))),
        }
    }
}

/// Where a recipient × channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mark {
    /// Claimed by a worker that is sending it now.
    Sending,
    /// Accepted by the relay or gateway.
    Delivered,
    /// Failed for now; a retry is scheduled.
    Failed,
    /// Dead-lettered: permanent failure, attempts exhausted or deadline.
    Dead,
    /// Not sent because the campaign was cancelled.
    Cancelled,
}

impl Mark {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Sending => "sending",
            Mark::Delivered => "delivered",
            Mark::Failed => "failed",
            Mark::Dead => "dead",
            Mark::Cancelled => "cancelled",
        }
    }
}

impl FromStr for Mark {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Mark, LedgerError> {
        match s {
            "sending" => Ok(Mark::Sending),
            "delivered" => Ok(Mark::Delivered),
            "failed" => Ok(Mark::Failed),
            "dead" => Ok(Mark::Dead),
            "cancelled" => Ok(Mark::Cancelled),
            other => Err(LedgerError::Corrupt(format!("delivery status `{other}`"))),
        }
    }
}

/// One recipient × channel of a batch, with the template locale it is (to be) sent in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The recipient.
    pub user_id: UserId,
    /// The channel.
    pub channel: Channel,
    /// The negotiated template locale (`-` when the notice could not be rendered).
    pub locale: String,
}

/// One outcome to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The campaign.
    pub campaign: CampaignId,
    /// Recipient, channel and locale.
    pub pair: Pair,
    /// The new status (never `Sending`).
    pub mark: Mark,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// What a claim found: the pairs it did not get. Every other pair is now this worker's to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Delivered before: skip, count as delivered.
    pub delivered: HashSet<(UserId, Channel)>,
    /// Being sent by another live worker (or by another copy of the batch here): try later.
    pub held: HashSet<(UserId, Channel)>,
    /// Recorded as cancelled: skip.
    pub cancelled: HashSet<(UserId, Channel)>,
    /// Which claim this was; `Ledger::finished` when the batch is done with it.
    pub token: i64,
}

impl Claims {
    /// Whether every pair is this worker's to send.
    pub fn all_ours(&self) -> bool {
        self.delivered.is_empty() && self.held.is_empty() && self.cancelled.is_empty()
    }
}

/// A campaign as `enqueue` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Its id.
    pub id: CampaignId,
    /// The template it uses.
    pub template: String,
    /// Recipients enqueued.
    pub recipients: u64,
    /// Nothing is sent after it.
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Sends planned per channel and template locale.
    pub totals: HashMap<(Channel, String), u64>,
}

struct Waiting {
    entry: Entry,
    done: oneshot::Sender<Result<(), String>>,
}

/// The ledger of one process: a pool, this worker's identity and the outcome writer.
pub struct Ledger {
    pool: AnyPool,
    /// SQLite (else PostgreSQL).
    sqlite: bool,
    url: String,
    schema: OnceCell<()>,
    /// This process's id in `workers`, which its claims name.
    owner: String,
    /// Numbers this process's claims.
    tokens: AtomicI64,
    /// Claims of batches still being processed here. A `sending` row of this worker under any
    /// other token was left behind (its outcome could not be written): a new claim takes it.
    active: Mutex<HashSet<i64>>,
    states: Mutex<HashMap<CampaignId, (CampaignState, Instant)>>,
    writes: mpsc::UnboundedSender<Waiting>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `sqlite://FILE` gains `mode=rwc` so the file is created on first use.
fn connect_url(url: &str) -> Result<String, LedgerError> {
    if url.starts_with("sqlite:") {
        if url.contains("mode=") {
            Ok(url.to_string())
        } else if url.contains('?') {
            Ok(format!("{url}&mode=rwc"))
        } else {
            Ok(format!("{url}?mode=rwc"))
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_string())
    } else {
        Err(LedgerError::Url(redact(url)))
    }
}

fn migrator() -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "ledger",
            include_str!("../../migrations/0001_ledger.sql"),
        ),
        migration(
            2,
            "no status index",
            include_str!("../../migrations/0002_no_status_index.sql"),
        ),
        migration(
            3,
            "claim token",
            include_str!("../../migrations/0003_claim_token.sql"),
        ),
    ])
}

impl Ledger {
    /// A ledger on `url`. Nothing is connected yet: the first query connects and creates or
    /// updates the schema, so a worker starts even while its database is away.
    pub fn open(url: &str) -> Result<Arc<Ledger>, LedgerError> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // One SQLite connection: writes are serialised by SQLite anyway, and its page cache
            // stays warm (each connection's cache is dropped whenever another one writes).
            .max_connections(if sqlite { 1 } else { 8 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers (`status`) never block the writers; NORMAL survives a
                        // killed process (only a power cut can lose the last commits).
                        sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
                        )
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(&connect_url(url)?)?;
        let owner = format!(
            "{}-{}-{:x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "sunset".into()),
            std::process::id(),
            now_ms()
        );
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(deliveries::write_outcomes(pool.clone(), sqlite, queue));
        Ok(Arc::new(Ledger {
            pool,
            sqlite,
            url: redact(url),
            schema: OnceCell::new(),
            owner,
            tokens: AtomicI64::new(1),
            active: Mutex::default(),
            states: Mutex::default(),
            writes,
        }))
    }

    /// The URL, with any password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool, once the schema is in place and this worker is in `workers`.
    async fn pool(&self) -> Result<&AnyPool, LedgerError> {
        self.schema
            .get_or_try_init(|| async {
                let migrator = migrator();
                // Two processes creating a fresh SQLite file race on the migrations table; the
                // loser finds the schema there on its next try.
                let mut tries = 0;
                loop {
                    match migrator.run(&self.pool).await {
                        Ok(()) => break,
                        Err(e) if tries < 3 => {
                            tries += 1;
                            warn!(error = %e, "ledger schema not ready; trying again");
                            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                        }
                        Err(e) => return Err(LedgerError::from(e)),
                    }
                }
                self.beat().await
            })
            .await?;
        Ok(&self.pool)
    }

    async fn beat(&self) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO workers (id, seen_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(self.owner.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Connects, creates or updates the schema, registers this worker and opens
    /// `WARM_CONNECTIONS`, waiting at most `WARM_UP_LIMIT`: a worker calls it before it
    /// consumes, so its first batches do not wait for all that (on PostgreSQL the first four
    /// claims of a fresh worker took 170–330 ms instead of 7). A ledger not ready is only
    /// logged: the worker consumes anyway, and each batch holds back while the ledger is away.
    pub async fn warm_up(&self) {
        let ready = async {
            let pool = self.pool().await?;
            let wanted = pool.options().get_max_connections().min(WARM_CONNECTIONS);
            let connections =
                futures::future::try_join_all((0..wanted).map(|_| pool.acquire())).await?;
            drop(connections);
            Ok::<_, LedgerError>(())
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

    /// Tells the ledger every `HEARTBEAT` that this worker is alive, until `shutdown`; then
    /// removes it, so what it still claims (nothing, after a clean stop) is free at once.
    pub fn spawn_heartbeat(
        self: &Arc<Ledger>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let ledger = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if ledger.schema.initialized()
                    && let Err(e) = ledger.beat().await
                {
                    warn!(error = %e, "ledger heartbeat failed");
                }
            }
            if ledger.schema.initialized() {
                let gone = sqlx::query("DELETE FROM workers WHERE id = $1")
                    .bind(ledger.owner.as_str())
                    .execute(&ledger.pool)
                    .await;
                if let Err(e) = gone {
                    warn!(error = %e, "could not remove this worker from the ledger");
                }
            }
        })
    }

    /// Records a campaign and its planned sends (again on a second `enqueue`: the totals are
    /// replaced, the state is kept).
    pub async fn record_campaign(&self, campaign: &Campaign) -> Result<(), LedgerError> {
        let pool = self.pool().await?;
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
             VALUES ($1, $2, $3, $4, 'running', $5)
             ON CONFLICT (id) DO UPDATE SET template = excluded.template,
                 recipients = excluded.recipients, deadline = excluded.deadline",
        )
        .bind(campaign.id.as_str())
        .bind(campaign.template.as_str())
        .bind(campaign.recipients as i64)
        .bind(campaign.deadline.map(|d| d.to_rfc3339()))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM campaign_totals WHERE campaign_id = $1")
            .bind(campaign.id.as_str())
            .execute(&mut *tx)
            .await?;
        for ((channel, locale), total) in &campaign.totals {
            sqlx::query(
                "INSERT INTO campaign_totals (campaign_id, channel, locale, total) VALUES ($1, $2, $3, $4)",
            )
            .bind(campaign.id.as_str())
            .bind(channel.as_str())
            .bind(locale.as_str())
            .bind(*total as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pauses, resumes or cancels a campaign. A cancelled campaign stays cancelled.
    pub async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        let pool = self.pool().await?;
        let current = sqlx::query("SELECT state FROM campaigns WHERE id = $1")
            .bind(campaign.as_str())
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| LedgerError::UnknownCampaign(campaign.clone()))?;
        let current: CampaignState = current.try_get::<String, _>(0)?.parse()?;
        if current == CampaignState::Cancelled && state != CampaignState::Cancelled {
            return Err(LedgerError::Cancelled(campaign.clone()));
        }
        sqlx::query("UPDATE campaigns SET state = $2 WHERE id = $1")
            .bind(campaign.as_str())
            .bind(state.as_str())
            .execute(pool)
            .await?;
        info!(%campaign, from = current.as_str(), to = state.as_str(), "campaign state changed");
        Ok(())
    }

    /// A campaign's state as workers see it: read at most every `STATE_TTL`; a campaign the
    /// ledger does not know (published by other means) runs.
    pub async fn state(&self, campaign: &CampaignId) -> Result<CampaignState, LedgerError> {
        {
            let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((state, read)) = states.get(campaign)
                && read.elapsed() < STATE_TTL
            {
                return Ok(*state);
            }
        }
        let row = sqlx::query("SELECT state FROM campaigns WHERE id = $1")
            .bind(campaign.as_str())
            .fetch_optional(self.pool().await?)
            .await?;
        let state = match row {
            Some(row) => row.try_get::<String, _>(0)?.parse()?,
            None => CampaignState::Running,
        };
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(campaign.clone(), (state, Instant::now()));
        Ok(state)
    }

    /// Counts for `status`.
    pub async fn status(&self, campaign: &CampaignId) -> Result<Status, LedgerError> {
        status::read(self.pool().await?, campaign, now_ms()).await
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn pair(user: &str, channel: Channel) -> Pair {
        Pair {
            user_id: UserId::parse(user).expect("user id"),
            channel,
            locale: "en".into(),
        }
    }

    pub(super) fn entry(campaign: &CampaignId, user: &str, mark: Mark) -> Entry {
        Entry {
            campaign: campaign.clone(),
            pair: pair(user, Channel::Email),
            mark,
            error: None,
        }
    }

    pub(super) async fn sqlite() -> (tempfile::TempDir, Arc<Ledger>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        (dir, Ledger::open(&url).expect("open"))
    }

    #[test]
    fn sqlite_urls_create_the_file_and_other_schemes_are_refused_without_their_password() {
        assert_eq!(
            connect_url("sqlite://l.db").expect("ok"),
            "sqlite://l.db?mode=rwc"
        );
        assert_eq!(
            connect_url("sqlite://l.db?cache=shared").expect("ok"),
            "sqlite://l.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            connect_url("sqlite://l.db?mode=ro").expect("ok"),
            "sqlite://l.db?mode=ro"
        );
        assert!(connect_url("postgres://u@h/db").is_ok());
        let refused = connect_url("mysql://root:hunter2@db/x").expect_err("refused");
        assert!(refused.is_usage());
        assert!(!refused.to_string().contains("hunter2"), "{refused}");
    }

    #[tokio::test]
    async fn campaign_state_changes_are_checked_and_a_cancelled_campaign_stays_cancelled() {
        let (_dir, ledger) = sqlite().await;
        let campaign = CampaignId::parse("c").expect("id");
        assert!(matches!(
            ledger.set_state(&campaign, CampaignState::Paused).await,
            Err(LedgerError::UnknownCampaign(_))
        ));
        assert_eq!(
            ledger.state(&campaign).await.expect("state"),
            CampaignState::Running,
            "a campaign the ledger does not know runs"
        );
        ledger
            .record_campaign(&Campaign {
                id: campaign.clone(),
                template: "t".into(),
                recipients: 2,
                deadline: None,
                totals: HashMap::from([((Channel::Email, "en".to_string()), 2)]),
            })
            .await
            .expect("record");
        ledger
            .set_state(&campaign, CampaignState::Cancelled)
            .await
            .expect("cancel");
        assert!(matches!(
            ledger.set_state(&campaign, CampaignState::Running).await,
            Err(LedgerError::Cancelled(_))
        ));
        let status = ledger.status(&campaign).await.expect("status");
        assert_eq!(
            status.recorded,
            Some(("t".to_string(), CampaignState::Cancelled, 2))
        );
        assert_eq!(status.total().pending(), 2);
    }
}
