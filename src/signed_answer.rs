//! Signed answers: every answer on the agency listener carries a detached JWS (RFC 7515, Appendix F) in
//! the `x-jws-signature` header, made with the broker's Ed25519 answer-signing key.
//!
//! The protected header binds what identifies the exchange — `request_id`, `agency`, `purpose`, `time` (the
//! audit entry's time) — and the payload is the exact body bytes, detached: the header is
//! `BASE64URL(protected)..BASE64URL(signature)` and a verifier puts `BASE64URL(body)` back between the dots.
//! Any JOSE library checks it with the published keys; `lienthong verify-response` does it offline.
//!
//! JWS rather than HTTP Message Signatures (RFC 9421): the signature must outlive the HTTP exchange (an
//! agency keeps the body and one header value as evidence), and a JWS over the body bytes needs no
//! reconstruction of HTTP components that proxies may rewrite; the exchange's identifiers travel inside the
//! signed header instead of being re-derived from the request.
//!
//! Keys live in `<audit.key_dir>/answer-keys/`, beside the audit signing key and outside the data dir (a
//! copy of the data dir is not a copy of the key; older brokers kept them in `<data_dir>/answer-keys/`,
//! moved on the first start): `signing.key` (PKCS#8, mode 0600) is the current key, and
//! `<kid>.jwk` keeps the public key of every key that was ever current, so answers signed before a
//! rotation still verify. `kid` is the RFC 7638 thumbprint of the public JWK. The JWKS (current key first)
//! is served at [`JWKS_PATH`] on the agency listener and in the OpenAPI catalogue.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The response header carrying the detached JWS.
pub const SIGNATURE_HEADER: &str = "x-jws-signature";
/// Where the agency listener publishes the answer-signing keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The `typ` of the protected header.
pub const SIGNATURE_TYPE: &str = "lienthong-answer+jws";

const KEYS_DIR: &str = "answer-keys";
const SIGNING_KEY_FILE: &str = "signing.key";

/// The broker's answer-signing keys: the current private key and every published public key.
pub struct AnswerKeys {
    current: Ed25519KeyPair,
    kid: String,
    jwks: Value,
}

impl std::fmt::Debug for AnswerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What one signature is about, besides the body.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request id (also in `x-request-id`).
    pub request_id: &'a str,
    /// The agency answered, when known.
    pub agency: Option<&'a str>,
    /// The declared purpose, when any.
    pub purpose: Option<&'a str>,
    /// The audit entry's time (RFC 3339).
    pub time: &'a str,
}

/// The JWS protected header, in the order it has always been written.
#[derive(serde::Serialize)]
struct ProtectedHeader<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
    request_id: &'a str,
    agency: Option<&'a str>,
    purpose: Option<&'a str>,
    time: &'a str,
}

/// Where the keys are: `answer-keys/` in the key folder (`audit.key_dir`). Keys still in the data dir,
/// where brokers before this one kept them, are moved here first.
fn keys_dir(key_dir: &Path, data_dir: &Path) -> Result<PathBuf, String> {
    let dir = key_dir.join(KEYS_DIR);
    let old = data_dir.join(KEYS_DIR);
    if !dir.exists() && old.is_dir() {
        fs::create_dir_all(key_dir).map_err(|e| format!("{}: {e}", key_dir.display()))?;
        let moved = fs::rename(&old, &dir).or_else(|_| {
            // Another file system: copy every file, then remove the old folder.
            fs::create_dir_all(&dir)?;
            for entry in fs::read_dir(&old)? {
                let entry = entry?;
                fs::copy(entry.path(), dir.join(entry.file_name()))?;
            }
            fs::remove_dir_all(&old)
        });
        moved.map_err(|e| format!("moving {} to {}: {e}", old.display(), dir.display()))?;
        tracing::info!(from = %old.display(), to = %dir.display(), "answer-signing keys moved out of the data dir");
    }
    Ok(dir)
}

