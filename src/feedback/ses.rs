//! Amazon SES bounce and complaint notifications delivered by SNS (`POST /webhooks/ses`). The
//! SNS signature (version 1: SHA1withRSA, 2: SHA256withRSA, over the canonical string of the
//! message's fields) is checked with the certificate its `SigningCertURL` names — which must be
//! https on `sns.<region>.amazonaws.com` — taken from the trusted copies in
//! `feedback.webhooks.ses_cert_dir`, never fetched: the listener makes no outbound requests.

use std::path::PathBuf;

use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, RsaParameters,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::original::campaign_and_user;
use super::refusal::Refusal;
use crate::batch::EmailAddress;
use crate::config::{ConfigError, WebhooksConfig};
use crate::suppression::{About, Reason, Report, Source};

/// The largest certificate file read.
const MAX_CERT_BYTES: u64 = 64 * 1024;

/// The trusted certificates and the domain of sunset's `Message-ID`s.
pub struct Verifier {
    cert_dir: PathBuf,
    message_domain: String,
}

/// An SNS message as posted (field names as AWS spells them).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnsMessage {
    r#type: String,
    message_id: String,
    topic_arn: String,
    #[serde(default)]
    subject: Option<String>,
    message: String,
    timestamp: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(rename = "SubscribeURL", default)]
    subscribe_url: Option<String>,
    signature_version: String,
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
}

/// The parts of an SES notification sunset reads (`notificationType` for SNS notifications,
/// `eventType` for event publishing).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    #[serde(alias = "eventType")]
    notification_type: String,
    #[serde(default)]
    bounce: Option<Bounce>,
    #[serde(default)]
    complaint: Option<Complaint>,
    #[serde(default)]
    mail: Option<Mail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    bounce_type: String,
    #[serde(default)]
    bounce_sub_type: String,
    bounced_recipients: Vec<Recipient>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    complained_recipients: Vec<Recipient>,
    #[serde(default)]
    complaint_feedback_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    email_address: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    diagnostic_code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mail {
    #[serde(default)]
    common_headers: Option<CommonHeaders>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommonHeaders {
    #[serde(default)]
    message_id: String,
}

impl Verifier {
    /// `None` when `ses_cert_dir` is empty (the route answers 404); a folder that is not there
    /// is a configuration error naming the key.
    pub fn load(
        config: &WebhooksConfig,
        message_domain: &str,
    ) -> Result<Option<Verifier>, ConfigError> {
        if config.ses_cert_dir.as_os_str().is_empty() {
            return Ok(None);
        }
        if !config.ses_cert_dir.is_dir() {
            return Err(ConfigError::Invalid(format!(
                "  key `feedback.webhooks.ses_cert_dir`: {} is not a folder",
                config.ses_cert_dir.display()
            )));
        }
        Ok(Some(Verifier {
            cert_dir: config.ses_cert_dir.clone(),
            message_domain: message_domain.to_string(),
        }))
    }

    /// The reports of one SNS message, once its signature is checked. A subscription
    /// confirmation reports nothing: its `SubscribeURL` is logged for the operator to visit.
    pub fn reports(&self, body: &[u8]) -> Result<Vec<Report>, Refusal> {
        let sns: SnsMessage =
            serde_json::from_slice(body).map_err(|_| Refusal::malformed("ses-not-sns"))?;
        self.verify(&sns)?;
        match sns.r#type.as_str() {
            "Notification" => {}
            "SubscriptionConfirmation" => {
                tracing::warn!(
                    topic = %sns.topic_arn,
                    subscribe_url = sns.subscribe_url.as_deref().unwrap_or_default(),
                    "SNS asks to confirm the subscription: visit its SubscribeURL once"
                );
                return Ok(Vec::new());
            }
            _ => return Ok(Vec::new()),
        }
        let notification: Notification = serde_json::from_str(&sns.message)
            .map_err(|_| Refusal::malformed("ses-not-a-notification"))?;
        Ok(self.read(notification))
    }

    fn verify(&self, sns: &SnsMessage) -> Result<(), Refusal> {
        let algorithm: &'static RsaParameters = match sns.signature_version.as_str() {
            "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(Refusal::forbidden("ses-unknown-signature-version")),
        };
        let file = cert_file_name(&sns.signing_cert_url)
            .ok_or(Refusal::forbidden("ses-untrusted-cert-url"))?;
        let public_key = self.public_key(&file).ok_or_else(|| {
            tracing::warn!(
                signing_cert_url = %sns.signing_cert_url,
                "the SNS signing certificate is not in feedback.webhooks.ses_cert_dir (or expired)"
            );
            Refusal::forbidden("ses-cert-not-trusted")
        })?;
        let signature = STANDARD
            .decode(sns.signature.trim())
            .map_err(|_| Refusal::forbidden("ses-bad-signature"))?;
        UnparsedPublicKey::new(algorithm, public_key)
            .verify(canonical(sns).as_bytes(), &signature)
            .map_err(|_| Refusal::forbidden("ses-bad-signature"))
    }

    /// The public key of the trusted certificate `file`, if it is there, readable and current.
    fn public_key(&self, file: &str) -> Option<Vec<u8>> {
        use std::io::Read as _;
        let mut pem = Vec::new();
        std::fs::File::open(self.cert_dir.join(file))
            .ok()?
            .take(MAX_CERT_BYTES)
            .read_to_end(&mut pem)
            .ok()?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let certificate = pem.parse_x509().ok()?;
        certificate
            .validity()
            .is_valid()
            .then(|| certificate.public_key().raw.to_vec())
    }

    fn read(&self, notification: Notification) -> Vec<Report> {
        let message = notification
            .mail
            .and_then(|mail| mail.common_headers)
            .and_then(|headers| campaign_and_user(&headers.message_id, &self.message_domain))
            .map(|(campaign, user)| About::Message { campaign, user });
        let (reason, recipients, kind) = match notification.notification_type.as_str() {
            "Bounce" => {
                let Some(bounce) = notification.bounce else {
                    return Vec::new();
                };
                let reason = match bounce.bounce_type.as_str() {
                    "Permanent" => Reason::HardBounce,
                    _ => Reason::SoftBounce,
                };
                let kind = format!("{} {}", bounce.bounce_type, bounce.bounce_sub_type);
                (reason, bounce.bounced_recipients, kind)
            }
            "Complaint" => {
                let Some(complaint) = notification.complaint else {
                    return Vec::new();
                };
                (
                    Reason::Complaint,
                    complaint.complained_recipients,
                    complaint.complaint_feedback_type,
                )
            }
            _ => return Vec::new(),
        };
        let detail = |recipient: &Recipient| {
            super::report_fields::without_addresses(&format!(
                "{kind} {} {}",
                recipient.status, recipient.diagnostic_code
            ))
        };
        match message {
            // One email goes to one recipient.
            Some(about) => recipients
                .first()
                .map(|recipient| Report {
                    reason,
                    about,
                    source: Source::Ses,
                    detail: detail(recipient),
                })
                .into_iter()
                .collect(),
            None => recipients
                .iter()
                .filter_map(|recipient| {
                    Some(Report {
                        reason,
                        about: About::Address(EmailAddress::parse(&recipient.email_address).ok()?),
                        source: Source::Ses,
                        detail: detail(recipient),
                    })
                })
                .collect(),
        }
    }
}

