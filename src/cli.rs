//! Command-line definitions (clap) and the exit code each failure maps to.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::channel::Channel;
use crate::enqueue::csv_rows::Delimiter;
use crate::suppression::Reason;

/// sunset: tell every user of a shutting-down product, in their own language, exactly once.
#[derive(Debug, Parser)]
#[command(name = "sunset", version, about)]
pub struct Cli {
    /// Config file [default: ./sunset.toml if present, else built-in defaults]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render a notice for a locale (or all), or lint every template with --check.
    Preview(PreviewArgs),
    /// Declare the exchange and queues (idempotent).
    Topology,
    /// Validate an audience file and publish it as batches.
    Enqueue(CampaignArgs),
    /// Consume batches and send notices until SIGTERM/SIGINT.
    Worker(WorkerArgs),
    /// One box: enqueue, then work until that campaign is drained, then print a summary.
    Send(CampaignArgs),
    /// Inspect, replay or purge dead letters.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Where a campaign stands, from the delivery ledger.
    Status(StatusArgs),
    /// Pause, resume or cancel a campaign (workers pick it up within seconds).
    Campaign {
        /// What to do.
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// Print the DNS TXT record(s) that publish the DKIM key(s) of email.dkim.key_file.
    DkimRecord,
    /// Receive bounces, complaints and unsubscribes (SMTP and HTTP) until SIGTERM/SIGINT.
    Feedback,
    /// Add, import, list or remove addresses no email goes to (needs the delivery ledger).
    Suppress {
        /// What to do.
        #[command(subcommand)]
        action: SuppressAction,
    },
}

/// `sunset suppress …`.
#[derive(Debug, Clone, Subcommand)]
pub enum SuppressAction {
    /// Suppress addresses for every campaign.
    Add {
        /// The addresses.
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
        /// Why: manual, hard-bounce, soft-bounce, complaint or unsubscribe (an unsubscribe
        /// still lets legal notices through).
        #[arg(long, default_value = "manual")]
        reason: Reason,
    },
    /// Suppress every address of a file: one a line (blank lines and `#` comments skipped), or
    /// a CSV whose header has an `email` column. Any bad line: nothing is imported.
    Import {
        /// The file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Why, as for `add`.
        #[arg(long, default_value = "manual")]
        reason: Reason,
    },
    /// Show the list: address, reason, scope, since.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take addresses off the list (every reason and scope).
    Remove {
        /// The addresses.
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
    },
}

/// `sunset status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The campaign.
    #[arg(long, alias = "campaign-id", value_name = "ID")]
    pub campaign: String,
    /// Stable JSON for scripts instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw a line per channel until nothing is pending (exit 0) or Ctrl-C (exit 130); off a
    /// terminal, print one line per look.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch looks at the ledger.
    #[arg(long, requires = "watch", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
}

/// `sunset campaign …`.
#[derive(Debug, Clone, Subcommand)]
pub enum CampaignAction {
    /// Every campaign in the ledger: template, state, recipients, delivered share, deadline.
    List {
        /// Stable JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending: batches wait in a delay queue until resumed.
    Pause(CampaignRef),
    /// Send again after a pause.
    Resume(CampaignRef),
    /// Stop for good: the rest is recorded as cancelled and never sent.
    Cancel(CampaignRef),
}

/// The campaign a `campaign pause|resume|cancel` acts on: `--campaign ID`, the spelling of every
/// other command; the bare `ID` of earlier scripts is still read.
#[derive(Debug, Clone, Args)]
pub struct CampaignRef {
    /// The campaign.
    #[arg(
        long,
        alias = "campaign-id",
        value_name = "ID",
        required_unless_present = "id",
        conflicts_with = "id"
    )]
    campaign: Option<String>,
    /// The campaign, given without `--campaign`.
    #[arg(hide = true)]
    id: Option<String>,
}

