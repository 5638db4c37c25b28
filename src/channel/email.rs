//! The email channel: one multipart message per delivery, written to the `.eml` outbox or sent
//! through a small pool of SMTP connections whose sockets we open ourselves (`TCP_NODELAY` on).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)] // see `ImplicitTls`
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, Message};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{Delivery, Outcome, Sender};
use crate::batch::{CampaignId, UserId};
use crate::config::{ConfigError, EmailConfig, EmailTransport};
use crate::render::one_line;

/// The environment variable the SMTP password is read from; it never comes from a file.
pub const PASSWORD_ENV: &str = "SUNSET_SMTP_PASSWORD";

/// An idle connection older than this is checked with `NOOP` before reuse: relays close idle
/// sessions (Postfix after 300 s), and a dead socket would otherwise fail a recipient.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(10);

/// The longest wait taken from a reply text: anything longer is a misparse or not worth obeying.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Longest reason kept from a reply, in characters (reasons end up in dead letters).
const REASON_MAX: usize = 300;

/// Longest `.eml` file name before it is shortened with a hash (file systems allow 255 bytes).
const FILE_NAME_MAX: usize = 200;

/// Sends email by the transport `email.transport` names.
#[derive(Debug)]
pub enum EmailSender {
    /// One `.eml` file per email in `email.outbox`.
    File(EmlOutbox),
    /// The SMTP relay at `email.url` (boxed: it is much larger than the outbox).
    Smtp(Box<SmtpRelay>),
}

impl EmailSender {
    /// Builds the configured transport. Reads the SMTP password from [`PASSWORD_ENV`] when
    /// `email.url` names a user. Errors name the config key (`email.from`, `email.url`, …).
    pub fn from_config(config: &EmailConfig) -> Result<EmailSender, ConfigError> {
        let from = parse_from(&config.from)?;
        match config.transport {
            EmailTransport::File => Ok(EmailSender::File(EmlOutbox::new(&config.outbox, from))),
            EmailTransport::Smtp => {
                let password = std::env::var(PASSWORD_ENV)
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(Password);
                SmtpRelay::new(config, from, password)
                    .map(|relay| EmailSender::Smtp(Box::new(relay)))
            }
        }
    }

    /// Says `QUIT` to idle SMTP connections; call once no more sends will start.
    pub async fn close(&self) {
        if let EmailSender::Smtp(relay) = self {
            relay.close().await;
        }
    }
}

impl Sender for EmailSender {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        match self {
            EmailSender::File(outbox) => outbox.send(delivery).await,
            EmailSender::Smtp(relay) => relay.send(delivery).await,
        }
    }
}

/// `email.from`, parsed once.
fn parse_from(from: &str) -> Result<Mailbox, ConfigError> {
    from.parse::<Mailbox>().map_err(|e| {
        invalid(
            "email.from",
            format!("`{from}` is not a mailbox like `Name <noreply@example.com>` ({e})"),
        )
    })
}

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid(format!("  key `{key}`: {problem}"))
}

// ---------------------------------------------------------------------------------------------
// The message

/// Why a delivery cannot be made into an email: permanent for that recipient.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The notice was rendered without its email parts.
    #[error("no email part rendered")]
    NoEmailPart,
    /// The recipient has no email address.
    #[error("recipient has no email address")]
    NoAddress,
    /// lettre refused the address or the message.
    #[error("cannot build the email: {0}")]
    Invalid(String),
}

/// Builds the email for one delivery: `From`, `To` with the recipient's name, UTF-8 subject,
/// multipart/alternative (text, then HTML), a deterministic `Message-ID`, `Content-Language`,
/// `X-Sunset-Campaign` and `Date`. Header values never contain line breaks.
pub fn compose(from: &Mailbox, delivery: Delivery<'_>) -> Result<Message, ComposeError> {
    let parts = delivery
        .notice
        .email
        .as_ref()
        .ok_or(ComposeError::NoEmailPart)?;
    let address = delivery
        .recipient
        .email
        .as_ref()
        .ok_or(ComposeError::NoAddress)?;
    let address: Address = address
        .as_str()
        .parse()
        .map_err(|e| ComposeError::Invalid(format!("recipient address: {e}")))?;
    let name = delivery
        .recipient
        .name
        .as_deref()
        .map(one_line)
        .filter(|name| !name.is_empty());
    let id = message_id(
        delivery.campaign_id,
        &delivery.recipient.user_id,
        from.email.domain(),
    );
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(name, address))
        .subject(one_line(&parts.subject))
        .message_id(Some(id))
        .date_now()
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Content-Language"),
            one_line(&delivery.notice.locale),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Sunset-Campaign"),
            delivery.campaign_id.as_str().to_string(),
        ))
        .multipart(MultiPart::alternative_plain_html(
            parts.text.clone(),
            parts.html.clone(),
        ))
        .map_err(|e| ComposeError::Invalid(e.to_string()))
}

