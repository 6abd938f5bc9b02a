//! EU Digital COVID Certificates (DCC): vaccination certificates anyone can check offline.
//!
//! ```text
//! canonical record ─▶ DCC JSON 1.3.3 ─▶ CWT {iss, iat, exp, hcert: {1: DCC}} ─▶ COSE_Sign1 (ES256, kid)
//!                                                  ─▶ zlib ─▶ base45 ─▶ "HC1:…" ─▶ QR (PNG)
//! ```
//!
//! Signed by a Document Signer certificate (DSC) that a country signing CA (CSCA) issued; the dev PKI
//! (`certs::init_dir`) makes both. `kid` is the first 8 bytes of the SHA-256 of the DSC. The
//! verifier unwraps the same layers in reverse against a trust list of DSCs.
//!
//! Crates: `coset` (COSE_Sign1 and CWT claims) over `ciborium` (CBOR), `flate2` (zlib), `base45`, `qrcode`
//! + `png` (the QR image), `ring` (ES256 signing and verification), `jsonschema` (the DCC schema).

mod issue;
mod name;
mod uvci;
mod valueset;
mod verify;

pub use issue::{certificate_json, qr_png, DocumentSigner, Issued, CERTIFICATE_FIELDS, SOURCE_FIELDS};
pub use name::{icao_transliteration, person_name};
pub use uvci::{check_character, check_matches, uvci};
pub use valueset::{lookup as vaccine_codes, VaccineCodes, VACCINES};
pub use verify::{schema_errors, verify, Dsc, Refusal, TrustList, Verified, DCC_SCHEMA};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What every certificate string starts with (health certificate, version 1).
pub const HC1_PREFIX: &str = "HC1:";
/// The DCC schema version issued.
pub const SCHEMA_VERSION: &str = "1.3.3";
/// SNOMED CT 840539006: COVID-19, the disease targeted.
pub const COVID19_DISEASE: &str = "840539006";
/// Country of vaccination and CWT issuer.
pub const COUNTRY: &str = "VN";

/// `kid` of a DSC: the first 8 bytes of the SHA-256 of its DER.
pub fn kid_of(dsc_der: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(dsc_der);
    let mut kid = [0u8; 8];
    kid.copy_from_slice(&digest[..8]);
    kid
}

/// JSON → CBOR, integers kept as integers.
fn to_cbor(value: &Value) -> ciborium::Value {
    use ciborium::Value as C;
    match value {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => C::Integer(i.into()),
            (None, Some(u)) => C::Integer(u.into()),
            _ => C::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => C::Text(s.clone()),
        Value::Array(items) => C::Array(items.iter().map(to_cbor).collect()),
        Value::Object(map) => C::Map(
            map.iter()
                .map(|(k, v)| (C::Text(k.clone()), to_cbor(v)))
                .collect(),
        ),
    }
}

/// CBOR → JSON: text-keyed maps, text, numbers, booleans, null; anything else is refused.
fn from_cbor(value: &ciborium::Value) -> Result<Value, String> {
    use ciborium::Value as C;
    Ok(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(*b),
        C::Integer(i) => {
            let i = i128::from(*i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(i), _) => Value::from(i),
                (_, Ok(u)) => Value::from(u),
                _ => return Err(format!("integer {i} out of range")),
            }
        }
        C::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("float {f} is not a JSON number"))?,
        C::Text(s) => Value::String(s.clone()),
        C::Array(items) => Value::Array(items.iter().map(from_cbor).collect::<Result<_, _>>()?),
        C::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let C::Text(key) = k else {
                    return Err("a map key is not text".into());
                };
                map.insert(key.clone(), from_cbor(v)?);
            }
            Value::Object(map)
        }
        C::Tag(_, inner) => from_cbor(inner)?,
        other => return Err(format!("unsupported CBOR item {other:?}")),
    })
}
