//! Stage: audit — the sled query index over the trail: by seq, by citizen, by agency.
//!
//! The segment files are the record; this index is derived and can always be rebuilt from them. It is
//! written after the entries are synced and never flushed per entry.

use chrono::{DateTime, Utc};
use sled::Tree;

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

#[derive(Clone)]
pub(crate) struct Index {
    by_seq: Tree,
    by_citizen: Tree,
    by_agency: Tree,
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
    pub(crate) fn open(db: &sled::Db) -> Result<Self, AuditError> {
        Ok(Self {
            by_seq: db.open_tree(BY_SEQ)?,
            by_citizen: db.open_tree(BY_CITIZEN)?,
            by_agency: db.open_tree(BY_AGENCY)?,
        })
    }

    /// Index entries (with their stored lines). Secondary keys go first so that an entry present in
    /// `by_seq` is fully indexed: recovery resumes after the last seq in `by_seq`.
    pub(crate) fn insert(&self, entries: &[(AuditEntry, String)]) -> Result<(), AuditError> {
        let mut citizens = sled::Batch::default();
        let mut agencies = sled::Batch::default();
        let mut seqs = sled::Batch::default();
        for (entry, line) in entries {
            if let Some(citizen) = &entry.record.citizen_id {
                citizens.insert(secondary_key(citizen, entry.seq), &[] as &[u8]);
            }
            if let Some(agency) = &entry.record.agency {
                agencies.insert(secondary_key(agency, entry.seq), &[] as &[u8]);
            }
            seqs.insert(&entry.seq.to_be_bytes(), line.as_bytes());
        }
        self.by_citizen.apply_batch(citizens)?;
        self.by_agency.apply_batch(agencies)?;
        self.by_seq.apply_batch(seqs)?;
        Ok(())
    }

    fn remove(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        self.by_seq.remove(entry.seq.to_be_bytes())?;
        if let Some(citizen) = &entry.record.citizen_id {
            self.by_citizen.remove(secondary_key(citizen, entry.seq))?;
        }
        if let Some(agency) = &entry.record.agency {
            self.by_agency.remove(secondary_key(agency, entry.seq))?;
        }
        Ok(())
    }

    /// Drop indexed entries outside `[first, last]` (pruned, or cut from the chain).
    pub(crate) fn retain_range(&self, first: u64, last: u64) -> Result<(), AuditError> {
        let mut doomed = Vec::new();
        for item in self
            .by_seq
            .range(..first.to_be_bytes())
            .chain(self.by_seq.range(last.saturating_add(1).to_be_bytes()..))
        {
            let (key, value) = item?;
            match AuditEntry::from_line(&value) {
                Ok(entry) => doomed.push(entry),
                Err(_) => {
                    self.by_seq.remove(key)?;
                }
            }
        }
        for entry in &doomed {
            self.remove(entry)?;
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

    pub(crate) fn get(&self, seq: u64) -> Result<Option<AuditEntry>, AuditError> {
        match self.by_seq.get(seq.to_be_bytes())? {
            Some(value) => AuditEntry::from_line(&value).map(Some).map_err(AuditError::Index),
            None => Ok(None),
        }
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
    }
}
