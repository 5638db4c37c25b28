//! `ledger`: what the delivery ledger costs — the email and push runs with the ledger off, on
//! SQLite and on PostgreSQL, interleaved — and `sunset status` on ledgers of millions of
//! recipients; the campaigns written to PostgreSQL are deleted after.

use std::time::Instant;

use anyhow::Context as _;

use crate::options::{env_list, env_usize};
use crate::process::{run, sunset_bin};
use crate::report::median;
use crate::sinks::{SmtpSink, start_push_sink};
use crate::workdir::Workdir;
use crate::{Bench, NO_LEDGER, POSTGRES_LEDGER, SQLITE_LEDGER};

impl Bench {
    /// The ledger's cost: the same email run with the ledger off, on SQLite and on PostgreSQL,
    /// in rounds off → SQLite → PostgreSQL → off …, each ledger against the off runs around it;
    /// at the default `worker.concurrency` (64) and at 256. A send holds its slot until its
    /// outcome is recorded, so with a ledger the concurrency also bounds the database's latency.
    pub(super) fn ledger(&mut self) -> anyhow::Result<()> {
        let n = self.options.n;
        let sink = SmtpSink::start()?;
        let off = NO_LEDGER;
        let postgres = format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n");
        let ledgers = [
            ("SQLite", "[ledger]\nurl = \"sqlite://sunset-ledger.db\"\n"),
            ("PostgreSQL", postgres.as_str()),
        ];
        for concurrency in [64, 256] {
            eprintln!(
                "== ledger: {n} emails with the ledger off, on SQLite, on PostgreSQL; concurrency {concurrency}"
            );
            let worker = format!("concurrency = {concurrency}\n");
            let setup = |ledger| (worker.as_str(), ledger);
            let mut off_rates = vec![self.sunset_email(&sink, n, "ledger-off-0", setup(off))?.0];
            let mut rates = vec![Vec::new(); ledgers.len()];
            for round in 1..=self.options.repeat {
                eprintln!(" round {round}");
                for ((name, section), rates) in ledgers.iter().zip(&mut rates) {
                    let label = format!("ledger-{}-{round}", name.to_lowercase());
                    rates.push(self.sunset_email(&sink, n, &label, setup(section))?.0);
                }
                let label = format!("ledger-off-{round}");
                off_rates.push(self.sunset_email(&sink, n, &label, setup(off))?.0);
            }
            for ((name, _), rates) in ledgers.iter().zip(&rates) {
                self.report.ratio(
                    &format!(
                        "email msgs/s, N={n}, concurrency {concurrency}, ledger on {name} vs off"
                    ),
                    (rates, &off_rates, true),
                    "/s",
                    if *name == "SQLite" { 0.9 } else { 0.8 },
                );
            }
        }
        Ok(())
    }

    /// The ledger's cost for push at the default concurrency, in rounds off → SQLite → two
    /// workers on one SQLite file → PostgreSQL → off …, each against the off runs around it
    /// (and the two workers against one on SQLite).
    pub(super) fn ledger_push(&mut self) -> anyhow::Result<()> {
        let n = self.options.push_n;
        let concurrency = env_usize("SUNSET_BENCH_LEDGER_CONCURRENCY")?.unwrap_or(64);
        let (url, stats) = self.runtime.block_on(start_push_sink())?;
        let postgres = format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n");
        let setups = [
            ("off", NO_LEDGER, 1),
            ("SQLite", SQLITE_LEDGER, 1),
            ("SQLite, two workers", SQLITE_LEDGER, 2),
            ("PostgreSQL", postgres.as_str(), 1),
        ];
        eprintln!(
            "== ledger: {n} pushes with the ledger off, on SQLite (one and two workers), on PostgreSQL"
        );
        let mut rates = vec![Vec::new(); setups.len()];
        for round in 0..=self.options.repeat {
            eprintln!(" round {round}");
            // Off alone first, then SQLite, two workers, PostgreSQL and off in every round.
            let order: &[usize] = if round == 0 { &[0] } else { &[1, 2, 3, 0] };
            for &i in order {
                let (name, ledger, workers) = setups[i];
                let label = format!(
                    "push-{}-{round}",
                    name.to_lowercase().replace([',', ' '], "")
                );
                rates[i].push(self.sunset_push(
                    &url,
                    &stats,
                    (n, concurrency),
                    &label,
                    ledger,
                    workers,
                )?);
            }
        }
        for (i, goal) in [(1, 0.9), (3, 0.8)] {
            self.report.ratio(
                &format!(
                    "push req/s, N={n}, concurrency 64, ledger on {} vs off",
                    setups[i].0
                ),
                (&rates[i], &rates[0], true),
                "/s",
                goal,
            );
        }
        self.report.ratio(
            &format!("push req/s, N={n}, two workers vs one on one SQLite file"),
            (&rates[2], &rates[1], false),
            "/s",
            1.0,
        );
        Ok(())
    }

