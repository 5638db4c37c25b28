//! The SMTP socket with writes held until the next read, so that lettre's separate writes of a
//! message and its final `\r\n.\r\n` leave in one `write(2)` and one TCP segment.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Held bytes are written out early once there are this many (a very large message).
const HOLD_AT_MOST: usize = 256 * 1024;

/// A TCP stream whose writes (and flushes) are held back until the next read or shutdown.
///
/// lettre writes and flushes every chunk: the message, then `\r\n.\r\n` on its own, then it
/// reads the reply. SMTP without pipelining always reads a reply after writing, so nothing is
/// held longer than it takes to get to that read; TLS, when lettre adds it on top, writes its
/// records through here and gains the same.
#[derive(Debug)]
pub(super) struct HeldWrites {
    tcp: TcpStream,
    /// Bytes written by lettre, not yet by us.
    held: Vec<u8>,
    /// How much of `held` is already on the socket.
    sent: usize,
}

impl HeldWrites {
    pub(super) fn new(tcp: TcpStream) -> HeldWrites {
        HeldWrites {
            tcp,
            held: Vec::new(),
            sent: 0,
        }
    }

    /// Writes out everything held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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

impl AsyncRead for HeldWrites {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeldWrites {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
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
