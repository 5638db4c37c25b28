//! Outgoing deliverability headers through a real SMTP server and the `.eml` outbox: the VERP
//! envelope sender, `List-Unsubscribe` with one-click, the sender name per locale (and no
//! header injection through it), and the config and template errors around them.

mod common;

use std::fs;
use std::time::Duration;

use common::smtp_sink::SmtpSink;
use common::{FEEDBACK_KEY_FILE, TestEnv, campaign_args, recipient, shipped_notice};
use mail_parser::{Address, HeaderValue};
use sunset::TokenKey;
use sunset::batch::{CampaignId, Recipient, UserId};
use sunset::channel::email::EmailSender;
use sunset::channel::{Channel, Delivery, Outcome, Sender};
use sunset::config::{EmailConfig, EmailTransport, FeedbackConfig};
use sunset::render::{Renderer, TemplateName};

const CAMPAIGN: &str = "xiami-2026";

fn feedback(env: &TestEnv) -> FeedbackConfig {
    FeedbackConfig {
        secret_file: env.path().join(FEEDBACK_KEY_FILE),
        bounce_domain: "bounces.xiami.example".into(),
        public_url: "https://notices.xiami.example/".into(),
        ..FeedbackConfig::default()
    }
}

/// The token sunset makes for `user` with the test folder's key.
fn token(env: &TestEnv, user: &str) -> String {
    TokenKey::load(&env.path().join(FEEDBACK_KEY_FILE))
        .expect("key")
        .token(
            &CampaignId::parse(CAMPAIGN).expect("id"),
            &UserId::parse(user).expect("id"),
            Channel::Email,
        )
        .to_string()
}

/// The shipped notice, copied into the test folder with `list_unsubscribe = true` in its
/// `template.toml` (the shipped one is a legal notice without it).
fn unsubscribing_notice(env: &TestEnv) -> Renderer {
    fs::write(
        env.template_file("template.toml"),
        "list_unsubscribe = true\n",
    )
    .expect("write template.toml");
    Renderer::load(
        &env.templates(),
        &TemplateName::parse("xiami-shutdown").expect("name"),
        "en",
    )
    .expect("loads")
}

/// Renders the shipped notice for `recipient` and sends it with `sender`.
async fn send_shipped(renderer: &Renderer, sender: &EmailSender, recipient: &Recipient) -> Outcome {
    let (_, sample) = shipped_notice();
    let notice = renderer
        .render(&sample.vars, recipient, &[Channel::Email])
        .expect("renders");
    sender
        .send(Delivery {
            campaign_id: &CampaignId::parse(CAMPAIGN).expect("id"),
            recipient,
            notice: &notice,
        })
        .await
}

fn from_name<'a>(email: &'a mail_parser::Message<'a>) -> (Option<&'a str>, Option<&'a str>) {
    match email.from() {
        Some(Address::List(list)) => (list[0].name.as_deref(), list[0].address.as_deref()),
        other => panic!("one From mailbox: {other:?}"),
    }
}

#[tokio::test]
async fn verp_sender_list_unsubscribe_and_the_locales_sender_name_arrive_by_smtp() {
    // Arrange
    let env = TestEnv::new();
    let sink = SmtpSink::start();
    let email = EmailConfig {
        transport: EmailTransport::Smtp,
        url: sink.url(),
        ..EmailConfig::default()
    };
    let sender = EmailSender::from_config(&email, &feedback(&env)).expect("valid config");
    let renderer = unsubscribing_notice(&env);
    let cases = [
        ("u-ar", "layla@example.com", "ar", "شيامي ميوزك"),
        ("u-zh", "wei@example.com", "zh-CN", "虾米音乐"),
        ("u-hant", "mei@example.com", "zh-TW", "蝦米音樂"),
        ("u-en", "sam@example.com", "en", "Xiami Music"),
    ];

    // Act
    for (user, address, locale, _) in cases {
        let outcome =
            send_shipped(&renderer, &sender, &recipient(user, address, "N", locale)).await;
        assert_eq!(outcome, Outcome::Delivered);
    }
    sender.close().await;

    // Assert
    let messages = sink
        .wait_for_async(cases.len(), Duration::from_secs(10))
        .await;
    assert_eq!(messages.len(), cases.len());
    for (user, address, _, name) in cases {
        let received = sink.messages_to(address).pop().expect("received");
        let token = token(&env, user);
        assert_eq!(received.from, format!("b-{token}@bounces.xiami.example"));
        let email = received.parsed();
        assert_eq!(
            from_name(&email),
            (Some(name), Some("noreply@xiami.example"))
        );
        let list = email
            .header_raw("List-Unsubscribe")
            .expect("List-Unsubscribe")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            list,
            format!(
                "<https://notices.xiami.example/u/{token}>, \
                 <mailto:u-{token}@bounces.xiami.example>"
            )
        );
        assert_eq!(
            email
                .header("List-Unsubscribe-Post")
                .map(HeaderValue::as_text),
            Some(Some("List-Unsubscribe=One-Click"))
        );
    }
}

