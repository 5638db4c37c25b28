//! The SMTP transport: a bounded pool of connections we open ourselves (to the relay `email.url`
//! names, parsed in `relay_url`), pipelining `MAIL`/`RCPT`/`DATA` where the relay offers it on plain TCP, and telling a message
//! not yet handed over from one whose final `.` went out unanswered; a failed send's reply is
//! classified in `reply`, implicit TLS is adapted in `tls`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::held::{Beneath, HeldWrites};
use super::relay_url::{Security, SmtpUrl};
use super::reply::{SmtpFailure, classify};
use super::tls::ImplicitTls;
use super::{Composer, Email, PASSWORD_ENV, invalid, signed_email};
use crate::channel::{Delivery, Outcome, Sender};
use crate::config::{ConfigError, EmailConfig};
use crate::logging::{MaskedEmail, MaskedText};
use crate::secret::Secret;

/// An idle connection older than this is checked with `NOOP` before reuse: relays close idle
/// sessions (Postfix after 300 s), and a dead socket would otherwise fail a recipient.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(10);

/// The longest `email.final_reply_timeout_ms` taken: a day. Longer is a mistake (a unit slip),
/// and would hold a send slot and a connection that long.
const FINAL_REPLY_TIMEOUT_MAX_MS: u64 = 24 * 3600 * 1000;

/// An SMTP relay reached through a bounded pool of connections: at most `email.pool_size` are
/// open at once, each carries many messages, and any error drops the connection.
pub struct SmtpRelay {
    url: SmtpUrl,
    credentials: Option<(String, Secret)>,
    /// Built once: loading the native root certificates is not free.
    tls: Option<TlsParameters>,
    /// The `EHLO` name.
    hello: ClientId,
    /// Addresses and signs each email.
    composer: Composer,
    /// `email.timeout_ms`: connect and commands, per message, until the message is handed over.
    timeout: Duration,
    /// `email.final_reply_timeout_ms`: the wait for the reply to the final `.`, from the moment
    /// it is written.
    final_reply_timeout: Duration,
    /// One permit per send in flight. A send opens a connection only when none is idle, so
    /// open connections (in use + idle) never outnumber the permits.
    permits: Semaphore,
    /// Connections between sends, most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    pool_size: usize,
}

struct IdleConnection {
    session: Session,
    since: Instant,
}

/// A connection, what happens on its socket below lettre, and whether to pipeline on it
/// (plain TCP, the relay offers `PIPELINING`).
struct Session {
    connection: AsyncSmtpConnection,
    beneath: Beneath,
    pipelining: bool,
}

impl Session {
    /// Opens a transaction up to `DATA`'s `354`: `MAIL`, `RCPT` and `DATA` in one write when
    /// pipelining, else one command per round trip. A negative reply leaves the session
    /// unusable.
    async fn open_data(&mut self, email: &Email) -> Result<(), SmtpFailure> {
        if self.pipelining && email.bytes.is_ascii() && ascii_addresses(&email.envelope) {
            let mut commands = Mail::new(email.envelope.from().cloned(), vec![]).to_string();
            for to in email.envelope.to() {
                commands.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
            }
            self.beneath.push(commands.as_bytes());
            // lettre writes `DATA` behind them and reads the first reply: `MAIL`'s.
            self.connection
                .command(Data)
                .await
                .map_err(SmtpFailure::Transaction)?;
            for _ in email.envelope.to() {
                self.connection
                    .read_response()
                    .await
                    .map_err(SmtpFailure::Transaction)?;
            }
            self.connection
                .read_response()
                .await
                .map_err(SmtpFailure::Transaction)?;
            return Ok(());
        }
        let mail = Mail::new(email.envelope.from().cloned(), self.mail_parameters(email)?);
        self.connection
            .command(mail)
            .await
            .map_err(SmtpFailure::Transaction)?;
        for to in email.envelope.to() {
            self.connection
                .command(Rcpt::new(to.clone(), vec![]))
                .await
                .map_err(SmtpFailure::Transaction)?;
        }
        self.connection
            .command(Data)
            .await
            .map_err(SmtpFailure::Transaction)?;
        Ok(())
    }

