//! The email of one delivery, written straight to bytes: RFC 5322 headers (UTF-8 as RFC 2047
//! encoded words) and a multipart/alternative body whose parts are 7bit or base64.
//!
//! lettre's message builder chose each part's encoding, normalized line ends and encoded a
//! character at a time: a fifth of a worker's CPU. The shape of our emails is fixed, so they
//! are written here in one pass; lettre still carries them over SMTP.

use lettre::Address;
use lettre::address::Envelope;

use super::{ComposeError, Composer, message_id};
use crate::bidi;
use crate::channel::Delivery;
use crate::render::one_line;

/// Separates the two parts. A 7bit part never contains it (such a part is sent as base64,
/// whose alphabet has no `_`), so it need not be random.
const BOUNDARY: &str = "=_sunset_alternative";

/// Longest header value written as it is; longer or non-ASCII ones become encoded words.
const PLAIN_HEADER_MAX: usize = 70;

/// Characters per header line we aim for (RFC 5322 recommends at most 78).
const HEADER_LINE: usize = 76;

/// `=?utf-8?b?` and `?=` around an encoded word's base64.
const WORD_FRAME: usize = 12;

/// Bytes per base64 body line: 76 characters (RFC 2045).
const BASE64_LINE_BYTES: usize = 57;

/// Longest 7bit body line (RFC 5322 allows 998 characters without the CRLF).
const LINE_MAX: usize = 998;

/// An email: the SMTP envelope and the message bytes (CRLF line ends).
#[derive(Debug)]
pub struct Email {
    /// `MAIL FROM` and `RCPT TO`.
    pub envelope: Envelope,
    /// Headers and body.
    pub bytes: Vec<u8>,
}

/// Builds the email for one delivery: `From` (the locale's sender name when the template has
/// one, else `email.from`'s), `To` with the recipient's name, UTF-8 subject,
/// multipart/alternative (text, then HTML), a deterministic `Message-ID`, `Content-Language`,
/// `X-Sunset-Campaign`, `Date`, and `List-Unsubscribe` when the template asks for it; the
/// envelope sender is the VERP address when a bounce domain is set. Unsigned: the senders sign
/// it with [`Composer::seal`], off the runtime's thread. Header values never contain line
/// breaks of their own.
pub fn compose(composer: &Composer, delivery: Delivery<'_>) -> Result<Email, ComposeError> {
    let parts = delivery
        .notice
        .email
        .as_ref()
        .ok_or(ComposeError::NoEmailPart)?;
    let address = delivery
        .recipient
        .email
        .as_ref()
        .ok_or(ComposeError::NoAddress)?;
    let address: Address = address
        .as_str()
        .parse()
        .map_err(|e| ComposeError::Invalid(format!("recipient address: {e}")))?;
    let (campaign, user) = (delivery.campaign_id, &delivery.recipient.user_id);
    let list_unsubscribe = parts
        .list_unsubscribe
        .then(|| composer.list_unsubscribe(campaign, user))
        .transpose()?;
    let sender = composer.envelope_sender(campaign, user)?;
    let envelope = Envelope::new(Some(sender), vec![address.clone()])
        .map_err(|e| ComposeError::Invalid(e.to_string()))?;
    let from = composer.from();
    let id = message_id(campaign, user, from.email.domain());
    let now = chrono::Utc::now();

    let mut out = Vec::with_capacity(1024 + parts.text.len() * 2 + parts.html.len() * 2);
    let from_name = parts.from_name.as_deref().or(from.name.as_deref());
    mailbox_header(
        &mut out,
        "From",
        from_name.map(one_line).as_deref(),
        &from.email,
    );
    let name = delivery.recipient.name.as_deref().map(display_name);
    mailbox_header(&mut out, "To", name.as_deref(), &address);
    text_header(&mut out, "Subject", &one_line(&parts.subject));
    raw_header(&mut out, "Message-ID", &id);
    raw_header(&mut out, "Date", &now.to_rfc2822());
    text_header(
        &mut out,
        "Content-Language",
        &one_line(&delivery.notice.locale),
    );
    text_header(&mut out, "X-Sunset-Campaign", campaign.as_str());
    if let Some(value) = &list_unsubscribe {
        raw_header(&mut out, "List-Unsubscribe", value);
        raw_header(
            &mut out,
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click",
        );
    }
    raw_header(&mut out, "MIME-Version", "1.0");
    raw_header(
        &mut out,
        "Content-Type",
        &format!("multipart/alternative; boundary=\"{BOUNDARY}\""),
    );
    out.extend_from_slice(b"\r\n");
    body_part(&mut out, "text/plain", &parts.text);
    body_part(&mut out, "text/html", &parts.html);
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Ok(Email {
        envelope,
        bytes: out,
    })
}

/// The recipient's name as `To:` shows it: one line, and isolated (FSI…PDI) when it is not plain
/// ASCII, so a name in another script than the client's keeps its own order and the address
/// stays beside it; ASCII names need no isolate and stay a readable quoted-string.
fn display_name(name: &str) -> String {
    let name = one_line(name);
    if name.is_ascii() {
        name
    } else {
        bidi::isolate(&name)
    }
}

/// `Name: value` for a value known to be short, printable ASCII.
fn raw_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `Name: text` for unstructured text: as it is when short printable ASCII, else encoded words.
fn text_header(out: &mut Vec<u8>, name: &str, text: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    if is_plain(text) {
        out.extend_from_slice(text.as_bytes());
    } else {
        encoded_words(out, text, name.len() + 2);
    }
    out.extend_from_slice(b"\r\n");
}

