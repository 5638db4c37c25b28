//! Who may talk to `preview --serve`: requests naming a loopback host (or the `--listen` host)
//! in `Host`, and renders posted only as JSON from the page's own origin.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The names this server answers to.
#[derive(Debug)]
pub(super) struct Guard {
    /// `localhost`, `127.0.0.1`, `[::1]` and the `--listen` host, each as `Host` spells it.
    names: Vec<String>,
    /// The port it listens on.
    port: u16,
}

impl Guard {
    /// The guard of a server listening on `address`.
    pub(super) fn new(address: SocketAddr) -> Guard {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ];
        let listen = match address.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        if !names.contains(&listen) {
            names.push(listen);
        }
        Guard {
            names,
            port: address.port(),
        }
    }

    /// Whether `host` (a `Host` header) names this server: a known name, with this port (or
    /// none when the port is HTTP's default).
    fn accepts(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = match host.rsplit_once(':') {
            // `[::1]` alone has colons but no port after its bracket.
            Some((name, port)) if !port.ends_with(']') => (name, port.parse::<u16>().ok()),
            _ => (host.as_str(), Some(80)),
        };
        port == Some(self.port) && self.names.iter().any(|known| known == name)
    }
}

/// Refuses what a page elsewhere could send: a `Host` this server does not go by is 421 (a
/// DNS-rebinding page names its own host); a POST not of JSON is 415, and one from another
/// origin (`Origin`, `Sec-Fetch-Site`) is 403. A page can post a form or `text/plain` across
/// sites without asking the browser's permission, never `application/json`.
pub(super) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| guard.accepts(host))
    else {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this preview answers only to localhost, 127.0.0.1, [::1] or its --listen address",
        );
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if let Some(refusal) = cross_origin(headers, host) {
            return refusal;
        }
        if !is_json(headers) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a sample is posted as Content-Type: application/json",
            );
        }
    }
    next.run(request).await
}

/// A 403 when the request says it comes from a page other than this server's.
fn cross_origin(headers: &HeaderMap, host: &str) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).map(|value| value.as_bytes());
    let own = format!("http://{host}");
    if origin.is_some_and(|origin| !origin.eq_ignore_ascii_case(own.as_bytes())) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "a sample is posted only from the preview's own page (Origin differs)",
        ));
    }
    let site = headers.get("sec-fetch-site").map(|value| value.as_bytes());
    if site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "a sample is posted only from the preview's own page (Sec-Fetch-Site)",
        ));
    }
    None
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, Body::from(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_listen_host_with_the_port_are_accepted() {
        let guard = Guard::new("192.168.1.5:8686".parse().expect("an address"));
        for host in [
            "localhost:8686",
            "LocalHost:8686",
            "127.0.0.1:8686",
            "[::1]:8686",
            "192.168.1.5:8686",
        ] {
            assert!(guard.accepts(host), "{host}");
        }
        for host in [
            "evil.example:8686",
            "localhost:8687",
            "localhost",
            "127.0.0.2:8686",
            "[::1]",
            "localhost.evil.example:8686",
            "",
        ] {
            assert!(!guard.accepts(host), "{host}");
        }
    }

    #[test]
    fn the_default_port_may_be_left_out() {
        let guard = Guard::new("127.0.0.1:80".parse().expect("an address"));
        assert!(guard.accepts("localhost"));
        assert!(guard.accepts("[::1]"));
        assert!(!guard.accepts("example.com"));
    }
}
