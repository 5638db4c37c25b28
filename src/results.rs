//! What `sunset send` came to, in recipients per channel (reached now, reached earlier,
//! dead-lettered, unknown, cancelled, suppressed, pending), and the typed ends short of done that `main`
//! maps to exit codes: 3 when some recipients were not reached, 128 + the signal when stopped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::batch::CampaignId;
use crate::channel::Channel;
use crate::daemon::Live;
use crate::enqueue::Plan;
use crate::ledger::{Ledger, LedgerError, Status};
use crate::progress::{self, Meter, Sample};
use crate::worker::Report;

/// The exit code of a `send` that finished with some recipients not reached.
pub const NOT_REACHED: u8 = 3;

/// One channel's recipients by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Recipients to reach on the channel.
    pub total: u64,
    /// Delivered since this run began (with a ledger, by any worker).
    pub now: u64,
    /// Delivered before this run (a rerun sends them nothing).
    pub earlier: u64,
    /// Dead-lettered: refused for good, attempts exhausted, deadline passed, unrenderable.
    pub dead: u64,
    /// Handed over with no answer: may or may not have arrived.
    pub unknown: u64,
    /// Not sent: the campaign was cancelled.
    pub cancelled: u64,
    /// Not sent: the address is on the suppression list (not counted as not reached).
    pub suppressed: u64,
}

impl Tally {
    /// Not settled yet: not tried, being tried, or waiting for a retry.
    pub fn pending(&self) -> u64 {
        self.total.saturating_sub(self.settled())
    }

    /// Delivered, dead-lettered, unknown, cancelled or suppressed.
    pub fn settled(&self) -> u64 {
        self.now + self.earlier + self.dead + self.unknown + self.cancelled + self.suppressed
    }

    /// Not known to have been delivered, suppressed addresses aside: not sending to them is
    /// what was asked.
    pub fn not_reached(&self) -> u64 {
        self.total
            .saturating_sub(self.now + self.earlier + self.suppressed)
    }
}

/// A campaign's results per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    /// The campaign.
    pub campaign: CampaignId,
    /// Per channel.
    pub channels: BTreeMap<Channel, Tally>,
    /// Recipients without an email address seen by this run (not counted for email).
    pub no_email: u64,
}

impl Results {
    /// From the ledger, for the whole campaign (whichever worker sent): `after` is its status
    /// now, `before` its status when this run began (`None` if it was new).
    pub fn from_ledger(before: Option<&Status>, after: &Status, no_email: u64) -> Results {
        let earlier = before.map(Status::channels).unwrap_or_default();
        let channels = after
            .channels()
            .into_iter()
            .map(|(channel, counts)| {
                let earlier = earlier.get(&channel).map_or(0, |c| c.delivered);
                let tally = Tally {
                    total: counts.total,
                    now: counts.delivered.saturating_sub(earlier),
                    earlier,
                    dead: counts.dead,
                    unknown: counts.unknown,
                    cancelled: counts.cancelled,
                    suppressed: counts.suppressed,
                };
                (channel, tally)
            })
            .collect();
        Results {
            campaign: after.campaign.clone(),
            channels,
            no_email,
        }
    }

    /// Without a ledger: `totals` as `enqueue` planned them, and what this process did.
    pub fn from_report(
        campaign: &CampaignId,
        totals: &HashMap<(Channel, String), u64>,
        report: &Report,
    ) -> Results {
        let mut channels: BTreeMap<Channel, Tally> = BTreeMap::new();
        for ((channel, _), total) in totals {
            channels.entry(*channel).or_default().total += total;
        }
        for (channel, counts) in &report.counts {
            let tally = channels.entry(*channel).or_default();
            tally.now += counts.delivered;
            tally.dead += counts.dead;
            tally.unknown += counts.unknown;
            tally.suppressed += counts.suppressed;
        }
        Results {
            campaign: campaign.clone(),
            channels,
            no_email: report.no_email,
        }
    }

