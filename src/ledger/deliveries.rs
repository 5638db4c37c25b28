//! Claims and outcomes: the per-send rows of the ledger, written in multi-row statements.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{CLAIM_EXPIRES, Claims, Entry, Ledger, LedgerError, Mark, Pair, Waiting, now_ms};
use crate::batch::{CampaignId, UserId};
use crate::channel::Channel;

/// Outcomes written in one group at most.
const MAX_GROUP: usize = 512;
/// How long the writer waits for more outcomes after the first of a group. Each write is a
/// statement and a commit whose fixed cost outweighs its rows': writing whatever was waiting
/// made groups of 2.4 outcomes on SQLite (5.7 on PostgreSQL). But each send holds its slot
/// until its outcome is written, so the wait is paid by sending too: with pipelined SMTP, 2 ms
/// left the 64 default slots waiting (0.73× of the ledger-off rate on SQLite), 0.5 ms 0.80×.
const GATHER: Duration = Duration::from_micros(500);
/// Rows per statement (a batch's claim is one or a few statements).
const ROWS_PER_STATEMENT: usize = 1024;
/// SQLite statements are written for an exact row count below this and for a multiple of it
/// above: one text per size, prepared once (sqlx keeps 100 per connection).
const PAD_TO: usize = 16;
/// How long the writer keeps trying to record outcomes when the database is away.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);

// Multi-row statements. PostgreSQL takes the rows as one JSON array parameter, so each has one
// text, prepared once per connection, whatever the number of rows (a statement per row count
// was parsed and planned anew for almost every group). SQLite takes them as bound `VALUES`
// rows padded with NULL rows to a multiple of 16 (see `padded_rows`): under a hundred texts, and
// no JSON to parse — SQLite's JSON functions took most of its time per row.

/// Claims rows (SQLite): campaign, owner, token, now, then `{rows}` of (user, channel, locale),
/// then the heartbeat older than which a worker is dead.
const CLAIM_SQLITE: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at)
    SELECT ?, column1, column2, column3, 'sending', 0, ?, ?, ?
    FROM (VALUES {rows}) WHERE column1 IS NOT NULL
    ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
    SET status = 'sending', owner = excluded.owner, token = excluded.token, updated_at = excluded.updated_at
    WHERE deliveries.status IN ('failed', 'dead')
       OR (deliveries.status = 'sending' AND NOT EXISTS (
           SELECT 1 FROM workers WHERE workers.id = deliveries.owner AND workers.seen_at > ?))";

/// Claims rows (PostgreSQL): $1 campaign, $2 owner, $3 token, $4 now, $5
/// `[[user, channel, locale], …]`, $6 heartbeats older than this are dead.
const CLAIM_POSTGRES: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at)
    SELECT $1::text, e->>0, e->>1, e->>2, 'sending', 0, $2::text, $3::bigint, $4::bigint
    FROM jsonb_array_elements($5::jsonb) AS e
    ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
    SET status = 'sending', owner = excluded.owner, token = excluded.token, updated_at = excluded.updated_at
    WHERE deliveries.status IN ('failed', 'dead')
       OR (deliveries.status = 'sending' AND NOT EXISTS (
           SELECT 1 FROM workers WHERE workers.id = deliveries.owner AND workers.seen_at > $6::bigint))";

/// Records outcomes (SQLite): now, then `{rows}` of (campaign, user, channel, locale, status,
/// attempts, error). A delivered row is never overwritten.
const RECORD_SQLITE: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, last_error, updated_at, owner)
    SELECT column1, column2, column3, column4, column5, column6, column7, ?, NULL
    FROM (VALUES {rows}) WHERE column1 IS NOT NULL
    ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
    SET status = excluded.status, locale = excluded.locale,
        attempts = deliveries.attempts + excluded.attempts,
        last_error = excluded.last_error, owner = NULL, updated_at = excluded.updated_at
    WHERE deliveries.status <> 'delivered'";

