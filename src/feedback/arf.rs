//! Abuse feedback reports (RFC 5965): a recipient marked a message as spam.

use mail_parser::{Message, MimeHeaders as _};

use super::report_fields;
use crate::batch::EmailAddress;
use crate::token::{BOUNCE_PREFIX, Token};

/// What a feedback report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// `Feedback-Type` in lower case: `abuse`, `fraud`, `virus`, `other`.
    pub feedback_type: String,
    /// The token of a VERP `Original-Mail-From`.
    pub token: Option<Token>,
    /// `Original-Rcpt-To`, when the reporter shows it.
    pub recipient: Option<EmailAddress>,
}

/// The complaint a message reports; `None` when it is not a feedback report, or one that is no
/// complaint (`not-spam`, `auth-failure`).
pub fn complaint(message: &Message<'_>) -> Option<Complaint> {
    let report = message.parts.iter().find(|part| {
        part.content_type().is_some_and(|t| {
            t.ctype().eq_ignore_ascii_case("message")
                && t.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("feedback-report"))
        })
    })?;
    let text = String::from_utf8_lossy(report.contents());
    let fields = report_fields::blocks(&text).into_iter().next()?;
    let feedback_type = fields.get("Feedback-Type")?.to_ascii_lowercase();
    if !matches!(
        feedback_type.as_str(),
        "abuse" | "fraud" | "virus" | "other"
    ) {
        return None;
    }
    let token = fields
        .get("Original-Mail-From")
        .and_then(report_fields::typed_address)
        .and_then(|address| {
            let (local, _) = address.as_str().split_once('@')?;
            Token::from_local_part(local, BOUNCE_PREFIX)
        });
    Some(Complaint {
        feedback_type,
        token,
        recipient: fields
            .get("Original-Rcpt-To")
            .and_then(report_fields::typed_address),
    })
}
