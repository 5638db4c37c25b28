//! A small HTTP/1.1 client for one origin (the push gateway): keep-alive connections opened on
//! demand with `TCP_NODELAY`, reused one request at a time, TLS by rustls for `https`.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

/// What the server answered: the status, the headers and the start of the body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The body's first bytes: everything up to the limit given to [`Origin::post`], and
    /// possibly a little more (one more chunk) when the body is longer.
    pub(crate) body: Vec<u8>,
    /// The whole body was read (its end seen), and so the connection could be reused.
    pub(crate) complete: bool,
}

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
    /// The connection broke before the answer was complete, or the answer was not HTTP.
    #[error("request to {origin} failed")]
    Exchange {
        origin: String,
        #[source]
        source: hyper::Error,
    },
}

/// One origin (`scheme://host:port`) and its idle connections.
pub(crate) struct Origin {
    /// Host as in the URL (IPv6 in brackets), for messages and the `Host` header.
    host: String,
    /// Host to connect to and to check the certificate for (IPv6 without brackets).
    dial: String,
    port: u16,
    /// `Host: host[:port]`.
    host_header: HeaderValue,
    /// The request target: the URL's path and query.
    target: Uri,
    /// Set for `https`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Connections between requests, most recently used last.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
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
        let host_header = HeaderValue::from_str(&authority)
            .map_err(|_| format!("host `{authority}` cannot be sent in a Host header"))?;
        let target = url
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
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
            host_header,
            target,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// `POST`s `body` with the headers `headers` makes (`Host` and `Content-Length` are set
    /// here) and reads at most about `read_at_most` bytes of the answer's body. A reused
    /// connection that fails before any answer (the server closed it while idle) is replaced
    /// by a new one and the request sent once more: callers' requests must be idempotent.
    /// No timeout here: the caller bounds the whole exchange.
    pub(crate) async fn post(
        &self,
        headers: impl Fn() -> HeaderMap,
        body: Bytes,
        read_at_most: usize,
    ) -> Result<Answer, HttpFailure> {
        let request = || {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.target.clone();
            *request.headers_mut() = headers();
            request
                .headers_mut()
                .insert(header::HOST, self.host_header.clone());
            request
        };
        let mut reused = self.checkout().await;
        loop {
            let (mut sender, fresh) = match reused.take() {
                Some(sender) => (sender, false),
                None => (self.connect().await?, true),
            };
            match sender.send_request(request()).await {
                Ok(response) => {
                    let answer = read(response, read_at_most).await;
                    if answer.complete {
                        self.lock_idle().push(sender);
                    }
                    return Ok(answer);
                }
                Err(error) if !fresh => {
                    tracing::debug!(event = "http_connection_stale", host = %self.host, %error);
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

    /// An idle connection ready for a request, if any (closed ones are dropped).
    async fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut sender = self.lock_idle().pop()?;
            // Ready at once, or as soon as the connection task has seen the last answer end.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Full<Bytes>>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection, its I/O driven by a task of its own until either side closes it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpFailure> {
        let failed = |source: io::Error| HttpFailure::Connect {
            origin: self.to_string(),
            source,
        };
        let tcp = TcpStream::connect((self.dial.as_str(), self.port))
            .await
            .map_err(failed)?;
        // Requests are written whole; Nagle would only hold them back.
        tcp.set_nodelay(true).map_err(failed)?;
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(failed)?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Full<Bytes>>, HttpFailure>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| HttpFailure::Exchange {
                    origin: self.to_string(),
                    source,
                })?;
        let host = self.host.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(event = "http_connection_failed", %host, %error);
            }
        });
        Ok(sender)
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
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Status, headers and up to about `read_at_most` bytes of the body. A body that breaks off
/// adds nothing more (and leaves the connection unusable).
async fn read(response: hyper::Response<hyper::body::Incoming>, read_at_most: usize) -> Answer {
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    let mut complete = false;
    while bytes.len() <= read_at_most {
        match body.frame().await {
            None => {
                complete = true;
                break;
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Some(Err(_)) => break,
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: bytes,
        complete,
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
