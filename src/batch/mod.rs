//! The wire format: a `Batch` of recipients as published on the work queue, and its parsed fields.

use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bidi;
use crate::locale;
use crate::names::{Channel, TemplateName, Vars};

/// The only wire-format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Most recipients in one batch. A batch is sent within one delivery of the work queue, which
/// RabbitMQ takes back after `consumer_timeout` (30 min by default): 10,000 emails to one
/// domain at 50/s take 200 s; 100,000 would take 33 min and be redelivered forever.
pub const MAX_RECIPIENTS: usize = 10_000;

/// Longest display name, in bytes (UTF-8): far above any real name (341 CJK characters), far
/// below a name that would bloat every email it is written into.
pub const NAME_MAX: usize = 1024;

/// Longest email address, in bytes (RFC 5321 §4.5.3.1: a 256-byte path, angle brackets included).
pub const EMAIL_MAX: usize = 254;

/// Largest per-recipient `vars`, in bytes of JSON: they are rendered into every part.
pub const RECIPIENT_VARS_MAX: usize = 4096;

/// Largest campaign `vars`, in bytes of JSON: a batch carries them, and every notice may
/// render them (a few URLs and dates in practice).
pub const CAMPAIGN_VARS_MAX: usize = 64 * 1024;

/// Checks the campaign `vars` against [`CAMPAIGN_VARS_MAX`].
pub fn check_campaign_vars(vars: &Vars) -> Result<(), FieldError> {
    let bytes = serde_json::to_string(vars).map_or(usize::MAX, |json| json.len());
    if bytes > CAMPAIGN_VARS_MAX {
        return Err(FieldError::TooLong {
            field: "campaign vars",
            bytes,
            max: CAMPAIGN_VARS_MAX,
        });
    }
    Ok(())
}

/// Characters of a rejected value quoted in its error: enough to find it, never megabytes.
const QUOTED_MAX: usize = 64;

