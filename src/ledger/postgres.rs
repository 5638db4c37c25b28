//! The PostgreSQL ledger, shared by a fleet: rows travel as arrays (`UNNEST`), so a statement
//! has one text whatever its number of rows, and each write and its counters are one statement.
//! The heartbeat has a connection of its own, never waiting behind the pool.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::sync::Mutex;

use super::LedgerError;

/// How long a query waits for a connection before the ledger counts as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections a worker opens at start: the claims of its first batches and the outcome writer.
const WARM_CONNECTIONS: usize = 4;

const REGISTER: &str =
    "INSERT INTO workers (id, seen_at, beat) VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING";
const RENEW: &str = "UPDATE workers SET beat = beat + 1, seen_at = $2 WHERE id = $1";
const RETIRE: &str = "DELETE FROM workers WHERE id = $1";

/// The PostgreSQL ledger of one process.
pub(super) struct Store {
    pub(super) pool: PgPool,
    options: PgConnectOptions,
    /// The heartbeat's own connection, opened on first use and again after a failure.
    beats: Mutex<Option<PgConnection>>,
}

impl Store {
    pub(super) fn open(url: &str) -> Result<Store, LedgerError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Store {
            pool,
            options,
            beats: Mutex::new(None),
        })
    }

    /// Runs the migrations in a task of their own (sqlx's migration future is `Send` only for
    /// the `'static` borrow a task gives it).
    pub(super) async fn migrate(
        &self,
        migrator: sqlx::migrate::Migrator,
    ) -> Result<(), LedgerError> {
        let pool = self.pool.clone();
        tokio::spawn(async move { migrator.run(&pool).await })
            .await
            .map_err(|_| LedgerError::Stopped)??;
        Ok(())
    }

    pub(super) async fn warm(&self) -> Result<(), LedgerError> {
        let wanted = WARM_CONNECTIONS.min(self.pool.options().get_max_connections() as usize);
        let connections =
            futures::future::try_join_all((0..wanted).map(|_| self.pool.acquire())).await?;
        drop(connections);
        Ok(())
    }

    /// Runs `statement` with `owner` and `now` on the heartbeat's connection; the number of
    /// rows it changed.
    async fn on_beats(
        &self,
        statement: &'static str,
        owner: &str,
        now: Option<i64>,
    ) -> Result<u64, LedgerError> {
        let mut conn = self.beats.lock().await;
        if conn.is_none() {
            *conn = Some(
                tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??,
            );
        }
        let Some(c) = conn.as_mut() else {
            return Err(LedgerError::Stopped);
        };
        let mut query = sqlx::query(statement).bind(owner);
        if let Some(now) = now {
            query = query.bind(now);
        }
        match tokio::time::timeout(ACQUIRE_TIMEOUT, query.execute(&mut *c)).await {
            Ok(Ok(done)) => Ok(done.rows_affected()),
            Ok(Err(e)) => {
                *conn = None;
                Err(e.into())
            }
            Err(_) => {
                *conn = None;
                Err(sqlx::Error::PoolTimedOut.into())
            }
        }
    }

    pub(super) async fn register(&self, owner: &str, now: i64) -> Result<(), LedgerError> {
        self.on_beats(REGISTER, owner, Some(now)).await.map(|_| ())
    }

    pub(super) async fn renew(&self, owner: &str, now: i64) -> Result<bool, LedgerError> {
        Ok(self.on_beats(RENEW, owner, Some(now)).await? == 1)
    }

    pub(super) async fn retire(&self, owner: &str) -> Result<(), LedgerError> {
        self.on_beats(RETIRE, owner, None).await.map(|_| ())
    }

    pub(super) async fn close(&self) {
        if let Some(conn) = self.beats.lock().await.take() {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }
}