/// The certificate's file name, if `url` is https on an SNS host (`sns.<region>.amazonaws.com`,
/// or `.com.cn`) and ends in a plain `.pem` file name.
fn cert_file_name(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/')?;
    let region = host
        .strip_prefix("sns.")?
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_prefix("sns.")?.strip_suffix(".amazonaws.com.cn"))?;
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let file = path.rsplit('/').next()?;
    let file_ok = file.ends_with(".pem")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !file.starts_with('.');
    (region_ok && file_ok && !path.contains('?') && !path.contains("..")).then(|| file.to_string())
}

/// The string SNS signs: each present field of the message type, `Name\nvalue\n`, in order.
fn canonical(sns: &SnsMessage) -> String {
    let fields: Vec<(&str, Option<&str>)> = if sns.r#type == "Notification" {
        vec![
            ("Message", Some(&sns.message)),
            ("MessageId", Some(&sns.message_id)),
            ("Subject", sns.subject.as_deref()),
            ("Timestamp", Some(&sns.timestamp)),
            ("TopicArn", Some(&sns.topic_arn)),
            ("Type", Some(&sns.r#type)),
        ]
    } else {
        vec![
            ("Message", Some(&sns.message)),
            ("MessageId", Some(&sns.message_id)),
            ("SubscribeURL", sns.subscribe_url.as_deref()),
            ("Timestamp", Some(&sns.timestamp)),
            ("Token", sns.token.as_deref()),
            ("TopicArn", Some(&sns.topic_arn)),
            ("Type", Some(&sns.r#type)),
        ]
    };
    let mut out = String::new();
    for (name, value) in fields {
        if let Some(value) = value {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_sns_hosts_and_plain_pem_names_are_trusted() {
        assert_eq!(
            cert_file_name("https://sns.us-west-2.amazonaws.com/SimpleNotificationService-a86cb10b4e1f29c941702d737128f7b6.pem").as_deref(),
            Some("SimpleNotificationService-a86cb10b4e1f29c941702d737128f7b6.pem")
        );
        assert!(cert_file_name("https://sns.cn-north-1.amazonaws.com.cn/x.pem").is_some());
        for bad in [
            "http://sns.us-west-2.amazonaws.com/x.pem",
            "https://sns.us-west-2.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-west-2.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us-west-2.amazonaws.com/x.crt",
            "https://sns.us-west-2.amazonaws.com/../x.pem",
            "https://sns.us-west-2.amazonaws.com/.pem",
            "https://sns.us-west-2.amazonaws.com/x.pem?y",
        ] {
            assert_eq!(cert_file_name(bad), None, "{bad}");
        }
    }
}
