//! What every email of a process is addressed and signed with, set up once from the config:
//! `email.from`, the feedback tokens' key with the VERP bounce domain and the unsubscribe URL,
//! and the DKIM signer.

use lettre::Address;
use lettre::message::Mailbox;

use super::dkim::DkimSigner;
use super::seal::{SealError, Sealer};
use super::{ComposeError, Email, invalid, parse_from};
use crate::batch::{CampaignId, UserId};
use crate::channel::Channel;
use crate::config::{ConfigError, EmailConfig, FeedbackConfig};
use crate::token::{BOUNCE_PREFIX, Token, TokenKey, UNSUBSCRIBE_PREFIX};

/// The addresses feedback comes back to, per recipient token.
#[derive(Debug)]
struct FeedbackAddresses {
    key: TokenKey,
    /// `feedback.bounce_domain`, when set: VERP and the unsubscribe mailbox.
    bounce_domain: Option<String>,
    /// `feedback.public_url` without a trailing `/`.
    public_url: String,
}

/// Builds each email's addresses ([`super::compose`]) and signs it ([`Composer::seal`]).
#[derive(Debug)]
pub struct Composer {
    from: Mailbox,
    feedback: Option<FeedbackAddresses>,
    dkim: Option<Sealer>,
}

impl Composer {
    /// Emails from `from`: no VERP, no `List-Unsubscribe`, unsigned.
    pub fn new(from: Mailbox) -> Composer {
        Composer {
            from,
            feedback: None,
            dkim: None,
        }
    }

    /// Reads `email.from`, `email.dkim` and the `feedback` keys that shape outgoing mail
    /// (`secret_file`, `bounce_domain`, `public_url`). Errors name the key.
    pub fn from_config(
        email: &EmailConfig,
        feedback: &FeedbackConfig,
    ) -> Result<Composer, ConfigError> {
        let from = parse_from(&email.from)?;
        let composer = Composer {
            dkim: DkimSigner::from_config(&email.dkim, &from)?.map(Sealer::new),
            feedback: None,
            from,
        };
        let bounce_domain = Some(feedback.bounce_domain.trim()).filter(|d| !d.is_empty());
        if feedback.secret_file.as_os_str().is_empty() {
            if bounce_domain.is_some() {
                return Err(invalid(
                    "feedback.bounce_domain",
                    "is set but `feedback.secret_file` is not: VERP addresses are made with \
                     that file's key"
                        .into(),
                ));
            }
            return Ok(composer);
        }
        composer.with_tokens(
            TokenKey::load(&feedback.secret_file)?,
            &feedback.public_url,
            bounce_domain,
        )
    }

    /// Adds feedback addresses made with `key`: `List-Unsubscribe` links under `public_url`
    /// (`feedback.public_url`), and with a `bounce_domain` VERP and the unsubscribe mailbox.
    pub fn with_tokens(
        self,
        key: TokenKey,
        public_url: &str,
        bounce_domain: Option<&str>,
    ) -> Result<Composer, ConfigError> {
        Ok(Composer {
            feedback: Some(FeedbackAddresses {
                key,
                bounce_domain: bounce_domain.map(self::bounce_domain).transpose()?,
                public_url: self::public_url(public_url)?,
            }),
            ..self
        })
    }

    /// `email.from`.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// `email` signed when `email.dkim.key_file` is set (on another thread, see
    /// [`Sealer::seal`]), else as it is.
    pub async fn seal(&self, email: Email) -> Result<Email, SealError> {
        match &self.dkim {
            Some(sealer) => sealer.seal(email).await,
            None => Ok(email),
        }
    }

    /// The recipient's token, when a feedback key is set.
    fn token(&self, campaign: &CampaignId, user: &UserId) -> Option<Token> {
        self.feedback
            .as_ref()
            .map(|f| f.key.token(campaign, user, Channel::Email))
    }

    /// `MAIL FROM`: `b-<token>@<bounce_domain>` with a bounce domain, else `email.from`'s
    /// address.
    pub(super) fn envelope_sender(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<Address, ComposeError> {
        let verp = self.feedback.as_ref().and_then(|f| {
            let domain = f.bounce_domain.as_deref()?;
            Some(
                f.key
                    .token(campaign, user, Channel::Email)
                    .mailbox(BOUNCE_PREFIX, domain),
            )
        });
        match verp {
            Some(mailbox) => mailbox
                .parse()
                .map_err(|e| ComposeError::Invalid(format!("VERP address: {e}"))),
            None => Ok(self.from.email.clone()),
        }
    }

    /// Whether the envelope sender is a VERP address (the `.eml` outbox then writes it as
    /// `Return-Path`).
    pub(super) fn uses_verp(&self) -> bool {
        self.feedback
            .as_ref()
            .is_some_and(|f| f.bounce_domain.is_some())
    }

    /// `List-Unsubscribe`'s value: the one-click URL, then the mailbox when a bounce domain is
    /// set (folded between the two).
    pub(super) fn list_unsubscribe(
        &self,
        campaign: &CampaignId,
        user: &UserId,
    ) -> Result<String, ComposeError> {
        let (Some(feedback), Some(token)) = (&self.feedback, self.token(campaign, user)) else {
            return Err(ComposeError::NoUnsubscribeKey);
        };
        let mut value = format!("<{}/u/{token}>", feedback.public_url);
        if let Some(domain) = &feedback.bounce_domain {
            value.push_str(&format!(
                ",\r\n <mailto:{}>",
                token.mailbox(UNSUBSCRIBE_PREFIX, domain)
            ));
        }
        Ok(value)
    }
}

/// `feedback.bounce_domain`: a DNS name, lower-cased.
fn bounce_domain(domain: &str) -> Result<String, ConfigError> {
    let valid = domain.split('.').all(|label| {
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if valid {
        Ok(domain.to_ascii_lowercase())
    } else {
        Err(invalid(
            "feedback.bounce_domain",
            format!("`{domain}` is not a domain name (letters, digits, `-`, `.`)"),
        ))
    }
}

/// `feedback.public_url`: `https://…`, or `http://` to a loopback host (tests, a local
/// proxy); no trailing `/`, no query, no fragment.
fn public_url(url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    let problem = |why: &str| invalid("feedback.public_url", format!("`{url}` {why}"));
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        let loopback = host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]");
        if !loopback {
            return Err(problem(
                "is not https: mail clients refuse a plain-http unsubscribe link (http only \
                 for a loopback host)",
            ));
        }
        rest
    } else {
        return Err(problem("is not an https:// URL"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(problem("names no host"));
    }
    if url.contains(['?', '#', ' ', '<', '>', '"']) {
        return Err(problem("has a query, fragment, space or bracket"));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_https_or_loopback_http() {
        assert_eq!(
            public_url("https://notices.xiami.example/").expect("https"),
            "https://notices.xiami.example"
        );
        assert!(public_url("http://127.0.0.1:8687").is_ok());
        assert!(public_url("http://localhost/x").is_ok());
        for bad in [
            "http://notices.xiami.example",
            "ftp://x",
            "https://",
            "https://x/?a=1",
            "notices.xiami.example",
        ] {
            let error = public_url(bad).expect_err(bad).to_string();
            assert!(error.contains("feedback.public_url"), "{error}");
        }
    }

    #[test]
    fn bounce_domains_are_dns_names() {
        assert_eq!(
            bounce_domain("Bounces.Xiami.example").expect("valid"),
            "bounces.xiami.example"
        );
        for bad in ["", "a..b", "a b", "a@b", "例子.example"] {
            assert!(bounce_domain(bad).is_err(), "{bad}");
        }
    }
}
