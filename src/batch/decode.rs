//! Reading a batch from a message body and writing it back, and how a rejection is worded.

use std::collections::HashSet;

use super::field_error::FieldError;
use super::ids::UserId;
use super::{Batch, MAX_RECIPIENTS, VERSION, check_campaign_vars};
use crate::locale;

/// Characters of a parser's message kept in a rejection: serde quotes the offending value
/// (`invalid type: string "…"`), which may be megabytes, and the reason of a dead letter
/// travels in an AMQP header.
const REASON_MAX: usize = 300;

/// `message`, cut to [`REASON_MAX`] characters (the cut marked with `…`).
pub fn bounded(message: &str) -> String {
    match message.char_indices().nth(REASON_MAX) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}

/// serde_json's message, its quote of the offending value cut by [`bounded`], and the position.
pub fn json_error(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&position) {
        Some(what) => format!("{}{position}", bounded(what)),
        None => bounded(&message),
    }
}

/// A message body is not a batch this build can process.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or a field is missing or malformed.
    #[error("invalid batch: {}", json_error(.0))]
    Invalid(#[from] serde_json::Error),
    /// A version this build does not know.
    #[error("unknown batch version {0} (this build reads {VERSION})")]
    Version(u32),
    /// Campaign `vars` over [`CAMPAIGN_VARS_MAX`](super::CAMPAIGN_VARS_MAX).
    #[error("{0}")]
    Campaign(FieldError),
    /// More recipients than [`MAX_RECIPIENTS`].
    #[error("batch has {0} recipients; at most {MAX_RECIPIENTS} are allowed")]
    TooManyRecipients(usize),
    /// `channels` is present but empty: nothing could ever be sent.
    #[error("batch has an empty `channels` list")]
    NoChannels,
    /// A recipient fails [`Recipient::check`](super::Recipient::check).
    #[error("recipient {index} (user_id `{user_id}`): {error}")]
    Recipient {
        /// 0-based position in `recipients`.
        index: usize,
        /// Its user id.
        user_id: UserId,
        /// What is wrong.
        error: FieldError,
    },
}

impl Batch {
    /// Parses a message body; unknown versions, malformed bodies (serde_json stops nesting at
    /// 128 levels), campaign vars over [`CAMPAIGN_VARS_MAX`](super::CAMPAIGN_VARS_MAX), more than [`MAX_RECIPIENTS`] and
    /// recipients failing [`Recipient::check`](super::Recipient::check) are errors, and so is an empty `channels` list.
    /// A user listed twice (ids equal once trimmed, as `enqueue` compares them) keeps its first
    /// entry, and a channel listed twice counts once: each user is told once per channel. A
    /// locale tag never makes a recipient invalid: it is normalised, or dropped when it is not
    /// one (the recipient gets the default locale).
    pub fn decode(body: &[u8]) -> Result<Batch, DecodeError> {
        let mut batch: Batch = serde_json::from_slice(body)?;
        if batch.version != VERSION {
            return Err(DecodeError::Version(batch.version));
        }
        if batch.channels.is_empty() {
            return Err(DecodeError::NoChannels);
        }
        let mut channels = HashSet::new();
        batch.channels.retain(|c| channels.insert(*c));
        let mut users = HashSet::new();
        batch.recipients.retain(|r| users.insert(r.user_id.clone()));
        check_campaign_vars(&batch.vars).map_err(DecodeError::Campaign)?;
        if batch.recipients.len() > MAX_RECIPIENTS {
            return Err(DecodeError::TooManyRecipients(batch.recipients.len()));
        }
        for (index, recipient) in batch.recipients.iter_mut().enumerate() {
            recipient.check().map_err(|error| DecodeError::Recipient {
                index,
                user_id: recipient.user_id.clone(),
                error,
            })?;
            recipient.locale = recipient
                .locale
                .as_deref()
                .and_then(locale::normalise)
                .map(|l| l.to_string());
        }
        Ok(batch)
    }

