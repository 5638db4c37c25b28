//! What can go wrong with the ledger, and which failures waiting may cure.

use std::sync::Arc;

use crate::batch::CampaignId;

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// PostgreSQL refused or could not be reached.
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite refused or could not be opened.
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be created or updated.
    #[error("ledger schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `ledger.url` is neither `sqlite:` nor `postgres:`.
    #[error("ledger.url `{0}`: expected sqlite://FILE or postgres://…")]
    Url(String),
    /// No such campaign in the ledger.
    #[error(
        "campaign `{0}` is not in the ledger (it is recorded by `sunset enqueue`, `sunset send` or a worker's first batch of it)"
    )]
    UnknownCampaign(CampaignId),
    /// A cancelled campaign stays cancelled.
    #[error("campaign `{0}` is cancelled; it cannot be paused or resumed")]
    Cancelled(CampaignId),
    /// This worker's lease is not renewed: it may not claim or send.
    #[error("this worker's lease on the ledger is not current (heartbeat failing)")]
    NoLease,
    /// An outcome the database refused for a reason waiting does not fix.
    #[error("could not record the outcome: {0}")]
    Record(Arc<LedgerError>),
    /// The thread that talks to SQLite has stopped.
    #[error("the ledger's SQLite thread has stopped")]
    Stopped,
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

    /// Whether waiting may help: the database is away, busy or locked, or this worker's lease
    /// lapsed. Anything else (a constraint, bad data, a statement refused) repeats as it is.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LedgerError::Database(e) => match e {
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    ["08", "53", "57", "40", "55"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }),
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                _ => false,
            },
            LedgerError::Sqlite(e) => e.sqlite_error_code().is_some_and(|code| {
                use rusqlite::ErrorCode::*;
                matches!(
                    code,
                    DatabaseBusy
                        | DatabaseLocked
                        | SystemIoFailure
                        | CannotOpen
                        | DiskFull
                        | OutOfMemory
                        | FileLockingProtocolFailed
                )
            }),
            LedgerError::Migrate(_) | LedgerError::NoLease | LedgerError::Stopped => true,
            LedgerError::Record(e) => e.is_unavailable(),
            LedgerError::Url(_)
            | LedgerError::UnknownCampaign(_)
            | LedgerError::Cancelled(_)
            | LedgerError::Corrupt(_) => false,
        }
    }
}
