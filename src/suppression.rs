//! What comes back from recipients and their mail systems — hard and soft bounces, complaints,
//! unsubscribes — and the reasons an address is suppressed: nouns shared by the feedback
//! service that reads them, the ledger that keeps them and the worker that obeys them.

use std::fmt;
use std::str::FromStr;

use crate::batch::{CampaignId, EmailAddress, UserId};
use crate::token::Token;

/// Why an address is (or may become) suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A permanent failure (DSN 5.x.x, a provider's permanent bounce): suppressed at once.
    HardBounce,
    /// A temporary failure reported after acceptance (DSN 4.x.x): suppressed after
    /// `feedback.soft_bounces_to_suppress` within `feedback.soft_bounce_window_ms`.
    SoftBounce,
    /// The recipient reported the mail as spam (ARF, provider complaint): suppressed at once.
    Complaint,
    /// The recipient asked for no more mail (one-click, mailto, link): suppressed in the
    /// configured scope; templates with `legal_notice = true` still send.
    Unsubscribe,
    /// An operator's `sunset suppress add` or `import`.
    Manual,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 5] = [
        Reason::HardBounce,
        Reason::SoftBounce,
        Reason::Complaint,
        Reason::Unsubscribe,
        Reason::Manual,
    ];

    /// The word stored and shown: `hard-bounce`, `soft-bounce`, `complaint`, `unsubscribe`,
    /// `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard-bounce",
            Reason::SoftBounce => "soft-bounce",
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Manual => "manual",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Not one of [`Reason`]'s words.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown reason `{0}` (expected hard-bounce, soft-bounce, complaint, unsubscribe or manual)"
)]
pub struct UnknownReason(String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s.trim())
            .ok_or_else(|| UnknownReason(s.trim().to_string()))
    }
}

/// Where a report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A delivery status notification (RFC 3464) to the bounce domain.
    Dsn,
    /// An abuse feedback report (RFC 5965) to the bounce domain.
    Arf,
    /// `POST /u/<token>` (RFC 8058), `GET` confirmation or a mail to `u-<token>@…`.
    Unsubscribe,
    /// Amazon SES through SNS.
    Ses,
    /// SendGrid's event webhook.
    SendGrid,
    /// Postmark's bounce and spam webhooks.
    Postmark,
    /// `sunset suppress`.
    Operator,
}

impl Source {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dsn => "dsn",
            Source::Arf => "arf",
            Source::Unsubscribe => "unsubscribe",
            Source::Ses => "ses",
            Source::SendGrid => "sendgrid",
            Source::Postmark => "postmark",
            Source::Operator => "operator",
        }
    }
}

/// Whom a report is about, in the order it is best trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum About {
    /// The VERP or unsubscribe token.
    Token(Token),
    /// The original `Message-ID` (`<campaign.user@domain>`), when no token survived.
    Message {
        /// The campaign.
        campaign: CampaignId,
        /// The user.
        user: UserId,
    },
    /// Only an address (a provider's webhook, an operator).
    Address(EmailAddress),
}

/// One bounce, complaint or unsubscribe, as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub reason: Reason,
    /// Whom it is about.
    pub about: About,
    /// Where it came from.
    pub source: Source,
    /// The status code and diagnostic (`5.1.1 user unknown`), without addresses; may be empty.
    pub detail: String,
}
