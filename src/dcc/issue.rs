//! Issuing: the canonical record → DCC JSON → CWT → COSE_Sign1 (ES256) → zlib → base45 → `HC1:` → QR.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use coset::cwt::{ClaimsSetBuilder, Timestamp};
use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use super::{kid_of, to_cbor, HC1_PREFIX, SCHEMA_VERSION};
use crate::error::{ApiError, ErrorCode};

/// The canonical fields a certificate is made from (recorded in the audit entry of each issue).
pub const SOURCE_FIELDS: [&str; 5] = [
    "full_name",
    "birth_date",
    "vaccinations[].dose_number",
    "vaccinations[].vaccine_code",
    "vaccinations[].date",
];

/// The DCC fields a certificate carries, as the audit entry names them.
pub const CERTIFICATE_FIELDS: [&str; 12] = [
    "nam", "dob", "v[].tg", "v[].vp", "v[].mp", "v[].ma", "v[].dn", "v[].sd", "v[].dt", "v[].co", "v[].is",
    "v[].ci",
];

/// The Document Signer: its certificate (issued by the country signing CA) and its P-256 key.
pub struct DocumentSigner {
    key: EcdsaKeyPair,
    certificate: Vec<u8>,
    kid: [u8; 8],
    rng: SystemRandom,
}

impl std::fmt::Debug for DocumentSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentSigner")
            .field("kid", &hex::encode(self.kid))
            .finish_non_exhaustive()
    }
}

/// A signed certificate in its three forms.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The DCC JSON (the `hcert` claim's content).
    pub dcc: Value,
    /// `HC1:` + base45(zlib(COSE_Sign1)).
    pub hc1: String,
    /// The CWT's `iat`.
    pub issued_at: DateTime<Utc>,
    /// The CWT's `exp`.
    pub expires: DateTime<Utc>,
}

impl DocumentSigner {
    /// Read the DSC (PEM) and its PKCS#8 key (PEM); the key must match the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
            .map_err(|e| format!("{} / {}: {e}", cert_path.display(), key_path.display()))
    }

    /// [`DocumentSigner::load`] from PEM bytes.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let certificate = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| format!("not a PEM certificate: {e}"))?
            .to_vec();
        let key = match PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("not a PEM key: {e}"))? {
            PrivateKeyDer::Pkcs8(der) => der,
            _ => return Err("the Document Signer key must be PKCS#8".into()),
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.secret_pkcs8_der(), &rng)
            .map_err(|e| format!("not a P-256 ECDSA key: {e}"))?;
        let signer = Self {
            kid: kid_of(&certificate),
            key,
            certificate,
            rng,
        };
        let public = super::verify::Dsc::from_der(&signer.certificate).map_err(|e| e.to_string())?;
        if public.public_key() != ring::signature::KeyPair::public_key(&signer.key).as_ref() {
            return Err("the key does not belong to the Document Signer certificate".into());
        }
        Ok(signer)
    }

    /// `kid`: the first 8 bytes of the SHA-256 of the DSC.
    pub fn kid(&self) -> [u8; 8] {
        self.kid
    }

    /// The DSC, DER (what a verifier's trust list holds).
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// Sign `dcc` as a CWT issued by `country` at `issued_at`, valid for `validity`.
    pub fn sign(
        &self,
        dcc: Value,
        country: &str,
        issued_at: DateTime<Utc>,
        validity: Duration,
    ) -> Result<Issued, ApiError> {
        let expires = issued_at + validity;
        let claims = ClaimsSetBuilder::new()
            .issuer(country.to_string())
            .issued_at(Timestamp::WholeSeconds(issued_at.timestamp()))
            .expiration_time(Timestamp::WholeSeconds(expires.timestamp()))
            .claim(
                iana::CwtClaimName::Hcert,
                ciborium::Value::Map(vec![(ciborium::Value::Integer(1.into()), to_cbor(&dcc))]),
            )
            .build();
        let payload = claims.to_vec().map_err(ApiError::internal)?;
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(self.kid.to_vec())
            .build();
        let mut failure = None;
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| match self.key.sign(&self.rng, tbs) {
                Ok(sig) => sig.as_ref().to_vec(),
                Err(e) => {
                    failure = Some(e);
                    Vec::new()
                }
            })
            .build();
        if let Some(e) = failure {
            return Err(ApiError::internal(format!("ES256 signing failed: {e}")));
        }
        let cose = sign1.to_tagged_vec().map_err(ApiError::internal)?;
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zlib.write_all(&cose).map_err(ApiError::internal)?;
        let compressed = zlib.finish().map_err(ApiError::internal)?;
        Ok(Issued {
            dcc,
            hc1: format!("{HC1_PREFIX}{}", base45::encode(compressed)),
            issued_at,
            expires,
        })
    }
}

/// The DCC JSON (schema 1.3.3) for a record's latest vaccination: 422 `no_vaccination` when it has none,
/// 422 `vaccine_not_in_value_set` when its vaccine is not in the shipped table.
pub fn certificate_json(record: &Value, uvci: &str, issuer: &str) -> Result<Value, ApiError> {
    let latest = record["vaccinations"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by(|a, b| {
            let key = |v: &Value| (v["date"].as_str().map(str::to_owned), v["dose_number"].as_u64());
            key(a).cmp(&key(b))
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NoVaccination,
                "the citizen has no recorded vaccination to certify",
            )
        })?;
    let code = latest["vaccine_code"].as_str().unwrap_or_default();
    let codes = super::valueset::lookup(code).ok_or_else(|| {
        ApiError::new(
            ErrorCode::VaccineNotInValueSet,
            format!("vaccine code {code:?} has no entry in the DCC value-set table"),
        )
    })?;
    let dose = latest["dose_number"].as_u64().unwrap_or(1).max(1);
    Ok(json!({
        "ver": SCHEMA_VERSION,
        "nam": super::name::person_name(record["full_name"].as_str().unwrap_or_default()),
        "dob": record["birth_date"].as_str().unwrap_or_default(),
        "v": [{
            "tg": super::COVID19_DISEASE,
            "vp": codes.prophylaxis,
            "mp": codes.product,
            "ma": codes.holder,
            "dn": dose,
            // A booster beyond the primary series counts on: dose 3 of 3.
            "sd": dose.max(u64::from(codes.primary_series)),
            "dt": latest["date"].as_str().unwrap_or_default(),
            "co": super::COUNTRY,
            "is": issuer.chars().take(80).collect::<String>(),
            "ci": uvci,
        }],
    }))
}

/// The `HC1:` string as a QR code PNG: error correction Q (as the DCC guidelines ask), 4 px per module,
/// a 4-module quiet zone, 8-bit grey.
pub fn qr_png(hc1: &str) -> Result<Vec<u8>, ApiError> {
    const SCALE: usize = 4;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::with_error_correction_level(hc1.as_bytes(), qrcode::EcLevel::Q)
        .map_err(|e| ApiError::internal(format!("QR encoding: {e}")))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
        }
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| ApiError::internal(format!("PNG: {e}")))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| ApiError::internal(format!("PNG: {e}")))?;
    writer
        .finish()
        .map_err(|e| ApiError::internal(format!("PNG: {e}")))?;
    Ok(png)
}
