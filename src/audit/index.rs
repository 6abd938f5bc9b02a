//! Stage: audit — the query index over the trail: by citizen, by agency, and where each entry's line lies.
//!
//! The segment files are the record; the index is derived from them and rebuilt from them whenever it is
//! missing or does not match. It costs the request path a few words per entry: the writer thread adds
//! each committed batch to an in-memory table of the open segment ([`Index::append`]) before the batch's
//! answers are released, so a search sees every answered request, and no thread is woken for it (a sled
//! index kept by its own thread was a quarter of the broker's CPU; BENCHMARKS.md).
//!
//! When a segment is full its table is written once beside it as `seg-<first seq>.idx` (synced, then
//! renamed into place) and dropped from memory. That file holds, per entry, its seq, where its line lies
//! and its keys (rows in file order), then `(key, row)` postings sorted for binary search; all integers
//! big-endian. On open, the open segment's table is rebuilt by reading it (a fraction of a second for a
//! full segment), a sealed segment whose `.idx` is missing or does not describe its current length is
//! re-indexed, and `.idx` files without their segment (pruned) are removed.
//!
//! A key is the first 8 bytes of SHA-256 of `citizen\0<id>` or `agency\0<code>` (0: none). A colliding key
//! only adds a candidate, which the search's filter then drops.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::format::{segment_name, sync_dir, Segment};
use super::{AuditEntry, AuditError, AuditFilter};

const MAGIC: &[u8; 8] = b"LTAIDX01";
const INDEX_SUFFIX: &str = ".idx";
/// magic, first seq, rows, segment length, postings.
const HEADER_LEN: u64 = 8 + 4 * 8;
const ROW_LEN: u64 = 5 * 8;
const POSTING_LEN: u64 = 2 * 8;

/// Candidates looked up per round of a search; their lines are read with no lock held.
const CANDIDATES_PER_ROUND: usize = 256;

/// Where an entry's line lies: the segment (by its first seq), the byte offset and the length, without
/// the newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// What the index keeps of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexItem {
    seq: u64,
    offset: u64,
    len: u64,
    citizen: u64,
    agency: u64,
}

fn key_of(kind: &str, value: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(value.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 0 stands for "none".
    u64::from_be_bytes(first).max(1)
}

fn citizen_key(citizen: &str) -> u64 {
    key_of("citizen", citizen)
}

fn agency_key(agency: &str) -> u64 {
    key_of("agency", agency)
}

impl IndexItem {
    pub(crate) fn new(entry: &AuditEntry, location: Location) -> Self {
        Self {
            seq: entry.seq,
            offset: location.offset,
            len: u64::from(location.len),
            citizen: entry.record.citizen_id.as_deref().map_or(0, citizen_key),
            agency: entry.record.agency.as_deref().map_or(0, agency_key),
        }
    }

    fn matches(&self, key: Option<u64>) -> bool {
        key.is_none_or(|k| self.citizen == k || self.agency == k)
    }

    fn to_bytes(self) -> [u8; ROW_LEN as usize] {
        let mut out = [0u8; ROW_LEN as usize];
        for (i, v) in [self.seq, self.offset, self.len, self.citizen, self.agency]
            .into_iter()
            .enumerate()
        {
            out[i * 8..(i + 1) * 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let [seq, offset, len, citizen, agency] = words(bytes);
        Self {
            seq,
            offset,
            len,
            citizen,
            agency,
        }
    }

    fn location(&self, segment: u64) -> Option<Location> {
        Some(Location {
            segment,
            offset: self.offset,
            len: u32::try_from(self.len).ok()?,
        })
    }
}

/// One segment's part of the index.
enum Table {
    /// The open segment (or a sealed one whose `.idx` could not be written): rows in seq order.
    Memory(Vec<IndexItem>),
    /// Written to its `.idx` file.
    Sealed { rows: u64, postings: u64 },
}

pub(crate) struct Index {
    /// The trail's folder, where the segments and their `.idx` files lie.
    dir: PathBuf,
    /// The first seq of the chain (what pruning left); older lines are never answered.
    base: u64,
    /// By the first seq of each segment.
    tables: RwLock<BTreeMap<u64, Table>>,
    files: OpenFiles,
}

/// The `.idx` file beside a segment file.
pub(crate) fn index_path_of(segment: &Path) -> PathBuf {
    let mut path = segment.as_os_str().to_owned();
    path.push(INDEX_SUFFIX);
    PathBuf::from(path)
}

fn index_name(first: u64) -> String {
    let mut name = segment_name(first);
    name.push_str(INDEX_SUFFIX);
    name
}

/// Segment and `.idx` files kept open for reads, by name; older ones are reopened when needed.
#[derive(Default)]
struct OpenFiles {
    open: Mutex<HashMap<String, Arc<File>>>,
}

/// Files kept open for reads.
const OPEN_FILES: usize = 32;

impl OpenFiles {
    /// The file, or `None` if it is gone (pruned).
    fn get(&self, dir: &Path, name: String) -> Result<Option<Arc<File>>, AuditError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = open.get(&name) {
            return Ok(Some(file.clone()));
        }
        let file = match File::open(dir.join(&name)) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(name, file.clone());
        Ok(Some(file))
    }
}

fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, AuditError> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| AuditError::Index(e.to_string()))?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn corrupt_index(first: u64) -> AuditError {
    AuditError::Index(format!(
        "{} does not match its segment; delete it and restart to rebuild it",
        index_name(first)
    ))
}

/// Big-endian `u64`s, one per 8 bytes (a short tail reads as zeros).
fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    std::array::from_fn(|i| {
        let mut word = [0u8; 8];
        if let Some(b) = bytes.get(i * 8..(i + 1) * 8) {
            word.copy_from_slice(b);
        }
        u64::from_be_bytes(word)
    })
}

