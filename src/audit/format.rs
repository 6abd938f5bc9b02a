//! Stage: audit — the on-disk format: entries and their hash, segment files, the base left by pruning,
//! signed checkpoints and the signing key.

use crate::error::ErrorCode;
use crate::exchange::{Exchange, Reply};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditError;

/// `prev_hash` of the first entry ever written.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Seqs beyond this are refused when read back, so no arithmetic on them can overflow.
pub(crate) const MAX_SEQ: u64 = u64::MAX / 2;

/// File holding the signed checkpoints, one JSON object per line.
pub(crate) const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
/// Ed25519 signing key, PKCS#8 DER, mode 0600, in the key folder (`audit.key_dir`), not beside the trail.
pub(crate) const KEY_FILE: &str = "checkpoint.key";
/// The HMAC-SHA256 key of `request_sha256` (32 random bytes, mode 0600), beside the signing key.
pub(crate) const BODY_KEY_FILE: &str = "body-hash.key";
/// The matching public key, lowercase hex, one line.
pub(crate) const PUBLIC_KEY_FILE: &str = "checkpoint.pub";
/// Where the remaining chain starts after pruning.
pub(crate) const BASE_FILE: &str = "base.json";

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const CHECKPOINT_DOMAIN: &str = "lienthong-audit-checkpoint-v1";
const BASE_DOMAIN: &str = "lienthong-audit-base-v1";

/// What the pipeline knows about one request; the log adds `seq`, `time`, `prev_hash` and `hash`.
///
/// The field order here is part of the hash (see [`AuditEntry`]): never reorder, rename or remove a field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AuditRecord {
    /// Agency code; `None` when unknown (e.g. an unregistered certificate).
    pub agency: Option<String>,
    /// SHA-256 hex of the client certificate.
    pub cert_fingerprint: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// `"canonical"`, a connector name, `"xroad-soap"`, `"xroad-rest"` or `"admin"`.
    pub channel: String,
    /// `"read"`, `"write"`, `"admin:<action>"`, …
    pub operation: String,
    /// The citizen concerned, if any.
    pub citizen_id: Option<String>,
    /// Exact field paths released or written.
    pub fields: Vec<String>,
    /// HTTP status answered.
    pub status: u16,
    /// Stable error code when the status is not 2xx.
    pub error_code: Option<String>,
    /// Request id, as answered to the client.
    pub request_id: String,
    /// Hex SHA-256 of the request body (an empty body hashes too).
    pub request_sha256: String,
    /// Bulk processing (e.g. contact tracing).
    pub bulk: bool,
    /// The request reached the store and counted against the agency's quota (the billing reconcile
    /// counts served calls from this).
    #[serde(default)]
    pub metered: bool,
    /// The catalogue version in force when the request was served (its prices and grants applied), so
    /// the bill prices each call at the terms of its own instant. Left out of the line when `None`:
    /// entries written before versions existed keep their encoding and their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// Hex SHA-256 of the answer body sent (the bytes an agency holds and the answer signature covers).
    /// Absent from entries written before it existed, and then left out of their hash too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_sha256: Option<String>,
    /// The person behind the request and the reason (end user, case, legal basis, consent, hiding), when
    /// the client declared them. Absent from the encoding when `None`, so entries written before this
    /// field existed hash exactly as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accountability: Option<crate::accountability::Accountability>,
    /// The W3C `traceparent` of the request, in upstream provider mode or when the agency sent one (the
    /// same trace is passed to the provider). Absent, it is not written (nor hashed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl AuditRecord {
    /// The entry for one request: what its [`Exchange`] learned on the way, and how it was answered. A
    /// refused or failed request released nothing, whatever the stages had noted.
    pub fn of(exchange: &Exchange, reply: &Reply) -> Self {
        let answered = reply.status.is_success();
        Self {
            agency: exchange.agency.clone(),
            cert_fingerprint: Some(exchange.peer.fingerprint_sha256.clone()),
            purpose: exchange.purpose.clone(),
            channel: exchange.channel.clone(),
            operation: exchange.operation_name(),
            citizen_id: exchange.citizen_id.clone(),
            fields: if answered {
                exchange.fields.clone()
            } else {
                Vec::new()
            },
            status: reply.status.as_u16(),
            error_code: reply.error_code.map(|c| c.as_str().to_string()),
            request_id: exchange.request_id.clone(),
            request_sha256: exchange.body_sha256.clone(),
            bulk: exchange.bulk,
            metered: exchange.metered,
            catalogue_version: Some(exchange.catalogue.id.clone()),
            answer_sha256: Some(hex::encode(Sha256::digest(&reply.body))),
            accountability: (!exchange.accountability.is_empty()).then(|| exchange.accountability.clone()),
            traceparent: exchange.traceparent.clone(),
        }
    }

    /// How the month's bill counts this entry, if at all: the one rule of the billing totals, the monthly
    /// report and `billing reconcile`.
    pub fn billed_as(&self) -> Option<Billed> {
        if self.metered && (200..300).contains(&self.status) {
            Some(Billed::Served)
        } else if self.error_code.as_deref() == Some(ErrorCode::QuotaExceeded.as_str()) {
            Some(Billed::Refused)
        } else {
            None
        }
    }
}

