//! `PushSink`: a push gateway on 127.0.0.1 that records every request and answers chosen users
//! with chosen statuses (or not at all), for tests of the push channel and the worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// All request headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Null` if it was not JSON.
    pub body: serde_json::Value,
    /// The body as text (lossy).
    pub raw: String,
    /// The client's address: one port per TCP connection.
    pub peer: SocketAddr,
    /// When the request had been read in full.
    pub at: Instant,
    /// The status the sink answered with; `None` for a request it never answers.
    pub status: Option<StatusCode>,
}

impl PushRequest {
    /// A header as text (`None` if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header's raw bytes as UTF-8 (for non-ASCII values such as UTF-8 user ids).
    pub fn header_utf8(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// `user_id` of the JSON body.
    pub fn user_id(&self) -> Option<&str> {
        self.body.get("user_id").and_then(|v| v.as_str())
    }

    /// Answered 2xx: a push the gateway took.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|status| status.is_success())
    }
}

/// How the sink answers a user.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// This status, with `Retry-After: N` if given.
    Status(StatusCode, Option<u64>),
    /// Never answer.
    Stall,
}

/// A rule for one user: the reply, and how many more times it applies (`None` = always).
#[derive(Debug, Clone, Copy)]
struct Rule {
    reply: Reply,
    remaining: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    requests: Mutex<Vec<PushRequest>>,
    rules: Mutex<HashMap<String, Rule>>,
    /// The reply to users without a rule; 200 unless changed.
    fallback: Mutex<Reply>,
    /// Requests received so far, for `wait_for`.
    count: watch::Sender<usize>,
    /// With a pace: the gap between two answers, and when the next answer may go.
    pace: Mutex<Option<(Duration, tokio::time::Instant)>>,
}

/// A running fake push gateway; stops when dropped.
pub struct PushSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl PushSink {
    /// Starts the sink on a free port of 127.0.0.1, answering 200 `{}` to everyone.
    pub async fn start() -> PushSink {
        PushSink::start_on(0).await
    }

    /// The same on `port` (0: a free one), e.g. where a gateway was down until now.
    pub async fn start_on(port: u16) -> PushSink {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the push sink");
        let addr = listener.local_addr().expect("push sink address");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            rules: Mutex::new(HashMap::new()),
            fallback: Mutex::new(Reply::Status(StatusCode::OK, None)),
            count: watch::channel(0).0,
            pace: Mutex::new(None),
        });
        let app = Router::new()
            .route("/push", post(receive))
            .with_state(Arc::clone(&shared));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .await;
        });
        PushSink {
            addr,
            shared,
            shutdown,
        }
    }

    /// The endpoint: `http://127.0.0.1:PORT/push`.
    pub fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    /// From now on, answers `user_id` with `status` (and `Retry-After: N` if given).
    pub fn respond(&self, user_id: &str, status: u16, retry_after: Option<u64>) {
        self.rule(
            user_id,
            Reply::Status(status_code(status), retry_after),
            None,
        );
    }

    /// Answers the next `times` requests for `user_id` with `status`, then as everyone else.
    pub fn respond_times(
        &self,
        user_id: &str,
        status: u16,
        retry_after: Option<u64>,
        times: usize,
    ) {
        self.rule(
            user_id,
            Reply::Status(status_code(status), retry_after),
            Some(times),
        );
    }

    /// Answers every user without a rule of their own with `status`.
    pub fn respond_to_all(&self, status: u16, retry_after: Option<u64>) {
        *lock(&self.shared.fallback) = Reply::Status(status_code(status), retry_after);
    }

    /// Answers at most `per_second` requests a second, in arrival order (a slow gateway);
    /// requests are recorded as they arrive.
    pub fn pace(&self, per_second: u32) {
        let gap = Duration::from_secs(1) / per_second.max(1);
        *lock(&self.shared.pace) = Some((gap, tokio::time::Instant::now()));
    }

    /// Records requests for `user_id` but never answers them.
    pub fn stall(&self, user_id: &str) {
        self.rule(user_id, Reply::Stall, None);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<PushRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests have arrived and returns them all; panics after
    /// `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<PushRequest> {
        let mut count = self.shared.count.subscribe();
        let arrived = tokio::time::timeout(timeout, count.wait_for(|&seen| seen >= n)).await;
        if arrived.is_err() {
            panic!(
                "push sink: expected {n} requests within {timeout:?}, got {}",
                self.requests().len()
            );
        }
        self.requests()
    }

    fn rule(&self, user_id: &str, reply: Reply, remaining: Option<usize>) {
        lock(&self.shared.rules).insert(user_id.to_string(), Rule { reply, remaining });
    }
}

impl Drop for PushSink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = PushRequest {
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        raw: String::from_utf8_lossy(&body).into_owned(),
        headers,
        peer,
        at: Instant::now(),
        status: None,
    };
    let reply = reply_for(&shared, request.user_id());
    if let Reply::Status(status, _) = reply {
        request.status = Some(status);
    }
    lock(&shared.requests).push(request);
    shared.count.send_modify(|count| *count += 1);
    let turn = lock(&shared.pace).as_mut().map(|(gap, next)| {
        let turn = (*next).max(tokio::time::Instant::now());
        *next = turn + *gap;
        turn
    });
    if let Some(turn) = turn {
        tokio::time::sleep_until(turn).await;
    }
    match reply {
        Reply::Stall => std::future::pending().await,
        Reply::Status(status, retry_after) => {
            let body = if status.is_success() {
                "{}".to_string()
            } else {
                format!("{{\"error\":\"sink answers {}\"}}", status.as_u16())
            };
            let mut response = (status, body).into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

/// The reply owed to `user_id`, spending one use of a counted rule.
fn reply_for(shared: &Shared, user_id: Option<&str>) -> Reply {
    let mut rules = lock(&shared.rules);
    if let Some(rule) = user_id.and_then(|id| rules.get_mut(id)) {
        match &mut rule.remaining {
            None => return rule.reply,
            Some(0) => {}
            Some(left) => {
                *left -= 1;
                return rule.reply;
            }
        }
    }
    *lock(&shared.fallback)
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("a valid HTTP status")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
