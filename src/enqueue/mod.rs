//! `sunset enqueue`: an audience file (CSV or JSONL), validated whole, then published as batches.

mod audience;
pub(crate) mod csv_rows;
mod fallbacks;
mod raw_row;
mod repeats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, FixedOffset};
use futures::stream::{FuturesOrdered, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::batch::{Batch, CampaignId, MAX_RECIPIENTS, Recipient, VERSION, check_campaign_vars};
use crate::broker::WorkQueue;
use crate::channel::Channel;
use crate::config::Config;
use crate::invalid_input::InvalidInput;
use crate::lint;
use crate::locale::Locales;
use crate::render::{self, Renderer, Sample, TemplateName, Vars};

pub use audience::{LINE_MAX, Rejected, Row, Rows, rows, rows_with};
pub use csv_rows::{Delimiter, UnknownDelimiter};
pub use fallbacks::Fallbacks;
pub use repeats::Repeats;

use audience::{confirm, file_size, too_many};
use repeats::Suspects;

/// Bad rows printed before the rest are only counted.
const SHOWN_REJECTS: usize = 20;
/// Distinct requested locale tags remembered with their matched locale.
const NEGOTIATED_MAX: usize = 1024;
/// Batch publishes awaiting their confirms at once.
const PUBLISH_WINDOW: usize = 32;

/// What the first pass over the audience found.
#[derive(Debug, Default)]
pub struct Validation {
    /// Rows that will be sent.
    pub valid: u64,
    /// Sends planned per channel and template locale (for the ledger's `status`).
    pub totals: HashMap<(Channel, String), u64>,
    /// The first rejected rows, in file order.
    pub shown: Vec<Rejected>,
    /// All rejected rows.
    pub rejected: u64,
    /// The user ids on more than one valid row (the first row of each is kept).
    pub repeats: Arc<Repeats>,
    /// The locale tags that matched no template locale (those rows get the default).
    pub fallbacks: Fallbacks,
}

/// Reads the whole audience, keeping only counts (per channel and the template locale each
/// recipient negotiates to), the first rejects and the repeated user ids. A file whose ids the
/// filter flags is read a second time to count them exactly, and one that repeats ids a third
/// time to count again without the repeats.
pub fn validate(
    path: &Path,
    delimiter: Option<Delimiter>,
    locales: &Locales,
    channels: &[Channel],
) -> anyhow::Result<Validation> {
    let mut suspects = Suspects::for_file(file_size(path));
    let first = count(
        rows_with(path, delimiter, Arc::default())?,
        locales,
        channels,
        |id| suspects.see(id).map_err(too_many),
    )?;
    let repeats = Arc::new(confirm(path, delimiter, suspects)?);
    if repeats.is_empty() {
        return Ok(Validation { repeats, ..first });
    }
    let recounted = count(
        rows_with(path, delimiter, Arc::clone(&repeats))?,
        locales,
        channels,
        |_| Ok(()),
    )?;
    Ok(Validation {
        repeats,
        ..recounted
    })
}

/// One pass of [`validate`]: counts the rows, showing `SHOWN_REJECTS` of the rejects, and
/// hands each valid row's user id to `see`.
fn count(
    rows: Rows,
    locales: &Locales,
    channels: &[Channel],
    mut see: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Validation> {
    let mut validation = Validation::default();
    // Requested tag → template locale: an audience has few distinct tags (a file with more
    // starts the memo over rather than grow it).
    let mut negotiated: HashMap<Option<String>, Option<String>> = HashMap::new();
    let default = locales.default_locale().tag().to_string();
    for row in rows {
        match row {
            Ok(Row {
                recipient,
                unreadable_locale,
                ..
            }) => {
                see(recipient.user_id.as_str())?;
                validation.valid += 1;
                if negotiated.len() >= NEGOTIATED_MAX {
                    negotiated.clear();
                }
                let matched = negotiated
                    .entry(recipient.locale.clone())
                    .or_insert_with(|| {
                        let tag = recipient.locale.as_deref()?;
                        locales.matched(tag).map(|l| l.tag().to_string())
                    });
                let fell_back = match (&unreadable_locale, &recipient.locale, &matched) {
                    (Some(unreadable), _, _) => Some(unreadable),
                    (None, Some(requested), None) => Some(requested),
                    _ => None,
                };
                if let Some(tag) = fell_back {
                    validation.fallbacks.add(tag);
                }
                let locale = matched.as_ref().unwrap_or(&default);
                for &channel in channels {
                    if channel == Channel::Push || recipient.email.is_some() {
                        *validation
                            .totals
                            .entry((channel, locale.clone()))
                            .or_default() += 1;
                    }
                }
            }
            Err(rejected) => {
                validation.rejected += 1;
                if validation.shown.len() < SHOWN_REJECTS {
                    validation.shown.push(rejected);
                }
            }
        }
    }
    Ok(validation)
}

/// A campaign ready to publish: everything checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Campaign id.
    pub campaign: CampaignId,
    /// Template.
    pub template: TemplateName,
    /// Channels.
    pub channels: Vec<Channel>,
    /// Campaign variables.
    pub vars: Vars,
    /// Nothing is sent after it.
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Recipients per batch.
    pub batch_size: usize,
    /// The audience file.
    pub audience: PathBuf,
    /// The audience CSV's delimiter, as given (detected again from the header when `None`).
    pub delimiter: Option<Delimiter>,
    /// Rows that will be sent.
    pub recipients: u64,
    /// Rows rejected (only with `--skip-invalid`).
    pub rejected: u64,
    /// Sends planned per channel and template locale.
    pub totals: HashMap<(Channel, String), u64>,
    /// The user ids on more than one valid row, from validation.
    pub repeats: Arc<Repeats>,
}

impl Plan {
    /// Batches the plan publishes.
    pub fn batches(&self) -> u64 {
        self.recipients.div_ceil(self.batch_size as u64)
    }
}

/// The campaign options shared by `enqueue` and `send`, as given on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--campaign`.
    pub campaign_id: String,
    /// `--template`.
    pub template: String,
    /// `--audience`.
    pub audience: PathBuf,
    /// `--channels`.
    pub channels: Vec<Channel>,
    /// `--vars`.
    pub vars: Option<PathBuf>,
    /// `--delimiter` (detected from a CSV's header when `None`).
    pub delimiter: Option<Delimiter>,
    /// `--batch-size`.
    pub batch_size: usize,
    /// `--deadline`.
    pub deadline: Option<String>,
    /// `--skip-invalid`.
    pub skip_invalid: bool,
}

