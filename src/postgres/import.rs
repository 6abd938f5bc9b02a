//! `lienthong db import`: move an embedded installation (a stopped broker's data dir) into PostgreSQL —
//! the registry, the citizen records, checkpoints and check-ins, and the audit trail with its chain intact
//! (same entries, same hashes, one chain of its own). A broker later started with
//! `storage.postgres.node_name` equal to the imported chain's node continues that chain. The billing totals
//! are counted from the imported entries, as the audit writer counts its batches, so `billing reconcile`
//! agrees after the move; the quota counters are not imported (their windows start afresh).

use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

use super::Postgres;
use crate::audit::{AuditEntry, GENESIS_HASH};
use crate::registry::SharedRegistry;
use crate::store::CitizenStore;

/// Rows per transaction for records, entries per statement for the trail.
const BATCH: usize = 2_000;

/// What was imported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Agencies.
    pub agencies: usize,
    /// Citizen records.
    pub citizens: usize,
    /// Checkpoints, and check-ins indexed.
    pub checkpoints: (usize, usize),
    /// Audit entries, in one chain.
    pub audit_entries: u64,
}

/// Import `data_dir` (its broker stopped: sled allows one process) into `postgres` as node `node`.
pub async fn import(postgres: &Arc<Postgres>, data_dir: &Path, node: &str) -> Result<Imported, String> {
    let audit_dir = data_dir.join("audit");
    let report = crate::audit::verify_dir(&audit_dir)
        .map_err(|f| format!("{}: the audit trail does not verify: {f}", audit_dir.display()))?;
    if report.first_seq != 1 {
        return Err(format!(
            "{}: the trail was pruned (it starts at seq {}); import it before pruning",
            audit_dir.display(),
            report.first_seq
        ));
    }
    let db = sled::Config::new()
        .path(data_dir.join("db"))
        .open()
        .map_err(|e| {
            format!(
                "{}: {e} (is its broker still running? stop it first)",
                data_dir.display()
            )
        })?;
    postgres.migrate().await.map_err(|e| e.to_string())?;
    let client = postgres.pool().get().await.map_err(|e| e.to_string())?;
    let taken = client
        .query_opt("SELECT 1 FROM audit_chains WHERE node = $1", &[&node])
        .await
        .map_err(|e| e.to_string())?;
    if taken.is_some() {
        return Err(format!(
            "the database already has audit chains of node {node:?}: imported already? (choose --node-name)"
        ));
    }
    drop(client);
    let mut imported = Imported::default();

    let registry = crate::registry::Registry::open(&db).map_err(|e| e.to_string())?;
    let shared = super::registry::PgRegistry::new(postgres.clone());
    for agency in registry.list() {
        shared.publish(&agency, false).await.map_err(|e| e.message)?;
        imported.agencies += 1;
    }

    let citizens = db.open_tree("citizens").map_err(|e| e.to_string())?;
    let store = super::citizens::PgCitizenStore::new(postgres.clone());
    let mut batch = Vec::with_capacity(BATCH);
    for item in citizens.iter() {
        let (id, bytes) = item.map_err(|e| e.to_string())?;
        let record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        batch.push((String::from_utf8_lossy(&id).into_owned(), record));
        if batch.len() == BATCH {
            imported.citizens += batch.len();
            store
                .put_many(std::mem::take(&mut batch))
                .await
                .map_err(|e| e.message)?;
        }
    }
    imported.citizens += batch.len();
    store.put_many(batch).await.map_err(|e| e.message)?;

    imported.checkpoints = import_checkpoints(postgres, &db).await?;
    imported.audit_entries = import_trail(postgres, &audit_dir, node).await?;
    if imported.audit_entries != report.count {
        return Err(format!(
            "imported {} audit entries, the trail holds {}",
            imported.audit_entries, report.count
        ));
    }
    Ok(imported)
}

/// Copy the registered checkpoints and the check-in index (the embedded store's trees, read as they are).
async fn import_checkpoints(postgres: &Arc<Postgres>, db: &sled::Db) -> Result<(usize, usize), String> {
    use crate::checkpoint::{Checkpoint, CheckpointStore};
    let shared = super::checkpoints::PgCheckpoints::new(postgres.clone());
    let mut counts = (0, 0);
    for item in db.open_tree("checkpoints").map_err(|e| e.to_string())?.iter() {
        let (_, bytes) = item.map_err(|e| e.to_string())?;
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        shared.insert(&checkpoint).await.map_err(|e| e.message)?;
        counts.0 += 1;
    }
    for item in db
        .open_tree("checkins_by_checkpoint")
        .map_err(|e| e.to_string())?
        .iter()
    {
        let (key, _) = item.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let mut parts = key.split('\u{0}');
        let (Some(checkpoint), Some(time), Some(citizen)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let time = chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|e| format!("check-in {key:?}: {e}"))?
            .with_timezone(&chrono::Utc);
        shared
            .index(checkpoint, time, citizen)
            .await
            .map_err(|e| e.message)?;
        counts.1 += 1;
    }
    Ok(counts)
}

/// Copy the trail's entries, as they are, into one new chain of `node`, in one transaction.
async fn import_trail(postgres: &Postgres, audit_dir: &Path, node: &str) -> Result<u64, String> {
    // The trail may be large: through a file rather than memory.
    let spool = std::env::temp_dir().join(format!("lienthong-import-{}.jsonl", Uuid::new_v4()));
    let exported = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&spool)?);
        crate::audit::export(audit_dir, None, None, &mut out).map_err(std::io::Error::other)
    })();
    let result = match exported {
        Ok(_) => insert_chain(postgres, &spool, node).await,
        Err(e) => Err(format!("exporting {}: {e}", audit_dir.display())),
    };
    let _ = std::fs::remove_file(&spool);
    result
}

async fn insert_chain(postgres: &Postgres, spool: &Path, node: &str) -> Result<u64, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let mut client = postgres.pool().get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(db)?;
    let chain_id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO audit_chains (chain_id, node, continues_hash) VALUES ($1, $2, $3)",
        &[&chain_id, &node, &GENESIS_HASH],
    )
    .await
    .map_err(db)?;
    let file = tokio::fs::File::open(spool).await.map_err(|e| e.to_string())?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut count = 0u64;
    let mut entries: Vec<AuditEntry> = Vec::with_capacity(BATCH);
    let mut rows = Vec::with_capacity(BATCH);
    loop {
        let line = lines.next_line().await.map_err(|e| e.to_string())?;
        if let Some(line) = line.clone() {
            let entry = AuditEntry::from_line(line.as_bytes())?;
            let time = chrono::DateTime::parse_from_rfc3339(&entry.time)
                .map_err(|e| format!("entry {}: time {e}", entry.seq))?
                .with_timezone(&chrono::Utc);
            entries.push(entry);
            rows.push((time, line));
        }
        if entries.len() == BATCH || (line.is_none() && !entries.is_empty()) {
            count += entries.len() as u64;
            super::audit::add_billing_totals(&tx, &entries, &rows).await?;
            super::audit::insert_entries(&tx, chain_id, entries.iter().zip(rows.drain(..))).await?;
            entries.clear();
        }
        if line.is_none() {
            break;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(count)
}
