//! The SMTP socket with writes held until the next read, so that lettre's separate writes of a
//! message and its final `\r\n.\r\n` leave in one `write(2)` and one TCP segment; it also
//! notes when a message was handed over (all of it, final `.` included, on the socket).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Held bytes are written out early once there are this many (a very large message).
const HOLD_AT_MOST: usize = 256 * 1024;

/// A TCP stream whose writes (and flushes) are held back until the next read or shutdown.
///
/// lettre writes and flushes every chunk: the message, then `\r\n.\r\n` on its own, then it
/// reads the reply. SMTP always reads a reply after writing, so nothing is held longer than it
/// takes to get to that read; TLS, when lettre adds it on top, writes its records through here
/// and gains the same. On a plain connection the relay's [`Beneath`] bytes (pipelined `MAIL` and
/// `RCPT`) go out in the same write, ahead of lettre's `DATA`.
#[derive(Debug)]
pub(super) struct HeldWrites {
    tcp: TcpStream,
    /// Bytes written below lettre, and replies kept for it.
    beneath: Beneath,
    /// Bytes written by lettre, not yet by us.
    held: Vec<u8>,
    /// How much of `held` is already on the socket.
    sent: usize,
}

impl HeldWrites {
    pub(super) fn new(tcp: TcpStream, beneath: Beneath) -> HeldWrites {
        HeldWrites {
            tcp,
            beneath,
            held: Vec::new(),
            sent: 0,
        }
    }

    /// Moves what was written early in front of what lettre writes next.
    fn take_early(&mut self) {
        let mut side = self.beneath.lock();
        if !side.early.is_empty() {
            self.held.append(&mut side.early);
        }
    }

    /// Writes out everything held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_early();
        while self.sent < self.held.len() {
            let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// What the relay does below lettre: on a plain connection, bytes to write ahead of lettre's
/// next write, held like its own (`MAIL` and `RCPT` pipelined in front of its `DATA`), and,
/// until [`Beneath::heard`], the replies read (the `EHLO` reply, where `PIPELINING` is offered:
/// lettre keeps no note of it); on any connection, whether a message was handed over.
#[derive(Debug, Clone)]
pub(super) struct Beneath(Arc<Mutex<Side>>);

#[derive(Debug)]
struct Side {
    early: Vec<u8>,
    heard: Option<Vec<u8>>,
    handover: Handover,
}

/// Where a message is, from `DATA`'s `354` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// No message is being watched.
    Idle,
    /// lettre is writing a message, or its bytes are still held.
    Writing,
    /// Everything lettre wrote, final `.` included, is on the socket, and the reply is awaited:
    /// lettre reads only after writing the final `.`, and a read writes out all that is held
    /// first (with TLS too: its records of those bytes are written through here before it reads).
    HandedOver,
}

/// Replies kept for [`Beneath::heard`] at most (a greeting and an `EHLO` reply).
const HEAR_AT_MOST: usize = 8 * 1024;

impl Beneath {
    /// Listening from the start of the connection.
    pub(super) fn listening() -> Beneath {
        Beneath(Arc::new(Mutex::new(Side {
            early: Vec::new(),
            heard: Some(Vec::new()),
            handover: Handover::Idle,
        })))
    }

    /// Watches for the handover of the message lettre writes next; call once `DATA` has its
    /// `354`, before lettre writes the message.
    pub(super) fn watch_handover(&self) {
        self.lock().handover = Handover::Writing;
    }

    /// Whether the watched message is all on the socket, its final `.` included.
    pub(super) fn handed_over(&self) -> bool {
        self.lock().handover == Handover::HandedOver
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Side> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes` ahead of lettre's next write.
    pub(super) fn push(&self, bytes: &[u8]) {
        self.lock().early.extend_from_slice(bytes);
    }

    /// What was read so far; stops listening.
    pub(super) fn heard(&self) -> Vec<u8> {
        self.lock().heard.take().unwrap_or_default()
    }
}

impl AsyncRead for HeldWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        {
            let mut side = this.beneath.lock();
            if side.handover == Handover::Writing {
                side.handover = Handover::HandedOver;
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        if let Some(heard) = this.beneath.lock().heard.as_mut()
            && heard.len() < HEAR_AT_MOST
        {
            heard.extend_from_slice(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeldWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.take_early();
        if this.held.len() >= HOLD_AT_MOST {
            ready!(this.poll_release(cx))?;
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Holds on: the next read writes everything out (see the type's documentation).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for HeldWrites {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }
}
