//! Typed configuration: `sunset.toml` (optional), then `SUNSET__SECTION__KEY` environment overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given; its absence means "all defaults".
pub const DEFAULT_CONFIG_FILE: &str = "sunset.toml";

/// Prefix of environment overrides: `SUNSET__BROKER__PREFETCH=8` sets `broker.prefetch`.
const ENV_PREFIX: &str = "SUNSET__";

/// Why the configuration could not be loaded. Always a usage error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config PATH` names a file that is not there.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// One line per bad key, each naming the key and where it came from.
    #[error("invalid configuration:\n{0}")]
    Invalid(String),
}

/// The whole configuration; every section has the documented defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ connection and queue names.
    pub broker: BrokerConfig,
    /// Worker process behaviour.
    pub worker: WorkerConfig,
    /// Email channel.
    pub email: EmailConfig,
    /// In-app push channel.
    pub push: PushConfig,
    /// Send rate limits, per worker process.
    pub rate: RateConfig,
    /// Where notices live.
    pub templates: TemplatesConfig,
    /// Delivery ledger database.
    pub ledger: LedgerConfig,
    /// Prometheus exporter.
    pub metrics: MetricsConfig,
    /// `sunset feedback`, VERP and unsubscribe tokens.
    pub feedback: FeedbackConfig,
}

/// `[broker]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URL of the RabbitMQ node or cluster; `""` = `sunset send` runs its campaign on an
    /// in-process queue. Unset: [`DEFAULT_BROKER_URL`], and `send` falls back to the in-process
    /// queue when nothing answers there.
    pub url: Option<String>,
    /// Work queue name; retry and dead-letter queue names derive from it.
    pub queue: String,
    /// Unacked batches a worker holds at once.
    pub prefetch: u16,
    /// A worker that cannot reach the broker for this long exits non-zero; 0 = keep trying.
    pub give_up_after_ms: u64,
    /// PEM file of the CA certificate(s) to trust for an `amqps://` URL, besides the system's
    /// roots (a private CA); empty = the system's roots only.
    pub ca_file: PathBuf,
    /// A delivery larger than this is dead-lettered before it is parsed; RabbitMQ's
    /// `max_message_size` should match (deploy/rabbitmq). 0 = no limit.
    pub max_message_bytes: u64,
    /// Where `send` on the in-process queue writes its dead letters, one JSON line each.
    pub dead_letter_file: PathBuf,
}

/// The RabbitMQ `broker.url` stands for when it is unset.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: None,
            queue: "sunset.batches".into(),
            prefetch: 4,
            give_up_after_ms: 0,
            ca_file: PathBuf::new(),
            max_message_bytes: 8 * 1024 * 1024,
            dead_letter_file: "dead-letters.jsonl".into(),
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Sends in flight per process.
    pub concurrency: usize,
    /// Attempts per recipient and channel before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the N-th retry; one delay queue per entry.
    pub retry_delays_ms: Vec<u64>,
    /// Sends in a row that find a channel's relay or gateway unreachable before its sends are
    /// held (the breaker opens); 0 = off: such sends then spend attempts like any transient
    /// failure.
    pub breaker_after: u32,
    /// While a breaker is open, one send every this often probes the transport.
    pub breaker_probe_ms: u64,
    /// On SIGTERM, how long to wait for sends in flight before exiting anyway (their batches
    /// go back to the queue unacked); sends not yet started are handed back at once.
    pub shutdown_timeout_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            max_attempts: 5,
            retry_delays_ms: vec![30_000, 120_000, 600_000, 1_800_000],
            breaker_after: 5,
            breaker_probe_ms: 5_000,
            shutdown_timeout_ms: 25_000,
        }
    }
}

/// Where email goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTransport {
    /// `.eml` files in `email.outbox`.
    File,
    /// The SMTP relay at `email.url`.
    Smtp,
}

/// `[email]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `file` (default) or `smtp`.
    pub transport: EmailTransport,
    /// SMTP relay; `smtps://` or `?tls=required` for TLS. The password comes from `SUNSET_SMTP_PASSWORD`.
    pub url: String,
    /// The `From:` mailbox; its domain also names the `Message-ID`.
    pub from: String,
    /// SMTP connections per process.
    pub pool_size: u32,
    /// Connect and each command: the most a send waits until its message is handed over.
    pub timeout_ms: u64,
    /// The wait for the reply to the final `.` of `DATA`, once written (RFC 5321 §4.5.3.2.6
    /// asks for 10 minutes); no reply by then makes the send's outcome unknown.
    pub final_reply_timeout_ms: u64,
    /// Directory of `.eml` files for the file transport.
    pub outbox: PathBuf,
    /// DKIM signing.
    pub dkim: DkimConfig,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            transport: EmailTransport::File,
            url: "smtp://127.0.0.1:1025".into(),
            from: "Xiami Music <noreply@xiami.example>".into(),
            pool_size: 8,
            timeout_ms: 10_000,
            final_reply_timeout_ms: 600_000,
            outbox: "outbox/email".into(),
            dkim: DkimConfig::default(),
        }
    }
}

