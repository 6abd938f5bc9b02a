//! Stage: tls. Builds the rustls `ServerConfig` for both listeners: the broker's certificate, a client
//! certificate verifier rooted in the configured CA bundle with the configured CRLs, TLS 1.2 and 1.3 only,
//! ALPN `h2` then `http/1.1`. Chain building, expiry and revocation are rustls/webpki's job, not ours.
//!
//! The config sits behind [`TlsConfigHandle`] so that a new CRL (or a renewed server certificate) is taken
//! on the next handshake after [`TlsConfigHandle::reload`] — no restart, no dropped connections.
//!
//! A CRL is checked before it can replace the running one ([`check_crl`]): its signature must verify
//! against a CA of the bundle with the CRL's issuer name (webpki would only find a bad signature during
//! handshakes, refusing every client), and on reload its CRL number must not go back (an older CRL silently
//! un-revokes certificates). A CRL past its `nextUpdate` is still used, with a warning and the
//! `lienthong_crl_stale` gauge. The admin listener's verifier takes no CRL at all: operators are pinned by
//! fingerprint (`tls.admin_certs`), so no agency CRL can lock them out of the API that fixes it.
//!
//! The agency listener's verifier remembers each chain it has verified until the chain expires or the TLS
//! material is reloaded (`tls::verified_chains`): a returning agency's handshake then checks only its proof
//! of possession, not the CA's signature and every CRL's again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::FromDer;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;
use crate::metrics::TlsChainMetrics;

mod verified_chains;

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

/// What a checked CRL says about itself.
#[derive(Debug, Clone)]
pub struct CrlFacts {
    /// The CRL file.
    pub path: PathBuf,
    /// The issuer's distinguished name, as printed by x509-parser.
    pub issuer: String,
    /// The CRL number extension, if present.
    pub number: Option<BigUint>,
    /// `nextUpdate` as Unix seconds, if present.
    pub next_update: Option<i64>,
}

