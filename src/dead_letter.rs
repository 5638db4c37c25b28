//! Why a send was dead-lettered: a noun the worker, the log events and `sunset dlq` share.

/// Why a recipient × channel was dead-lettered, as a small fixed set (the `reason` label of
/// `sunset_dead_letters_total`; the text itself is in the dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// The provider refused it for good (SMTP 5xx, HTTP 4xx).
    Rejected,
    /// The notice did not render (template or variable error).
    Unrenderable,
    /// Transient failures until `worker.max_attempts`.
    Exhausted,
    /// The batch's deadline passed first.
    Deadline,
    /// Held back (paused, ledger away) with no delay queue to wait on.
    HeldBack,
    /// The message was not a batch at all.
    Undecodable,
    /// Handed over with no answer; replayed only when asked (`dlq replay --include-unknown`).
    Unknown,
    /// The ledger refused the batch for a reason waiting does not fix (a constraint, bad data).
    LedgerRefused,
}

impl DeadLetterKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Unrenderable => "unrenderable",
            DeadLetterKind::Exhausted => "exhausted",
            DeadLetterKind::Deadline => "deadline",
            DeadLetterKind::HeldBack => "held_back",
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::Unknown => "unknown",
            DeadLetterKind::LedgerRefused => "ledger_refused",
        }
    }
}
