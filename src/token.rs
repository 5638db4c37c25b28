//! Feedback tokens: an HMAC of campaign, user and channel that names one recipient in a VERP
//! envelope sender (`b-<token>@<bounce domain>`), an unsubscribe mailbox (`u-<token>@…`) and an
//! unsubscribe URL (`<public_url>/u/<token>`), without carrying the ids themselves.
//!
//! A token cannot be forged without the key, survives a bounce whose body is mangled (it rides
//! in the envelope), and is short enough for a local part (RFC 5321: 64 octets). It is looked
//! up, not decoded: the ledger keeps which recipient each token was made for.

use std::fmt;
use std::path::Path;

use aws_lc_rs::hmac;

use crate::batch::{CampaignId, UserId};
use crate::channel::Channel;
use crate::config::ConfigError;

/// Bytes of the HMAC kept: 96 bits, far beyond guessing, 24 hex digits.
const TOKEN_BYTES: usize = 12;

/// The least key material accepted, in bytes.
const KEY_MIN: usize = 16;

/// Local-part prefix of VERP envelope senders.
pub const BOUNCE_PREFIX: &str = "b-";

/// Local-part prefix of unsubscribe mailboxes.
pub const UNSUBSCRIBE_PREFIX: &str = "u-";

/// The HMAC key from `feedback.secret_file`. Never printed.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

impl TokenKey {
    /// Reads the owner-only file `feedback.secret_file` names. An unreadable, shared, empty or
    /// short (< 16 bytes) file is a configuration error naming the key and the file.
    pub fn load(path: &Path) -> Result<TokenKey, ConfigError> {
        let secret = crate::secret::read_file("feedback.secret_file", path)?.unwrap_or_default();
        if secret.len() < KEY_MIN {
            return Err(ConfigError::Invalid(format!(
                "  key `feedback.secret_file`: {} holds {} bytes; it needs at least {KEY_MIN} \
                 (e.g. `head -c 32 /dev/urandom | base64 > {0}; chmod 600 {0}`)",
                path.display(),
                secret.len()
            )));
        }
        Ok(TokenKey::from_bytes(secret.as_bytes()))
    }

    /// A key from raw bytes (tests, benchmarks).
    pub fn from_bytes(secret: &[u8]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The token of one recipient on one channel of one campaign.
    pub fn token(&self, campaign: &CampaignId, user: &UserId, channel: Channel) -> Token {
        let mut context = hmac::Context::with_key(&self.0);
        // NUL cannot occur in either id, so the three fields cannot run into each other.
        for field in [campaign.as_str(), user.as_str(), channel.as_str()] {
            context.update(field.as_bytes());
            context.update(&[0]);
        }
        let tag = context.sign();
        let mut hex = String::with_capacity(TOKEN_BYTES * 2);
        for byte in &tag.as_ref()[..TOKEN_BYTES] {
            hex.push_str(&format!("{byte:02x}"));
        }
        Token(hex)
    }
}

/// 24 lower-case hex digits. Case-insensitive on input, since mail systems may change the case
/// of a local part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

/// Not a token: wrong length or not hex.
#[derive(Debug, thiserror::Error)]
#[error("not a sunset token (24 hex digits)")]
pub struct BadToken;

impl Token {
    /// Accepts 24 hex digits in any case.
    pub fn parse(raw: &str) -> Result<Token, BadToken> {
        if raw.len() == TOKEN_BYTES * 2 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Token(raw.to_ascii_lowercase()))
        } else {
            Err(BadToken)
        }
    }

    /// The token in a local part that starts with `prefix` (`b-…`, `u-…`), in any case.
    pub fn from_local_part(local: &str, prefix: &str) -> Option<Token> {
        let head = local.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        Token::parse(&local[prefix.len()..]).ok()
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<prefix><token>@<domain>`.
    pub fn mailbox(&self, prefix: &str, domain: &str) -> String {
        format!("{prefix}{}@{domain}", self.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(campaign: &str, user: &str) -> (CampaignId, UserId) {
        (
            CampaignId::parse(campaign).expect("campaign"),
            UserId::parse(user).expect("user"),
        )
    }

    #[test]
    fn a_token_is_stable_per_recipient_and_channel_and_depends_on_the_key() {
        let key = TokenKey::from_bytes(b"0123456789abcdef0123");
        let (c, u) = ids("xiami-2026", "u-1");
        let token = key.token(&c, &u, Channel::Email);
        assert_eq!(token, key.token(&c, &u, Channel::Email));
        assert_eq!(token.as_str().len(), 24);
        assert_ne!(token, key.token(&c, &u, Channel::Push));
        let (c2, u2) = ids("xiami-2026u", "-1");
        assert_ne!(token, key.token(&c2, &u2, Channel::Email));
        let other = TokenKey::from_bytes(b"another key, long enough");
        assert_ne!(token, other.token(&c, &u, Channel::Email));
    }

    #[test]
    fn tokens_are_read_back_from_local_parts_in_any_case() {
        let key = TokenKey::from_bytes(b"0123456789abcdef0123");
        let (c, u) = ids("xiami-2026", "u-1");
        let token = key.token(&c, &u, Channel::Email);
        let mailbox = token.mailbox(BOUNCE_PREFIX, "bounces.xiami.example");
        let local = mailbox.split('@').next().expect("local part");
        assert_eq!(local.len(), 26);
        assert_eq!(
            Token::from_local_part(local, BOUNCE_PREFIX),
            Some(token.clone())
        );
        assert_eq!(
            Token::from_local_part(&local.to_ascii_uppercase(), BOUNCE_PREFIX),
            Some(token)
        );
        assert_eq!(Token::from_local_part(local, UNSUBSCRIBE_PREFIX), None);
        assert_eq!(Token::from_local_part("b-xyz", BOUNCE_PREFIX), None);
        assert!(Token::parse("").is_err());
    }

    #[test]
    fn a_short_or_shared_key_file_is_refused_naming_the_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let error = TokenKey::load(&path).expect_err("short").to_string();
        assert!(error.contains("feedback.secret_file"), "{error}");
        std::fs::write(&path, "a key of more than sixteen bytes\n").expect("write");
        TokenKey::load(&path).expect("long enough");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = TokenKey::load(&path).expect_err("shared").to_string();
        assert!(error.contains("feedback.secret_file"), "{error}");
    }
}