/// Checks everything before anything is published: ids, template (`preview --check` and a
/// render of every locale with the campaign vars), deadline, and every audience row.
pub fn prepare(config: &Config, options: &Options) -> anyhow::Result<Plan> {
    let campaign = CampaignId::parse(&options.campaign_id)
        .map_err(|e| InvalidInput(format!("--campaign: {e}")))?;
    let template = TemplateName::parse(&options.template)?;
    if !(1..=MAX_RECIPIENTS).contains(&options.batch_size) {
        return Err(InvalidInput(format!(
            "--batch-size must be at least 1 and at most {MAX_RECIPIENTS} (workers refuse larger batches)"
        ))
        .into());
    }
    let deadline = options
        .deadline
        .as_deref()
        .map(|d| {
            DateTime::parse_from_rfc3339(d)
                .map_err(|e| InvalidInput(format!("--deadline `{d}`: not RFC 3339: {e}")))
        })
        .transpose()?;
    if let Some(deadline) = deadline
        && deadline <= chrono::Utc::now()
    {
        return Err(InvalidInput(format!(
            "--deadline {deadline} has passed: every recipient would be dead-lettered unsent; nothing was published"
        ))
        .into());
    }
    let dir = &config.templates.dir;
    let default_locale = &config.templates.default_locale;
    let mut problems = lint::check(dir, &template, default_locale);
    problems.extend(lint::feedback_problems(dir, &template, &config.feedback));
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(InvalidInput(format!(
            "template `{template}` fails `sunset preview --check`:\n  {}",
            lines.join("\n  ")
        ))
        .into());
    }
    let sample = Sample::load(&render::template_dir(dir, &template)?)?;
    if options.vars.is_none() {
        eprintln!(
            "warning: no --vars given; using the campaign variables of {template}/sample.json"
        );
    }
    let vars = crate::preview::campaign_vars(sample.vars.clone(), options.vars.as_deref())?;
    check_campaign_vars(&vars).map_err(|e| InvalidInput(format!("--vars: {e}")))?;
    let renderer = Renderer::load(dir, &template, default_locale)?;
    for locale in renderer.locales().iter() {
        let recipient = Recipient {
            locale: Some(locale.tag().to_string()),
            ..sample.recipient.clone()
        };
        renderer
            .render(&vars, &recipient, &options.channels)
            .map_err(|e| InvalidInput(format!("the campaign variables do not render: {e}")))?;
    }
    let validation = validate(
        &options.audience,
        options.delimiter,
        renderer.locales(),
        &options.channels,
    )?;
    for rejected in &validation.shown {
        eprintln!(
            "{}: line {}: {}",
            options.audience.display(),
            rejected.line,
            rejected.reason
        );
    }
    if validation.rejected > validation.shown.len() as u64 {
        eprintln!(
            "… and {} more rejected rows",
            validation.rejected - validation.shown.len() as u64
        );
    }
    if validation.rejected > 0 && !options.skip_invalid {
        return Err(InvalidInput(format!(
            "{}: {} invalid row(s); nothing was published (fix them, or --skip-invalid to send the {} valid rows)",
            options.audience.display(),
            validation.rejected,
            validation.valid
        ))
        .into());
    }
    if validation.valid == 0 {
        return Err(InvalidInput(format!("{}: no recipients", options.audience.display())).into());
    }
    if validation.fallbacks.total() > 0 {
        eprintln!(
            "{} recipient(s) get the default locale `{default_locale}`: their locale tag matches no locale of {template}: {}",
            validation.fallbacks.total(),
            validation.fallbacks
        );
    }
    Ok(Plan {
        campaign,
        template,
        channels: options.channels.clone(),
        vars,
        deadline,
        batch_size: options.batch_size,
        audience: options.audience.clone(),
        delimiter: options.delimiter,
        recipients: validation.valid,
        rejected: validation.rejected,
        totals: validation.totals,
        repeats: validation.repeats,
    })
}

