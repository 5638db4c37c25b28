//! Reading a CSV audience as spreadsheets write it: CRLF or LF line ends, a UTF-8 BOM, `,` `;`
//! tab or `|` between fields, header names in any case and spacing.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::str::FromStr;

use super::raw_row::RawRow;
use crate::batch::bounded;
use crate::invalid_input::InvalidInput;

/// The columns an audience CSV may have; `user_id` is required.
const COLUMNS: [&str; 4] = ["user_id", "email", "locale", "name"];

/// Bytes of the file looked at for the header line when detecting the delimiter.
const HEADER_MAX: usize = 64 * 1024;

/// The character between fields: `,` `;` tab or `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiter(u8);

impl Delimiter {
    /// The delimiters read, in the order an ambiguous header names them.
    const ALL: [Delimiter; 4] = [
        Delimiter(b','),
        Delimiter(b';'),
        Delimiter(b'\t'),
        Delimiter(b'|'),
    ];
}

impl fmt::Display for Delimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b'\t' => f.write_str("tab"),
            byte => write!(f, "`{}`", char::from(byte)),
        }
    }
}

/// A `--delimiter` that is none of `,` `;` tab `|`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a delimiter: use `,` `;` `|` or `\\t` (tab)")]
pub struct UnknownDelimiter(String);

impl FromStr for Delimiter {
    type Err = UnknownDelimiter;

    fn from_str(s: &str) -> Result<Delimiter, UnknownDelimiter> {
        match s {
            "," => Ok(Delimiter(b',')),
            ";" => Ok(Delimiter(b';')),
            "|" => Ok(Delimiter(b'|')),
            "\t" | "\\t" | "tab" | "TAB" => Ok(Delimiter(b'\t')),
            other => Err(UnknownDelimiter(other.to_string())),
        }
    }
}

/// A header name as the column it names: ` User ID ` and `USER_ID` are `user_id`.
fn column(name: &str) -> String {
    name.trim()
        .trim_matches('"')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .to_lowercase()
}

