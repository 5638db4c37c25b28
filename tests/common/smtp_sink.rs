//! `SmtpSink`: a real SMTP server (mailin-embedded) on 127.0.0.1 that records every message and
//! refuses chosen recipients at `RCPT` with chosen replies, for tests of email and the worker.

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mailin_embedded::{Handler, Response, Server};

/// SMTP sessions the sink serves at once (mailin-embedded runs one thread per session).
const THREADS: u32 = 64;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message as sent after `DATA` (dot-unstuffed, CRLF line ends).
    pub raw: Vec<u8>,
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses the sink accepted.
    pub to: Vec<String>,
    /// When the final `.` had been read.
    pub at: Instant,
}

impl Received {
    /// The raw message as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The message parsed by mail-parser (MIME decoded, RFC 2047 subjects decoded).
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("the sink received a parsable message")
    }
}

/// A refusal for one recipient: the reply, and how many more times it applies (`None` = always).
#[derive(Debug, Clone)]
struct Rule {
    code: u16,
    text: String,
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    messages: Mutex<Vec<Received>>,
    /// By lower-case address.
    rules: Mutex<HashMap<String, Rule>>,
    /// Refusals given, with the address and when.
    refusals: Mutex<Vec<(String, Instant)>>,
    /// A relay-wide limit: recipients above it are refused.
    bucket: Mutex<Option<Bucket>>,
    /// `EHLO`/`HELO` commands seen: one per SMTP session (two with STARTTLS, which the sink
    /// does not offer).
    sessions: AtomicUsize,
}

/// A token bucket of recipients per second: a relay that takes so many and refuses the rest.
#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    code: u16,
    text: String,
}

impl Bucket {
    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A running SMTP server on 127.0.0.1; it accepts everything unless told otherwise and runs
/// until the test process exits.
pub struct SmtpSink {
    port: u16,
    shared: Arc<Shared>,
}

impl SmtpSink {
    /// Starts a sink on a free port.
    pub fn start() -> SmtpSink {
        SmtpSink::start_on(0)
    }

    /// Starts a sink on `port` (0: a free one), e.g. where a relay was down until now.
    pub fn start_on(port: u16) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared::default());
        let mut server = Server::new(Session {
            shared: Arc::clone(&shared),
            current: None,
        });
        server
            .with_name("sink.test")
            .with_num_threads(THREADS)
            .with_tcp_listener(listener);
        std::thread::Builder::new()
            .name(format!("smtp-sink-{port}"))
            .spawn(move || {
                // Serves forever; an error here would mean the listener broke.
                let _ = server.serve();
            })
            .expect("spawn the SMTP sink thread");
        SmtpSink { port, shared }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Refuses `address` at `RCPT` with `code` (e.g. 550, 451) from now on.
    pub fn reject(&self, address: &str, code: u16) {
        let text = if code >= 500 {
            "5.1.1 Mailbox unavailable"
        } else {
            "4.3.0 Try again later"
        };
        self.reject_with(address, code, text);
    }

    /// Refuses `address` at `RCPT` with `code` and `text` (e.g. 451, "DT:SPM …") from now on.
    pub fn reject_with(&self, address: &str, code: u16, text: &str) {
        self.add_rule(address, code, text, None);
    }

    /// Refuses `address` the next `times` times, then accepts it again.
    pub fn reject_times(&self, address: &str, code: u16, text: &str, times: usize) {
        self.add_rule(address, code, text, Some(times));
    }

    /// Behaves like a relay that takes `per_sec` recipients a second (a token bucket with a
    /// burst of a tenth of that) and answers `code text` to every recipient above it.
    pub fn throttle_above(&self, per_sec: f64, code: u16, text: &str) {
        let burst = (per_sec / 10.0).max(1.0);
        *lock(&self.shared.bucket) = Some(Bucket {
            per_sec,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            code,
            text: text.to_string(),
        });
    }

    /// The refusals given so far: address and when.
    pub fn refusals(&self) -> Vec<(String, Instant)> {
        lock(&self.shared.refusals).clone()
    }

    /// Accepts `address` again.
    pub fn accept(&self, address: &str) {
        lock(&self.shared.rules).remove(&address.to_ascii_lowercase());
    }

    fn add_rule(&self, address: &str, code: u16, text: &str, remaining: Option<usize>) {
        if remaining == Some(0) {
            return;
        }
        lock(&self.shared.rules).insert(
            address.to_ascii_lowercase(),
            Rule {
                code,
                text: text.to_string(),
                remaining,
            },
        );
    }

    /// Every message received so far, in order of arrival.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared.messages).clone()
    }

    /// How many messages arrived so far (without copying them).
    pub fn count(&self) -> usize {
        lock(&self.shared.messages).len()
    }

    /// Messages received so far whose envelope includes `address`.
    pub fn messages_to(&self, address: &str) -> Vec<Received> {
        let address = address.to_ascii_lowercase();
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|to| to.to_ascii_lowercase() == address))
            .collect()
    }

    /// SMTP sessions opened so far (counted at `EHLO`/`HELO`).
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// Blocks until at least `n` messages arrived, then returns them all; panics after
    /// `timeout`. In a single-threaded tokio test, use [`SmtpSink::wait_for_async`].
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages within {timeout:?}, got {}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`SmtpSink::wait_for`] without blocking the runtime.
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages within {timeout:?}, got {}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The message being received on one connection.
#[derive(Debug, Clone)]
struct Draft {
    from: String,
    to: Vec<String>,
    raw: Vec<u8>,
}

/// mailin's per-connection handler (cloned from the prototype for each connection).
#[derive(Debug, Clone)]
struct Session {
    shared: Arc<Shared>,
    current: Option<Draft>,
}

impl Handler for Session {
    fn helo(&mut self, _ip: IpAddr, _domain: &str) -> Response {
        self.shared.sessions.fetch_add(1, Ordering::SeqCst);
        mailin_embedded::response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let refused = |response: Response| {
            lock(&self.shared.refusals).push((to.to_string(), Instant::now()));
            response
        };
        if let Some(bucket) = lock(&self.shared.bucket).as_mut()
            && !bucket.take()
        {
            return refused(Response::custom(bucket.code, bucket.text.clone()));
        }
        let mut rules = lock(&self.shared.rules);
        let key = to.to_ascii_lowercase();
        let Some(rule) = rules.get_mut(&key) else {
            return mailin_embedded::response::OK;
        };
        let reply = Response::custom(rule.code, rule.text.clone());
        match &mut rule.remaining {
            Some(1) => {
                rules.remove(&key);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        refused(reply)
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Draft {
            from: from.to_string(),
            to: to.to_vec(),
            raw: Vec::new(),
        });
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(draft) = &mut self.current {
            draft.raw.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(draft) = self.current.take() {
            lock(&self.shared.messages).push(Received {
                raw: draft.raw,
                from: draft.from,
                to: draft.to,
                at: Instant::now(),
            });
        }
        mailin_embedded::response::OK
    }
}
