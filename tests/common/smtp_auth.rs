//! `SmtpAuthFront`: a front for an `SmtpSink` that offers `AUTH PLAIN` over plain TCP and
//! checks the credentials (mailin offers AUTH only after STARTTLS), so a test can run sunset
//! with an SMTP user and password against the sink.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Relays SMTP to the sink, answering `AUTH` itself: 235 for the expected user and password,
/// 535 otherwise.
pub struct SmtpAuthFront {
    port: u16,
    accepted: Arc<Mutex<usize>>,
}

impl SmtpAuthFront {
    /// Starts a front on a free port of 127.0.0.1 for the sink on `sink_port`.
    pub async fn start(sink_port: u16, user: &str, password: &str) -> SmtpAuthFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let expected = base64(format!("\0{user}\0{password}").as_bytes());
        let accepted = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (expected, counter) = (expected.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    if let Ok(sink) = TcpStream::connect(("127.0.0.1", sink_port)).await {
                        relay(client, sink, &expected, &counter).await;
                    }
                });
            }
        });
        SmtpAuthFront { port, accepted }
    }

    /// `smtp://USER@127.0.0.1:PORT`.
    pub fn url(&self, user: &str) -> String {
        format!("smtp://{user}@127.0.0.1:{}", self.port)
    }

    /// Logins accepted so far (one per SMTP connection that authenticated).
    pub fn logins(&self) -> usize {
        *self.accepted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Client lines go to the sink except `AUTH`, answered here; the sink's reply to `EHLO` gets an
/// `AUTH PLAIN` line added.
async fn relay(client: TcpStream, sink: TcpStream, expected: &str, accepted: &Mutex<usize>) {
    let (client_read, client_write) = client.into_split();
    let (sink_read, mut sink_write) = sink.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
    let ehlo_pending = Arc::new(Mutex::new(false));
    let replies = {
        let (client_write, ehlo_pending) = (Arc::clone(&client_write), Arc::clone(&ehlo_pending));
        tokio::spawn(async move {
            let mut lines = BufReader::new(sink_read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let ehlo_done = line.starts_with("250 ")
                    && std::mem::take(
                        &mut *ehlo_pending.lock().unwrap_or_else(PoisonError::into_inner),
                    );
                let out = if ehlo_done {
                    format!("250-{}\r\n250 AUTH PLAIN\r\n", &line[4..])
                } else {
                    format!("{line}\r\n")
                };
                if write(&client_write, &out).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut lines = BufReader::new(client_read).lines();
    let mut in_data = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let command = line.to_ascii_uppercase();
        if !in_data && command.starts_with("AUTH PLAIN ") {
            let ok = line["AUTH PLAIN ".len()..].trim() == expected;
            if ok {
                *accepted.lock().unwrap_or_else(PoisonError::into_inner) += 1;
            }
            let reply = if ok {
                "235 2.7.0 Authentication successful\r\n"
            } else {
                "535 5.7.8 Authentication credentials invalid\r\n"
            };
            if write(&client_write, reply).await.is_err() {
                break;
            }
            continue;
        }
        if !in_data && command.starts_with("EHLO") {
            *ehlo_pending.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }
        if !in_data && command == "DATA" {
            in_data = true;
        } else if in_data && line == "." {
            in_data = false;
        }
        if sink_write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    replies.abort();
}

async fn write<W: AsyncWrite + Unpin>(
    writer: &tokio::sync::Mutex<W>,
    text: &str,
) -> std::io::Result<()> {
    writer.lock().await.write_all(text.as_bytes()).await
}

/// Standard base64 with padding (what `AUTH PLAIN` carries).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
