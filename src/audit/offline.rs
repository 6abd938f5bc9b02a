//! Stage: audit — offline tools over the segment files (no sled, the broker may be stopped): verify the
//! chain and its signed checkpoints, export a time range, archive and prune old segments.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::format::{
    list_segments, load_or_create_key, read_public_key, sync_dir, Base, Checkpoint, Checkpoints, Segment,
    KEY_FILE,
};
use super::{AuditEntry, AuditError};

/// What a successful [`verify_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Seq of the last entry (the number of entries ever written, pruned ones included).
    pub count: u64,
    /// Hash of the last entry (the base's `prev_hash` when no entry remains).
    pub head_hash: String,
    /// Signed checkpoints checked against the chain (those pointing into pruned segments are not counted).
    pub checkpoints: usize,
    /// Seq of the first entry still in the folder (1 unless pruned).
    pub first_seq: u64,
    /// The last segment ends in a line torn by a crash; it was never acknowledged and the broker cuts it
    /// on its next start.
    pub torn_tail: bool,
}

/// Why [`verify_dir`] failed, at which entry (0 when no single entry is to blame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The first entry found wrong.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seq == 0 {
            write!(f, "audit trail: {}", self.reason)
        } else {
            write!(f, "entry {}: {}", self.seq, self.reason)
        }
    }
}

impl std::error::Error for VerifyFailure {}

fn failure(seq: u64, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        seq,
        reason: reason.into(),
    }
}

/// Walk every segment in `dir`: recompute each hash, check seq continuity, the `prev_hash` links and the
/// canonical encoding of each line, then check every signed checkpoint (valid signature, and the chain has
/// that seq with that hash, so a rewritten or truncated tail is detected). Reads only; never opens sled.
///
/// A pruned trail's `base.json` must be signed by the checkpoint key.
///
/// Limits: on its own this cannot see a tail cut together with `checkpoints.jsonl`, nor a key replaced
/// in the folder and everything re-signed; [`check_witness`] against a copy of the checkpoints kept
/// elsewhere can.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, VerifyFailure> {
    let base = Base::read(dir).map_err(|e| failure(0, e.to_string()))?;
    if base.seq > 1 {
        let public_key = read_public_key(dir).map_err(|e| failure(0, e))?;
        base.check(&public_key).map_err(|e| failure(base.seq, e))?;
    }
    let checkpoints = Checkpoints::read(dir).map_err(|e| failure(0, e.to_string()))?;
    let segments =
        list_segments(dir).map_err(|e| failure(0, format!("cannot list {}: {e}", dir.display())))?;

    let mut wanted: BTreeMap<u64, Option<String>> = checkpoints.list.iter().map(|c| (c.seq, None)).collect();
    let mut expected = base.seq;
    let mut prev = base.prev_hash.clone();
    let mut torn_tail = false;
    for (i, (first, path)) in segments.iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let segment =
            Segment::read(path).map_err(|e| failure(expected, format!("cannot read {name}: {e}")))?;
        if segment.torn() {
            if i + 1 < segments.len() {
                return Err(failure(
                    expected,
                    format!("{name} ends in a torn line but is not the last segment"),
                ));
            }
            torn_tail = true;
        }
        for (n, line) in segment.lines().enumerate() {
            let entry = AuditEntry::from_line(line).map_err(|e| failure(expected, format!("{name}: {e}")))?;
            // Left over from a prune interrupted between recording the base and deleting the segments.
            if entry.seq < base.seq && expected == base.seq {
                continue;
            }
            if entry.seq != expected {
                return Err(failure(
                    expected,
                    format!("missing or out of order (found seq {} instead)", entry.seq),
                ));
            }
            if n == 0 && *first != entry.seq {
                return Err(failure(expected, format!("{name} is named for seq {first}")));
            }
            let hash = entry
                .compute_hash()
                .map_err(|e| failure(expected, e.to_string()))?;
            if hash != entry.hash {
                return Err(failure(expected, "hash mismatch"));
            }
            let canonical = entry.to_line().map_err(|e| failure(expected, e.to_string()))?;
            if canonical.as_bytes() != line {
                return Err(failure(expected, "line is not in canonical form"));
            }
            if entry.prev_hash != prev {
                return Err(failure(
                    expected,
                    "prev_hash does not match the previous entry's hash",
                ));
            }
            if let Some(slot) = wanted.get_mut(&entry.seq) {
                *slot = Some(entry.hash.clone());
            }
            prev = entry.hash;
            expected += 1;
        }
    }
    let count = expected - 1;

    let mut checked = 0;
    if !checkpoints.list.is_empty() {
        let public_key = read_public_key(dir).map_err(|e| failure(0, e))?;
        for checkpoint in &checkpoints.list {
            if !checkpoint.signature_valid(&public_key) {
                return Err(failure(checkpoint.seq, "checkpoint signature invalid"));
            }
            if checkpoint.seq > count {
                return Err(failure(
                    count + 1,
                    format!(
                        "missing: a signed checkpoint says the trail reached seq {}, it ends at {count}",
                        checkpoint.seq
                    ),
                ));
            }
            if checkpoint.seq.saturating_add(1) < base.seq {
                continue; // in an archived segment
            }
            let hash = if checkpoint.seq.saturating_add(1) == base.seq {
                Some(&base.prev_hash)
            } else {
                wanted.get(&checkpoint.seq).and_then(Option::as_ref)
            };
            if hash != Some(&checkpoint.hash) {
                return Err(failure(checkpoint.seq, "hash differs from the signed checkpoint"));
            }
            checked += 1;
        }
    }
    Ok(VerifyReport {
        count,
        head_hash: prev,
        checkpoints: checked,
        first_seq: base.seq,
        torn_tail,
    })
}

