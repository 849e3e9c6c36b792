//! TLS termination (rustls): the certificate chain and key from PEM files,
//! the handshake, and reloading both on SIGHUP.
//!
//! The `ServerConfig` is built once around a certificate resolver; a reload
//! swaps the resolver's current certificate, so handshakes that start after
//! it present the new one and established connections are not touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{Error, InconsistentKeys, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Tls {
    /// Loads the certificate chain and key; any problem with them is an
    /// error that names the file.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Tls> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let certified = load_certified_key(cert_path, key_path, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // WebSocket runs over HTTP/1.1 (RFC 8441's HTTP/2 variant is not served).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            provider,
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        })
    }

    /// Reads the files again. On success new handshakes use the new
    /// certificate; on error the previous one stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let certified = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.0.write() = Arc::new(certified);
        Ok(())
    }

    /// The server side of the TLS handshake, bounded by `timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(timeout, self.acceptor.accept(stream))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            })
    }
}

/// The certificate presented to new handshakes.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let cert_error =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("TLS certificate {}: {e}", cert_path.display());
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(&e))?;
    if chain.is_empty() {
        return Err(cert_error(&"no PEM certificate (BEGIN CERTIFICATE) found"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        anyhow::anyhow!(
            "TLS key {}: {}",
            key_path.display(),
            match e {
                tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound =>
                    "no PEM private key (BEGIN PRIVATE KEY, RSA or EC) found".to_string(),
                e => e.to_string(),
            }
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let reason = match e {
            Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                "the key does not belong to the certificate".to_string()
            }
            e => e.to_string(),
        };
        anyhow::anyhow!(
            "TLS key {} cannot be used with certificate {}: {reason}",
            key_path.display(),
            cert_path.display()
        )
    })
}
