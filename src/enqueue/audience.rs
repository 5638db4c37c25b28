//! Reading an audience file: CSV or JSONL streamed row by row, each row parsed into a
//! recipient or rejected with its line and reason, repeated user ids found by [`Repeats`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::sync::Arc;

use super::csv_rows::{self, Delimiter};
use super::raw_row::{Parsed, RawRow};
use super::repeats::{Repeats, Suspects, TooManySuspects};
use crate::batch::{Recipient, json_error};
use crate::invalid_input::InvalidInput;

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
    /// The row's locale when it is no language tag even normalised (escaped, cut to a tag's
    /// length): the recipient has none, and gets the default locale.
    pub unreadable_locale: Option<String>,
}

/// An audience file's rows as read, each with its line: the recipient, or why it is not one.
type ParsedRows = Box<dyn Iterator<Item = (u64, Result<Parsed, String>)> + Send>;

/// The rows of an audience file, audience validation and all.
pub type Rows = Box<dyn Iterator<Item = Result<Row, Rejected>> + Send>;

/// Reads an audience file row by row without loading it whole, rejecting a user id seen on an
/// earlier valid row. The same file always gives the same rows. Reads the file two or three
/// times (see [`Repeats`]); [`validate`] and [`publish`] share that work through the plan.
/// A CSV's delimiter is detected from its header.
pub fn rows(path: &Path) -> anyhow::Result<Rows> {
    let mut suspects = Suspects::for_file(file_size(path));
    for (_, parsed) in parsed(path, None)? {
        if let Ok((recipient, _)) = parsed {
            suspects.see(recipient.user_id.as_str()).map_err(too_many)?;
        }
    }
    let repeats = confirm(path, None, suspects)?;
    rows_with(path, None, Arc::new(repeats))
}

/// The rows of an audience file (a CSV split at `delimiter`, detected when `None`), rejecting
/// every valid row whose user id `repeats` has on an earlier line.
pub fn rows_with(
    path: &Path,
    delimiter: Option<Delimiter>,
    repeats: Arc<Repeats>,
) -> anyhow::Result<Rows> {
    Ok(Box::new(parsed(path, delimiter)?.map(
        move |(line, parsed)| {
            let (recipient, unreadable_locale) =
                parsed.map_err(|reason| Rejected { line, reason })?;
            match repeats.first_line(recipient.user_id.as_str()) {
                Some(first) if first != line => Err(Rejected {
                    line,
                    reason: format!(
                        "duplicate user_id `{}` (first on line {first})",
                        recipient.user_id
                    ),
                }),
                _ => Ok(Row {
                    line,
                    recipient,
                    unreadable_locale,
                }),
            }
        },
    )))
}

/// The ids `suspects` flagged, counted exactly over another pass (only when it flagged any).
pub(super) fn confirm(
    path: &Path,
    delimiter: Option<Delimiter>,
    suspects: Suspects,
) -> anyhow::Result<Repeats> {
    if suspects.is_empty() {
        return Ok(Repeats::default());
    }
    let valid_ids = parsed(path, delimiter)?
        .filter_map(|(line, parsed)| Some((line, parsed.ok()?.0.user_id)))
        .map(|(line, id)| (line, id.as_str().to_string()));
    Ok(suspects.confirm(valid_ids))
}

/// The audience file's size, for sizing the duplicate check (0 if unknown: the smallest).
pub(super) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(super) fn too_many(error: TooManySuspects) -> anyhow::Error {
    InvalidInput(error.to_string()).into()
}

/// Parses an audience file's rows, CSV or JSONL by its extension.
fn parsed(path: &Path, delimiter: Option<Delimiter>) -> anyhow::Result<ParsedRows> {
    let format = Format::of(path)?;
    if format == Format::Jsonl && delimiter.is_some() {
        return Err(InvalidInput(format!(
            "{}: --delimiter applies to CSV audiences only",
            path.display()
        ))
        .into());
    }
    let file = File::open(path)
        .map_err(|e| InvalidInput(format!("audience file {}: {e}", path.display())))?;
    let raw: Box<dyn Iterator<Item = (u64, Result<RawRow, String>)> + Send> = match format {
        Format::Csv => Box::new(csv_rows::records(path, file, delimiter)?),
        Format::Jsonl => Box::new(
            BoundedLines::new(BufReader::new(file))
                .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(|(n, line)| {
                    let row = line.and_then(|line| {
                        // A BOM is how some editors start a UTF-8 file.
                        serde_json::from_str::<RawRow>(
                            line.strip_prefix('\u{feff}').unwrap_or(&line),
                        )
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