    /// Recipient × channel pairs not known to have been delivered.
    pub fn not_reached(&self) -> u64 {
        self.channels.values().map(Tally::not_reached).sum()
    }

    /// Where each channel stands, for the progress lines.
    pub fn samples(&self) -> Vec<Sample> {
        self.channels
            .iter()
            .map(|(channel, tally)| Sample {
                channel: *channel,
                done: tally.settled(),
                total: tally.total,
            })
            .collect()
    }

    /// The summary table, with the batches this process handled and how long it took.
    pub fn table(&self, batches: u64, elapsed: Duration) -> String {
        let mut out = format!(
            "campaign {}: {batches} batches here, {:.1}s\n",
            self.campaign,
            elapsed.as_secs_f64()
        );
        out.push_str(&format!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>8}\n",
            "channel",
            "total",
            "now",
            "earlier",
            "dead",
            "unknown",
            "cancelled",
            "suppressed",
            "pending"
        ));
        for (channel, t) in &self.channels {
            out.push_str(&format!(
                "{:<8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>8}\n",
                channel.as_str(),
                t.total,
                t.now,
                t.earlier,
                t.dead,
                t.unknown,
                t.cancelled,
                t.suppressed,
                t.pending()
            ));
        }
        if self.no_email > 0 {
            out.push_str(&format!(
                "{} recipients have no email address (not counted for email)\n",
                self.no_email
            ));
        }
        out.push_str(&self.to_string());
        out.push('\n');
        out
    }
}

/// The one-line verdict: everyone reached, or how many were not, per channel.
impl fmt::Display for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.not_reached() == 0 {
            return write!(f, "every recipient reached on every channel");
        }
        let per_channel: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, t)| t.not_reached() > 0)
            .map(|(channel, t)| format!("{channel} {}", t.not_reached()))
            .collect();
        write!(
            f,
            "{} recipient × channel pairs not reached ({})",
            self.not_reached(),
            per_channel.join(", ")
        )
    }
}

/// How often the live lines of `send` are redrawn.
const DRAW_EVERY: Duration = Duration::from_secs(1);

/// A campaign's status from the ledger; the error names the ledger.
pub async fn read_status(ledger: &Ledger, campaign: &CampaignId) -> anyhow::Result<Status> {
    ledger
        .status(campaign)
        .await
        .with_context(|| format!("Failed to read the ledger at {}", ledger.url()))
}

/// A campaign's status before this run sends anything; `None` if the ledger does not know it.
pub async fn before(ledger: &Ledger, campaign: &CampaignId) -> anyhow::Result<Option<Status>> {
    match read_status(ledger, campaign).await {
        Ok(status) => Ok(Some(status)),
        Err(e)
            if e.downcast_ref::<LedgerError>()
                .is_some_and(|e| matches!(e, LedgerError::UnknownCampaign(_))) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Where a `send`'s numbers come from: the ledger (the whole campaign, whichever worker sent
/// it), or without one, what this process did against what `enqueue` planned.
pub struct Source<'a> {
    /// The ledger, if there is one.
    pub ledger: Option<&'a Ledger>,
    /// The campaign's status before this run, if the ledger knew it.
    pub before: Option<&'a Status>,
    /// What `enqueue` planned.
    pub plan: &'a Plan,
}

impl Source<'_> {
    /// The results now; `report` is what this process processed so far.
    pub async fn results(&self, report: &Report) -> anyhow::Result<Results> {
        let Some(ledger) = self.ledger else {
            return Ok(Results::from_report(
                &self.plan.campaign,
                &self.plan.totals,
                report,
            ));
        };
        let after = read_status(ledger, &self.plan.campaign).await?;
        Ok(Results::from_ledger(self.before, &after, report.no_email))
    }

    /// On a terminal, redraws a line per channel every second until `done`; off one, nothing.
    pub async fn draw_until(&self, live: &Live, done: &CancellationToken) {
        if !progress::on_terminal() {
            return;
        }
        let mut meter = Meter::new(self.plan.deadline);
        let mut tick = tokio::time::interval(DRAW_EVERY);
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {
                    // A look that fails (the ledger busy) skips one frame.
                    if let Ok(results) = self.results(&live.report()).await {
                        progress::draw(meter.lines(&results.samples()));
                    }
                }
            }
        }
        progress::clear();
    }
}

