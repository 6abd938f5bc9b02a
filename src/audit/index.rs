//! Stage: audit — the sled query index over the trail: by seq, by citizen, by agency.
//!
//! The segment files are the record; this index is derived and can always be rebuilt from them. `by_seq`
//! holds where each entry's line lies (segment, offset, length: 20 bytes), not the line itself, so the
//! index stays small and sled writes little per entry; an index written before this layout holds whole
//! lines, which are still read. It is written by its own thread ([`run_indexer`]) after the entries are synced and their answers released,
//! so no request waits for it, and never flushed per entry. Searches wait until it has caught up with
//! the head they start from, so a search always sees the entries of requests already answered.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sled::Tree;

use super::format::segment_name;
use super::{AuditEntry, AuditError, AuditFilter};

const BY_SEQ: &str = "audit/by_seq";
const BY_CITIZEN: &str = "audit/by_citizen";
const BY_AGENCY: &str = "audit/by_agency";

/// 0xFF never occurs in UTF-8, so `value ‖ 0xFF ‖ seq` keys of different values never share a prefix.
const SEPARATOR: u8 = 0xFF;

impl From<sled::Error> for AuditError {
    fn from(e: sled::Error) -> Self {
        AuditError::Index(e.to_string())
    }
}

/// Where an entry's line lies: the segment (by its first seq), the byte offset and the length, without
/// the newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Location {
    fn to_bytes(self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_at(8);
        let (offset, len) = rest.split_at(8);
        Some(Self {
            segment: u64::from_be_bytes(segment.try_into().ok()?),
            offset: u64::from_be_bytes(offset.try_into().ok()?),
            len: u32::from_be_bytes(len.try_into().ok()?),
        })
    }
}

/// What the index keeps of one entry: its keys and where its line lies.
pub(crate) struct IndexItem {
    pub(crate) seq: u64,
    pub(crate) citizen_id: Option<String>,
    pub(crate) agency: Option<String>,
    pub(crate) location: Location,
}

impl IndexItem {
    pub(crate) fn new(entry: &AuditEntry, location: Location) -> Self {
        Self {
            seq: entry.seq,
            citizen_id: entry.record.citizen_id.clone(),
            agency: entry.record.agency.clone(),
            location,
        }
    }
}

/// Open segment files, by first seq, for reading lines back.
#[derive(Default)]
struct SegmentFiles {
    open: Mutex<HashMap<u64, Arc<File>>>,
}

/// Segment files kept open for reads; older ones are reopened when needed.
const OPEN_SEGMENTS: usize = 16;

impl SegmentFiles {
    /// The segment's file, or `None` if it is gone (pruned).
    fn get(&self, dir: &Path, first: u64) -> Result<Option<Arc<File>>, AuditError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = open.get(&first) {
            return Ok(Some(file.clone()));
        }
        let file = match File::open(dir.join(segment_name(first))) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if open.len() >= OPEN_SEGMENTS {
            open.clear();
        }
        open.insert(first, file.clone());
        Ok(Some(file))
    }
}

/// How long the indexer lets entries gather before a round of `apply_batch`es.
const INDEX_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// Most items the indexer applies in one round of `apply_batch`es.
const INDEX_BATCH: usize = 8192;