/// Sign the `base.json` of a trail pruned before bases were signed (issue 20), so that it verifies and the
/// broker starts on it again. Run it only after checking the base against the archive that ends where it
/// begins (its last entry's hash is the base's `prev_hash`): this vouches for the base as it stands.
pub fn sign_base(dir: &Path, key_dir: &Path) -> Result<(u64, String), AuditError> {
    if !key_dir.join(KEY_FILE).is_file() && !dir.join(KEY_FILE).is_file() {
        return Err(AuditError::Io(format!(
            "{}: no signing key here",
            key_dir.join(KEY_FILE).display()
        )));
    }
    let key = load_or_create_key(key_dir, dir)?;
    let base = Base::read(dir)?;
    if base.seq == 1 {
        return Err(AuditError::Corrupt(
            "the trail was never pruned: nothing to sign".into(),
        ));
    }
    Base::signed(&key, base.seq, base.prev_hash.clone()).write(dir)?;
    Ok((base.seq, base.prev_hash))
}

/// The default key folder for a data dir: its sibling `<name>-keys` (outside the data dir, so a copy or
/// a rewrite of the data dir does not carry the keys; put it on another volume in production).
pub fn default_key_dir(data_dir: &Path) -> std::path::PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!("{name}-keys"))
}

/// The hash of entry `seq` in the trail: `None` if it was pruned away, the base's `prev_hash` for the
/// entry just before the base. An error if the trail does not reach it.
pub(crate) fn hash_at(dir: &Path, base: &Base, seq: u64) -> Result<Option<String>, VerifyFailure> {
    if seq.saturating_add(1) < base.seq {
        return Ok(None);
    }
    if seq.saturating_add(1) == base.seq {
        return Ok(Some(base.prev_hash.clone()));
    }
    let segments =
        list_segments(dir).map_err(|e| failure(0, format!("cannot list {}: {e}", dir.display())))?;
    if let Some((_, path)) = segments.iter().rev().find(|(first, _)| *first <= seq) {
        let segment = Segment::read(path).map_err(|e| failure(seq, e.to_string()))?;
        for line in segment.lines() {
            let entry = AuditEntry::from_line(line).map_err(|e| failure(seq, e))?;
            if entry.seq == seq {
                return Ok(Some(entry.hash));
            }
        }
    }
    Err(failure(seq, "missing from the trail"))
}

/// Check a verified trail against a witness — a copy of its signed checkpoints kept outside the data
/// dir (`audit.witness`, or heads an operator saved from `GET /admin/v1/audit/checkpoint`). Fails when
/// the trail is shorter than what the witness saw, diverges from it, or the witness's signatures are not
/// made by the trail's key (the key was replaced). Returns the trail's report and how many witnessed
/// checkpoints were checked.
pub fn check_witness(dir: &Path, witness: &Path) -> Result<(VerifyReport, usize), VerifyFailure> {
    let report = verify_dir(dir)?;
    let witnessed = Checkpoints::read_file(witness).map_err(|e| failure(0, e.to_string()))?;
    if witnessed.list.is_empty() {
        return Err(failure(
            0,
            format!("witness {}: no checkpoint in it", witness.display()),
        ));
    }
    let public_key = read_public_key(dir).map_err(|e| failure(0, e))?;
    let base = Base::read(dir).map_err(|e| failure(0, e.to_string()))?;
    let mut checked = 0;
    for checkpoint in &witnessed.list {
        check_one_witnessed(dir, &base, &report, &public_key, checkpoint)?;
        checked += 1;
    }
    Ok((report, checked))
}

