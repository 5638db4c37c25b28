//! Delivery channels: what a send needs (`Delivery`), what it returns (`Outcome`), and the
//! `Sender` both transports implement.

pub mod email;
mod http;
pub mod push;

use std::future::Future;
use std::time::Duration;

use crate::batch::{CampaignId, Recipient};
pub use crate::names::{Channel, UnknownChannel};
use crate::render::Notice;

/// The longest wait taken from a peer (`Retry-After`, "try again in N s"): anything longer is
/// a misparse or not worth obeying.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// One notice to one recipient by one channel.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The campaign: `Message-ID`, `Idempotency-Key`, `X-Sunset-Campaign`.
    pub campaign_id: &'a CampaignId,
    /// Who.
    pub recipient: &'a Recipient,
    /// What, rendered for the channel (`notice.email` or `notice.push` is present).
    pub notice: &'a Notice,
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the relay or gateway (or written to the outbox).
    Delivered,
    /// Worth trying again later: SMTP 4xx, HTTP 408/429/5xx, and errors and timeouts on an
    /// open connection before the message was handed over (after it: [`Outcome::Unknown`]).
    Transient {
        /// Short reason, for logs and dead letters.
        reason: String,
        /// The least wait the peer asked for (`Retry-After`, "try again in N seconds").
        retry_after: Option<Duration>,
        /// The peer said we are too fast (SMTP 421/451/452 with rate wording, HTTP 429): the
        /// domain's (or gateway's) rate should come down.
        throttled: bool,
    },
    /// The relay or gateway did not answer at all: the connection was refused or timed out,
    /// the TLS handshake failed, or no greeting came. Nothing was handed over, and it says
    /// nothing about the recipient; the worker holds such sends (its breaker) rather than
    /// spending attempts on them.
    Unreachable {
        /// Short reason naming the transport, for logs.
        reason: String,
    },
    /// Will not succeed as is: SMTP 5xx for this recipient, other HTTP 4xx, render failures.
    Permanent {
        /// Short reason, for logs and dead letters.
        reason: String,
    },
    /// Handed over, and no answer came back: neither delivered nor failed. For email, the
    /// final `.` of `DATA` was written and its reply did not arrive (timeout or connection
    /// loss): the relay may have queued the message, so sending again risks a duplicate.
    /// For push, the whole request was written and no status came back (timeout or connection
    /// reset while awaiting it); the worker may send push again, since the `Idempotency-Key`
    /// header makes that safe with a gateway that honours it. Whether to retry is the worker's
    /// decision, not the channel's.
    Unknown {
        /// Short reason, for logs and dead letters.
        reason: String,
    },
}

impl Outcome {
    /// A transient outcome with no requested delay.
    pub fn transient(reason: impl Into<String>) -> Outcome {
        Outcome::Transient {
            reason: reason.into(),
            retry_after: None,
            throttled: false,
        }
    }

    /// A permanent outcome.
    pub fn permanent(reason: impl Into<String>) -> Outcome {
        Outcome::Permanent {
            reason: reason.into(),
        }
    }

    /// An unreachable outcome: the transport did not answer.
    pub fn unreachable(reason: impl Into<String>) -> Outcome {
        Outcome::Unreachable {
            reason: reason.into(),
        }
    }

    /// An unknown outcome: handed over, no answer.
    pub fn unknown(reason: impl Into<String>) -> Outcome {
        Outcome::Unknown {
            reason: reason.into(),
        }
    }
}

/// Sends one delivery by one channel. Implementations classify every failure into an
/// [`Outcome`] rather than returning errors: a send never aborts a batch.
pub trait Sender: Send + Sync {
    /// Sends, waiting at most the channel's configured timeout.
    fn send(&self, delivery: Delivery<'_>) -> impl Future<Output = Outcome> + Send;
}
