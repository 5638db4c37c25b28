//! A small HTTP/1.1 client for one origin (the push gateway): keep-alive connections opened on
//! demand with `TCP_NODELAY`, one request at a time each, the request written in one write and
//! the answer read by `httparse` in the caller's task; TLS by rustls for `https`. A request
//! written in full with no status back is told apart from one that never left.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

mod exchange;

pub(crate) use exchange::Answer;
use exchange::{Connection, Progress, READ_CHUNK, Stream, exchange};

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpFailure {
    /// TCP connect or TLS handshake failed.
    #[error("cannot connect to {origin}")]
    Connect {
        origin: String,
        #[source]
        source: io::Error,
    },
    /// The connection broke before the request was written, or after the answer's status
    /// while its body was read.
    #[error("request to {origin} failed")]
    Exchange {
        origin: String,
        #[source]
        source: io::Error,
    },
    /// No answer in time, and the request was not written in full.
    #[error("{origin} did not answer within {} ms", within.as_millis())]
    TimedOut { origin: String, within: Duration },
    /// The whole request was written, and the connection broke (or what came was not HTTP/1.1)
    /// before a status: the server may have acted on it.
    #[error("request to {origin} sent, and the connection broke before a status came back")]
    Unanswered {
        origin: String,
        #[source]
        source: io::Error,
    },
    /// The whole request was written, and no status came back in time: the server may have
    /// acted on it.
    #[error("request to {origin} sent, and no status came back within {} ms", within.as_millis())]
    UnansweredInTime { origin: String, within: Duration },
}

/// One origin (`scheme://host:port`) and its idle connections.
pub(crate) struct Origin {
    /// Host as in the URL (IPv6 in brackets), for messages.
    host: String,
    /// Host to connect to and to check the certificate for (IPv6 without brackets).
    dial: String,
    port: u16,
    /// `POST <path> HTTP/1.1\r\nHost: <host[:port]>\r\n`: the start of every request.
    request_line: Vec<u8>,
    /// Set for `https`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Connections between requests, most recently used last.
    idle: Mutex<Vec<Connection>>,
}

