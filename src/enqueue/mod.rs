//! `sunset enqueue`: an audience file (CSV or JSONL), validated whole, then published as batches.

mod repeats;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, FixedOffset};
use futures::stream::{FuturesOrdered, StreamExt};
use icu::locale::Locale;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::batch::{
    Batch, CampaignId, EmailAddress, MAX_RECIPIENTS, Recipient, UserId, VERSION, bounded,
    check_campaign_vars, json_error,
};
use crate::broker::Broker;
use crate::channel::Channel;
use crate::cli::InvalidInput;
use crate::config::Config;
use crate::lint;
use crate::locale::Locales;
use crate::render::{self, Renderer, Sample, TemplateName, Vars};

pub use repeats::Repeats;
use repeats::{Suspects, TooManySuspects};

/// Bad rows printed before the rest are only counted.
const SHOWN_REJECTS: usize = 20;
/// Distinct requested locale tags remembered with their negotiated locale.
const NEGOTIATED_MAX: usize = 1024;
/// Batch publishes awaiting their confirms at once.
const PUBLISH_WINDOW: usize = 32;

/// Which audience file format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Header `user_id,email,locale,name` (`user_id` required, the others optional).
    Csv,
    /// One JSON object per line with the recipient fields (and `vars`).
    Jsonl,
}

impl Format {
    /// `.csv` or `.jsonl`/`.ndjson`.
    pub fn of(path: &Path) -> Result<Format, InvalidInput> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
            _ => Err(InvalidInput(format!(
                "{}: audience must be a .csv or .jsonl file",
                path.display()
            ))),
        }
    }
}

/// A rejected audience row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line in the file.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// One accepted row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line in the file.
    pub line: u64,
    /// The recipient, parsed.
    pub recipient: Recipient,
}

/// The fields of a row before they are parsed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    vars: Vars,
}

impl RawRow {
    fn parse(self) -> Result<Recipient, String> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let user_id = non_empty(self.user_id).ok_or("user_id is missing")?;
        let user_id = UserId::parse(&user_id).map_err(|e| e.to_string())?;
        let email = non_empty(self.email)
            .map(|e| EmailAddress::parse(&e))
            .transpose()
            .map_err(|e| e.to_string())?;
        let recipient = Recipient {
            user_id,
            email,
            locale: non_empty(self.locale).map(|l| l.trim().to_string()),
            name: non_empty(self.name).map(|n| n.trim().to_string()),
            vars: self.vars,
        };
        // Lengths first: a 10 KB locale is reported by its size, not quoted.
        recipient.check().map_err(|e| e.to_string())?;
        if let Some(tag) = &recipient.locale
            && Locale::try_from_str(tag).is_err()
        {
            return Err(format!("locale `{tag}` is not a BCP 47 language tag"));
        }
        Ok(recipient)
    }
}

/// An audience file's rows as read, each with its line: the recipient, or why it is not one.
type Parsed = Box<dyn Iterator<Item = (u64, Result<Recipient, String>)> + Send>;

/// The rows of an audience file, audience validation and all.
pub type Rows = Box<dyn Iterator<Item = Result<Row, Rejected>> + Send>;

/// Reads an audience file row by row without loading it whole, rejecting a user id seen on an
/// earlier valid row. The same file always gives the same rows. Reads the file two or three
/// times (see [`Repeats`]); [`validate`] and [`publish`] share that work through the plan.
pub fn rows(path: &Path) -> anyhow::Result<Rows> {
    let mut suspects = Suspects::for_file(file_size(path));
    for (_, recipient) in parsed(path)? {
        if let Ok(recipient) = recipient {
            suspects.see(recipient.user_id.as_str()).map_err(too_many)?;
        }
    }
    let repeats = confirm(path, suspects)?;
    rows_with(path, Arc::new(repeats))
}

/// The rows of an audience file, rejecting every valid row whose user id `repeats` has on an
/// earlier line.
pub fn rows_with(path: &Path, repeats: Arc<Repeats>) -> anyhow::Result<Rows> {
    Ok(Box::new(parsed(path)?.map(move |(line, recipient)| {
        let recipient = recipient.map_err(|reason| Rejected { line, reason })?;
        match repeats.first_line(recipient.user_id.as_str()) {
            Some(first) if first != line => Err(Rejected {
                line,
                reason: format!(
                    "duplicate user_id `{}` (first on line {first})",
                    recipient.user_id
                ),
            }),
            _ => Ok(Row { line, recipient }),
        }
    })))
}

