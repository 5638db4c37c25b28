//! `TestEnv`: a temporary working folder with a copy of the shipped templates and a config file,
//! and helpers that run the built `sunset` binary inside it.

#![allow(dead_code)] // each test binary uses its own subset of the helpers

pub mod browser;
pub mod feedback_service;
pub mod pipelining_smtp;
pub mod postfix;
pub mod push_sink;
pub mod rabbit_node;
pub mod rabbitmqctl;
pub mod scrape;
pub mod smtp_auth;
pub mod smtp_sink;
pub mod tcp_proxy;
pub mod webhook_keys;
pub mod worker_process;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use push_sink::{PushRequest, PushSink};
use rabbit_node::RabbitNode;
use smtp_sink::SmtpSink;
use sunset::Config;
use sunset::broker::{Broker, QueueNames};
use sunset::config::DEFAULT_BROKER_URL;

/// The owner-only feedback token key every test folder has (see [`TestEnv::write_config`]).
pub const FEEDBACK_KEY_FILE: &str = "feedback.key";

/// A scratch folder per test: `templates/` (a copy of the shipped ones) and `sunset.toml`;
/// with a broker, its own randomly named queues, deleted when the test ends.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    /// The work queue (`broker.queue`) of a broker test.
    pub queue: Option<String>,
    /// The broker holding the test's queues, as guest: where [`TestEnv::dead_letters`] reads
    /// and the clean-up deletes.
    broker_url: String,
}

impl TestEnv {
    /// A fresh folder with the shipped templates copied in and a config pointing at them.
    pub fn new() -> TestEnv {
        let env = TestEnv {
            dir: tempfile::tempdir().expect("create temp dir"),
            queue: None,
            broker_url: DEFAULT_BROKER_URL.to_string(),
        };
        copy_dir(&shipped_templates(), &env.templates());
        env.write_config("[templates]\ndir = \"templates\"\n");
        env
    }

    /// A test environment with its own queues (`sunset.test.<random>` and derived names) and
    /// `extra` config appended (e.g. `[email]` with a sink URL, `[worker]` retry delays).
    pub fn with_broker(extra: &str) -> TestEnv {
        TestEnv::with_queues(DEFAULT_BROKER_URL.to_string(), extra)
    }

    /// As [`TestEnv::with_broker`], on a RabbitMQ node of the test's own.
    pub fn with_broker_on(node: &RabbitNode, extra: &str) -> TestEnv {
        TestEnv::with_broker_via(node, &node.amqp_url(), extra)
    }

    /// As [`TestEnv::with_broker_on`], with sunset reaching the node at `url` (as another
    /// user, through a proxy); the test's own reads and the clean-up go to the node directly.
    pub fn with_broker_via(node: &RabbitNode, url: &str, extra: &str) -> TestEnv {
        TestEnv::with_queues(node.amqp_url(), &format!("url = \"{url}\"\n{extra}"))
    }

    /// Random queue names on the broker at `broker_url`, `extra` appended to `[broker]`.
    fn with_queues(broker_url: String, extra: &str) -> TestEnv {
        let mut env = TestEnv::new();
        let queue = format!("sunset.test.{:016x}", fastrand::u64(..));
        env.write_config(&format!(
            "[templates]\ndir = \"templates\"\n[broker]\nqueue = \"{queue}\"\n{extra}"
        ));
        env.queue = Some(queue);
        env.broker_url = broker_url;
        env
    }

    /// The test's configuration, as `sunset` reads it.
    pub fn config(&self) -> Config {
        Config::load(Some(&self.path().join("sunset.toml"))).expect("the test config loads")
    }

    /// The queue names of a broker test.
    pub fn names(&self) -> QueueNames {
        let config = self.config();
        QueueNames::new(&config.broker.queue, &config.worker.retry_delays_ms)
    }

    /// A connection to the test's queues (declaring them as the worker does).
    pub async fn broker(&self) -> Broker {
        Broker::connect(&self.config().broker, self.names())
            .await
            .expect("connect to the test's RabbitMQ")
    }