impl Origin {
    /// The origin of an `http://` or `https://` URL; requests go to its path. Credentials in the
    /// URL are not used (nor shown).
    pub(crate) fn new(url: &Uri) -> Result<Origin, String> {
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("must be an http:// or https:// URL".into()),
        };
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("names no host")?;
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let dial = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let authority = match url.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        HeaderValue::from_str(&authority)
            .map_err(|_| format!("host `{authority}` cannot be sent in a Host header"))?;
        let target = url.path_and_query().map_or("/", |pq| pq.as_str());
        let target = if target.is_empty() { "/" } else { target };
        let request_line = format!("POST {target} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
        let tls = if https {
            let name = ServerName::try_from(dial.clone())
                .map_err(|e| format!("`{dial}` is not a TLS server name: {e}"))?;
            Some((tls_connector()?, name))
        } else {
            None
        };
        Ok(Origin {
            host: host.to_string(),
            dial,
            port,
            request_line,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// `POST`s `body` with `headers` (`Host` and `Content-Length` are added here) and reads at
    /// most about `read_at_most` bytes of the answer's body, all `within` the given time. A
    /// reused connection that fails before any answer (the server closed it while idle) is
    /// replaced by a new one and the request sent once more: callers' requests must be
    /// idempotent. A connection dropped mid-exchange is not reused.
    pub(crate) async fn post<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
        body: &[u8],
        read_at_most: usize,
        within: Duration,
    ) -> Result<Answer, HttpFailure> {
        let request = self.request(headers, body);
        let mut progress = Progress::Connecting;
        let attempts = self.attempts(&request, read_at_most, &mut progress);
        let timed = tokio::time::timeout(within, attempts).await;
        match timed {
            Ok(answered) => answered,
            Err(_) if progress.unanswered() => Err(HttpFailure::UnansweredInTime {
                origin: self.to_string(),
                within,
            }),
            // A connect that takes the whole time is the origin not answering at all.
            Err(_) if progress == Progress::Connecting => Err(HttpFailure::Connect {
                origin: self.to_string(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", within.as_millis()),
                ),
            }),
            Err(_) => Err(HttpFailure::TimedOut {
                origin: self.to_string(),
                within,
            }),
        }
    }

    /// [`Origin::post`] without its time limit; `progress` tells how far the last try got.
    async fn attempts(
        &self,
        request: &[u8],
        read_at_most: usize,
        progress: &mut Progress,
    ) -> Result<Answer, HttpFailure> {
        let mut reused = self.lock_idle().pop();
        loop {
            let (mut connection, fresh) = match reused.take() {
                Some(connection) => (connection, false),
                None => {
                    *progress = Progress::Connecting;
                    (self.connect().await?, true)
                }
            };
            *progress = Progress::Sending;
            match exchange(&mut connection, request, read_at_most, progress).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.lock_idle().push(connection);
                    }
                    return Ok(answer);
                }
                Err(error) if !fresh && *progress < Progress::Answering => {
                    tracing::debug!(event = "http_connection_stale", host = %self.host, %error);
                }
                Err(source) if progress.unanswered() => {
                    return Err(HttpFailure::Unanswered {
                        origin: self.to_string(),
                        source,
                    });
                }
                Err(source) => {
                    return Err(HttpFailure::Exchange {
                        origin: self.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// The whole request, head and body, for one write.
    fn request<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut request = Vec::with_capacity(self.request_line.len() + 256 + body.len());
        request.extend_from_slice(&self.request_line);
        for (name, value) in headers {
            request.extend_from_slice(name.as_str().as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        // Writing to a Vec cannot fail.
        let _ = write!(request, "Content-Length: {}\r\n\r\n", body.len());
        request.extend_from_slice(body);
        request
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection.
    async fn connect(&self) -> Result<Connection, HttpFailure> {
        let failed = |source: io::Error| HttpFailure::Connect {
            origin: self.to_string(),
            source,
        };
        let tcp = TcpStream::connect((self.dial.as_str(), self.port))
            .await
            .map_err(failed)?;
        // Requests are written whole; Nagle would only hold them back.
        tcp.set_nodelay(true).map_err(failed)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => {
                Box::new(connector.connect(name.clone(), tcp).await.map_err(failed)?)
            }
        };
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("origin", &self.to_string())
            .finish_non_exhaustive()
    }
}

/// rustls with the system's root certificates, HTTP/1.1 by ALPN.
fn tls_connector() -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err("no root certificates found on this system for https".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on a free loopback port that answers each request with the next canned answer
    /// and closes a connection after an answer when `close_after` says so; counts connections.
    async fn server(answers: &[(&'static str, bool)]) -> (Origin, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url: Uri = format!("http://{}/push", listener.local_addr().expect("addr"))
            .parse()
            .expect("url");
        let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: its head, then Content-Length bytes.
                        let complete = |seen: &[u8]| {
                            let end = seen.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                            let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse().ok())?;
                            (seen.len() >= end + length).then_some(end + length)
                        };
                        let used = loop {
                            if let Some(used) = complete(&seen) {
                                break used;
                            }
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                            }
                        };
                        seen.drain(..used);
                        let Some((answer, close)) = answers.lock().expect("lock").pop_front()
                        else {
                            return;
                        };
                        if socket.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (Origin::new(&url).expect("origin"), accepted)
    }

    async fn post(origin: &Origin) -> Result<Answer, HttpFailure> {
        let key = HeaderValue::from_static("c:u:push");
        let name = HeaderName::from_static("idempotency-key");
        origin
            .post([(&name, &key)], b"{}", 16, Duration::from_secs(5))
            .await
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_and_its_connection_reused() {
        let chunked = "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n5\r\nbusy \r\n3;x=y\r\nnow\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (origin, accepted) = server(&[(chunked, false), (OK, false)]).await;
        let answer = post(&origin).await.expect("answer");
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.body, b"busy now");
        assert_eq!(answer.retry_after.as_deref(), Some("7"));
        assert_eq!(post(&origin).await.expect("answer").status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let answer =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        let (origin, _) = server(&[(answer, false)]).await;
        assert_eq!(
            post(&origin).await.expect("answer").status,
            StatusCode::ACCEPTED
        );
    }

    #[tokio::test]
    async fn connection_close_and_long_bodies_are_not_reused() {
        let close = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        let long = "HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789";
        let (origin, accepted) = server(&[(close, true), (long, false), (OK, false)]).await;
        assert_eq!(post(&origin).await.expect("answer").status, StatusCode::OK);
        let answer = post(&origin).await.expect("answer");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body.starts_with(b"0123456789012345"), "{answer:?}");
        assert_eq!(post(&origin).await.expect("answer").status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_and_the_request_resent() {
        // The server closes after its answer without saying so: the pooled connection is dead.
        let (origin, accepted) = server(&[(OK, true), (OK, false)]).await;
        assert_eq!(post(&origin).await.expect("answer").status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(post(&origin).await.expect("answer").status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_leaves_the_request_unanswered_and_a_cut_body_fails() {
        let (origin, _) = server(&[("SSH-2.0-OpenSSH_9.2\r\n\r\n", true)]).await;
        let failure = post(&origin).await.expect_err("not HTTP");
        assert!(
            matches!(failure, HttpFailure::Unanswered { .. }),
            "{failure:?}"
        );
        let (origin, _) = server(&[("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", true)]).await;
        let failure = post(&origin).await.expect_err("cut short");
        assert!(
            matches!(failure, HttpFailure::Exchange { .. }),
            "{failure:?}"
        );
    }
}
