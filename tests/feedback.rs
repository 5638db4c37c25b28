//! `sunset feedback` through the binary: its SMTP listener takes DSNs for the bounce domain
//! only, its HTTP listener serves one-click unsubscribe and the providers' webhooks, each
//! verified before anything is recorded, into a real ledger.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use std::sync::Arc;

use common::feedback_service::FeedbackService;
use common::{POSTGRES, TestEnv, scrape, unique, webhook_keys};
use sunset::Channel;
use sunset::batch::{CampaignId, EmailAddress, UserId};
use sunset::ledger::{Entry, Ledger, Mark, Pair};
use sunset::{Token, TokenKey};

/// The token key the tests write to `feedback.secret_file`.
const SECRET: &str = "a feedback key of the tests, long enough";

/// A folder with the shipped templates, a SQLite ledger, the bounce domain `bounces.test` and
/// an owner-only secret file; `extra` appended to `[feedback]`.
fn feedback_env(extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let secret = env.write("secret", SECRET);
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    env.write_config(&format!(
        "[templates]\ndir = \"templates\"\n[ledger]\nurl = \"sqlite://ledger.db\"\n\
         [feedback]\nbounce_domain = \"bounces.test\"\nsecret_file = \"secret\"\n{extra}"
    ));
    env
}

const AUTO_REPLY: &str = "From: someone@users.test\r\nTo: b-0123456789abcdef01234567@bounces.test\r\n\
    Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nAway until Monday.\r\n";

/// Postmark's basic-auth password, which the service reads from `SUNSET_POSTMARK_PASSWORD`
/// (`postmark:s3cret` is `cG9zdG1hcms6czNjcmV0` in the tests' `Authorization` headers).
const POSTMARK_PASSWORD: &str = "s3cret";

/// A [`feedback_env`] with every webhook configured: SES certificates in `certs/`, the
/// SendGrid key, and Postmark's user `postmark` (the password is [`POSTMARK_PASSWORD`]).
fn webhooks_env() -> (TestEnv, webhook_keys::Ses, webhook_keys::SendGrid) {
    let sendgrid = webhook_keys::sendgrid();
    let env = feedback_env(&format!(
        "[feedback.webhooks]\nses_cert_dir = \"certs\"\nsendgrid_public_key = \"{}\"\npostmark_user = \"postmark\"\n",
        sendgrid.public_key
    ));
    let certs = env.path().join("certs");
    fs::create_dir(&certs).expect("mkdir");
    let ses = webhook_keys::ses(&certs);
    (env, ses, sendgrid)
}

#[test]
fn without_a_ledger_feedback_exits_2_naming_the_key() {
    let env = feedback_env("");
    let run = env
        .sunset_with_env(&["feedback"], &[("SUNSET__LEDGER__URL", "")])
        .expect_code(2);
    assert!(run.stderr().contains("ledger.url"), "{}", run.stderr());
}