impl AnswerKeys {
    /// Open the keys in `key_dir` (`audit.key_dir`; those still in `data_dir` are moved there first),
    /// making the first one if there is none.
    pub fn open(key_dir: &Path, data_dir: &Path) -> Result<Self, String> {
        let dir = keys_dir(key_dir, data_dir)?;
        let key_path = dir.join(SIGNING_KEY_FILE);
        if !key_path.exists() {
            install_new_key(&dir)?;
        }
        let pkcs8 = fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let current = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| format!("{}: not an Ed25519 PKCS#8 key ({e})", key_path.display()))?;
        let current_jwk = public_jwk(current.public_key().as_ref());
        let kid = current_jwk["kid"].as_str().unwrap_or_default().to_string();
        // The current key's public half is always published, even if its file went missing.
        write_if_missing(&dir.join(format!("{kid}.jwk")), &current_jwk)?;
        let mut keys = vec![current_jwk];
        let mut previous = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("jwk") {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let jwk: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: not a JWK ({e})", path.display()))?;
            if jwk["kid"] != kid.as_str() {
                previous.push(jwk);
            }
        }
        // Previous keys newest first (the files carry the time they were made).
        previous.sort_by(|a, b| b["iat"].as_i64().cmp(&a["iat"].as_i64()));
        keys.extend(previous);
        Ok(Self {
            current,
            kid,
            jwks: json!({ "keys": keys }),
        })
    }

    /// Make a new current key; the old one's public key stays published. Takes effect when the broker
    /// next starts. Returns the new `kid`.
    pub fn rotate(key_dir: &Path, data_dir: &Path) -> Result<String, String> {
        // Publish the outgoing key's public half before replacing it.
        Self::open(key_dir, data_dir)?;
        let dir = keys_dir(key_dir, data_dir)?;
        install_new_key(&dir)
    }

    /// The current key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The published keys, `{"keys": [current, previous…]}`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The detached JWS over `body` and `exchange`: `BASE64URL(protected)..BASE64URL(signature)`.
    pub fn sign(&self, body: &[u8], exchange: Exchange<'_>) -> String {
        let protected = ProtectedHeader {
            alg: "EdDSA",
            kid: &self.kid,
            typ: SIGNATURE_TYPE,
            request_id: exchange.request_id,
            agency: exchange.agency,
            purpose: exchange.purpose,
            time: exchange.time,
        };
        // Serialised straight from borrowed fields (no `Value` map per answer); the same bytes as before.
        // Borrowed strings only: serialising cannot fail.
        let protected = B64.encode(serde_json::to_vec(&protected).unwrap_or_default());
        let mut signing_input = String::with_capacity(protected.len() + 1 + body.len().div_ceil(3) * 4);
        signing_input.push_str(&protected);
        signing_input.push('.');
        B64.encode_string(body, &mut signing_input);
        let signature = self.current.sign(signing_input.as_bytes());
        format!("{protected}..{}", B64.encode(signature.as_ref()))
    }
}

/// A verified signature: the protected header (kid, request_id, agency, purpose, time).
pub fn verify(signature_header: &str, body: &[u8], jwks: &Value) -> Result<Value, String> {
    let mut parts = signature_header.trim().split('.');
    let (Some(protected_b64), Some(payload), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the signature is not a JWS in compact form (three parts separated by dots)".into());
    };
    if !payload.is_empty() {
        return Err("the signature is not detached (its payload part is not empty)".into());
    }
    let protected: Value = B64
        .decode(protected_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the signature's protected header is not base64url JSON")?;
    if protected["alg"] != "EdDSA" {
        return Err(format!("algorithm {} is not EdDSA", protected["alg"]));
    }
    let kid = protected["kid"]
        .as_str()
        .ok_or("the signature names no key (kid)")?;
    let jwk = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("key {kid} is not among the published keys"))?;
    let public = jwk["x"]
        .as_str()
        .and_then(|x| B64.decode(x).ok())
        .ok_or_else(|| format!("published key {kid} has no usable x"))?;
    let signature = B64
        .decode(signature_b64)
        .map_err(|_| "the signature part is not base64url")?;
    let signing_input = format!("{protected_b64}.{}", B64.encode(body));
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| {
            format!(
                "the signature does not match: the body or the signed request id, agency, purpose or time \
                 differ from what key {kid} signed"
            )
        })?;
    Ok(protected)
}

/// The public JWK (OKP, Ed25519) with its RFC 7638 thumbprint as `kid` and the time it was made.
fn public_jwk(public: &[u8]) -> Value {
    let x = B64.encode(public);
    // RFC 7638: the required members, lexicographic order, no white space.
    let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = B64.encode(Sha256::digest(thumbprint_input.as_bytes()));
    json!({
        "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
        "iat": chrono::Utc::now().timestamp(),
    })
}

