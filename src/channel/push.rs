//! The push channel: `POST` each notice to the HTTP push gateway, or append it as one JSON
//! line to the outbox file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{StatusCode, Uri};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::channel::http::{Answer, HttpFailure, Origin};
use crate::channel::{Delivery, Outcome, RETRY_AFTER_MAX, Sender};
use crate::config::{ConfigError, PushConfig, PushTransport};
use crate::secret::Secret;

/// The environment variable holding the gateway's bearer token (`_FILE` appended: a file holding it).
pub const TOKEN_ENV: &str = "SUNSET_PUSH_TOKEN";

/// Bytes of a gateway's error body kept in an outcome's reason.
const EXCERPT_BYTES: usize = 200;

/// The push channel as configured by `push.transport`.
#[derive(Debug)]
pub enum PushSender {
    /// `file`: JSON lines appended to `push.outbox`.
    File(JsonlOutbox),
    /// `http`: `POST` to the gateway at `push.url` (boxed: it is much larger than the outbox).
    Http(Box<PushGateway>),
}

impl PushSender {
    /// Builds the configured transport. For `http`, reads [`TOKEN_ENV`] once, here; for `file`,
    /// creates the outbox's folder and opens the file, so a bad path fails at start-up.
    pub fn from_config(config: &PushConfig) -> anyhow::Result<PushSender> {
        match config.transport {
            PushTransport::File => Ok(PushSender::File(JsonlOutbox::open(&config.outbox)?)),
            PushTransport::Http => {
                if config.timeout_ms == 0 {
                    return Err(ConfigError::Invalid(
                        "  key `push.timeout_ms`: must be greater than 0".into(),
                    )
                    .into());
                }
                let timeout = Duration::from_millis(config.timeout_ms);
                let gateway = PushGateway::new(&config.url, timeout, Secret::from_env(TOKEN_ENV)?)?;
                Ok(PushSender::Http(Box::new(gateway)))
            }
        }
    }
}

impl Sender for PushSender {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        match self {
            PushSender::File(outbox) => outbox.send(delivery).await,
            PushSender::Http(gateway) => gateway.send(delivery).await,
        }
    }
}

/// The push gateway's bearer token: read from [`TOKEN_ENV`] (or the owner-only file
/// `SUNSET_PUSH_TOKEN_FILE` names), never printed.
pub type PushToken = Secret;

