//! The email channel against a real SMTP server (and a silent one), and the `.eml` outbox.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pipelining_smtp::{FinalReply, PipeliningSmtp};
use common::smtp_sink::SmtpSink;
use common::{TestEnv, campaign_args, unique};
use mail_parser::MimeHeaders;
use sunset::Direction;
use sunset::batch::{CampaignId, EmailAddress, Recipient, UserId};
use sunset::channel::email::EmailSender;
use sunset::channel::{Delivery, Outcome, Sender};
use sunset::config::{EmailConfig, EmailTransport, FeedbackConfig};
use sunset::render::{EmailNotice, Notice};

const CAMPAIGN: &str = "xiami-shutdown-2021";

fn campaign() -> CampaignId {
    CampaignId::parse(CAMPAIGN).expect("valid campaign id")
}

fn recipient(user_id: &str, email: &str, name: Option<&str>) -> Recipient {
    Recipient {
        user_id: UserId::parse(user_id).expect("valid user id"),
        email: Some(EmailAddress::parse(email).expect("valid address")),
        locale: None,
        name: name.map(str::to_string),
        vars: Default::default(),
    }
}

fn notice(locale: &str, dir: Direction, subject: &str) -> Notice {
    Notice {
        locale: locale.to_string(),
        dir,
        email: Some(EmailNotice {
            subject: subject.to_string(),
            text: format!("{subject}\n\nنص — 正文 — text"),
            html: format!("<p dir=\"{}\">{subject}</p>", dir.as_str()),
            from_name: None,
            list_unsubscribe: false,
        }),
        push: None,
    }
}

fn arabic() -> Notice {
    notice("ar", Direction::Rtl, "سيتوقف شيامي عن العمل")
}

fn smtp_config(url: &str, pool_size: u32, timeout_ms: u64) -> EmailConfig {
    EmailConfig {
        transport: EmailTransport::Smtp,
        url: url.to_string(),
        from: "Xiami Music <noreply@xiami.example>".into(),
        pool_size,
        timeout_ms,
        ..EmailConfig::default()
    }
}

/// An SMTP config with `timeout_ms` for connect and commands and `final_reply_ms` for the
/// reply to the final `.`.
fn patient_config(url: &str, timeout_ms: u64, final_reply_ms: u64) -> EmailConfig {
    EmailConfig {
        final_reply_timeout_ms: final_reply_ms,
        ..smtp_config(url, 1, timeout_ms)
    }
}

fn relay(url: &str) -> EmailSender {
    EmailSender::from_config(&smtp_config(url, 4, 5_000), &FeedbackConfig::default())
        .expect("valid email config")
}

async fn send(sender: &EmailSender, recipient: &Recipient, notice: &Notice) -> Outcome {
    let campaign_id = campaign();
    sender
        .send(Delivery {
            campaign_id: &campaign_id,
            recipient,
            notice,
        })
        .await
}

/// Sends the Arabic notice to `n` recipients at once; asserts every one was delivered.
async fn send_all_delivered(sender: &EmailSender, n: usize) {
    let recipients: Vec<Recipient> = (0..n)
        .map(|i| recipient(&format!("u-{i}"), &format!("user{i}@example.com"), None))
        .collect();
    let notice = arabic();
    let outcomes =
        futures::future::join_all(recipients.iter().map(|r| send(sender, r, &notice))).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
}

/// A 127.0.0.1 port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn trimmed(value: Option<&str>) -> Option<&str> {
    value.map(str::trim)
}