/// `<{campaign_id}.{user_id}@{domain}>`, valid for any ids: characters a msg-id's dot-atom may
/// not hold are percent-encoded (`:` → `%3A`), as is every `.` of the campaign id so the first
/// dot always separates the two ids.
pub fn message_id(campaign: &CampaignId, user: &UserId, domain: &str) -> String {
    format!(
        "<{}.{}@{domain}>",
        escape(campaign.as_str(), is_word_char),
        dot_atom(user.as_str())
    )
}

/// Letters, digits, `_` and `-`: kept as they are in ids we write into headers and file names.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Percent-encodes (UTF-8 bytes, upper-case hex) every character `keep` rejects.
fn escape(raw: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// Like [`escape`] with word characters kept, and also dots that neither start, end nor double
/// (a dot-atom's rule).
fn dot_atom(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    for (i, &c) in chars.iter().enumerate() {
        let lone_inner_dot =
            c == '.' && i > 0 && i + 1 < chars.len() && chars[i - 1] != '.' && chars[i + 1] != '.';
        if lone_inner_dot {
            out.push('.');
        } else {
            out.push_str(&escape(&c.to_string(), is_word_char));
        }
    }
    out
}

/// Masks an address for logs: `layla@example.com` → `l***@example.com`.
pub fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => match local.chars().next() {
            Some(first) => format!("{first}***@{domain}"),
            None => format!("***@{domain}"),
        },
        None => "***".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// File transport

/// Writes each email as `{campaign}.{user}.eml` in a folder; a rerun rewrites the same file.
#[derive(Debug, Clone)]
pub struct EmlOutbox {
    /// The folder, created on first write.
    dir: PathBuf,
    /// The `From:` mailbox.
    from: Mailbox,
}

impl EmlOutbox {
    /// An outbox in `dir`, sending as `from`.
    pub fn new(dir: impl Into<PathBuf>, from: Mailbox) -> EmlOutbox {
        EmlOutbox {
            dir: dir.into(),
            from,
        }
    }

    /// Where the email for this campaign and user is written.
    pub fn path_for(&self, campaign: &CampaignId, user: &UserId) -> PathBuf {
        self.dir.join(eml_file_name(campaign, user))
    }
}

impl Sender for EmlOutbox {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let message = match compose(&self.from, delivery) {
            Ok(message) => message,
            Err(e) => return Outcome::permanent(e.to_string()),
        };
        let path = self.path_for(delivery.campaign_id, &delivery.recipient.user_id);
        let bytes = message.formatted();
        let written = tokio::task::spawn_blocking(move || write_replacing(&path, &bytes)).await;
        match written {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(e)) => Outcome::transient(format!("cannot write to the email outbox: {e}")),
            Err(e) => Outcome::transient(format!("email outbox writer failed: {e}")),
        }
    }
}

/// `{campaign}.{user}.eml` with unsafe characters percent-encoded (the campaign's dots too, so
/// names never collide); names too long for a file system are cut and end in a hash.
fn eml_file_name(campaign: &CampaignId, user: &UserId) -> String {
    let name = format!(
        "{}.{}",
        escape(campaign.as_str(), is_word_char),
        escape(user.as_str(), |c| is_word_char(c) || c == '.')
    );
    if name.len() <= FILE_NAME_MAX {
        return format!("{name}.eml");
    }
    // The name is ASCII, so any byte index is a character boundary; `~` never occurs in an
    // escaped name, so a shortened name cannot equal a whole one.
    format!(
        "{}~{:016x}.eml",
        &name[..FILE_NAME_MAX - 17],
        fnv1a(name.as_bytes())
    )
}

