//! Logs to stderr with `tracing`: human-readable on a terminal, JSON lines otherwise (or with
//! `SUNSET_LOG_FORMAT=json`); level from `RUST_LOG` (default `info`, and `warn` for sqlx, whose
//! info lines are PostgreSQL notices such as "relation already exists, skipping"). Recipient
//! email addresses never reach the output whole: `l***@example.com`.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable that picks the log format: `json`, or `text` (human-readable).
pub const FORMAT_ENV: &str = "SUNSET_LOG_FORMAT";

/// Installs the subscriber once; later calls do nothing.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let terminal = io::stderr().is_terminal();
    let json = match std::env::var(FORMAT_ENV) {
        Ok(format) if format.eq_ignore_ascii_case("json") => true,
        Ok(format) if format.eq_ignore_ascii_case("text") => false,
        _ => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MaskingStderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
}

/// An email address shown for logs: `layla@example.com` → `l***@example.com` (first character
/// of the local part, then the domain, which the per-domain rate limits are about).
pub struct MaskedEmail<'a>(pub &'a str);

impl fmt::Display for MaskedEmail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.rsplit_once('@') {
            Some((local, domain)) => match local.chars().next() {
                Some(first) => write!(f, "{first}***@{domain}"),
                None => write!(f, "***@{domain}"),
            },
            None => f.write_str("***"),
        }
    }
}

/// Free text (an SMTP reply, an error chain) with every email address in it masked as
/// [`MaskedEmail`] does: `550 <layla@example.com>: unknown` → `550 <l***@example.com>: unknown`.
pub struct MaskedText<'a>(pub &'a str);

impl fmt::Display for MaskedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_addresses(self.0))
    }
}

/// `text` with every email address masked; borrowed as is when there is none (no `@`).
pub fn mask_addresses(text: &str) -> Cow<'_, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    // Up to `done`, `text` has been copied (masked) to `out`.
    let mut done = 0;
    for (at, _) in text.match_indices('@') {
        if at < done {
            continue;
        }
        let local_start = text[done..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_local_char(*c))
            .last()
            .map_or(at, |(i, _)| done + i);
        let domain_len: usize = text[at + 1..]
            .chars()
            .take_while(|c| is_domain_char(*c))
            .map(char::len_utf8)
            .sum();
        // A sentence may end right after an address: the dot is not part of the domain.
        let domain = text[at + 1..at + 1 + domain_len].trim_end_matches(['.', '-']);
        let is_address = local_start < at && domain.contains('.') && !domain.starts_with('.');
        if !is_address {
            continue;
        }
        out.push_str(&text[done..local_start]);
        let masked = MaskedEmail(&text[local_start..at + 1 + domain.len()]);
        out.push_str(&masked.to_string());
        done = at + 1 + domain.len();
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// Characters of an address's local part: letters and digits of any script and the usual
/// symbols (`*` too, so a masked address stays as it is). `=`, `/` and quotes are left out, so
/// `to=layla@example.com` keeps its `to=`.
fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-!#$&*^~".contains(c)
}

/// Characters of a domain name (letters and digits of any script, dots, hyphens).
fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

/// stderr, with every email address in a log line masked: the net under the masking done where
/// an address is logged on purpose, for the ones inside library errors and server replies.
struct MaskingStderr;

impl<'a> MakeWriter<'a> for MaskingStderr {
    type Writer = MaskingStderr;

    fn make_writer(&'a self) -> MaskingStderr {
        MaskingStderr
    }
}

impl Write for MaskingStderr {
    /// tracing formats a whole event, then writes it at once: each call sees whole lines.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Above the live progress lines of `send` and `status --watch`, which stay at the bottom.
        match std::str::from_utf8(buf) {
            Ok(text) => crate::progress::above(mask_addresses(text).as_bytes())?,
            Err(_) => crate::progress::above(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_first_letter_and_its_domain() {
        assert_eq!(
            MaskedEmail("layla@example.com").to_string(),
            "l***@example.com"
        );
        assert_eq!(
            MaskedEmail("ليلى@example.com").to_string(),
            "ل***@example.com"
        );
        assert_eq!(MaskedEmail("@example.com").to_string(), "***@example.com");
        assert_eq!(MaskedEmail("nonsense").to_string(), "***");
    }

    #[test]
    fn every_address_in_a_text_is_masked() {
        let reply =
            "550 5.1.1 <u7@mx.example.com>: Recipient address rejected; also bob.smith+x@163.com.";
        assert_eq!(
            MaskedText(reply).to_string(),
            "550 5.1.1 <u***@mx.example.com>: Recipient address rejected; also b***@163.com."
        );
        let json = r#"{"reason":"user \"a@b.example\" unknown","to":"z@qq.com"}"#;
        assert_eq!(
            mask_addresses(json),
            r#"{"reason":"user \"a***@b.example\" unknown","to":"z***@qq.com"}"#
        );
    }

    #[test]
    fn masking_twice_changes_nothing_more() {
        let once = mask_addresses("to layla@example.com").into_owned();
        assert_eq!(once, "to l***@example.com");
        assert_eq!(mask_addresses(&once), once);
    }

    #[test]
    fn text_without_an_address_is_left_alone() {
        for text in [
            "no at sign here",
            "user@localhost",
            "@example.com",
            "a @ b.com",
            "x@.com",
        ] {
            assert_eq!(mask_addresses(text), text, "{text}");
        }
        assert!(matches!(mask_addresses("plain"), Cow::Borrowed(_)));
    }
}
