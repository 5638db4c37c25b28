//! The SQLite ledger: one thread owns the connection that writes, and runs every operation
//! waiting as one group in one transaction, with prepared statements; the heartbeat has a
//! connection and a thread of its own, so writes never starve it of a connection (only another
//! process's lock on the file can, and then the lease runs out as it should).

use std::str::FromStr;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::oneshot;

use super::LedgerError;

/// How long a write waits for another process's lock on the file before it counts as refused.
const BUSY: Duration = Duration::from_secs(2);
/// The same for the heartbeat: a renewal that waits longer is as good as failed.
const BEAT_BUSY: Duration = Duration::from_secs(1);
/// Operations run in one transaction at most.
const MAX_GROUP: usize = 256;

const REGISTER: &str =
    "INSERT INTO workers (id, seen_at, beat) VALUES (?1, ?2, 0) ON CONFLICT (id) DO NOTHING";
const RENEW: &str = "UPDATE workers SET beat = beat + 1, seen_at = ?2 WHERE id = ?1";
const RETIRE: &str = "DELETE FROM workers WHERE id = ?1";

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

    pub(super) async fn close(&self) {
        self.writer.stop().await;
        self.beats.stop().await;
    }
}
