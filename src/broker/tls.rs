//! TLS for `amqps://`: the CA file of `broker.ca_file` handed to lapin, and a handshake of our
//! own that tells an untrusted certificate (never worth retrying) from other TLS failures.

use std::sync::Arc;

use lapin::tcp::OwnedTLSConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::ConnectError;
use crate::config::{BrokerConfig, ConfigError};

/// The TLS settings for `amqps://`: the system's roots, plus the CA certificates of
/// `broker.ca_file` when set (lapin keeps them for its reconnections too).
pub(super) fn config(config: &BrokerConfig) -> Result<OwnedTLSConfig, ConfigError> {
    if config.ca_file.as_os_str().is_empty() {
        return Ok(OwnedTLSConfig::default());
    }
    let path = config.ca_file.display();
    let invalid =
        |problem: String| ConfigError::Invalid(format!("  key `broker.ca_file`: {problem}"));
    let pem = std::fs::read_to_string(&config.ca_file)
        .map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{path} is not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!(
            "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

/// One TLS handshake over `tcp` with the trust lapin will use (the system's roots and the CA
/// file): a certificate rustls rejects is [`ConnectError::Untrusted`], any other failure (a
/// port that does not speak TLS) [`ConnectError::Tls`]. A host name rustls cannot take, or
/// rustls that cannot be set up, is left for lapin's connect to report.
pub(super) async fn handshake(
    tcp: TcpStream,
    host: &str,
    address: &str,
    tls: &OwnedTLSConfig,
) -> Result<(), ConnectError> {
    let (Ok(server_name), Some(client)) =
        (ServerName::try_from(host.to_string()), client_config(tls))
    else {
        return Ok(());
    };
    let connector = TlsConnector::from(Arc::new(client));
    match connector.connect(server_name, tcp).await {
        Ok(_) => Ok(()),
        Err(error) => match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rejected @ rustls::Error::InvalidCertificate(_)) => Err(ConnectError::Untrusted {
                address: address.to_string(),
                reason: rejected.to_string(),
            }),
            _ => Err(ConnectError::Tls {
                address: address.to_string(),
                reason: error.to_string(),
            }),
        },
    }
}

/// rustls with the system's root certificates and those of the CA file; `None` if rustls
/// cannot be set up (lapin's connect will then say why).
fn client_config(tls: &OwnedTLSConfig) -> Option<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = &tls.cert_chain {
        roots.add_parsable_certificates(CertificateDer::pem_slice_iter(pem.as_bytes()).flatten());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?;
    Some(builder.with_root_certificates(roots).with_no_client_auth())
}
