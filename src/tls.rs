//! Stage: tls. Builds the rustls `ServerConfig` for both listeners: the broker's certificate, a client
//! certificate verifier rooted in the configured CA bundle with the configured CRLs, TLS 1.2 and 1.3 only,
//! ALPN `h2` then `http/1.1`. Chain building, expiry and revocation are rustls/webpki's job, not ours.
//!
//! The config sits behind [`TlsConfigHandle`] so that a new CRL (or a renewed server certificate) is taken
//! on the next handshake after [`TlsConfigHandle::reload`] — no restart, no dropped connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// A TLS material problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn tls_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The one crypto provider the broker uses (ring), named explicitly so that no process-wide default
/// has to be installed and no second provider can sneak in.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err(path, e))
}

/// Read a CRL, PEM or DER.
pub fn read_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(path, e))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| tls_err(path, e))
    } else {
        Ok(CertificateRevocationListDer::from(bytes))
    }
}

/// Build the server config from files. Both listeners share it: the admin listener's extra rule (pinned
/// admin certificates) is enforced after the handshake, in [`crate::server`].
pub fn server_config(tls: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tls.ca_bundle)? {
        roots
            .add(ca)
            .map_err(|e| tls_err(&tls.ca_bundle, format!("not a usable CA certificate: {e}")))?;
    }
    let crls = tls
        .crls
        .iter()
        .map(|p| read_crl(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    if tls.allow_unknown_revocation {
        verifier = verifier.allow_unknown_revocation_status();
    }
    let verifier = verifier
        .build()
        .map_err(|e| tls_err(&tls.ca_bundle, format!("cannot build the client verifier: {e}")))?;

    let chain = read_certs(&tls.server_cert)?;
    let key = read_key(&tls.server_key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err(&tls.server_cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            tls_err(
                &tls.server_key,
                format!("key does not match the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Renegotiation does not exist in rustls; session resumption stays on (it keeps the verified client
    // certificate, so identity is unchanged on a resumed session).
    Ok(config)
}

/// The live server config, swapped atomically on reload.
pub struct TlsConfigHandle {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsConfigHandle {
    /// Build from files.
    pub fn new(files: TlsConfig) -> Result<Self, TlsError> {
        let current = RwLock::new(Arc::new(server_config(&files)?));
        Ok(Self { files, current })
    }

    /// The config new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-read the CA bundle, CRLs and server certificate; on error the old config stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.files)?);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}
