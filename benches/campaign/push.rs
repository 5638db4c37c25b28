//! `push`: sunset's push run (enqueue, then `sunset worker` into the push sink) against `wrk`
//! posting the body sunset sent, over as many connections; and one push run as the ledger
//! measurements use it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, ensure};

use crate::process::{Usage, timed, tool};
use crate::report::rate;
use crate::sinks::{PushStats, lock, start_push_sink};
use crate::workdir::Workdir;
use crate::{Bench, NO_LEDGER, POSTGRES_LEDGER, UNLIMITED};

impl Bench {
    pub(super) fn push(&mut self) -> anyhow::Result<()> {
        let n = self.options.push_n;
        let wrk = tool("wrk")?;
        eprintln!("== push: {n} notices into an axum sink, against wrk");
        let (url, stats) = self.runtime.block_on(start_push_sink())?;
        let mut results = Vec::new();
        for &concurrency in &self.options.concurrencies {
            let (mut sunset_rates, mut wrk_rates, mut connections) =
                (Vec::new(), Vec::new(), 0usize);
            let (mut fastest, mut wrk_cpu): (Option<Usage>, Option<String>) = (None, None);
            // sunset, wrk, sunset, wrk, …: wrk posts the body sunset sent first.
            for round in 1..=self.options.repeat {
                eprintln!(" concurrency {concurrency}, round {round}");
                let work = self.workdir_with_worker(&url, concurrency)?;
                work.audience("audience.csv", n)?;
                work.enqueue("push", "audience.csv", "push", false)?;
                stats.reset();
                let worker = work.worker(&format!("push-{concurrency}-{round}"))?;
                let span = stats.window(n, Duration::from_secs(30))?;
                ensure!(
                    stats.count.load(Ordering::SeqCst) == n as u64,
                    "push sink got more than {n}"
                );
                ensure!(work.dead_letters()? == 0, "push: dead letters");
                let sunset = rate(n - 1, span);
                connections = lock(&stats.peers).len();
                eprintln!(
                    "  sunset worker: {n} pushes over {connections} connections, sink window {:.2}s = {sunset:.0}/s; worker wall {:.2}s; CPU {}/push; peak RSS {}",
                    span.as_secs_f64(),
                    worker.wall.as_secs_f64(),
                    worker.cpu_per(n),
                    worker.rss()
                );
                sunset_rates.push(sunset);
                if fastest.as_ref().is_none_or(|f| worker.wall < f.wall) {
                    fastest = Some(worker);
                }
                drop(work);

                let (reference, cpu) = self.wrk(&wrk, &url, &stats, connections.max(1))?;
                wrk_rates.push(reference);
                wrk_cpu = Some(cpu);
            }
            results.push((
                concurrency,
                connections,
                sunset_rates,
                wrk_rates,
                fastest,
                wrk_cpu,
            ));
        }
        for (concurrency, connections, sunset, reference, fastest, wrk_cpu) in results {
            self.report.ratio(
                &format!("push req/s, N={n}, concurrency {concurrency} ({connections} conns)"),
                (&sunset, &reference, false),
                "/s",
                0.8,
            );
            if let Some(worker) = fastest {
                self.report.info(
                    &format!(
                        "  whole worker process, fastest run (start → idle exit), concurrency {concurrency}"
                    ),
                    format!(
                        "{:.0} /s ({:.2}s)",
                        rate(n, worker.wall),
                        worker.wall.as_secs_f64()
                    ),
                    "-",
                );
                self.report.info(
                    &format!("  client CPU per request (user+sys), fastest run / last wrk, concurrency {concurrency}"),
                    worker.cpu_per(n),
                    wrk_cpu.as_deref().unwrap_or("?"),
                );
            }
        }
        Ok(())
    }

    fn workdir_with_worker(&self, url: &str, concurrency: usize) -> anyhow::Result<Workdir> {
        Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            &format!("concurrency = {concurrency}\n"),
            &format!("[push]\ntransport = \"http\"\nurl = \"{url}\"\n{UNLIMITED}{NO_LEDGER}"),
        )
    }

    /// wrk posting the body sunset sent (with its headers) over `connections` connections:
    /// the sink's first → last rate, and wrk's CPU per request.
    fn wrk(
        &self,
        wrk: &Path,
        url: &str,
        stats: &PushStats,
        connections: usize,
    ) -> anyhow::Result<(f64, String)> {
        let (body, key) = lock(&stats.sample)
            .clone()
            .ok_or_else(|| anyhow!("no push body sampled"))?;
        let dir = tempfile::tempdir()?;
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Idempotency-Key\"] = {}\n",
            lua_string(&body),
            lua_string(key.as_bytes())
        );
        let script = dir.path().join("push.lua");
        std::fs::write(&script, lua)?;
        let threads = connections.clamp(1, 2).to_string();
        let seconds = format!("{}s", self.options.wrk_seconds);
        let connections_arg = connections.to_string();
        let mut command = Command::new(wrk);
        command.args([
            "-t",
            &threads,
            "-c",
            &connections_arg,
            "-d",
            &seconds,
            "-s",
            &script.to_string_lossy(),
            url,
        ]);
        stats.reset();
        let (finished, usage) = timed(command, dir.path(), "wrk")?;
        finished.expect_success("wrk")?;
        let count = stats.count.load(Ordering::SeqCst) as usize;
        let wrk_rate = finished
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let sink_rate = rate(count.saturating_sub(1), stats.span());
        let cpu = usage.cpu_per(count);
        eprintln!(
            "  wrk: {count} requests over {} connections, sink window {:.2}s = {sink_rate:.0}/s (wrk says {}/s); CPU {cpu}/request",
            lock(&stats.peers).len(),
            stats.span().as_secs_f64(),
            wrk_rate.map_or("?".into(), |r| format!("{r:.0}"))
        );
        Ok((sink_rate, cpu))
    }

    /// One push run of `n` notices by `workers` workers on `ledger`: the sink's rate.
    pub(super) fn sunset_push(
        &mut self,
        url: &str,
        stats: &PushStats,
        (n, concurrency): (usize, usize),
        label: &str,
        ledger: &str,
        workers: usize,
    ) -> anyhow::Result<f64> {
        let work = Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            &format!("concurrency = {concurrency}\n"),
            &format!("[push]\ntransport = \"http\"\nurl = \"{url}\"\n{UNLIMITED}{ledger}"),
        )?;
        work.audience("audience.csv", n)?;
        let campaign = format!("{label}-{:08x}", fastrand::u32(..));
        if ledger.contains(POSTGRES_LEDGER) {
            self.postgres_campaigns.push(campaign.clone());
        }
        work.enqueue(&campaign, "audience.csv", "push", false)?;
        stats.reset();
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..workers)
                .map(|i| {
                    let work = &work;
                    scope.spawn(move || work.worker(&format!("{label}-w{i}")))
                })
                .collect();
            runs.into_iter().try_for_each(|run| {
                run.join()
                    .map_err(|_| anyhow!("{label}: a worker thread panicked"))?
                    .map(|_| ())
            })
        })?;
        let span = stats.window(n, Duration::from_secs(60))?;
        ensure!(
            stats.count.load(Ordering::SeqCst) == n as u64,
            "{label}: the push sink got more than {n}"
        );
        ensure!(work.dead_letters()? == 0, "{label}: dead letters");
        let sink_rate = rate(n - 1, span);
        eprintln!(
            "  {label}: {n} pushes, sink window {:.2}s = {sink_rate:.0}/s",
            span.as_secs_f64()
        );
        Ok(sink_rate)
    }
}

fn lua_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}
