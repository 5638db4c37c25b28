//! Security review items, each proved: TLS to SMTP and RabbitMQ is verified (with a CA file for
//! a private broker CA), secrets come only from the environment or owner-only files and are
//! never echoed, and neither `preview --out` nor a template name can reach outside its folder.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestEnv;
use common::push_sink::PushSink;
use common::smtp_sink::SmtpSink;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sunset::Direction;
use sunset::batch::{CampaignId, EmailAddress, Recipient, UserId};
use sunset::channel::email::EmailSender;
use sunset::channel::{Delivery, Outcome, Sender};
use sunset::config::{EmailConfig, EmailTransport, FeedbackConfig};
use sunset::render::{EmailNotice, Notice};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A secret value that must never appear in any output.
const SECRET: &str = "hunter2-d0-not-print";

// ---------------------------------------------------------------------------------------------
// Certificates and TLS servers

/// A server certificate for `localhost` and `127.0.0.1` and the TLS config that presents it.
struct ServerCert {
    /// PEM of the certificate that vouches for it: the CA, or the certificate itself.
    trust_pem: String,
    config: Arc<ServerConfig>,
}

/// A leaf certificate signed by a fresh private CA.
fn ca_signed() -> ServerCert {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    ServerCert {
        trust_pem: ca.pem(),
        config: server_config(vec![leaf.der().clone(), ca.der().clone()], &key),
    }
}

/// A self-signed certificate, as a careless or hostile relay would present.
fn self_signed() -> ServerCert {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    ServerCert {
        trust_pem: cert.pem(),
        config: server_config(vec![cert.der().clone()], &key),
    }
}

fn server_config(
    chain: Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    key: &KeyPair,
) -> Arc<ServerConfig> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server TLS config"),
    )
}

/// What a TLS server saw of its clients' handshakes.
#[derive(Default)]
struct Handshakes {
    completed: AtomicUsize,
    /// Each failed handshake's error, as the server saw it (e.g. the client's alert).
    failed: Mutex<Vec<String>>,
}

impl Handshakes {
    fn failures(&self) -> Vec<String> {
        self.failed.lock().expect("lock").clone()
    }
}

/// A TLS-terminating proxy on 127.0.0.1: every connection's TLS is accepted with `cert`, and
/// the plain bytes go to `target` (RabbitMQ, the SMTP sink). Returns the port.
async fn tls_proxy(cert: &ServerCert, target: String) -> (u16, Arc<Handshakes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let acceptor = TlsAcceptor::from(Arc::clone(&cert.config));
    let seen = Arc::new(Handshakes::default());
    let counted = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, target, seen) = (acceptor.clone(), target.clone(), counted.clone());
            tokio::spawn(async move {
                match acceptor.accept(client).await {
                    Ok(mut tls) => {
                        seen.completed.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                        }
                    }
                    Err(e) => seen.failed.lock().expect("lock").push(e.to_string()),
                }
            });
        }
    });
    (port, seen)
}

/// A fake SMTP relay offering STARTTLS with `cert`; it records the commands it got in plain
/// text and how the TLS handshake went. With `offer_starttls` false it never offers it.
async fn starttls_relay(
    cert: &ServerCert,
    offer_starttls: bool,
) -> (u16, Arc<Handshakes>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let acceptor = TlsAcceptor::from(Arc::clone(&cert.config));
    let seen = Arc::new(Handshakes::default());
    let commands: Arc<Mutex<Vec<String>>> = Arc::default();
    let (counted, recorded) = (Arc::clone(&seen), Arc::clone(&commands));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, seen, commands) = (acceptor.clone(), counted.clone(), recorded.clone());
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let _ = client
                    .get_mut()
                    .write_all(b"220 relay.test ESMTP\r\n")
                    .await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if client.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let command = line.trim_end().to_ascii_uppercase();
                    commands.lock().expect("lock").push(command.clone());
                    let reply: &[u8] = if command.starts_with("EHLO") && offer_starttls {
                        b"250-relay.test\r\n250 STARTTLS\r\n"
                    } else if command.starts_with("EHLO") {
                        b"250-relay.test\r\n250 8BITMIME\r\n"
                    } else if command == "STARTTLS" {
                        b"220 go ahead\r\n"
                    } else if command == "QUIT" {
                        b"221 bye\r\n"
                    } else {
                        b"250 ok\r\n"
                    };
                    if client.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                    if command == "STARTTLS" {
                        match acceptor.accept(client.into_inner()).await {
                            Ok(_) => seen.completed.fetch_add(1, Ordering::SeqCst),
                            Err(e) => {
                                seen.failed.lock().expect("lock").push(e.to_string());
                                0
                            }
                        };
                        return;
                    }
                }
            });
        }
    });
    (port, seen, commands)
}

