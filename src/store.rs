//! Stage: store. Citizen records keyed by the 12-digit ID, behind the [`CitizenStore`] seam so that an
//! upstream provider system (the population database itself, reached over the network) can replace the
//! embedded sled store without touching the pipeline.
//!
//! Writes are atomic per citizen: a read-modify-write is retried with compare-and-swap, so a crash or a
//! concurrent writer never leaves half an update; the write is flushed before it is acknowledged.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use crate::error::{ApiError, ErrorCode};

/// A boxed future, so the trait stays object-safe (`Arc<dyn CitizenStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// A change to one record: given the current record, change it in place and say what happened, or
/// refuse with an error (nothing is written then).
pub type Change<'a, T> = Box<dyn FnMut(&mut Value) -> Result<T, ApiError> + Send + 'a>;

/// Where citizen records live.
pub trait CitizenStore: Send + Sync {
    /// The stored record (without derived fields), or `None`.
    fn get<'a>(&'a self, citizen_id: &'a str) -> StoreFuture<'a, Option<Value>>;

    /// The stored record with only the top-level fields named in `keep`, or `None`. A read needs only
    /// what it releases; a store may skip decoding the rest (the default reads the whole record).
    fn get_fields<'a>(&'a self, citizen_id: &'a str, keep: &'a [&'a str]) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let mut record = self.get(citizen_id).await?;
            if let Some(Value::Object(map)) = &mut record {
                map.retain(|name, _| keep.contains(&name.as_str()));
            }
            Ok(record)
        })
    }

    /// Apply `change` atomically to an existing record and make it durable; 404 `citizen_not_found` if
    /// there is none. `change` may run more than once under contention: it must be a pure function of
    /// the record it is given.
    fn update<'a>(
        &'a self,
        citizen_id: &'a str,
        change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome>;

    /// Append `entry` to the history list `list` of an existing record, idempotent on the entry's
    /// `source_record_id` (`id`): a replay of the same entry is [`UpdateOutcome::Unchanged`], a different
    /// entry under the same id 409 `idempotency_conflict`; 404 `citizen_not_found` when there is no
    /// record. `validate` checks the whole record before anything is written (the canonical schema).
    /// This is what a canonical write is, so a store that cannot run a closure over the record (an
    /// upstream provider system reached over the network) implements it directly; the default goes
    /// through [`CitizenStore::update`].
    fn append_history<'a>(
        &'a self,
        citizen_id: &'a str,
        list: &'static str,
        id: &'a str,
        entry: Value,
        validate: Validate<'a>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        let change = Box::new(move |record: &mut Value| append_to(record, list, id, &entry, validate));
        self.update(citizen_id, change)
    }

    /// Insert or replace whole records (seeding and imports), durable on return.
    fn put_many<'a>(&'a self, records: Vec<(String, Value)>) -> StoreFuture<'a, ()>;

    /// How many records there are (0 when the store cannot tell: a remote provider's). Called at start
    /// (the summary, `demo`): a store should keep the number rather than read every record for it (sled
    /// keeps it beside its records).
    fn count(&self) -> usize;

    /// Whether there is no record at all. A store that can tell without counting says so.
    fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The store's own health for `/healthz`: `Ok(None)` for the embedded store, details of a remote
    /// one, or the error `/healthz` answers while it is unreachable.
    fn health(&self) -> Result<Option<Value>, ApiError> {
        Ok(None)
    }

    /// The records live in a system the broker does not own (an upstream provider): the broker's audit
    /// trail cannot be checked against them at start-up, and nothing is seeded through the broker.
    fn is_remote(&self) -> bool {
        false
    }
}

/// A check of a whole record before it is written (the canonical schema).
pub type Validate<'a> = &'a (dyn Fn(&Value) -> Result<(), ApiError> + Send + Sync);

/// Append `entry` to `record[list]` unless an entry with the same `source_record_id` is there already
/// (the same entry: unchanged; a different one: 409 `idempotency_conflict`).
fn append_to(
    record: &mut Value,
    list: &str,
    source_id: &str,
    entry: &Value,
    validate: Validate<'_>,
) -> Result<UpdateOutcome, ApiError> {
    let items = record
        .as_object_mut()
        .ok_or_else(|| ApiError::internal("stored record is not an object"))?
        .entry(list)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| ApiError::internal("stored history is not a list"))?;
    if let Some(existing) = items.iter().find(|e| e["source_record_id"] == source_id) {
        return if existing == entry {
            Ok(UpdateOutcome::Unchanged(existing.clone()))
        } else {
            Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                format!("source_record_id {source_id} was already recorded with different content"),
            ))
        };
    }
    items.push(entry.clone());
    validate(record)?;
    Ok(UpdateOutcome::Written(entry.clone()))
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// The record changed; the value is what was added or changed.
    Written(Value),
    /// Nothing to do (an idempotent replay); the value is what was already there.
    Unchanged(Value),
}

