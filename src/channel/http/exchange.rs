//! One request on one connection: the request written, the answer's head parsed by `httparse`,
//! and its body read by length, by chunks or to the end of the connection.

use std::io;
use std::mem::MaybeUninit;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Headers an answer may have at most.
const MAX_HEADERS: usize = 64;
/// An answer's status line and headers may take at most this many bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// What the server answered: the status, its `Retry-After` and the start of the body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The `Retry-After` header's value, if it had one that is text.
    pub(crate) retry_after: Option<String>,
    /// The body's first bytes: everything up to the limit given to [`Origin::post`], and
    /// possibly a little more (the rest of the last read) when the body is longer.
    pub(crate) body: Vec<u8>,
}

/// How far one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Progress {
    /// Opening a connection (TCP, TLS).
    Connecting,
    /// Writing the request.
    Sending,
    /// The whole request is written; nothing of the answer came yet.
    Sent,
    /// Part of the answer came, not yet its status line and headers.
    Answering,
    /// The status line and headers came.
    Answered,
}

impl Progress {
    /// The request is out and no status came back.
    pub(super) fn unanswered(self) -> bool {
        matches!(self, Progress::Sent | Progress::Answering)
    }
}

/// A byte stream to the origin: TCP, or TLS over TCP.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// A kept-alive connection and the bytes read from it but not yet used.
pub(super) struct Connection {
    pub(super) stream: Box<dyn Stream>,
    pub(super) buffer: Vec<u8>,
}

/// An answer that is not the HTTP/1.1 the client reads.
fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The status line and the headers the client acts on.
struct Head {
    status: StatusCode,
    retry_after: Option<String>,
    length: Option<usize>,
    chunked: bool,
    close: bool,
    /// Bytes of the buffer the head took.
    size: usize,
}

/// Writes `request` and reads its answer, noting in `progress` how far it got. Returns the
/// answer and whether the connection may carry another request.
pub(super) async fn exchange(
    connection: &mut Connection,
    request: &[u8],
    read_at_most: usize,
    progress: &mut Progress,
) -> io::Result<(Answer, bool)> {
    connection.buffer.clear();
    connection.stream.write_all(request).await?;
    connection.stream.flush().await?;
    *progress = Progress::Sent;
    let head = loop {
        if let Some(head) = parse_head(&connection.buffer)? {
            connection.buffer.drain(..head.size);
            // 1xx: an interim answer; the real one follows.
            if head.status.is_informational() {
                continue;
            }
            break head;
        }
        if connection.buffer.len() > MAX_HEAD {
            return Err(invalid("answer head longer than 64 KiB"));
        }
        if fill(connection).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        *progress = Progress::Answering;
    };
    *progress = Progress::Answered;
    let (body, complete) =
        if head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
            (Vec::new(), true)
        } else if head.chunked {
            read_chunked(connection, read_at_most).await?
        } else if let Some(length) = head.length {
            read_length(connection, length, read_at_most).await?
        } else {
            // Delimited by the end of the connection.
            while connection.buffer.len() <= read_at_most && fill(connection).await? > 0 {}
            (std::mem::take(&mut connection.buffer), false)
        };
    let reusable = complete && !head.close && connection.buffer.is_empty();
    let answer = Answer {
        status: head.status,
        retry_after: head.retry_after,
        body,
    };
    Ok((answer, reusable))
}

/// Reads more into the connection's buffer; 0 at the end of the stream.
async fn fill(connection: &mut Connection) -> io::Result<usize> {
    let buffer = &mut connection.buffer;
    if buffer.capacity() - buffer.len() < READ_CHUNK / 2 {
        buffer.reserve(READ_CHUNK);
    }
    connection.stream.read_buf(buffer).await
}

/// The answer's head, once the buffer holds all of it.
fn parse_head(buffer: &[u8]) -> io::Result<Option<Head>> {
    // Uninitialised: zeroing room for every header on each parse cost more than the parse.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let size = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(size)) => size,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(invalid(format!("not an HTTP/1.1 answer: {error}"))),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| invalid("answer without a valid status"))?;
    let mut head = Head {
        status,
        retry_after: None,
        length: None,
        chunked: false,
        close: response.version == Some(0),
        size,
    };
    for header in response.headers.iter() {
        let is = |name: &str| header.name.eq_ignore_ascii_case(name);
        // Most headers are none of these: skip them before looking at their value.
        if !matches!(header.name.len(), 10 | 11 | 14 | 17) {
            continue;
        }
        let value = std::str::from_utf8(header.value).ok().map(str::trim);
        if is("content-length") {
            let length = value
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| invalid("invalid Content-Length"))?;
            if head.length.is_some_and(|l| l != length) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            head.length = Some(length);
        } else if is("transfer-encoding") {
            head.chunked = value.is_some_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            });
            if !head.chunked {
                // Another coding ends where the connection ends.
                head.close = true;
            }
        } else if is("connection") {
            head.close |= value.is_some_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"))
            });
        } else if is("retry-after") {
            head.retry_after = value.map(str::to_string);
        }
    }
    Ok(Some(head))
}

/// A body of `length` bytes: its first bytes (about `read_at_most`), and whether all of it was
/// read (a longer body is left unread, and with it the connection).
async fn read_length(
    connection: &mut Connection,
    length: usize,
    read_at_most: usize,
) -> io::Result<(Vec<u8>, bool)> {
    while connection.buffer.len() < length && connection.buffer.len() <= read_at_most {
        if fill(connection).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if connection.buffer.len() >= length {
        let body = connection.buffer.drain(..length).collect();
        Ok((body, true))
    } else {
        Ok((std::mem::take(&mut connection.buffer), false))
    }
}

/// A chunked body: its first bytes (about `read_at_most`), and whether its end was read.
async fn read_chunked(
    connection: &mut Connection,
    read_at_most: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    loop {
        let (start, size) = loop {
            match httparse::parse_chunk_size(&connection.buffer) {
                Ok(httparse::Status::Complete((start, size))) => break (start, size),
                Ok(httparse::Status::Partial) if connection.buffer.len() < MAX_HEAD => {
                    if fill(connection).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                _ => return Err(invalid("invalid chunk size in a chunked body")),
            }
        };
        connection.buffer.drain(..start);
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                match connection.buffer.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        connection.buffer.drain(..2);
                        return Ok((body, true));
                    }
                    Some(end) => {
                        connection.buffer.drain(..end + 2);
                    }
                    None if connection.buffer.len() < MAX_HEAD => {
                        if fill(connection).await? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    None => return Err(invalid("chunked body trailer too long")),
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| invalid("chunk too large"))?;
        if body.len() + size > read_at_most {
            // Enough for an excerpt: the rest is left unread, and with it the connection.
            let take = size.min(connection.buffer.len());
            body.extend_from_slice(&connection.buffer[..take]);
            return Ok((body, false));
        }
        while connection.buffer.len() < size + 2 {
            if fill(connection).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if &connection.buffer[size..size + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&connection.buffer[..size]);
        connection.buffer.drain(..size + 2);
    }
}

#[cfg(test)]
mod fuzz;