    /// The JSON body to publish.
    pub fn encode(&self) -> Vec<u8> {
        // A Batch holds only strings, numbers and JSON values: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::EmailAddress;
    use crate::names::Channel;

    #[test]
    fn the_design_example_decodes() {
        let body = r#"{
          "version": 1,
          "campaign_id": "xiami-shutdown-2021",
          "batch_id": "xiami-shutdown-2021:000042",
          "template": "xiami-shutdown",
          "channels": ["email", "push"],
          "deadline": "2021-02-05T00:00:00+08:00",
          "vars": { "shutdown_date": "2021-02-05", "export_url": "https://example.com/export" },
          "recipients": [
            { "user_id": "u-1001", "email": "layla@Example.COM", "locale": "ar-EG", "name": "ليلى", "vars": {} }
          ]
        }"#;
        let batch = Batch::decode(body.as_bytes()).expect("decodes");
        assert_eq!(
            batch.recipients[0].email.as_ref().map(EmailAddress::domain),
            Some("example.com")
        );
        assert_eq!(Batch::decode(&batch.encode()).expect("round trip"), batch);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let cases: [&[u8]; 6] = [
            b"not json",
            br#"{"version": 2, "campaign_id": "c", "template": "t", "recipients": []}"#,
            br#"{"version": 1, "template": "t", "recipients": []}"#,
            br#"{"version": 1, "campaign_id": "c", "recipients": []}"#,
            br#"{"version": 1, "campaign_id": "c", "template": "t"}"#,
            br#"{"version": 1, "campaign_id": "c", "template": "t", "recipients": [{"user_id": "u", "email": "nope"}]}"#,
        ];
        for body in cases {
            assert!(
                Batch::decode(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_user_or_channel_listed_twice_is_kept_once_and_no_channels_is_an_error() {
        let body = br#"{"version": 1, "campaign_id": "c", "template": "t",
            "channels": ["push", "push", "email"],
            "recipients": [{"user_id": "u1", "email": "a@x.example"}, {"user_id": " u1 "},
                           {"user_id": "u2"}]}"#;
        let batch = Batch::decode(body).expect("decodes");
        assert_eq!(batch.channels, [Channel::Push, Channel::Email]);
        let users: Vec<&str> = batch
            .recipients
            .iter()
            .map(|r| r.user_id.as_str())
            .collect();
        assert_eq!(users, ["u1", "u2"]);
        assert!(
            batch.recipients[0].email.is_some(),
            "the first entry is kept"
        );
        let none = br#"{"version": 1, "campaign_id": "c", "template": "t", "channels": [],
            "recipients": [{"user_id": "u1"}]}"#;
        assert!(matches!(Batch::decode(none), Err(DecodeError::NoChannels)));
    }

    #[test]
    fn a_locale_in_a_batch_is_normalised_or_dropped_never_a_reason_to_refuse_it() {
        let long = "x".repeat(10_240);
        let locales = [
            "zh_TW",
            "en_US.UTF-8",
            "yue-Hant-HK",
            "not a tag!",
            long.as_str(),
        ];
        let recipients: Vec<String> = locales
            .iter()
            .enumerate()
            .map(|(i, l)| format!(r#"{{"user_id": "u-{i}", "locale": "{l}"}}"#))
            .collect();
        let body = format!(
            r#"{{"version": 1, "campaign_id": "c", "template": "t", "recipients": [{}]}}"#,
            recipients.join(",")
        );
        let batch = Batch::decode(body.as_bytes()).expect("decodes");
        let got: Vec<Option<&str>> = batch
            .recipients
            .iter()
            .map(|r| r.locale.as_deref())
            .collect();
        assert_eq!(
            got,
            [
                Some("zh-TW"),
                Some("en-US"),
                Some("yue-Hant-HK"),
                None,
                None
            ]
        );
    }

    #[test]
    fn bidi_controls_in_a_name_or_recipient_variable_refuse_the_batch() {
        let body = |recipient: &str| {
            format!(
                r#"{{"version": 1, "campaign_id": "c", "batch_id": "c:1", "template": "t",
                    "channels": ["email"], "vars": {{}}, "recipients": [{recipient}]}}"#
            )
        };
        for (recipient, field) in [
            (r#"{"user_id": "u", "name": "DJ \u202eK."}"#, "name"),
            (r#"{"user_id": "u", "name": "a\u2067b"}"#, "name"),
            (
                r#"{"user_id": "u", "vars": {"team": ["x", "\u202ay"]}}"#,
                "vars.team",
            ),
        ] {
            let err = Batch::decode(body(recipient).as_bytes()).expect_err(recipient);
            let text = err.to_string();
            assert!(
                text.contains(field) && text.contains("bidi control"),
                "{text}"
            );
            assert!(
                !text.contains(['\u{202e}', '\u{2067}', '\u{202a}']),
                "escaped: {text}"
            );
        }
        // Marks (RLM, LRM) are ordinary text, and mixed scripts are fine.
        let ok = r#"{"user_id": "u", "name": "DJ K. \u200fليلى"}"#;
        assert!(Batch::decode(body(ok).as_bytes()).is_ok());
    }
}