/// 503 `store_unavailable` for a failure of the embedded database (citizen store, registry, quota,
/// checkpoints). The cause — an OS error, a path — goes to the log, in the request's span, never to the
/// client, as [`ApiError::internal`] does.
pub fn unavailable(store: &'static str, cause: impl std::fmt::Display) -> ApiError {
    tracing::error!(store, %cause, "store failed");
    ApiError::new(ErrorCode::StoreUnavailable, UNAVAILABLE)
}

/// The one message a client gets for `store_unavailable`.
pub const UNAVAILABLE: &str = "the citizen store is unavailable; retry later";

fn store_error(e: impl std::fmt::Display) -> ApiError {
    unavailable("citizens", e)
}

/// A stored record's top-level fields in stored order, each value left undecoded.
struct TopLevel<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The embedded store: one sled tree, JSON values.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// How many records `tree` holds, kept by every write that adds one ([`COUNT_KEY`]): counting the
    /// tree reads every record into sled's cache (at 100,000 citizens, ≈ 90 MiB of resident memory that
    /// stays), and the start-up summary and `demo` want the number.
    meta: sled::Tree,
}

/// The key of the record count in the `citizens_meta` tree (a big-endian `u64`).
const COUNT_KEY: &[u8] = b"count";

fn decode_count(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Make the last writes durable. Not `flush_async`: in sled 0.34 concurrent `flush_async` calls deadlock
/// (spacejam/sled#1308, unfixed in any release) — their jobs fill sled's own I/O thread pool and starve the
/// buffer writes they wait for. A blocking flush on tokio's blocking pool leaves sled's pool free.
/// Every sled write path of the broker (store, registry, checkpoints, shutdown) flushes through here.
pub async fn durable_flush(tree: &sled::Tree) -> Result<(), String> {
    let tree = tree.clone();
    match tokio::task::spawn_blocking(move || tree.flush()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn flush(db: &sled::Db) -> Result<(), ApiError> {
    durable_flush(db).await.map_err(store_error)
}

impl SledStore {
    /// Open the `citizens` tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let tree = db.open_tree("citizens")?;
        let meta = db.open_tree("citizens_meta")?;
        if meta.get(COUNT_KEY)?.is_none() {
            // A data dir from before the count was kept: counted once, here.
            meta.insert(COUNT_KEY, &(tree.len() as u64).to_be_bytes())?;
        }
        Ok(Self {
            db: db.clone(),
            tree,
            meta,
        })
    }
}

impl CitizenStore for SledStore {
    fn get<'a>(&'a self, citizen_id: &'a str) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            match self.tree.get(citizen_id.as_bytes()).map_err(store_error)? {
                Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
                None => Ok(None),
            }
        })
    }

    fn get_fields<'a>(&'a self, citizen_id: &'a str, keep: &'a [&'a str]) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let Some(bytes) = self.tree.get(citizen_id.as_bytes()).map_err(store_error)? else {
                return Ok(None);
            };
            let fields: TopLevel<'_> = serde_json::from_slice(&bytes).map_err(store_error)?;
            let mut record = serde_json::Map::new();
            for (name, raw) in fields.0 {
                if keep.contains(&name.as_str()) {
                    record.insert(name, serde_json::from_str(raw.get()).map_err(store_error)?);
                }
            }
            Ok(Some(Value::Object(record)))
        })
    }

    fn update<'a>(
        &'a self,
        citizen_id: &'a str,
        mut change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        Box::pin(async move {
            loop {
                let Some(old) = self.tree.get(citizen_id.as_bytes()).map_err(store_error)? else {
                    return Err(ApiError::new(
                        ErrorCode::CitizenNotFound,
                        "no citizen with that ID",
                    ));
                };
                let mut record: Value = serde_json::from_slice(&old).map_err(store_error)?;
                let outcome = change(&mut record)?;
                if let UpdateOutcome::Unchanged(_) = outcome {
                    return Ok(outcome);
                }
                let new = serde_json::to_vec(&record).map_err(store_error)?;
                match self
                    .tree
                    .compare_and_swap(citizen_id.as_bytes(), Some(&old), Some(new))
                    .map_err(store_error)?
                {
                    Ok(()) => {
                        flush(&self.db).await?;
                        return Ok(outcome);
                    }
                    // Someone else wrote in between: start again from their version.
                    Err(_) => continue,
                }
            }
        })
    }

    fn put_many<'a>(&'a self, records: Vec<(String, Value)>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut encoded = Vec::with_capacity(records.len());
            for (id, record) in records {
                encoded.push((
                    id,
                    sled::IVec::from(serde_json::to_vec(&record).map_err(store_error)?),
                ));
            }
            // The records and the count change together, or neither does.
            (&self.tree, &self.meta)
                .transaction(|(citizens, meta)| {
                    let mut added = 0;
                    for (id, bytes) in &encoded {
                        if citizens.insert(id.as_bytes(), bytes.clone())?.is_none() {
                            added += 1;
                        }
                    }
                    if added > 0 {
                        let count = meta.get(COUNT_KEY)?.and_then(|b| decode_count(&b)).unwrap_or(0);
                        meta.insert(COUNT_KEY, &(count + added).to_be_bytes())?;
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| store_error(format!("{e:?}")))?;
            flush(&self.db).await?;
            Ok(())
        })
    }

    fn count(&self) -> usize {
        match self
            .meta
            .get(COUNT_KEY)
            .ok()
            .flatten()
            .and_then(|b| decode_count(&b))
        {
            Some(count) => usize::try_from(count).unwrap_or(usize::MAX),
            None => self.tree.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

/// Bytes the start-up probe writes: is the data dir writable at all?
pub const START_PROBE_BYTES: usize = 4096;

/// The probe's file, in the data dir; removed after each probe.
const PROBE_FILE: &str = ".lienthong-probe";

/// Write `bytes` to a file in `dir`, fsync it, remove it: can the broker write there right now?
pub fn probe_data_dir(dir: &std::path::Path, bytes: usize) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &vec![0u8; bytes])?;
        f.sync_all()
    });
    // Whatever happened, leave nothing behind (a partial file on a full disk is removed too).
    let removed = std::fs::remove_file(&path);
    written?;
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A probe failure in words an operator acts on.
pub fn describe_probe_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ReadOnlyFilesystem => format!(
            "the data directory is on a read-only file system ({e}); the broker writes its database \
             and audit trail there"
        ),
        ErrorKind::PermissionDenied => format!("the data directory is not writable by this user ({e})"),
        ErrorKind::StorageFull => format!("no space left for the data directory ({e})"),
        _ => format!("cannot write to the data directory ({e})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_partial_read_keeps_only_the_named_fields_in_stored_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = SledStore::open(&db).unwrap();
        let record = json!({ "citizen_id": "001090000001", "full_name": "Nguyễn Văn An",
            "vaccinations": [{ "date": "2021-09-01", "note": "\"quoted\" \\ {braces}" }],
            "permanent_address": { "province": "Hà Nội" } });
        store
            .put_many(vec![("001090000001".into(), record.clone())])
            .await
            .unwrap();
        let keep = ["permanent_address", "citizen_id", "vaccinations", "not_there"];
        let part = store.get_fields("001090000001", &keep).await.unwrap().unwrap();
        let names: Vec<&String> = part.as_object().unwrap().keys().collect();
        assert_eq!(names, ["citizen_id", "vaccinations", "permanent_address"]);
        assert_eq!(part["vaccinations"], record["vaccinations"]);
        assert_eq!(part["permanent_address"], record["permanent_address"]);
        assert!(store.get_fields("079195000002", &keep).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_count_follows_every_write_without_reading_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let record = |id: &str| (id.to_string(), json!({ "citizen_id": id }));
        {
            let db = sled::open(dir.path()).unwrap();
            let store = SledStore::open(&db).unwrap();
            assert_eq!(store.count(), 0);
            store
                .put_many(vec![record("001090000001"), record("001090000002")])
                .await
                .unwrap();
            // A record written again is replaced, not counted twice.
            store
                .put_many(vec![record("001090000002"), record("001090000003")])
                .await
                .unwrap();
            assert_eq!(store.count(), 3);
        }
        // sled's flusher thread lets go of the directory's lock a moment after the last handle drops.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        };
        assert_eq!(SledStore::open(&db).unwrap().count(), 3);
        // A data dir from before the count was kept is counted once at open.
        db.open_tree("citizens_meta").unwrap().clear().unwrap();
        assert_eq!(SledStore::open(&db).unwrap().count(), 3);
        assert_eq!(SledStore::open(&db).unwrap().tree.len(), 3);
    }
}
