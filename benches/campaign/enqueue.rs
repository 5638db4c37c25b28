//! `enqueue` and `rss`: `sunset enqueue` of a large audience (and its `--dry-run`), and the
//! worker's peak RSS draining queues of several sizes into smtp-sink.

use std::time::Duration;

use anyhow::ensure;

use crate::process::Usage;
use crate::report::rate;
use crate::sinks::SmtpSink;
use crate::workdir::BATCH_SIZE;
use crate::{Bench, UNLIMITED};

impl Bench {
    /// `sunset enqueue` of `enqueue_n` recipients; then (if wanted) the large RSS run drains
    /// the same queue into smtp-sink.
    pub(super) fn enqueue_and_rss(&mut self, sink: Option<&SmtpSink>) -> anyhow::Result<()> {
        let n = self.options.enqueue_n;
        let large_rss = self
            .options
            .rss_n
            .iter()
            .copied()
            .max()
            .filter(|_| self.options.wants("rss"));
        if self.options.wants("enqueue") {
            eprintln!("== enqueue: {n} recipients, batches of {BATCH_SIZE}");
            let smtp = sink
                .map(|sink| Self::smtp_config(sink, UNLIMITED))
                .unwrap_or_default();
            let work = self.workdir(&smtp)?;
            work.audience("audience.csv", n)?;
            let (_, dry) = work.enqueue("enqueue", "audience.csv", "email", true)?;
            eprintln!(
                "  --dry-run (read, validate, check the template; no broker): {:.2}s = {:.0} rows/s, CPU {}/row",
                dry.wall.as_secs_f64(),
                rate(n, dry.wall),
                dry.cpu_per(n)
            );
            let (run, usage) = work.enqueue("enqueue", "audience.csv", "email", false)?;
            let wall = usage.wall;
            let summary = run
                .stdout
                .lines()
                .find(|l| l.contains("rows/s"))
                .unwrap_or_default()
                .to_string();
            let publish_rate = summary
                .rsplit_once(" rows/s")
                .and_then(|(head, _)| head.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            eprintln!(
                "  {summary}\n  wall {:.2}s = {:.0} rows/s",
                wall.as_secs_f64(),
                rate(n, wall)
            );
            let wall_rate = rate(n, wall);
            self.report.absolute(
                &format!("enqueue rows/s, N={n}, whole command (validate + publish)"),
                format!("{wall_rate:.0} /s ({:.2}s)", wall.as_secs_f64()),
                "≥ 200000 /s".into(),
                wall_rate >= 200_000.0,
            );
            if let Some(publish) = publish_rate {
                self.report.absolute(
                    "  publish phase only (enqueue's own summary line)",
                    format!("{publish:.0} /s"),
                    "≥ 200000 /s".into(),
                    publish >= 200_000.0,
                );
            }
            self.report.info(
                "  validate phase only (`enqueue --dry-run`)",
                format!(
                    "{:.0} /s ({:.2}s)",
                    rate(n, dry.wall),
                    dry.wall.as_secs_f64()
                ),
                "-",
            );
            self.report.info(
                "  enqueue CPU per row (user+sys), whole / dry run",
                format!("{} / {}", usage.cpu_per(n), dry.cpu_per(n)),
                "-",
            );
            if let (Some(sink), Some(large)) = (sink, large_rss)
                && large == n
            {
                eprintln!("== worker RSS: {n} emails (the queue just enqueued)");
                let base = sink.count();
                let worker = work.worker("rss-large")?;
                sink.window(base, n, Duration::from_secs(60))?;
                ensure!(work.dead_letters()? == 0, "rss: dead letters");
                eprintln!(
                    "  wall {:.2}s = {:.0}/s",
                    worker.wall.as_secs_f64(),
                    rate(n, worker.wall)
                );
                self.rss_row(n, &worker);
                return self.small_rss(sink, Some(n));
            }
        }
        if let Some(sink) = sink {
            self.small_rss(sink, None)?;
        }
        Ok(())
    }

    fn rss_row(&mut self, n: usize, worker: &Usage) {
        match worker.peak_rss_kb {
            Some(kb) => {
                let mb = kb as f64 / 1024.0;
                self.report.absolute(
                    &format!("worker peak RSS, {n} emails"),
                    format!("{mb:.1} MB ({:.0} emails/s)", rate(n, worker.wall)),
                    "≤ 50 MB, flat".into(),
                    mb <= 50.0,
                );
            }
            None => self.report.note(format!(
                "worker peak RSS for {n}: /usr/bin/time missing (apt-get install time)"
            )),
        }
    }

    /// The RSS runs not already done.
    fn small_rss(&mut self, sink: &SmtpSink, done: Option<usize>) -> anyhow::Result<()> {
        if !self.options.wants("rss") {
            return Ok(());
        }
        let mut sizes: Vec<usize> = self
            .options
            .rss_n
            .iter()
            .copied()
            .filter(|&s| Some(s) != done)
            .collect();
        sizes.sort_unstable();
        for n in sizes {
            eprintln!("== worker RSS: {n} emails");
            let (_, worker) = self.sunset_email(sink, n, &format!("rss-{n}"), ("", ""))?;
            self.rss_row(n, &worker);
        }
        Ok(())
    }
}