/// The rows of a segment, read from its lines.
fn rows_of(path: &Path) -> Result<Vec<IndexItem>, AuditError> {
    let contents = Segment::read(path)?;
    let mut rows = Vec::new();
    for (offset, line) in contents.lines_with_offsets() {
        let entry = AuditEntry::from_line(line).map_err(AuditError::Corrupt)?;
        let len = u32::try_from(line.len()).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        rows.push(IndexItem::new(
            &entry,
            Location {
                segment: 0,
                offset,
                len,
            },
        ));
    }
    Ok(rows)
}

/// The `.idx` header, if the file describes the segment `first` of `segment_len` bytes.
fn sealed_header(dir: &Path, first: u64, segment_len: u64) -> Option<(u64, u64)> {
    let file = File::open(dir.join(index_name(first))).ok()?;
    let file_len = file.metadata().ok()?.len();
    let header = read_at(&file, 0, HEADER_LEN).ok()?;
    let [seq, rows, len, postings] = words(&header[8..]);
    let expected_len = HEADER_LEN + rows.checked_mul(ROW_LEN)? + postings.checked_mul(POSTING_LEN)?;
    (&header[..8] == MAGIC && seq == first && len == segment_len && file_len == expected_len)
        .then_some((rows, postings))
}

/// Write the `.idx` of segment `first` (synced, then renamed into place); returns its sizes.
fn write_sealed(dir: &Path, first: u64, segment_len: u64, rows: &[IndexItem]) -> Result<Table, AuditError> {
    let mut postings: Vec<(u64, u64)> = Vec::with_capacity(rows.len() * 2);
    for (i, row) in rows.iter().enumerate() {
        for key in [row.citizen, row.agency] {
            if key != 0 {
                postings.push((key, i as u64));
            }
        }
    }
    postings.sort_unstable();
    let mut out = Vec::with_capacity(
        (HEADER_LEN + rows.len() as u64 * ROW_LEN + postings.len() as u64 * POSTING_LEN) as usize,
    );
    out.extend_from_slice(MAGIC);
    for word in [first, rows.len() as u64, segment_len, postings.len() as u64] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    for row in rows {
        out.extend_from_slice(&row.to_bytes());
    }
    for (key, row) in &postings {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&row.to_be_bytes());
    }
    let name = index_name(first);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&out)?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(&name))?;
    sync_dir(dir)?;
    Ok(Table::Sealed {
        rows: rows.len() as u64,
        postings: postings.len() as u64,
    })
}

