//! Verifying an `HC1:` string offline against a trust list of Document Signer certificates. Each layer
//! is unwrapped in order and the first that fails names the reason.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use coset::cwt::{ClaimsSet, Timestamp};
use coset::{iana, CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PSS_2048_8192_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::Value;

use super::{from_cbor, kid_of, HC1_PREFIX};

/// The DCC JSON schema 1.3.3 (combined), from ehn-dcc-development/ehn-dcc-schema (Apache-2.0).
pub const DCC_SCHEMA: &str = include_str!("../../schemas/dcc/DCC.combined-schema.json");

/// Largest decompressed COSE message accepted: a QR code holds under 3 KiB, so anything far larger is a
/// compression bomb.
const MAX_COSE_BYTES: u64 = 64 * 1024;

/// Why a certificate is not valid. The code is stable (API answers and `lienthong dcc verify`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The text does not start with `HC1:`.
    #[error("bad prefix: the text does not start with HC1:")]
    BadPrefix,
    /// Not base45.
    #[error("base45: {0}")]
    Base45(String),
    /// Not zlib-compressed (or too large once inflated).
    #[error("zlib: {0}")]
    Zlib(String),
    /// Not a COSE_Sign1 carrying a CWT with an `hcert` claim.
    #[error("COSE structure: {0}")]
    CoseStructure(String),
    /// No trusted Document Signer has this `kid`.
    #[error("unknown kid {0}: no Document Signer certificate in the trust list has it")]
    UnknownKid(String),
    /// The signature does not verify with the Document Signer's key.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The Document Signer certificate was not valid when the certificate was issued (CWT `iat`).
    #[error("Document Signer not valid at issuance: {0}")]
    DscNotValid(String),
    /// The CWT's `exp` has passed.
    #[error("expired at {0}")]
    Expired(String),
    /// The DCC JSON does not follow the schema.
    #[error("schema violation: {0}")]
    SchemaViolation(String),
}

impl Refusal {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadPrefix => "bad_prefix",
            Refusal::Base45(_) => "base45",
            Refusal::Zlib(_) => "zlib",
            Refusal::CoseStructure(_) => "cose_structure",
            Refusal::UnknownKid(_) => "unknown_kid",
            Refusal::BadSignature(_) => "bad_signature",
            Refusal::DscNotValid(_) => "dsc_not_valid",
            Refusal::Expired(_) => "expired",
            Refusal::SchemaViolation(_) => "schema_violation",
        }
    }
}

/// A certificate that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The Document Signer's key id, hex.
    pub kid: String,
    /// CWT `iss`.
    pub issuer: Option<String>,
    /// CWT `iat`, RFC 3339.
    pub issued_at: Option<String>,
    /// CWT `exp`, RFC 3339.
    pub expires: Option<String>,
    /// The DCC JSON.
    pub dcc: Value,
}

/// A Document Signer certificate's public key, as a verifier needs it.
#[derive(Debug, Clone)]
pub struct Dsc {
    kid: [u8; 8],
    key: PublicKey,
    /// `notBefore` and `notAfter`: a certificate it signed must have been issued within them.
    valid: (DateTime<Utc>, DateTime<Utc>),
}

#[derive(Debug, Clone)]
enum PublicKey {
    /// Uncompressed P-256 point.
    Ec(Vec<u8>),
    /// PKCS#1 RSAPublicKey.
    Rsa(Vec<u8>),
}

impl Dsc {
    /// Read a DSC, DER.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spki = cert.public_key();
        let bits = spki.subject_public_key.data.to_vec();
        let key = match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.10045.2.1" => PublicKey::Ec(bits),
            "1.2.840.113549.1.1.1" => PublicKey::Rsa(bits),
            other => return Err(format!("unsupported public key algorithm {other}")),
        };
        let validity = cert.validity();
        let instant = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0).ok_or_else(|| "validity out of range".to_string())
        };
        Ok(Self {
            kid: kid_of(der),
            key,
            valid: (instant(validity.not_before)?, instant(validity.not_after)?),
        })
    }

    /// The raw public key bytes.
    pub fn public_key(&self) -> &[u8] {
        match &self.key {
            PublicKey::Ec(k) | PublicKey::Rsa(k) => k,
        }
    }
}

/// The Document Signer certificates a verifier trusts, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    by_kid: HashMap<[u8; 8], Dsc>,
}

impl TrustList {
    /// Trust a DSC (DER).
    pub fn add_der(&mut self, der: &[u8]) -> Result<(), String> {
        let dsc = Dsc::from_der(der)?;
        self.by_kid.insert(dsc.kid, dsc);
        Ok(())
    }