#[tokio::test]
async fn the_eml_outbox_writes_the_verp_sender_as_return_path() {
    // Arrange
    let env = TestEnv::new();
    let email = EmailConfig {
        transport: EmailTransport::File,
        outbox: env.path().join("outbox"),
        ..EmailConfig::default()
    };
    let sender = EmailSender::from_config(&email, &feedback(&env)).expect("valid config");
    let (renderer, _) = shipped_notice();

    // Act
    let outcome = send_shipped(
        &renderer,
        &sender,
        &recipient("u-1", "layla@example.com", "ليلى", "ar"),
    )
    .await;

    // Assert
    assert_eq!(outcome, Outcome::Delivered);
    let file = fs::read_dir(env.path().join("outbox"))
        .expect("outbox")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    let text = fs::read_to_string(file).expect("read");
    let token = token(&env, "u-1");
    assert!(
        text.starts_with(&format!(
            "Return-Path: <b-{token}@bounces.xiami.example>\r\n"
        )),
        "{text}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .expect("parses");
    assert_eq!(from_name(&parsed).0, Some("شيامي ميوزك"));
}

#[tokio::test]
async fn a_sender_name_read_from_recipient_data_cannot_add_headers() {
    // Arrange: an English sender name that greets with the recipient's name.
    let env = TestEnv::new();
    fs::write(env.template_file("en/from_name.hbs"), "{{name}} at Xiami\n").expect("write");
    let renderer = Renderer::load(
        &env.templates(),
        &TemplateName::parse("xiami-shutdown").expect("name"),
        "en",
    )
    .expect("loads");
    let email = EmailConfig {
        transport: EmailTransport::File,
        outbox: env.path().join("outbox"),
        ..EmailConfig::default()
    };
    let sender = EmailSender::from_config(&email, &feedback(&env)).expect("valid config");
    let hostile = "Eve\r\nBcc: all@evil.example\r\n\r\n<p>x";

    // Act
    let outcome = send_shipped(
        &renderer,
        &sender,
        &recipient("u-1", "eve@example.com", hostile, "en"),
    )
    .await;

    // Assert
    assert_eq!(outcome, Outcome::Delivered);
    let path = fs::read_dir(env.path().join("outbox"))
        .expect("outbox")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    let text = fs::read_to_string(path).expect("read");
    let head = text.split("\r\n\r\n").next().expect("head");
    assert!(
        !head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc")),
        "{head}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .expect("parses");
    assert!(parsed.header("Bcc").is_none());
    assert_eq!(
        from_name(&parsed),
        (
            Some("Eve  Bcc: all@evil.example    <p>x at Xiami"),
            Some("noreply@xiami.example")
        )
    );
}

#[test]
fn feedback_keys_that_do_not_fit_stop_the_worker_with_exit_2_naming_them() {
    let env = TestEnv::new();
    let cases = [
        (
            "[feedback]\nbounce_domain = \"bounces.xiami.example\"\n",
            ["feedback.bounce_domain", "feedback.secret_file"],
        ),
        (
            "[feedback]\nsecret_file = \"feedback.key\"\npublic_url = \"http://notices.xiami.example\"\n",
            ["feedback.public_url", "https"],
        ),
        (
            "[feedback]\nsecret_file = \"feedback.key\"\nbounce_domain = \"bounces xiami\"\n",
            ["feedback.bounce_domain", "bounces xiami"],
        ),
    ];
    for (config, says) in cases {
        env.write_config(&format!("[templates]\ndir = \"templates\"\n{config}"));
        let run = env.sunset(&["worker"]).expect_code(2);
        for words in says {
            assert!(run.stderr().contains(words), "{config}: {}", run.stderr());
        }
    }
}

#[tokio::test]
async fn a_template_asking_for_list_unsubscribe_without_a_key_is_refused_everywhere() {
    // Arrange: a config with a [feedback] section and no secret_file.
    let env = TestEnv::new();
    env.write_config("[templates]\ndir = \"templates\"\n[feedback]\n");
    fs::write(
        env.template_file("template.toml"),
        "list_unsubscribe = true\n",
    )
    .expect("write template.toml");
    env.write(
        "audience.csv",
        "user_id,email,locale\nu-1,a@example.com,en\n",
    );

    // Act + Assert: preview --check, enqueue and send stop before anything is published.
    let check = env.sunset(&["preview", "--check"]).expect_code(2);
    let dry = campaign_args("enqueue", "no-key", &["--dry-run"]);
    let enqueue = env.sunset(&dry).expect_code(2);
    let send = env
        .sunset(&campaign_args("send", "no-key", &[]))
        .expect_code(2);
    for run in [&check, &enqueue, &send] {
        let stderr = run.stderr();
        assert!(stderr.contains("xiami-shutdown/template.toml"), "{stderr}");
        assert!(stderr.contains("feedback.secret_file"), "{stderr}");
    }

    // A worker meeting such a notice fails that email permanently, with the reason.
    let sender = EmailSender::from_config(
        &EmailConfig {
            outbox: env.path().join("outbox"),
            ..EmailConfig::default()
        },
        &FeedbackConfig::default(),
    )
    .expect("valid config");
    let renderer = Renderer::load(
        &env.templates(),
        &TemplateName::parse("xiami-shutdown").expect("name"),
        "en",
    )
    .expect("loads");
    let outcome = send_shipped(
        &renderer,
        &sender,
        &recipient("u-1", "a@example.com", "A", "en"),
    )
    .await;
    let Outcome::Permanent { reason } = outcome else {
        panic!("permanent: {outcome:?}");
    };
    assert!(reason.contains("template.toml"), "{reason}");
    assert!(reason.contains("feedback.secret_file"), "{reason}");
}

#[test]
fn preview_shows_the_locales_sender_name() {
    let env = TestEnv::new();
    let run = env
        .sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--locale",
            "ar",
            "--channel",
            "email",
        ])
        .expect_code(0);
    assert!(
        run.stdout().contains("From: شيامي ميوزك"),
        "{}",
        run.stdout()
    );
    // A locale without the file sends under email.from's name: still a clean check.
    fs::remove_file(env.template_file("en/from_name.hbs")).expect("rm");
    let run = env.sunset(&["preview", "--check"]).expect_code(0);
    assert!(run.stdout().starts_with("ok"), "{}", run.stdout());
}
