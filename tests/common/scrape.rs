//! Talking to a worker's metrics listener: a free port for it, plain HTTP GETs, and values read
//! out of the Prometheus text format.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// `127.0.0.1:PORT` with a port free a moment ago (bound, read, released).
pub fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("address").port();
    format!("127.0.0.1:{port}")
}

/// `GET path` over HTTP/1.0: the status and the body, or `None` if nothing listens there.
pub fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_string()))
}

/// Polls `GET path` until it answers `status`; panics after `timeout`, showing the last answer.
pub async fn until_status(address: &str, path: &str, status: u16, timeout: Duration) {
    let started = Instant::now();
    loop {
        let answer = get(address, path);
        if answer.as_ref().is_some_and(|(got, _)| *got == status) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{path} did not answer {status} within {timeout:?}; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every sample of metric `name` whose labels include all of `labels`
/// (`sum(name{labels})` in PromQL); 0 when there is none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a sample value"))
        .sum()
}
