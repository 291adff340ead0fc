//! TLS on the executor's TCP connections (rustls with the `ring` provider): a [`TlsAcceptor`]
//! turns an accepted [`TcpStream`] into one that speaks TLS once the handshake is done, a
//! [`TlsConnector`] an outgoing one. The connection keeps its type, so what reads and writes a
//! [`TcpStream`] reads and writes through TLS without knowing.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::net::TcpStream;

/// The TLS library, for callers that build their own configurations.
pub use rustls;

/// The crypto provider every configuration here uses: *ring*'s. rustls marks it deprecated
/// since its key exchanges are classical only (X25519, P-256, P-384, no post-quantum hybrid);
/// its other provider, aws-lc-rs, builds a large C library that would add minutes to every
/// clean build on the project's machines. Moving to it is this function alone.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM certificate chain (the node's certificate first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1). No client certificate is asked for.
///
/// # Errors
/// A file that cannot be read or holds no certificate or key, or a key that does not fit.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS server: {e}"))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates of a PEM CA bundle (and no other).
///
/// # Errors
/// A file that cannot be read or holds no certificate.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read certificates from {}: {e}", ca.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", ca.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{} holds a certificate that is not a CA: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts TLS on connections a listener accepted.
#[derive(Clone)]
pub struct TlsAcceptor(futures_rustls::TlsAcceptor);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// An acceptor with `config`.
    #[must_use]
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
        TlsAcceptor(futures_rustls::TlsAcceptor::from(config))
    }

    /// The server's side of the handshake on `stream`, within `timeout`.
    ///
    /// # Errors
    /// `TimedOut`, `InvalidData` for a client that does not speak TLS (or not one this
    /// configuration takes), any I/O error.
    pub async fn accept(&self, stream: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
        let plain = stream.into_plain()?;
        // Boxed: a handshake's state (a whole TLS connection) would otherwise be part of every
        // future that may accept or connect, moved on every call of theirs.
        match crate::timeout(timeout, Box::pin(self.0.accept(plain))).await {
            Some(Ok(tls)) => Ok(TcpStream::from_tls_server(tls)),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            )),
        }
    }
}

/// Speaks TLS on outgoing connections.
#[derive(Clone)]
pub struct TlsConnector(futures_rustls::TlsConnector);

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl TlsConnector {
    /// A connector with `config`.
    #[must_use]
    pub fn new(config: Arc<rustls::ClientConfig>) -> TlsConnector {
        TlsConnector(futures_rustls::TlsConnector::from(config))
    }

    /// The client's side of the handshake on `stream` with the server it reached at `addr`,
    /// whose certificate must name that IP address, within `timeout`.
    ///
    /// # Errors
    /// `TimedOut`, `InvalidData` for a certificate the configuration does not trust or that
    /// does not name the address, any I/O error.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let plain = stream.into_plain()?;
        let name = ServerName::IpAddress(addr.ip().into());
        match crate::timeout(timeout, Box::pin(self.0.connect(name, plain))).await {
            Some(Ok(tls)) => Ok(TcpStream::from_tls_client(tls)),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            )),
        }
    }
}
