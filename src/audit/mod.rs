//! Stage: audit — the append-only, hash-chained, tamper-evident audit trail.
//!
//! Every request on the agency listener (served, refused or failed) and every admin change appends one
//! [`AuditEntry`], durable (`fdatasync`) before the response is written. sled's flush is not enough for that
//! (it uses `sync_file_range`; sled issues #1351, #1452), so the chain lives in append-only segment files
//! synced here, with group commit across concurrent requests; the query index (`index.rs`) is derived from
//! them: an in-memory table for the open segment, an `.idx` file beside each full one.
//!
//! Layout of the trail's folder:
//!
//! | file | content |
//! |---|---|
//! | `seg-<first seq, 20 digits>.jsonl` | one entry per line, in seq order; names sort by first seq |
//! | `seg-<first seq, 20 digits>.jsonl.idx` | the query index of a full segment (derived; rebuilt if missing) |
//! | `checkpoints.jsonl` | signed heads `{"seq", "hash", "time", "signature"}` |
//! | `checkpoint.key`, `checkpoint.pub` | Ed25519 signing key (PKCS#8, mode 0600) and its public key (hex) |
//! | `base.json` | after pruning: `{"seq", "prev_hash"}` of the first entry left |
//!
//! The hash of each entry is described on [`AuditEntry`]. A checkpoint signs
//! `"lienthong-audit-checkpoint-v1\n{seq}\n{hash}\n{time}"`.

mod format;
mod index;
mod offline;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

pub use format::{AuditEntry, AuditRecord, Billed, GENESIS_HASH};
pub use offline::{
    archive_and_prune, check_witness, default_key_dir, export, sign_base, verify_dir, VerifyFailure,
    VerifyReport,
};

use format::{
    list_segments, load_or_create_body_key, load_or_create_key, Base, Checkpoints, Segment, CHECKPOINTS_FILE,
    MAX_SEQ,
};
use index::Index;
use writer::{Cmd, OpenSegment, Shared, Writer, MAX_BATCH};

pub(crate) use index::index_path_of;

/// The seam the pipeline's audit step writes through: the embedded, hash-chained segment files
/// ([`AuditLog`]) today; a PostgreSQL table (or a remote trail) can implement it beside them without
/// touching the pipeline. The operator's side (search, verify, checkpoints) stays on [`AuditLog`].
pub trait AuditSink: Send + Sync {
    /// Append `record`; the future resolves once the entry is durable.
    fn append_entry(&self, record: AuditRecord) -> AuditFuture<'_>;
}

/// The future of [`AuditSink::append_entry`], boxed so the trait stays object-safe.
pub type AuditFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AuditEntry, AuditError>> + Send + 'a>>;

impl AuditSink for AuditLog {
    fn append_entry(&self, record: AuditRecord) -> AuditFuture<'_> {
        Box::pin(self.append(record))
    }
}

/// Why the trail could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The entry could not be made durable (disk full, read-only, I/O error, writer gone). The broker
    /// answers 503 `audit_unavailable` and does not serve the request.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// The query index failed.
    #[error("audit index: {0}")]
    Index(String),
    /// The files are not what this module writes; run `audit verify`.
    #[error("audit trail corrupt: {0}")]
    Corrupt(String),
    /// Reading or preparing the trail failed.
    #[error("audit trail I/O: {0}")]
    Io(String),
}

impl From<std::io::Error> for AuditError {
    fn from(e: std::io::Error) -> Self {
        AuditError::Io(e.to_string())
    }
}

impl From<sled::Error> for AuditError {
    fn from(e: sled::Error) -> Self {
        AuditError::Index(e.to_string())
    }
}

impl From<AuditError> for crate::error::ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Unavailable(cause) => {
                tracing::error!(%cause, "audit trail unavailable");
                crate::error::ApiError::new(
                    crate::error::ErrorCode::AuditUnavailable,
                    "the audit trail cannot record this request; retry later",
                )
            }
            other => crate::error::ApiError::internal(other),
        }
    }
}

/// Admin search filters; `None` matches anything. Times are a half-open range `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Agency code.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// HTTP status answered.
    pub status: Option<u16>,
    /// The citizen concerned.
    pub citizen_id: Option<String>,
    /// Entries at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Entries strictly before this time.
    pub to: Option<DateTime<Utc>>,
    /// The official (end user) named in the entry's accountability.
    pub user_id: Option<String>,
    /// The case or issue reference named in the entry's accountability.
    pub issue: Option<String>,
}

