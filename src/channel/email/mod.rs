//! The email channel: one multipart message per delivery, written to the `.eml` outbox or sent
//! through a small pool of SMTP connections whose sockets we open ourselves (`TCP_NODELAY` on).

mod canonical;
mod composer;
mod dkim;
mod held;
mod message;
mod outbox;
mod relay_url;
mod reply;
mod seal;
mod smtp;
mod tls;

pub use composer::Composer;
pub use dkim::{DkimSigner, ED25519_SELECTOR_SUFFIX};
pub use message::{Email, compose};
pub use outbox::EmlOutbox;
pub use seal::SealError;
pub use smtp::SmtpRelay;

use lettre::message::Mailbox;

use super::{Delivery, Outcome, Sender};
use crate::batch::{CampaignId, UserId};
use crate::config::{ConfigError, EmailConfig, EmailTransport, FeedbackConfig};
use crate::secret::Secret;

/// The environment variable the SMTP password is read from (or, with `_FILE` appended, the
/// owner-only file holding it); it never comes from the config file.
pub const PASSWORD_ENV: &str = "SUNSET_SMTP_PASSWORD";

/// Sends email by the transport `email.transport` names.
#[derive(Debug)]
pub enum EmailSender {
    /// One `.eml` file per email in `email.outbox` (boxed, as the relay: the composer's keys
    /// are large).
    File(Box<EmlOutbox>),
    /// The SMTP relay at `email.url`.
    Smtp(Box<SmtpRelay>),
}

impl EmailSender {
    /// Builds the configured transport, with the DKIM key(s) and feedback token key loaded
    /// once (see [`Composer::from_config`]). Reads the SMTP password from [`PASSWORD_ENV`] (or
    /// the file `SUNSET_SMTP_PASSWORD_FILE` names) when `email.url` names a user. Errors name
    /// the config key (`email.from`, `email.url`, `email.dkim.key_file`, …).
    pub fn from_config(
        config: &EmailConfig,
        feedback: &FeedbackConfig,
    ) -> Result<EmailSender, ConfigError> {
        let composer = Composer::from_config(config, feedback)?;
        match config.transport {
            EmailTransport::File => Ok(EmailSender::File(Box::new(EmlOutbox::new(
                &config.outbox,
                composer,
            )))),
            EmailTransport::Smtp => {
                let password = Secret::from_env(PASSWORD_ENV)?;
                SmtpRelay::new(config, composer, password)
                    .map(|relay| EmailSender::Smtp(Box::new(relay)))
            }
        }
    }

    /// Says `QUIT` to idle SMTP connections; call once no more sends will start.
    pub async fn close(&self) {
        if let EmailSender::Smtp(relay) = self {
            relay.close().await;
        }
    }
}

impl Sender for EmailSender {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        match self {
            EmailSender::File(outbox) => outbox.send(delivery).await,
            EmailSender::Smtp(relay) => relay.send(delivery).await,
        }
    }
}

/// The DKIM signer `email.dkim` describes, as a worker loads it; `None` without a key file.
pub fn dkim_signer(config: &EmailConfig) -> Result<Option<DkimSigner>, ConfigError> {
    DkimSigner::from_config(&config.dkim, &parse_from(&config.from)?)
}

/// `email.from`, parsed once.
fn parse_from(from: &str) -> Result<Mailbox, ConfigError> {
    from.parse::<Mailbox>().map_err(|e| {
        invalid(
            "email.from",
            format!("`{from}` is not a mailbox like `Name <noreply@example.com>` ({e})"),
        )
    })
}

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid(format!("  key `{key}`: {problem}"))
}

// ---------------------------------------------------------------------------------------------
// The message

/// Why a delivery cannot be made into an email: permanent for that recipient.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The notice was rendered without its email parts.
    #[error("no email part rendered")]
    NoEmailPart,
    /// The recipient has no email address.
    #[error("recipient has no email address")]
    NoAddress,
    /// The address is not one lettre can send to.
    #[error("cannot build the email: {0}")]
    Invalid(String),
    /// The template's `template.toml` asks for `List-Unsubscribe`, and no token key is set.
    #[error(
        "the template's template.toml sets list_unsubscribe = true, but feedback.secret_file \
         is not set (the unsubscribe link is made with its key)"
    )]
    NoUnsubscribeKey,
}

/// The email of `delivery`, composed and signed, or the outcome of a delivery that cannot be
/// made into one: permanent when the delivery or the key is at fault, transient when the
/// signing thread stopped.
async fn signed_email(composer: &Composer, delivery: Delivery<'_>) -> Result<Email, Outcome> {
    let email = compose(composer, delivery).map_err(|e| Outcome::permanent(e.to_string()))?;
    composer.seal(email).await.map_err(|e| match e {
        SealError::Sign(_) => Outcome::permanent(e.to_string()),
        SealError::Stopped(_) => Outcome::transient(e.to_string()),
    })
}

/// `<{campaign_id}.{user_id}@{domain}>`, valid for any ids: characters a msg-id's dot-atom may
/// not hold are percent-encoded (`:` → `%3A`), as is every `.` of the campaign id so the first
/// dot always separates the two ids.
pub fn message_id(campaign: &CampaignId, user: &UserId, domain: &str) -> String {
    format!(
        "<{}.{}@{domain}>",
        escape(campaign.as_str(), is_word_char),
        dot_atom(user.as_str())
    )
}

/// Letters, digits, `_` and `-`: kept as they are in ids we write into headers and file names.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Percent-encodes (UTF-8 bytes, upper-case hex) every character `keep` rejects.
fn escape(raw: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// Like [`escape`] with word characters kept, and also dots that neither start, end nor double
/// (a dot-atom's rule).
fn dot_atom(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    for (i, &c) in chars.iter().enumerate() {
        let lone_inner_dot =
            c == '.' && i > 0 && i + 1 < chars.len() && chars[i - 1] != '.' && chars[i + 1] != '.';
        if lone_inner_dot {
            out.push('.');
        } else {
            out.push_str(&escape(&c.to_string(), is_word_char));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_valid_and_deterministic_for_any_ids() {
        let campaign = CampaignId::parse("xiami:2021.a").expect("valid");
        let id = |user: &str| {
            message_id(
                &campaign,
                &UserId::parse(user).expect("valid"),
                "xiami.example",
            )
        };
        assert_eq!(id("u-1001"), "<xiami%3A2021%2Ea.u-1001@xiami.example>");
        assert_eq!(id("a.b"), "<xiami%3A2021%2Ea.a.b@xiami.example>");
        assert_eq!(
            id(".a..b."),
            "<xiami%3A2021%2Ea.%2Ea%2E%2Eb%2E@xiami.example>"
        );
        assert_eq!(
            id("名 <x>"),
            "<xiami%3A2021%2Ea.%E5%90%8D%20%3Cx%3E@xiami.example>"
        );
        assert_eq!(id("名 <x>"), id("名 <x>"));
    }
}
