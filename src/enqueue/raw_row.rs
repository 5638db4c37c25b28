//! An audience row as read from CSV or JSONL, before its fields are parsed into a recipient.

use serde::Deserialize;

use crate::batch::{EmailAddress, Recipient, UserId};
use crate::locale::{self, TAG_MAX};
use crate::names::Vars;

/// The fields of a row before they are parsed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRow {
    #[serde(default)]
    pub(super) user_id: Option<String>,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) locale: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    vars: Vars,
}

/// A recipient and its unreadable locale tag, if it had one (see [`Row`]).
pub(super) type Parsed = (Recipient, Option<String>);

impl RawRow {
    pub(super) fn parse(self) -> Result<Parsed, String> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let user_id = non_empty(self.user_id).ok_or("user_id is missing")?;
        let user_id = UserId::parse(&user_id).map_err(|e| e.to_string())?;
        let email = non_empty(self.email)
            .map(|e| EmailAddress::parse(&e))
            .transpose()
            .map_err(|e| e.to_string())?;
        let raw_locale = non_empty(self.locale);
        let locale = raw_locale.as_deref().and_then(locale::normalise);
        let unreadable_locale = match (&raw_locale, &locale) {
            (Some(raw), None) => Some(
                raw.trim()
                    .chars()
                    .take(TAG_MAX)
                    .flat_map(char::escape_debug)
                    .collect(),
            ),
            _ => None,
        };
        let recipient = Recipient {
            user_id,
            email,
            locale: locale.map(|l| l.to_string()),
            name: non_empty(self.name).map(|n| n.trim().to_string()),
            vars: self.vars,
        };
        recipient.check().map_err(|e| e.to_string())?;
        Ok((recipient, unreadable_locale))
    }
}