impl CrlFacts {
    /// Past its `nextUpdate` at `now` (Unix seconds).
    pub fn stale_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

/// Parse a CRL and verify its signature against the CA of `cas` that issued it. Refused (naming the file):
/// unparsable, an issuer that is not in the bundle, or a signature no CA of that name made.
pub fn check_crl(
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'_>],
) -> Result<CrlFacts, TlsError> {
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
        .map_err(|e| tls_err(path, format!("not a CRL: {e}")))?;
    let issuer = parsed.issuer().to_string();
    let mut named_issuer = false;
    for ca in cas {
        let Ok((_, ca)) = x509_parser::certificate::X509Certificate::from_der(ca.as_ref()) else {
            continue;
        };
        if ca.subject().as_raw() != parsed.issuer().as_raw() {
            continue;
        }
        named_issuer = true;
        if parsed.verify_signature(ca.public_key()).is_ok() {
            return Ok(CrlFacts {
                path: path.to_path_buf(),
                issuer,
                number: parsed.crl_number().cloned(),
                next_update: parsed.next_update().map(|t| t.timestamp()),
            });
        }
    }
    Err(tls_err(
        path,
        if named_issuer {
            format!("CRL signature does not verify against the CA \"{issuer}\" of the bundle; refused")
        } else {
            format!("CRL issued by \"{issuer}\", which is not a CA of the bundle; refused")
        },
    ))
}

/// Whether a CA of `cas` with the certificate's issuer name signed it (the first link of the chain the
/// handshake would build; expiry and revocation stay the handshake's job).
pub fn issued_by_bundle(cert: &CertificateDer<'_>, cas: &[CertificateDer<'_>]) -> bool {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    cas.iter().any(|ca| {
        x509_parser::certificate::X509Certificate::from_der(ca.as_ref()).is_ok_and(|(_, ca)| {
            ca.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    })
}

/// Both listeners' server configs and the facts of the CRLs they were built with.
pub struct Built {
    /// The agency listener: chains to the bundle, checked against every CRL.
    pub agency: ServerConfig,
    /// The admin listener: chains to the bundle, no CRL (admin certificates are pinned by fingerprint).
    pub admin: ServerConfig,
    /// The CRLs in force.
    pub crls: Vec<CrlFacts>,
}

/// Build both listeners' server configs from files, after checking every CRL ([`check_crl`]). The admin
/// listener's extra rule (pinned admin certificates) is enforced after the handshake, in `admin`. The agency
/// listener remembers the chains it has verified (`tls::verified_chains`).
pub fn build(tls: &TlsConfig) -> Result<Built, TlsError> {
    build_with(tls, Some(TlsChainMetrics::default()))
}

/// The agency listener's server config as stock rustls verifies clients: every chain and CRL signature on
/// every handshake. The bench's bare baseline (see [`build`] for the broker's).
pub fn server_config(tls: &TlsConfig) -> Result<ServerConfig, TlsError> {
    Ok(build_with(tls, None)?.agency)
}

/// [`build`], remembering verified chains (counted in `remember_chains`) unless it is `None`.
fn build_with(tls: &TlsConfig, remember_chains: Option<TlsChainMetrics>) -> Result<Built, TlsError> {
    let cas = read_certs(&tls.ca_bundle)?;
    let mut roots = RootCertStore::empty();
    for ca in cas.iter().cloned() {
        roots
            .add(ca)
            .map_err(|e| tls_err(&tls.ca_bundle, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    let mut facts = Vec::new();
    for path in &tls.crls {
        let crl = read_crl(path)?;
        let checked = check_crl(path, &crl, &cas)?;
        if checked.stale_at(chrono::Utc::now().timestamp()) {
            tracing::warn!(crl = %path.display(), issuer = %checked.issuer,
                "CRL is past its nextUpdate: still used, publish a fresh one");
        }
        facts.push(checked);
        crls.push(crl);
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).with_crls(crls);
    if tls.allow_unknown_revocation {
        verifier = verifier.allow_unknown_revocation_status();
    }
    let mut verifier = verifier
        .build()
        .map_err(|e| tls_err(&tls.ca_bundle, format!("cannot build the client verifier: {e}")))?;
    if let Some(counts) = remember_chains {
        verifier = Arc::new(verified_chains::RememberingVerifier::new(verifier, counts));
    }
    let admin_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| tls_err(&tls.ca_bundle, format!("cannot build the client verifier: {e}")))?;
    Ok(Built {
        agency: with_verifier(tls, verifier)?,
        admin: with_verifier(tls, admin_verifier)?,
        crls: facts,
    })
}

fn with_verifier(
    tls: &TlsConfig,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<ServerConfig, TlsError> {
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

/// The configs in force for both listeners and the CRLs they check.
struct Live {
    agency: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
    crls: Vec<CrlFacts>,
}

/// The live server configs, swapped atomically on reload.
pub struct TlsConfigHandle {
    files: TlsConfig,
    current: RwLock<Arc<Live>>,
    /// The series every verifier built from `files` counts its chains in, across reloads.
    chains: TlsChainMetrics,
}

impl TlsConfigHandle {
    /// Build from files; the agency listener's verifiers count their chains in `chains`.
    pub fn new(files: TlsConfig, chains: TlsChainMetrics) -> Result<Self, TlsError> {
        let built = build_with(&files, Some(chains.clone()))?;
        let current = RwLock::new(Arc::new(Live {
            agency: Arc::new(built.agency),
            admin: Arc::new(built.admin),
            crls: built.crls,
        }));
        Ok(Self {
            files,
            current,
            chains,
        })
    }

    fn live(&self) -> Arc<Live> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The config new handshakes on the agency listener use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.live().agency.clone()
    }

    /// The config new handshakes on the admin listener use (no CRL: see the module doc).
    pub fn admin(&self) -> Arc<ServerConfig> {
        self.live().admin.clone()
    }

    /// How many CRLs in force are past their `nextUpdate` now.
    pub fn stale_crls(&self) -> usize {
        let now = chrono::Utc::now().timestamp();
        self.live().crls.iter().filter(|c| c.stale_at(now)).count()
    }

    /// Re-read the CA bundle, CRLs and server certificate; on error the old config stays in force. Refused
    /// as well: a CRL whose number is lower than the running CRL of the same issuer (a rollback).
    pub fn reload(&self) -> Result<(), TlsError> {
        let built = build_with(&self.files, Some(self.chains.clone()))?;
        let running: HashMap<String, BigUint> = self
            .live()
            .crls
            .iter()
            .filter_map(|c| Some((c.issuer.clone(), c.number.clone()?)))
            .collect();
        for fresh in &built.crls {
            if let (Some(new), Some(old)) = (&fresh.number, running.get(&fresh.issuer)) {
                if new < old {
                    return Err(tls_err(
                        &fresh.path,
                        format!(
                            "CRL number {new} is lower than the running CRL's {old} from the same issuer: \
                             an older CRL would un-revoke certificates; refused"
                        ),
                    ));
                }
            }
        }
        let fresh = Arc::new(Live {
            agency: Arc::new(built.agency),
            admin: Arc::new(built.admin),
            crls: built.crls,
        });
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}