/// Which DKIM signatures each email carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// One RSA-SHA256 signature: what every receiver verifies.
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// An RSA-SHA256 and an Ed25519-SHA256 signature (RFC 8463); receivers that do not know
    /// Ed25519 (Gmail) rely on the RSA one.
    #[serde(rename = "rsa-sha256+ed25519-sha256")]
    RsaSha256AndEd25519,
}

/// `[email.dkim]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimConfig {
    /// `d=`: the signing domain, aligned with `email.from`'s for DMARC.
    pub domain: String,
    /// `s=`: the selector whose TXT record (`<selector>._domainkey.<domain>`) holds the key.
    pub selector: String,
    /// PEM private key, readable by its owner only; empty = no signing.
    pub key_file: PathBuf,
    /// The signatures to add.
    pub algorithm: DkimAlgorithm,
}

impl Default for DkimConfig {
    fn default() -> Self {
        Self {
            domain: "xiami.example".into(),
            selector: "s1".into(),
            key_file: PathBuf::new(),
            algorithm: DkimAlgorithm::RsaSha256,
        }
    }
}

/// Where push notices go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushTransport {
    /// JSON lines appended to `push.outbox`.
    File,
    /// `POST` to the gateway at `push.url`.
    Http,
}

/// `[push]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// `file` (default) or `http`.
    pub transport: PushTransport,
    /// Push gateway endpoint. The bearer token comes from `SUNSET_PUSH_TOKEN`.
    pub url: String,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// JSON-lines file for the file transport.
    pub outbox: PathBuf,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            transport: PushTransport::File,
            url: "http://127.0.0.1:8025/push".into(),
            timeout_ms: 5_000,
            outbox: "outbox/push.jsonl".into(),
        }
    }
}

/// `[rate]`: sends per second per worker process; 0 = unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// All email, whatever the domain.
    pub email_per_sec: u32,
    /// All push requests.
    pub push_per_sec: u32,
    /// Email per recipient domain; `default` for domains not listed.
    /// A table given in the file replaces the listed domains; `default` stays 50 unless set.
    pub per_domain_per_sec: PerDomainRates,
    /// Shaping rules of your own (docs/shaping.md), tried before the shipped ones; a rule named
    /// like a shipped one replaces it. Empty = the shipped rules only.
    pub shaping_file: PathBuf,
    /// How far back a domain's throttle evidence counts, in milliseconds.
    pub shaping_window_ms: u64,
    /// The share of a domain's attempts in the window that, as throttle evidence, slows it
    /// (0–1, exclusive).
    pub shaping_threshold: f64,
    /// Quiet (no throttle evidence) before each raise of a slowed domain, in milliseconds.
    pub shaping_recover_ms: u64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            email_per_sec: 200,
            push_per_sec: 1000,
            per_domain_per_sec: PerDomainRates::default(),
            shaping_file: PathBuf::new(),
            shaping_window_ms: 10_000,
            shaping_threshold: 0.05,
            shaping_recover_ms: 2_000,
        }
    }
}

/// `[rate.per_domain_per_sec]`: `default = 50` plus `"qq.com" = 20`-style entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerDomainRates {
    /// The budget of every domain not listed.
    #[serde(default = "PerDomainRates::default_rate")]
    pub default: u32,
    /// Domains with their own budget, lower-case.
    #[serde(flatten)]
    pub domains: BTreeMap<String, u32>,
}

impl PerDomainRates {
    fn default_rate() -> u32 {
        50
    }
}

impl Default for PerDomainRates {
    fn default() -> Self {
        Self {
            default: Self::default_rate(),
            domains: [("qq.com".to_string(), 20), ("163.com".to_string(), 20)].into(),
        }
    }
}

/// `[templates]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Folder holding one sub-folder per template.
    pub dir: PathBuf,
    /// Locale for recipients whose own locale no template folder serves.
    pub default_locale: String,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self {
            dir: "templates".into(),
            default_locale: "en".into(),
        }
    }
}

/// `[ledger]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://FILE` (one host) or `postgres://…` (workers on many hosts).
    pub url: String,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://sunset-ledger.db".into(),
        }
    }
}

