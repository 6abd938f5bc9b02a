//! Stage: identity. Turns the client certificate that rustls has already verified (chain, validity,
//! revocation) into the facts the rest of the pipeline uses. The binding to an agency is by SHA-256
//! fingerprint of the whole certificate, never by subject or SAN text, so a certificate that merely
//! *names* an agency gains nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identity is part of every request's context, so its type lives on the ground floor.
pub use crate::exchange::PeerIdentity;

/// Why a certificate could not be read (rustls verified it, so this is rare).
#[derive(Debug, thiserror::Error)]
#[error("unreadable client certificate: {0}")]
pub struct IdentityError(String);

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl PeerIdentity {
    /// Read the leaf certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| IdentityError(e.to_string()))?;
        let san = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(general_name_text)
                .collect(),
            _ => Vec::new(),
        };
        let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        Ok(Self {
            fingerprint_sha256: fingerprint(der.as_ref()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            san,
            not_after,
        })
    }
}

/// Identities of the certificates seen lately, by the SHA-256 of their DER: an agency reconnects with the
/// same certificate all day, and reading it (x509-parser, name formatting) is most of a connection's own
/// work. Only the reading is remembered: rustls verifies the chain and the CRL on every handshake, before
/// this is asked.
#[derive(Default)]
pub struct IdentityCache {
    seen: Mutex<HashMap<[u8; 32], Arc<PeerIdentity>>>,
}

/// Identities remembered at most; past that the cache starts again (certificates are few).
const REMEMBERED: usize = 4096;

impl IdentityCache {
    /// The identity of a verified leaf certificate.
    pub fn identify(&self, der: &CertificateDer<'_>) -> Result<Arc<PeerIdentity>, IdentityError> {
        let digest: [u8; 32] = Sha256::digest(der.as_ref()).into();
        if let Some(peer) = self.lock().get(&digest) {
            return Ok(peer.clone());
        }
        let peer = Arc::new(PeerIdentity::from_der(der)?);
        let mut seen = self.lock();
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(digest, peer.clone());
        Ok(peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<PeerIdentity>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn general_name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(s) => Some(format!("DNS:{s}")),
        GeneralName::RFC822Name(s) => Some(format!("email:{s}")),
        GeneralName::URI(s) => Some(format!("URI:{s}")),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| format!("IP:{}", std::net::IpAddr::from(a))),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| format!("IP:{}", std::net::IpAddr::from(a))),
            _ => None,
        },
        _ => None,
    }
}

/// The fingerprint of the first certificate in a PEM file (used to pin admin certificates and to bind
/// agencies from a certificate file).
pub fn fingerprint_of_pem_file(path: &std::path::Path) -> Result<String, crate::tls::TlsError> {
    let certs = crate::tls::read_certs(path)?;
    Ok(fingerprint(certs[0].as_ref()))
}

/// The fingerprint of the first certificate in PEM text.
pub fn fingerprint_of_pem(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| fingerprint(c.as_ref()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cache_reads_each_certificate_once_and_never_mixes_two() {
        let a = rcgen::generate_simple_self_signed(vec!["moh.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["moh.example".into()]).unwrap();
        let cache = IdentityCache::default();
        let first = cache.identify(a.cert.der()).unwrap();
        let again = cache.identify(a.cert.der()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.fingerprint_sha256, fingerprint(a.cert.der()));
        // Same names, another key: another certificate, another identity.
        let other = cache.identify(b.cert.der()).unwrap();
        assert_ne!(other.fingerprint_sha256, first.fingerprint_sha256);
        assert_eq!(other.san, ["DNS:moh.example"]);
    }
}