impl CampaignRef {
    /// The id as given, by either spelling.
    pub fn id(&self) -> &str {
        self.campaign
            .as_deref()
            .or(self.id.as_deref())
            .unwrap_or_default()
    }
}

/// `sunset dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Show dead letters without consuming them.
    List {
        /// Only this campaign's.
        #[arg(long, alias = "campaign-id", value_name = "ID")]
        campaign: Option<String>,
        /// One JSON object per dead letter instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish failed recipients to the work queue with attempts reset.
    Replay {
        /// Only this campaign's.
        #[arg(long, alias = "campaign-id", value_name = "ID")]
        campaign: Option<String>,
        /// At most this many dead letters.
        #[arg(long)]
        limit: Option<usize>,
        /// Show what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay sends whose outcome is unknown (handed over, no answer back: they may
        /// have arrived, and replaying them may send them twice).
        #[arg(long)]
        include_unknown: bool,
    },
    /// Delete a campaign's dead letters.
    Purge {
        /// The campaign.
        #[arg(long, alias = "campaign-id", value_name = "ID")]
        campaign: String,
        /// Required: confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// `sunset enqueue` and `sunset send`.
#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// Campaign id (1-128 of A-Z a-z 0-9 . _ : -); prefixes batch ids, Message-IDs, keys.
    #[arg(long, alias = "campaign-id", value_name = "ID")]
    pub campaign: String,
    /// Template folder name under `templates.dir`.
    #[arg(long)]
    pub template: String,
    /// Audience: .csv (header user_id,email,locale,name in any case) or .jsonl.
    #[arg(long, value_name = "FILE")]
    pub audience: PathBuf,
    /// The audience CSV's field delimiter: `,` `;` `|` or `\t` [default: detected from the header].
    #[arg(long, value_name = "CHAR")]
    pub delimiter: Option<Delimiter>,
    /// Channels to send by.
    #[arg(long, value_delimiter = ',', default_value = "email,push")]
    pub channels: Vec<Channel>,
    /// JSON object of campaign variables, each replacing the same-named one of the template's
    /// sample.json vars (as `preview --vars` does).
    #[arg(long, value_name = "FILE")]
    pub vars: Option<PathBuf>,
    /// Recipients per batch.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// RFC 3339 instant after which nothing more is sent.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Publish the valid rows even if some are rejected (they are still listed).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Validate and count, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sunset worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Exit 0 once nothing is in flight and the work and retry queues stay empty.
    #[arg(long)]
    pub exit_when_idle: bool,
}

/// `sunset preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Template folder name under `templates.dir` (all templates with --check or --serve if omitted).
    #[arg(long, required_unless_present_any = ["check", "serve"])]
    pub template: Option<String>,
    /// Requested locale tag, negotiated as for a recipient [default: templates.default_locale].
    #[arg(long, conflicts_with = "all_locales")]
    pub locale: Option<String>,
    /// Render every locale the template is written in.
    #[arg(long)]
    pub all_locales: bool,
    /// Only this channel's parts (email or push) [default: both].
    #[arg(long)]
    pub channel: Option<Channel>,
    /// JSON object of campaign variables, each replacing the same-named one of the template's
    /// sample.json vars (as `enqueue --vars` and `send --vars` do).
    #[arg(long, value_name = "FILE")]
    pub vars: Option<PathBuf>,
    /// Also write `<locale>.html` and `<locale>.txt` into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Lint templates and locales; exit 2 with one line per problem.
    #[arg(long, conflicts_with_all = ["locale", "all_locales", "channel", "vars", "out"])]
    pub check: bool,
    /// Serve every locale side by side in the browser, re-rendered live as templates change.
    #[arg(
        long,
        conflicts_with_all = ["locale", "all_locales", "channel", "vars", "out", "check"]
    )]
    pub serve: bool,
    /// Address for --serve; anything but loopback lets others on the network see the templates.
    #[arg(long, requires = "serve", default_value = "127.0.0.1:8686")]
    pub listen: SocketAddr,
}
