//! SendGrid's signed event webhook (`POST /webhooks/sendgrid`): an ECDSA P-256 signature over
//! the timestamp header and the raw body, checked with the verification key from
//! `feedback.webhooks.sendgrid_public_key` before anything is read.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::original::campaign_and_user;
use super::refusal::Refusal;
use crate::batch::EmailAddress;
use crate::config::{ConfigError, WebhooksConfig};
use crate::suppression::{About, Reason, Report, Source};
use crate::token::Token;

/// The header holding the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
/// The header holding the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The verification key and the domain of sunset's `Message-ID`s.
pub struct Verifier {
    key: ParsedPublicKey,
    message_domain: String,
}

/// The fields of one event sunset reads; custom arguments arrive as top-level fields.
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    email: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    r#type: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    status: String,
    #[serde(rename = "smtp-id", default)]
    smtp_id: String,
    /// The custom argument `sunset_token`, when the sender sets one.
    #[serde(rename = "sunset_token", default)]
    token: String,
}

impl Verifier {
    /// `None` when the key is empty (the route answers 404); a key that is not base64 DER of
    /// a P-256 public key is a configuration error naming it.
    pub fn load(
        config: &WebhooksConfig,
        message_domain: &str,
    ) -> Result<Option<Verifier>, ConfigError> {
        let key = config.sendgrid_public_key.trim();
        if key.is_empty() {
            return Ok(None);
        }
        let key = STANDARD
            .decode(key)
            .ok()
            .and_then(|der| ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der).ok())
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "  key `feedback.webhooks.sendgrid_public_key`: not a base64 P-256 public \
                     key (copy the verification key SendGrid shows for the signed event webhook)"
                        .into(),
                )
            })?;
        Ok(Some(Verifier {
            key,
            message_domain: message_domain.to_string(),
        }))
    }

    /// The reports of one webhook call, once its signature is checked.
    pub fn reports(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Report>, Refusal> {
        let header = |name| {
            headers
                .get(name)
                .map(|value| value.as_bytes())
                .ok_or(Refusal::forbidden("sendgrid-unsigned"))
        };
        let signature = STANDARD
            .decode(header(SIGNATURE_HEADER)?)
            .map_err(|_| Refusal::forbidden("sendgrid-bad-signature"))?;
        let mut signed = header(TIMESTAMP_HEADER)?.to_vec();
        signed.extend_from_slice(body);
        self.key
            .verify_sig(&signed, &signature)
            .map_err(|_| Refusal::forbidden("sendgrid-bad-signature"))?;
        let events: Vec<Event> =
            serde_json::from_slice(body).map_err(|_| Refusal::malformed("sendgrid-not-json"))?;
        Ok(events
            .into_iter()
            .filter_map(|event| self.report(event))
            .collect())
    }

    fn report(&self, event: Event) -> Option<Report> {
        let reason = match (event.event.as_str(), event.r#type.as_str()) {
            ("bounce", "blocked") => Reason::SoftBounce,
            ("bounce", _) => Reason::HardBounce,
            ("spamreport", _) => Reason::Complaint,
            ("dropped", _) if event.reason.contains("Spam Report") => Reason::Complaint,
            ("dropped", _) if event.reason.contains("Unsubscribe") => Reason::Unsubscribe,
            ("dropped", _) => Reason::HardBounce,
            _ => return None,
        };
        let about = Token::parse(&event.token)
            .ok()
            .map(About::Token)
            .or_else(|| {
                campaign_and_user(&event.smtp_id, &self.message_domain)
                    .map(|(campaign, user)| About::Message { campaign, user })
            })
            .or_else(|| EmailAddress::parse(&event.email).ok().map(About::Address))?;
        Some(Report {
            reason,
            about,
            source: Source::SendGrid,
            detail: super::report_fields::without_addresses(&format!(
                "{} {} {}",
                event.event, event.status, event.reason
            )),
        })
    }
}
