//! One `Recipient` of a batch, and the checks its types do not make.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::field_error::{FieldError, quoted};
use super::ids::{EmailAddress, UserId};
use crate::bidi;
use crate::names::Vars;

/// Longest display name, in bytes (UTF-8): far above any real name (341 CJK characters), far
/// below a name that would bloat every email it is written into.
pub const NAME_MAX: usize = 1024;

/// Largest per-recipient `vars`, in bytes of JSON: they are rendered into every part.
pub const RECIPIENT_VARS_MAX: usize = 4096;

/// One user to tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// Stable id in the shutting-down product.
    pub user_id: UserId,
    /// Without one, the email channel is skipped for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAddress>,
    /// The recipient's locale tag in BCP 47 form ([`crate::locale::normalise`]d when read, absent
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
