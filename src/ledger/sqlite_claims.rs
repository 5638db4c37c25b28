//! Claims and outcomes on the SQLite ledger: pairs claimed, outcomes written where the claim
//! still holds, failed pairs given up, each with its counters, on the writer thread.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::LedgerError;
use super::claim::{ClaimJob, Decision, Found, decide};
use super::rows::{Claims, Entry, Fenced, Mark, Recorded, Tally};
use super::sqlite::Store;
use crate::batch::EmailAddress;

const CLAIM_NEW: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at)
    VALUES (?1, ?2, ?3, ?4, 'sending', 0, ?5, ?6, ?7)
    ON CONFLICT (campaign_id, user_id, channel) DO NOTHING";
/// `CLAIM_NEW` for an email pair, with its address and feedback token; push rows keep the
/// statement that binds neither.
const CLAIM_NEW_EMAIL: &str = "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, owner, token, updated_at, address, feedback_token)
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
        let mut insert_email = c.prepare_cached(CLAIM_NEW_EMAIL)?;
        for (p, feedback_token) in job.pairs.iter().zip(&job.tokens) {
            let address = p.address.as_ref().map(EmailAddress::as_str);
            let (user, channel) = (p.user_id.as_str(), p.channel.as_str());
            let inserted = match address {
                None => insert.execute(params![
                    campaign, user, channel, p.locale, owner, job.token, now
                ])?,
                Some(address) => insert_email.execute(params![
                    campaign,
                    user,
                    channel,
                    p.locale,
                    owner,
                    job.token,
                    now,
                    address,
                    feedback_token
                ])?,
            };
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

impl Store {
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
}