/// [`AuditOptions::commit_delay`] by default: off. 200 µs (a fraction of one `fdatasync`) gained nothing
/// on the disk measured, neither in CPU per answer nor in throughput (`BENCHMARKS.md`), so no request waits
/// for it unless an operator's disk shows a gain.
pub const DEFAULT_COMMIT_DELAY: std::time::Duration = std::time::Duration::ZERO;

/// Tuning of [`AuditLog::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Sign a checkpoint every this many entries (0: only when asked).
    pub checkpoint_every: u64,
    /// Start a new segment once the current one reaches this size…
    pub segment_max_bytes: u64,
    /// …or this many entries. Checked between batches, so a segment may overshoot by one batch.
    pub segment_max_entries: u64,
    /// Dates the entries (the broker's clock, so a test can move time; never backwards along the chain).
    pub clock: crate::clock::Clock,
    /// Where the signing key and the body-hash key live, apart from the trail (`None`: in the trail's
    /// own folder, as before issue 20; only unit tests do that).
    pub key_dir: Option<PathBuf>,
    /// A file outside the data dir that every signed checkpoint is also appended to; at open, a trail
    /// behind (or diverging from) what it holds is refused.
    pub witness: Option<PathBuf>,
    /// Group commit under concurrency: when the last batch held several appends and fewer have arrived
    /// yet, wait up to this long for them before the `fdatasync`, so one sync answers more requests
    /// (fewer syncs per answer, at most this much added latency; zero: never wait).
    pub commit_delay: std::time::Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            segment_max_bytes: 64 << 20,
            segment_max_entries: 100_000,
            clock: crate::clock::Clock::default(),
            key_dir: None,
            witness: None,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

/// The open trail. Cheap to share (`Arc<AuditLog>`); the writer thread stops once every handle is dropped,
/// after answering what was queued.
pub struct AuditLog {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    /// Up to date with every answered append: the writer adds each batch before answering it.
    index: Arc<Index>,
    /// Joined by [`AuditLog::close`], so that a reopen knows the thread's files are closed.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The key of `request_sha256` (HMAC-SHA256), kept like the signing key.
    body_key: ring::hmac::Key,
    /// The checkpoint signing key, also used for statements made about the trail (a closed month's bill).
    key: Arc<ring::signature::Ed25519KeyPair>,
}

/// A statement signed with the trail's key: Ed25519 over `"{domain}\n{message}"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedStatement {
    /// The domain the signature is separated by, e.g. `lienthong-billing-close-v1`.
    pub domain: String,
    /// Ed25519 signature, hex.
    pub signature: String,
    /// The public key (as in the trail's `checkpoint.pub`), hex.
    pub public_key: String,
}

/// The sled trees older versions kept the index in; dropped on open (the `.idx` files replace them).
const OLD_INDEX_TREES: [&str; 3] = ["audit/by_seq", "audit/by_citizen", "audit/by_agency"];

impl AuditLog {
    /// Open (or create) the trail in `dir`. Cuts a torn last line (a crash mid-write), loads the index
    /// (re-indexing the open segment and any full one whose `.idx` is missing or stale), creates the
    /// checkpoint signing key on first open, and starts the writer thread. `db` (the broker's sled
    /// database) only loses the index trees older versions kept there.
    pub fn open(dir: &Path, index: sled::Db, checkpoint_every: u64) -> Result<Arc<Self>, AuditError> {
        Self::open_with(
            dir,
            index,
            AuditOptions {
                checkpoint_every,
                ..AuditOptions::default()
            },
        )
    }

