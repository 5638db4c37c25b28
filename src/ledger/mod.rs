//! The delivery ledger: who was told, on which channel, and when — in SQLite or PostgreSQL.
//!
//! Before a batch is sent its recipient × channel pairs are *claimed* in one statement: a pair
//! already delivered is skipped, a pair another live worker is sending is left to it, and every
//! other pair is marked `sending` by this worker. Each send's outcome is written right after the
//! send, grouped with whatever other outcomes are waiting into one transaction; the send's slot
//! (`worker.concurrency`) is held until its row is written, so a worker killed at any moment
//! leaves at most `worker.concurrency` sends done but not recorded. A claim of a worker that
//! stopped beating (killed) expires after `CLAIM_EXPIRES`.

mod status;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};
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
/// How long a query waits for a connection before the ledger counts as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Outcomes written in one transaction at most.
const MAX_GROUP: usize = 512;
/// Rows per multi-row statement (bind parameters stay well under SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 200;
/// How long the writer keeps trying to record outcomes when the database is away.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

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

/// Bind-parameter markers for statements built at run time: `$1`, `$2`… for PostgreSQL,
/// anonymous `?` for SQLite (it looks numbered markers up by name, one scan each: quadratic in a
/// statement of a thousand parameters). Values are bound in marker order either way.
struct Markers {
    anonymous: bool,
    next: usize,
}

impl Markers {
    fn new(sqlite: bool) -> Markers {
        Markers {
            anonymous: sqlite,
            next: 1,
        }
    }