fn check_one_witnessed(
    dir: &Path,
    base: &Base,
    report: &VerifyReport,
    public_key: &[u8],
    checkpoint: &Checkpoint,
) -> Result<(), VerifyFailure> {
    if !checkpoint.signature_valid(public_key) {
        return Err(failure(
            checkpoint.seq,
            "the witness's checkpoint is not signed by the trail's key (was the key replaced?)",
        ));
    }
    if checkpoint.seq > report.count {
        return Err(failure(
            report.count + 1,
            format!(
                "missing: the witness saw the trail signed at seq {}, it ends at {}",
                checkpoint.seq, report.count
            ),
        ));
    }
    match hash_at(dir, base, checkpoint.seq)? {
        Some(hash) if hash != checkpoint.hash => Err(failure(
            checkpoint.seq,
            "differs from what the witness saw signed (the trail was rewritten)",
        )),
        _ => Ok(()),
    }
}

/// Write the entries with `from <= time < to` to `out` as JSON Lines (the stored lines, unchanged), oldest
/// first. Returns how many were written. A torn last line is skipped.
pub fn export(
    dir: &Path,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let mut written = 0;
    for (_, path) in list_segments(dir)? {
        let segment = Segment::read(&path)?;
        for line in segment.lines() {
            let entry = AuditEntry::from_line(line).map_err(AuditError::Corrupt)?;
            let time = entry
                .parsed_time()
                .ok_or_else(|| AuditError::Corrupt(format!("entry {}: bad time", entry.seq)))?;
            if from.is_some_and(|from| time < from) || to.is_some_and(|to| time >= to) {
                continue;
            }
            out.write_all(line)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

/// Retention: move the oldest whole segments whose entries are all older than `before` into the new file
/// `archive` (JSON Lines, first a header `{"continues_from": {"seq": .., "prev_hash": ..}}`), record the
/// new base so [`verify_dir`] still verifies what is left, then delete them. The last segment (the one
/// being written) is never archived. Returns the number of entries archived. Run [`verify_dir`] first: this
/// moves lines as they are. A running broker's index keeps the archived entries until it is reopened.
/// The new base is signed with the checkpoint key from `key_dir` (see [`default_key_dir`]).
pub fn archive_and_prune(
    dir: &Path,
    key_dir: &Path,
    before: DateTime<Utc>,
    archive: &Path,
) -> Result<u64, AuditError> {
    if !key_dir.join(KEY_FILE).is_file() && !dir.join(KEY_FILE).is_file() {
        return Err(AuditError::Io(format!(
            "{}: no signing key here (the base left by a prune must be signed)",
            key_dir.join(KEY_FILE).display()
        )));
    }
    let key = load_or_create_key(key_dir, dir)?;
    let base = Base::read(dir)?;
    let segments = list_segments(dir)?;
    let Some(((_, _), older)) = segments.split_last() else {
        return Ok(0);
    };

    let mut chosen = Vec::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut continues_from: Option<(u64, String)> = None;
    let mut last_hash = None;
    for (i, (_, path)) in older.iter().enumerate() {
        let segment = Segment::read(path)?;
        if segment.torn() {
            return Err(AuditError::Corrupt(format!(
                "{} ends in a torn line",
                path.display()
            )));
        }
        let mut entries = Vec::new();
        for line in segment.lines() {
            let entry = AuditEntry::from_line(line).map_err(AuditError::Corrupt)?;
            entries.push((entry, line.to_vec()));
        }
        let all_old = entries
            .iter()
            .all(|(e, _)| e.parsed_time().is_some_and(|t| t < before));
        if !all_old {
            break;
        }
        for (entry, line) in entries {
            // Already archived by a prune interrupted before it could delete this segment.
            if entry.seq < base.seq {
                continue;
            }
            if continues_from.is_none() {
                continues_from = Some((entry.seq, entry.prev_hash.clone()));
            }
            last_hash = Some(entry.hash.clone());
            lines.push(line);
        }
        chosen.push((i, path.clone()));
    }
    let Some(&(last_chosen, _)) = chosen.last() else {
        return Ok(0);
    };
    let next_first = segments.get(last_chosen + 1).map(|(first, _)| *first);

    if let (Some(continues_from), Some(last_hash), Some(next_first)) = (continues_from, last_hash, next_first)
    {
        let mut file = OpenOptions::new().write(true).create_new(true).open(archive)?;
        let header = json!({ "continues_from": { "seq": continues_from.0, "prev_hash": continues_from.1 } });
        file.write_all(header.to_string().as_bytes())?;
        file.write_all(b"\n")?;
        for line in &lines {
            file.write_all(line)?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        if let Some(parent) = archive.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        // The base first: a crash before the deletes leaves segments that verify and open skip.
        Base::signed(&key, next_first, last_hash).write(dir)?;
    }
    for (_, path) in &chosen {
        fs::remove_file(path)?;
        // Its index goes with it (a left-over one is removed when the trail is next opened).
        let _ = fs::remove_file(super::index_path_of(path));
    }
    sync_dir(dir)?;
    Ok(lines.len() as u64)
}
