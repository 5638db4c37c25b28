//! DKIM: emails sent through sunset's SMTP path to a real SMTP server, each verified by dkimpy
//! (`tests/dkim_verify.py`, an implementation independent of sunset's) against the records
//! `sunset dkim-record` prints; a tampered email fails; bad key files stop the binary with
//! exit 2 naming `email.dkim.key_file`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::smtp_sink::{Received, SmtpSink};
use common::{FEEDBACK_KEY_FILE, TestEnv, campaign_args, recipient};
use sunset::Direction;
use sunset::batch::{CampaignId, Recipient};
use sunset::channel::email::EmailSender;
use sunset::channel::{Delivery, Outcome, Sender};
use sunset::config::{DkimAlgorithm, DkimConfig, EmailConfig, EmailTransport, FeedbackConfig};
use sunset::render::{EmailNotice, Notice};

/// Runs openssl with `args`; panics when it fails.
fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A new private key in PEM: `rsa:BITS` or `ed25519`.
fn new_key(kind: &str) -> String {
    let pem = match kind.split_once(':') {
        Some(("rsa", bits)) => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
        ]),
        _ => openssl(&["genpkey", "-algorithm", "ED25519"]),
    };
    String::from_utf8(pem).expect("PEM is ASCII")
}

/// Writes `pem` as an owner-only file in the test folder.
fn key_file(env: &TestEnv, name: &str, pem: &str) -> PathBuf {
    let path = env.write(name, pem);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn algorithm_name(algorithm: DkimAlgorithm) -> &'static str {
    match algorithm {
        DkimAlgorithm::RsaSha256 => "rsa-sha256",
        DkimAlgorithm::RsaSha256AndEd25519 => "rsa-sha256+ed25519-sha256",
    }
}

/// `sunset.toml` signing with `key` (a file name in the test folder).
fn dkim_config(env: &TestEnv, key: &str, algorithm: DkimAlgorithm) {
    env.write_config(&format!(
        "[templates]\ndir = \"templates\"\n[email.dkim]\ndomain = \"xiami.example\"\n\
         selector = \"s1\"\nkey_file = \"{key}\"\nalgorithm = \"{}\"\n",
        algorithm_name(algorithm)
    ));
}

fn notice(locale: &str, subject: &str, from_name: Option<&str>, list_unsubscribe: bool) -> Notice {
    Notice {
        locale: locale.into(),
        dir: if locale == "ar" {
            Direction::Rtl
        } else {
            Direction::Ltr
        },
        email: Some(EmailNotice {
            subject: subject.into(),
            text: format!("{subject}\n\n  spaced   text \t\n\n\n"),
            html: format!("<p>{subject}</p>\n"),
            from_name: from_name.map(str::to_string),
            list_unsubscribe,
        }),
        push: None,
    }
}

/// The `email` and `feedback` sections signing with the key(s) of `key` (file name in the
/// folder), sending to `url` over SMTP.
fn signing_config(
    env: &TestEnv,
    key: &str,
    algorithm: DkimAlgorithm,
    url: String,
) -> (EmailConfig, FeedbackConfig) {
    let email = EmailConfig {
        transport: EmailTransport::Smtp,
        url,
        from: "Xiami Music <noreply@xiami.example>".into(),
        pool_size: 2,
        dkim: DkimConfig {
            domain: "xiami.example".into(),
            selector: "s1".into(),
            key_file: env.path().join(key),
            algorithm,
        },
        ..EmailConfig::default()
    };
    let feedback = FeedbackConfig {
        secret_file: env.path().join(FEEDBACK_KEY_FILE),
        bounce_domain: "bounces.xiami.example".into(),
        ..FeedbackConfig::default()
    };
    (email, feedback)
}