    /// Every message now in the dead-letter queue (taken off it): body and `x-sunset-error`.
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, Option<String>)> {
        let connection =
            lapin::Connection::connect(&self.broker_url, lapin::ConnectionProperties::default())
                .await
                .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.names().dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let error = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(sunset::broker::ERROR_HEADER).cloned())
                .and_then(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                    _ => None,
                });
            letters.push((message.delivery.data.clone(), error));
        }
        let _ = connection.close(200, "bye".into()).await;
        letters
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The copy of the templates folder.
    pub fn templates(&self) -> PathBuf {
        self.path().join("templates")
    }

    /// A file of the Xiami template copy, e.g. `ar/subject.hbs`.
    pub fn template_file(&self, rel: &str) -> PathBuf {
        self.templates().join("xiami-shutdown").join(rel)
    }

    /// Replaces `sunset.toml`; the folder also gets an owner-only [`FEEDBACK_KEY_FILE`] that a
    /// config may name as `feedback.secret_file`.
    pub fn write_config(&self, toml: &str) {
        let key = self.path().join(FEEDBACK_KEY_FILE);
        if !key.exists() {
            fs::write(&key, "a test key of more than sixteen bytes\n").expect("write key");
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        }
        fs::write(self.path().join("sunset.toml"), toml).expect("write config");
    }

    /// Writes a file relative to the folder and returns its path.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(&path, contents).expect("write file");
        path
    }

    /// Runs `sunset ARGS` in the folder with no `SUNSET__*` variables from the outside.
    pub fn sunset(&self, args: &[&str]) -> Run {
        self.sunset_with_env(args, &[])
    }

    /// Runs `sunset ARGS` with extra environment variables.
    pub fn sunset_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run(self.command(args, env).output().expect("run sunset"))
    }

    /// Runs `sunset ARGS` off the async runtime, so in-process sinks keep serving meanwhile.
    pub async fn sunset_async(&self, args: &[&str]) -> Run {
        let mut command = self.command(args, &[]);
        tokio::task::spawn_blocking(move || Run(command.output().expect("run sunset")))
            .await
            .expect("join")
    }

    /// The `sunset ARGS` command in the folder, with no `SUNSET*` variables from the outside,
    /// and metrics off unless `env` turns them on (tests run in parallel: they would all want
    /// the default port).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sunset"));
        command.args(args).current_dir(self.path());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUNSET")) {
            command.env_remove(key);
        }
        command.env("SUNSET__METRICS__LISTEN", "");
        command.envs(env.iter().copied());
        command
    }
}

/// The output of one `sunset` run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().expect("exited, not killed")
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

impl Drop for TestEnv {
    /// Deletes the test's queues, from a thread of its own so it works inside a tokio test too.
    /// Gives up after 15 s (lapin has been seen to hang on a close): a test that passed must
    /// not stall the suite over its clean-up; the queues then stay behind.
    fn drop(&mut self) {
        if self.queue.is_none() {
            return;
        }
        let names = self.names();
        let url = self.broker_url.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let cleanup = async {
                let Ok(connection) = lapin::Connection::connect(&url, Default::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    for queue in names.all() {
                        let _ = channel.queue_delete(queue.into(), Default::default()).await;
                    }
                }
                let _ = connection.close(200, "bye".into()).await;
            };
            runtime.block_on(async {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(15), cleanup).await;
            });
            // Threads lapin left waiting on a hung connection must not hold the test up.
            runtime.shutdown_background();
        })
        .join();
    }
}

/// `[email]` by SMTP and `[push]` by HTTP into the sinks, then `rest` (rates, worker…).
pub fn sinks_config(smtp: &SmtpSink, push: &PushSink, rest: &str) -> String {
    format!(
        "[email]\ntransport = \"smtp\"\nurl = \"{}\"\n[push]\ntransport = \"http\"\nurl = \"{}\"\n{rest}",
        smtp.url(),
        push.url()
    )
}