/// The `Authorization` value for `token`, marked sensitive so `http` never prints it either.
fn authorization(token: &PushToken) -> anyhow::Result<HeaderValue> {
    // The error must not quote the value: it is the secret.
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        anyhow::anyhow!("{TOKEN_ENV} holds characters not allowed in an HTTP header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `User-Agent` of every push request.
const USER_AGENT: &str = concat!("sunset/", env!("CARGO_PKG_VERSION"));

/// The header that lets the gateway drop a push it already has.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The HTTP push gateway: one `POST` per notice over kept-alive connections.
pub struct PushGateway {
    /// The gateway's scheme, host and port, with the connections between requests.
    origin: Origin,
    /// `push.url`.
    url: Uri,
    /// Whole-request timeout (connect, send, answer).
    timeout: Duration,
    /// The headers every request carries: `Content-Type`, `User-Agent`, and `Authorization:
    /// Bearer …` (a sensitive value) when a token is configured.
    headers: HeaderMap,
}

impl PushGateway {
    /// A gateway at `url` (`http` or `https`), with `timeout` for each whole request and the
    /// bearer `token`, if any. Redirects are not followed: a `POST` must reach the gateway itself.
    /// Credentials in the URL are neither sent nor shown: the token is the credential.
    pub fn new(
        url: &str,
        timeout: Duration,
        token: Option<PushToken>,
    ) -> anyhow::Result<PushGateway> {
        let invalid =
            |problem: String| ConfigError::Invalid(format!("  key `push.url`: {problem}"));
        let url: Uri = url
            .parse()
            .map_err(|e| invalid(format!("`{url}` is not a URL: {e}")))?;
        let origin = Origin::new(&url)
            .map_err(|problem| invalid(format!("`{}`: {problem}", without_userinfo(&url))))?;
        let authorization = token.as_ref().map(authorization).transpose()?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(authorization) = &authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        Ok(PushGateway {
            origin,
            url,
            timeout,
            headers,
        })
    }

    /// The endpoint notices are posted to.
    pub fn url(&self) -> &Uri {
        &self.url
    }
}

impl Sender for PushGateway {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let body = match encode(&delivery) {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let (campaign, user) = (
            delivery.campaign_id.as_str(),
            delivery.recipient.user_id.as_str(),
        );
        let mut key = String::with_capacity(campaign.len() + user.len() + 6);
        for piece in [campaign, ":", user, ":push"] {
            key.push_str(piece);
        }
        // Not `from_str`: user ids may be UTF-8 (never control characters).
        let Ok(key) = HeaderValue::from_maybe_shared(Bytes::from(key)) else {
            return Outcome::permanent("user id cannot be sent in an Idempotency-Key header");
        };
        let headers = self
            .headers
            .iter()
            .chain(std::iter::once((&IDEMPOTENCY_KEY, &key)));
        // The Idempotency-Key makes the one resend `post` may do after a stale connection safe.
        match self
            .origin
            .post(headers, &body, EXCERPT_BYTES, self.timeout)
            .await
        {
            Ok(answer) => classify(answer),
            // Sent with no status back: the gateway may have the push. The worker may send it
            // again: the Idempotency-Key makes that safe with a gateway that honours it.
            Err(
                failure @ (HttpFailure::Unanswered { .. } | HttpFailure::UnansweredInTime { .. }),
            ) => Outcome::unknown(format!("push gateway: {}", chain(&failure))),
            Err(failure @ HttpFailure::Connect { .. }) => {
                Outcome::unreachable(format!("push gateway: {}", chain(&failure)))
            }
            Err(failure) => Outcome::transient(format!("push gateway: {}", chain(&failure))),
        }
    }
}

impl fmt::Debug for PushGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushGateway")
            .field("url", &without_userinfo(&self.url))
            .field("timeout", &self.timeout)
            .field(
                "token",
                &self
                    .headers
                    .contains_key(header::AUTHORIZATION)
                    .then_some("***"),
            )
            .finish_non_exhaustive()
    }
}

/// The push outbox: one JSON line per notice, appended, never interleaved.
#[derive(Debug)]
pub struct JsonlOutbox {
    /// `push.outbox`.
    path: PathBuf,
    /// Held for the whole write of a line, so concurrent sends never mix their bytes.
    file: Mutex<tokio::fs::File>,
}

impl JsonlOutbox {
    /// Creates the file's folder if needed and opens the file for appending; the error names
    /// `push.outbox`.
    pub fn open(path: &Path) -> Result<JsonlOutbox, ConfigError> {
        let invalid = |what: &str, at: &Path, e: std::io::Error| {
            ConfigError::Invalid(format!(
                "  key `push.outbox`: cannot {what} {}: {e}",
                at.display()
            ))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| invalid("create folder", parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| invalid("open", path, e))?;
        Ok(JsonlOutbox {
            path: path.to_owned(),
            file: Mutex::new(tokio::fs::File::from_std(file)),
        })
    }

    /// The file lines are appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sender for JsonlOutbox {
    async fn send(&self, delivery: Delivery<'_>) -> Outcome {
        let mut line = match encode(&delivery) {
            Ok(line) => line,
            Err(outcome) => return outcome,
        };
        line.push(b'\n');
        let mut file = self.file.lock().await;
        // One write_all of the whole line (one write(2) in append mode), then flush: tokio
        // writes in the background, and only the flush reports whether the line landed.
        let written = match file.write_all(&line).await {
            Ok(()) => file.flush().await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => Outcome::Delivered,
            Err(error) => Outcome::transient(format!(
                "cannot write push outbox {}: {error}",
                self.path.display()
            )),
        }
    }
}

/// The JSON both transports send: the gateway's request body, the outbox's line.
#[derive(Serialize)]
struct PushMessage<'a> {
    user_id: &'a str,
    campaign_id: &'a str,
    locale: &'a str,
    dir: &'static str,
    title: &'a str,
    body: &'a str,
}

