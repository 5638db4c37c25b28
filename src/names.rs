//! Nouns every layer may import: the channels, template names and campaign variables. This
//! file imports nothing of the project.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Campaign variables (`vars` of a batch): names to JSON values.
pub type Vars = Map<String, Value>;

/// A way of reaching a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// SMTP email, text and HTML.
    Email,
    /// In-app push through the HTTP gateway.
    Push,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Push];

    /// `email` or `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Not `email` or `push`.
#[derive(Debug, thiserror::Error)]
#[error("unknown channel `{0}` (expected email or push)")]
pub struct UnknownChannel(String);

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> Result<Channel, UnknownChannel> {
        match s.trim() {
            "email" => Ok(Channel::Email),
            "push" => Ok(Channel::Push),
            other => Err(UnknownChannel(other.to_string())),
        }
    }
}

/// A template's name: one folder under `templates.dir`, never a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

impl TryFrom<String> for TemplateName {
    type Error = BadTemplateName;
    fn try_from(name: String) -> Result<TemplateName, BadTemplateName> {
        TemplateName::parse(&name)
    }
}

impl From<TemplateName> for String {
    fn from(name: TemplateName) -> String {
        name.0
    }
}

impl TemplateName {
    /// Accepts letters, digits, `-`, `_` and `.`, not starting with `.`.
    pub fn parse(name: &str) -> Result<TemplateName, BadTemplateName> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(TemplateName(name.to_string()))
        } else {
            Err(BadTemplateName(name.to_string()))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Not a plain folder name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template name `{0}` is not a folder name (letters, digits, `-`, `_`, `.`)")]
pub struct BadTemplateName(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_are_folder_names_only() {
        for good in ["xiami-shutdown", "a_b.c", "X1"] {
            assert!(TemplateName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "名"] {
            assert!(TemplateName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