    /// `MAIL`'s parameters, as lettre's own `send` sets them: `SMTPUTF8` for a non-ASCII
    /// address and `BODY=8BITMIME` for a non-ASCII message, each only where the relay offers it.
    fn mail_parameters(&self, email: &Email) -> Result<Vec<MailParameter>, SmtpFailure> {
        let offered = self.connection.server_info();
        let mut parameters = Vec::new();
        if !ascii_addresses(&email.envelope) {
            if !offered.supports_feature(Extension::SmtpUtfEight) {
                return Err(SmtpFailure::Unsupported(
                    "SMTPUTF8, which a non-ASCII address needs",
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !email.bytes.is_ascii() {
            if !offered.supports_feature(Extension::EightBitMime) {
                return Err(SmtpFailure::Unsupported(
                    "8BITMIME, which a non-ASCII message needs",
                ));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(parameters)
    }
}

/// Whether an `EHLO` reply (after the greeting) offers `PIPELINING`.
fn offers_pipelining(replies: &[u8]) -> bool {
    String::from_utf8_lossy(replies).lines().any(|line| {
        line.starts_with("250")
            && line
                .get(4..)
                .and_then(|keywords| keywords.split_ascii_whitespace().next())
                .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// Whether no address needs `SMTPUTF8` (lettre's own check is private).
fn ascii_addresses(envelope: &Envelope) -> bool {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|address| AsRef::<str>::as_ref(address).is_ascii())
}

impl fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("final_reply_timeout", &self.final_reply_timeout)
            .finish_non_exhaustive()
    }
}

impl SmtpRelay {
    pub(super) fn new(
        config: &EmailConfig,
        composer: Composer,
        password: Option<Secret>,
    ) -> Result<SmtpRelay, ConfigError> {
        let url = SmtpUrl::parse(&config.url).map_err(|e| invalid("email.url", e))?;
        let credentials = match (&url.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(user), None) => {
                return Err(invalid(
                    "email.url",
                    format!(
                        "names user `{user}` but neither {PASSWORD_ENV} nor {PASSWORD_ENV}_FILE is set"
                    ),
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
        if !(1..=FINAL_REPLY_TIMEOUT_MAX_MS).contains(&config.final_reply_timeout_ms) {
            return Err(invalid(
                "email.final_reply_timeout_ms",
                format!(
                    "must be from 1 to {FINAL_REPLY_TIMEOUT_MAX_MS} (one day); RFC 5321 asks \
                     for 600000 (10 minutes), got {}",
                    config.final_reply_timeout_ms
                ),
            ));
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
            composer,
            timeout: Duration::from_millis(config.timeout_ms),
            final_reply_timeout: Duration::from_millis(config.final_reply_timeout_ms),
            permits: Semaphore::new(pool_size.min(Semaphore::MAX_PERMITS)),
            idle: Mutex::new(Vec::new()),
            pool_size,
        })
    }

    /// Says `QUIT` to every idle connection, each within the send timeout.
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.lock_idle());
        for mut idle in idle {
            let _ = tokio::time::timeout(self.timeout, idle.session.connection.quit()).await;
        }
    }

    /// Connects if needed and sends: up to the handover within `timeout` (waiting for a free
    /// slot is not counted: it only means other sends are in flight), then the final reply
    /// within `final_reply_timeout`.
    async fn transmit(&self, email: &Email) -> Result<(), SmtpFailure> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(SmtpFailure::Connect(io::Error::other("SMTP relay closed")));
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut session = tokio::time::timeout_at(deadline, self.checkout())
            .await
            .unwrap_or(Err(SmtpFailure::NoSession(self.timeout)))?;
        tokio::time::timeout_at(deadline, session.open_data(email))
            .await
            .unwrap_or(Err(SmtpFailure::TimedOut(self.timeout)))?;
        self.hand_over(&mut session, email, deadline).await?;
        // Only a connection that just succeeded goes back: after a negative reply the session
        // is in no known state, or a pipelined one still owes replies.
        self.lock_idle().push(IdleConnection {
            session,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Writes the message and its final `.`, then reads the reply: until `deadline` while the
    /// bytes are on their way, and for `final_reply_timeout` once they are all written. A
    /// relay may take minutes to accept a message (RFC 5321 §4.5.3.2.6), and giving up sooner
    /// would send it twice; a reply that never comes, or a connection that breaks, after the
    /// handover leaves the message's fate unknown.
    async fn hand_over(
        &self,
        session: &mut Session,
        email: &Email,
        deadline: tokio::time::Instant,
    ) -> Result<(), SmtpFailure> {
        let beneath = &session.beneath;
        beneath.watch_handover();
        let mut reply = pin!(session.connection.message(&email.bytes));
        let mut expiry = pin!(tokio::time::sleep_until(deadline));
        let mut extended = false;
        // The handover is noted while `reply` is polled, so it is looked at after each poll.
        let replied = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = reply.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            if !extended && beneath.handed_over() {
                extended = true;
                expiry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.final_reply_timeout);
            }
            expiry.as_mut().poll(cx).map(|()| None)
        })
        .await;
        let handed_over = beneath.handed_over();
        match replied {
            Some(Ok(_)) => Ok(()),
            // A 4xx or 5xx reply is the relay's answer, handed over or not.
            Some(Err(error)) if error.is_transient() || error.is_permanent() => {
                Err(SmtpFailure::Transaction(error))
            }
            Some(Err(error)) if handed_over => Err(SmtpFailure::FinalReplyLost(error)),
            Some(Err(error)) => Err(SmtpFailure::Transaction(error)),
            None if handed_over => Err(SmtpFailure::FinalReplyTimedOut(self.final_reply_timeout)),
            None => Err(SmtpFailure::TimedOut(self.timeout)),
        }
    }

    /// An idle connection that still answers, or a new one.
    async fn checkout(&self) -> Result<Session, SmtpFailure> {
        loop {
            let Some(idle) = self.lock_idle().pop() else {
                break;
            };
            let mut session = idle.session;
            if idle.since.elapsed() < CHECK_IDLE_AFTER || session.connection.test_connected().await
            {
                return Ok(session);
            }
            tracing::debug!(event = "smtp_connection_stale", host = %self.url.host);
        }
        self.connect().await
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a socket with `TCP_NODELAY` (lettre 0.11 never sets it, and Nagle plus delayed
    /// ACKs cost ~40 ms per message) whose writes are held until the next read (one write per
    /// message, not two), then greets, upgrades to TLS and authenticates as the URL says.
    async fn connect(&self) -> Result<Session, SmtpFailure> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(SmtpFailure::Connect)?;
        tcp.set_nodelay(true).map_err(SmtpFailure::Connect)?;
        let beneath = Beneath::listening();
        let tcp = HeldWrites::new(tcp, beneath.clone());
        let stream: Box<dyn AsyncTokioStream> = match (&self.tls, self.url.security) {
            (Some(tls), Security::Implicit) => Box::new(ImplicitTls::wrap(tcp, tls.clone()).await?),
            _ => Box::new(tcp),
        };
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(SmtpFailure::Session)?;
        // The greeting and the `EHLO` reply, read below lettre (plaintext unless implicit TLS).
        let offered = offers_pipelining(&beneath.heard());
        if let (Some(tls), Security::StartTls) = (&self.tls, self.url.security) {
            connection
                .starttls(tls.clone(), &self.hello)
                .await
                .map_err(SmtpFailure::Session)?;
        }
        if let Some((user, password)) = &self.credentials {
            let credentials = Credentials::new(user.clone(), password.expose().to_string());
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
                .map_err(SmtpFailure::Session)?;
        }
        tracing::debug!(event = "smtp_connection_opened", host = %self.url.host, port = self.url.port);
        // Pipelining writes below lettre, so only where nothing (TLS) sits between.
        let pipelining = self.tls.is_none() && offered;
        Ok(Session {
            connection,
            beneath,
            pipelining,
        })
    }
}

impl Sender for SmtpRelay {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let email = match signed_email(&self.composer, delivery).await {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        match self.transmit(&email).await {
            Ok(()) => Outcome::Delivered,
            Err(failure) => {
                let outcome = match classify(&failure) {
                    Outcome::Unreachable { reason } => Outcome::unreachable(format!(
                        "SMTP relay {}:{} unreachable: {reason}",
                        self.url.host, self.url.port
                    )),
                    outcome => outcome,
                };
                tracing::debug!(
                    event = "email_not_delivered",
                    recipient = %delivery.recipient.email.as_ref().map_or(MaskedEmail("-"), |a| MaskedEmail(a.as_str())),
                    error = %MaskedText(&failure.to_string()),
                    "SMTP send failed"
                );
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelining_is_offered_only_by_an_ehlo_keyword_line() {
        let reply = |keywords: &str| format!("220 relay ESMTP\r\n250-relay\r\n{keywords}\r\n");
        assert!(offers_pipelining(
            reply("250-PIPELINING\r\n250 8BITMIME").as_bytes()
        ));
        assert!(offers_pipelining(reply("250 pipelining").as_bytes()));
        for not in [
            "250 8BITMIME",
            "250-XPIPELINING\r\n250 SIZE",
            "250-SIZE PIPELINING",
            "220 PIPELINING",
        ] {
            assert!(!offers_pipelining(reply(not).as_bytes()), "{not}");
        }
    }
}