/// Records outcomes (PostgreSQL): $1 now, $2 `[[campaign, user, channel, locale, status,
/// attempts, error], …]`. A delivered row is never overwritten.
const RECORD_POSTGRES: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, last_error, updated_at, owner)
    SELECT e->>0, e->>1, e->>2, e->>3, e->>4, (e->>5)::bigint, e->>6, $1::bigint, NULL
    FROM jsonb_array_elements($2::jsonb) AS e
    ON CONFLICT (campaign_id, user_id, channel) DO UPDATE
    SET status = excluded.status, locale = excluded.locale,
        attempts = deliveries.attempts + excluded.attempts,
        last_error = excluded.last_error, owner = NULL, updated_at = excluded.updated_at
    WHERE deliveries.status <> 'delivered'";

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

/// `(?, …), (?, …)`: `rows` rows of `width` markers, exact below [`PAD_TO`] rows and padded up to
/// a multiple of it above; returns the text and how many padding rows to bind with NULLs (the
/// statements skip rows whose first column is NULL). So a statement has at most
/// `PAD_TO - 1 + ROWS_PER_STATEMENT / PAD_TO` texts (79), each prepared once per connection,
/// and never more than `PAD_TO - 1` rows of NULLs.
fn padded_rows(width: usize, rows: usize) -> (String, usize) {
    let size = if rows < PAD_TO {
        rows.max(1)
    } else {
        rows.next_multiple_of(PAD_TO)
    };
    let row = format!("({})", vec!["?"; width].join(", "));
    (vec![row; size].join(", "), size - rows)
}

/// A row as a claim that fell short looks at it.
struct Found {
    mark: Mark,
    owner: Option<String>,
    token: Option<i64>,
}