/// The delimiter of a header line: the only one of `,` `;` tab `|` in it, or the only one that
/// splits it into known columns; `,` when it has none (a lone `user_id` column).
fn detect(header: &str) -> Result<Delimiter, String> {
    let present: Vec<Delimiter> = Delimiter::ALL
        .into_iter()
        .filter(|d| header.contains(char::from(d.0)))
        .collect();
    let fitting: Vec<Delimiter> = present
        .iter()
        .copied()
        .filter(|d| {
            header
                .split(char::from(d.0))
                .all(|name| COLUMNS.contains(&column(name).as_str()))
        })
        .collect();
    match (present.as_slice(), fitting.as_slice()) {
        ([], _) => Ok(Delimiter(b',')),
        ([only], _) | (_, [only]) => Ok(*only),
        (several, _) => Err(format!(
            "line 1: cannot tell the delimiter: the header has {}; say which with --delimiter",
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

/// The first line of a buffered file (without a BOM), for detecting its delimiter.
fn first_line(reader: &mut BufReader<File>) -> io::Result<String> {
    let buffer = reader.fill_buf()?;
    let buffer = buffer.strip_prefix(b"\xef\xbb\xbf").unwrap_or(buffer);
    let end = buffer
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(buffer.len());
    Ok(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

/// A CSV audience's rows with their 1-based lines, after its header is checked.
pub(super) fn records(
    path: &Path,
    file: File,
    delimiter: Option<Delimiter>,
) -> anyhow::Result<impl Iterator<Item = (u64, Result<RawRow, String>)> + Send + use<>> {
    let invalid = |what: String| InvalidInput(format!("{}: {what}", path.display()));
    let mut reader = BufReader::with_capacity(HEADER_MAX, file);
    let delimiter = match delimiter {
        Some(given) => given,
        None => {
            let header = first_line(&mut reader)
                .map_err(|e| invalid(format!("cannot read the CSV header: {e}")))?;
            detect(&header).map_err(invalid)?
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .delimiter(delimiter.0)
        .from_reader(CrlfAsLf::new(reader));
    let headers = reader
        .headers()
        .map_err(|e| invalid(format!("cannot read the CSV header: {e}")))?;
    let mut columns: Vec<String> = Vec::with_capacity(headers.len());
    for name in headers {
        let key = column(name);
        if !COLUMNS.contains(&key.as_str()) {
            return Err(invalid(format!(
                "line 1: unknown column `{name}` (expected {}, separated by {delimiter})",
                COLUMNS.join(",")
            ))
            .into());
        }
        if columns.contains(&key) {
            return Err(invalid(format!("line 1: column `{key}` appears twice")).into());
        }
        columns.push(key);
    }
    if !columns.iter().any(|c| c == "user_id") {
        return Err(invalid("line 1: no user_id column".into()).into());
    }
    Ok(reader.into_records().map(move |record| match record {
        Ok(record) => {
            let line = record.position().map_or(0, |p| p.line());
            (line, Ok(raw_row(&columns, &record)))
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

fn raw_row(columns: &[String], record: &csv::StringRecord) -> RawRow {
    let mut row = RawRow::default();
    for (column, value) in columns.iter().zip(record.iter()) {
        let value = Some(value.to_string());
        match column.as_str() {
            "user_id" => row.user_id = value,
            "email" => row.email = value,
            "locale" => row.locale = value,
            _ => row.name = value,
        }
    }
    row
}

/// A reader giving every CRLF as LF: the CSV parser counts a record's line by its LFs, and
/// starts counting a CRLF-ended record's successor before reaching that LF.
struct CrlfAsLf<R> {
    inner: R,
    /// A CR ended the last buffer; the next byte decides whether it is kept.
    pending_cr: bool,
}

impl<R: BufRead> CrlfAsLf<R> {
    fn new(inner: R) -> Self {
        CrlfAsLf {
            inner,
            pending_cr: false,
        }
    }
}

impl<R: BufRead> Read for CrlfAsLf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let input = self.inner.fill_buf()?;
        if self.pending_cr {
            self.pending_cr = false;
            out[0] = if input.first() == Some(&b'\n') {
                self.inner.consume(1);
                b'\n'
            } else {
                b'\r'
            };
            return Ok(1);
        }
        let (mut read, mut written) = (0, 0);
        while read < input.len() && written < out.len() {
            let byte = input[read];
            read += 1;
            if byte == b'\r' {
                match input.get(read) {
                    Some(b'\n') => continue,
                    None => {
                        self.pending_cr = true;
                        break;
                    }
                    Some(_) => {}
                }
            }
            out[written] = byte;
            written += 1;
        }
        self.inner.consume(read);
        if written == 0 && self.pending_cr {
            return self.read(out);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(input: &[u8], capacity: usize) -> Vec<u8> {
        let mut out = Vec::new();
        CrlfAsLf::new(BufReader::with_capacity(capacity, input))
            .read_to_end(&mut out)
            .expect("read");
        out
    }

    #[test]
    fn crlf_becomes_lf_and_a_lone_cr_stays_at_any_buffer_boundary() {
        let input = b"a,b\r\nc\rd\r\n\"e\r\nf\"\r";
        for capacity in 1..=input.len() + 1 {
            assert_eq!(
                through(input, capacity),
                b"a,b\nc\rd\n\"e\nf\"\r",
                "capacity {capacity}"
            );
        }
    }

    #[test]
    fn the_delimiter_is_detected_from_the_header_only_when_one_fits() {
        let cases = [
            ("user_id,email,locale,name", Some(b',')),
            ("user_id;email;locale", Some(b';')),
            ("user_id\temail", Some(b'\t')),
            ("user_id|name", Some(b'|')),
            ("user_id", Some(b',')),
            (" User ID ;Name", Some(b';')),
            ("user_id;name,x", None),
            ("user_id;email,locale", None),
        ];
        for (header, expected) in cases {
            match (detect(header), expected) {
                (Ok(got), Some(want)) => assert_eq!(got.0, want, "{header:?}"),
                (Err(got), None) => assert!(got.contains("--delimiter"), "{got}"),
                (got, want) => panic!("{header:?}: {got:?} instead of {want:?}"),
            }
        }
    }

    #[test]
    fn header_names_are_read_in_any_case_and_spacing() {
        for name in [" User_ID ", "USER_ID", "user id", "\"User Id\""] {
            assert_eq!(column(name), "user_id", "{name:?}");
        }
    }

    #[test]
    fn delimiters_parse_from_their_characters_and_tab_names() {
        for (given, byte) in [
            (",", b','),
            (";", b';'),
            ("|", b'|'),
            ("\\t", b'\t'),
            ("tab", b'\t'),
        ] {
            assert_eq!(given.parse::<Delimiter>().map(|d| d.0).ok(), Some(byte));
        }
        let error = ":".parse::<Delimiter>().expect_err("not a delimiter");
        assert!(error.to_string().contains("`:`"), "{error}");
    }
}
