//! Implicit TLS (`smtps://`): a socket we opened, TLS-wrapped by lettre and adapted to tokio's
//! I/O traits so lettre can greet over it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

#[allow(deprecated)] // see `ImplicitTls`
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncTokioStream, TlsParameters};

use super::held::HeldWrites;
use super::reply::SmtpFailure;

/// A socket already wrapped in TLS, handed to lettre as if it were plain TCP: lettre reads the
/// greeting as soon as it gets a stream, so implicit TLS must come first. lettre's only public
/// way to TLS-wrap a socket we opened is `AsyncNetworkStream`, deprecated ("not meant to be
/// public") but still exported in 0.11; this adapts its futures-io traits to tokio's.
#[allow(deprecated)]
#[derive(Debug)]
pub(super) struct ImplicitTls(AsyncNetworkStream);

#[allow(deprecated)]
impl ImplicitTls {
    pub(super) async fn wrap(
        tcp: HeldWrites,
        tls: TlsParameters,
    ) -> Result<ImplicitTls, SmtpFailure> {
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream
            .upgrade_tls(tls)
            .await
            .map_err(SmtpFailure::Session)?;
        Ok(ImplicitTls(stream))
    }
}

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.get_mut().0), cx, unfilled) {
            Poll::Ready(Ok(read)) => {
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}