    /// [`AuditLog::open`] with every knob.
    pub fn open_with(dir: &Path, db: sled::Db, options: AuditOptions) -> Result<Arc<Self>, AuditError> {
        fs::create_dir_all(dir)?;
        let key_dir = options.key_dir.clone().unwrap_or_else(|| dir.to_path_buf());
        let key = Arc::new(load_or_create_key(&key_dir, dir)?);
        let body_key = load_or_create_body_key(&key_dir)?;
        let base = Base::read(dir)?;
        base.check(ring::signature::KeyPair::public_key(key.as_ref()).as_ref())
            .map_err(|e| AuditError::Corrupt(format!("{e}; run audit verify")))?;
        let segments = list_segments(dir)?;

        let mut head = (base.seq - 1, base.prev_hash.clone());
        let mut last_time = DateTime::<Utc>::UNIX_EPOCH;
        let mut segment = None;
        for (i, (first, path)) in segments.iter().enumerate().rev() {
            let contents = Segment::read(path)?;
            if i + 1 == segments.len() {
                let file = OpenOptions::new().write(true).open(path)?;
                let mut open = OpenSegment {
                    first: *first,
                    file,
                    len: contents.complete_len(),
                    allocated: contents.file_len(),
                    entries: contents.lines().count() as u64,
                };
                if contents.torn() {
                    tracing::warn!(segment = %path.display(), "cutting a torn last audit line");
                    open.cut_back()?;
                }
                segment = Some(open);
            }
            let Some(line) = contents.last_line() else {
                continue;
            };
            let entry = AuditEntry::from_line(line).map_err(AuditError::Corrupt)?;
            if entry.seq >= base.seq {
                if entry.seq > MAX_SEQ || entry.compute_hash()? != entry.hash {
                    return Err(AuditError::Corrupt(format!(
                        "entry {}: hash mismatch; run audit verify",
                        entry.seq
                    )));
                }
                last_time = entry.parsed_time().unwrap_or(last_time);
                head = (entry.seq, entry.hash);
            }
            break;
        }

        let checkpoints = Checkpoints::read(dir)?;
        let checkpoints_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CHECKPOINTS_FILE))?;
        if checkpoints.torn {
            checkpoints_file.set_len(checkpoints.complete_len)?;
            checkpoints_file.sync_data()?;
        }
        let last_checkpoint_seq = checkpoints.list.iter().map(|c| c.seq).max().unwrap_or(0);
        if last_checkpoint_seq > head.0 {
            return Err(AuditError::Corrupt(format!(
                "a signed checkpoint says the trail reached seq {last_checkpoint_seq}, it ends at {}; \
                 run audit verify",
                head.0
            )));
        }

        let witness = match &options.witness {
            Some(path) => Some(open_witness(path, &key, dir, &base, &head)?),
            None => None,
        };

        for tree in OLD_INDEX_TREES {
            db.drop_tree(tree)?;
        }
        let index = Arc::new(Index::open(dir, &segments, base.seq)?);
        let shared = Arc::new(Shared {
            head: Mutex::new(head.clone()),
            fail_writes: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
        });
        let writer = Writer {
            dir: dir.to_path_buf(),
            options,
            segment,
            needs_repair: false,
            seq: head.0,
            head_hash: head.1,
            last_time,
            key: Arc::clone(&key),
            checkpoints: checkpoints_file,
            checkpoints_len: checkpoints.complete_len,
            checkpoints_need_repair: false,
            last_checkpoint_seq,
            witness,
            shared: Arc::clone(&shared),
            index: Arc::clone(&index),
            batch_buf: Vec::new(),
        };
        let (tx, rx) = mpsc::channel(2 * MAX_BATCH);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Self {
            tx,
            shared,
            index,
            writer: Mutex::new(Some(writer)),
            key,
            body_key,
        }))
    }

    /// Stop the writer thread once it has answered what was queued, and wait for it: on return the
    /// trail's files are closed. Needs the last handle; otherwise the handle is given back. Blocking.
    pub fn close(self: Arc<Self>) -> Result<(), Arc<Self>> {
        let Self {
            tx, index, writer, ..
        } = Arc::try_unwrap(self)?;
        drop(tx);
        drop(index);
        let writer = writer.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = writer {
            if thread.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
        Ok(())
    }

    /// Append `record`; returns once the entry is on disk (`fdatasync`). Concurrent calls share one sync.
    /// On failure nothing of the entry remains and later appends work again once the disk does.
    pub async fn append(&self, record: AuditRecord) -> Result<AuditEntry, AuditError> {
        let (reply, answer) = oneshot::channel();
        let gone = || AuditError::Unavailable("the audit writer has stopped".into());
        self.tx
            .send(Cmd::Append(record, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The `request_sha256` of a body: HMAC-SHA256 under the body-hash key, hex. Unkeyed, the hash of a
    /// short body (an SMS look-up: a phone number and an ID) could be reversed by trying every candidate.
    pub fn body_hash(&self, body: &[u8]) -> String {
        hex::encode(ring::hmac::sign(&self.body_key, body).as_ref())
    }

    /// Sign `message` with the checkpoint key, separated by `domain` so that no statement can pass for a
    /// checkpoint or for another kind of statement.
    pub fn sign_statement(&self, domain: &str, message: &[u8]) -> SignedStatement {
        use ring::signature::KeyPair;
        let mut signed = format!("{domain}\n").into_bytes();
        signed.extend_from_slice(message);
        SignedStatement {
            domain: domain.to_string(),
            signature: hex::encode(self.key.sign(&signed).as_ref()),
            public_key: hex::encode(self.key.public_key().as_ref()),
        }
    }

    /// `(count, head hash)`: the seq of the last durable entry and its hash.
    pub fn head(&self) -> (u64, String) {
        self.shared.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Entries for one citizen, newest first, with seq below `before_seq`, at most `limit`.
    pub async fn for_citizen(
        &self,
        citizen_id: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let filter = AuditFilter {
            citizen_id: Some(citizen_id.to_owned()),
            ..AuditFilter::default()
        };
        self.search(&filter, before_seq, limit).await
    }

    /// Admin search, newest first, with seq below `before_seq`, at most `limit`.
    pub async fn search(
        &self,
        filter: &AuditFilter,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        self.index.search(filter, before_seq, limit)
    }

    /// Sign a checkpoint of the head now (on shutdown; the writer also does it every `checkpoint_every`
    /// entries). Covers every append queued before this call. Does nothing if the head is already signed.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        let gone = || AuditError::Unavailable("the audit writer has stopped".into());
        self.tx.send(Cmd::Checkpoint(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Chaos hook for tests: while on, every append (and checkpoint) fails as if the disk were full.
    pub fn set_fail_writes(&self, on: bool) {
        self.shared.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Segment `fdatasync` calls so far (fewer than appends when group commit works).
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

/// The last signed checkpoint of the trail in `dir` (`null` if none yet), as the witness line it is.
pub fn latest_checkpoint(dir: &Path) -> Result<serde_json::Value, AuditError> {
    let checkpoints = Checkpoints::read(dir)?;
    let latest = checkpoints.list.into_iter().max_by_key(|c| c.seq);
    serde_json::to_value(latest).map_err(|e| AuditError::Corrupt(e.to_string()))
}

/// Open the witness for appending, after checking the trail against it: every checkpoint it holds must
/// carry this trail's signature, and the trail must reach it with the same hash (a truncated or rewritten
/// tail is refused, even when `checkpoints.jsonl` went with it).
fn open_witness(
    path: &Path,
    key: &ring::signature::Ed25519KeyPair,
    dir: &Path,
    base: &Base,
    head: &(u64, String),
) -> Result<std::fs::File, AuditError> {
    use ring::signature::KeyPair;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let witnessed = Checkpoints::read_file(path)?;
    if let Some(last) = witnessed.list.iter().max_by_key(|c| c.seq) {
        if !last.signature_valid(key.public_key().as_ref()) {
            return Err(AuditError::Corrupt(format!(
                "witness {}: its last checkpoint (seq {}) is not signed by this trail's key",
                path.display(),
                last.seq
            )));
        }
        if last.seq > head.0 {
            return Err(AuditError::Corrupt(format!(
                "the trail ends at seq {} but the witness {} saw it signed at seq {}: entries were cut \
                 from its end; refusing to start (restore the trail, then run audit verify --witness; a \
                 deliberately fresh data dir needs its old witness moved away)",
                head.0,
                path.display(),
                last.seq
            )));
        }
        let at = offline::hash_at(dir, base, last.seq).map_err(|f| AuditError::Corrupt(f.to_string()))?;
        if at.as_deref().is_some_and(|h| h != last.hash) {
            return Err(AuditError::Corrupt(format!(
                "the trail's entry {} differs from what the witness {} saw signed: the trail was \
                 rewritten; refusing to start",
                last.seq,
                path.display()
            )));
        }
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    if witnessed.torn {
        file.set_len(witnessed.complete_len)?;
    }
    Ok(file)
}