/// Emails received per recipient address.
pub fn emails_per_address(smtp: &SmtpSink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in smtp.messages() {
        for to in message.to {
            *counts.entry(to).or_default() += 1;
        }
    }
    counts
}

/// Pushes delivered (answered 2xx) per user id.
pub fn pushes_per_user(push: &PushSink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in push.requests().into_iter().filter(PushRequest::delivered) {
        *counts
            .entry(request.user_id().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    counts
}

/// Asserts that `recipients` distinct people got exactly one email and one push each.
pub fn assert_everyone_told_once(smtp: &SmtpSink, push: &PushSink, recipients: usize) {
    for (what, counts) in [
        ("email", emails_per_address(smtp)),
        ("push", pushes_per_user(push)),
    ] {
        assert_eq!(counts.len(), recipients, "{what}: everyone told");
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{what}: told twice: {twice:?}");
    }
}

/// Waits until the SMTP sink has received `n` emails; fails after 30 s.
pub async fn until_emails(smtp: &SmtpSink, n: usize) {
    let started = std::time::Instant::now();
    while smtp.count() < n {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "fewer than {n} emails in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `VERB --campaign CAMPAIGN --template xiami-shutdown --audience audience.csv EXTRA…`: the
/// arguments of `enqueue` or `send` for a test's `audience.csv`.
pub fn campaign_args<'a>(verb: &'a str, campaign: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    notice_args(
        verb,
        campaign,
        &[&["--audience", "audience.csv"], extra].concat(),
    )
}

/// `VERB --campaign CAMPAIGN --template xiami-shutdown EXTRA…`: the arguments of `enqueue` or
/// `send` of the shipped notice, for tests that name the audience file themselves (or none).
pub fn notice_args<'a>(verb: &'a str, campaign: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![verb, "--campaign", campaign, "--template", "xiami-shutdown"];
    args.extend_from_slice(extra);
    args
}

/// Waits for `child` to exit, at most until `limit` has passed since `since`; `None` if it
/// is still running then. Blocks: call it from `block_in_place` in an async test.
pub fn exit_by(
    child: &mut std::process::Child,
    since: std::time::Instant,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("poll a child process") {
            return Some(status);
        }
        if since.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The PostgreSQL ledger every developer and CI machine has (tests keep apart by campaign id).
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `prefix` with a random suffix: a campaign id no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..1 << 48))
}

/// An audience CSV of `n` users `u-0001`…, at `u<i>@<domain(i)>`, locales cycling through
/// ar-EG, zh-CN, zh-TW, en-US.
pub fn audience_csv(n: usize, domain: impl Fn(usize) -> String) -> String {
    use std::fmt::Write as _;
    let locales = ["ar-EG", "zh-CN", "zh-TW", "en-US"];
    let mut csv = String::from("user_id,email,locale,name\n");
    for i in 1..=n {
        let _ = writeln!(
            csv,
            "u-{i:04},u{i}@{},{},User {i}",
            domain(i),
            locales[i % 4]
        );
    }
    csv
}

pub fn shipped_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

/// The shipped Xiami notice's renderer and sample variables.
pub fn shipped_notice() -> (sunset::render::Renderer, sunset::render::Sample) {
    use sunset::render::{Renderer, Sample, TemplateName, template_dir};
    let dir = shipped_templates();
    let name = TemplateName::parse("xiami-shutdown").expect("name");
    let renderer = Renderer::load(&dir, &name, "en").expect("shipped templates load");
    let sample = Sample::load(&template_dir(&dir, &name).expect("exists")).expect("sample");
    (renderer, sample)
}

/// The email HTML for a recipient; `name` is not checked, so controls can reach the renderer.
pub fn notice_html(
    renderer: &sunset::render::Renderer,
    sample: &sunset::render::Sample,
    locale: &str,
    name: &str,
) -> String {
    use sunset::Channel;
    use sunset::batch::{Recipient, UserId};
    use sunset::render::Vars;
    let recipient = Recipient {
        user_id: UserId::parse("u-1").expect("id"),
        email: None,
        locale: Some(locale.into()),
        name: Some(name.into()),
        vars: Vars::new(),
    };
    renderer
        .render(&sample.vars, &recipient, &[Channel::Email])
        .expect("renders")
        .email
        .expect("email")
        .html
}

