//! The SQLite ledger: one thread owns the connection that writes, and runs every operation
//! waiting as one group in one transaction, with prepared statements; the heartbeat has a
//! connection and a thread of its own, so writes never starve it of a connection (only another
//! process's lock on the file can, and then the lease runs out as it should).

use std::str::FromStr;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::oneshot;

use super::LedgerError;
use super::claim::{ClaimJob, Decision, Found, decide};
use super::rows::{Campaign, CampaignState, Claims, Entry, Fenced, Mark, Recorded, Tally};
use super::status::Snapshot;
use crate::batch::{CampaignId, EmailAddress};

/// How long a write waits for another process's lock on the file before it counts as refused.
const BUSY: Duration = Duration::from_secs(2);
/// The same for the heartbeat: a renewal that waits longer is as good as failed.
const BEAT_BUSY: Duration = Duration::from_secs(1);
/// Operations run in one transaction at most.
const MAX_GROUP: usize = 256;

const CLAIM_NEW: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at, address, feedback_token)
    VALUES (?1, ?2, ?3, ?4, 'sending', 0, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (campaign_id, user_id, channel) DO NOTHING";
const FIND: &str = "SELECT status, owner, token, locale FROM deliveries
    WHERE campaign_id = ?1 AND user_id = ?2 AND channel = ?3";
const BEAT_OF: &str = "SELECT beat FROM workers WHERE id = ?1";
const EVICT: &str = "DELETE FROM workers WHERE id = ?1 AND beat = ?2";
/// Takes a row if it is still as the claim found it.
const TAKE: &str =
    "UPDATE deliveries SET status = 'sending', owner = ?4, token = ?5, locale = ?6, updated_at = ?7,
        address = ?11, feedback_token = ?12
    WHERE campaign_id = ?1 AND user_id = ?2 AND channel = ?3
      AND status = ?8 AND owner IS ?9 AND token IS ?10";
/// Writes an outcome where the row still carries the claim.
const RECORD: &str = "UPDATE deliveries SET status = ?4, locale = ?5, attempts = attempts + ?6,
        last_error = ?7, owner = NULL, token = NULL, updated_at = ?8
    WHERE campaign_id = ?1 AND user_id = ?2 AND channel = ?3
      AND status = 'sending' AND owner = ?9 AND token = ?10";
const GIVE_UP: &str = "UPDATE deliveries SET status = 'dead', last_error = ?4, updated_at = ?5
    WHERE campaign_id = ?1 AND user_id = ?2 AND channel = ?3 AND status = 'failed'
    RETURNING locale";
const COUNT: &str = "INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (campaign_id, channel, locale, status) DO UPDATE SET n = n + excluded.n";
const RATE: &str = "INSERT INTO campaign_rates (campaign_id, bucket, delivered) VALUES (?1, ?2, ?3)
    ON CONFLICT (campaign_id, bucket) DO UPDATE SET delivered = delivered + excluded.delivered";
const REGISTER: &str =
    "INSERT INTO workers (id, seen_at, beat) VALUES (?1, ?2, 0) ON CONFLICT (id) DO NOTHING";
const RENEW: &str = "UPDATE workers SET beat = beat + 1, seen_at = ?2 WHERE id = ?1";
const RETIRE: &str = "DELETE FROM workers WHERE id = ?1";
const RECORD_CAMPAIGN: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES (?1, ?2, ?3, ?4, 'running', ?5)
    ON CONFLICT (id) DO UPDATE SET template = excluded.template,
        recipients = excluded.recipients, deadline = excluded.deadline";
const FIRST_SIGHT: &str =
    "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at)
    VALUES (?1, ?2, -1, NULL, 'running', ?3) ON CONFLICT (id) DO NOTHING";
const CLEAR_TOTALS: &str = "DELETE FROM campaign_totals WHERE campaign_id = ?1";
const TOTAL: &str =
    "INSERT INTO campaign_totals (campaign_id, channel, locale, total) VALUES (?1, ?2, ?3, ?4)";
const STATE: &str = "SELECT state FROM campaigns WHERE id = ?1";
/// A change of state by hand clears the ledger's pause reason and sets aside the complaints
/// counted so far: only later ones can pause the campaign again.
const SET_STATE: &str = "UPDATE campaigns SET state = ?2, paused_reason = NULL,
        complaints_at_resume = COALESCE((SELECT n FROM campaign_feedback
                                         WHERE campaign_id = ?1 AND reason = 'complaint'), 0)
    WHERE id = ?1";
const CAMPAIGN: &str =
    "SELECT template, state, recipients, deadline, paused_reason FROM campaigns WHERE id = ?1";
const FEEDBACK: &str = "SELECT reason, n FROM campaign_feedback WHERE campaign_id = ?1";
const TOTALS: &str = "SELECT channel, locale, total FROM campaign_totals WHERE campaign_id = ?1";
const COUNTS: &str =
    "SELECT channel, locale, status, n FROM campaign_counts WHERE campaign_id = ?1";
const LAST_MINUTE: &str = "SELECT COALESCE(SUM(delivered), 0) FROM campaign_rates
    WHERE campaign_id = ?1 AND bucket >= ?2";

/// What a job does once its group's transaction has committed (or not).
type Done = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// An operation, run on the thread's connection inside the group's transaction.
type Job = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Done + Send>;

/// A thread with a connection of its own, running jobs in groups.
pub(super) struct Thread {
    jobs: Mutex<Option<Sender<Job>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Thread {
    fn start(name: &str, path: String, busy: Duration) -> Result<Thread, LedgerError> {
        let (jobs, queue) = channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(&path, busy, &queue))
            .map_err(|e| LedgerError::Corrupt(format!("cannot start the SQLite thread: {e}")))?;
        Ok(Thread {
            jobs: Mutex::new(Some(jobs)),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` on the thread, inside a savepoint of its group's transaction; answers once the
    /// transaction has committed.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(e) => Err(LedgerError::Sqlite(copy(e))),
            };
            Box::new(move |commit| {
                let _ = answer.send(match commit {
                    None => result,
                    Some(e) => Err(LedgerError::Sqlite(copy(e))),
                });
            })
        });
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or(LedgerError::Stopped)?
            .send(job)
            .map_err(|_| LedgerError::Stopped)?;
        answered.await.map_err(|_| LedgerError::Stopped)?
    }

    async fn stop(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// rusqlite's errors are not `Clone`; a group's one failure answers each of its jobs.
fn copy(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

fn connect(path: &str, busy: Duration) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy)?;
    // WAL: readers (`status`) never block the writers; NORMAL survives a killed process (only
    // a power cut can lose the last commits).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A checkpoint (which syncs the file) every 40 MB of log rather than every 4 MB.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The thread's loop: takes every job waiting, runs them in one transaction, commits, answers.
/// The connection is opened on first use and again after it failed.
fn serve(path: &str, busy: Duration, queue: &Receiver<Job>) {
    let mut conn: Option<Connection> = None;
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let opened = match conn.take() {
            Some(c) => Ok(c),
            None => connect(path, busy),
        };
        let c = match opened {
            Ok(c) => c,
            Err(e) => {
                for job in group {
                    job(Err(&e))(Some(&e));
                }
                continue;
            }
        };
        if let Err(e) = c.execute_batch("BEGIN IMMEDIATE") {
            for job in group {
                job(Err(&e))(Some(&e));
            }
            conn = Some(c);
            continue;
        }
        let done: Vec<Done> = group.into_iter().map(|job| job(Ok(&c))).collect();
        let commit = c.execute_batch("COMMIT");
        if commit.is_err() {
            let _ = c.execute_batch("ROLLBACK");
        }
        for d in done {
            d(commit.as_ref().err());
        }
        conn = Some(c);
    }
}

/// Runs `f` so that its failure undoes its own writes only, not its group's.
fn in_savepoint<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    c.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(c) {
        Ok(value) => {
            c.prepare_cached("RELEASE job")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// Applies counter changes.
fn apply(c: &Connection, tally: &Tally) -> Result<(), LedgerError> {
    let mut count = c.prepare_cached(COUNT)?;
    for ((campaign, channel, locale, status), n) in &tally.counts {
        if *n != 0 {
            count.execute(params![campaign, channel, locale, status, n])?;
        }
    }
    let mut rate = c.prepare_cached(RATE)?;
    for ((campaign, bucket), n) in &tally.delivered {
        rate.execute(params![campaign, bucket, n])?;
    }
    Ok(())
}

fn found(
    c: &Connection,
    campaign: &str,
    user: &str,
    channel: &str,
) -> Result<Option<Found>, LedgerError> {
    let row = c
        .prepare_cached(FIND)?
        .query_row(params![campaign, user, channel], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    row.map(|(mark, owner, token, locale)| {
        Ok(Found {
            mark: mark.parse()?,
            owner,
            token,
            locale,
        })
    })
    .transpose()
}

fn beat_of(c: &Connection, owner: &str) -> Result<Option<i64>, LedgerError> {
    Ok(c.prepare_cached(BEAT_OF)?
        .query_row([owner], |r| r.get(0))
        .optional()?)
}

fn claim(c: &Connection, job: &ClaimJob, now: i64) -> Result<Claims, LedgerError> {
    let campaign = job.campaign.as_str();
    let owner = &*job.owner;
    let mut claims = Claims {
        token: job.token,
        owner: Arc::clone(&job.owner),
        ..Claims::default()
    };
    let mut tally = Tally::default();
    let mut rest = Vec::new();
    {
        let mut insert = c.prepare_cached(CLAIM_NEW)?;
        for (p, feedback_token) in job.pairs.iter().zip(&job.tokens) {
            let address = p.address.as_ref().map(EmailAddress::as_str);
            let inserted = insert.execute(params![
                campaign,
                p.user_id.as_str(),
                p.channel.as_str(),
                p.locale,
                owner,
                job.token,
                now,
                address,
                feedback_token
            ])?;
            if inserted == 1 {
                tally.add(campaign, p.channel.as_str(), &p.locale, "rows", 1);
            } else {
                rest.push((p, address, feedback_token));
            }
        }
    }
    for (p, address, feedback_token) in rest {
        let key = (p.user_id.clone(), p.channel);
        let Some(row) = found(c, campaign, p.user_id.as_str(), p.channel.as_str())? else {
            claims.held.insert(key);
            continue;
        };
        let mut decision = decide(&row, owner, &|t| job.active.contains(t), None);
        if let Decision::Judge(other) = &decision {
            let liveness = job.watch.judge(other, beat_of(c, other)?);
            decision = decide(&row, owner, &|t| job.active.contains(t), Some(liveness));
        }
        let Some(evict) = decision.settle(&mut claims, key.clone()) else {
            continue;
        };
        if let Some((other, beat)) = evict
            && c.prepare_cached(EVICT)?.execute(params![other, beat])? == 0
            && beat_of(c, &other)?.is_some()
        {
            // It beat after all.
            claims.held.insert(key);
            continue;
        }
        let taken = c.prepare_cached(TAKE)?.execute(params![
            campaign,
            p.user_id.as_str(),
            p.channel.as_str(),
            owner,
            job.token,
            p.locale,
            now,
            row.mark.as_str(),
            row.owner,
            row.token,
            address,
            feedback_token
        ])?;
        if taken == 1 {
            tally.taken(campaign, p.channel.as_str(), &row.locale, row.mark);
        } else {
            claims.held.insert(key);
        }
    }
    apply(c, &tally)?;
    Ok(claims)
}

fn record(c: &Connection, outcomes: &[Fenced], now: i64) -> Result<Vec<Recorded>, LedgerError> {
    let mut tally = Tally::default();
    let mut recorded = Vec::with_capacity(outcomes.len());
    {
        let mut write = c.prepare_cached(RECORD)?;
        for o in outcomes {
            let e = &o.entry;
            let written = write.execute(params![
                e.campaign.as_str(),
                e.pair.user_id.as_str(),
                e.pair.channel.as_str(),
                e.mark.as_str(),
                e.pair.locale,
                e.attempts(),
                e.error,
                now,
                &*o.owner,
                o.token
            ])?;
            if written == 1 {
                let campaign = e.campaign.as_str();
                tally.add(
                    campaign,
                    e.pair.channel.as_str(),
                    &e.pair.locale,
                    e.mark.as_str(),
                    1,
                );
                if e.mark == Mark::Delivered {
                    tally.delivered(campaign, now);
                }
                recorded.push(Recorded::Written);
            } else {
                recorded.push(Recorded::FencedOut);
            }
        }
    }
    apply(c, &tally)?;
    Ok(recorded)
}

fn give_up(c: &Connection, entries: &[Entry], now: i64) -> Result<(), LedgerError> {
    let mut tally = Tally::default();
    {
        let mut dead = c.prepare_cached(GIVE_UP)?;
        for e in entries {
            let locale: Option<String> = dead
                .query_row(
                    params![
                        e.campaign.as_str(),
                        e.pair.user_id.as_str(),
                        e.pair.channel.as_str(),
                        e.error,
                        now
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(locale) = locale {
                tally.given_up(e.campaign.as_str(), e.pair.channel.as_str(), &locale);
            }
        }
    }
    apply(c, &tally)
}

fn snapshot(c: &Connection, campaign: &str, since_bucket: i64) -> Result<Snapshot, LedgerError> {
    let recorded = c
        .prepare_cached(CAMPAIGN)?
        .query_row([campaign], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let feedback = c
        .prepare_cached(FEEDBACK)?
        .query_map([campaign], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let totals = c
        .prepare_cached(TOTALS)?
        .query_map([campaign], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let counts = c
        .prepare_cached(COUNTS)?
        .query_map([campaign], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let last_minute = c
        .prepare_cached(LAST_MINUTE)?
        .query_row(params![campaign, since_bucket], |r| r.get(0))?;
    Ok(Snapshot {
        recorded,
        totals,
        counts,
        last_minute,
        feedback,
    })
}

/// The SQLite ledger of one process.
pub(super) struct Store {
    url: String,
    pub(super) writer: Thread,
    beats: Thread,
}

impl Store {
    /// `rest` is the URL after `sqlite:`: `//FILE` or `FILE`, with any `?…` options.
    pub(super) fn open(rest: &str) -> Result<Store, LedgerError> {
        let file = rest.trim_start_matches("//");
        let path = file.split('?').next().unwrap_or(file).to_string();
        Ok(Store {
            url: format!("sqlite://{path}"),
            writer: Thread::start("sunset-ledger", path.clone(), BUSY)?,
            beats: Thread::start("sunset-beats", path, BEAT_BUSY)?,
        })
    }

    /// Runs the migrations on a connection of their own, in a task of their own (sqlx's
    /// migration future is `Send` only for the `'static` borrow a task gives it).
    pub(super) async fn migrate(&self, migrator: Migrator) -> Result<(), LedgerError> {
        let options = SqliteConnectOptions::from_str(&self.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY * 5);
        tokio::spawn(async move {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            let ran = migrator.run(&pool).await;
            pool.close().await;
            Ok(ran?)
        })
        .await
        .map_err(|_| LedgerError::Stopped)?
    }

    pub(super) async fn register(&self, owner: &str, now: i64) -> Result<(), LedgerError> {
        let owner = owner.to_string();
        self.beats
            .run(move |c| {
                c.prepare_cached(REGISTER)?.execute(params![owner, now])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn renew(&self, owner: &str, now: i64) -> Result<bool, LedgerError> {
        let owner = owner.to_string();
        self.beats
            .run(move |c| Ok(c.prepare_cached(RENEW)?.execute(params![owner, now])? == 1))
            .await
    }

    pub(super) async fn retire(&self, owner: &str) -> Result<(), LedgerError> {
        let owner = owner.to_string();
        self.beats
            .run(move |c| {
                c.prepare_cached(RETIRE)?.execute([owner])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn record_campaign(
        &self,
        campaign: Campaign,
        now: i64,
    ) -> Result<(), LedgerError> {
        self.writer
            .run(move |c| {
                let id = campaign.id.as_str();
                c.prepare_cached(RECORD_CAMPAIGN)?.execute(params![
                    id,
                    campaign.template,
                    campaign.recipients as i64,
                    campaign.deadline.map(|d| d.to_rfc3339()),
                    now
                ])?;
                c.prepare_cached(CLEAR_TOTALS)?.execute([id])?;
                let mut total = c.prepare_cached(TOTAL)?;
                for ((channel, locale), n) in &campaign.totals {
                    total.execute(params![id, channel.as_str(), locale, *n as i64])?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn first_sight(
        &self,
        campaign: &CampaignId,
        template: &str,
        now: i64,
    ) -> Result<(), LedgerError> {
        let (campaign, template) = (campaign.as_str().to_string(), template.to_string());
        self.writer
            .run(move |c| {
                c.prepare_cached(FIRST_SIGHT)?
                    .execute(params![campaign, template, now])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn state(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<CampaignState>, LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| {
                let state: Option<String> = c
                    .prepare_cached(STATE)?
                    .query_row([campaign], |r| r.get(0))
                    .optional()?;
                state.map(|s| s.parse()).transpose()
            })
            .await
    }

    pub(super) async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| {
                c.prepare_cached(SET_STATE)?
                    .execute(params![campaign, state.as_str()])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn claim(&self, job: ClaimJob, now: i64) -> Result<Claims, LedgerError> {
        self.writer.run(move |c| claim(c, &job, now)).await
    }

    pub(super) async fn record(
        &self,
        outcomes: Vec<Fenced>,
        now: i64,
    ) -> Result<Vec<Recorded>, LedgerError> {
        self.writer.run(move |c| record(c, &outcomes, now)).await
    }

    pub(super) async fn give_up(&self, entries: Vec<Entry>, now: i64) -> Result<(), LedgerError> {
        self.writer.run(move |c| give_up(c, &entries, now)).await
    }

    pub(super) async fn snapshot(
        &self,
        campaign: &CampaignId,
        since_bucket: i64,
    ) -> Result<Snapshot, LedgerError> {
        let campaign = campaign.as_str().to_string();
        self.writer
            .run(move |c| snapshot(c, &campaign, since_bucket))
            .await
    }

    pub(super) async fn close(&self) {
        self.writer.stop().await;
        self.beats.stop().await;
    }
}
