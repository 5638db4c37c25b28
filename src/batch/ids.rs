//! The ids and addresses a batch carries, parsed once at the edge: `CampaignId`, `UserId`, `EmailAddress`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::field_error::{FieldError, quoted};

/// Longest email address, in bytes (RFC 5321 §4.5.3.1: a 256-byte path, angle brackets included).
pub const EMAIL_MAX: usize = 254;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