/// Sends three emails (Arabic with `List-Unsubscribe` and a sender name, Chinese without,
/// English) through sunset's SMTP path with the key(s) of `key` (file name in the folder).
async fn send_signed(env: &TestEnv, key: &str, algorithm: DkimAlgorithm) -> Vec<Received> {
    let sink = SmtpSink::start();
    let (email, feedback) = signing_config(env, key, algorithm, sink.url());
    let sender = EmailSender::from_config(&email, &feedback).expect("valid config");
    let campaign = CampaignId::parse("xiami-2026").expect("id");
    let cases = [
        (
            recipient("u-1", "layla@example.com", "ليلى \"DJ\"", "ar"),
            notice("ar", "سيتوقف شيامي عن العمل", Some("شيامي ميوزك"), true),
        ),
        (
            recipient("u-2", "wei@example.com", "王伟", "zh-Hant"),
            notice("zh-Hant", "蝦米音樂即將停止服務", Some("蝦米音樂"), false),
        ),
        (
            recipient("u-3", "sam@example.com", "Sam", "en"),
            notice("en", "Xiami Music is closing", None, true),
        ),
    ];
    for (recipient, notice) in &cases {
        let outcome = sender
            .send(Delivery {
                campaign_id: &campaign,
                recipient,
                notice,
            })
            .await;
        assert_eq!(outcome, Outcome::Delivered);
    }
    sender.close().await;
    let mut messages = sink
        .wait_for_async(cases.len(), Duration::from_secs(10))
        .await;
    messages.sort_by_key(|m| m.to.clone());
    assert_eq!(messages.len(), cases.len());
    messages
}

/// Runs dkimpy on each message with the records `sunset dkim-record` prints for the config:
/// (exit success, one output line per signature).
fn dkimpy(env: &TestEnv, messages: &[Vec<u8>]) -> (bool, Vec<String>) {
    let records = env.sunset(&["dkim-record"]).expect_code(0).stdout();
    let records_file = env.write("records.txt", &records);
    let mut args = vec![
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/dkim_verify.py")
            .display()
            .to_string(),
        records_file.display().to_string(),
    ];
    for (i, message) in messages.iter().enumerate() {
        let path = env.path().join(format!("message-{i}.eml"));
        fs::write(&path, message).expect("write message");
        args.push(path.display().to_string());
    }
    let output = Command::new("python3")
        .args(&args)
        .output()
        .expect("python3 runs (pip install dkimpy pynacl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("ModuleNotFoundError"),
        "dkimpy is missing: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.success(),
        stdout.lines().map(str::to_string).collect(),
    )
}

fn raws(messages: &[Received]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.raw.clone()).collect()
}

#[tokio::test]
async fn rsa_signed_emails_verify_with_dkimpy_and_a_tampered_one_does_not() {
    // Arrange
    let env = TestEnv::new();
    key_file(&env, "dkim.pem", &new_key("rsa:2048"));
    dkim_config(&env, "dkim.pem", DkimAlgorithm::RsaSha256);

    // Act
    let messages = send_signed(&env, "dkim.pem", DkimAlgorithm::RsaSha256).await;
    let (verified, lines) = dkimpy(&env, &raws(&messages));

    // Assert
    assert!(verified, "{lines:#?}");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.ends_with(" rsa-sha256 s1 ok")),
        "{lines:#?}"
    );
    for message in &messages {
        let text = message.text();
        let email = message.parsed();
        assert!(email.subject().is_some(), "mail-parser reads it: {text}");
        let listed = text.contains("\r\nList-Unsubscribe: ");
        let h = "h=from:to:subject:date:message-id:mime-version:content-type:content-language:";
        let expected = if listed {
            format!("{h}list-unsubscribe:list-unsubscribe-post:from:subject;")
        } else {
            format!("{h}from:subject;")
        };
        assert!(text.contains(&expected), "{text}");
    }
    let arabic = messages
        .iter()
        .find(|m| m.to == ["layla@example.com"])
        .expect("the Arabic email");
    assert!(
        arabic
            .text()
            .contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    );

    // A changed subject (a header the signature covers) and a changed body both fail.
    let original = arabic.text();
    let subject_changed = original.replacen("Subject: =?utf-8?b?", "Subject: =?utf-8?b?2", 1);
    let body_changed = original.replacen("\r\n\r\n", "\r\n\r\nX", 1);
    for tampered in [subject_changed, body_changed] {
        assert_ne!(tampered, original);
        let (verified, lines) = dkimpy(&env, &[tampered.into_bytes()]);
        assert!(!verified, "{lines:#?}");
        assert!(lines.iter().all(|l| l.ends_with("FAIL")), "{lines:#?}");
    }
}

