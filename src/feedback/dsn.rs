//! Delivery status notifications (RFC 3464): which recipients of a returned message failed for
//! good (`Action: failed`, `Status: 5.x.x`) and which only for now (`4.x.x`, `Action: delayed`).

use mail_parser::{Message, MimeHeaders as _};

use super::report_fields::{self, Fields};
use crate::batch::EmailAddress;
use crate::suppression::Reason;

/// One recipient's failure in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// [`Reason::HardBounce`] or [`Reason::SoftBounce`].
    pub reason: Reason,
    /// The recipient as first addressed (`Original-Recipient`), else `Final-Recipient`.
    pub recipient: Option<EmailAddress>,
    /// Status code and diagnostic, without addresses.
    pub detail: String,
}

/// The failures a message reports, hard ones first; `None` when it is not a DSN (no
/// `message/delivery-status` part). A DSN of deliveries only gives an empty list.
pub fn failures(message: &Message<'_>) -> Option<Vec<Failure>> {
    let status = message.parts.iter().find(|part| {
        part.content_type().is_some_and(|t| {
            t.ctype().eq_ignore_ascii_case("message")
                && t.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(status.contents());
    let mut failures: Vec<Failure> = report_fields::blocks(&text)
        .iter()
        // The first block holds the per-message fields; recipients' blocks name a recipient.
        .filter(|block| block.get("Final-Recipient").is_some())
        .filter_map(failure)
        .collect();
    failures.sort_by_key(|failure| failure.reason != Reason::HardBounce);
    Some(failures)
}

/// A recipient block's failure; `None` for a delivery, relay or expansion.
fn failure(block: &Fields) -> Option<Failure> {
    let action = block.get("Action").unwrap_or_default().to_ascii_lowercase();
    let status = block.get("Status").unwrap_or_default();
    let status = status.split_whitespace().next().unwrap_or_default();
    let reason = match (action.as_str(), status.chars().next()) {
        ("failed", Some('4')) | ("delayed", _) => Reason::SoftBounce,
        ("failed", _) => Reason::HardBounce,
        _ => return None,
    };
    let diagnostic = block
        .get("Diagnostic-Code")
        .map(|code| code.split_once(';').map_or(code, |(_, text)| text))
        .unwrap_or_default();
    let recipient = block
        .get("Original-Recipient")
        .and_then(report_fields::typed_address)
        .or_else(|| {
            block
                .get("Final-Recipient")
                .and_then(report_fields::typed_address)
        });
    Some(Failure {
        reason,
        recipient,
        detail: report_fields::without_addresses(&format!("{status} {diagnostic}")),
    })
}