/// What was published.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Recipients published.
    pub recipients: u64,
    /// Batches published.
    pub batches: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Wall time of publishing.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.recipients as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "{} recipients in {} batches, {} rejected, {:.2}s, {:.0} rows/s",
            self.recipients, self.batches, self.rejected, secs, rate
        )
    }
}

/// Second pass: reads the audience again and publishes its batches, each confirmed, a window
/// of them in flight. Batch ids are `<campaign>:<6-digit sequence>`, the same for the same file.
pub async fn publish(queue: &impl WorkQueue, plan: &Plan) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let progress =
        ProgressBar::with_draw_target(Some(plan.recipients), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} recipients {per_sec} eta {eta}")
    {
        progress.set_style(style);
    }
    let mut in_flight = FuturesOrdered::new();
    let mut batches = 0u64;
    let mut recipients = Vec::with_capacity(plan.batch_size);
    let mut rows = rows_with(&plan.audience, plan.delimiter, Arc::clone(&plan.repeats))?
        .filter_map(Result::ok)
        .peekable();
    while rows.peek().is_some() {
        recipients.extend(rows.by_ref().take(plan.batch_size).map(|row| row.recipient));
        batches += 1;
        let batch = Batch {
            version: VERSION,
            campaign_id: plan.campaign.clone(),
            batch_id: format!("{}:{batches:06}", plan.campaign),
            template: plan.template.clone(),
            channels: plan.channels.clone(),
            deadline: plan.deadline,
            vars: plan.vars.clone(),
            recipients: std::mem::take(&mut recipients),
            failures: Vec::new(),
        };
        let size = batch.recipients.len() as u64;
        in_flight.push_back(async move {
            queue
                .enqueue(&batch)
                .await
                .with_context(|| format!("Failed to publish batch {}", batch.batch_id))
                .map(|()| size)
        });
        if in_flight.len() >= PUBLISH_WINDOW
            && let Some(done) = in_flight.next().await
        {
            progress.inc(done?);
        }
    }
    while let Some(done) = in_flight.next().await {
        progress.inc(done?);
    }
    progress.finish_and_clear();
    Ok(Summary {
        recipients: plan.recipients,
        batches,
        rejected: plan.rejected,
        elapsed: started.elapsed(),
    })
}