/// Generate a key, publish its JWK, and make it current (atomically). Returns its `kid`.
fn install_new_key(dir: &Path) -> Result<String, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "cannot generate an answer-signing key".to_string())?;
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
    let jwk = public_jwk(key.public_key().as_ref());
    let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
    write_if_missing(&dir.join(format!("{kid}.jwk")), &jwk)?;
    let staged = dir.join(format!("{SIGNING_KEY_FILE}.new"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&staged).map_err(|e| io(&staged, e))?;
    file.write_all(doc.as_ref()).map_err(|e| io(&staged, e))?;
    file.sync_all().map_err(|e| io(&staged, e))?;
    let target = dir.join(SIGNING_KEY_FILE);
    fs::rename(&staged, &target).map_err(|e| io(&target, e))?;
    Ok(kid)
}

fn write_if_missing(path: &Path, jwk: &Value) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    fs::write(path, format!("{jwk}\n")).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exchange(request_id: &str) -> Exchange<'_> {
        Exchange {
            request_id,
            agency: Some("moh"),
            purpose: Some("covid-certificate"),
            time: "2026-12-03T05:00:00.000Z",
        }
    }

    #[test]
    fn the_protected_header_is_written_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AnswerKeys::open(dir.path(), dir.path()).unwrap();
        let header = keys.sign(b"{}", exchange("r-1"));
        let protected = B64.decode(header.split_once('.').unwrap().0).unwrap();
        let expected = json!({
            "alg": "EdDSA",
            "kid": keys.kid(),
            "typ": SIGNATURE_TYPE,
            "request_id": "r-1",
            "agency": "moh",
            "purpose": "covid-certificate",
            "time": "2026-12-03T05:00:00.000Z",
        });
        assert_eq!(String::from_utf8(protected).unwrap(), expected.to_string());
    }

    #[test]
    fn sign_verify_tamper_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let (keys_at, data) = (dir.path().join("keys"), dir.path().join("data"));
        let keys = AnswerKeys::open(&keys_at, &data).unwrap();
        let body = br#"{"ok":true}"#;
        let header = keys.sign(body, exchange("r-1"));
        let protected = verify(&header, body, keys.jwks()).unwrap();
        assert_eq!(protected["request_id"], "r-1");
        assert_eq!(protected["kid"], keys.kid());
        assert!(verify(&header, br#"{"ok":false}"#, keys.jwks()).is_err());

        // A different request id inside the signed header breaks the signature.
        let (protected_b64, rest) = header.split_once('.').unwrap();
        let mut forged: Value = serde_json::from_slice(&B64.decode(protected_b64).unwrap()).unwrap();
        forged["request_id"] = json!("r-2");
        let forged = format!("{}.{rest}", B64.encode(forged.to_string()));
        assert!(verify(&forged, body, keys.jwks()).is_err());

        // After a rotation the old answers still verify against the new JWKS.
        let old_kid = keys.kid().to_string();
        let new_kid = AnswerKeys::rotate(&keys_at, &data).unwrap();
        assert_ne!(new_kid, old_kid);
        let rotated = AnswerKeys::open(&keys_at, &data).unwrap();
        assert_eq!(rotated.kid(), new_kid);
        assert_eq!(rotated.jwks()["keys"][0]["kid"], new_kid.as_str());
        assert_eq!(rotated.jwks()["keys"][1]["kid"], old_kid.as_str());
        verify(&header, body, rotated.jwks()).unwrap();
    }

    #[test]
    fn keys_left_in_the_data_dir_move_to_the_key_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (keys_at, data) = (dir.path().join("keys"), dir.path().join("data"));
        // Where brokers before this one kept them.
        let old = AnswerKeys::open(&data, Path::new("/nonexistent")).unwrap();
        assert!(data.join(KEYS_DIR).join(SIGNING_KEY_FILE).is_file());
        let moved = AnswerKeys::open(&keys_at, &data).unwrap();
        assert_eq!(moved.kid(), old.kid(), "the same key, not a new one");
        assert!(keys_at.join(KEYS_DIR).join(SIGNING_KEY_FILE).is_file());
        assert!(
            !data.join(KEYS_DIR).exists(),
            "no copy of the key left in the data dir"
        );
    }
}
