//! Postmark's bounce and spam complaint webhooks (`POST /webhooks/postmark`), authenticated by
//! HTTP basic auth: the user from `feedback.webhooks.postmark_user`, the password from
//! `SUNSET_POSTMARK_PASSWORD` (or the owner-only file `SUNSET_POSTMARK_PASSWORD_FILE` names).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::refusal::Refusal;
use crate::batch::EmailAddress;
use crate::config::{ConfigError, WebhooksConfig};
use crate::suppression::{About, Reason, Report, Source};

/// The variable holding the webhook's password.
pub const PASSWORD_VAR: &str = "SUNSET_POSTMARK_PASSWORD";

const UNAUTHORIZED: Refusal = Refusal {
    status: StatusCode::UNAUTHORIZED,
    why: "postmark-bad-credentials",
};

/// The expected `Authorization` header. Never printed.
pub struct Credentials {
    expected: String,
}

/// The fields of a bounce or spam complaint record sunset reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    record_type: String,
    #[serde(default)]
    r#type: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    description: String,
}

impl Credentials {
    /// `None` when `postmark_user` is empty (the route answers 404); with a user set and no
    /// password, a configuration error naming both.
    pub fn load(config: &WebhooksConfig) -> Result<Option<Credentials>, ConfigError> {
        let user = config.postmark_user.trim();
        if user.is_empty() {
            return Ok(None);
        }
        let password = crate::secret::read(PASSWORD_VAR)?.ok_or_else(|| {
            ConfigError::Invalid(format!(
                "  key `feedback.webhooks.postmark_user` is set but {PASSWORD_VAR} (or \
                 {PASSWORD_VAR}_FILE) is not: the webhook needs both"
            ))
        })?;
        Ok(Some(Credentials {
            expected: format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
        }))
    }

    /// The reports of one webhook call, once its credentials are checked.
    pub fn reports(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Report>, Refusal> {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        verify_slices_are_equal(given, self.expected.as_bytes()).map_err(|_| UNAUTHORIZED)?;
        let record: Record =
            serde_json::from_slice(body).map_err(|_| Refusal::malformed("postmark-not-json"))?;
        let reason = match (record.record_type.as_str(), record.r#type.as_str()) {
            ("SpamComplaint", _) | ("Bounce", "SpamComplaint" | "SpamNotification") => {
                Reason::Complaint
            }
            ("Bounce", "HardBounce" | "BadEmailAddress") => Reason::HardBounce,
            ("Bounce", "SoftBounce" | "Transient" | "DnsError") => Reason::SoftBounce,
            // Deliveries, opens, auto-responders and challenges say nothing about the address.
            _ => return Ok(Vec::new()),
        };
        let address = EmailAddress::parse(&record.email)
            .map_err(|_| Refusal::malformed("postmark-bad-email"))?;
        Ok(vec![Report {
            reason,
            about: About::Address(address),
            source: Source::Postmark,
            detail: super::report_fields::without_addresses(&format!(
                "{} {}",
                record.r#type, record.description
            )),
        }])
    }
}