/// The ids `suspects` flagged, counted exactly over another pass (only when it flagged any).
fn confirm(path: &Path, suspects: Suspects) -> anyhow::Result<Repeats> {
    if suspects.is_empty() {
        return Ok(Repeats::default());
    }
    let valid_ids = parsed(path)?
        .filter_map(|(line, recipient)| Some((line, recipient.ok()?.user_id)))
        .map(|(line, id)| (line, id.as_str().to_string()));
    Ok(suspects.confirm(valid_ids))
}

/// The audience file's size, for sizing the duplicate check (0 if unknown: the smallest).
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn too_many(error: TooManySuspects) -> anyhow::Error {
    InvalidInput(error.to_string()).into()
}

/// Parses an audience file's rows, CSV or JSONL by its extension.
fn parsed(path: &Path) -> anyhow::Result<Parsed> {
    let format = Format::of(path)?;
    let file = File::open(path).with_context(|| format!("Failed to open {}", path.display()))?;
    let raw: Box<dyn Iterator<Item = (u64, Result<RawRow, String>)> + Send> = match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(file);
            let headers = reader
                .headers()
                .map_err(|e| {
                    InvalidInput(format!(
                        "{}: cannot read the CSV header: {e}",
                        path.display()
                    ))
                })?
                .clone();
            const KNOWN: [&str; 4] = ["user_id", "email", "locale", "name"];
            if let Some(unknown) = headers.iter().find(|h| !KNOWN.contains(h)) {
                return Err(InvalidInput(format!(
                    "{}: line 1: unknown column `{unknown}` (expected {})",
                    path.display(),
                    KNOWN.join(",")
                ))
                .into());
            }
            if !headers.iter().any(|h| h == "user_id") {
                return Err(
                    InvalidInput(format!("{}: line 1: no user_id column", path.display())).into(),
                );
            }
            Box::new(reader.into_records().map(move |record| match record {
                Ok(record) => {
                    let line = record.position().map_or(0, |p| p.line());
                    (line, Ok(csv_row(&headers, &record)))
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    (
                        line,
                        Err(format!("unreadable CSV: {}", bounded(&e.to_string()))),
                    )
                }
            }))
        }
        Format::Jsonl => Box::new(
            BoundedLines::new(BufReader::new(file))
                .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(|(n, line)| {
                    let row = line.and_then(|line| {
                        serde_json::from_str::<RawRow>(&line)
                            .map_err(|e| format!("invalid JSON: {}", json_error(&e)))
                    });
                    (n, row)
                }),
        ),
    };
    Ok(Box::new(
        raw.map(|(line, raw)| (line, raw.and_then(RawRow::parse))),
    ))
}

/// Longest JSONL line read; a longer one is rejected without being held in memory. A row at
/// every field limit (see `batch`) takes about 6 KiB.
pub const LINE_MAX: usize = 64 * 1024;

/// The lines of a JSONL file with their 1-based numbers, each at most [`LINE_MAX`] bytes and
/// UTF-8, or the reason it is not.
struct BoundedLines<R> {
    reader: R,
    line: u64,
    done: bool,
}

impl<R: BufRead> BoundedLines<R> {
    fn new(reader: R) -> Self {
        BoundedLines {
            reader,
            line: 0,
            done: false,
        }
    }