    /// `sunset status` on ledgers of 1 and 10 million recipients (SQLite) and 1 million
    /// (PostgreSQL), rows written straight into the tables: the whole command's wall time, and
    /// the SQLite file's bytes per recipient.
    pub(super) fn ledger_scale(&mut self) -> anyhow::Result<()> {
        let sizes = env_list("SUNSET_BENCH_SCALE")?.unwrap_or_else(|| vec![1_000_000, 10_000_000]);
        let runs = sizes
            .iter()
            .map(|&n| ("SQLite", n as u64))
            .chain(sizes.first().map(|&n| ("PostgreSQL", n as u64)));
        for (name, n) in runs {
            eprintln!("== ledger scale: {n} recipients on {name}");
            let campaign = format!("scale-{:08x}", fastrand::u32(..));
            let sqlite = name == "SQLite";
            let ledger = if sqlite {
                SQLITE_LEDGER.to_string()
            } else {
                self.postgres_campaigns.push(campaign.clone());
                format!("[ledger]\nurl = \"{POSTGRES_LEDGER}\"\n")
            };
            let work = Workdir::new(self.runtime.handle(), self.options.keep, "", &ledger)?;
            // The schema, as a worker makes it.
            let status = |work: &Workdir| {
                let started = Instant::now();
                let run = run(
                    work.command(&sunset_bin(), &["status", "--campaign", &campaign]),
                    work.path(),
                    "status",
                )?;
                anyhow::Ok((run, started.elapsed()))
            };
            status(&work)?;
            let fill = [
                "INSERT INTO campaigns (id, template, recipients, deadline, state, created_at) VALUES ($1, 'xiami-shutdown', $2, NULL, 'running', 0)",
                "INSERT INTO campaign_totals (campaign_id, channel, locale, total) VALUES ($1, 'email', 'en', $2)",
                "INSERT INTO campaign_counts (campaign_id, channel, locale, status, n) VALUES ($1, 'email', 'en', 'delivered', $2), ($1, 'email', 'en', 'rows', $2)",
                "INSERT INTO deliveries (campaign_id, user_id, channel, locale, status, attempts, updated_at)
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $2)
                 SELECT $1, 'u-' || i, 'email', 'en', 'delivered', 1, 0 FROM s",
            ];
            let filling = Instant::now();
            if sqlite {
                let db = rusqlite::Connection::open(work.path().join("sunset-ledger.db"))?;
                db.execute_batch("BEGIN")?;
                for sql in fill {
                    // `?N` binds by number; SQLite numbers `$N` markers in order of appearance.
                    db.execute(
                        &sql.replace('$', "?"),
                        rusqlite::params![campaign, n as i64],
                    )?;
                }
                db.execute_batch("COMMIT")?;
            } else {
                self.runtime.block_on(async {
                    let pool = sqlx::PgPool::connect(POSTGRES_LEDGER).await?;
                    for sql in fill {
                        sqlx::query(sql)
                            .bind(&campaign)
                            .bind(n as i64)
                            .execute(&pool)
                            .await?;
                    }
                    pool.close().await;
                    anyhow::Ok(())
                })?;
            }
            eprintln!(
                "  {n} rows written in {:.1}s",
                filling.elapsed().as_secs_f64()
            );
            let mut times = Vec::new();
            for _ in 0..3 {
                let (run, took) = status(&work)?;
                run.expect_success("sunset status")?;
                times.push(took.as_secs_f64() * 1000.0);
            }
            let took = median(&times);
            self.report.absolute(
                &format!("status at {n} recipients on {name} (whole command)"),
                format!("{took:.0} ms"),
                "< 1000 ms".into(),
                took < 1000.0,
            );
            if sqlite {
                let bytes = std::fs::metadata(work.path().join("sunset-ledger.db"))?.len()
                    + std::fs::metadata(work.path().join("sunset-ledger.db-wal"))
                        .map_or(0, |m| m.len());
                self.report.info(
                    &format!("SQLite ledger bytes per recipient at {n}"),
                    format!("{:.0} B", bytes as f64 / n as f64),
                    "-",
                );
            }
        }
        Ok(())
    }

    /// Deletes the campaigns this bench wrote to [`POSTGRES_LEDGER`] (20,000 rows a run: a day
    /// of benchmarks had left 1.6 M rows, 463 MB, in the shared `test` database).
    pub(super) fn forget_postgres_campaigns(&mut self) -> anyhow::Result<()> {
        let campaigns = std::mem::take(&mut self.postgres_campaigns);
        self.runtime
            .block_on(async {
                let pool = sqlx::PgPool::connect(POSTGRES_LEDGER).await?;
                let mut tx = pool.begin().await?;
                for sql in [
                    "DELETE FROM deliveries WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_totals WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_counts WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaign_rates WHERE campaign_id = ANY($1)",
                    "DELETE FROM campaigns WHERE id = ANY($1)",
                ] {
                    sqlx::query(sql).bind(&campaigns).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                pool.close().await;
                anyhow::Ok(())
            })
            .with_context(|| format!("deleting the bench's campaigns from {POSTGRES_LEDGER}"))
    }
}
