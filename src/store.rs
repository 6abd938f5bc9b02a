//! Stage: store. Citizen records keyed by the 12-digit ID, behind the [`CitizenStore`] seam so that an
//! upstream provider system (the population database itself, reached over the network) can replace the
//! embedded sled store without touching the pipeline.
//!
//! Writes are atomic per citizen: a read-modify-write is retried with compare-and-swap, so a crash or a
//! concurrent writer never leaves half an update; the write is flushed before it is acknowledged.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::error::ApiError;

/// A boxed future, so the trait stays object-safe (`Arc<dyn CitizenStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// A change to one record: given the current record, change it in place and say what happened, or
/// refuse with an error (nothing is written then).
pub type Change<'a, T> = Box<dyn FnMut(&mut Value) -> Result<T, ApiError> + Send + 'a>;

/// Where citizen records live.
pub trait CitizenStore: Send + Sync {
    /// The stored record (without derived fields), or `None`.
    fn get<'a>(&'a self, citizen_id: &'a str) -> StoreFuture<'a, Option<Value>>;

    /// Apply `change` atomically to an existing record and make it durable; 404 `citizen_not_found` if
    /// there is none. `change` may run more than once under contention: it must be a pure function of
    /// the record it is given.
    fn update<'a>(
        &'a self,
        citizen_id: &'a str,
        change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome>;

    /// Insert or replace whole records (seeding and imports), durable on return.
    fn put_many<'a>(&'a self, records: Vec<(String, Value)>) -> StoreFuture<'a, ()>;

    /// How many records there are.
    fn count(&self) -> usize;
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
    ApiError::unavailable("store_unavailable", UNAVAILABLE)
}

/// The one message a client gets for `store_unavailable`.
pub const UNAVAILABLE: &str = "the citizen store is unavailable; retry later";

fn store_error(e: impl std::fmt::Display) -> ApiError {
    unavailable("citizens", e)
}

/// The embedded store: one sled tree, JSON values.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
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
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("citizens")?,
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

    fn update<'a>(
        &'a self,
        citizen_id: &'a str,
        mut change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        Box::pin(async move {
            loop {
                let Some(old) = self.tree.get(citizen_id.as_bytes()).map_err(store_error)? else {
                    return Err(ApiError::not_found(
                        "citizen_not_found",
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
            let mut batch = sled::Batch::default();
            for (id, record) in records {
                batch.insert(id.as_bytes(), serde_json::to_vec(&record).map_err(store_error)?);
            }
            self.tree.apply_batch(batch).map_err(store_error)?;
            flush(&self.db).await?;
            Ok(())
        })
    }

    fn count(&self) -> usize {
        self.tree.len()
    }
}
