//! A client-certificate verifier that remembers the chains it has verified, so that a returning agency's
//! new connection costs one signature check (its `CertificateVerify`, the proof that it holds the key), not
//! three.
//!
//! webpki checks the chain on every handshake: the CA's signature on the certificate, and the signature of
//! every CRL it consults (rustls/webpki#81: "consider whether we can refactor so this happens once
//! up-front, instead of per-lookup"). Each is an ECDSA or RSA verification, and a CRL's is over the whole
//! CRL, so its cost grows with the number of revoked certificates. Agencies present the same few
//! certificates all day.
//!
//! What a verification depends on is fixed for the life of one verifier: the chain's bytes (the key), the
//! CA bundle and CRLs (a reload builds a new verifier, with an empty memory) and the time. So a verified
//! chain is remembered until its first certificate expires, and refused chains are never remembered. The
//! proof of possession is still checked on every handshake; a stolen certificate without its key gets no
//! further than before. Session resumption already skips the chain check for the lifetime of a ticket; this
//! is no weaker than that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::metrics::TlsChainMetrics;

/// Most chains remembered; past it the memory starts again empty (a bound, not an eviction policy: a
/// national registry has a few thousand agency certificates).
const MAX_CHAINS: usize = 16_384;

/// `inner`'s decisions on chains, remembered; everything else is `inner`'s.
#[derive(Debug)]
pub(crate) struct RememberingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// The chain's hash → (verified at, valid until), in seconds since the epoch.
    verified: Mutex<HashMap<[u8; 32], (u64, u64)>>,
    /// Chains handed to `inner`, and chains answered from memory.
    counts: TlsChainMetrics,
}

impl RememberingVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, counts: TlsChainMetrics) -> Self {
        Self {
            inner,
            verified: Mutex::new(HashMap::new()),
            counts,
        }
    }

    #[cfg(test)]
    fn checked(&self) -> u64 {
        self.counts.verified()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (u64, u64)>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every certificate of the chain, each with its length, so that no two chains share a hash input.
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for cert in std::iter::once(end_entity).chain(intermediates) {
        hash.update((cert.len() as u64).to_be_bytes());
        hash.update(cert.as_ref());
    }
    hash.finalize().into()
}

/// When the first certificate of the chain expires (seconds since the epoch); `None` if one cannot be read.
fn chain_not_after(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Option<u64> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|der| {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |earliest, next| Some(earliest.min(next?)))
}

impl ClientCertVerifier for RememberingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        let at = now.as_secs();
        // Valid only inside the window it was verified in: a clock set back before the check does not count.
        if let Some(&(verified_at, until)) = self.lock().get(&key) {
            if verified_at <= at && at < until {
                self.counts.count_remembered();
                return Ok(ClientCertVerified::assertion());
            }
        }
        self.counts.count_verified();
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if let Some(until) = chain_not_after(end_entity, intermediates) {
            let mut remembered = self.lock();
            if remembered.len() >= MAX_CHAINS {
                remembered.clear();
            }
            remembered.insert(key, (at, until));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rustls::pki_types::pem::PemObject;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;
    use crate::dev::certs::{CertAuthority, Validity};

    /// The real webpki verifier for `ca`, remembering.
    fn verifier(ca: &CertAuthority) -> RememberingVerifier {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .unwrap();
        RememberingVerifier::new(webpki, TlsChainMetrics::default())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    #[test]
    fn a_verified_chain_is_checked_once_until_it_expires() {
        let ca = CertAuthority::generate("Test CA").unwrap();
        let remembering = verifier(&ca);
        let cert = der(&ca
            .issue_client("moh", "Bộ Y tế", Validity::days(2))
            .unwrap()
            .cert_pem);
        let now = UnixTime::now().as_secs();
        for _ in 0..3 {
            remembering.verify_client_cert(&cert, &[], at(now)).unwrap();
        }
        assert_eq!(remembering.checked(), 1, "checked once, then remembered");
        // Past the certificate's end the chain is checked again, and webpki refuses it.
        let later = now + 3 * 86_400;
        assert!(remembering.verify_client_cert(&cert, &[], at(later)).is_err());
        // A clock set back before the check is not inside the remembered window either.
        remembering.verify_client_cert(&cert, &[], at(now - 60)).unwrap();
        assert_eq!(remembering.checked(), 3);
    }

    #[test]
    fn refused_chains_are_never_remembered_and_chains_do_not_mix() {
        let ca = CertAuthority::generate("Test CA").unwrap();
        let stranger_ca = CertAuthority::generate("Other CA").unwrap();
        let remembering = verifier(&ca);
        let now = UnixTime::now();
        let foreign = der(&stranger_ca
            .issue_client("moh", "Bộ Y tế", Validity::days(2))
            .unwrap()
            .cert_pem);
        for _ in 0..2 {
            assert!(remembering.verify_client_cert(&foreign, &[], now).is_err());
        }
        assert_eq!(remembering.checked(), 2);
        let ours = der(&ca
            .issue_client("moh", "Bộ Y tế", Validity::days(2))
            .unwrap()
            .cert_pem);
        remembering.verify_client_cert(&ours, &[], now).unwrap();
        // The same certificate with another certificate appended is another chain, checked on its own.
        assert!(remembering
            .verify_client_cert(&ours, std::slice::from_ref(&foreign), now)
            .is_ok());
        assert_eq!(remembering.checked(), 4);
        assert_ne!(chain_key(&ours, &[]), chain_key(&ours, &[foreign]));
    }
}
