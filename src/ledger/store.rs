//! The two databases behind the same operations, and the schema's migrations.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::claim::ClaimJob;
use super::reports::{Paused, ReportEffect, TokenRecipient};
use super::rows::{Campaign, CampaignState, Claims, Entry, Fenced, RATE_BUCKET_MS, Recorded};
use super::{LedgerError, now_ms, postgres, sqlite, status};
use crate::batch::{CampaignId, EmailAddress};
use crate::config::FeedbackConfig;
use crate::suppression::{Reason, Report, Source};
use crate::token::Token;

/// The two databases, each behind the same operations.
pub(super) enum Store {
    Sqlite(sqlite::Store),
    Postgres(Box<postgres::Store>),
}

/// The schema's migrations; from version 5 on, some are written for one database only.
pub(super) fn migrator(sqlite: bool) -> Migrator {
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
        migration(
            4,
            "leases and counters",
            include_str!("../../migrations/0004_leases_and_counters.sql"),
        ),
        if sqlite {
            migration(
                5,
                "clustered deliveries",
                include_str!("../../migrations/0005_sqlite_clustered_deliveries.sql"),
            )
        } else {
            migration(
                5,
                "clustered deliveries",
                include_str!("../../migrations/0005_postgres_nothing.sql"),
            )
        },
        migration(
            6,
            "feedback",
            include_str!("../../migrations/0006_feedback.sql"),
        ),
    ])
}

impl Store {
    pub(super) async fn migrate(&self) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.migrate(migrator(true)).await,
            Store::Postgres(s) => s.migrate(migrator(false)).await,
        }
    }

    pub(super) async fn register(&self, owner: &str) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.register(owner, now_ms()).await,
            Store::Postgres(s) => s.register(owner, now_ms()).await,
        }
    }

    pub(super) async fn renew(&self, owner: &str) -> Result<bool, LedgerError> {
        match self {
            Store::Sqlite(s) => s.renew(owner, now_ms()).await,
            Store::Postgres(s) => s.renew(owner, now_ms()).await,
        }
    }

    pub(super) async fn retire(&self, owner: &str) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.retire(owner).await,
            Store::Postgres(s) => s.retire(owner).await,
        }
    }

    pub(super) async fn record_campaign(&self, campaign: &Campaign) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.record_campaign(campaign.clone(), now_ms()).await,
            Store::Postgres(s) => s.record_campaign(campaign, now_ms()).await,
        }
    }

    pub(super) async fn first_sight(
        &self,
        campaign: &CampaignId,
        template: &str,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.first_sight(campaign, template, now_ms()).await,
            Store::Postgres(s) => s.first_sight(campaign, template, now_ms()).await,
        }
    }

    pub(super) async fn state(
        &self,
        campaign: &CampaignId,
    ) -> Result<Option<CampaignState>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.state(campaign).await,
            Store::Postgres(s) => s.state(campaign).await,
        }
    }

    pub(super) async fn set_state(
        &self,
        campaign: &CampaignId,
        state: CampaignState,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.set_state(campaign, state).await,
            Store::Postgres(s) => s.set_state(campaign, state).await,
        }
    }

    pub(super) async fn claim(&self, job: ClaimJob) -> Result<Claims, LedgerError> {
        match self {
            Store::Sqlite(s) => s.claim(job, now_ms()).await,
            Store::Postgres(s) => s.claim(job, now_ms()).await,
        }
    }

    pub(super) async fn record(&self, outcomes: &[Fenced]) -> Result<Vec<Recorded>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.record(outcomes.to_vec(), now_ms()).await,
            Store::Postgres(s) => s.record(outcomes, now_ms()).await,
        }
    }

    pub(super) async fn give_up(&self, entries: Vec<Entry>) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.give_up(entries, now_ms()).await,
            Store::Postgres(s) => s.give_up(&entries, now_ms()).await,
        }
    }

    pub(super) async fn recipient_of(
        &self,
        token: &Token,
    ) -> Result<Option<TokenRecipient>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.recipient_of(token).await,
            Store::Postgres(s) => s.recipient_of(token).await,
        }
    }

    pub(super) async fn suppressed(
        &self,
        campaign: &CampaignId,
        addresses: &[&EmailAddress],
        legal_notice: bool,
    ) -> Result<Vec<String>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.suppressed(campaign, addresses, legal_notice).await,
            Store::Postgres(s) => s.suppressed(campaign, addresses, legal_notice).await,
        }
    }

    pub(super) async fn add_suppressions(
        &self,
        addresses: &[EmailAddress],
        reason: Reason,
        source: Source,
    ) -> Result<u64, LedgerError> {
        let addresses: Vec<String> = addresses.iter().map(|a| a.as_str().to_string()).collect();
        match self {
            Store::Sqlite(s) => {
                s.add_suppressions(addresses, reason, source, now_ms())
                    .await
            }
            Store::Postgres(s) => {
                s.add_suppressions(&addresses, reason, source, now_ms())
                    .await
            }
        }
    }

    pub(super) async fn remove_suppressions(
        &self,
        addresses: &[EmailAddress],
    ) -> Result<u64, LedgerError> {
        let addresses: Vec<String> = addresses.iter().map(|a| a.as_str().to_string()).collect();
        match self {
            Store::Sqlite(s) => s.remove_suppressions(addresses).await,
            Store::Postgres(s) => s.remove_suppressions(&addresses).await,
        }
    }

    /// Every entry: address, reason, scope and since (Unix ms).
    pub(super) async fn suppressions(
        &self,
    ) -> Result<Vec<(String, String, String, i64)>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.suppressions().await,
            Store::Postgres(s) => s.suppressions().await,
        }
    }

    pub(super) async fn record_report(
        &self,
        report: &Report,
        policy: &FeedbackConfig,
    ) -> Result<(ReportEffect, Option<Paused>), LedgerError> {
        match self {
            Store::Sqlite(s) => s.record_report(report, policy, now_ms()).await,
            Store::Postgres(s) => s.record_report(report, policy, now_ms()).await,
        }
    }

    pub(super) async fn snapshot(
        &self,
        campaign: &CampaignId,
    ) -> Result<status::Snapshot, LedgerError> {
        let since = (now_ms() - status::RATE_WINDOW_MS) / RATE_BUCKET_MS;
        match self {
            Store::Sqlite(s) => s.snapshot(campaign, since).await,
            Store::Postgres(s) => s.snapshot(campaign, since).await,
        }
    }

    pub(super) async fn warm(&self) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.warm().await,
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}
