//! `email`: sunset's email run (enqueue, then `sunset worker` into smtp-sink) against
//! `smtp-source` sending messages of the same size into the same sink, interleaved.

use std::process::Command;
use std::time::Duration;

use anyhow::ensure;

use crate::process::{Usage, run, sunset_bin, timed, tool};
use crate::report::rate;
use crate::sinks::SmtpSink;
use crate::workdir::Workdir;
use crate::{Bench, NO_LEDGER, POSTGRES_LEDGER, UNLIMITED};

/// SMTP connections: sunset's `email.pool_size` and smtp-source's `-s`.
const SMTP_CONNECTIONS: usize = 8;
/// Sent notices are sampled from this many recipients to measure the average email size.
const SIZE_SAMPLE: usize = 400;

impl Bench {
    /// `[email]` sending to `sink`, then `limits` (a `[rate]` table, or empty for the defaults).
    pub(super) fn smtp_config(sink: &SmtpSink, limits: &str) -> String {
        format!(
            "[email]\ntransport = \"smtp\"\nurl = \"{}\"\npool_size = {SMTP_CONNECTIONS}\n{limits}",
            sink.url()
        )
    }

    /// Average size of the emails sunset sends to the bench audience: `sunset send` of a
    /// sample to the `.eml` outbox (the exact bytes it would send over SMTP, CRLF and all).
    fn email_size(&mut self) -> anyhow::Result<usize> {
        let work = self.workdir(&format!(
            "[email]\ntransport = \"file\"\noutbox = \"outbox\"\n{UNLIMITED}"
        ))?;
        work.audience("sample.csv", SIZE_SAMPLE)?;
        let args = [
            "send",
            "--campaign",
            "size",
            "--template",
            "xiami-shutdown",
            "--audience",
            "sample.csv",
            "--channels",
            "email",
        ];
        run(work.command(&sunset_bin(), &args), work.path(), "send")?
            .expect_success("sunset send (size sample)")?;
        let mut sizes = Vec::new();
        for entry in std::fs::read_dir(work.path().join("outbox"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "eml") {
                sizes.push(std::fs::metadata(&path)?.len() as usize);
            }
        }
        ensure!(
            sizes.len() == SIZE_SAMPLE,
            "{} emails in the outbox, expected {SIZE_SAMPLE}",
            sizes.len()
        );
        let average = sizes.iter().sum::<usize>() / sizes.len();
        let (min, max) = (
            sizes.iter().min().copied().unwrap_or(0),
            sizes.iter().max().copied().unwrap_or(0),
        );
        self.report.note(format!(
            "email size: sunset's messages average {average} bytes (min {min}, max {max}, {} sampled); smtp-source sends `-l {average}` bytes of body plus its own few headers",
            sizes.len()
        ));
        Ok(average)
    }

    /// One sunset email run with the rate limits off: enqueue `n`, time the worker; sink rate
    /// (first → last message). `worker` goes into `[worker]`; `ledger` is a `[ledger]` table, or
    /// empty for the default (SQLite in the work folder).
    pub(super) fn sunset_email(
        &mut self,
        sink: &SmtpSink,
        n: usize,
        label: &str,
        (worker, ledger): (&str, &str),
    ) -> anyhow::Result<(f64, Usage)> {
        self.sunset_email_at(sink, n, label, (worker, ledger), UNLIMITED)
    }

    /// [`Bench::sunset_email`] with `limits` as the `[rate]` table (empty: the defaults).
    pub(super) fn sunset_email_at(
        &mut self,
        sink: &SmtpSink,
        n: usize,
        label: &str,
        (worker, ledger): (&str, &str),
        limits: &str,
    ) -> anyhow::Result<(f64, Usage)> {
        let work = Workdir::new(
            self.runtime.handle(),
            self.options.keep,
            worker,
            &format!("{}{ledger}", Self::smtp_config(sink, limits)),
        )?;
        work.audience("audience.csv", n)?;
        // A campaign id of its own: a shared PostgreSQL ledger remembers earlier runs.
        let campaign = format!("{label}-{:08x}", fastrand::u32(..));
        if ledger.contains(POSTGRES_LEDGER) {
            self.postgres_campaigns.push(campaign.clone());
        }
        work.enqueue(&campaign, "audience.csv", "email", false)?;
        let base = sink.count();
        let worker = work.worker(label)?;
        let (first, last) = sink.window(base, n, Duration::from_secs(30))?;
        ensure!(work.dead_letters()? == 0, "{label}: dead letters");
        let sink_rate = rate(n - 1, last - first);
        eprintln!(
            "  sunset worker: {n} emails, sink window {:.2}s = {sink_rate:.0}/s; worker wall {:.2}s = {:.0}/s; CPU {}/email; peak RSS {}",
            (last - first).as_secs_f64(),
            worker.wall.as_secs_f64(),
            rate(n, worker.wall),
            worker.cpu_per(n),
            worker.rss()
        );
        Ok((sink_rate, worker))
    }