/// A sealed table's file, read a few records at a time.
struct SealedFile<'a> {
    file: &'a File,
    rows: u64,
    postings: u64,
}

impl SealedFile<'_> {
    fn row(&self, i: u64) -> Result<IndexItem, AuditError> {
        let bytes = read_at(self.file, HEADER_LEN + i * ROW_LEN, ROW_LEN)?;
        Ok(IndexItem::from_bytes(&bytes))
    }

    fn posting(&self, i: u64) -> Result<(u64, u64), AuditError> {
        let bytes = read_at(
            self.file,
            HEADER_LEN + self.rows * ROW_LEN + i * POSTING_LEN,
            POSTING_LEN,
        )?;
        let [key, row] = words(&bytes);
        Ok((key, row))
    }

    /// The number of rows with seq below `below` (rows are in seq order).
    fn rows_below(&self, below: u64) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (0, self.rows);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.row(mid)?.seq < below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The first posting at or after `(key, row)`.
    fn postings_from(&self, key: u64, row: u64) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (0, self.postings);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.posting(mid)? < (key, row) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Rows matching `key` with seq below `below`, newest first, at most `max`.
    fn candidates(&self, key: Option<u64>, below: u64, max: usize) -> Result<Vec<IndexItem>, AuditError> {
        let end = self.rows_below(below)?;
        let mut out = Vec::new();
        match key {
            None => {
                let start = end.saturating_sub(max as u64);
                let bytes = read_at(self.file, HEADER_LEN + start * ROW_LEN, (end - start) * ROW_LEN)?;
                out.extend(
                    bytes
                        .chunks_exact(ROW_LEN as usize)
                        .rev()
                        .map(IndexItem::from_bytes),
                );
            }
            Some(key) => {
                let mut p = self.postings_from(key, end)?;
                while p > 0 && out.len() < max {
                    p -= 1;
                    let (k, row) = self.posting(p)?;
                    if k != key {
                        break;
                    }
                    out.push(self.row(row)?);
                }
            }
        }
        Ok(out)
    }
}