    /// Skips to the end of an over-long line, holding none of it; returns its length.
    fn skip_rest(&mut self, mut length: usize) -> std::io::Result<usize> {
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                return Ok(length);
            }
            match buffer.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.reader.consume(end + 1);
                    return Ok(length + end);
                }
                None => {
                    let all = buffer.len();
                    self.reader.consume(all);
                    length += all;
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = (u64, Result<String, String>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut bytes = Vec::new();
        let read = (&mut self.reader)
            .take(LINE_MAX as u64 + 1)
            .read_until(b'\n', &mut bytes);
        match read {
            Ok(0) => {
                self.done = true;
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.done = true;
                self.line += 1;
                return Some((self.line, Err(format!("unreadable: {e}"))));
            }
        }
        self.line += 1;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        } else if bytes.len() > LINE_MAX {
            let length = match self.skip_rest(bytes.len()) {
                Ok(length) => length,
                Err(e) => {
                    self.done = true;
                    return Some((self.line, Err(format!("unreadable: {e}"))));
                }
            };
            return Some((
                self.line,
                Err(format!(
                    "line is {length} bytes; at most {LINE_MAX} are allowed"
                )),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to() + 1));
        Some((self.line, text))
    }
}

fn csv_row(headers: &csv::StringRecord, record: &csv::StringRecord) -> RawRow {
    let mut row = RawRow::default();
    for (header, value) in headers.iter().zip(record.iter()) {
        let value = Some(value.to_string());
        match header {
            "user_id" => row.user_id = value,
            "email" => row.email = value,
            "locale" => row.locale = value,
            _ => row.name = value,
        }
    }
    row
}

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
}

/// Reads the whole audience, keeping only counts (per channel and the template locale each
/// recipient negotiates to), the first rejects and the repeated user ids. A file whose ids the
/// filter flags is read a second time to count them exactly, and one that repeats ids a third
/// time to count again without the repeats.
pub fn validate(
    path: &Path,
    locales: &Locales,
    channels: &[Channel],
) -> anyhow::Result<Validation> {
    let mut suspects = Suspects::for_file(file_size(path));
    let first = count(rows_with(path, Arc::default())?, locales, channels, |id| {
        suspects.see(id).map_err(too_many)
    })?;
    let repeats = Arc::new(confirm(path, suspects)?);
    if repeats.is_empty() {
        return Ok(Validation { repeats, ..first });
    }
    let recounted = count(
        rows_with(path, Arc::clone(&repeats))?,
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
    let mut negotiated: HashMap<Option<String>, String> = HashMap::new();
    for row in rows {
        match row {
            Ok(Row { recipient, .. }) => {
                see(recipient.user_id.as_str())?;
                validation.valid += 1;
                if negotiated.len() >= NEGOTIATED_MAX {
                    negotiated.clear();
                }
                let locale = negotiated
                    .entry(recipient.locale.clone())
                    .or_insert_with(|| {
                        locales
                            .negotiate(recipient.locale.as_deref())
                            .tag()
                            .to_string()
                    });
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
    /// `--campaign-id`.
    pub campaign_id: String,
    /// `--template`.
    pub template: String,
    /// `--audience`.
    pub audience: PathBuf,
    /// `--channels`.
    pub channels: Vec<Channel>,
    /// `--vars`.
    pub vars: Option<PathBuf>,
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
        .map_err(|e| InvalidInput(format!("--campaign-id: {e}")))?;
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
        eprintln!(
            "warning: --deadline {deadline} has passed: workers will dead-letter every recipient with reason `deadline`"
        );
    }
    let dir = &config.templates.dir;
    let default_locale = &config.templates.default_locale;
    let problems = lint::check(dir, &template, default_locale);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(InvalidInput(format!(
            "template `{template}` fails `sunset preview --check`:\n  {}",
            lines.join("\n  ")
        ))
        .into());
    }
    let sample = Sample::load(&render::template_dir(dir, &template)?)?;
    let vars = match &options.vars {
        Some(path) => crate::preview::read_vars(path)?,
        None => {
            eprintln!(
                "warning: no --vars given; using the campaign variables of {template}/sample.json"
            );
            sample.vars.clone()
        }
    };
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
    let validation = validate(&options.audience, renderer.locales(), &options.channels)?;
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
    Ok(Plan {
        campaign,
        template,
        channels: options.channels.clone(),
        vars,
        deadline,
        batch_size: options.batch_size,
        audience: options.audience.clone(),
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
pub async fn publish(broker: &Broker, plan: &Plan) -> anyhow::Result<Summary> {
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
    let mut rows = rows_with(&plan.audience, Arc::clone(&plan.repeats))?
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
            broker
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