/// A call as the month's bill counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Billed {
    /// A metered call answered 2xx.
    Served,
    /// A call refused for quota (`quota_exceeded`).
    Refused,
}

impl Billed {
    /// The name the totals are kept under (`quota_totals.kind`, the embedded counters' keys).
    pub fn as_str(self) -> &'static str {
        match self {
            Billed::Served => "served",
            Billed::Refused => "refused",
        }
    }
}

/// One line of the trail.
///
/// `hash = hex(SHA-256(prev_hash_hex ‖ canonical))`, where `canonical` is the compact serde_json encoding of
/// the entry without `hash`, fields in this order: `seq, time, agency, cert_fingerprint, purpose, channel,
/// operation, citizen_id, fields, status, error_code, request_id, request_sha256, bulk, metered,
/// [catalogue_version,] [answer_sha256,] [accountability,] [traceparent,] prev_hash` (`None` as `null`, except
/// `catalogue_version`, `answer_sha256`, `accountability` and `traceparent`, which are left out when absent so
/// that entries written before they existed hash as they did). The stored line is the same encoding with
/// `hash` appended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// 1-based position in the chain.
    pub seq: u64,
    /// UTC, RFC 3339 with milliseconds, e.g. `2026-11-23T12:00:00.123Z`; never decreases along the chain.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// `hash` of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The entry as hashed: everything but `hash`, in the stored order.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// Build an entry, compute its hash and its stored line, serialising it once: the stored line is
    /// the hashed encoding with `"hash"` appended (the field order of [`AuditEntry`] guarantees it).
    pub(crate) fn seal(
        seq: u64,
        time: String,
        record: AuditRecord,
        prev_hash: String,
    ) -> Result<(Self, String), AuditError> {
        let mut entry = Self {
            seq,
            time,
            record,
            prev_hash,
            hash: String::new(),
        };
        let canonical = entry.canonical()?;
        entry.hash = hash_of(&entry.prev_hash, &canonical);
        // `canonical` ends with the `}` of the object: reopen it for the last field.
        let mut line = canonical;
        line.pop();
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(entry.hash.as_bytes());
        line.extend_from_slice(b"\"}");
        let line = String::from_utf8(line).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        Ok((entry, line))
    }

    /// The hashed encoding: everything but `hash`, compact, in the stored order.
    fn canonical(&self) -> Result<Vec<u8>, AuditError> {
        let unhashed = Unhashed {
            seq: self.seq,
            time: &self.time,
            record: &self.record,
            prev_hash: &self.prev_hash,
        };
        serde_json::to_vec(&unhashed).map_err(|e| AuditError::Corrupt(e.to_string()))
    }

    /// Recompute the hash from the other fields.
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        Ok(hash_of(&self.prev_hash, &self.canonical()?))
    }

    /// The stored line, without its newline.
    pub(crate) fn to_line(&self) -> Result<String, AuditError> {
        serde_json::to_string(self).map_err(|e| AuditError::Corrupt(e.to_string()))
    }

    /// Parse a stored line.
    pub(crate) fn from_line(line: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(line).map_err(|e| format!("malformed entry: {e}"))
    }

    /// `time` parsed.
    pub(crate) fn parsed_time(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// `hex(SHA-256(prev_hash_hex ‖ canonical))`.
fn hash_of(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// UTC, RFC 3339, milliseconds, `Z`.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `t` cut to whole milliseconds, so a formatted time parses back to the same instant.
pub(crate) fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A segment file read into memory: everything up to the last newline, and whether bytes followed it.
pub(crate) struct Segment {
    data: Vec<u8>,
    complete: usize,
}

impl Segment {
    pub(crate) fn read(path: &Path) -> io::Result<Self> {
        let data = fs::read(path)?;
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        Ok(Self { data, complete })
    }

    /// Bytes after the last newline other than zeros: a line torn by a crash mid-write. Zeros alone
    /// are what the writer wrote ahead of the open segment's end (`OpenSegment::write_batch`).
    pub(crate) fn torn(&self) -> bool {
        self.data[self.complete..].iter().any(|b| *b != 0)
    }

    /// The file's whole length, zeros written ahead included.
    pub(crate) fn file_len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Length of the file without the torn tail.
    pub(crate) fn complete_len(&self) -> u64 {
        self.complete as u64
    }

    /// The complete lines, without their newlines.
    pub(crate) fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let complete = &self.data[..self.complete];
        let body = complete.strip_suffix(b"\n").unwrap_or(complete);
        body.split(|b| *b == b'\n').filter(move |_| !complete.is_empty())
    }

    /// The complete lines with the byte offset each starts at.
    pub(crate) fn lines_with_offsets(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let start = self.data.as_ptr() as usize;
        self.lines()
            .map(move |line| ((line.as_ptr() as usize - start) as u64, line))
    }

    /// The last complete line.
    pub(crate) fn last_line(&self) -> Option<&[u8]> {
        self.lines().last()
    }
}

/// File name of the segment whose first entry is `first_seq`; names sort by first seq.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, by first seq.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if let Some(first) = item.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, item.path()));
        }
    }
    out.sort_by_key(|(first, _)| *first);
    Ok(out)
}