/// Copies a folder tree (a template) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// Which ledger a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    /// `sunset-ledger.db` in the test's folder (the default URL, relative).
    Sqlite,
    Postgres,
}

impl Db {
    /// The `[ledger]` table for it.
    pub fn section(self) -> String {
        match self {
            Db::Sqlite => "[ledger]\nurl = \"sqlite://sunset-ledger.db\"\n".into(),
            Db::Postgres => format!("[ledger]\nurl = \"{POSTGRES}\"\n"),
        }
    }
}

/// `sunset status --campaign CAMPAIGN --json`, parsed.
pub async fn status_json(env: &TestEnv, campaign: &str) -> serde_json::Value {
    let run = env
        .sunset_async(&["status", "--campaign", campaign, "--json"])
        .await
        .expect_code(0);
    serde_json::from_str(&run.stdout()).expect("status --json is JSON")
}

/// The campaign variables of the template's `sample.json`.
pub fn sample_vars(env: &TestEnv) -> serde_json::Value {
    let sample = std::fs::read_to_string(env.template_file("sample.json")).expect("sample.json");
    serde_json::from_str::<serde_json::Value>(&sample).expect("JSON")["vars"].clone()
}

/// A recipient with every field set, for sending one email by hand.
pub fn recipient(user: &str, email: &str, name: &str, locale: &str) -> sunset::batch::Recipient {
    sunset::batch::Recipient {
        user_id: sunset::batch::UserId::parse(user).expect("id"),
        email: Some(sunset::batch::EmailAddress::parse(email).expect("address")),
        locale: Some(locale.into()),
        name: Some(name.into()),
        vars: Default::default(),
    }
}

/// The head of a [`compose_with_tokens`] email whose notice asks for List-Unsubscribe: every
/// header sunset writes, in order.
pub const TOKEN_EMAIL_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Message-ID",
    "Date",
    "Content-Language",
    "X-Sunset-Campaign",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
];

/// The email a worker that carries feedback tokens writes for `notice`: its unsubscribe URL
/// and VERP bounce address under Xiami's domains, signed with a test key.
pub fn compose_with_tokens(
    campaign: &str,
    recipient: &sunset::batch::Recipient,
    notice: &sunset::Notice,
) -> Result<sunset::channel::email::Email, sunset::channel::email::ComposeError> {
    use sunset::channel::email::{Composer, compose};
    let from = "Xiami Music <noreply@xiami.example>"
        .parse()
        .expect("mailbox");
    let composer = Composer::new(from)
        .with_tokens(
            sunset::TokenKey::from_bytes(b"a test key of more than sixteen bytes"),
            "https://notices.xiami.example",
            Some("bounces.xiami.example"),
        )
        .expect("valid feedback addresses");
    compose(
        &composer,
        sunset::channel::Delivery {
            campaign_id: &sunset::batch::CampaignId::parse(campaign).expect("id"),
            recipient,
            notice,
        },
    )
}

/// A `[rate]` table with every limit off, for tests that count sends rather than pace them.
pub const UNLIMITED_RATES: &str =
    "[rate]\nemail_per_sec = 0\npush_per_sec = 0\n[rate.per_domain_per_sec]\ndefault = 0\n";

/// The numbers of `channel`'s row in `send`'s table: total, now, earlier, dead, unknown,
/// cancelled, suppressed, pending.
pub fn table_row(stdout: &str, channel: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(channel))
        .unwrap_or_else(|| panic!("no {channel} row in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a count"))
        .collect()
}

/// Waits for `child` to exit, at most `limit`; its whole output.
pub async fn output_within(
    child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::time::timeout(limit, waiting)
        .await
        .expect("exited in time")
        .expect("join")
        .expect("wait")
}