#[tokio::test]
async fn a_notice_sent_by_smtp_arrives_once_as_utf8_multipart_alternative() {
    // Arrange
    let sink = SmtpSink::start();
    let sender = relay(&sink.url());
    let layla = recipient("u-1001", "layla@example.com", Some("ليلى"));
    let wei = recipient("u-1002", "wei@example.com", Some("王伟"));
    let chinese = notice("zh-Hant", Direction::Ltr, "蝦米音樂即將停止服務");

    // Act
    let outcomes = [
        send(&sender, &layla, &arabic()).await,
        send(&sender, &wei, &chinese).await,
    ];

    // Assert
    assert_eq!(outcomes, [Outcome::Delivered, Outcome::Delivered]);
    let messages = sink.wait_for_async(2, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 2, "each notice arrives once");
    assert_eq!(messages[0].to, ["layla@example.com"]);
    assert_eq!(messages[0].from, "noreply@xiami.example");
    let cases = [
        (
            &messages[0],
            "u-1001",
            "ar",
            "ليلى",
            "سيتوقف شيامي عن العمل",
        ),
        (
            &messages[1],
            "u-1002",
            "zh-Hant",
            "王伟",
            "蝦米音樂即將停止服務",
        ),
    ];
    for (received, user, locale, name, subject) in cases {
        let raw = received.text();
        let email = received.parsed();
        assert_eq!(email.subject(), Some(subject));
        assert!(
            raw.lines().all(|line| line.is_ascii()),
            "8-bit-clean: {raw}"
        );
        let content_type = email.content_type().expect("content type");
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("alternative"))
        );
        let plain = raw.find("text/plain; charset=utf-8").expect("text part");
        let html = raw.find("text/html; charset=utf-8").expect("html part");
        assert!(plain < html, "text before HTML");
        assert!(email.body_text(0).expect("text body").contains("正文"));
        assert!(email.body_html(0).expect("html body").contains(subject));
        let message_id = format!("{CAMPAIGN}.{user}@xiami.example");
        assert_eq!(email.message_id(), Some(message_id.as_str()));
        assert_eq!(trimmed(email.header_raw("Content-Language")), Some(locale));
        assert_eq!(
            trimmed(email.header_raw("X-Sunset-Campaign")),
            Some(CAMPAIGN)
        );
        assert!(email.date().is_some(), "has a Date");
        let to = email.to().and_then(|to| to.first()).expect("To");
        // Isolated (FSI…PDI): a name in another script than the client's keeps its order.
        let isolated = format!("\u{2068}{name}\u{2069}");
        assert_eq!(to.name(), Some(isolated.as_str()));
        let from = email.from().and_then(|from| from.first()).expect("From");
        assert_eq!(
            (from.name(), from.address()),
            (Some("Xiami Music"), Some("noreply@xiami.example"))
        );
    }
}

#[tokio::test]
async fn line_breaks_in_names_and_subjects_cannot_add_headers() {
    let sink = SmtpSink::start();
    let sender = relay(&sink.url());
    let sneaky = recipient(
        "u-1",
        "li@example.com",
        Some("Li\r\nBcc: victim@example.org"),
    );
    let notice = notice("en", Direction::Ltr, "Hello\r\nBcc: victim@example.org");

    let outcome = send(&sender, &sneaky, &notice).await;

    assert_eq!(outcome, Outcome::Delivered);
    let messages = sink.wait_for_async(1, Duration::from_secs(5)).await;
    assert_eq!(messages[0].to, ["li@example.com"]);
    let email = messages[0].parsed();
    assert!(email.header_raw("Bcc").is_none(), "{}", messages[0].text());
    assert_eq!(email.subject(), Some("Hello  Bcc: victim@example.org"));
}

#[tokio::test]
async fn a_550_for_one_recipient_is_permanent_for_that_one_only() {
    // Arrange
    let sink = SmtpSink::start();
    sink.reject("gone@example.com", 550);
    let sender = relay(&sink.url());
    let gone = recipient("u-1", "gone@example.com", None);
    let here = recipient("u-2", "here@example.com", None);

    // Act
    let refused = send(&sender, &gone, &arabic()).await;
    let delivered = send(&sender, &here, &arabic()).await;

    // Assert
    match refused {
        Outcome::Permanent { reason } => {
            assert!(reason.contains("550"), "{reason}");
            assert!(reason.contains("Mailbox unavailable"), "{reason}");
        }
        other => panic!("expected permanent, got {other:?}"),
    }
    assert_eq!(delivered, Outcome::Delivered);
    let messages = sink.wait_for_async(1, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, ["here@example.com"]);
}

