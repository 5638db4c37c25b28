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

/// The reports of the message `raw`, sent to the local parts `recipients` of the bounce domain;
/// `message_domain` is the domain of sunset's `Message-ID`s (`email.from`'s).
pub fn reports(
    raw: &[u8],
    recipients: &[String],
    message_domain: &str,
) -> Result<Vec<Report>, Ignored> {
    let mut reports: Vec<Report> = recipients
        .iter()
        .filter_map(|local| Token::from_local_part(local, UNSUBSCRIBE_PREFIX))
        .map(|token| Report {
            reason: Reason::Unsubscribe,
            about: About::Token(token),
            source: Source::Unsubscribe,
            detail: "mailto".into(),
        })
        .collect();
    let to_others = recipients
        .iter()
        .any(|local| Token::from_local_part(local, UNSUBSCRIBE_PREFIX).is_none());
    if !to_others {
        return Ok(reports);
    }
    match returned(raw, recipients, message_domain) {
        Ok(returned) => reports.extend(returned),
        Err(_) if !reports.is_empty() => {}
        Err(ignored) => return Err(ignored),
    }
    Ok(reports)
}

/// The bounces or the complaint of a DSN or ARF report.
fn returned(
    raw: &[u8],
    recipients: &[String],
    message_domain: &str,
) -> Result<Vec<Report>, Ignored> {
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
        let about = envelope_token
            .or(original.token)
            .map(About::Token)
            .or(message_id);
        return match about {
            // One email goes to one recipient: its first (hardest) failure is the one.
            Some(about) => Ok(vec![Report {
                reason: first.reason,
                about,
                source: Source::Dsn,
                detail: first.detail.clone(),
            }]),
            None => {
                let reports: Vec<Report> = failures
                    .into_iter()
                    .filter_map(|failure| {
                        Some(Report {
                            reason: failure.reason,
                            about: About::Address(failure.recipient?),
                            source: Source::Dsn,
                            detail: failure.detail,
                        })
                    })
                    .collect();
                if reports.is_empty() {
                    Err(Ignored::NoRecipient)
                } else {
                    Ok(reports)
                }
            }
        };
    }
    if let Some(complaint) = arf::complaint(&message) {
        let about = envelope_token
            .or(complaint.token)
            .or(original.token)
            .map(About::Token)
            .or(message_id)
            .or(complaint.recipient.map(About::Address))
            .ok_or(Ignored::NoRecipient)?;
        return Ok(vec![Report {
            reason: Reason::Complaint,
            about,
            source: Source::Arf,
            detail: complaint.feedback_type,
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