/// The JSON of a delivery, or the permanent outcome of a notice without a push part.
fn encode(delivery: &Delivery<'_>) -> Result<Vec<u8>, Outcome> {
    let Some(push) = &delivery.notice.push else {
        return Err(Outcome::permanent("no push part rendered"));
    };
    let message = PushMessage {
        user_id: delivery.recipient.user_id.as_str(),
        campaign_id: delivery.campaign_id.as_str(),
        locale: &delivery.notice.locale,
        dir: delivery.notice.dir.as_str(),
        title: &push.title,
        body: &push.body,
    };
    // Sized up front: a buffer grown from empty reallocates several times per push.
    let fields = [
        message.user_id,
        message.campaign_id,
        message.locale,
        message.title,
        message.body,
    ];
    let mut json = Vec::with_capacity(fields.iter().map(|f| f.len()).sum::<usize>() + 128);
    serde_json::to_writer(&mut json, &message)
        .map_err(|error| Outcome::permanent(format!("cannot encode push message: {error}")))?;
    Ok(json)
}

/// The one place a gateway's answer becomes an outcome: 2xx delivered; 408, 429 and 5xx
/// transient (with `Retry-After`); anything else permanent. (Without an answer, see
/// [`PushGateway::send`]: connect errors are unreachable, other errors and timeouts before the
/// request is written transient, a request written with no status back unknown.)
fn classify(answer: Answer) -> Outcome {
    let status = answer.status;
    if status.is_success() {
        return Outcome::Delivered;
    }
    let excerpt = excerpt(&answer.body);
    let reason = if excerpt.is_empty() {
        format!("push gateway answered {status}")
    } else {
        format!("push gateway answered {status}: {excerpt}")
    };
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Transient {
            reason,
            retry_after: answer
                .retry_after
                .as_deref()
                .and_then(|value| retry_after(value, Utc::now())),
            throttled: status == StatusCode::TOO_MANY_REQUESTS,
        }
    } else {
        Outcome::permanent(reason)
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP-date (RFC 9110), at
/// most [`RETRY_AFTER_MAX`]. A date in the past, or a value that is neither, asks for nothing.
fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(RETRY_AFTER_MAX));
    }
    // IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is a valid RFC 2822 date.
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = (date.with_timezone(&Utc) - now).to_std().ok()?;
    Some(wait.min(RETRY_AFTER_MAX))
}

/// The start of a response body, on one line, at most [`EXCERPT_BYTES`] bytes of it.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_BYTES)]);
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if bytes.len() > EXCERPT_BYTES {
        line.push('…');
    }
    line
}

/// An error with its causes, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `url` without `user:password@`, for messages and `Debug`.
fn without_userinfo(url: &Uri) -> String {
    let text = url.to_string();
    match (url.authority(), url.scheme_str()) {
        (Some(authority), Some(scheme)) if authority.as_str().contains('@') => {
            let host_port = authority.as_str().rsplit_once('@').map_or("", |(_, h)| h);
            let rest = url.path_and_query().map_or("", |pq| pq.as_str());
            format!("{scheme}://{host_port}{rest}")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(
            retry_after("99999999999999", now),
            Some(RETRY_AFTER_MAX),
            "a wait of millennia is a day"
        );
    }

    #[test]
    fn the_token_never_prints() {
        let token = PushToken::new("s3cret");
        let gateway = PushGateway::new(
            "http://user:pw@127.0.0.1:9/push",
            Duration::from_secs(1),
            Some(token),
        )
        .expect("gateway");
        let debug = format!("{gateway:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pw"),
            "{debug}"
        );
    }

    #[test]
    fn only_http_urls_are_gateways() {
        assert!(PushGateway::new("ftp://127.0.0.1/push", Duration::from_secs(1), None).is_err());
        assert!(PushGateway::new("not a url", Duration::from_secs(1), None).is_err());
    }
}