/// `Name: display name <address>`, or the bare address without a name.
fn mailbox_header(out: &mut Vec<u8>, header: &str, name: Option<&str>, address: &Address) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(b": ");
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) if is_plain(name) => {
            // A quoted-string: any printable ASCII, with `"` and `\` escaped.
            out.push(b'"');
            for &b in name.as_bytes() {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.extend_from_slice(b"\" <");
        }
        Some(name) => {
            encoded_words(out, name, header.len() + 2);
            out.extend_from_slice(b" <");
        }
        None => out.push(b'<'),
    }
    out.extend_from_slice(AsRef::<str>::as_ref(address).as_bytes());
    out.extend_from_slice(b">\r\n");
}

/// Short, printable ASCII, and not looking like an encoded word itself.
fn is_plain(text: &str) -> bool {
    text.len() <= PLAIN_HEADER_MAX
        && text.bytes().all(|b| (b' '..=b'~').contains(&b))
        && !text.contains("=?")
}

/// `=?utf-8?b?…?=` words, each on a line of its own (the first after `used` characters of
/// header name), filling lines to [`HEADER_LINE`] and never splitting a character.
fn encoded_words(out: &mut Vec<u8>, text: &str, used: usize) {
    let mut rest = text;
    let mut used = used;
    let mut first = true;
    while !rest.is_empty() {
        // Whole base64 groups that fit; at least 4 bytes, so any character fits.
        let fit = HEADER_LINE.saturating_sub(used + WORD_FRAME) / 4 * 3;
        let mut end = rest.len().min(fit.max(4));
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if !first {
            out.extend_from_slice(b"\r\n ");
        }
        first = false;
        used = 1;
        out.extend_from_slice(b"=?utf-8?b?");
        base64(&rest.as_bytes()[..end], out);
        out.extend_from_slice(b"?=");
        rest = &rest[end..];
    }
}

/// One part of the alternative: 7bit when the text allows (ASCII, short lines, no boundary),
/// else base64; line ends become CRLF either way.
fn body_part(out: &mut Vec<u8>, mime_type: &str, text: &str) {
    out.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Type: {mime_type}; charset=utf-8\r\n").as_bytes(),
    );
    let seven_bit = text.is_ascii()
        && !text.contains(BOUNDARY)
        && text.split('\n').all(|line| {
            line.len() <= LINE_MAX
                && !line
                    .strip_suffix('\r')
                    .unwrap_or(line)
                    .contains(['\r', '\0'])
        });
    if seven_bit {
        out.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n\r\n");
        crlf_lines(text, out);
    } else {
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        let mut canonical = Vec::with_capacity(text.len() + text.len() / 16);
        crlf_lines(text, &mut canonical);
        for line in canonical.chunks(BASE64_LINE_BYTES) {
            base64(line, out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `text` with every line ended by CRLF (a `\n` or `\r\n` end becomes CRLF; a last line without
/// an end gets one).
fn crlf_lines(text: &str, out: &mut Vec<u8>) {
    let text = text.strip_suffix('\n').unwrap_or(text);
    for line in text.split('\n') {
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Standard base64 with padding, no line breaks.
fn base64(input: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |n: u32, shift: u32| ALPHABET[((n >> shift) & 63) as usize];
    let mut chunks = input.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), sextet(n, 6), sextet(n, 0)]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), b'=', b'=']);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), sextet(n, 6), b'=']);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(input: &[u8]) -> String {
        let mut out = Vec::new();
        base64(input, &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in cases {
            assert_eq!(encoded(input.as_bytes()), output);
        }
    }

    #[test]
    fn long_utf8_headers_become_folded_words_that_never_split_a_character() {
        let subject = "蝦米音樂即將停止服務".repeat(4);
        let mut out = Vec::new();
        text_header(&mut out, "Subject", &subject);
        let header = String::from_utf8(out).expect("ASCII");
        let words: Vec<&str> = header
            .trim_start_matches("Subject: ")
            .split("\r\n ")
            .map(str::trim)
            .collect();
        assert!(words.len() > 1, "{header}");
        assert!(words.iter().all(|w| w.len() <= 75), "{header}");
        assert!(header.lines().all(|l| l.len() <= HEADER_LINE), "{header}");
    }

    #[test]
    fn names_in_other_scripts_are_isolated_and_ascii_names_stay_plain() {
        assert_eq!(display_name(" DJ K. "), "DJ K.");
        assert_eq!(display_name("ليلى DJ"), "\u{2068}ليلى DJ\u{2069}");
        let address: Address = "a@example.com".parse().expect("address");
        let mut out = Vec::new();
        mailbox_header(&mut out, "To", Some(&display_name("ليلى")), &address);
        let header = String::from_utf8(out).expect("ASCII");
        // Encoded words of UTF-8: FSI is E2 81 A8.
        assert!(header.starts_with("To: =?utf-8?b?4oGo"), "{header}");
    }

    #[test]
    fn plain_names_are_quoted_with_escapes() {
        let address: Address = "a@example.com".parse().expect("address");
        let mut out = Vec::new();
        mailbox_header(&mut out, "To", Some(r#"A "B" \C"#), &address);
        assert_eq!(out, b"To: \"A \\\"B\\\" \\\\C\" <a@example.com>\r\n");
    }

    #[test]
    fn text_with_long_lines_or_the_boundary_goes_as_base64() {
        for text in ["a".repeat(LINE_MAX + 1), format!("x\n--{BOUNDARY}--\n")] {
            let mut out = Vec::new();
            body_part(&mut out, "text/plain", &text);
            let part = String::from_utf8(out).expect("ASCII");
            assert!(part.contains("base64"), "{part}");
        }
        let mut out = Vec::new();
        body_part(&mut out, "text/plain", "one\ntwo\r\n");
        assert!(out.ends_with(b"7bit\r\n\r\none\r\ntwo\r\n"));
    }
}