#[test]
fn a_taken_port_or_a_bad_address_is_refused_naming_the_key() {
    let env = feedback_env("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let run = env
        .sunset_with_env(
            &["feedback"],
            &[
                ("SUNSET__FEEDBACK__SMTP_LISTEN", "127.0.0.1:0"),
                ("SUNSET__FEEDBACK__HTTP_LISTEN", &address),
            ],
        )
        .expect_code(1);
    assert!(
        run.stderr()
            .contains(&format!("{address} (feedback.http_listen)")),
        "{}",
        run.stderr()
    );
    let run = env
        .sunset_with_env(
            &["feedback"],
            &[("SUNSET__FEEDBACK__SMTP_LISTEN", "localhost")],
        )
        .expect_code(2);
    assert!(
        run.stderr()
            .contains("feedback.smtp_listen `localhost` is not host:port"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_shared_secret_file_or_a_webhook_without_its_password_is_a_usage_error() {
    let env = feedback_env("");
    fs::set_permissions(env.path().join("secret"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let run = env.sunset(&["feedback"]).expect_code(2);
    assert!(
        run.stderr().contains("feedback.secret_file"),
        "{}",
        run.stderr()
    );
    let env = feedback_env("[feedback.webhooks]\npostmark_user = \"postmark\"\n");
    let run = env.sunset(&["feedback"]).expect_code(2);
    assert!(
        run.stderr().contains("SUNSET_POSTMARK_PASSWORD"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_smtp_listener_takes_mail_for_the_bounce_domain_only_and_ignores_what_reports_nothing()
{
    let env = feedback_env("");
    let service = FeedbackService::start(&env, &[]);
    let codes = tokio::task::block_in_place(|| {
        service.smtp(
            &["someone@elsewhere.example", "postmaster@BOUNCES.test"],
            AUTO_REPLY,
        )
    });
    // EHLO, MAIL FROM:<>, the refused RCPT, the taken one, the end of DATA.
    assert_eq!(codes, [250, 250, 550, 250, 250]);
    let codes = tokio::task::block_in_place(|| service.smtp(&["x@bounces.test.evil"], AUTO_REPLY));
    assert_eq!(codes, [250, 250, 550]);
    let (status, metrics) = service.request("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(
        scrape::sum(
            &metrics,
            "sunset_feedback_ignored_total",
            &[("why", "not-a-report")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        scrape::sum(
            &metrics,
            "sunset_feedback_refused_total",
            &[("why", "not-the-bounce-domain")]
        ),
        2.0
    );
    assert_eq!(service.request("GET", "/healthz", &[], b"").0, 200);
    let status = service.process.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_routes_refuse_malformed_and_unknown_tokens_and_are_off_without_a_key() {
    let env = feedback_env("");
    let service = FeedbackService::start(&env, &[]);
    let unknown = "/u/0123456789abcdef01234567";
    assert_eq!(service.request("GET", "/u/not-a-token", &[], b"").0, 400);
    assert_eq!(service.request("POST", "/u/not-a-token", &[], b"").0, 400);
    let (status, page) = service.request("GET", unknown, &[], b"");
    assert_eq!(status, 404);
    assert!(page.contains("not valid"), "{page}");
    assert_eq!(
        service
            .request(
                "POST",
                unknown,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"List-Unsubscribe=One-Click"
            )
            .0,
        404
    );
    drop(service);
    let service = FeedbackService::start(&env, &[("SUNSET__FEEDBACK__SECRET_FILE", "")]);
    assert_eq!(service.request("GET", unknown, &[], b"").0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_without_credentials_are_not_there_and_refuse_bad_ones() {
    let env = feedback_env("");
    let service = FeedbackService::start(&env, &[]);
    for route in ["/webhooks/ses", "/webhooks/sendgrid", "/webhooks/postmark"] {
        assert_eq!(service.request("POST", route, &[], b"{}").0, 404, "{route}");
    }
    drop(service);
    let (env, ses, sendgrid) = webhooks_env();
    let service = FeedbackService::start(&env, &[("SUNSET_POSTMARK_PASSWORD", POSTMARK_PASSWORD)]);
    let mut notification = ses.notification(webhook_keys::SES_BOUNCE);
    notification["Message"] = serde_json::Value::String(
        notification["Message"]
            .as_str()
            .unwrap_or_default()
            .replace("Permanent", "Transient"),
    );
    assert_eq!(
        service
            .request(
                "POST",
                "/webhooks/ses",
                &[],
                notification.to_string().as_bytes()
            )
            .0,
        403
    );
    let body = br#"[{"email":"u1@users.test","event":"bounce","type":"bounce"}]"#;
    assert_eq!(
        service.request("POST", "/webhooks/sendgrid", &[], body).0,
        403
    );
    let (signature, timestamp) = sendgrid.sign(b"[]");
    let headers = [
        ("X-Twilio-Email-Event-Webhook-Signature", signature.as_str()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp.as_str()),
    ];
    assert_eq!(
        service
            .request("POST", "/webhooks/sendgrid", &headers, body)
            .0,
        403
    );
    assert_eq!(
        service
            .request("POST", "/webhooks/sendgrid", &headers, b"[]")
            .0,
        200
    );
    let wrong = [("Authorization", "Basic cG9zdG1hcms6d3Jvbmc=")];
    assert_eq!(
        service
            .request("POST", "/webhooks/postmark", &wrong, b"{}")
            .0,
        401
    );
    assert_eq!(
        service.request("POST", "/webhooks/postmark", &[], b"{}").0,
        401
    );
    let (_, metrics) = service.request("GET", "/metrics", &[], b"");
    for why in [
        "ses-bad-signature",
        "sendgrid-unsigned",
        "sendgrid-bad-signature",
        "postmark-bad-credentials",
    ] {
        assert!(
            scrape::sum(&metrics, "sunset_feedback_refused_total", &[("why", why)]) >= 1.0,
            "{why}: {metrics}"
        );
    }
}

/// Emails of one campaign claimed and delivered through the ledger's public API, so that the
/// ledger knows each one's token, as a worker with `feedback.secret_file` leaves it.
struct Delivered {
    ledger: Arc<Ledger>,
    campaign: CampaignId,
}

/// The users the ledger tests deliver to: id, address, locale.
const USERS: [(&str, &str, &str); 5] = [
    ("u-1", "u1@users.test", "en"),
    ("u-2", "u2@users.test", "ar"),
    ("u-3", "u3@users.test", "zh-Hant"),
    ("u-4", "u4@users.test", "en"),
    ("u-5", "u5@users.test", "en"),
];

impl Delivered {
    async fn new(url: &str) -> Delivered {
        let ledger = Ledger::open(url).expect("open the ledger");
        ledger.use_token_key(TokenKey::from_bytes(SECRET.as_bytes()));
        let campaign = CampaignId::parse(&unique("feedback")).expect("campaign");
        let pairs: Vec<Pair> = USERS
            .iter()
            .map(|(user, address, locale)| Pair {
                user_id: UserId::parse(user).expect("user"),
                channel: Channel::Email,
                locale: (*locale).into(),
                address: Some(EmailAddress::parse(address).expect("address")),
            })
            .collect();
        let claims = ledger.claim(&campaign, &pairs).await.expect("claim");
        let entries = pairs
            .into_iter()
            .map(|pair| Entry {
                campaign: campaign.clone(),
                pair,
                mark: Mark::Delivered,
                error: None,
            })
            .collect();
        ledger.record_all(&claims, entries).await.expect("record");
        ledger.finished(claims.token);
        Delivered { ledger, campaign }
    }

    fn token(&self, user: &str) -> Token {
        TokenKey::from_bytes(SECRET.as_bytes()).token(
            &self.campaign,
            &UserId::parse(user).expect("user"),
            Channel::Email,
        )
    }

    fn message_id(&self, user: &str) -> String {
        sunset::channel::email::message_id(
            &self.campaign,
            &UserId::parse(user).expect("user"),
            "xiami.example",
        )
    }

    /// Whether a later campaign may not send to `address`.
    async fn suppressed(&self, address: &str) -> bool {
        let address = EmailAddress::parse(address).expect("address");
        let next = CampaignId::parse(&unique("next")).expect("campaign");
        self.ledger
            .suppressed(&next, &[&address], false)
            .await
            .expect("suppressed")
            .contains(&address)
    }
}

fn sample(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/feedback")
        .join(name);
    fs::read_to_string(path).expect("sample")
}

/// The Postfix DSN sample, about `token`'s recipient.
fn postfix_dsn(token: &Token) -> String {
    sample("postfix-dsn.eml")
        .replace("0123456789abcdef01234567", token.as_str())
        .replace("\r\n", "\n")
}

async fn a_dsn_to_the_verp_address_suppresses_its_recipient(url: &str) {
    let env = feedback_env("");
    let delivered = Delivered::new(url).await;
    let service = FeedbackService::start(&env, &[("SUNSET__LEDGER__URL", url)]);
    let token = delivered.token("u-1");
    let verp = format!("b-{}@bounces.test", token.as_str().to_uppercase());
    let dsn = postfix_dsn(&token);
    let codes = tokio::task::block_in_place(|| service.smtp(&[&verp], &dsn));
    assert_eq!(codes, [250, 250, 250, 250]);
    assert!(delivered.suppressed("u1@users.test").await);
    assert!(!delivered.suppressed("u4@users.test").await);
    // The same DSN again changes nothing and is still taken.
    let codes = tokio::task::block_in_place(|| service.smtp(&[&verp], &dsn));
    assert_eq!(codes, [250, 250, 250, 250]);
    let (_, metrics) = service.request("GET", "/metrics", &[], b"");
    assert_eq!(
        scrape::sum(
            &metrics,
            "sunset_feedback_reports_total",
            &[
                ("source", "dsn"),
                ("reason", "hard-bounce"),
                ("effect", "suppressed")
            ]
        ),
        2.0,
        "{metrics}"
    );
    assert!(!metrics.contains("users.test"), "no address in metrics");
    let status = service.process.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dsn_to_the_verp_address_suppresses_its_recipient_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    a_dsn_to_the_verp_address_suppresses_its_recipient(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dsn_to_the_verp_address_suppresses_its_recipient_on_postgres() {
    a_dsn_to_the_verp_address_suppresses_its_recipient(POSTGRES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_click_unsubscribes_once_and_the_page_speaks_the_recipients_language() {
    let env = feedback_env("");
    let url = format!("sqlite://{}", env.path().join("ledger.db").display());
    let delivered = Delivered::new(&url).await;
    let service = FeedbackService::start(&env, &[]);
    let path = format!("/u/{}", delivered.token("u-2"));
    let (status, page) = service.request("GET", &path, &[], b"");
    assert_eq!(status, 200);
    assert!(page.contains(r#"<html lang="ar" dir="rtl">"#), "{page}");
    assert!(page.contains(r#"<form method="post">"#), "{page}");
    assert!(
        !delivered.suppressed("u2@users.test").await,
        "a GET never unsubscribes"
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    for _ in 0..2 {
        let (status, page) = service.request("POST", &path, &form, b"List-Unsubscribe=One-Click");
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(r#"dir="rtl""#), "{page}");
    }
    assert!(delivered.suppressed("u2@users.test").await);
    // An empty body is a one-click too; the Traditional Chinese page for u-3.
    let path = format!("/u/{}", delivered.token("u-3"));
    let (status, page) = service.request("POST", &path, &[], b"");
    assert_eq!(status, 200);
    assert!(page.contains(r#"lang="zh-Hant""#), "{page}");
    // A token of the same shape that no email carried records nothing.
    let forged = TokenKey::from_bytes(b"another key, not the service's").token(
        &delivered.campaign,
        &UserId::parse("u-4").expect("user"),
        Channel::Email,
    );
    let (status, _) = service.request(
        "POST",
        &format!("/u/{forged}"),
        &form,
        b"List-Unsubscribe=One-Click",
    );
    assert_eq!(status, 404);
    assert!(!delivered.suppressed("u4@users.test").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_webhooks_record_bounces_and_complaints_and_tampered_ones_nothing() {
    let (env, ses, sendgrid) = webhooks_env();
    let url = format!("sqlite://{}", env.path().join("ledger.db").display());
    let delivered = Delivered::new(&url).await;
    let service = FeedbackService::start(&env, &[("SUNSET_POSTMARK_PASSWORD", POSTMARK_PASSWORD)]);

    // SES: a permanent bounce, mapped by the original Message-ID; a tampered copy refused.
    let bounce = webhook_keys::SES_BOUNCE
        .replace("EMAIL", "u1@users.test")
        .replace("MESSAGE_ID", &delivered.message_id("u-1"));
    let mut tampered = ses.notification(&bounce);
    tampered["Message"] = serde_json::Value::String(bounce.replace("u1@", "u4@"));
    assert_eq!(
        service
            .request(
                "POST",
                "/webhooks/ses",
                &[],
                tampered.to_string().as_bytes()
            )
            .0,
        403
    );
    assert!(!delivered.suppressed("u4@users.test").await);
    let signed = ses.notification(&bounce).to_string();
    assert_eq!(
        service
            .request("POST", "/webhooks/ses", &[], signed.as_bytes())
            .0,
        200
    );
    assert!(delivered.suppressed("u1@users.test").await);
    let complaint = webhook_keys::SES_COMPLAINT
        .replace("EMAIL", "u5@users.test")
        .replace("MESSAGE_ID", "<not-ours@elsewhere.example>");
    let signed = ses.notification(&complaint).to_string();
    assert_eq!(
        service
            .request("POST", "/webhooks/ses", &[], signed.as_bytes())
            .0,
        200
    );
    assert!(delivered.suppressed("u5@users.test").await);

    // SendGrid: a spam report by smtp-id, signed over timestamp and body.
    let events = format!(
        r#"[{{"email":"u2@users.test","timestamp":1796493600,"smtp-id":"{}","event":"spamreport","sg_event_id":"x","sg_message_id":"y"}},{{"email":"u2@users.test","event":"open"}}]"#,
        delivered.message_id("u-2")
    );
    let (signature, timestamp) = sendgrid.sign(events.as_bytes());
    let headers = [
        ("X-Twilio-Email-Event-Webhook-Signature", signature.as_str()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp.as_str()),
    ];
    assert_eq!(
        service
            .request("POST", "/webhooks/sendgrid", &headers, events.as_bytes())
            .0,
        200
    );
    assert!(delivered.suppressed("u2@users.test").await);

    // Postmark: a hard bounce behind basic auth.
    let bounce = r#"{"RecordType":"Bounce","MessageStream":"outbound","ID":4323372036854775807,"Type":"HardBounce","TypeCode":1,"Name":"Hard bounce","Tag":"","MessageID":"883953f4-6105-42a2-a16a-77a8eac79483","ServerID":23,"Description":"The server was unable to deliver your message (ex: unknown user, mailbox not found).","Details":"smtp;550 5.1.1 The email account that you tried to reach does not exist.","Email":"u3@users.test","From":"noreply@xiami.example","BouncedAt":"2026-12-05T18:00:00Z","DumpAvailable":true,"Inactive":true,"CanActivate":true,"Subject":"Xiami Music is closing"}"#;
    let wrong = [("Authorization", "Basic cG9zdG1hcms6d3Jvbmc=")];
    assert_eq!(
        service
            .request("POST", "/webhooks/postmark", &wrong, bounce.as_bytes())
            .0,
        401
    );
    assert!(!delivered.suppressed("u3@users.test").await);
    let right = [("Authorization", "Basic cG9zdG1hcms6czNjcmV0")];
    assert_eq!(
        service
            .request("POST", "/webhooks/postmark", &right, bounce.as_bytes())
            .0,
        200
    );
    assert!(delivered.suppressed("u3@users.test").await);
}
