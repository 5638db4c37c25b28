//! A field of the wire format or an audience row that is not acceptable, and how its value is quoted.

/// Characters of a rejected value quoted in its error: enough to find it, never megabytes.
const QUOTED_MAX: usize = 64;

/// `value` as an error quotes it: control characters escaped, at most [`QUOTED_MAX`]
/// characters, the cut marked with `…`.
pub(super) fn quoted(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(QUOTED_MAX)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(QUOTED_MAX).is_some() {
        out.push('…');
    }
    out
}

/// A field of the wire format or an audience row is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// `campaign_id` is empty or has characters outside `A-Z a-z 0-9 . _ : -`.
    #[error("campaign id `{0}` must be 1-128 of A-Z a-z 0-9 . _ : -")]
    CampaignId(String),
    /// `user_id` is empty, too long, or holds control characters.
    #[error("user_id `{0}` must be 1-256 characters without control characters")]
    UserId(String),
    /// Not an email address (`local@domain`), or longer than [`EMAIL_MAX`](super::EMAIL_MAX).
    #[error("`{0}` is not an email address")]
    Email(String),
    /// A field is longer than its limit (the value is not quoted: it may be megabytes).
    #[error("{field} is {bytes} bytes; at most {max} are allowed")]
    TooLong {
        /// `name`, `locale`, `vars`, …
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A display name holds CR, LF, NUL or another control character.
    #[error("name `{0}` holds control characters (CR, LF, NUL, tab…)")]
    NameControl(String),
    /// A display name or a recipient variable holds bidi embeddings, overrides or isolates:
    /// refused rather than stripped, since no real name needs them and a notice must not go out
    /// saying something other than what the product stored.
    #[error(
        "{field} `{value}` holds bidi control characters (U+202A–202E, U+2066–2069), which would \
         reorder the notice's text around it"
    )]
    BidiControl {
        /// `name` or `vars.<key>`.
        field: String,
        /// The value, quoted with the controls escaped.
        value: String,
    },
}