#[tokio::test]
async fn dual_rsa_and_ed25519_signatures_both_verify_with_dkimpy() {
    // Arrange
    let env = TestEnv::new();
    let both = format!("{}{}", new_key("ed25519"), new_key("rsa:2048"));
    key_file(&env, "dkim.pem", &both);
    dkim_config(&env, "dkim.pem", DkimAlgorithm::RsaSha256AndEd25519);

    // Act
    let messages = send_signed(&env, "dkim.pem", DkimAlgorithm::RsaSha256AndEd25519).await;
    let (verified, lines) = dkimpy(&env, &raws(&messages));

    // Assert
    assert!(verified, "{lines:#?}");
    assert_eq!(lines.len(), 6, "two signatures per email: {lines:#?}");
    let rsa = lines
        .iter()
        .filter(|l| l.ends_with(" rsa-sha256 s1 ok"))
        .count();
    let ed25519 = lines
        .iter()
        .filter(|l| l.ends_with(" ed25519-sha256 s1-ed25519 ok"))
        .count();
    assert_eq!((rsa, ed25519), (3, 3), "{lines:#?}");
}

/// Sends `count` emails at once (one campaign, users `u-0`…) and asserts each is delivered.
async fn send_at_once(sender: &EmailSender, count: usize) {
    let campaign = CampaignId::parse("xiami-at-once").expect("id");
    let recipients: Vec<Recipient> = (0..count)
        .map(|i| recipient(&format!("u-{i}"), &format!("u{i}@example.com"), "Sam", "en"))
        .collect();
    let notice = notice("en", "Xiami Music is closing", None, true);
    let outcomes = futures::future::join_all(recipients.iter().map(|recipient| {
        sender.send(Delivery {
            campaign_id: &campaign,
            recipient,
            notice: &notice,
        })
    }))
    .await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn emails_signed_at_once_on_the_blocking_pool_verify_over_smtp_and_in_the_outbox() {
    // Arrange: the test's runtime is current-thread, as the worker's is.
    let env = TestEnv::new();
    let both = format!("{}{}", new_key("rsa:2048"), new_key("ed25519"));
    key_file(&env, "dkim.pem", &both);
    dkim_config(&env, "dkim.pem", DkimAlgorithm::RsaSha256AndEd25519);
    let sink = SmtpSink::start();
    let (email, feedback) = signing_config(
        &env,
        "dkim.pem",
        DkimAlgorithm::RsaSha256AndEd25519,
        sink.url(),
    );
    let relay = EmailSender::from_config(&email, &feedback).expect("valid config");
    let outbox = EmailSender::from_config(
        &EmailConfig {
            transport: EmailTransport::File,
            outbox: env.path().join("outbox"),
            ..email
        },
        &feedback,
    )
    .expect("valid config");

    // Act
    send_at_once(&relay, 12).await;
    relay.close().await;
    send_at_once(&outbox, 4).await;
    let mut messages = raws(&sink.wait_for_async(12, Duration::from_secs(10)).await);
    for file in fs::read_dir(env.path().join("outbox")).expect("outbox") {
        let bytes = fs::read(file.expect("entry").path()).expect("read .eml");
        // The outbox writes the VERP sender as `Return-Path` above the signatures, as a
        // receiving server would.
        messages.push(bytes);
    }
    let (verified, lines) = dkimpy(&env, &messages);

    // Assert
    assert_eq!(messages.len(), 16);
    assert!(verified, "{lines:#?}");
    assert_eq!(lines.len(), 32, "two signatures per email: {lines:#?}");
    assert!(lines.iter().all(|l| l.ends_with(" ok")), "{lines:#?}");
}

#[test]
fn dkim_record_publishes_the_public_keys_in_strings_of_at_most_255_bytes() {
    // Arrange
    let env = TestEnv::new();
    let path = key_file(
        &env,
        "dkim.pem",
        &format!("{}{}", new_key("rsa:4096"), new_key("ed25519")),
    );
    dkim_config(&env, "dkim.pem", DkimAlgorithm::RsaSha256AndEd25519);
    let public = |kind: &str| {
        let pem = key_file(&env, "one.pem", &{
            let text = fs::read_to_string(&path).expect("read");
            let marker = "-----BEGIN PRIVATE KEY-----";
            let blocks: Vec<String> = text
                .split_inclusive("-----END PRIVATE KEY-----\n")
                .map(|b| b.trim_start().to_string())
                .filter(|b| b.starts_with(marker))
                .collect();
            if kind == "rsa" {
                blocks[0].clone()
            } else {
                blocks[1].clone()
            }
        });
        openssl(&[
            "pkey",
            "-in",
            &pem.display().to_string(),
            "-pubout",
            "-outform",
            "DER",
        ])
    };
    let rsa_der = public("rsa");
    let ed25519_der = public("ed25519");

    // Act
    let records = env.sunset(&["dkim-record"]).expect_code(0).stdout();

    // Assert
    let lines: Vec<&str> = records.lines().collect();
    assert_eq!(lines.len(), 2, "{records}");
    assert!(lines[0].starts_with("s1._domainkey.xiami.example. IN TXT ( \"v=DKIM1; k=rsa; p="));
    assert!(
        lines[1]
            .starts_with("s1-ed25519._domainkey.xiami.example. IN TXT ( \"v=DKIM1; k=ed25519; p=")
    );
    let strings = |line: &str| -> Vec<String> {
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let rsa_strings = strings(lines[0]);
    assert!(
        rsa_strings.len() > 1,
        "a 4096-bit key needs several strings"
    );
    assert!(rsa_strings.iter().all(|s| s.len() <= 255), "{records}");
    let p = |strings: Vec<String>| strings.concat().split("p=").nth(1).expect("p=").to_string();
    assert_eq!(BASE64.decode(p(rsa_strings)).expect("base64"), rsa_der);
    assert_eq!(
        BASE64.decode(p(strings(lines[1]))).expect("base64"),
        ed25519_der[ed25519_der.len() - 32..]
    );

    // A signing domain that is not From's (nor a parent of it) is published, with a warning.
    let toml = fs::read_to_string(env.path().join("sunset.toml")).expect("config");
    env.write_config(&toml.replace("domain = \"xiami.example\"", "domain = \"other.example\""));
    let run = env.sunset(&["dkim-record"]).expect_code(0);
    assert!(
        run.stdout().starts_with("s1._domainkey.other.example."),
        "{}",
        run.stdout()
    );
    assert_eq!(
        run.stderr().matches("dkim_not_aligned").count(),
        1,
        "warned once: {}",
        run.stderr()
    );

    // Without a key there is nothing to publish.
    env.write_config("[templates]\ndir = \"templates\"\n");
    let run = env.sunset(&["dkim-record"]).expect_code(2);
    assert!(
        run.stderr().contains("email.dkim.key_file"),
        "{}",
        run.stderr()
    );
}

#[test]
fn bad_key_files_stop_worker_and_send_with_exit_2_naming_the_key() {
    let env = TestEnv::new();
    let rsa = new_key("rsa:2048");
    let ed25519 = new_key("ed25519");
    let short = new_key("rsa:1024");
    key_file(&env, "rsa.pem", &rsa);
    key_file(&env, "ed25519.pem", &ed25519);
    key_file(&env, "short.pem", &short);
    key_file(&env, "text.pem", "not a key\n");
    let ec = openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ]);
    key_file(&env, "ec.pem", &String::from_utf8(ec).expect("PEM"));
    let shared = env.write("shared.pem", &rsa);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).expect("chmod");
    let cases = [
        ("missing.pem", DkimAlgorithm::RsaSha256, "missing.pem"),
        ("shared.pem", DkimAlgorithm::RsaSha256, "chmod 600"),
        ("text.pem", DkimAlgorithm::RsaSha256, "no PEM private key"),
        ("short.pem", DkimAlgorithm::RsaSha256, "2048"),
        (
            "ed25519.pem",
            DkimAlgorithm::RsaSha256,
            "0 RSA and 1 Ed25519",
        ),
        (
            "rsa.pem",
            DkimAlgorithm::RsaSha256AndEd25519,
            "1 RSA and 0 Ed25519",
        ),
        ("ec.pem", DkimAlgorithm::RsaSha256, "not an RSA"),
    ];
    for (file, algorithm, says) in cases {
        dkim_config(&env, file, algorithm);
        for args in [vec!["worker"], campaign_args("send", "dkim-bad-key", &[])] {
            let run = env.sunset(&args).expect_code(2);
            let stderr = run.stderr();
            assert!(
                stderr.contains("email.dkim.key_file"),
                "{file} {args:?}: {stderr}"
            );
            assert!(stderr.contains(says), "{file} {args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    // A selector that is no DNS name is named too.
    env.write_config("[email.dkim]\nselector = \"s1; x=y\"\nkey_file = \"rsa.pem\"\n");
    let run = env.sunset(&["worker"]).expect_code(2);
    assert!(
        run.stderr().contains("email.dkim.selector"),
        "{}",
        run.stderr()
    );
}
