//! DKIM's "relaxed" canonicalization (RFC 6376 §3.4.2 and §3.4.4) of a message's header fields
//! and body, the form a signature covers: receivers re-fold, re-space and re-case headers, and
//! relaxed forms survive that.

use aws_lc_rs::digest::{self, Digest, SHA256};

/// One header field as written: its name and its raw value (after the colon, folds kept, no
/// final CRLF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Field<'a> {
    /// As written, any case.
    pub name: &'a [u8],
    /// As written.
    pub value: &'a [u8],
}

/// The message's header block (each field ending in CRLF) and body, split at the first empty
/// line; a message without one is all header.
pub(super) fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => (message, &[]),
    }
}

/// The header fields in order; a continuation line (starting with space or tab) belongs to the
/// field above it.
pub(super) fn fields(header: &[u8]) -> Vec<Field<'_>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < header.len() {
        let line_end = find_crlf(header, at).unwrap_or(header.len());
        let next = (line_end + 2).min(header.len());
        let continues = header.get(next).is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continues {
            push_field(&mut fields, &header[start..line_end]);
            start = next;
        }
        at = next;
    }
    fields
}

fn push_field<'a>(fields: &mut Vec<Field<'a>>, raw: &'a [u8]) {
    if let Some(colon) = raw.iter().position(|b| *b == b':') {
        fields.push(Field {
            name: &raw[..colon],
            value: &raw[colon + 1..],
        });
    }
}

fn find_crlf(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|at| from + at)
}

/// `name:value` in relaxed form, without a CRLF: the name lower-cased and trimmed, the value
/// unfolded, each run of spaces and tabs one space, no space at either end.
pub(super) fn relaxed_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.trim_ascii().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = true,
            _ => {
                if pending_space && started {
                    out.push(b' ');
                }
                pending_space = false;
                started = true;
                out.push(b);
            }
        }
    }
}

/// SHA-256 of the body in relaxed form: each run of spaces and tabs in a line one space, none
/// at a line's end, no empty lines at the end, and a CRLF after the last line (an empty body
/// stays empty).
pub(super) fn relaxed_body_hash(body: &[u8]) -> Digest {
    let mut context = digest::Context::new(&SHA256);
    let mut empty_lines = 0usize;
    let mut line = Vec::with_capacity(128);
    let mut rest = body;
    while !rest.is_empty() {
        let (raw, after) = match find_crlf(rest, 0) {
            Some(end) => (&rest[..end], &rest[end + 2..]),
            None => (rest, &[][..]),
        };
        rest = after;
        line.clear();
        relaxed_line(raw, &mut line);
        if line.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            context.update(b"\r\n");
        }
        empty_lines = 0;
        context.update(&line);
        context.update(b"\r\n");
    }
    context.finish()
}

/// One body line in relaxed form, without its line end.
fn relaxed_line(raw: &[u8], out: &mut Vec<u8>) {
    let mut pending_space = false;
    for &b in raw {
        if b == b' ' || b == b'\t' {
            pending_space = true;
        } else {
            if pending_space {
                out.push(b' ');
            }
            pending_space = false;
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relaxed(name: &str, value: &str) -> String {
        let mut out = Vec::new();
        relaxed_field(name.as_bytes(), value.as_bytes(), &mut out);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn header_fields_are_lower_cased_unfolded_and_single_spaced() {
        // RFC 6376 §3.4.6's example.
        assert_eq!(relaxed("A", " X"), "a:X");
        assert_eq!(relaxed("B ", " Y\t\r\n\tZ  "), "b:Y Z");
        assert_eq!(
            relaxed("List-Unsubscribe-Post", " a: b"),
            "list-unsubscribe-post:a: b"
        );
        assert_eq!(
            relaxed("Subject", "  =?utf-8?b?5Zyo?=\r\n =?utf-8?b?5Zyo?="),
            "subject:=?utf-8?b?5Zyo?= =?utf-8?b?5Zyo?="
        );
    }

    #[test]
    fn fields_keep_their_continuation_lines() {
        let message = b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n";
        let (header, body) = split(message);
        assert_eq!(body, b"body\r\n");
        let fields = fields(header);
        let names: Vec<&[u8]> = fields.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"From"[..], b"Subject", b"To"]);
        assert_eq!(fields[1].value, b" one\r\n two");
    }

    #[test]
    fn body_hash_ignores_trailing_space_and_empty_lines() {
        // RFC 6376 §3.4.6: " C \r\nD \t E\r\n\r\n\r\n" is " C\r\nD E\r\n".
        let hex = |d: Digest| d.as_ref().to_vec();
        assert_eq!(
            hex(relaxed_body_hash(b" C \r\nD \t E\r\n\r\n\r\n")),
            hex(digest::digest(&SHA256, b" C\r\nD E\r\n"))
        );
        assert_eq!(
            hex(relaxed_body_hash(b"")),
            hex(digest::digest(&SHA256, b""))
        );
        assert_eq!(
            hex(relaxed_body_hash(b"last line")),
            hex(digest::digest(&SHA256, b"last line\r\n"))
        );
    }
}
