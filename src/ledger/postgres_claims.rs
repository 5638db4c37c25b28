//! Claims and outcomes on the PostgreSQL ledger: pairs claimed in one insert and, for the rows
//! already there, one transaction; outcomes and their counters written in one statement.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{PgConnection, Row};

use super::LedgerError;
use super::claim::{ClaimJob, Found, Liveness, decide};
use super::postgres::Store;
use super::rows::{Claims, Entry, Fenced, Mark, Pair, RATE_BUCKET_MS, Recorded, Tally};
use crate::batch::EmailAddress;

/// The end of both claim statements: the rows inserted (`new`) are counted, and returned.
macro_rules! counted_claims {
    () => {
        "    counted AS (
        INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
        SELECT $1, channel, locale, 'rows', COUNT(*) FROM new GROUP BY channel, locale
        ON CONFLICT (campaign_id, channel, locale, status)
        DO UPDATE SET n = campaign_counts.n + excluded.n)
    SELECT user_id, channel FROM new"
    };
}

/// Claims every pair no row has yet; returns those it inserted. $1 campaign, $2 owner, $3
/// token, $4 now, $5–$7 users, channels, locales.
const CLAIM_NEW: &str = concat!(
    "WITH new AS (
        INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at)
        SELECT $1, t.u, t.c, t.l, 'sending', 0, $2, $3, $4
        FROM UNNEST($5::text[], $6::text[], $7::text[]) AS t(u, c, l)
        ON CONFLICT (campaign_id, user_id, channel) DO NOTHING
        RETURNING user_id, channel, locale),
",
    counted_claims!()
);
/// `CLAIM_NEW` for a batch with email pairs, with $8–$9 addresses and feedback tokens; a batch
/// of push pairs only keeps the statement that carries neither.
const CLAIM_NEW_EMAIL: &str = concat!(
    "WITH new AS (
        INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at, address, feedback_token)
        SELECT $1, t.u, t.c, t.l, 'sending', 0, $2, $3, $4, t.a, t.f
        FROM UNNEST($5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS t(u, c, l, a, f)
        ON CONFLICT (campaign_id, user_id, channel) DO NOTHING
        RETURNING user_id, channel, locale),
",
    counted_claims!()
);
/// The rows of pairs a claim did not insert: $1 campaign, $2 users, $3 channels.
const FIND: &str = "SELECT d.user_id, d.channel, d.status, d.owner, d.token, d.locale
    FROM deliveries d JOIN UNNEST($2::text[], $3::text[]) AS t(u, c)
      ON d.user_id = t.u AND d.channel = t.c
    WHERE d.campaign_id = $1";
const BEATS: &str = "SELECT id, beat FROM workers WHERE id = ANY($1::text[])";
const EVICT: &str = "DELETE FROM workers WHERE id = $1 AND beat = $2";
/// Takes rows still as the claim found them: $1 campaign, $2 owner, $3 token, $4 now, then
/// users, channels, locales, found statuses, owners, tokens, addresses, feedback tokens.
const TAKE: &str = "UPDATE deliveries d SET status = 'sending', owner = $2, token = $3, locale = t.l, updated_at = $4,
        address = t.a, feedback_token = t.f
    FROM UNNEST($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                $11::text[], $12::text[])
      AS t(u, c, l, s, o, k, a, f)
    WHERE d.campaign_id = $1 AND d.user_id = t.u AND d.channel = t.c
      AND d.status = t.s AND d.owner IS NOT DISTINCT FROM t.o AND d.token IS NOT DISTINCT FROM t.k
    RETURNING d.user_id, d.channel";
/// Writes outcomes where the rows still carry their claims, and counts them: $1 now, $2 the
/// rate bucket, then campaigns, users, channels, locales, statuses, attempts, errors, owners,
/// tokens.
const RECORD: &str = "WITH t AS (
        SELECT * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::bigint[], $9::text[], $10::text[], $11::bigint[])
          AS t(campaign, u, c, l, s, a, e, o, k)),
    written AS (
        UPDATE deliveries d SET status = t.s, locale = t.l, attempts = d.attempts + t.a,
            last_error = t.e, owner = NULL, token = NULL, updated_at = $1
        FROM t
        WHERE d.campaign_id = t.campaign AND d.user_id = t.u AND d.channel = t.c
          AND d.status = 'sending' AND d.owner = t.o AND d.token = t.k
        RETURNING d.campaign_id, d.user_id, d.channel, d.locale, d.status),
    counted AS (
        INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
        SELECT campaign_id, channel, locale, status, COUNT(*) FROM written
        GROUP BY campaign_id, channel, locale, status
        ORDER BY campaign_id, channel, locale, status
        ON CONFLICT (campaign_id, channel, locale, status)
        DO UPDATE SET n = campaign_counts.n + excluded.n),
    rated AS (
        INSERT INTO campaign_rates (campaign_id, bucket, delivered)
        SELECT campaign_id, $2, COUNT(*) FROM written WHERE status = 'delivered'
        GROUP BY campaign_id ORDER BY campaign_id
        ON CONFLICT (campaign_id, bucket)
        DO UPDATE SET delivered = campaign_rates.delivered + excluded.delivered)
    SELECT campaign_id, user_id, channel FROM written";