    /// Trust every certificate of a PEM file.
    pub fn add_pem_file(&mut self, path: &Path) -> Result<(), String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
        for der in certs {
            self.add_der(&der)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// How many DSCs are trusted.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Nothing trusted.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

/// Check `hc1` at instant `now`: prefix, base45, zlib, COSE_Sign1 + CWT, `kid` in the trust list, ES256
/// (or PS256) signature, the Document Signer valid at `iat`, `exp`, and the DCC JSON against the schema —
/// the first failure is the answer.
pub fn verify(hc1: &str, trust: &TrustList, now: DateTime<Utc>) -> Result<Verified, Refusal> {
    let encoded = hc1.trim().strip_prefix(HC1_PREFIX).ok_or(Refusal::BadPrefix)?;
    let compressed = base45::decode(encoded).map_err(|e| Refusal::Base45(e.to_string()))?;
    let mut cose = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(MAX_COSE_BYTES + 1)
        .read_to_end(&mut cose)
        .map_err(|e| Refusal::Zlib(e.to_string()))?;
    if cose.len() as u64 > MAX_COSE_BYTES {
        return Err(Refusal::Zlib(format!("inflates to over {MAX_COSE_BYTES} bytes")));
    }
    let sign1 = CoseSign1::from_tagged_slice(&cose)
        .or_else(|_| CoseSign1::from_slice(&cose))
        .map_err(|e| Refusal::CoseStructure(format!("not a COSE_Sign1: {e}")))?;
    let payload = sign1
        .payload
        .as_deref()
        .ok_or_else(|| Refusal::CoseStructure("no payload".into()))?;
    let claims = ClaimsSet::from_slice(payload)
        .map_err(|e| Refusal::CoseStructure(format!("payload is not a CWT: {e}")))?;
    let dcc = hcert(&claims)?;
    let kid = if sign1.protected.header.key_id.is_empty() {
        &sign1.unprotected.key_id
    } else {
        &sign1.protected.header.key_id
    };
    let kid_hex = hex::encode(kid);
    let dsc = <[u8; 8]>::try_from(kid.as_slice())
        .ok()
        .and_then(|k| trust.by_kid.get(&k))
        .ok_or_else(|| Refusal::UnknownKid(kid_hex.clone()))?;
    sign1.verify_signature(b"", |signature, tbs| check_signature(&sign1, dsc, signature, tbs))?;
    let issued = claims.issued_at.as_ref().and_then(instant);
    if let Some(iat) = issued {
        let (not_before, not_after) = dsc.valid;
        if iat < not_before || iat > not_after {
            return Err(Refusal::DscNotValid(format!(
                "issued {}, the Document Signer certificate is valid from {} to {}",
                iat.to_rfc3339(),
                not_before.to_rfc3339(),
                not_after.to_rfc3339()
            )));
        }
    }
    let expires = claims.expiration_time.as_ref().and_then(instant);
    if let Some(exp) = expires {
        if exp <= now {
            return Err(Refusal::Expired(exp.to_rfc3339()));
        }
    }
    if let Some(errors) = schema_errors(&dcc) {
        return Err(Refusal::SchemaViolation(errors));
    }
    Ok(Verified {
        kid: kid_hex,
        issuer: claims.issuer.clone(),
        issued_at: issued.map(|t| t.to_rfc3339()),
        expires: expires.map(|t| t.to_rfc3339()),
        dcc,
    })
}

/// The DCC JSON inside the CWT's `hcert` claim (-260, key 1).
fn hcert(claims: &ClaimsSet) -> Result<Value, Refusal> {
    let missing = || Refusal::CoseStructure("the CWT has no hcert claim (-260) with a DCC (1)".into());
    let hcert = claims
        .rest
        .iter()
        .find(|(name, _)| *name == RegisteredLabelWithPrivate::Assigned(iana::CwtClaimName::Hcert))
        .map(|(_, value)| value)
        .ok_or_else(missing)?;
    let ciborium::Value::Map(entries) = hcert else {
        return Err(missing());
    };
    let dcc = entries
        .iter()
        .find(|(k, _)| k.as_integer() == Some(1.into()))
        .map(|(_, v)| v)
        .ok_or_else(missing)?;
    from_cbor(dcc).map_err(|e| Refusal::CoseStructure(format!("the DCC is not JSON-shaped: {e}")))
}

fn check_signature(sign1: &CoseSign1, dsc: &Dsc, signature: &[u8], tbs: &[u8]) -> Result<(), Refusal> {
    let alg = sign1.protected.header.alg.as_ref();
    let es256 = RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256);
    let ps256 = RegisteredLabelWithPrivate::Assigned(iana::Algorithm::PS256);
    let verified = match (&dsc.key, alg) {
        (PublicKey::Ec(point), Some(a)) if *a == es256 => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(tbs, signature)
        }
        (PublicKey::Rsa(key), Some(a)) if *a == ps256 => {
            UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, key).verify(tbs, signature)
        }
        (_, alg) => {
            return Err(Refusal::BadSignature(format!(
                "algorithm {alg:?} does not match the Document Signer's key (ES256 or PS256)"
            )))
        }
    };
    verified.map_err(|_| {
        Refusal::BadSignature("the signature does not verify with the Document Signer's key".into())
    })
}

fn instant(t: &Timestamp) -> Option<DateTime<Utc>> {
    match t {
        Timestamp::WholeSeconds(s) => DateTime::from_timestamp(*s, 0),
        Timestamp::FractionalSeconds(s) => DateTime::from_timestamp(s.floor() as i64, 0),
    }
}

/// The schema errors of a DCC JSON (at most five, `path: message`), or `None` if it is valid.
pub fn schema_errors(dcc: &Value) -> Option<String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(DCC_SCHEMA).map_err(|e| e.to_string())?;
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| e.to_string())
    });
    let validator = match validator {
        Ok(v) => v,
        Err(e) => return Some(format!("the shipped DCC schema does not compile: {e}")),
    };
    let errors: Vec<String> = validator
        .iter_errors(dcc)
        .take(5)
        .map(|e| format!("{}: {}", e.instance_path(), e))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}