/// The signal that stopped a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    fn number(self) -> u8 {
        match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// How a command ended short of done; `main` exits with [`Unfinished::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    /// `send` finished, and some recipients were not reached.
    #[error("campaign {campaign}: {results}; `sunset dlq list --campaign {campaign}` shows why")]
    NotReached {
        /// The campaign.
        campaign: CampaignId,
        /// Its results.
        results: Box<Results>,
    },
    /// Stopped by a signal; `what` says what is left and how to go on.
    #[error("stopped by {signal}: {what}")]
    Interrupted {
        /// The signal.
        signal: Signal,
        /// What is left, and the command that resumes.
        what: String,
    },
}

impl Unfinished {
    /// [`NOT_REACHED`], or 128 + the signal's number (130 for Ctrl-C).
    pub fn exit_code(&self) -> u8 {
        match self {
            Unfinished::NotReached { .. } => NOT_REACHED,
            Unfinished::Interrupted { signal, .. } => 128 + signal.number(),
        }
    }
}

/// The command that finishes an interrupted `send`: with a ledger, the same command again
/// (the ledger skips everyone reached); without one, a worker that drains the queues (sending
/// the whole campaign again would reach some recipients twice).
pub fn resume_command(args: &[String], with_ledger: bool) -> String {
    if with_ledger {
        return args.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(" ");
    }
    let mut words: Vec<String> = args.iter().take(1).map(|a| quoted(a)).collect();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--config" {
            words.push(quoted(arg));
            words.extend(rest.next().map(|a| quoted(a)));
        } else if arg.starts_with("--config=") {
            words.push(quoted(arg));
        }
    }
    words.push("worker --exit-when-idle".into());
    words.join(" ")
}

/// `word` as a POSIX shell reads it back.
fn quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Counts;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_resume_command_is_the_same_send_with_a_ledger_and_a_draining_worker_without() {
        let send = args(&[
            "sunset",
            "--config",
            "my box.toml",
            "send",
            "--campaign-id",
            "c1",
        ]);
        assert_eq!(
            resume_command(&send, true),
            "sunset --config 'my box.toml' send --campaign-id c1"
        );
        assert_eq!(
            resume_command(&send, false),
            "sunset --config 'my box.toml' worker --exit-when-idle"
        );
        assert_eq!(quoted("it's"), r"'it'\''s'");
    }

    #[test]
    fn without_a_ledger_each_recipient_counts_once_by_its_fate() {
        let campaign = CampaignId::parse("c").expect("id");
        let totals = HashMap::from([
            ((Channel::Email, "en".to_string()), 3),
            ((Channel::Email, "ar".to_string()), 2),
            ((Channel::Push, "en".to_string()), 5),
        ]);
        let report = Report {
            batches: 1,
            counts: BTreeMap::from([
                (
                    Channel::Email,
                    Counts {
                        delivered: 1,
                        dead: 3,
                        unknown: 1,
                        suppressed: 0,
                    },
                ),
                (
                    Channel::Push,
                    Counts {
                        delivered: 5,
                        ..Counts::default()
                    },
                ),
            ]),
            no_email: 0,
        };
        let results = Results::from_report(&campaign, &totals, &report);
        assert_eq!(results.not_reached(), 4);
        assert_eq!(results.channels[&Channel::Email].pending(), 0);
        assert_eq!(
            results.to_string(),
            "4 recipient × channel pairs not reached (email 4)"
        );
        assert_eq!(
            Unfinished::NotReached {
                campaign,
                results: Box::new(results)
            }
            .exit_code(),
            3
        );
    }
}