#[tokio::test]
async fn a_451_is_transient_and_keeps_the_wait_the_relay_asks_for() {
    let sink = SmtpSink::start();
    sink.reject_with(
        "busy@example.com",
        451,
        "4.7.1 Greylisted, please try again in 120 seconds",
    );
    sink.reject_with("li@163.com", 451, "DT:SPM 163 smtp14, please try again");
    let sender = relay(&sink.url());

    let greylisted = send(
        &sender,
        &recipient("u-1", "busy@example.com", None),
        &arabic(),
    )
    .await;
    let netease = send(&sender, &recipient("u-2", "li@163.com", None), &arabic()).await;

    match greylisted {
        Outcome::Transient {
            reason,
            retry_after,
            throttled,
        } => {
            assert!(reason.starts_with("451"), "{reason}");
            assert!(reason.contains("try again in 120 seconds"), "{reason}");
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
            assert!(!throttled, "greylisting is not throttling");
        }
        other => panic!("expected transient, got {other:?}"),
    }
    assert!(
        matches!(netease, Outcome::Transient { retry_after: Some(wait), throttled: true, .. } if wait == Duration::from_secs(120)),
        "{netease:?}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_4xx_that_says_we_are_too_fast_is_throttled_and_other_4xx_are_not() {
    // Arrange
    let sink = SmtpSink::start();
    let replies = [
        (
            "fast@qq.com",
            421,
            "4.7.0 Too many connections, slow down",
            true,
        ),
        (
            "rate@example.com",
            451,
            "4.7.1 Rate limit exceeded, try again later",
            true,
        ),
        (
            "busy@outlook.example",
            451,
            "4.7.500 Server busy. Please try again later",
            true,
        ),
        (
            "quota@example.com",
            452,
            "4.7.0 Ratelimit: sending quota exceeded",
            true,
        ),
        (
            "down@example.com",
            421,
            "4.3.0 Service not available, closing transmission channel",
            false,
        ),
        (
            "full@example.com",
            452,
            "4.2.2 Mailbox full, over quota",
            false,
        ),
        (
            "grey@example.com",
            451,
            "4.7.1 Greylisted, please try again later",
            false,
        ),
    ];
    for (address, code, text, _) in replies {
        sink.reject_with(address, code, text);
    }
    let sender = relay(&sink.url());

    for (n, (address, code, text, expected)) in replies.into_iter().enumerate() {
        // Act
        let outcome = send(
            &sender,
            &recipient(&format!("u-{n}"), address, None),
            &arabic(),
        )
        .await;

        // Assert
        match outcome {
            Outcome::Transient {
                reason, throttled, ..
            } => {
                assert!(reason.starts_with(&code.to_string()), "{reason}");
                assert_eq!(throttled, expected, "{code} {text}");
            }
            other => panic!("{code} {text}: expected transient, got {other:?}"),
        }
    }
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let sender = relay(&format!("smtp://127.0.0.1:{}", free_port()));

    let outcome = send(
        &sender,
        &recipient("u-1", "li@example.com", None),
        &arabic(),
    )
    .await;

    match outcome {
        Outcome::Unreachable { reason } => {
            assert!(reason.contains("cannot connect"), "{reason}");
            assert!(reason.contains("127.0.0.1:"), "names the relay: {reason}");
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_that_never_greets_is_unreachable_within_the_timeout() {
    // Arrange: accepts connections and holds them without a greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = smtp_config(&format!("smtp://127.0.0.1:{port}"), 2, 300);
    let sender =
        EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");
    let started = Instant::now();

    // Act
    let outcome = send(
        &sender,
        &recipient("u-1", "li@example.com", None),
        &arabic(),
    )
    .await;

    // Assert
    let elapsed = started.elapsed();
    match outcome {
        Outcome::Unreachable { reason } => assert!(reason.contains("300 ms"), "{reason}"),
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn required_tls_against_a_relay_without_it_is_unreachable() {
    let sink = SmtpSink::start();
    let starttls = relay(&format!("{}?tls=required", sink.url()));
    let implicit = relay(&format!("smtps://127.0.0.1:{}", sink.port()));
    let li = recipient("u-1", "li@example.com", None);

    let outcomes = [
        send(&starttls, &li, &arabic()).await,
        send(&implicit, &li, &arabic()).await,
    ];

    let reasons = outcomes.map(|outcome| match outcome {
        Outcome::Unreachable { reason } => reason,
        other => panic!("expected unreachable, got {other:?}"),
    });
    assert!(reasons[0].contains("STARTTLS"), "{}", reasons[0]);
    assert!(reasons[1].contains("SMTP session failed"), "{}", reasons[1]);
    assert!(sink.messages().is_empty(), "nothing sent in clear text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_never_opens_more_connections_than_its_size() {
    // Arrange
    let sink = SmtpSink::start();
    let config = smtp_config(&sink.url(), 4, 10_000);
    let sender =
        EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");

    // Act, and assert every send was delivered
    send_all_delivered(&sender, 50).await;

    // Assert
    assert_eq!(
        sink.wait_for_async(50, Duration::from_secs(5)).await.len(),
        50
    );
    let sessions = sink.sessions();
    assert!((1..=4).contains(&sessions), "{sessions} connections opened");
}

#[tokio::test]
async fn sequential_sends_reuse_one_connection_and_replace_a_failed_one() {
    let sink = SmtpSink::start();
    sink.reject("gone@example.com", 550);
    let sender = relay(&sink.url());

    for i in 0..5 {
        let outcome = send(
            &sender,
            &recipient(&format!("u-{i}"), "li@example.com", None),
            &arabic(),
        )
        .await;
        assert_eq!(outcome, Outcome::Delivered);
    }
    assert_eq!(sink.sessions(), 1, "one connection carries many messages");

    let refused = send(
        &sender,
        &recipient("u-9", "gone@example.com", None),
        &arabic(),
    )
    .await;
    let after = send(
        &sender,
        &recipient("u-10", "li@example.com", None),
        &arabic(),
    )
    .await;

    assert!(matches!(refused, Outcome::Permanent { .. }), "{refused:?}");
    assert_eq!(after, Outcome::Delivered);
    assert_eq!(
        sink.sessions(),
        2,
        "the connection that saw an error was not reused"
    );
    sender.close().await;
}

#[tokio::test]
async fn the_file_transport_writes_one_eml_per_recipient_and_rewrites_on_rerun() {
    // Arrange
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = dir.path().join("outbox").join("email");
    let config = EmailConfig {
        transport: EmailTransport::File,
        outbox: outbox.clone(),
        ..EmailConfig::default()
    };
    let sender =
        EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");
    let layla = recipient("u-1001", "layla@example.com", Some("ليلى"));
    let odd = recipient("../odd id/名", "odd@example.com", None);

    // Act
    let first = [
        send(&sender, &layla, &arabic()).await,
        send(&sender, &odd, &arabic()).await,
    ];
    let rerun = send(&sender, &layla, &arabic()).await;

    // Assert
    assert_eq!(first, [Outcome::Delivered, Outcome::Delivered]);
    assert_eq!(rerun, Outcome::Delivered);
    let files = files_in(&outbox);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.iter().all(|f| f.ends_with(".eml")),
        "no temp files left: {files:?}"
    );
    assert!(
        files.contains(&format!("{CAMPAIGN}.u-1001.eml")),
        "{files:?}"
    );
    let raw = std::fs::read(outbox.join(format!("{CAMPAIGN}.u-1001.eml"))).expect("read eml");
    let email = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("parsable eml");
    assert_eq!(email.subject(), Some("سيتوقف شيامي عن العمل"));
    assert_eq!(
        email.message_id(),
        Some(format!("{CAMPAIGN}.u-1001@xiami.example").as_str())
    );
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("outbox exists")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_notice_without_email_parts_or_a_recipient_without_address_is_permanent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EmailConfig {
        outbox: dir.path().to_path_buf(),
        ..EmailConfig::default()
    };
    let sender =
        EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");
    let mut no_address = recipient("u-1", "li@example.com", None);
    no_address.email = None;
    let mut push_only = arabic();
    push_only.email = None;

    let outcomes = [
        send(&sender, &no_address, &arabic()).await,
        send(
            &sender,
            &recipient("u-2", "li@example.com", None),
            &push_only,
        )
        .await,
    ];

    assert_eq!(
        outcomes,
        [
            Outcome::permanent("recipient has no email address"),
            Outcome::permanent("no email part rendered"),
        ]
    );
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn a_bad_from_url_or_pool_size_is_a_config_error_naming_the_key() {
    let cases = [
        (
            EmailConfig {
                from: "not a mailbox".into(),
                ..EmailConfig::default()
            },
            "email.from",
        ),
        (smtp_config("http://127.0.0.1:25", 4, 1000), "email.url"),
        (
            smtp_config("smtp://u:secret@127.0.0.1:25", 4, 1000),
            "email.url",
        ),
        (
            smtp_config("smtp://127.0.0.1:25", 0, 1000),
            "email.pool_size",
        ),
    ];
    for (config, key) in cases {
        let error = EmailSender::from_config(&config, &FeedbackConfig::default()).expect_err(key);
        let text = error.to_string();
        assert!(text.contains(key), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

#[tokio::test]
async fn sequential_sends_do_not_stall_on_nagle() {
    // lettre writes the final `\r\n.\r\n` separately; without TCP_NODELAY each message waits
    // ~40 ms for the relay's delayed ACK, so 100 messages would take over 4 s.
    let sink = SmtpSink::start();
    let sender = relay(&sink.url());
    let li = recipient("u-1", "li@example.com", None);
    let notice = arabic();
    assert_eq!(send(&sender, &li, &notice).await, Outcome::Delivered);
    let started = Instant::now();

    for _ in 0..100 {
        assert_eq!(send(&sender, &li, &notice).await, Outcome::Delivered);
    }

    let elapsed = started.elapsed();
    eprintln!("100 sequential messages on one connection: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2_500), "{elapsed:?}");
    assert_eq!(sink.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_offers_pipelining_gets_mail_rcpt_and_data_in_one_write() {
    // Arrange
    let server = PipeliningSmtp::start().await;
    let sender = relay(&server.url());

    // Act, and assert every send was delivered
    send_all_delivered(&sender, 30).await;

    // Assert
    let delivered = server.wait_for(30, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 30);
    for (i, transaction) in delivered.iter().enumerate() {
        assert_eq!(
            transaction.reads_to_data, 1,
            "transaction {i} was not pipelined"
        );
    }
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|t| {
            let message = mail_parser::MessageParser::default()
                .parse(t.data.as_bytes())
                .expect("a parsable message");
            assert_eq!(
                message.subject(),
                Some("سيتوقف شيامي عن العمل"),
                "the message arrived whole"
            );
            message.message_id().expect("Message-ID").to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each message once");
    assert!(
        (1..=4).contains(&server.sessions()),
        "{}",
        server.sessions()
    );
    sender.close().await;
}

#[tokio::test]
async fn a_refused_recipient_on_a_pipelined_session_is_permanent_for_that_one_only() {
    let server = PipeliningSmtp::start().await;
    server.refuse("gone@example.com");
    let sender = relay(&server.url());

    let before = send(
        &sender,
        &recipient("u-1", "li@example.com", None),
        &arabic(),
    )
    .await;
    let refused = send(
        &sender,
        &recipient("u-2", "gone@example.com", None),
        &arabic(),
    )
    .await;
    let after = send(
        &sender,
        &recipient("u-3", "wang@example.com", None),
        &arabic(),
    )
    .await;

    assert_eq!(before, Outcome::Delivered);
    match refused {
        Outcome::Permanent { reason } => assert!(reason.contains("550"), "{reason}"),
        other => panic!("expected permanent, got {other:?}"),
    }
    assert_eq!(after, Outcome::Delivered);
    let delivered = server.wait_for(2, Duration::from_secs(5)).await;
    let to: Vec<&str> = delivered.iter().map(|t| t.to[0].as_str()).collect();
    assert_eq!(to, ["li@example.com", "wang@example.com"]);
    // The refused transaction's `DATA` was answered 554 and never sent a message.
    assert_eq!(server.transactions().len(), 3);
    assert_eq!(
        server.sessions(),
        2,
        "the session that saw a refusal was not reused"
    );
    sender.close().await;
}

#[tokio::test]
async fn a_final_reply_after_the_command_timeout_but_within_the_final_reply_timeout_is_delivered_once()
 {
    // Arrange: commands may take 1 s; this relay takes 3 s to accept a message.
    let server = PipeliningSmtp::start().await;
    let accepting = Duration::from_secs(3);
    server.answer_final_dot(FinalReply::After(accepting));
    let config = patient_config(&server.url(), 1_000, 30_000);
    let sender =
        EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");
    let started = Instant::now();

    // Act
    let outcome = send(
        &sender,
        &recipient("u-1", "li@example.com", None),
        &arabic(),
    )
    .await;

    // Assert
    assert_eq!(outcome, Outcome::Delivered);
    assert!(started.elapsed() >= accepting, "{:?}", started.elapsed());
    assert_eq!(server.delivered().len(), 1, "one email");
    assert_eq!(server.sessions(), 1, "no second attempt");
    sender.close().await;
}

#[tokio::test]
async fn a_relay_that_never_answers_the_final_dot_or_hangs_up_leaves_the_outcome_unknown_after_one_email()
 {
    for (final_reply, pipelining) in [
        (FinalReply::Never, true),
        (FinalReply::Never, false),
        (FinalReply::HangUp, true),
        (FinalReply::HangUp, false),
    ] {
        // Arrange: commands may take 10 s, the reply to the final `.` 300 ms.
        let server = if pipelining {
            PipeliningSmtp::start().await
        } else {
            PipeliningSmtp::start_plain().await
        };
        server.answer_final_dot(final_reply);
        let config = patient_config(&server.url(), 10_000, 300);
        let sender =
            EmailSender::from_config(&config, &FeedbackConfig::default()).expect("valid config");
        let started = Instant::now();

        // Act
        let outcome = send(
            &sender,
            &recipient("u-1", "li@example.com", None),
            &arabic(),
        )
        .await;

        // Assert
        let case = format!("{final_reply:?}, pipelining {pipelining}");
        match &outcome {
            Outcome::Unknown { reason } => {
                assert!(reason.contains("handed over"), "{case}: {reason}");
                if matches!(final_reply, FinalReply::Never) {
                    assert!(reason.contains("300 ms"), "{case}: {reason}");
                }
            }
            other => panic!("{case}: expected unknown, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{case}: the final-reply timeout applies after the handover, not the command one"
        );
        assert_eq!(server.delivered().len(), 1, "{case}: one email");
        assert_eq!(server.sessions(), 1, "{case}: no second attempt");
    }
}

#[tokio::test]
async fn after_an_unknown_outcome_the_next_send_takes_a_new_connection_and_is_delivered() {
    let server = PipeliningSmtp::start().await;
    server.answer_final_dot(FinalReply::Never);
    let sender = EmailSender::from_config(
        &patient_config(&server.url(), 10_000, 300),
        &FeedbackConfig::default(),
    )
    .expect("valid config");
    let first = send(
        &sender,
        &recipient("u-1", "li@example.com", None),
        &arabic(),
    )
    .await;
    server.answer_final_dot(FinalReply::Now);

    let second = send(
        &sender,
        &recipient("u-2", "wang@example.com", None),
        &arabic(),
    )
    .await;

    assert!(matches!(first, Outcome::Unknown { .. }), "{first:?}");
    assert_eq!(second, Outcome::Delivered);
    assert_eq!(server.delivered().len(), 2);
    assert_eq!(
        server.sessions(),
        2,
        "the unanswered connection was not reused"
    );
    sender.close().await;
}

#[test]
fn a_zero_or_absurd_final_reply_timeout_is_a_config_error_naming_the_key() {
    for final_reply_ms in [0, 24 * 3600 * 1000 + 1, u64::MAX] {
        let config = patient_config("smtp://127.0.0.1:25", 1_000, final_reply_ms);
        let error =
            EmailSender::from_config(&config, &FeedbackConfig::default()).expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("email.final_reply_timeout_ms"), "{text}");
    }
    let longest = patient_config("smtp://127.0.0.1:25", 1_000, 24 * 3600 * 1000);
    assert!(EmailSender::from_config(&longest, &FeedbackConfig::default()).is_ok());
}

#[test]
fn a_zero_final_reply_timeout_stops_the_worker_with_exit_2() {
    let env = TestEnv::new();
    env.write_config(
        "[templates]\ndir = \"templates\"\n\
         [email]\ntransport = \"smtp\"\nfinal_reply_timeout_ms = 0\n\
         [ledger]\nurl = \"\"\n",
    );

    let run = env.sunset(&["worker", "--exit-when-idle"]).expect_code(2);

    assert!(
        run.stderr().contains("email.final_reply_timeout_ms"),
        "{}",
        run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_sends_an_email_with_no_final_reply_once_and_dead_letters_it_without_retrying() {
    // Arrange: a relay that never answers the final `.`; retries would come after 100 ms.
    let server = PipeliningSmtp::start().await;
    server.answer_final_dot(FinalReply::Never);
    let env = TestEnv::with_broker(&format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\nfinal_reply_timeout_ms = 300\n\
         [worker]\nmax_attempts = 3\nretry_delays_ms = [100]\n\
         [rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n",
        server.url()
    ));
    env.write(
        "audience.csv",
        "user_id,email,locale,name\nu-1,li@example.com,en-US,Li\n",
    );
    let campaign = unique("unknown");
    env.sunset_async(&campaign_args(
        "enqueue",
        &campaign,
        &["--channels", "email"],
    ))
    .await
    .expect_code(0);

    // Act
    env.sunset_async(&["worker", "--exit-when-idle"])
        .await
        .expect_code(0);

    // Assert
    assert_eq!(
        server.delivered().len(),
        1,
        "one email written to the relay"
    );
    assert_eq!(server.sessions(), 1, "no retry");
    let listed = env
        .sunset_async(&["dlq", "list", "--json"])
        .await
        .expect_code(0)
        .stdout();
    let letter: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one line")).expect("json");
    assert_eq!(letter["failures"][0]["kind"], "unknown", "{listed}");
    let status = env
        .sunset_async(&["status", "--campaign", &campaign, "--json"])
        .await
        .expect_code(0)
        .stdout();
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["total"]["unknown"], 1, "{status}");
    assert_eq!(status["total"]["dead"], 0, "{status}");
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let batch = sunset::batch::Batch::decode(&letters[0].0).expect("a batch");
    assert_eq!(batch.failures.len(), 1);
    assert_eq!(batch.failures[0].channel, sunset::Channel::Email);
    assert!(
        batch.failures[0].error.contains("handed over"),
        "{}",
        batch.failures[0].error
    );
}