/// The indexer thread: index what the writer has made durable, in order, and publish how far it got.
/// Ends when the writer drops its sender. A failed insert is logged and passed over: the entries are
/// durable, and the index is reconciled with the segments when the trail is next opened.
pub(crate) fn run_indexer(
    index: Index,
    rx: std::sync::mpsc::Receiver<Vec<IndexItem>>,
    indexed: tokio::sync::watch::Sender<u64>,
) {
    while let Ok(mut items) = rx.recv() {
        // Let a few group commits gather: sled's cost is per batch as much as per key.
        std::thread::sleep(INDEX_GATHER);
        while items.len() < INDEX_BATCH {
            match rx.try_recv() {
                Ok(more) => items.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = index.insert(&items) {
            tracing::error!(error = %e, "audit index update failed; it is rebuilt from the trail at next start");
        }
        if let Some(last) = items.last() {
            indexed.send_replace(last.seq);
        }
    }
}

#[derive(Clone)]
pub(crate) struct Index {
    by_seq: Tree,
    by_citizen: Tree,
    by_agency: Tree,
    /// The trail's folder, where the located lines are read from.
    dir: PathBuf,
    files: Arc<SegmentFiles>,
}

fn secondary_prefix(value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 9);
    key.extend_from_slice(value.as_bytes());
    key.push(SEPARATOR);
    key
}

fn secondary_key(value: &str, seq: u64) -> Vec<u8> {
    let mut key = secondary_prefix(value);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of_secondary(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn seq_of_primary(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl Index {
    pub(crate) fn open(db: &sled::Db, dir: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            by_seq: db.open_tree(BY_SEQ)?,
            by_citizen: db.open_tree(BY_CITIZEN)?,
            by_agency: db.open_tree(BY_AGENCY)?,
            dir: dir.to_path_buf(),
            files: Arc::default(),
        })
    }

    /// Index entries (with their stored lines). Secondary keys go first so that an entry present in
    /// `by_seq` is fully indexed: recovery resumes after the last seq in `by_seq`.
    pub(crate) fn insert(&self, items: &[IndexItem]) -> Result<(), AuditError> {
        let mut citizens = sled::Batch::default();
        let mut agencies = sled::Batch::default();
        let mut seqs = sled::Batch::default();
        for item in items {
            if let Some(citizen) = &item.citizen_id {
                citizens.insert(secondary_key(citizen, item.seq), &[] as &[u8]);
            }
            if let Some(agency) = &item.agency {
                agencies.insert(secondary_key(agency, item.seq), &[] as &[u8]);
            }
            seqs.insert(&item.seq.to_be_bytes(), &item.location.to_bytes());
        }
        self.by_citizen.apply_batch(citizens)?;
        self.by_agency.apply_batch(agencies)?;
        self.by_seq.apply_batch(seqs)?;
        Ok(())
    }

    /// Drop indexed entries outside `[first, last]` (pruned, or cut from the chain). Their lines may be
    /// gone with their segments, so the secondary trees are swept by the seq in their keys.
    pub(crate) fn retain_range(&self, first: u64, last: u64) -> Result<(), AuditError> {
        let outside = |seq: u64| seq < first || seq > last;
        let mut swept = false;
        for item in self
            .by_seq
            .range(..first.to_be_bytes())
            .chain(self.by_seq.range(last.saturating_add(1).to_be_bytes()..))
        {
            let (key, _) = item?;
            self.by_seq.remove(key)?;
            swept = true;
        }
        if swept {
            for tree in [&self.by_citizen, &self.by_agency] {
                for item in tree.iter() {
                    let (key, _) = item?;
                    if seq_of_secondary(&key).is_none_or(outside) {
                        tree.remove(key)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self) -> Result<(), AuditError> {
        self.by_seq.clear()?;
        self.by_citizen.clear()?;
        self.by_agency.clear()?;
        Ok(())
    }

    pub(crate) fn last_seq(&self) -> Result<Option<u64>, AuditError> {
        Ok(self.by_seq.last()?.and_then(|(key, _)| seq_of_primary(&key)))
    }

    /// The entry `seq`, read back from its segment; `None` if it is not indexed or its segment is gone.
    pub(crate) fn get(&self, seq: u64) -> Result<Option<AuditEntry>, AuditError> {
        let Some(value) = self.by_seq.get(seq.to_be_bytes())? else {
            return Ok(None);
        };
        // An index written before locations were stored holds the whole line.
        if value.first() == Some(&b'{') {
            return AuditEntry::from_line(&value).map(Some).map_err(AuditError::Index);
        }
        let location = Location::from_bytes(&value)
            .ok_or_else(|| AuditError::Index(format!("entry {seq}: bad location")))?;
        let Some(file) = self.files.get(&self.dir, location.segment)? else {
            return Ok(None);
        };
        let mut line = vec![0u8; location.len as usize];
        file.read_exact_at(&mut line, location.offset)?;
        let entry = AuditEntry::from_line(&line).map_err(AuditError::Index)?;
        if entry.seq != seq {
            return Err(AuditError::Index(format!(
                "entry {seq}: the index points at entry {}",
                entry.seq
            )));
        }
        Ok(Some(entry))
    }

    /// Seqs carrying `value` in a secondary tree, newest first, below `before`.
    fn secondary_seqs<'a>(
        tree: &'a Tree,
        value: &str,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<u64, AuditError>> + 'a {
        let start = secondary_prefix(value);
        let end = match before {
            Some(before) => secondary_key(value, before),
            None => {
                let mut end = start.clone();
                end.extend_from_slice(&[0xFF; 9]);
                end
            }
        };
        tree.range(start..end).rev().map(|item| {
            let (key, _) = item?;
            seq_of_secondary(&key).ok_or_else(|| AuditError::Index("malformed index key".into()))
        })
    }

    fn primary_seqs(&self, before: Option<u64>) -> impl Iterator<Item = Result<u64, AuditError>> + '_ {
        let end = before.unwrap_or(u64::MAX);
        self.by_seq.range(..end.to_be_bytes()).rev().map(|item| {
            let (key, _) = item?;
            seq_of_primary(&key).ok_or_else(|| AuditError::Index("malformed index key".into()))
        })
    }

    /// Newest first: the most selective index the filter allows, then the remaining filters.
    pub(crate) fn search(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let seqs: Box<dyn Iterator<Item = Result<u64, AuditError>>> =
            match (&filter.citizen_id, &filter.agency) {
                (Some(citizen), _) => Box::new(Self::secondary_seqs(&self.by_citizen, citizen, before)),
                (None, Some(agency)) => Box::new(Self::secondary_seqs(&self.by_agency, agency, before)),
                (None, None) => Box::new(self.primary_seqs(before)),
            };
        for seq in seqs {
            let Some(entry) = self.get(seq?)? else { continue };
            let time = entry.parsed_time();
            if let (Some(from), Some(time)) = (filter.from, time) {
                // Times never decrease along the chain: nothing older can match.
                if time < from {
                    break;
                }
            }
            if filter.matches(&entry, time) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl AuditFilter {
    pub(crate) fn matches(&self, entry: &AuditEntry, time: Option<DateTime<Utc>>) -> bool {
        let record = &entry.record;
        let in_range = match time {
            Some(time) => self.from.is_none_or(|from| time >= from) && self.to.is_none_or(|to| time < to),
            None => self.from.is_none() && self.to.is_none(),
        };
        in_range
            && self
                .agency
                .as_ref()
                .is_none_or(|a| record.agency.as_ref() == Some(a))
            && self
                .purpose
                .as_ref()
                .is_none_or(|p| record.purpose.as_ref() == Some(p))
            && self
                .citizen_id
                .as_ref()
                .is_none_or(|c| record.citizen_id.as_ref() == Some(c))
            && self.status.is_none_or(|s| record.status == s)
            && self
                .user_id
                .as_ref()
                .is_none_or(|u| record.accountability.as_ref().and_then(|a| a.user_id.as_ref()) == Some(u))
            && self
                .issue
                .as_ref()
                .is_none_or(|i| record.accountability.as_ref().and_then(|a| a.issue.as_ref()) == Some(i))
    }
}
