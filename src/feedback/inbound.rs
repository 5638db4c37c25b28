//! What one message to the bounce domain reports: a mail to `u-<token>@…` unsubscribes; a DSN
//! bounces and an ARF report complains about the recipient its VERP token, else its original
//! `Message-ID`, else the address it names points to; anything else is ignored.

use mail_parser::{MessageParser, MimeHeaders as _};

use super::original::Original;
use super::{arf, dsn};
use crate::suppression::{About, Reason, Report, Source};
use crate::token::{BOUNCE_PREFIX, Token, UNSUBSCRIBE_PREFIX};

/// Why a received message reports nothing; the label counts it in a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not MIME sunset can read.
    Unparsable,
    /// Neither a DSN nor a complaint (an auto-reply, a person writing back).
    NotAReport,
    /// A DSN of deliveries or delays only once settled, or a feedback report that is no
    /// complaint.
    NoFailure,
    /// A report naming no recipient sunset could find.
    NoRecipient,
}

impl Ignored {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Unparsable => "unparsable",
            Ignored::NotAReport => "not-a-report",
            Ignored::NoFailure => "no-failure",
            Ignored::NoRecipient => "no-recipient",
        }
    }
}

/// One event a message reports, with every way it names its recipient, best trusted first: the
/// ledger may not know a token (the key changed since the send) and still know the Message-ID
/// or the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What happened.
    pub reason: Reason,
    /// Where it came from.
    pub source: Source,
    /// Status and diagnostic, without addresses.
    pub detail: String,
    /// Whom it is about, best first; never empty.
    pub candidates: Vec<About>,
}

impl Finding {
    /// The report for each candidate, best first.
    pub fn reports(&self) -> Vec<Report> {
        self.candidates
            .iter()
            .map(|about| Report {
                reason: self.reason,
                about: about.clone(),
                source: self.source,
                detail: self.detail.clone(),
            })
            .collect()
    }
}

/// The findings of the message `raw`, sent to the local parts `recipients` of the bounce
/// domain; `message_domain` is the domain of sunset's `Message-ID`s (`email.from`'s).
pub fn findings(
    raw: &[u8],
    recipients: &[String],
    message_domain: &str,
) -> Result<Vec<Finding>, Ignored> {
    let mut findings: Vec<Finding> = recipients
        .iter()
        .filter_map(|local| Token::from_local_part(local, UNSUBSCRIBE_PREFIX))
        .map(|token| Finding {
            reason: Reason::Unsubscribe,
            source: Source::Unsubscribe,
            detail: "mailto".into(),
            candidates: vec![About::Token(token)],
        })
        .collect();
    let to_others = recipients
        .iter()
        .any(|local| Token::from_local_part(local, UNSUBSCRIBE_PREFIX).is_none());
    if !to_others {
        return Ok(findings);
    }
    match returned(raw, recipients, message_domain) {
        Ok(returned) => findings.extend(returned),
        Err(_) if !findings.is_empty() => {}
        Err(ignored) => return Err(ignored),
    }
    Ok(findings)
}

/// The bounces or the complaint of a DSN or ARF report.
fn returned(
    raw: &[u8],
    recipients: &[String],
    message_domain: &str,
) -> Result<Vec<Finding>, Ignored> {
    let message = MessageParser::new().parse(raw).ok_or(Ignored::Unparsable)?;
    let envelope_token = recipients
        .iter()
        .find_map(|local| Token::from_local_part(local, BOUNCE_PREFIX));
    let original = Original::in_report(&message, message_domain);
    let message_id = original
        .message
        .map(|(campaign, user)| About::Message { campaign, user });
    if let Some(failures) = dsn::failures(&message) {
        let first = failures.first().ok_or(Ignored::NoFailure)?;
        let mut of_the_message: Vec<About> = [envelope_token, original.token]
            .into_iter()
            .flatten()
            .map(About::Token)
            .chain(message_id)
            .collect();
        of_the_message.dedup();
        if !of_the_message.is_empty() {
            // One email goes to one recipient: its first (hardest) failure is the one.
            return Ok(vec![Finding {
                reason: first.reason,
                source: Source::Dsn,
                detail: first.detail.clone(),
                candidates: of_the_message
                    .into_iter()
                    .chain(first.recipient.clone().map(About::Address))
                    .collect(),
            }]);
        }
        let findings: Vec<Finding> = failures
            .into_iter()
            .filter_map(|failure| {
                Some(Finding {
                    reason: failure.reason,
                    source: Source::Dsn,
                    detail: failure.detail,
                    candidates: vec![About::Address(failure.recipient?)],
                })
            })
            .collect();
        return if findings.is_empty() {
            Err(Ignored::NoRecipient)
        } else {
            Ok(findings)
        };
    }
    if let Some(complaint) = arf::complaint(&message) {
        let mut candidates: Vec<About> = [envelope_token, complaint.token, original.token]
            .into_iter()
            .flatten()
            .map(About::Token)
            .chain(message_id)
            .chain(complaint.recipient.map(About::Address))
            .collect();
        candidates.dedup();
        if candidates.is_empty() {
            return Err(Ignored::NoRecipient);
        }
        return Ok(vec![Finding {
            reason: Reason::Complaint,
            source: Source::Arf,
            detail: complaint.feedback_type,
            candidates,
        }]);
    }
    if message.parts.iter().any(|part| {
        part.content_type().is_some_and(|t| {
            t.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("feedback-report"))
        })
    }) {
        return Err(Ignored::NoFailure);
    }
    Err(Ignored::NotAReport)
}