/// Make a directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where the chain in `dir` starts: seq 1 from genesis, or what pruning recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Base {
    pub(crate) seq: u64,
    pub(crate) prev_hash: String,
    /// Ed25519 over `"lienthong-audit-base-v1\n{seq}\n{prev_hash}"`, hex: a prune is signed, so a base
    /// written by hand (to hide deleted segments) does not verify. Absent only on the genesis base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signature: Option<String>,
}

impl Base {
    pub(crate) fn read(dir: &Path) -> Result<Self, AuditError> {
        match fs::read(dir.join(BASE_FILE)) {
            Ok(bytes) => {
                let base: Self = serde_json::from_slice(&bytes)
                    .map_err(|e| AuditError::Corrupt(format!("{BASE_FILE}: {e}")))?;
                if base.seq == 0 || base.seq > MAX_SEQ {
                    return Err(AuditError::Corrupt(format!("{BASE_FILE}: seq out of range")));
                }
                Ok(base)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self {
                seq: 1,
                prev_hash: GENESIS_HASH.to_owned(),
                signature: None,
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn message(seq: u64, prev_hash: &str) -> Vec<u8> {
        format!("{BASE_DOMAIN}\n{seq}\n{prev_hash}").into_bytes()
    }

    /// A base after pruning, signed.
    pub(crate) fn signed(key: &Ed25519KeyPair, seq: u64, prev_hash: String) -> Self {
        let signature = hex::encode(key.sign(&Self::message(seq, &prev_hash)).as_ref());
        Self {
            seq,
            prev_hash,
            signature: Some(signature),
        }
    }

    /// The genesis base needs no signature; any other must carry a valid one.
    pub(crate) fn check(&self, public_key: &[u8]) -> Result<(), String> {
        if self.seq == 1 && self.prev_hash == GENESIS_HASH {
            return Ok(());
        }
        let valid = self
            .signature
            .as_deref()
            .and_then(|s| hex::decode(s).ok())
            .is_some_and(|signature| {
                UnparsedPublicKey::new(&ED25519, public_key)
                    .verify(&Self::message(self.seq, &self.prev_hash), &signature)
                    .is_ok()
            });
        if valid {
            Ok(())
        } else {
            Err(format!(
                "{BASE_FILE} (the trail starts at seq {}) is not signed by the checkpoint key: \
                 older segments were deleted without a signed prune (a trail pruned before bases were \
                 signed: check it against its archive, then `lienthong audit sign-base`)",
                self.seq
            ))
        }
    }

    /// Replace atomically: write a temporary file, sync it, rename it over, sync the folder.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), AuditError> {
        let tmp = dir.join(format!("{BASE_FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(BASE_FILE))?;
        sync_dir(dir)?;
        Ok(())
    }
}

/// A signed statement "the chain had `seq` entries and its head was `hash`".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) time: String,
    /// Ed25519 over [`Checkpoint::message`], hex.
    pub(crate) signature: String,
}

impl Checkpoint {
    pub(crate) fn sign(key: &Ed25519KeyPair, seq: u64, hash: String, time: String) -> Self {
        let signature = hex::encode(key.sign(&Self::message(seq, &hash, &time)).as_ref());
        Self {
            seq,
            hash,
            time,
            signature,
        }
    }

    /// Domain-separated so a checkpoint signature can never be replayed as anything else.
    fn message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
        format!("{CHECKPOINT_DOMAIN}\n{seq}\n{hash}\n{time}").into_bytes()
    }

    pub(crate) fn signature_valid(&self, public_key: &[u8]) -> bool {
        let Ok(signature) = hex::decode(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&Self::message(self.seq, &self.hash, &self.time), &signature)
            .is_ok()
    }
}

/// The checkpoints file, parsed. A torn last line (crash mid-write) is left out and reported.
pub(crate) struct Checkpoints {
    pub(crate) list: Vec<Checkpoint>,
    pub(crate) complete_len: u64,
    pub(crate) torn: bool,
}

impl Checkpoints {
    pub(crate) fn read(dir: &Path) -> Result<Self, AuditError> {
        Self::read_file(&dir.join(CHECKPOINTS_FILE))
    }

    /// Read a checkpoints file (the trail's, or a witness copy) at any path.
    pub(crate) fn read_file(path: &Path) -> Result<Self, AuditError> {
        let name = path.display();
        if !path.exists() {
            return Ok(Self {
                list: Vec::new(),
                complete_len: 0,
                torn: false,
            });
        }
        let segment = Segment::read(path)?;
        let mut list = Vec::new();
        for (i, line) in segment.lines().enumerate() {
            let checkpoint = serde_json::from_slice(line)
                .map_err(|e| AuditError::Corrupt(format!("{name} line {}: {e}", i + 1)))?;
            list.push(checkpoint);
        }
        Ok(Self {
            list,
            complete_len: segment.complete_len(),
            // Never written ahead: any byte after the last line, zero or not, is a torn write.
            torn: segment.complete_len() < segment.file_len(),
        })
    }
}

/// Write a new secret file (mode 0600), synced.
fn create_secret(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Read a secret file of the key folder, creating it with `generate` on first use.
fn load_or_create_secret(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>, AuditError>,
) -> Result<Vec<u8>, AuditError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = generate()?;
            create_secret(path, &bytes)?;
            Ok(bytes)
        }
        Err(e) => Err(e.into()),
    }
}

/// A trail written before the key folder existed keeps its signing key beside the segments: move it to
/// the key folder (the same key, so old checkpoints still verify) and delete it from the trail.
fn move_legacy_key(key_dir: &Path, trail_dir: &Path) -> Result<(), AuditError> {
    let legacy = trail_dir.join(KEY_FILE);
    if key_dir == trail_dir || !legacy.is_file() {
        return Ok(());
    }
    let moved = key_dir.join(KEY_FILE);
    if !moved.exists() {
        create_secret(&moved, &fs::read(&legacy)?)?;
    } else if fs::read(&moved)? != fs::read(&legacy)? {
        return Err(AuditError::Corrupt(format!(
            "{} and {} are different signing keys; keep the right one in the key folder",
            legacy.display(),
            moved.display()
        )));
    }
    fs::remove_file(&legacy)?;
    sync_dir(trail_dir)?;
    tracing::warn!(from = %legacy.display(), to = %moved.display(),
        "moved the audit signing key out of the trail's folder");
    Ok(())
}

/// Load the signing key from `key_dir`, creating it (mode 0600) on first use, and write its public half
/// beside the trail (`trail_dir/checkpoint.pub`) and beside the key.
pub(crate) fn load_or_create_key(key_dir: &Path, trail_dir: &Path) -> Result<Ed25519KeyPair, AuditError> {
    fs::create_dir_all(key_dir)?;
    move_legacy_key(key_dir, trail_dir)?;
    let pkcs8 = load_or_create_secret(&key_dir.join(KEY_FILE), || {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| AuditError::Io("cannot generate the checkpoint signing key".into()))
    })?;
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| AuditError::Corrupt(format!("{KEY_FILE}: not an Ed25519 PKCS#8 key ({e})")))?;
    let public_hex = hex::encode(key.public_key().as_ref());
    for dir in [trail_dir, key_dir] {
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        match fs::read_to_string(&pub_path) {
            Ok(text) if text.trim() == public_hex => {}
            Ok(_) => {
                return Err(AuditError::Corrupt(format!(
                    "{} does not match the signing key {}",
                    pub_path.display(),
                    key_dir.join(KEY_FILE).display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut file = File::create(&pub_path)?;
                file.write_all(format!("{public_hex}\n").as_bytes())?;
                file.sync_all()?;
                sync_dir(dir)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(key)
}

/// Load the key of the keyed body hash from `key_dir`, creating it (32 random bytes, mode 0600).
pub(crate) fn load_or_create_body_key(key_dir: &Path) -> Result<ring::hmac::Key, AuditError> {
    fs::create_dir_all(key_dir)?;
    let bytes = load_or_create_secret(&key_dir.join(BODY_KEY_FILE), || {
        let mut bytes = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes)
            .map_err(|_| AuditError::Io("cannot generate the body-hash key".into()))?;
        Ok(bytes)
    })?;
    if bytes.len() < 32 {
        return Err(AuditError::Corrupt(format!(
            "{BODY_KEY_FILE}: shorter than 32 bytes"
        )));
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// The public key written beside the signing key.
pub(crate) fn read_public_key(dir: &Path) -> Result<Vec<u8>, String> {
    let text = fs::read_to_string(dir.join(PUBLIC_KEY_FILE))
        .map_err(|e| format!("cannot read {PUBLIC_KEY_FILE}: {e}"))?;
    hex::decode(text.trim()).map_err(|e| format!("{PUBLIC_KEY_FILE} is not hex: {e}"))
}
