//! `sunset suppress`: add, import, list and remove addresses on the ledger's suppression list.
//! A file is read and checked whole before anything is written, and written in one
//! transaction: any bad line imports nothing.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::batch::EmailAddress;
use crate::cli::SuppressAction;
use crate::commands::require_ledger;
use crate::config::Config;
use crate::invalid_input::InvalidInput;
use crate::ledger::{Ledger, Suppression};
use crate::progress;
use crate::say;
use crate::suppression::Reason;

/// Bad lines named in the error at most; the rest are counted.
const SHOWN_BAD_LINES: usize = 20;
/// Addresses from which an import shows it is at work on a terminal.
const BIG_IMPORT: usize = 10_000;

/// Runs one `sunset suppress` action.
pub async fn run(config: &Config, action: &SuppressAction) -> anyhow::Result<()> {
    let ledger = require_ledger(config)?;
    let done = act(&ledger, action).await;
    ledger.close().await;
    done
}

async fn act(ledger: &Ledger, action: &SuppressAction) -> anyhow::Result<()> {
    let failed = || {
        format!(
            "Failed to update the suppression list in the ledger at {}",
            ledger.url()
        )
    };
    match action {
        SuppressAction::Add { addresses, reason } => {
            let addresses = arguments(addresses)?;
            let added = ledger
                .suppress(&addresses, *reason)
                .await
                .with_context(failed)?;
            say!(
                "{added} added, {} already suppressed for {reason}",
                addresses.len() as u64 - added
            )
        }
        SuppressAction::Import { file, reason } => {
            let addresses = read_file(file)?;
            let added = import(ledger, &addresses, *reason)
                .await
                .with_context(failed)?;
            say!(
                "{} addresses read from {}: {added} added, {} already suppressed for {reason}",
                addresses.len(),
                file.display(),
                addresses.len() as u64 - added
            )
        }
        SuppressAction::Remove { addresses } => {
            let addresses = arguments(addresses)?;
            let removed = ledger.unsuppress(&addresses).await.with_context(failed)?;
            say!("{removed} entries removed")
        }
        SuppressAction::List { json } => {
            let list = ledger.suppressions().await.with_context(|| {
                format!(
                    "Failed to read the suppression list in the ledger at {}",
                    ledger.url()
                )
            })?;
            show(&list, *json)
        }
    }
}

/// Addresses given on the command line, each checked.
fn arguments(raw: &[String]) -> anyhow::Result<Vec<EmailAddress>> {
    raw.iter()
        .map(|a| {
            EmailAddress::parse(a)
                .map_err(|e| InvalidInput(format!("address `{}`: {e}", a.trim())).into())
        })
        .collect()
}

/// Writes `addresses` in one transaction, with a spinner on a terminal for big files.
async fn import(
    ledger: &Ledger,
    addresses: &[EmailAddress],
    reason: Reason,
) -> anyhow::Result<u64> {
    let spinner = (addresses.len() > BIG_IMPORT && progress::on_terminal()).then(|| {
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            spinner.set_style(style);
        }
        spinner.set_message(format!("writing {} addresses", addresses.len()));
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let added = ledger.suppress(addresses, reason).await;
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    Ok(added?)
}

/// The addresses of an import file: a CSV when its first line is a header with an `email`
/// column, else one address a line.
fn read_file(path: &Path) -> anyhow::Result<Vec<EmailAddress>> {
    let file = File::open(path)
        .map_err(|e| InvalidInput(format!("{}: cannot open: {e}", path.display())))?;
    let mut reader = BufReader::new(file);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .map_err(|e| InvalidInput(format!("{}: cannot read: {e}", path.display())))?;
    let column = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(first.as_bytes())
        .records()
        .next()
        .and_then(Result::ok)
        .and_then(|header| {
            header
                .iter()
                .position(|field| field.trim().eq_ignore_ascii_case("email"))
        });
    let rest = std::io::Cursor::new(first).chain(reader);
    let read = match column {
        Some(column) => csv_addresses(rest, column),
        None => line_addresses(rest),
    };
    let (addresses, bad) =
        read.map_err(|e| InvalidInput(format!("{}: cannot read: {e}", path.display())))?;
    if bad.is_empty() {
        return Ok(addresses);
    }
    let mut message = format!(
        "{}: {} bad lines; nothing imported",
        path.display(),
        bad.len()
    );
    for (line, problem) in bad.iter().take(SHOWN_BAD_LINES) {
        message.push_str(&format!("\n  {}:{line}: {problem}", path.display()));
    }
    if bad.len() > SHOWN_BAD_LINES {
        message.push_str(&format!("\n  … and {} more", bad.len() - SHOWN_BAD_LINES));
    }
    Err(InvalidInput(message).into())
}

/// Addresses and bad lines (line number, problem).
type Lines = (Vec<EmailAddress>, Vec<(u64, String)>);

fn parsed(raw: &str, line: u64, read: &mut Lines) {
    match EmailAddress::parse(raw) {
        Ok(address) => read.0.push(address),
        Err(e) => read.1.push((line, e.to_string())),
    }
}

fn line_addresses(input: impl BufRead) -> std::io::Result<Lines> {
    let mut read = Lines::default();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        parsed(text, index as u64 + 1, &mut read);
    }
    Ok(read)
}

/// A CSV's `email` column; a row with no value there is skipped (nothing to suppress).
fn csv_addresses(input: impl Read, column: usize) -> std::io::Result<Lines> {
    let mut read = Lines::default();
    let mut rows = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    for row in rows.records() {
        match row {
            Ok(row) => {
                let line = row.position().map_or(0, csv::Position::line);
                match row.get(column).map(str::trim) {
                    None | Some("") => {}
                    Some(raw) => parsed(raw, line, &mut read),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                if e.is_io_error() {
                    return Err(std::io::Error::other(e));
                }
                read.1.push((line, format!("not CSV: {e}")));
            }
        }
    }
    Ok(read)
}

fn show(list: &[Suppression], json: bool) -> anyhow::Result<()> {
    let scope = |s: &Suppression| {
        s.campaign
            .as_ref()
            .map_or_else(|| "global".to_string(), |c| format!("campaign {c}"))
    };
    if json {
        for s in list {
            say!(
                "{}",
                json!({
                    "address": s.address.as_str(),
                    "reason": s.reason.as_str(),
                    "scope": s.campaign.as_ref().map_or("global", |_| "campaign"),
                    "campaign": s.campaign.as_ref().map(|c| c.as_str()),
                    "since": s.since.to_rfc3339(),
                })
            )?;
        }
        return Ok(());
    }
    say!("{:<40} {:<12} {:<24} since", "address", "reason", "scope")?;
    for s in list {
        say!(
            "{:<40} {:<12} {:<24} {}",
            s.address.as_str(),
            s.reason.as_str(),
            scope(s),
            s.since.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    say!("{} entries", list.len())
}
