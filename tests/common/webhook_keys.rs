//! Keys and certificates standing in for the email providers' (SNS's signing certificate,
//! SendGrid's webhook key), and webhook requests signed with them.

use std::path::Path;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// An SES bounce notification as AWS documents it (`bounceType` Permanent).
pub const SES_BOUNCE: &str = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General","bouncedRecipients":[{"emailAddress":"EMAIL","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}],"timestamp":"2026-12-05T18:00:00.000Z","feedbackId":"0100017f-aaaa-bbbb-cccc-000000000000-000000","remoteMtaIp":"192.0.2.25","reportingMTA":"dsn; a8-70.smtp-out.amazonses.com"},"mail":{"timestamp":"2026-12-05T17:59:59.000Z","source":"noreply@xiami.example","sourceArn":"arn:aws:ses:us-west-2:123456789012:identity/xiami.example","sourceIp":"192.0.2.10","sendingAccountId":"123456789012","messageId":"0100017f-1234-5678-9abc-def012345678-000000","destination":["EMAIL"],"headersTruncated":false,"commonHeaders":{"from":["Xiami Music <noreply@xiami.example>"],"to":["EMAIL"],"messageId":"MESSAGE_ID","subject":"Xiami Music is closing"}}}"#;

/// An SES complaint notification as AWS documents it.
pub const SES_COMPLAINT: &str = r#"{"notificationType":"Complaint","complaint":{"userAgent":"AnyCompany Feedback Loop (V0.01)","complainedRecipients":[{"emailAddress":"EMAIL"}],"complaintFeedbackType":"abuse","arrivalDate":"2026-12-05T18:05:00.000Z","timestamp":"2026-12-05T18:05:01.000Z","feedbackId":"0100017f-dddd-eeee-ffff-000000000000-000000"},"mail":{"timestamp":"2026-12-05T17:59:59.000Z","source":"noreply@xiami.example","messageId":"0100017f-1234-5678-9abc-def012345679-000000","destination":["EMAIL"],"commonHeaders":{"messageId":"MESSAGE_ID"}}}"#;

pub struct SendGrid {
    key: EcdsaKeyPair,
    /// Base64 DER, as SendGrid shows its verification key.
    pub public_key: String,
}

pub fn sendgrid() -> SendGrid {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("generate");
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .expect("key");
    let public_key = STANDARD.encode(key.public_key().as_der().expect("der").as_ref());
    SendGrid { key, public_key }
}

impl SendGrid {
    /// The signature and timestamp headers' values for `body`.
    pub fn sign(&self, body: &[u8]) -> (String, String) {
        let timestamp = "1796493600".to_string();
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature = self.key.sign(&SystemRandom::new(), &signed).expect("sign");
        (STANDARD.encode(signature.as_ref()), timestamp)
    }
}

pub struct Ses {
    key: RsaKeyPair,
}

/// The SNS certificate's URL and the file it is trusted under.
pub const CERT_URL: &str = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-a86cb10b4e1f29c941702d737128f7b6.pem";

/// A certificate and key standing in for SNS's, the certificate trusted in `cert_dir`.
pub fn ses(cert_dir: &Path) -> Ses {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let cert = rcgen::CertificateParams::new(vec!["sns.amazonaws.com".into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let file = CERT_URL.rsplit('/').next().expect("file name");
    std::fs::write(cert_dir.join(file), cert.pem()).expect("write certificate");
    Ses {
        key: RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("aws-lc key"),
    }
}

impl Ses {
    /// An SNS `Notification` carrying `message`, signed (SignatureVersion 2).
    pub fn notification(&self, message: &str) -> serde_json::Value {
        let mut sns = serde_json::json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:ses-feedback",
            "Message": message,
            "Timestamp": "2026-12-05T18:00:01.000Z",
            "SignatureVersion": "2",
            "SigningCertURL": CERT_URL,
            "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"
        });
        let canonical = format!(
            "Message\n{message}\nMessageId\n{}\nTimestamp\n{}\nTopicArn\n{}\nType\nNotification\n",
            sns["MessageId"].as_str().unwrap_or_default(),
            sns["Timestamp"].as_str().unwrap_or_default(),
            sns["TopicArn"].as_str().unwrap_or_default()
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                canonical.as_bytes(),
                &mut signature,
            )
            .expect("sign");
        sns["Signature"] = serde_json::Value::String(STANDARD.encode(signature));
        sns
    }
}