/// `value` as an error quotes it: control characters escaped, at most [`QUOTED_MAX`]
/// characters, the cut marked with `…`.
fn quoted(value: &str) -> String {
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
    /// Not an email address (`local@domain`), or longer than [`EMAIL_MAX`].
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

/// A campaign's id, e.g. `xiami-shutdown-2021`; also the prefix of its batch ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CampaignId(String);

impl CampaignId {
    /// Accepts 1-128 of `A-Z a-z 0-9 . _ : -`.
    pub fn parse(id: &str) -> Result<CampaignId, FieldError> {
        let ok = (1..=128).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if ok {
            Ok(CampaignId(id.to_string()))
        } else {
            Err(FieldError::CampaignId(quoted(id)))
        }
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The stable id of a user in the shutting-down product.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Trims, then accepts 1-256 characters without control characters.
    pub fn parse(id: &str) -> Result<UserId, FieldError> {
        let id = id.trim();
        let ok = !id.is_empty() && id.chars().count() <= 256 && !id.chars().any(char::is_control);
        if ok {
            Ok(UserId(id.to_string()))
        } else {
            Err(FieldError::UserId(quoted(id)))
        }
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A syntactically valid email address; the domain is kept lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses with lettre's RFC 5321 rules after trimming, refusing control characters and
    /// addresses over [`EMAIL_MAX`] bytes; lower-cases the domain.
    pub fn parse(raw: &str) -> Result<EmailAddress, FieldError> {
        let raw = raw.trim();
        if raw.len() > EMAIL_MAX {
            return Err(FieldError::TooLong {
                field: "email",
                bytes: raw.len(),
                max: EMAIL_MAX,
            });
        }
        // lettre lets control characters through in an internationalized domain (`\u{85}`).
        if raw.chars().any(char::is_control) {
            return Err(FieldError::Email(quoted(raw)));
        }
        let address: lettre::Address = raw.parse().map_err(|_| FieldError::Email(quoted(raw)))?;
        let domain = address.domain();
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(EmailAddress(format!(
                "{}@{}",
                address.user(),
                domain.to_ascii_lowercase()
            )))
        } else {
            Ok(EmailAddress(AsRef::<str>::as_ref(&address).to_string()))
        }
    }

    /// The whole address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `@`, lower-case: the key of the per-domain rate limit.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

macro_rules! string_newtype_conversions {
    ($($name:ident),*) => {$(
        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(raw: String) -> Result<$name, FieldError> {
                $name::parse(&raw)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_newtype_conversions!(CampaignId, UserId, EmailAddress);

/// One user to tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// Stable id in the shutting-down product.
    pub user_id: UserId,
    /// Without one, the email channel is skipped for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAddress>,
    /// The recipient's locale tag in BCP 47 form ([`locale::normalise`]d when read, absent
    /// when the data's tag was not one); negotiated to a template locale at render time, and
    /// kept whole for formatting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per-recipient overrides of campaign `vars`.
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
}

impl Recipient {
    /// Checks what the types do not: the lengths of `name` and `vars`, and that the
    /// name is one line. Both `sunset enqueue` and the worker's decoder apply it.
    pub fn check(&self) -> Result<(), FieldError> {
        let too_long = |field, bytes, max| {
            if bytes > max {
                Err(FieldError::TooLong { field, bytes, max })
            } else {
                Ok(())
            }
        };
        if let Some(name) = &self.name {
            too_long("name", name.len(), NAME_MAX)?;
            if name.chars().any(char::is_control) {
                return Err(FieldError::NameControl(quoted(name)));
            }
            if name.chars().any(bidi::is_control) {
                return Err(FieldError::BidiControl {
                    field: "name".into(),
                    value: quoted(name),
                });
            }
        }
        for (key, value) in &self.vars {
            if let Some(text) = bidi_string(value) {
                return Err(FieldError::BidiControl {
                    field: format!("vars.{key}"),
                    value: quoted(text),
                });
            }
        }
        if !self.vars.is_empty() {
            let bytes = serde_json::to_string(&self.vars).map_or(usize::MAX, |json| json.len());
            too_long("vars", bytes, RECIPIENT_VARS_MAX)?;
        }
        Ok(())
    }
}

/// The first string in `value` (at any depth) holding a bidi control character.
fn bidi_string(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => text.chars().any(bidi::is_control).then_some(text.as_str()),
        Value::Array(items) => items.iter().find_map(bidi_string),
        Value::Object(fields) => fields.values().find_map(bidi_string),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Why one recipient was not reached on one channel (dead letters only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Who.
    pub user_id: UserId,
    /// By which channel.
    pub channel: Channel,
    /// The last error, short.
    pub error: String,
}

/// A message on the work queue: one campaign's notice for up to `--batch-size` recipients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Wire-format version, [`VERSION`].
    pub version: u32,
    /// The campaign the batch belongs to.
    pub campaign_id: CampaignId,
    /// `<campaign_id>:<6-digit sequence>`, deterministic for an audience file.
    #[serde(default)]
    pub batch_id: String,
    /// The notice's template.
    pub template: TemplateName,
    /// Channels to send by.
    #[serde(default = "all_channels")]
    pub channels: Vec<Channel>,
    /// After this instant nothing more is sent for the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<FixedOffset>>,
    /// Campaign variables.
    #[serde(default)]
    pub vars: Vars,
    /// Who to tell; in a dead letter, only the failed ones.
    pub recipients: Vec<Recipient>,
    /// Dead letters only: why each recipient × channel failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

fn all_channels() -> Vec<Channel> {
    Channel::ALL.to_vec()
}

impl Batch {
    /// The batch as a dead letter of `failures`: only the recipients they name, each failure
    /// with them.
    pub fn failed(&self, failures: Vec<Failure>) -> Batch {
        let recipients = self
            .recipients
            .iter()
            .filter(|r| failures.iter().any(|f| f.user_id == r.user_id))
            .cloned()
            .collect();
        Batch {
            recipients,
            failures,
            ..self.clone()
        }
    }

    /// The recipient × channel pairs of `failures` as new batches, one per set of channels a
    /// recipient still needs (so a channel that worked is never sent again), without `failures`.
    pub fn regroup(&self, failures: &[Failure]) -> Vec<Batch> {
        let mut groups: Vec<(Vec<Channel>, Vec<Recipient>)> = Vec::new();
        for recipient in &self.recipients {
            let channels: Vec<Channel> = Channel::ALL
                .into_iter()
                .filter(|c| {
                    failures
                        .iter()
                        .any(|f| f.channel == *c && f.user_id == recipient.user_id)
                })
                .collect();
            if channels.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(set, _)| *set == channels) {
                Some((_, recipients)) => recipients.push(recipient.clone()),
                None => groups.push((channels, vec![recipient.clone()])),
            }
        }
        groups
            .into_iter()
            .map(|(channels, recipients)| Batch {
                channels,
                recipients,
                failures: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

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
    /// Campaign `vars` over [`CAMPAIGN_VARS_MAX`].
    #[error("{0}")]
    Campaign(FieldError),
    /// More recipients than [`MAX_RECIPIENTS`].
    #[error("batch has {0} recipients; at most {MAX_RECIPIENTS} are allowed")]
    TooManyRecipients(usize),
    /// `channels` is present but empty: nothing could ever be sent.
    #[error("batch has an empty `channels` list")]
    NoChannels,
    /// A recipient fails [`Recipient::check`].
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
    /// 128 levels), campaign vars over [`CAMPAIGN_VARS_MAX`], more than [`MAX_RECIPIENTS`] and
    /// recipients failing [`Recipient::check`] are errors, and so is an empty `channels` list.
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
        let mut channels = std::collections::HashSet::new();
        batch.channels.retain(|c| channels.insert(*c));
        let mut users = std::collections::HashSet::new();
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
    fn regroup_keeps_only_the_failed_channels_of_each_recipient() {
        let recipient = |id: &str| Recipient {
            user_id: UserId::parse(id).expect("id"),
            email: None,
            locale: None,
            name: None,
            vars: Vars::new(),
        };
        let failure = |id: &str, channel| Failure {
            user_id: UserId::parse(id).expect("id"),
            channel,
            error: "x".into(),
        };
        let batch = Batch {
            version: VERSION,
            campaign_id: CampaignId::parse("c").expect("id"),
            batch_id: "c:000001".into(),
            template: TemplateName::parse("t").expect("name"),
            channels: Channel::ALL.to_vec(),
            deadline: None,
            vars: Vars::new(),
            recipients: vec![
                recipient("a"),
                recipient("b"),
                recipient("c"),
                recipient("d"),
            ],
            failures: Vec::new(),
        };
        let groups = batch.regroup(&[
            failure("a", Channel::Push),
            failure("b", Channel::Email),
            failure("b", Channel::Push),
            failure("d", Channel::Push),
        ]);
        let shape: Vec<(Vec<Channel>, Vec<&str>)> = groups
            .iter()
            .map(|b| {
                (
                    b.channels.clone(),
                    b.recipients.iter().map(|r| r.user_id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (vec![Channel::Push], vec!["a", "d"]),
                (vec![Channel::Email, Channel::Push], vec!["b"])
            ]
        );
        assert!(
            groups
                .iter()
                .all(|b| b.failures.is_empty() && b.batch_id == "c:000001")
        );
    }

    #[test]
    fn ids_and_addresses_are_parsed_once_at_the_edge() {
        assert!(CampaignId::parse("xiami-shutdown-2021").is_ok());
        assert!(CampaignId::parse("has space").is_err());
        assert!(CampaignId::parse("").is_err());
        assert_eq!(UserId::parse("  u-1 ").expect("trimmed").as_str(), "u-1");
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse("").is_err());
        assert_eq!(
            EmailAddress::parse("Li@QQ.com").expect("valid").as_str(),
            "Li@qq.com"
        );
        for bad in [
            "",
            "no-at",
            "a@",
            "@b.com",
            "a b@c.com",
            "a@b.com\u{85}x",
            "a\0@b.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
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