/// FNV-1a, 64 bits: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes a temporary file next to `path`, then renames it over `path`: readers see the old
/// file or the new one, never half of one, and a rerun replaces rather than adds.
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// SMTP transport

/// A password that never shows in `Debug` output or logs.
#[derive(Clone)]
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// How the session is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://`: plain text; no opportunistic STARTTLS.
    Plain,
    /// `smtp://…?tls=required`: STARTTLS, or no session at all.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// `email.url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SmtpUrl {
    /// Host name or IP address (IPv6 without brackets); also the TLS server name.
    host: String,
    /// Port; 25 for `smtp://` and 465 for `smtps://` when not given.
    port: u16,
    security: Security,
    /// The URL's user part, percent-decoded.
    username: Option<String>,
}

impl SmtpUrl {
    /// Accepts `smtp://[user@]host[:port][/][?tls=required]` and `smtps://[user@]host[:port][/]`.
    fn parse(url: &str) -> Result<SmtpUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not like smtp://host:port or smtps://host:port"))?;
        let (mut security, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => (Security::Plain, 25),
            "smtps" => (Security::Implicit, 465),
            other => return Err(format!("unknown scheme `{other}` (expected smtp or smtps)")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "tls=required" if security == Security::Plain => security = Security::StartTls,
                "tls=required" => {}
                other => return Err(format!("unknown parameter `{other}` (only tls=required)")),
            }
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!("`{url}` has a path; expected only host and port"));
        }
        let (username, host_port) = match rest.rsplit_once('@') {
            Some((user, _)) if user.contains(':') => {
                return Err(format!(
                    "put the password in the environment variable {PASSWORD_ENV}, not in the URL"
                ));
            }
            Some((user, host_port)) => (Some(percent_decode(user)?), host_port),
            None => (None, rest),
        };
        let (host, port) = split_host_port(host_port)?;
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(SmtpUrl {
            host: host.to_string(),
            port: port.unwrap_or(default_port),
            security,
            username: username.filter(|u| !u.is_empty()),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(host_port: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("`{host_port}`: unclosed `[`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        })
        .transpose()?;
    Ok((host, port))
}

fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{raw}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{raw}` does not decode to UTF-8"))
}

/// An SMTP relay reached through a bounded pool of connections: at most `email.pool_size` are
/// open at once, each carries many messages, and any error drops the connection.
pub struct SmtpRelay {
    url: SmtpUrl,
    credentials: Option<(String, Password)>,
    /// Built once: loading the native root certificates is not free.
    tls: Option<TlsParameters>,
    /// The `EHLO` name.
    hello: ClientId,
    from: Mailbox,
    /// Connect + send, per message.
    timeout: Duration,
    /// One permit per send in flight. A send opens a connection only when none is idle, so
    /// open connections (in use + idle) never outnumber the permits.
    permits: Semaphore,
    /// Connections between sends, most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    pool_size: usize,
}

struct IdleConnection {
    connection: AsyncSmtpConnection,
    since: Instant,
}

impl fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong on the way to the relay or in its reply.
#[derive(Debug, thiserror::Error)]
enum SmtpFailure {
    /// The TCP connection could not be made.
    #[error("cannot connect to the SMTP relay: {0}")]
    Connect(#[source] io::Error),
    /// Greeting, `EHLO`, TLS, `STARTTLS` or `AUTH` failed: the relay, not the recipient.
    #[error("SMTP session failed: {0}")]
    Session(#[source] lettre::transport::smtp::Error),
    /// `MAIL`, `RCPT` or `DATA` failed: about this message.
    #[error("SMTP relay refused the message: {0}")]
    Transaction(#[source] lettre::transport::smtp::Error),
    /// No answer in time.
    #[error("no answer from the SMTP relay within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

impl SmtpRelay {
    fn new(
        config: &EmailConfig,
        from: Mailbox,
        password: Option<Password>,
    ) -> Result<SmtpRelay, ConfigError> {
        let url = SmtpUrl::parse(&config.url).map_err(|e| invalid("email.url", e))?;
        let credentials = match (&url.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(user), None) => {
                return Err(invalid(
                    "email.url",
                    format!("names user `{user}` but {PASSWORD_ENV} is not set"),
                ));
            }
            (None, _) => None,
        };
        let tls = match url.security {
            Security::Plain => None,
            Security::StartTls | Security::Implicit => Some(
                TlsParameters::new_rustls(url.host.clone())
                    .map_err(|e| invalid("email.url", format!("TLS setup failed: {e}")))?,
            ),
        };
        if config.pool_size == 0 {
            return Err(invalid("email.pool_size", "must be at least 1".into()));
        }
        if config.timeout_ms == 0 {
            return Err(invalid("email.timeout_ms", "must be at least 1".into()));
        }
        if credentials.is_some() && url.security == Security::Plain {
            tracing::warn!(
                event = "smtp_plaintext_auth",
                host = %url.host,
                "email.url sends the SMTP password unencrypted; use smtps:// or ?tls=required"
            );
        }
        let pool_size = usize::try_from(config.pool_size).unwrap_or(usize::MAX);
        Ok(SmtpRelay {
            url,
            credentials,
            tls,
            hello: ClientId::default(),
            from,
            timeout: Duration::from_millis(config.timeout_ms),
            permits: Semaphore::new(pool_size.min(Semaphore::MAX_PERMITS)),
            idle: Mutex::new(Vec::new()),
            pool_size,
        })
    }

    /// Says `QUIT` to every idle connection, each within the send timeout.
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.lock_idle());
        for mut idle in idle {
            let _ = tokio::time::timeout(self.timeout, idle.connection.quit()).await;
        }
    }

    /// Connects if needed and sends, within the timeout (waiting for a free slot is not
    /// counted: it only means other sends are in flight).
    async fn transmit(&self, message: &Message) -> Result<(), SmtpFailure> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(SmtpFailure::Connect(io::Error::other("SMTP relay closed")));
        };
        let attempt = async {
            let mut connection = self.checkout().await?;
            connection
                .send(message.envelope(), &message.formatted())
                .await
                .map_err(SmtpFailure::Transaction)?;
            // Only a connection that just succeeded goes back; lettre has already aborted
            // the session after any negative reply.
            self.lock_idle().push(IdleConnection {
                connection,
                since: Instant::now(),
            });
            Ok(())
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(SmtpFailure::TimedOut(self.timeout)))
    }

    /// An idle connection that still answers, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, SmtpFailure> {
        loop {
            let Some(idle) = self.lock_idle().pop() else {
                break;
            };
            let mut connection = idle.connection;
            if idle.since.elapsed() < CHECK_IDLE_AFTER || connection.test_connected().await {
                return Ok(connection);
            }
            tracing::debug!(event = "smtp_connection_stale", host = %self.url.host);
        }
        self.connect().await
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a socket with `TCP_NODELAY` (lettre 0.11 never sets it, and Nagle plus delayed
    /// ACKs cost ~40 ms per message), then greets, upgrades to TLS and authenticates as the
    /// URL says.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpFailure> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(SmtpFailure::Connect)?;
        tcp.set_nodelay(true).map_err(SmtpFailure::Connect)?;
        let stream: Box<dyn AsyncTokioStream> = match (&self.tls, self.url.security) {
            (Some(tls), Security::Implicit) => Box::new(ImplicitTls::wrap(tcp, tls.clone()).await?),
            _ => Box::new(tcp),
        };
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(SmtpFailure::Session)?;
        if let (Some(tls), Security::StartTls) = (&self.tls, self.url.security) {
            connection
                .starttls(tls.clone(), &self.hello)
                .await
                .map_err(SmtpFailure::Session)?;
        }
        if let Some((user, password)) = &self.credentials {
            let credentials = Credentials::new(user.clone(), password.0.clone());
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
                .map_err(SmtpFailure::Session)?;
        }
        tracing::debug!(event = "smtp_connection_opened", host = %self.url.host, port = self.url.port);
        Ok(connection)
    }
}

impl Sender for SmtpRelay {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let message = match compose(&self.from, delivery) {
            Ok(message) => message,
            Err(e) => return Outcome::permanent(e.to_string()),
        };
        match self.transmit(&message).await {
            Ok(()) => Outcome::Delivered,
            Err(failure) => {
                let outcome = classify(&failure);
                tracing::debug!(
                    event = "email_not_delivered",
                    recipient = %delivery.recipient.email.as_ref().map_or_else(|| "-".to_string(), |a| mask(a.as_str())),
                    error = %failure,
                    "SMTP send failed"
                );
                outcome
            }
        }
    }
}

/// The one place an SMTP failure becomes an outcome: a 5xx reply to the message is permanent
/// for that recipient; a 4xx reply, a failed session (even 5xx: the relay or our credentials,
/// not the recipient), connection errors, TLS errors and timeouts are transient.
///
/// A 4xx reply to the message that says we are too fast (see [`throttling`]) is marked
/// `throttled`, so the recipient's domain slows down. A failed session is never marked: its
/// greeting, `EHLO`, TLS or `AUTH` reply comes from the relay, whatever the recipient's domain.
fn classify(failure: &SmtpFailure) -> Outcome {
    let reply = |error: &lettre::transport::smtp::Error| {
        let text = std::error::Error::source(error).map_or(String::new(), |s| s.to_string());
        (error.status().map(u16::from), text)
    };
    match failure {
        SmtpFailure::Transaction(error) | SmtpFailure::Session(error) if error.is_transient() => {
            let (code, text) = reply(error);
            let about_message = matches!(failure, SmtpFailure::Transaction(_));
            Outcome::Transient {
                reason: short(&format!("{} {text}", code_text(code))),
                retry_after: retry_after(&text),
                throttled: about_message && code.is_some_and(|code| throttling(code, &text)),
            }
        }
        SmtpFailure::Transaction(error) if error.is_permanent() => {
            let (code, text) = reply(error);
            Outcome::permanent(short(&format!("{} {text}", code_text(code))))
        }
        // lettre refused locally, e.g. a non-ASCII address the relay cannot take (no SMTPUTF8).
        SmtpFailure::Transaction(error) if error.is_client() => {
            Outcome::permanent(short(&failure.to_string()))
        }
        _ => Outcome::transient(short(&failure.to_string())),
    }
}

/// A reply code as its three digits, or nothing.
fn code_text(code: Option<u16>) -> String {
    code.map_or(String::new(), |code| code.to_string())
}

/// Whether a 4xx reply asks us to send more slowly: 421, 451 or 452 with rate wording
/// ([`RATE_WORDING`], or a NetEase rate code). Greylisting, full mailboxes, storage and size
/// limits and "too many recipients" (per message, not per second) are not throttling, and
/// neither is a bare "421 service not available, closing transmission channel".
fn throttling(code: u16, text: &str) -> bool {
    if !matches!(code, 421 | 451 | 452) {
        return false;
    }
    let text = text.to_ascii_lowercase();
    if NETEASE_RATE_CODES.iter().any(|code| text.contains(code)) {
        return true;
    }
    // Words of letters and digits, matched as whole words or word prefixes, so "rate" does not
    // match "separate" nor "limit" "unlimited".
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    let has = |phrase: &str| {
        let phrase: Vec<&str> = phrase.split(' ').collect();
        let last = phrase.len() - 1;
        words.windows(phrase.len()).any(|window| {
            window[..last] == phrase[..last] && window[last].starts_with(phrase[last])
        })
    };
    !NOT_RATE_WORDING.iter().any(|phrase| has(phrase))
        && RATE_WORDING.iter().any(|phrase| has(phrase))
}

/// Wording of a reply that says we send too fast, as lower-case words; the last word matches
/// as a prefix ("throttl" matches "throttled", "rate" "ratelimited").
const RATE_WORDING: &[&str] = &[
    "too many",
    "too fast",
    "slow down",
    "try again later",
    "try later",
    "rate",
    "throttl",
    "limit",
    "exceeded",
    "frequency",
    "volume",
];

/// Wording that makes a reply about something other than our pace, even with rate wording:
/// greylisting ("try again later" is its usual text), the recipient's mailbox, sizes.
const NOT_RATE_WORDING: &[&str] = &[
    "greylist",
    "graylist",
    "mailbox full",
    "over quota",
    "storage",
    "size",
    "too many recipients",
];

/// NetEase (163.com, 126.com) deferral codes for sending too much or too fast: `DT:SPM`
/// (deferred as spam-like volume), `HL:IFL`/`HL:ICC` (too many mails or connections from the
/// IP), `MI:SFQ`, `RP:QRC`, `RP:TRC` (sender or recipient counts over the limit).
const NETEASE_RATE_CODES: &[&str] = &["dt:spm", "hl:ifl", "hl:icc", "mi:sfq", "rp:qrc", "rp:trc"];

/// One line, at most [`REASON_MAX`] characters.
fn short(reason: &str) -> String {
    let line = one_line(reason);
    match line.char_indices().nth(REASON_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The wait a 4xx reply text asks for: "try again in 120 seconds", "retry after 5 min",
/// "greylisted for 300s"; NetEase's `DT:SPM` (163.com spam deferral) means 2 minutes.
fn retry_after(text: &str) -> Option<Duration> {
    let text = text.to_ascii_lowercase();
    if text.contains("dt:spm") {
        return Some(Duration::from_secs(120));
    }
    // Words of letters or digits, with "120s" split into "120", "s".
    let mut words = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, unit) = word.split_at(digits);
        words.extend([number, unit].into_iter().filter(|w| !w.is_empty()));
    }
    words.windows(3).find_map(|w| {
        if !matches!(w[0], "in" | "after" | "for" | "wait") {
            return None;
        }
        let count: u64 = w[1].parse().ok()?;
        let unit = match w[2] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            _ => return None,
        };
        Some(Duration::from_secs(count.saturating_mul(unit)).min(RETRY_AFTER_MAX))
    })
}

/// A socket already wrapped in TLS, handed to lettre as if it were plain TCP: lettre reads the
/// greeting as soon as it gets a stream, so implicit TLS must come first. lettre's only public
/// way to TLS-wrap a socket we opened is `AsyncNetworkStream`, deprecated ("not meant to be
/// public") but still exported in 0.11; this adapts its futures-io traits to tokio's.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(AsyncNetworkStream);

#[allow(deprecated)]
impl ImplicitTls {
    async fn wrap(tcp: TcpStream, tls: TlsParameters) -> Result<ImplicitTls, SmtpFailure> {
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream
            .upgrade_tls(tls)
            .await
            .map_err(SmtpFailure::Session)?;
        Ok(ImplicitTls(stream))
    }
}

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.get_mut().0), cx, unfilled) {
            Poll::Ready(Ok(read)) => {
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn retry_after_reads_the_wait_a_reply_asks_for() {
        let cases = [
            ("4.7.1 Try again in 120 seconds", secs(120)),
            ("Greylisted, please retry after 5 minutes", secs(300)),
            ("Greylisted for 300s", secs(300)),
            ("too many connections, wait 2 min", secs(120)),
            (
                "DT:SPM 163 smtp14,EsCowAA; please try again later",
                secs(120),
            ),
            ("try again in 1 hour", secs(3600)),
            ("try again in 99999999 hours", Some(RETRY_AFTER_MAX)),
            ("4.7.0 Try again later, closing connection.", None),
            ("Mailbox busy, 3 messages queued", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(retry_after(text), expected, "{text:?}");
        }
    }

    #[test]
    fn throttling_is_a_421_451_or_452_that_says_we_are_too_fast() {
        let throttling_replies = [
            (421, "4.7.0 Too many connections from your IP, slow down"),
            (421, "4.7.0 Try again later, closing connection. (EHLO)"),
            (
                421,
                "4.7.28 Our system has detected an unusual rate of unsolicited mail",
            ),
            (421, "Ip frequency limited, please try later"),
            (421, "HL:IFL 该IP短期内发送了大量信件，超过了网易的限制"),
            (451, "DT:SPM 163 smtp14,EsCowAA; please try again"),
            (
                451,
                "4.7.500 Server busy. Please try again later from [192.0.2.1]",
            ),
            (451, "4.7.1 Sending rate-limited, throttling in effect"),
            (451, "Too fast: message limit per minute exceeded"),
            (452, "4.7.0 Ratelimit exceeded for sender domain"),
            (
                421,
                "[TSS04] Messages temporarily deferred due to unexpected volume",
            ),
            (451, "4.3.2 Daily sending limit reached"),
        ];
        for (code, text) in throttling_replies {
            assert!(throttling(code, text), "{code} {text}");
        }
        let other_replies = [
            (
                421,
                "4.3.0 Service not available, closing transmission channel",
            ),
            (421, "4.4.2 Connection dropped due to timeout"),
            (451, "4.7.1 Greylisted, please try again in 120 seconds"),
            (451, "4.7.1 Greylisting in action, please try again later"),
            (
                451,
                "4.3.0 Requested action aborted: local error in processing",
            ),
            (452, "4.5.3 Too many recipients"),
            (
                452,
                "4.2.2 The email account that you tried to reach is over quota",
            ),
            (452, "4.3.1 Insufficient system storage"),
            (452, "4.3.4 Message size exceeds fixed limit"),
            (
                451,
                "4.4.0 Temporary failure: the separate relay is unlimited",
            ),
            (
                450,
                "4.2.1 The user is receiving mail at a rate that prevents delivery",
            ),
            (550, "5.7.1 Too many messages, rejected"),
            (421, ""),
        ];
        for (code, text) in other_replies {
            assert!(!throttling(code, text), "{code} {text}");
        }
    }

    #[test]
    fn smtp_urls_pick_host_port_security_and_user() {
        let url = SmtpUrl::parse("smtp://127.0.0.1:1025").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.security, url.username),
            ("127.0.0.1", 1025, Security::Plain, None)
        );
        let url = SmtpUrl::parse("smtp://relay.example:587/?tls=required").expect("valid");
        assert_eq!((url.port, url.security), (587, Security::StartTls));
        let url = SmtpUrl::parse("smtps://mailer%40xiami@smtp.example").expect("valid");
        assert_eq!(url.port, 465);
        assert_eq!(url.security, Security::Implicit);
        assert_eq!(url.username.as_deref(), Some("mailer@xiami"));
        let url = SmtpUrl::parse("smtp://[::1]:2525").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 2525));
        for bad in [
            "127.0.0.1:25",
            "http://127.0.0.1",
            "smtp://user:secret@host",
            "smtp://host:port",
            "smtp://host?tls=maybe",
            "smtp://host/path",
            "smtp://",
        ] {
            assert!(SmtpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_ids_are_valid_and_deterministic_for_any_ids() {
        let campaign = CampaignId::parse("xiami:2021.a").expect("valid");
        let id = |user: &str| {
            message_id(
                &campaign,
                &UserId::parse(user).expect("valid"),
                "xiami.example",
            )
        };
        assert_eq!(id("u-1001"), "<xiami%3A2021%2Ea.u-1001@xiami.example>");
        assert_eq!(id("a.b"), "<xiami%3A2021%2Ea.a.b@xiami.example>");
        assert_eq!(
            id(".a..b."),
            "<xiami%3A2021%2Ea.%2Ea%2E%2Eb%2E@xiami.example>"
        );
        assert_eq!(
            id("名 <x>"),
            "<xiami%3A2021%2Ea.%E5%90%8D%20%3Cx%3E@xiami.example>"
        );
        assert_eq!(id("名 <x>"), id("名 <x>"));
    }

    #[test]
    fn eml_file_names_are_safe_distinct_and_short() {
        let name = |campaign: &str, user: &str| {
            eml_file_name(
                &CampaignId::parse(campaign).expect("valid"),
                &UserId::parse(user).expect("valid"),
            )
        };
        assert_eq!(
            name("c", "../../etc/passwd"),
            "c...%2F..%2Fetc%2Fpasswd.eml"
        );
        assert_ne!(name("a.b", "c"), name("a", "b.c"));
        let long = "名".repeat(256);
        let shortened = name("c", &long);
        assert!(
            shortened.len() <= 255 && shortened.ends_with(".eml"),
            "{shortened}"
        );
        assert_eq!(shortened, name("c", &long));
        assert_ne!(shortened, name("c", &"名".repeat(255)));
    }

    #[test]
    fn masks_keep_the_first_letter_and_the_domain() {
        assert_eq!(mask("layla@example.com"), "l***@example.com");
        assert_eq!(mask("@example.com"), "***@example.com");
        assert_eq!(mask("nonsense"), "***");
    }

    #[test]
    fn passwords_never_print() {
        let password = Password("hunter2".into());
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
