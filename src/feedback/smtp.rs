//! The SMTP listener on `feedback.smtp_listen`: takes mail for the bounce domain only (DSNs,
//! complaint reports, mails to `u-<token>@…`), reads each message into reports and answers
//! `250` only once they are recorded, so a relay keeps a report the ledger could not take and
//! retries it.

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mailin::{Action, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::desk::Desk;
use super::events;
use super::inbound;

/// The largest message taken; DSNs and ARF reports carry at most one returned message.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Sessions served at once; more are told to come back later (`421`).
const MAX_SESSIONS: usize = 64;
/// The longest line read (RFC 5321 allows 1000 octets; some relays send longer).
const MAX_LINE: u64 = 64 * 1024;
/// A session silent this long is closed (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes).
const IDLE: Duration = Duration::from_secs(300);

/// What the listener needs per message.
pub struct Inbox {
    /// Where reports go.
    pub desk: Arc<Desk>,
    /// `feedback.bounce_domain`; empty = every recipient is refused.
    pub bounce_domain: String,
    /// The domain of sunset's `Message-ID`s (`email.from`'s).
    pub message_domain: String,
}

/// Accepts sessions on `listener` until `stop` is cancelled; sessions in progress are then told
/// `421` at their next command.
pub async fn serve(listener: TcpListener, inbox: Arc<Inbox>, stop: CancellationToken) {
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "SMTP accept failed");
                continue;
            }
        };
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            events::refused("smtp", "too-many-sessions");
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"421 4.3.2 Too many sessions, try again later\r\n")
                    .await;
            });
            continue;
        };
        let inbox = inbox.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = session(stream, peer.ip(), &inbox, &stop).await {
                tracing::debug!(%error, "SMTP session ended");
            }
            drop(permit);
        });
    }
}

/// One transaction's envelope and message, shared between mailin's handler and the session.
#[derive(Default)]
struct Transaction {
    /// Local parts of the accepted recipients.
    recipients: Vec<String>,
    message: Vec<u8>,
    too_big: bool,
    /// Set by the end of `DATA`: the message waits to be read and recorded.
    complete: bool,
}

/// mailin's per-session callbacks: envelope checks and message collection.
struct Handler {
    bounce_domain: String,
    transaction: Arc<Mutex<Transaction>>,
}

impl Handler {
    fn transaction(&self) -> std::sync::MutexGuard<'_, Transaction> {
        self.transaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl mailin::Handler for Handler {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        *self.transaction() = Transaction::default();
        mailin::response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let to = to.trim().trim_start_matches('<').trim_end_matches('>');
        match to.rsplit_once('@') {
            Some((local, domain))
                if !self.bounce_domain.is_empty()
                    && domain.eq_ignore_ascii_case(&self.bounce_domain) =>
            {
                self.transaction().recipients.push(local.to_string());
                mailin::response::OK
            }
            _ => {
                events::refused("smtp", "not-the-bounce-domain");
                Response::custom(
                    550,
                    "5.7.1 Relaying denied: this server takes mail for its bounce domain only"
                        .into(),
                )
            }
        }
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut transaction = self.transaction();
        if transaction.message.len() + buf.len() > MAX_MESSAGE_BYTES {
            transaction.too_big = true;
            transaction.message = Vec::new();
        } else if !transaction.too_big {
            transaction.message.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.transaction().complete = true;
        mailin::response::OK
    }
}

async fn session(
    stream: TcpStream,
    peer: IpAddr,
    inbox: &Inbox,
    stop: &CancellationToken,
) -> io::Result<()> {
    let transaction = Arc::new(Mutex::new(Transaction::default()));
    let handler = Handler {
        bounce_domain: inbox.bounce_domain.clone(),
        transaction: transaction.clone(),
    };
    let mut session = SessionBuilder::new("sunset-feedback").build(peer, handler);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer.write_all(&session.greeting().buffer()?).await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = tokio::select! {
            () = stop.cancelled() => {
                writer.write_all(b"421 4.3.2 Shutting down, try again later\r\n").await?;
                return Ok(());
            }
            read = tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)) => read,
        };
        let Ok(read) = read else {
            writer.write_all(b"421 4.4.2 Idle too long\r\n").await?;
            return Ok(());
        };
        if read? == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            events::refused("smtp", "line-too-long");
            writer.write_all(b"500 5.5.2 Line too long\r\n").await?;
            return Ok(());
        }
        let mut response = session.process(&null_sender_named(&line));
        let complete = {
            let mut transaction = transaction.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut transaction.complete, false)
                .then(|| std::mem::take(&mut *transaction))
        };
        if let Some(complete) = complete {
            response = receive(complete, inbox).await;
        }
        match response.action {
            Action::NoReply => {}
            Action::Reply => writer.write_all(&response.buffer()?).await?,
            Action::Close => {
                writer.write_all(&response.buffer()?).await?;
                return Ok(());
            }
            Action::UpgradeTls => {
                writer.write_all(b"454 4.7.0 TLS not available\r\n").await?;
            }
        }
    }
}

/// The line with a null reverse path (`MAIL FROM:<>`, which every DSN and report carries,
/// RFC 5321 §4.5.5) given a placeholder: mailin's parser takes only non-empty paths, and the
/// listener reads nothing from the reverse path.
fn null_sender_named(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const NULL: &[u8] = b"MAIL FROM:<>";
    match line.get(..NULL.len()) {
        Some(head) if head.eq_ignore_ascii_case(NULL) => {
            let mut named = b"MAIL FROM:<MAILER-DAEMON>".to_vec();
            named.extend_from_slice(&line[NULL.len()..]);
            std::borrow::Cow::Owned(named)
        }
        _ => std::borrow::Cow::Borrowed(line),
    }
}

/// Reads a complete message into reports and records them: `250` once recorded (or ignored),
/// `451` when the ledger could not take them (the relay retries), `552` when too big.
async fn receive(transaction: Transaction, inbox: &Inbox) -> Response {
    if transaction.too_big {
        events::refused("smtp", "message-too-big");
        return Response::custom(552, "5.3.4 Message too big".into());
    }
    let findings = match inbound::findings(
        &transaction.message,
        &transaction.recipients,
        &inbox.message_domain,
    ) {
        Ok(findings) => findings,
        Err(ignored) => {
            events::ignored(ignored.as_str());
            return Response::custom(250, "2.0.0 Accepted".into());
        }
    };
    for finding in &findings {
        if let Err(error) = inbox.desk.record_first(&finding.reports()).await {
            tracing::error!(%error, source = finding.source.as_str(), "could not record a report; the relay will retry");
            return Response::custom(
                451,
                "4.3.0 Cannot record the report now, try again later".into(),
            );
        }
    }
    Response::custom(250, "2.0.0 Recorded".into())
}
