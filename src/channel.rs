//! Delivery channels a notice can go out by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
        f.write_str(self.as_str())
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