    /// One smtp-source run of `n` messages of `size` bytes over 8 connections into the sink.
    fn smtp_source(&self, sink: &SmtpSink, n: usize, size: usize) -> anyhow::Result<(f64, Usage)> {
        let base = sink.count();
        let mut command = Command::new(tool("smtp-source")?);
        command.args([
            "-d",
            "-s",
            &SMTP_CONNECTIONS.to_string(),
            "-m",
            &n.to_string(),
            "-l",
            &size.to_string(),
            "-f",
            "noreply@xiami.example",
            "-t",
            "user@example.com",
            &format!("127.0.0.1:{}", sink.port),
        ]);
        let dir = tempfile::tempdir()?;
        let (finished, usage) = timed(command, dir.path(), "smtp-source")?;
        finished.expect_success("smtp-source")?;
        let (first, last) = sink.window(base, n, Duration::from_secs(30))?;
        let sink_rate = rate(n - 1, last - first);
        eprintln!(
            "  smtp-source: {n} messages, sink window {:.2}s = {sink_rate:.0}/s; wall {:.2}s = {:.0}/s; CPU {}/message",
            (last - first).as_secs_f64(),
            usage.wall.as_secs_f64(),
            rate(n, usage.wall),
            usage.cpu_per(n)
        );
        Ok((sink_rate, usage))
    }

    pub(super) fn email(&mut self) -> anyhow::Result<()> {
        let n = self.options.n;
        eprintln!("== email: {n} notices, {SMTP_CONNECTIONS} SMTP connections, into smtp-sink");
        let size = self.email_size()?;
        let sink = SmtpSink::start()?;
        let (mut sunset_rates, mut source_rates) = (Vec::new(), Vec::new());
        let (mut sunset_runs, mut source_runs) = (Vec::new(), Vec::new());
        // smtp-source, sunset, smtp-source, sunset, …, smtp-source.
        let (source, usage) = self.smtp_source(&sink, n, size)?;
        source_rates.push(source);
        source_runs.push(usage);
        for round in 1..=self.options.repeat {
            eprintln!(" round {round}");
            let (sunset, worker) =
                self.sunset_email(&sink, n, &format!("email-{round}"), ("", NO_LEDGER))?;
            sunset_rates.push(sunset);
            sunset_runs.push(worker);
            let (source, usage) = self.smtp_source(&sink, n, size)?;
            source_rates.push(source);
            source_runs.push(usage);
        }
        self.report.ratio(
            &format!("email msgs/s, N={n}, {SMTP_CONNECTIONS} conns (sink first→last)"),
            (&sunset_rates, &source_rates, true),
            "/s",
            0.8,
        );
        let fastest = |runs: &[Usage]| {
            runs.iter()
                .min_by_key(|u| u.wall)
                .map(|u| (u.wall, u.cpu_per(n)))
        };
        if let (Some((wall, sunset_cpu)), Some((source_wall, source_cpu))) =
            (fastest(&sunset_runs), fastest(&source_runs))
        {
            self.report.info(
                "email msgs/s, whole process, fastest run (worker: start → idle exit)",
                format!("{:.0} /s ({:.2}s)", rate(n, wall), wall.as_secs_f64()),
                &format!(
                    "{:.0} /s ({:.2}s)",
                    rate(n, source_wall),
                    source_wall.as_secs_f64()
                ),
            );
            self.report.info(
                "email client CPU per message (user+sys), fastest run",
                sunset_cpu,
                &source_cpu,
            );
        }
        Ok(())
    }
}