impl Index {
    /// The index of the segments in `dir` (the last one is the open segment), from the `.idx` files that
    /// match and the lines of the rest.
    pub(crate) fn open(dir: &Path, segments: &[(u64, PathBuf)], base: u64) -> Result<Self, AuditError> {
        remove_stale_files(dir, segments)?;
        let mut tables = BTreeMap::new();
        for (i, (first, path)) in segments.iter().enumerate() {
            let open_segment = i + 1 == segments.len();
            if !open_segment {
                let segment_len = fs::metadata(path)?.len();
                if let Some((rows, postings)) = sealed_header(dir, *first, segment_len) {
                    tables.insert(*first, Table::Sealed { rows, postings });
                    continue;
                }
                let rows = rows_of(path)?;
                let table = write_sealed(dir, *first, segment_len, &rows).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, segment = *first, "audit index file not written; kept in memory");
                    Table::Memory(rows)
                });
                tables.insert(*first, table);
            } else {
                tables.insert(*first, Table::Memory(rows_of(path)?));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            base,
            tables: RwLock::new(tables),
            files: OpenFiles::default(),
        })
    }

    /// Add a committed batch of segment `segment` (called by the writer before the answers leave).
    pub(crate) fn append(&self, segment: u64, items: Vec<IndexItem>) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        match tables.entry(segment).or_insert_with(|| Table::Memory(Vec::new())) {
            Table::Memory(rows) => rows.extend(items),
            Table::Sealed { .. } => {
                tracing::error!(
                    segment,
                    "audit index: append to a sealed segment; it is rebuilt at next start"
                )
            }
        }
    }

    /// The segment `first` is full and `segment_len` bytes long: write its table to its `.idx` file and
    /// drop it from memory (kept in memory if the file cannot be written).
    pub(crate) fn seal(&self, first: u64, segment_len: u64) {
        let rows = match self.tables.read().unwrap_or_else(|p| p.into_inner()).get(&first) {
            Some(Table::Memory(rows)) => rows.clone(),
            _ => return,
        };
        match write_sealed(&self.dir, first, segment_len, &rows) {
            Ok(table) => {
                self.tables
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(first, table);
            }
            Err(e) => {
                tracing::warn!(error = %e, segment = first, "audit index file not written; kept in memory")
            }
        }
    }

    /// Up to `max` candidates for `key` (any entry if `None`) with seq below `below`, newest first.
    fn candidates(
        &self,
        key: Option<u64>,
        below: u64,
        max: usize,
    ) -> Result<Vec<(IndexItem, u64)>, AuditError> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (&first, table) in tables.range(..below).rev() {
            let wanted = max - out.len();
            match table {
                Table::Memory(rows) => {
                    let end = rows.partition_point(|r| r.seq < below);
                    out.extend(
                        rows[..end]
                            .iter()
                            .rev()
                            .filter(|r| r.matches(key))
                            .take(wanted)
                            .map(|r| (*r, first)),
                    );
                }
                &Table::Sealed { rows, postings } => {
                    let Some(file) = self.files.get(&self.dir, index_name(first))? else {
                        continue;
                    };
                    let sealed = SealedFile {
                        file: &file,
                        rows,
                        postings,
                    };
                    let found = sealed.candidates(key, below, wanted)?;
                    out.extend(found.into_iter().map(|r| (r, first)));
                }
            }
            if out.len() >= max {
                break;
            }
        }
        out.retain(|(row, _)| row.seq >= self.base);
        Ok(out)
    }

    /// The entry a row points at, read back from its segment; `None` if the segment is gone (pruned).
    fn entry(&self, row: &IndexItem, segment: u64) -> Result<Option<AuditEntry>, AuditError> {
        let location = row.location(segment).ok_or_else(|| corrupt_index(segment))?;
        let Some(file) = self.files.get(&self.dir, segment_name(segment))? else {
            return Ok(None);
        };
        let line = read_at(&file, location.offset, u64::from(location.len))?;
        let entry = AuditEntry::from_line(&line).map_err(|_| corrupt_index(segment))?;
        if entry.seq != row.seq {
            return Err(corrupt_index(segment));
        }
        Ok(Some(entry))
    }

    /// Newest first: by citizen or agency key if the filter names one, then the remaining filters.
    pub(crate) fn search(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        let key = match (&filter.citizen_id, &filter.agency) {
            (Some(citizen), _) => Some(citizen_key(citizen)),
            (None, Some(agency)) => Some(agency_key(agency)),
            (None, None) => None,
        };
        let mut below = before.unwrap_or(u64::MAX);
        while out.len() < limit {
            let round = self.candidates(key, below, CANDIDATES_PER_ROUND)?;
            let Some((last, _)) = round.last() else {
                break;
            };
            below = last.seq;
            for (row, segment) in round {
                let Some(entry) = self.entry(&row, segment)? else {
                    continue;
                };
                let time = entry.parsed_time();
                if let (Some(from), Some(time)) = (filter.from, time) {
                    // Times never decrease along the chain: nothing older can match.
                    if time < from {
                        return Ok(out);
                    }
                }
                if filter.matches(&entry, time) {
                    out.push(entry);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Remove `.idx` files whose segment is gone (pruned) and temporary files of an interrupted write.
fn remove_stale_files(dir: &Path, segments: &[(u64, PathBuf)]) -> Result<(), AuditError> {
    let wanted: std::collections::HashSet<String> =
        segments.iter().map(|(first, _)| index_name(*first)).collect();
    for item in fs::read_dir(dir)? {
        let name = item?.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = name.ends_with(".idx.tmp") || (name.ends_with(INDEX_SUFFIX) && !wanted.contains(name));
        if stale {
            fs::remove_file(dir.join(name))?;
        }
    }
    Ok(())
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
