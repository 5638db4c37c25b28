//! Why a connection to RabbitMQ failed, in words an operator can act on: the address reached
//! first with a TCP connect (and TLS handshake) of our own, then lapin's AMQP errors classified.

use std::io;
use std::time::Duration;

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use tokio::net::TcpStream;

use super::tls;

/// How long the TCP connect (and TLS handshake) and then the AMQP handshake may each take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to RabbitMQ that could not be made; each says what to try.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the port.
    #[error(
        "cannot reach RabbitMQ at {address}: connection refused — is RabbitMQ running? \
         `rabbitmq-diagnostics ping`"
    )]
    Refused {
        /// `host:port`.
        address: String,
    },
    /// The TCP connect got no answer.
    #[error(
        "cannot reach RabbitMQ at {address}: no answer within {seconds}s — is the host right, \
         and the port open (a firewall that drops packets looks like this)? \
         `rabbitmq-diagnostics ping`"
    )]
    Timeout {
        /// `host:port`.
        address: String,
        /// The timeout.
        seconds: u64,
    },
    /// The name does not resolve, the network or host is unreachable, and the like.
    #[error("cannot reach RabbitMQ at {address}: {error} — check the host and port in broker.url")]
    Unreachable {
        /// `host:port`.
        address: String,
        /// What the system said.
        error: io::Error,
    },
    /// Connected, but the AMQP handshake did not finish.
    #[error(
        "RabbitMQ at {address} accepted the connection but did not complete the AMQP handshake \
         within {seconds}s — is RabbitMQ (AMQP, not HTTP or TLS) on that port, and not \
         overloaded? `rabbitmq-diagnostics ping`"
    )]
    Handshake {
        /// `host:port`.
        address: String,
        /// The timeout.
        seconds: u64,
    },
    /// Wrong user name or password.
    #[error(
        "RabbitMQ at {address} refused user `{user}`: wrong user name or password \
         (ACCESS_REFUSED) — check the user and password in broker.url; on the broker, \
         `rabbitmqctl authenticate_user {user} <password>` tells whether they match"
    )]
    AccessRefused {
        /// `host:port`.
        address: String,
        /// The user name of the URL.
        user: String,
    },
    /// The virtual host does not exist, or the user may not use it.
    #[error(
        "RabbitMQ at {address} does not let user `{user}` into virtual host `{vhost}`: {reason} \
         — check broker.url's path (`%2f` is the default vhost `/`); `rabbitmqctl list_vhosts`, \
         `rabbitmqctl list_permissions -p {vhost}`"
    )]
    Vhost {
        /// `host:port`.
        address: String,
        /// The user name of the URL.
        user: String,
        /// The virtual host of the URL.
        vhost: String,
        /// RabbitMQ's words (`NOT_ALLOWED - vhost … not found`).
        reason: String,
    },
    /// RabbitMQ's TLS certificate is not one this host trusts (nor `broker.ca_file`).
    #[error(
        "RabbitMQ at {address} presented a TLS certificate this host does not trust ({reason}); \
         if a private CA signed it, set broker.ca_file to that CA's PEM file"
    )]
    Untrusted {
        /// `host:port`.
        address: String,
        /// rustls' verdict, e.g. `invalid peer certificate: UnknownIssuer`.
        reason: String,
    },
    /// The TLS handshake failed for another reason than the certificate.
    #[error(
        "TLS handshake with RabbitMQ at {address} failed ({reason}) — is that port RabbitMQ's \
         TLS port (amqps://, usually 5671)?"
    )]
    Tls {
        /// `host:port`.
        address: String,
        /// rustls' or the system's words.
        reason: String,
    },
}

impl ConnectError {
    /// Whether trying again cannot help until someone changes the configuration or the broker
    /// (credentials, vhost, trust); a broker that is down or slow may come back.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectError::AccessRefused { .. }
                | ConnectError::Vhost { .. }
                | ConnectError::Untrusted { .. }
        )
    }
}

/// `host:port` of a URL, for messages: never its user or password.
pub(super) fn address(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Connects to the broker's address (and, for `amqps://`, shakes hands with the trust lapin
/// will use), so a broker that is down, a port that refuses or a certificate not trusted is
/// told at once: lapin itself would retry such a connection for minutes, on a thread of its own
/// that outlives a caller who stopped waiting.
pub(super) async fn reach(uri: &AMQPUri, trust: &OwnedTLSConfig) -> Result<(), ConnectError> {
    let address = address(uri);
    let host = uri.authority.host.as_str();
    let attempt = async {
        let tcp = TcpStream::connect((host, uri.authority.port))
            .await
            .map_err(|error| match error.kind() {
                io::ErrorKind::ConnectionRefused => ConnectError::Refused {
                    address: address.clone(),
                },
                io::ErrorKind::TimedOut => timeout(&address),
                _ => ConnectError::Unreachable {
                    address: address.clone(),
                    error,
                },
            })?;
        if uri.scheme == AMQPScheme::AMQPS {
            tls::handshake(tcp, host, &address, trust).await?;
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(timeout(&address)))
}

fn timeout(address: &str) -> ConnectError {
    ConnectError::Timeout {
        address: address.to_string(),
        seconds: CONNECT_TIMEOUT.as_secs(),
    }
}

/// The AMQP refusals an operator fixes in the configuration, from lapin's typed error; `None`
/// for anything else.
pub(super) fn refusal(error: &lapin::Error, uri: &AMQPUri) -> Option<ConnectError> {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let address = address(uri);
    let user = uri.authority.userinfo.username.clone();
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
            Some(ConnectError::AccessRefused { address, user })
        }
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some(ConnectError::Vhost {
            address,
            user,
            vhost: uri.vhost.clone(),
            reason: amqp.get_message().to_string(),
        }),
        _ => None,
    }
}
