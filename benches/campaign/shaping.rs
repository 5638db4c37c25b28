//! `shaping`: the campaign's pace against SMTP servers that behave like providers,
//! on the scripted sink of the tests: per-recipient deferrals against none, and a relay that
//! refuses everything above 100 recipients a second.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::report::median;
use crate::workdir::Workdir;
use crate::{Bench, NO_LEDGER};

// The tests' scripted SMTP server; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../tests/common/smtp_sink.rs"]
mod scripted;

use scripted::SmtpSink;

/// Recipients per run, over three domains.
const RECIPIENTS: usize = 3000;
/// Messages of the relay run, to one domain.
const RELAY_MESSAGES: usize = 2000;

/// The setting of the shaping figures in docs/benchmarks.md: email at 300/s, no per-domain
/// limit, the default shaping.
fn config(sink: &SmtpSink) -> String {
    format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
         [rate]\nemail_per_sec = 300\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n{NO_LEDGER}",
        sink.url()
    )
}

/// `n` users over `domains`, `u<i>@<domain>`.
fn audience(dir: &Workdir, n: usize, domains: &[&str]) -> anyhow::Result<()> {
    let mut csv = String::from("user_id,email,locale\n");
    for i in 1..=n {
        let _ = writeln!(csv, "u{i},u{i}@{},en", domains[i % domains.len()]);
    }
    std::fs::write(dir.path().join("audience.csv"), csv)?;
    Ok(())
}

/// Arrival times at the sink, sorted.
fn arrivals(sink: &SmtpSink) -> Vec<Instant> {
    let mut times: Vec<Instant> = sink.messages().iter().map(|m| m.at).collect();
    times.sort();
    times
}

impl Bench {
    /// One campaign of `n` to `domains` into a fresh sink set up by `script`; returns the sink.
    fn shaped_run(
        &self,
        label: &str,
        n: usize,
        domains: &[&str],
        script: impl Fn(&SmtpSink),
    ) -> anyhow::Result<SmtpSink> {
        let sink = SmtpSink::start();
        script(&sink);
        let dir = self.workdir(&config(&sink))?;
        audience(&dir, n, domains)?;
        dir.enqueue(label, "audience.csv", "email", false)?;
        dir.worker(label)?;
        ensure!(sink.count() == n, "{label}: {} of {n} told", sink.count());
        Ok(sink)
    }

    /// (a) campaign rate with 10 % answering `451 4.7.1 Try again later` once, against none,
    /// interleaved; (b) the delivered rate and the attempts against a relay refusing above
    /// 100/s.
    pub(super) fn shaping(&mut self) -> anyhow::Result<()> {
        let domains = ["example.com", "example.net", "example.org"];
        let (mut clean, mut deferring) = (Vec::new(), Vec::new());
        for round in 0..self.options.repeat {
            let sink = self.shaped_run(
                &format!("shaping-clean-{round}"),
                RECIPIENTS,
                &domains,
                |_| {},
            )?;
            clean.push(span_rate(&arrivals(&sink)));
            let sink = self.shaped_run(
                &format!("shaping-451-{round}"),
                RECIPIENTS,
                &domains,
                |sink| {
                    for i in (1..=RECIPIENTS).step_by(10) {
                        let address = format!("u{i}@{}", domains[i % domains.len()]);
                        sink.reject_times(&address, 451, "4.7.1 Try again later", 1);
                    }
                },
            )?;
            deferring.push(span_rate(&arrivals(&sink)));
        }
        self.report.ratio(
            "email, 3,000 over 3 domains at 300/s: 10 % answering `451 4.7.1 Try again later` once vs none (goal: ≤ 1.5× the time)",
            (&deferring, &clean, false),
            "msgs/s",
            1.0 / 1.5,
        );

        let mut settled = Vec::new();
        let mut attempts = Vec::new();
        for round in 0..self.options.repeat {
            let sink = self.shaped_run(
                &format!("shaping-relay-{round}"),
                RELAY_MESSAGES,
                &["example.com"],
                |sink| {
                    sink.throttle_above(100.0, 421, "4.7.0 Too many messages, slow down");
                },
            )?;
            let times = arrivals(&sink);
            // Settled: the middle half of the messages (the last are retries, paced by the
            // delay queues, not by the shaping).
            settled.push(span_rate(
                &times[RELAY_MESSAGES / 4..RELAY_MESSAGES * 3 / 4],
            ));
            attempts.push((sink.count() + sink.refusals().len()) as f64 / RELAY_MESSAGES as f64);
        }
        let (rate, tries) = (median(&settled), median(&attempts));
        self.report.absolute(
            "email, 2,000 to one domain at 300/s through a relay refusing (421) above 100/s: delivered rate over the middle half",
            format!("{rate:.0} msgs/s ({})", list(&settled)),
            "70–110 msgs/s".into(),
            (70.0..=110.0).contains(&rate),
        );
        self.report.absolute(
            "same: attempts per message",
            format!("{tries:.2} ({})", list(&attempts)),
            "≤ 1.3".into(),
            tries <= 1.3,
        );
        Ok(())
    }
}

/// Messages per second from the first arrival to the last (N-1 intervals).
fn span_rate(times: &[Instant]) -> f64 {
    let span = match (times.first(), times.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    (times.len().saturating_sub(1)) as f64 / span.as_secs_f64().max(1e-9)
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
