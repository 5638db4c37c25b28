//! What can go wrong with the relay, and the one place it becomes an `Outcome`: classification,
//! throttling wording, the wait a reply asks for, and reasons cut to one short line.

use std::io;
use std::time::Duration;

use crate::channel::{Outcome, RETRY_AFTER_MAX};
use crate::render::one_line;

/// What went wrong on the way to the relay or in its reply.
#[derive(Debug, thiserror::Error)]
pub(super) enum SmtpFailure {
    /// The TCP connection could not be made.
    #[error("cannot connect to the SMTP relay: {0}")]
    Connect(#[source] io::Error),
    /// Greeting, `EHLO`, TLS, `STARTTLS` or `AUTH` failed: the relay, not the recipient.
    #[error("SMTP session failed: {0}")]
    Session(#[source] lettre::transport::smtp::Error),
    /// `MAIL`, `RCPT` or `DATA` failed, or the relay refused the message: about this message.
    #[error("SMTP relay refused the message: {0}")]
    Transaction(#[source] lettre::transport::smtp::Error),
    /// The relay does not offer an extension this message needs; nothing was sent.
    #[error("the SMTP relay does not offer {0}")]
    Unsupported(&'static str),
    /// No session in time: connect, greeting, TLS and `AUTH` took longer than the timeout.
    #[error("no SMTP session with the relay within {} ms", .0.as_millis())]
    NoSession(Duration),
    /// No answer in time, before the message was handed over.
    #[error("no answer from the SMTP relay within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The final `.` was written and no reply came in time: the relay may have the message.
    #[error(
        "the message was handed over, and no reply to its final \".\" came within {} ms",
        .0.as_millis()
    )]
    FinalReplyTimedOut(Duration),
    /// The final `.` was written and the connection broke before a reply: the relay may have
    /// the message.
    #[error("the message was handed over, and the connection broke before a reply: {0}")]
    FinalReplyLost(#[source] lettre::transport::smtp::Error),
}

/// Longest reason kept from a reply, in characters (reasons end up in dead letters).
const REASON_MAX: usize = 300;

/// The one place an SMTP failure becomes an outcome: a 5xx reply to the message is permanent
/// for that recipient; a 4xx reply, a failed session with a reply (even 5xx: the relay or our
/// credentials, not the recipient), errors and timeouts on an open session are transient — as
/// long as the message was not handed over. A relay that does not answer at all (connect
/// refused or timed out, TLS handshake failed, no greeting, no session in time) is
/// unreachable. No reply to the final `.` (a timeout, a broken connection) is unknown: the
/// relay may have taken the message.
///
/// A 4xx reply to the message that says we are too fast (see [`throttling`]) is marked
/// `throttled`, so the recipient's domain slows down. A failed session is never marked: its
/// greeting, `EHLO`, TLS or `AUTH` reply comes from the relay, whatever the recipient's domain.
pub(super) fn classify(failure: &SmtpFailure) -> Outcome {
    let reply = |error: &lettre::transport::smtp::Error| {
        (error.status().map(u16::from), source_text(error))
    };
    match failure {
        SmtpFailure::Transaction(error) | SmtpFailure::Session(error) if error.is_transient() => {
            let (code, text) = reply(error);
            let about_message = matches!(failure, SmtpFailure::Transaction(_));
            Outcome::Transient {
                reason: short(&format!("{} {text}", code_text(code))),
                retry_after: retry_after(&text),
                throttled: about_message && code.is_some_and(|code| throttling(code, &text)),
            }
        }
        SmtpFailure::Transaction(error) if error.is_permanent() => {
            let (code, text) = reply(error);
            Outcome::permanent(short(&format!("{} {text}", code_text(code))))
        }
        SmtpFailure::Unsupported(_) => Outcome::permanent(short(&failure.to_string())),
        SmtpFailure::Connect(_) | SmtpFailure::NoSession(_) => {
            Outcome::unreachable(short(&failure.to_string()))
        }
        SmtpFailure::Session(error) if error.status().is_none() => {
            Outcome::unreachable(short(&format!("{failure}: {}", source_text(error))))
        }
        SmtpFailure::FinalReplyTimedOut(_) | SmtpFailure::FinalReplyLost(_) => {
            Outcome::unknown(short(&failure.to_string()))
        }
        _ => Outcome::transient(short(&failure.to_string())),
    }
}

/// What lies under a lettre error ("Connection refused", "invalid peer certificate").
fn source_text(error: &lettre::transport::smtp::Error) -> String {
    std::error::Error::source(error).map_or(String::new(), |s| s.to_string())
}

/// A reply code as its three digits, or nothing.
fn code_text(code: Option<u16>) -> String {
    code.map_or(String::new(), |code| code.to_string())
}

/// Whether a 4xx reply asks us to send more slowly: 421, 451 or 452 with rate wording
/// ([`RATE_WORDING`], or a NetEase rate code), or a 421 (the relay closes the connection) that
/// says "try again later". A 451 "try again later" is one recipient's deferral (greylisting,
/// a busy mailbox): retried, it says nothing about our pace. Greylisting, full mailboxes,
/// storage and size limits and "too many recipients" (per message, not per second) are not
/// throttling, and neither is a bare "421 service not available, closing transmission channel".
fn throttling(code: u16, text: &str) -> bool {
    if !matches!(code, 421 | 451 | 452) {
        return false;
    }
    let text = text.to_ascii_lowercase();
    if NETEASE_RATE_CODES.iter().any(|code| text.contains(code)) {
        return true;
    }
    // Words of letters and digits, matched as whole words or word prefixes, so "rate" does not
    // match "separate" nor "limit" "unlimited".
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    let has = |phrase: &str| {
        let phrase: Vec<&str> = phrase.split(' ').collect();
        let last = phrase.len() - 1;
        words.windows(phrase.len()).any(|window| {
            window[..last] == phrase[..last] && window[last].starts_with(phrase[last])
        })
    };
    let connection_wording = code == 421 && CONNECTION_WORDING.iter().any(|phrase| has(phrase));
    !NOT_RATE_WORDING.iter().any(|phrase| has(phrase))
        && (connection_wording || RATE_WORDING.iter().any(|phrase| has(phrase)))
}

/// Wording of a reply that says we send too fast, as lower-case words; the last word matches
/// as a prefix ("throttl" matches "throttled", "rate" "ratelimited").
const RATE_WORDING: &[&str] = &[
    "too many",
    "too fast",
    "slow down",
    "server busy",
    "rate",
    "throttl",
    "limit",
    "exceeded",
    "frequency",
    "volume",
];

/// Wording that, in a 421 (a refusal of the whole connection), asks us to come back later.
const CONNECTION_WORDING: &[&str] = &["try again later", "try later"];

/// Wording that makes a reply about something other than our pace, even with rate wording:
/// greylisting ("try again later" is its usual text), the recipient's mailbox, sizes.
const NOT_RATE_WORDING: &[&str] = &[
    "greylist",
    "graylist",
    "mailbox full",
    "over quota",
    "storage",
    "size",
    "too many recipients",
];

/// NetEase (163.com, 126.com) deferral codes for sending too much or too fast: `DT:SPM`
/// (deferred as spam-like volume), `HL:IFL`/`HL:ICC` (too many mails or connections from the
/// IP), `MI:SFQ`, `RP:QRC`, `RP:TRC` (sender or recipient counts over the limit).
const NETEASE_RATE_CODES: &[&str] = &["dt:spm", "hl:ifl", "hl:icc", "mi:sfq", "rp:qrc", "rp:trc"];

/// One line, at most [`REASON_MAX`] characters.
fn short(reason: &str) -> String {
    let line = one_line(reason);
    match line.char_indices().nth(REASON_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The wait a 4xx reply text asks for: "try again in 120 seconds", "retry after 5 min",
/// "greylisted for 300s"; NetEase's `DT:SPM` (163.com spam deferral) means 2 minutes.
fn retry_after(text: &str) -> Option<Duration> {
    let text = text.to_ascii_lowercase();
    if text.contains("dt:spm") {
        return Some(Duration::from_secs(120));
    }
    // Words of letters or digits, with "120s" split into "120", "s".
    let mut words = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, unit) = word.split_at(digits);
        words.extend([number, unit].into_iter().filter(|w| !w.is_empty()));
    }
    words.windows(3).find_map(|w| {
        if !matches!(w[0], "in" | "after" | "for" | "wait") {
            return None;
        }
        let count: u64 = w[1].parse().ok()?;
        let unit = match w[2] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            _ => return None,
        };
        Some(Duration::from_secs(count.saturating_mul(unit)).min(RETRY_AFTER_MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn retry_after_reads_the_wait_a_reply_asks_for() {
        let cases = [
            ("4.7.1 Try again in 120 seconds", secs(120)),
            ("Greylisted, please retry after 5 minutes", secs(300)),
            ("Greylisted for 300s", secs(300)),
            ("too many connections, wait 2 min", secs(120)),
            (
                "DT:SPM 163 smtp14,EsCowAA; please try again later",
                secs(120),
            ),
            ("try again in 1 hour", secs(3600)),
            ("try again in 99999999 hours", Some(RETRY_AFTER_MAX)),
            ("4.7.0 Try again later, closing connection.", None),
            ("Mailbox busy, 3 messages queued", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(retry_after(text), expected, "{text:?}");
        }
    }

    #[test]
    fn throttling_is_a_421_451_or_452_that_says_we_are_too_fast() {
        let throttling_replies = [
            (421, "4.7.0 Too many connections from your IP, slow down"),
            (421, "4.7.0 Try again later, closing connection. (EHLO)"),
            (
                421,
                "4.7.28 Our system has detected an unusual rate of unsolicited mail",
            ),
            (421, "Ip frequency limited, please try later"),
            (421, "HL:IFL 该IP短期内发送了大量信件，超过了网易的限制"),
            (451, "DT:SPM 163 smtp14,EsCowAA; please try again"),
            (
                451,
                "4.7.500 Server busy. Please try again later from [192.0.2.1]",
            ),
            (451, "4.7.1 Sending rate-limited, throttling in effect"),
            (451, "Too fast: message limit per minute exceeded"),
            (452, "4.7.0 Ratelimit exceeded for sender domain"),
            (
                421,
                "[TSS04] Messages temporarily deferred due to unexpected volume",
            ),
            (451, "4.3.2 Daily sending limit reached"),
        ];
        for (code, text) in throttling_replies {
            assert!(throttling(code, text), "{code} {text}");
        }
        let other_replies = [
            (
                421,
                "4.3.0 Service not available, closing transmission channel",
            ),
            (421, "4.4.2 Connection dropped due to timeout"),
            (451, "4.7.1 Try again later"),
            (451, "4.3.0 Temporary deferral, please try later"),
            (451, "4.7.1 Greylisted, please try again in 120 seconds"),
            (451, "4.7.1 Greylisting in action, please try again later"),
            (
                451,
                "4.3.0 Requested action aborted: local error in processing",
            ),
            (452, "4.5.3 Too many recipients"),
            (
                452,
                "4.2.2 The email account that you tried to reach is over quota",
            ),
            (452, "4.3.1 Insufficient system storage"),
            (452, "4.3.4 Message size exceeds fixed limit"),
            (
                451,
                "4.4.0 Temporary failure: the separate relay is unlimited",
            ),
            (
                450,
                "4.2.1 The user is receiving mail at a rate that prevents delivery",
            ),
            (550, "5.7.1 Too many messages, rejected"),
            (421, ""),
        ];
        for (code, text) in other_replies {
            assert!(!throttling(code, text), "{code} {text}");
        }
    }
}