/// Where `sunset worker` serves metrics when `metrics.listen` is not set.
pub const WORKER_METRICS_LISTEN: &str = "127.0.0.1:9185";

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus exporter; empty = off. Unset: a worker serves on
    /// [`WORKER_METRICS_LISTEN`] and `send` serves none, so a one-box `send` next to a worker
    /// does not fight it for the port.
    pub listen: Option<String>,
}

/// Whom an unsubscribe stops mail to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsubscribeScope {
    /// Every later campaign (templates with `legal_notice = true` still send).
    Global,
    /// Only the campaign whose link was used.
    Campaign,
}

/// `[feedback]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// SMTP listener of `sunset feedback` for DSNs and complaint reports to the bounce domain.
    pub smtp_listen: String,
    /// HTTP listener of `sunset feedback`: one-click unsubscribe and provider webhooks.
    pub http_listen: String,
    /// Public base URL of the HTTP listener, used in `List-Unsubscribe`.
    pub public_url: String,
    /// Domain of the VERP envelope sender `b-<token>@<bounce_domain>`; empty = the envelope
    /// sender is `email.from`'s address.
    pub bounce_domain: String,
    /// Owner-only file holding the HMAC key of VERP and unsubscribe tokens.
    pub secret_file: PathBuf,
    /// Soft bounces within `soft_bounce_window_ms` that suppress an address; 0 = never.
    pub soft_bounces_to_suppress: u32,
    /// The window soft bounces are counted in.
    pub soft_bounce_window_ms: u64,
    /// Complaints per delivered email above which a campaign is paused; 0 = never.
    pub pause_complaint_rate: f64,
    /// Whom an unsubscribe stops mail to.
    pub unsubscribe_scope: UnsubscribeScope,
    /// Email providers' bounce and complaint webhooks.
    pub webhooks: WebhooksConfig,
}

/// `[feedback.webhooks]`: each provider's route answers 404 until its credential is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Folder of the Amazon SNS signing certificates (PEM) trusted for `/webhooks/ses`, each
    /// under the file name its `SigningCertURL` ends in; empty = the route is off.
    pub ses_cert_dir: PathBuf,
    /// SendGrid's signed event webhook verification key (base64 DER, as SendGrid shows it);
    /// empty = the route is off.
    pub sendgrid_public_key: String,
    /// The basic-auth user Postmark's webhooks send; the password comes from
    /// `SUNSET_POSTMARK_PASSWORD` (or `_FILE`); empty = the route is off.
    pub postmark_user: String,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            smtp_listen: "127.0.0.1:2525".into(),
            http_listen: "127.0.0.1:8687".into(),
            public_url: "https://notices.xiami.example".into(),
            bounce_domain: String::new(),
            secret_file: PathBuf::new(),
            soft_bounces_to_suppress: 3,
            soft_bounce_window_ms: 7 * 24 * 3600 * 1000,
            pause_complaint_rate: 0.003,
            unsubscribe_scope: UnsubscribeScope::Global,
            webhooks: WebhooksConfig::default(),
        }
    }
}

impl Config {
    /// Loads `path` if given (it must exist), else `./sunset.toml` if present, else the defaults;
    /// then applies the `SUNSET__SECTION__KEY` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) if !path.is_file() => return Err(ConfigError::Missing(path.to_owned())),
            Some(path) => Some(path),
            None => Some(Path::new(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
        };
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .extract()
            .map_err(|errors| ConfigError::Invalid(describe(errors)))
    }
}

/// One line per error: where the value came from, which key, what is wrong.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|error| {
            let source = error
                .metadata
                .as_ref()
                .map(|meta| match &meta.source {
                    Some(figment::Source::File(file)) => file.display().to_string(),
                    _ if meta.name.contains("environment") => format!(
                        "environment variable {ENV_PREFIX}{}",
                        error.path.join("__").to_uppercase()
                    ),
                    _ => meta.name.to_string(),
                })
                .unwrap_or_else(|| "configuration".into());
            let key = error.path.join(".");
            if key.is_empty() {
                format!("  {source}: {}", KindText(&error.kind))
            } else {
                format!("  {source}: key `{key}`: {}", KindText(&error.kind))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// figment's kind text, with unknown fields phrased for a config file rather than a struct.
struct KindText<'a>(&'a figment::error::Kind);

impl fmt::Display for KindText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            figment::error::Kind::UnknownField(field, expected) => {
                write!(
                    f,
                    "unknown key `{field}` (expected one of: {})",
                    expected.join(", ")
                )
            }
            kind => write!(f, "{kind}"),
        }
    }
}