const GIVE_UP: &str = "UPDATE deliveries SET status = 'dead', last_error = $4, updated_at = $5
    WHERE campaign_id = $1 AND user_id = $2 AND channel = $3 AND status = 'failed'
    RETURNING locale";
const COUNT: &str = "INSERT INTO campaign_counts (campaign_id, channel, locale, status, n)
    SELECT $1, t.c, t.l, t.s, t.n FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[])
      AS t(c, l, s, n) ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, channel, locale, status)
    DO UPDATE SET n = campaign_counts.n + excluded.n";

impl Store {
    pub(super) async fn claim(&self, job: ClaimJob, now: i64) -> Result<Claims, LedgerError> {
        let campaign = job.campaign.as_str();
        let owner = &*job.owner;
        let mut claims = Claims {
            token: job.token,
            owner: job.owner.clone(),
            ..Claims::default()
        };
        let users: Vec<&str> = job.pairs.iter().map(|p| p.user_id.as_str()).collect();
        let channels: Vec<&str> = job.pairs.iter().map(|p| p.channel.as_str()).collect();
        let locales: Vec<&str> = job.pairs.iter().map(|p| p.locale.as_str()).collect();
        let addresses: Vec<Option<&str>> = job
            .pairs
            .iter()
            .map(|p| p.address.as_ref().map(EmailAddress::as_str))
            .collect();
        let email = addresses.iter().any(Option::is_some);
        let claim = sqlx::query(if email { CLAIM_NEW_EMAIL } else { CLAIM_NEW })
            .bind(campaign)
            .bind(owner)
            .bind(job.token)
            .bind(now)
            .bind(&users)
            .bind(&channels)
            .bind(&locales);
        let claim = if email {
            claim.bind(&addresses).bind(&job.tokens)
        } else {
            claim
        };
        let inserted = claim.fetch_all(&self.pool).await?;
        if inserted.len() == job.pairs.len() {
            return Ok(claims);
        }
        let mut new = HashSet::with_capacity(inserted.len());
        for row in inserted {
            new.insert((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
        }
        let rest: Vec<_> = job
            .pairs
            .iter()
            .zip(&job.tokens)
            .filter(|(p, _)| {
                !new.contains(&(
                    p.user_id.as_str().to_string(),
                    p.channel.as_str().to_string(),
                ))
            })
            .collect();
        let users: Vec<&str> = rest.iter().map(|(p, _)| p.user_id.as_str()).collect();
        let channels: Vec<&str> = rest.iter().map(|(p, _)| p.channel.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let mut rows = HashMap::new();
        for row in sqlx::query(FIND)
            .bind(campaign)
            .bind(&users)
            .bind(&channels)
            .fetch_all(&mut *tx)
            .await?
        {
            let user: String = row.try_get(0)?;
            let channel: String = row.try_get(1)?;
            let mark: String = row.try_get(2)?;
            rows.insert(
                (user, channel),
                Found {
                    mark: mark.parse()?,
                    owner: row.try_get(3)?,
                    token: row.try_get(4)?,
                    locale: row.try_get(5)?,
                },
            );
        }
        let owners: Vec<String> = rows
            .values()
            .filter(|f| f.mark == Mark::Sending)
            .filter_map(|f| f.owner.clone())
            .filter(|o| o != owner)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut beats = HashMap::new();
        if !owners.is_empty() {
            for row in sqlx::query(BEATS).bind(&owners).fetch_all(&mut *tx).await? {
                beats.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
        let mut evicted: HashSet<String> = HashSet::new();
        let mut take: Vec<(&Pair, &Found, &Option<String>)> = Vec::new();
        for &(p, feedback_token) in &rest {
            let key = (p.user_id.clone(), p.channel);
            let Some(found) = rows.get(&(
                p.user_id.as_str().to_string(),
                p.channel.as_str().to_string(),
            )) else {
                claims.held.insert(key);
                continue;
            };
            let liveness = found.owner.as_ref().map(|o| {
                if evicted.contains(o) {
                    Liveness::Gone
                } else {
                    job.watch.judge(o, beats.get(o).copied())
                }
            });
            let decision = decide(found, owner, &|t| job.active.contains(t), liveness);
            let Some(evict) = decision.settle(&mut claims, key.clone()) else {
                continue;
            };
            if let Some((other, beat)) = evict
                && !evicted.contains(&other)
            {
                let gone = sqlx::query(EVICT)
                    .bind(&other)
                    .bind(beat)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    claims.held.insert(key);
                    continue;
                }
                evicted.insert(other);
            }
            take.push((p, found, feedback_token));
        }
        if !take.is_empty() {
            let taken = sqlx::query(TAKE)
                .bind(campaign)
                .bind(owner)
                .bind(job.token)
                .bind(now)
                .bind(
                    take.iter()
                        .map(|(p, _, _)| p.user_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    take.iter()
                        .map(|(p, _, _)| p.channel.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    take.iter()
                        .map(|(p, _, _)| p.locale.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    take.iter()
                        .map(|(_, f, _)| f.mark.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    take.iter()
                        .map(|(_, f, _)| f.owner.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(take.iter().map(|(_, f, _)| f.token).collect::<Vec<_>>())
                .bind(
                    take.iter()
                        .map(|(p, _, _)| p.address.as_ref().map(EmailAddress::as_str))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    take.iter()
                        .map(|(_, _, t)| t.as_deref())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *tx)
                .await?;
            let mut got = HashSet::with_capacity(taken.len());
            for row in taken {
                got.insert((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
            }
            let mut tally = Tally::default();
            for (p, found, _) in take {
                if got.contains(&(
                    p.user_id.as_str().to_string(),
                    p.channel.as_str().to_string(),
                )) {
                    tally.taken(campaign, p.channel.as_str(), &found.locale, found.mark);
                } else {
                    claims.held.insert((p.user_id.clone(), p.channel));
                }
            }
            apply(&mut tx, &tally).await?;
        }
        tx.commit().await?;
        Ok(claims)
    }

    pub(super) async fn record(
        &self,
        outcomes: &[Fenced],
        now: i64,
    ) -> Result<Vec<Recorded>, LedgerError> {
        let column = |f: fn(&Fenced) -> String| outcomes.iter().map(f).collect::<Vec<_>>();
        let written = sqlx::query(RECORD)
            .bind(now)
            .bind(now / RATE_BUCKET_MS)
            .bind(column(|o| o.entry.campaign.as_str().into()))
            .bind(column(|o| o.entry.pair.user_id.as_str().into()))
            .bind(column(|o| o.entry.pair.channel.as_str().into()))
            .bind(column(|o| o.entry.pair.locale.clone()))
            .bind(column(|o| o.entry.mark.as_str().into()))
            .bind(
                outcomes
                    .iter()
                    .map(|o| o.entry.attempts())
                    .collect::<Vec<_>>(),
            )
            .bind(
                outcomes
                    .iter()
                    .map(|o| o.entry.error.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(column(|o| o.owner.to_string()))
            .bind(outcomes.iter().map(|o| o.token).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        let mut done = HashSet::with_capacity(written.len());
        for row in written {
            done.insert((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<String, _>(2)?,
            ));
        }
        Ok(outcomes
            .iter()
            .map(|o| {
                let e = &o.entry;
                let key = (
                    e.campaign.as_str().to_string(),
                    e.pair.user_id.as_str().to_string(),
                    e.pair.channel.as_str().to_string(),
                );
                if done.contains(&key) {
                    Recorded::Written
                } else {
                    Recorded::FencedOut
                }
            })
            .collect())
    }

    pub(super) async fn give_up(&self, entries: &[Entry], now: i64) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let mut tally = Tally::default();
        for e in entries {
            let row = sqlx::query(GIVE_UP)
                .bind(e.campaign.as_str())
                .bind(e.pair.user_id.as_str())
                .bind(e.pair.channel.as_str())
                .bind(e.error.as_deref())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                let locale: String = row.try_get(0)?;
                tally.given_up(e.campaign.as_str(), e.pair.channel.as_str(), &locale);
            }
        }
        apply(&mut tx, &tally).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Applies counter changes of one campaign at a time, in key order (two workers' transactions
/// lock counter rows in the same order).
async fn apply(tx: &mut PgConnection, tally: &Tally) -> Result<(), LedgerError> {
    let mut by_campaign: BTreeMap<&str, Vec<(&str, &str, &str, i64)>> = BTreeMap::new();
    for ((campaign, channel, locale, status), n) in &tally.counts {
        if *n != 0 {
            by_campaign
                .entry(campaign)
                .or_default()
                .push((channel, locale, status, *n));
        }
    }
    for (campaign, rows) in by_campaign {
        sqlx::query(COUNT)
            .bind(campaign)
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
