//! `PipeliningSmtp`: a small SMTP server on 127.0.0.1 that offers `PIPELINING` (RFC 2920)
//! unless started plain, answers every command read in one go with one write, and notes how
//! many reads each transaction took from `MAIL` to `DATA` — one when the client pipelined.
//! Refuses chosen recipients at `RCPT` with a 550 (and then `DATA` with a 554, as a pipelining
//! server must), and answers the final `.` of a message late, never, or by hanging up, if told.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One transaction as the server saw it.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// `RCPT TO` addresses accepted.
    pub to: Vec<String>,
    /// The message after `DATA`, dot-unstuffed; empty when `DATA` was refused.
    pub data: String,
    /// Reads from the one that held `MAIL` to the one that held `DATA`.
    pub reads_to_data: usize,
}

/// How the server answers the final `.` of a message (it has noted the message either way).
#[derive(Debug, Clone, Copy, Default)]
pub enum FinalReply {
    /// `250` at once.
    #[default]
    Now,
    /// `250` after this long.
    After(Duration),
    /// Never: the connection stays open and silent.
    Never,
    /// Closes the connection without a reply.
    HangUp,
}

#[derive(Default)]
struct Shared {
    transactions: Vec<Transaction>,
    refused: HashSet<String>,
    sessions: usize,
    final_reply: FinalReply,
}

/// The server; it stops with the test's runtime.
#[derive(Clone)]
pub struct PipeliningSmtp {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    pipelining: bool,
}

impl PipeliningSmtp {
    pub async fn start() -> PipeliningSmtp {
        PipeliningSmtp::listen(true).await
    }

    /// A server that does not offer `PIPELINING`: clients send one command per round trip.
    pub async fn start_plain() -> PipeliningSmtp {
        PipeliningSmtp::listen(false).await
    }

    async fn listen(pipelining: bool) -> PipeliningSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let server = PipeliningSmtp {
            port,
            shared,
            pipelining,
        };
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepting.lock().sessions += 1;
                tokio::spawn(accepting.clone().serve(socket));
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Refuses `address` at `RCPT` with a 550.
    pub fn refuse(&self, address: &str) {
        self.lock().refused.insert(address.to_string());
    }

    /// From now on, answers the final `.` of each message as `reply` says.
    pub fn answer_final_dot(&self, reply: FinalReply) {
        self.lock().final_reply = reply;
    }

    /// Transactions whose message arrived.
    pub fn delivered(&self) -> Vec<Transaction> {
        let shared = self.lock();
        shared
            .transactions
            .iter()
            .filter(|t| !t.data.is_empty())
            .cloned()
            .collect()
    }

    /// Every transaction, delivered or not.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.lock().transactions.clone()
    }

    /// SMTP sessions opened so far.
    pub fn sessions(&self) -> usize {
        self.lock().sessions
    }

    /// Waits until `n` messages arrived (or `limit` passed) and returns them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Transaction> {
        let until = Instant::now() + limit;
        while self.delivered().len() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.delivered()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn serve(self, mut socket: TcpStream) {
        if socket
            .write_all(b"220 pipelining.test ESMTP\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut pending = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // The transaction being received, and whether its `DATA` was accepted.
        let mut current: Option<Transaction> = None;
        let mut in_data = false;
        loop {
            let n = match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            if let Some(t) = current.as_mut()
                && !in_data
            {
                t.reads_to_data += 1;
            }
            let mut replies = String::new();
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = pending.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                if in_data {
                    if line == "." {
                        in_data = false;
                        let final_reply = {
                            let mut shared = self.lock();
                            if let Some(t) = current.take() {
                                shared.transactions.push(t);
                            }
                            shared.final_reply
                        };
                        match final_reply {
                            FinalReply::Now => {}
                            FinalReply::After(wait) => {
                                if socket.write_all(replies.as_bytes()).await.is_err() {
                                    return;
                                }
                                replies.clear();
                                tokio::time::sleep(wait).await;
                            }
                            FinalReply::Never => {
                                let _ = socket.write_all(replies.as_bytes()).await;
                                // Holds the connection open, reading and answering nothing.
                                while let Ok(n) = socket.read(&mut chunk).await {
                                    if n == 0 {
                                        return;
                                    }
                                }
                                return;
                            }
                            FinalReply::HangUp => return,
                        }
                        replies.push_str("250 2.0.0 queued\r\n");
                    } else if let Some(t) = current.as_mut() {
                        t.data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        t.data.push_str("\r\n");
                    }
                    continue;
                }
                let upper = line.to_ascii_uppercase();
                if upper.starts_with("EHLO") && self.pipelining {
                    replies.push_str("250-pipelining.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n");
                } else if upper.starts_with("EHLO") {
                    replies.push_str("250-pipelining.test\r\n250 8BITMIME\r\n");
                } else if upper.starts_with("MAIL FROM:") {
                    current = Some(Transaction {
                        to: Vec::new(),
                        data: String::new(),
                        reads_to_data: 1,
                    });
                    replies.push_str("250 2.1.0 ok\r\n");
                } else if upper.starts_with("RCPT TO:") {
                    let address = line[8..]
                        .trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>');
                    if self.lock().refused.contains(address) {
                        replies.push_str("550 5.1.1 no such user here\r\n");
                    } else {
                        if let Some(t) = current.as_mut() {
                            t.to.push(address.to_string());
                        }
                        replies.push_str("250 2.1.5 ok\r\n");
                    }
                } else if upper == "DATA" {
                    match current.as_ref() {
                        Some(t) if !t.to.is_empty() => {
                            in_data = true;
                            replies.push_str("354 go ahead\r\n");
                        }
                        _ => {
                            if let Some(t) = current.take() {
                                self.lock().transactions.push(t);
                            }
                            replies.push_str("554 5.5.1 no valid recipients\r\n");
                        }
                    }
                } else if upper == "QUIT" {
                    let _ = socket.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    // NOOP, RSET and the rest.
                    replies.push_str("250 ok\r\n");
                }
            }
            if !replies.is_empty() && socket.write_all(replies.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