// ---------------------------------------------------------------------------------------------
// TLS to SMTP

fn email_sender(url: &str) -> EmailSender {
    EmailSender::from_config(
        &EmailConfig {
            transport: EmailTransport::Smtp,
            url: url.to_string(),
            pool_size: 1,
            timeout_ms: 5_000,
            ..EmailConfig::default()
        },
        &FeedbackConfig::default(),
    )
    .expect("valid email config")
}

async fn send_one(sender: &EmailSender) -> Outcome {
    let campaign = CampaignId::parse("tls-check").expect("id");
    let recipient = Recipient {
        user_id: UserId::parse("u-1").expect("id"),
        email: Some(EmailAddress::parse("layla@example.com").expect("address")),
        locale: None,
        name: None,
        vars: Default::default(),
    };
    let notice = Notice {
        locale: "en".into(),
        dir: Direction::Ltr,
        email: Some(EmailNotice {
            subject: "subject".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
            from_name: None,
            list_unsubscribe: false,
        }),
        push: None,
    };
    sender
        .send(Delivery {
            campaign_id: &campaign,
            recipient: &recipient,
            notice: &notice,
        })
        .await
}

/// The outcome is a failure whose reason is about the certificate, and the server saw the
/// handshake end unfinished (the client hung up on it: its alert stays in the held writes).
async fn assert_refused_for_the_certificate(outcome: &Outcome, seen: &Handshakes) {
    let reason = match outcome {
        Outcome::Delivered => panic!("delivered over TLS to an untrusted certificate"),
        Outcome::Transient { reason, .. }
        | Outcome::Permanent { reason }
        | Outcome::Unreachable { reason } => reason,
        Outcome::Unknown { reason } => panic!("nothing is handed over before TLS: {reason}"),
    };
    assert!(
        reason.to_lowercase().contains("certificate") || reason.contains("UnknownIssuer"),
        "the reason should name the certificate: {reason}"
    );
    assert_eq!(
        seen.completed.load(Ordering::SeqCst),
        0,
        "handshake completed"
    );
    // The server reads the client's alert on its own task: give it a moment.
    for _ in 0..100 {
        if !seen.failures().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures = seen.failures();
    assert!(
        !failures.is_empty(),
        "the server should see the handshake fail: {reason}"
    );
    eprintln!("client: {reason}; server: {failures:?}");
}

/// An `smtps://` relay behind `cert` gets no email: the handshake fails for the certificate.
async fn assert_smtps_refuses(cert: &ServerCert) {
    let sink = SmtpSink::start();
    let (port, seen) = tls_proxy(cert, format!("127.0.0.1:{}", sink.port())).await;

    let outcome = send_one(&email_sender(&format!("smtps://127.0.0.1:{port}"))).await;

    assert_refused_for_the_certificate(&outcome, &seen).await;
    assert!(sink.messages().is_empty(), "the email went through");
}

#[tokio::test]
async fn smtps_refuses_a_relay_whose_certificate_no_trusted_ca_signed() {
    assert_smtps_refuses(&self_signed()).await;
}

#[tokio::test]
async fn smtps_refuses_a_certificate_signed_by_an_unknown_private_ca() {
    assert_smtps_refuses(&ca_signed()).await;
}

#[tokio::test]
async fn starttls_refuses_an_untrusted_certificate_before_any_mail_command() {
    let cert = self_signed();
    let (port, seen, commands) = starttls_relay(&cert, true).await;

    let outcome = send_one(&email_sender(&format!(
        "smtp://127.0.0.1:{port}?tls=required"
    )))
    .await;

    assert_refused_for_the_certificate(&outcome, &seen).await;
    let commands = commands.lock().expect("lock").clone();
    assert!(commands.contains(&"STARTTLS".to_string()), "{commands:?}");
    assert!(
        !commands.iter().any(|c| c.starts_with("MAIL")),
        "a mail command was sent: {commands:?}"
    );
}

#[tokio::test]
async fn tls_required_never_falls_back_to_plain_text_when_starttls_is_not_offered() {
    let cert = self_signed();
    let (port, _, commands) = starttls_relay(&cert, false).await;

    let outcome = send_one(&email_sender(&format!(
        "smtp://127.0.0.1:{port}?tls=required"
    )))
    .await;

    assert!(outcome != Outcome::Delivered, "sent in plain text");
    let commands = commands.lock().expect("lock").clone();
    assert!(
        !commands.iter().any(|c| c.starts_with("MAIL")),
        "a mail command was sent in plain text: {commands:?}"
    );
}

/// The control for the refusals above: the same proxy and sink deliver once the CA is trusted
/// (here through `SSL_CERT_FILE`, which the native root loader honours), so what the refusals
/// prove is the verification, not a broken test server.
#[tokio::test]
async fn smtps_delivers_once_the_relays_ca_is_trusted() {
    let sink = SmtpSink::start();
    let cert = ca_signed();
    let (port, seen) = tls_proxy(&cert, format!("127.0.0.1:{}", sink.port())).await;
    let env = TestEnv::with_broker(&format!(
        "[email]\ntransport = \"smtp\"\nurl = \"smtps://127.0.0.1:{port}\"\n\
         [ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n[rate]\nemail_per_sec = 0\n"
    ));
    let ca = env.write("ca.pem", &cert.trust_pem);
    env.write(
        "audience.csv",
        "user_id,email,locale,name\nu-1,layla@example.com,ar-EG,Layla\n",
    );
    let ca = ca.display().to_string();
    let args = common::campaign_args("send", "tls-trusted", &["--channels", "email"]);

    let mut command = env.command(&args, &[("SSL_CERT_FILE", ca.as_str())]);
    let run = tokio::task::spawn_blocking(move || command.output().expect("run sunset"))
        .await
        .expect("join");

    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(sink.messages().len(), 1);
    assert!(seen.completed.load(Ordering::SeqCst) >= 1);
}

// ---------------------------------------------------------------------------------------------
// amqps:// with broker.ca_file

fn amqps_env(port: u16, ca_file: Option<&str>) -> TestEnv {
    let ca_line = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
    let env = TestEnv::with_broker(&format!(
        "url = \"amqps://guest:guest@127.0.0.1:{port}/%2f\"\n{ca_line}\
         [ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n[rate]\npush_per_sec = 0\n"
    ));
    env.write(
        "audience.csv",
        &common::audience_csv(20, |_| "example.com".into()),
    );
    env
}

/// `VERB` of the push-only campaign the AMQPS tests publish.
fn push_campaign(verb: &str) -> Vec<&str> {
    common::campaign_args(verb, "amqps-check", &["--channels", "push"])
}

#[tokio::test]
async fn amqps_with_the_ca_file_publishes_and_consumes_through_tls() {
    let cert = ca_signed();
    let (port, seen) = tls_proxy(&cert, "127.0.0.1:5672".into()).await;
    let env = amqps_env(port, Some("ca.pem"));
    env.write("ca.pem", &cert.trust_pem);

    let args = push_campaign("send");
    let run = env.sunset_async(&args).await.expect_code(0);

    let outbox = fs::read_to_string(env.path().join("outbox/push.jsonl")).expect("outbox");
    assert_eq!(outbox.lines().count(), 20, "{}", run.stdout());
    assert!(
        seen.completed.load(Ordering::SeqCst) >= 1,
        "no TLS connection went through the proxy"
    );
}

#[tokio::test]
async fn amqps_without_the_ca_file_fails_with_a_certificate_error() {
    let cert = ca_signed();
    let (port, seen) = tls_proxy(&cert, "127.0.0.1:5672".into()).await;
    let env = amqps_env(port, None);

    let args = push_campaign("enqueue");
    let run = env.sunset_async(&args).await.expect_code(1);

    let stderr = run.stderr();
    assert!(
        stderr.contains("presented a TLS certificate this host does not trust")
            && stderr.contains("UnknownIssuer")
            && stderr.contains("broker.ca_file"),
        "{stderr}"
    );
    assert!(
        run.0.status.code() == Some(1) && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!stderr.contains("guest:guest"), "password shown: {stderr}");
    assert_eq!(seen.completed.load(Ordering::SeqCst), 0);
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_is_a_config_error() {
    let env = amqps_env(1, Some("nowhere.pem"));
    let args = push_campaign("enqueue");
    let run = env.sunset(&args).expect_code(2);
    assert!(run.stderr().contains("broker.ca_file"), "{}", run.stderr());
    assert!(run.stderr().contains("nowhere.pem"), "{}", run.stderr());

    env.write("empty.pem", "not a certificate\n");
    let env_text = fs::read_to_string(env.path().join("sunset.toml")).expect("config");
    env.write_config(&env_text.replace("nowhere.pem", "empty.pem"));
    let run = env.sunset(&args).expect_code(2);
    assert!(
        run.stderr().contains("holds no PEM certificate"),
        "{}",
        run.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

fn secret_file(env: &TestEnv, name: &str, mode: u32) -> String {
    let path = env.write(name, &format!("{SECRET}\n"));
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

/// A worker with email by SMTP as user `mailer` and push by HTTP (nothing is listening: the
/// secrets are read, and refused, before anything connects).
fn secrets_env() -> TestEnv {
    let env = TestEnv::new();
    env.write_config(
        "[templates]\ndir = \"templates\"\n\
         [email]\ntransport = \"smtp\"\nurl = \"smtp://mailer@127.0.0.1:9\"\n\
         [push]\ntransport = \"http\"\n[ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n",
    );
    env
}

#[test]
fn a_secret_file_that_group_or_others_may_read_is_refused_naming_file_and_mode() {
    for var in ["SUNSET_SMTP_PASSWORD_FILE", "SUNSET_PUSH_TOKEN_FILE"] {
        for mode in [0o644, 0o640, 0o604] {
            let env = secrets_env();
            let path = secret_file(&env, "secret", mode);
            let mut env_vars = vec![(var, path.as_str())];
            if var == "SUNSET_PUSH_TOKEN_FILE" {
                env_vars.push(("SUNSET_SMTP_PASSWORD", "other"));
            }

            let run = env
                .sunset_with_env(&["worker", "--exit-when-idle"], &env_vars)
                .expect_code(2);

            let stderr = run.stderr();
            assert!(stderr.contains(var), "{stderr}");
            assert!(stderr.contains(&path), "{stderr}");
            assert!(stderr.contains(&format!("{mode:04o}")), "{stderr}");
            assert!(!stderr.contains(SECRET), "secret echoed: {stderr}");
        }
    }
}

#[test]
fn a_secret_given_both_in_the_environment_and_as_a_file_is_refused() {
    let env = secrets_env();
    let path = secret_file(&env, "secret", 0o600);
    let run = env
        .sunset_with_env(
            &["worker", "--exit-when-idle"],
            &[
                ("SUNSET_SMTP_PASSWORD", SECRET),
                ("SUNSET_SMTP_PASSWORD_FILE", path.as_str()),
            ],
        )
        .expect_code(2);
    assert!(run.stderr().contains("both set"), "{}", run.stderr());
    assert!(!run.stderr().contains(SECRET));
}

#[tokio::test]
async fn an_owner_only_token_file_is_used_as_the_push_bearer_token() {
    let push = PushSink::start().await;
    let env = TestEnv::with_broker(&format!(
        "[push]\ntransport = \"http\"\nurl = \"{}\"\n\
         [ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n[rate]\npush_per_sec = 0\n",
        push.url()
    ));
    let path = secret_file(&env, "token", 0o600);
    env.write(
        "audience.csv",
        "user_id,email,locale,name\nu-1,layla@example.com,ar-EG,Layla\n",
    );
    let args = push_campaign("send");
    let mut command = env.command(&args, &[("SUNSET_PUSH_TOKEN_FILE", path.as_str())]);

    let run = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");

    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let requests = push.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!output.contains(SECRET), "secret printed: {output}");
}

#[test]
fn a_secret_written_into_the_config_is_an_unknown_key_and_never_echoed() {
    let env = TestEnv::new();
    for (section, key) in [
        ("email", "password"),
        ("email", "smtp_password"),
        ("push", "token"),
        ("broker", "password"),
    ] {
        env.write_config(&format!(
            "[templates]\ndir = \"templates\"\n[{section}]\n{key} = \"{SECRET}\"\n"
        ));
        let run = env
            .sunset(&["preview", "--template", "xiami-shutdown"])
            .expect_code(2);
        let stderr = run.stderr();
        assert!(stderr.contains(&format!("unknown key `{key}`")), "{stderr}");
        assert!(!stderr.contains(SECRET), "secret echoed: {stderr}");
        assert!(!run.stdout().contains(SECRET));
    }

    env.write_config("[templates]\ndir = \"templates\"\n");
    let variable = "SUNSET__EMAIL__PASSWORD";
    let run = env
        .sunset_with_env(
            &["preview", "--template", "xiami-shutdown"],
            &[(variable, SECRET)],
        )
        .expect_code(2);
    assert!(run.stderr().contains(variable), "{}", run.stderr());
    assert!(!run.stderr().contains(SECRET), "{}", run.stderr());
}

#[test]
fn a_password_put_in_the_smtp_url_is_refused_without_being_echoed() {
    for url in [
        format!("smtp://mailer:{SECRET}@127.0.0.1:25"),
        format!("smtp://mailer:{SECRET}@127.0.0.1:25/path"),
        format!("mailer:{SECRET}@127.0.0.1"),
    ] {
        let env = TestEnv::new();
        env.write_config(&format!(
            "[templates]\ndir = \"templates\"\n[email]\ntransport = \"smtp\"\nurl = \"{url}\"\n\
             [ledger]\nurl = \"\"\n[metrics]\nlisten = \"\"\n"
        ));
        let run = env.sunset(&["worker", "--exit-when-idle"]).expect_code(2);
        assert!(run.stderr().contains("email.url"), "{}", run.stderr());
        assert!(!run.stderr().contains(SECRET), "{url}: {}", run.stderr());
    }
}

// ---------------------------------------------------------------------------------------------
// Paths: preview --out and template names

/// Every regular file under `dir` with its contents.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            files.extend(files_under(&path));
        } else if meta.is_file() {
            files.push((
                path.display().to_string(),
                fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    files.sort();
    files
}

#[test]
fn preview_out_replaces_planted_symlinks_instead_of_writing_through_them() {
    let env = TestEnv::new();
    let outside = env.write("outside/victim.txt", "untouched");
    env.write("outside/victim.html", "untouched");
    let out = env.path().join("out");
    fs::create_dir_all(&out).expect("mkdir");
    for (link, target) in [
        ("en.partial", "victim.txt"),
        ("en.html", "victim.html"),
        ("ar.txt", "victim.txt"),
        ("zh.partial", "missing-target"),
    ] {
        symlink(outside.with_file_name(target), out.join(link)).expect("symlink");
    }

    env.sunset(&[
        "preview",
        "--template",
        "xiami-shutdown",
        "--all-locales",
        "--out",
        "out",
    ])
    .expect_code(0);

    assert_eq!(
        files_under(&env.path().join("outside")),
        [
            (
                env.path().join("outside/victim.html").display().to_string(),
                "untouched".to_string()
            ),
            (outside.display().to_string(), "untouched".to_string()),
        ]
    );
    assert!(!env.path().join("outside/missing-target").exists());
    for name in ["en.html", "ar.txt", "zh.html"] {
        let meta = fs::symlink_metadata(out.join(name)).expect("written");
        assert!(meta.is_file(), "{name} is still a link");
    }
    assert!(
        fs::read_to_string(out.join("en.html"))
            .expect("html")
            .contains("<html")
    );
}

/// The names of the files in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn preview_out_writes_only_locale_files_into_the_folder_whatever_the_locale_folders_are_named() {
    let env = TestEnv::new();
    let template = env.templates().join("xiami-shutdown");
    let before = names_in(env.path());
    for hostile in [
        "en..",
        "..\\..\\evil",
        ".x",
        "en%2F..%2Fevil",
        "en\nx",
        "en-US.",
    ] {
        let folder = template.join(hostile);
        fs::create_dir(&folder).expect("mkdir");
        for part in sunset::render::Part::ALL {
            fs::copy(
                template.join("en").join(part.file_name()),
                folder.join(part.file_name()),
            )
            .expect("copy");
        }

        let run = env.sunset(&[
            "preview",
            "--template",
            "xiami-shutdown",
            "--all-locales",
            "--out",
            "out",
        ]);

        // Refused (not a language tag) or skipped (hidden folder); never a file named after it.
        match run.code() {
            2 => assert!(run.stderr().contains("BCP 47"), "{}", run.stderr()),
            code => assert_eq!(code, 0, "{hostile:?}: {}", run.stderr()),
        }
        let written = names_in(&env.path().join("out"));
        assert!(
            written.iter().all(|n| [
                "ar.html",
                "ar.txt",
                "en.html",
                "en.txt",
                "zh-Hant.html",
                "zh-Hant.txt",
                "zh.html",
                "zh.txt"
            ]
            .contains(&n.as_str())),
            "{hostile:?}: {written:?}"
        );
        assert_eq!(
            names_in(env.path())
                .into_iter()
                .filter(|n| n != "out")
                .collect::<Vec<_>>(),
            before,
            "{hostile:?}"
        );
        fs::remove_dir_all(&folder).expect("clean up");
    }
}

/// Names that would leave `templates/` if joined to it; `escape` is a real template folder
/// beside `templates/`, so a traversal would find a template rather than fail for lack of one.
const ESCAPING_NAMES: [&str; 6] = [
    "../escape",
    "..",
    "xiami-shutdown/../../escape",
    "/tmp",
    "./xiami-shutdown",
    "..\\escape",
];

fn env_with_a_template_outside_the_templates_folder() -> TestEnv {
    let env = TestEnv::new();
    let source = env.templates().join("xiami-shutdown");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&source)
        .arg(env.path().join("escape"))
        .status()
        .expect("cp");
    assert!(status.success());
    env.write(
        "audience.csv",
        "user_id,email,locale,name\nu-1,layla@example.com,ar-EG,Layla\n",
    );
    env
}

#[test]
fn template_names_cannot_leave_the_templates_folder_in_any_command() {
    let env = env_with_a_template_outside_the_templates_folder();
    for name in ESCAPING_NAMES {
        let campaign = [
            "--campaign-id",
            "c",
            "--template",
            name,
            "--audience",
            "audience.csv",
            "--dry-run",
        ];
        let runs = [
            ("preview", env.sunset(&["preview", "--template", name])),
            (
                "preview --check",
                env.sunset(&["preview", "--check", "--template", name]),
            ),
            (
                "enqueue",
                env.sunset(&[&["enqueue"][..], &campaign[..]].concat()),
            ),
            ("send", env.sunset(&[&["send"][..], &campaign[..]].concat())),
        ];
        for (command, run) in runs {
            let run = run.expect_code(2);
            assert!(
                run.stderr().contains("is not a folder name"),
                "{command} --template {name}: {}",
                run.stderr()
            );
        }
    }
}

#[test]
fn a_batch_naming_an_escaping_template_does_not_decode() {
    for name in ESCAPING_NAMES {
        let body = serde_json::json!({
            "version": 1,
            "campaign_id": "c",
            "template": name,
            "recipients": [{"user_id": "u-1"}],
        });
        let error = sunset::batch::Batch::decode(body.to_string().as_bytes())
            .expect_err(name)
            .to_string();
        assert!(error.contains("is not a folder name"), "{name}: {error}");
    }
}