    fn take(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.next += 1;
                if self.anonymous {
                    "?".to_string()
                } else {
                    format!("${}", self.next - 1)
                }
            })
            .collect()
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
        tokio::spawn(write_outcomes(pool.clone(), sqlite, queue));
        Ok(Arc::new(Ledger {
            pool,
            sqlite,
            url: redact(url),
            schema: OnceCell::new(),
            owner,
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

    /// Claims `pairs` of `campaign` for this worker; returns the pairs it did not get.
    pub async fn claim(
        &self,
        campaign: &CampaignId,
        pairs: &[Pair],
    ) -> Result<Claims, LedgerError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let expired = now - CLAIM_EXPIRES.as_millis() as i64;
        let mut claimed: HashSet<(String, String)> = HashSet::with_capacity(pairs.len());
        for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
            let mut markers = Markers::new(self.sqlite);
            let values: Vec<String> = (0..chunk.len())
                .map(|_| {
                    let row = markers.take(6);
                    format!(
                        "({}, {}, {}, {}, 'sending', 0, {}, {})",
                        row[0], row[1], row[2], row[3], row[4], row[5]
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, updated_at)
                 VALUES {}
                 ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
                 SET status = 'sending', owner = excluded.owner, updated_at = excluded.updated_at
                 WHERE deliveries.status IN ('failed', 'dead')
                    OR (deliveries.status = 'sending' AND NOT EXISTS (
                        SELECT 1 FROM workers WHERE workers.id = deliveries.owner AND workers.seen_at > {}))
                 RETURNING user_id, channel",
                values.join(", "),
                markers.take(1)[0]
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for pair in chunk {
                query = query
                    .bind(campaign.as_str())
                    .bind(pair.user_id.as_str())
                    .bind(pair.channel.as_str())
                    .bind(pair.locale.as_str())
                    .bind(self.owner.as_str())
                    .bind(now);
            }
            for row in query.bind(expired).fetch_all(pool).await? {
                claimed.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        let mut claims = Claims::default();
        let missed: Vec<&Pair> = pairs
            .iter()
            .filter(|p| {
                !claimed.contains(&(
                    p.user_id.as_str().to_string(),
                    p.channel.as_str().to_string(),
                ))
            })
            .collect();
        if missed.is_empty() {
            return Ok(claims);
        }
        let marks = self.marks(campaign, &missed).await?;
        for pair in missed {
            let key = (pair.user_id.clone(), pair.channel);
            match marks.get(&key) {
                Some(Mark::Delivered) => claims.delivered.insert(key),
                Some(Mark::Cancelled) => claims.cancelled.insert(key),
                _ => claims.held.insert(key),
            };
        }
        Ok(claims)
    }

    /// The current status of `pairs`.
    async fn marks(
        &self,
        campaign: &CampaignId,
        pairs: &[&Pair],
    ) -> Result<HashMap<(UserId, Channel), Mark>, LedgerError> {
        let pool = self.pool().await?;
        let mut marks = HashMap::with_capacity(pairs.len());
        for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
            let mut markers = Markers::new(self.sqlite);
            let campaign_marker = markers.take(1).remove(0);
            let sql = format!(
                "SELECT user_id, channel, status FROM deliveries WHERE campaign_id = {campaign_marker} AND user_id IN ({})",
                markers.take(chunk.len()).join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(campaign.as_str());
            for pair in chunk {
                query = query.bind(pair.user_id.as_str());
            }
            for row in query.fetch_all(pool).await? {
                let user: String = row.try_get(0)?;
                let channel: String = row.try_get(1)?;
                let mark: String = row.try_get(2)?;
                let (Ok(user), Ok(channel)) = (UserId::parse(&user), channel.parse()) else {
                    return Err(LedgerError::Corrupt(format!("row {user}/{channel}")));
                };
                marks.insert((user, channel), mark.parse()?);
            }
        }
        Ok(marks)
    }

    /// Records one outcome; returns once it is committed (grouped with others waiting).
    pub async fn record(&self, entry: Entry) -> Result<(), LedgerError> {
        let (done, written) = oneshot::channel();
        self.writes
            .send(Waiting { entry, done })
            .map_err(|_| LedgerError::Record("the ledger writer has stopped".into()))?;
        written
            .await
            .map_err(|_| LedgerError::Record("the ledger writer has stopped".into()))?
            .map_err(LedgerError::Record)
    }

    /// Records many outcomes at once (a cancelled batch).
    pub async fn record_all(&self, entries: Vec<Entry>) -> Result<(), LedgerError> {
        write_entries(self.pool().await?, self.sqlite, &entries).await
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

/// The outcome writer: takes whatever outcomes are waiting (up to `MAX_GROUP`), writes them in
/// one transaction, answers each. A failed write is retried for `RECORD_PATIENCE`.
async fn write_outcomes(pool: AnyPool, sqlite: bool, mut queue: mpsc::UnboundedReceiver<Waiting>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(waiting) => group.push(waiting),
                Err(_) => break,
            }
        }
        let entries: Vec<Entry> = group.iter().map(|w| w.entry.clone()).collect();
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let result = loop {
            match write_entries(&pool, sqlite, &entries).await {
                Ok(()) => break Ok(()),
                Err(e) if started.elapsed() < RECORD_PATIENCE => {
                    warn!(error = %e, outcomes = entries.len(), "could not record outcomes; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        for waiting in group {
            let _ = waiting.done.send(result.clone());
        }
    }
}

/// Upserts outcomes in one transaction; a delivered row is never overwritten.
async fn write_entries(pool: &AnyPool, sqlite: bool, entries: &[Entry]) -> Result<(), LedgerError> {
    // One row per key in a statement (PostgreSQL refuses to update a row twice in one upsert).
    let mut latest: HashMap<(&CampaignId, &UserId, Channel), &Entry> = HashMap::new();
    for entry in entries {
        latest.insert(
            (&entry.campaign, &entry.pair.user_id, entry.pair.channel),
            entry,
        );
    }
    let rows: Vec<&Entry> = latest.into_values().collect();
    let now = now_ms();
    // Each statement commits on its own (no transaction: one round trip, and a row's outcome
    // does not depend on another's).
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut markers = Markers::new(sqlite);
        let values: Vec<String> = (0..chunk.len())
            .map(|_| format!("({}, NULL)", markers.take(8).join(", ")))
            .collect();
        let sql = format!(
            "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, last_error, updated_at, owner)
             VALUES {}
             ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
             SET status = excluded.status, locale = excluded.locale,
                 attempts = deliveries.attempts + excluded.attempts,
                 last_error = excluded.last_error, owner = NULL, updated_at = excluded.updated_at
             WHERE deliveries.status <> 'delivered'",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for entry in chunk {
            let attempts: i64 = if entry.mark == Mark::Cancelled { 0 } else { 1 };
            query = query
                .bind(entry.campaign.as_str())
                .bind(entry.pair.user_id.as_str())
                .bind(entry.pair.channel.as_str())
                .bind(entry.pair.locale.as_str())
                .bind(entry.mark.as_str())
                .bind(attempts)
                .bind(entry.error.as_deref())
                .bind(now);
        }
        query.execute(pool).await?;
    }
    Ok(())
}