impl Ledger {
    /// Claims `pairs` of `campaign` for this worker; returns the pairs it did not get. One
    /// statement per 1,000 pairs; rows are read back only for a statement that claimed fewer.
    pub async fn claim(
        &self,
        campaign: &CampaignId,
        pairs: &[Pair],
    ) -> Result<Claims, LedgerError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let expired = now - CLAIM_EXPIRES.as_millis() as i64;
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token);
        let mut claims = Claims {
            token,
            ..Claims::default()
        };
        for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
            let claimed = if self.sqlite {
                let (values, padding) = padded_rows(3, chunk.len());
                let mut query = sqlx::query(AssertSqlSafe(CLAIM_SQLITE.replace("{rows}", &values)))
                    .bind(campaign.as_str())
                    .bind(self.owner.as_str())
                    .bind(token)
                    .bind(now);
                for p in chunk {
                    query = query
                        .bind(p.user_id.as_str())
                        .bind(p.channel.as_str())
                        .bind(p.locale.as_str());
                }
                for _ in 0..padding * 3 {
                    query = query.bind(None::<&str>);
                }
                query.bind(expired).execute(pool).await?
            } else {
                let rows: Vec<serde_json::Value> = chunk
                    .iter()
                    .map(|p| json!([p.user_id.as_str(), p.channel.as_str(), p.locale]))
                    .collect();
                sqlx::query(CLAIM_POSTGRES)
                    .bind(campaign.as_str())
                    .bind(self.owner.as_str())
                    .bind(token)
                    .bind(now)
                    .bind(serde_json::Value::Array(rows).to_string())
                    .bind(expired)
                    .execute(pool)
                    .await?
            }
            .rows_affected();
            if claimed == chunk.len() as u64 {
                continue;
            }
            let rows = self.rows(campaign, chunk).await?;
            for pair in chunk {
                let key = (pair.user_id.clone(), pair.channel);
                match rows.get(&key) {
                    Some(Found {
                        mark: Mark::Sending,
                        owner: Some(owner),
                        token: Some(t),
                    }) if *owner == self.owner && *t == token => {}
                    Some(Found {
                        mark: Mark::Sending,
                        owner: Some(owner),
                        token: Some(t),
                    }) if *owner == self.owner && !self.is_active(*t) => {
                        if !self.take_over(campaign, pair, *t, token, now).await? {
                            claims.held.insert(key);
                        }
                    }
                    Some(Found {
                        mark: Mark::Delivered,
                        ..
                    }) => {
                        claims.delivered.insert(key);
                    }
                    Some(Found {
                        mark: Mark::Cancelled,
                        ..
                    }) => {
                        claims.cancelled.insert(key);
                    }
                    _ => {
                        claims.held.insert(key);
                    }
                }
            }
        }
        Ok(claims)
    }

    /// Done with a claim: rows it left `sending` (outcome not written) may be claimed again.
    pub fn finished(&self, token: i64) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
    }

    fn is_active(&self, token: i64) -> bool {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&token)
    }

    /// Moves a row this worker left `sending` under a finished claim to claim `token`.
    async fn take_over(
        &self,
        campaign: &CampaignId,
        pair: &Pair,
        old: i64,
        token: i64,
        now: i64,
    ) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE deliveries SET token = $1, updated_at = $2
             WHERE campaign_id = $3 AND user_id = $4 AND channel = $5
               AND status = 'sending' AND owner = $6 AND token = $7",
        )
        .bind(token)
        .bind(now)
        .bind(campaign.as_str())
        .bind(pair.user_id.as_str())
        .bind(pair.channel.as_str())
        .bind(self.owner.as_str())
        .bind(old)
        .execute(self.pool().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The rows of `pairs`' recipients.
    async fn rows(
        &self,
        campaign: &CampaignId,
        pairs: &[Pair],
    ) -> Result<HashMap<(UserId, Channel), Found>, LedgerError> {
        let pool = self.pool().await?;
        let mut markers = Markers::new(self.sqlite);
        let campaign_marker = markers.take(1).remove(0);
        let sql = format!(
            "SELECT user_id, channel, status, owner, token FROM deliveries
             WHERE campaign_id = {campaign_marker} AND user_id IN ({})",
            markers.take(pairs.len()).join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(campaign.as_str());
        for pair in pairs {
            query = query.bind(pair.user_id.as_str());
        }
        let mut rows = HashMap::with_capacity(pairs.len());
        for row in query.fetch_all(pool).await? {
            let user: String = row.try_get(0)?;
            let channel: String = row.try_get(1)?;
            let mark: String = row.try_get(2)?;
            let (Ok(user), Ok(channel)) = (UserId::parse(&user), channel.parse()) else {
                return Err(LedgerError::Corrupt(format!("row {user}/{channel}")));
            };
            rows.insert(
                (user, channel),
                Found {
                    mark: mark.parse()?,
                    owner: row.try_get(3)?,
                    token: row.try_get(4)?,
                },
            );
        }
        Ok(rows)
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
}

/// The outcome writer: takes the outcomes waiting and those arriving within `GATHER` (up to
/// `MAX_GROUP`), writes them in one statement, answers each. One write at a time:
/// more at once made smaller groups and cost the database more per outcome (measured on
/// PostgreSQL: 4 writers, 2.8 outcomes per write; 1 writer, 11, and 12 % faster end to end).
/// A failed write is retried for `RECORD_PATIENCE`.
pub(super) async fn write_outcomes(
    pool: AnyPool,
    sqlite: bool,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        let until = tokio::time::Instant::now() + GATHER;
        // `timeout_at` looks at the queue before the clock: what waits is taken even late.
        while group.len() < MAX_GROUP {
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(waiting)) => group.push(waiting),
                Ok(None) | Err(_) => break,
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

/// Upserts outcomes; a delivered row is never overwritten.
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
        let attempts = |e: &Entry| if e.mark == Mark::Cancelled { 0i64 } else { 1 };
        if sqlite {
            let (values, padding) = padded_rows(7, chunk.len());
            let mut query =
                sqlx::query(AssertSqlSafe(RECORD_SQLITE.replace("{rows}", &values))).bind(now);
            for e in chunk {
                query = query
                    .bind(e.campaign.as_str())
                    .bind(e.pair.user_id.as_str())
                    .bind(e.pair.channel.as_str())
                    .bind(e.pair.locale.as_str())
                    .bind(e.mark.as_str())
                    .bind(attempts(e))
                    .bind(e.error.as_deref());
            }
            for _ in 0..padding * 7 {
                query = query.bind(None::<&str>);
            }
            query.execute(pool).await?;
        } else {
            let values: Vec<serde_json::Value> = chunk
                .iter()
                .map(|e| {
                    json!([
                        e.campaign.as_str(),
                        e.pair.user_id.as_str(),
                        e.pair.channel.as_str(),
                        e.pair.locale,
                        e.mark.as_str(),
                        attempts(e),
                        e.error
                    ])
                })
                .collect();
            sqlx::query(RECORD_POSTGRES)
                .bind(now)
                .bind(serde_json::Value::Array(values).to_string())
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::{entry, pair, sqlite};

    #[tokio::test]
    async fn rows_this_worker_left_sending_are_held_while_their_batch_runs_then_taken_back() {
        let (_dir, ledger) = sqlite().await;
        let campaign = CampaignId::parse("c").expect("id");
        let pairs = [pair("a", Channel::Email)];
        let first = ledger.claim(&campaign, &pairs).await.expect("claim");
        let while_running = ledger.claim(&campaign, &pairs).await.expect("claim");
        assert_eq!(
            while_running.held.len(),
            1,
            "the first batch is still on it"
        );
        ledger.finished(while_running.token);
        // The first batch ends without its outcome written (the ledger was away).
        ledger.finished(first.token);
        let after = ledger.claim(&campaign, &pairs).await.expect("claim");
        assert!(after.all_ours(), "{after:?}");
    }

    #[test]
    fn sqlite_rows_are_exact_when_few_and_padded_to_a_multiple_of_sixteen_when_many() {
        assert_eq!(padded_rows(2, 1), ("(?, ?)".to_string(), 0));
        assert_eq!(padded_rows(1, 3).1, 0);
        let (text, padding) = padded_rows(3, 17);
        assert_eq!((text.matches('(').count(), padding), (32, 15));
        assert_eq!(padded_rows(7, ROWS_PER_STATEMENT).1, 0);
    }

    #[test]
    fn markers_are_numbered_for_postgres_and_anonymous_for_sqlite() {
        assert_eq!(Markers::new(false).take(3), ["$1", "$2", "$3"]);
        let mut markers = Markers::new(false);
        markers.take(2);
        assert_eq!(markers.take(1), ["$3"]);
        assert_eq!(Markers::new(true).take(2), ["?", "?"]);
    }

    #[tokio::test]
    async fn a_claim_skips_delivered_pairs_and_leaves_live_claims_to_their_worker() {
        let (_dir, ledger) = sqlite().await;
        let campaign = CampaignId::parse("c").expect("id");
        let pairs = [pair("a", Channel::Email), pair("b", Channel::Email)];
        let first = ledger.claim(&campaign, &pairs).await.expect("claim");
        assert!(first.all_ours());
        ledger
            .record(entry(&campaign, "a", Mark::Delivered))
            .await
            .expect("record");
        // `b` is still claimed by this (live) worker: a second copy may not send it.
        let again = ledger.claim(&campaign, &pairs).await.expect("claim");
        assert!(
            again
                .delivered
                .contains(&(UserId::parse("a").expect("id"), Channel::Email))
        );
        assert!(
            again
                .held
                .contains(&(UserId::parse("b").expect("id"), Channel::Email))
        );
        // A failed pair is free to claim again; a delivered one never goes back.
        ledger
            .record_all(vec![
                entry(&campaign, "b", Mark::Failed),
                entry(&campaign, "a", Mark::Dead),
            ])
            .await
            .expect("record");
        let third = ledger.claim(&campaign, &pairs).await.expect("claim");
        assert_eq!(third.delivered.len(), 1);
        assert!(third.held.is_empty());
    }

    #[tokio::test]
    async fn the_claim_of_a_worker_that_stopped_beating_expires() {
        let (dir, ledger) = sqlite().await;
        let campaign = CampaignId::parse("c").expect("id");
        let pairs = [pair("a", Channel::Push)];
        ledger.claim(&campaign, &pairs).await.expect("claim");
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let other = Ledger::open(&url).expect("open");
        let held = other.claim(&campaign, &pairs).await.expect("claim");
        assert_eq!(held.held.len(), 1, "the first worker is alive");
        sqlx::query("UPDATE workers SET seen_at = 0 WHERE id = $1")
            .bind(ledger.owner.as_str())
            .execute(&ledger.pool)
            .await
            .expect("age the heartbeat");
        let taken = other.claim(&campaign, &pairs).await.expect("claim");
        assert!(taken.all_ours(), "an expired claim is taken over");
    }
}
