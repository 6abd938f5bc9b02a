//! The audit trail in PostgreSQL, shared by every broker of a cluster and still tamper-evident.
//!
//! Each broker start appends to a chain of its own (`audit_chains`, a random chain id): the same entries
//! and hashes as the embedded trail ([`AuditEntry`]), seq 1.. within the chain. A chain's first entry
//! continues the head of the node's previous chain (its `prev_hash` is that head's hash, and the chain row
//! names chain, seq and hash), so a chain cannot be cut off its predecessor unnoticed. The tables refuse
//! UPDATE, DELETE and TRUNCATE (trigger, see [`super::migrate`]).
//!
//! One writer task per broker does group commit: it takes every entry waiting (up to [`MAX_BATCH`]),
//! inserts them in one statement and commits with `synchronous_commit = on`; only then are the requests
//! answered. If a batch fails, its requests get 503 `audit_unavailable` and the writer reads the chain's
//! committed head again before the next batch (the commit may have landed even if its answer was lost).
//!
//! Reading it back: [`verify`] (every chain), [`search`] (every broker's entries, newest first) and
//! [`export`]; the seals over every chain's head are in [`super::seals`].

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::Postgres;
use crate::audit::{AuditEntry, AuditError, AuditFuture, AuditRecord, AuditSink, GENESIS_HASH};
use crate::metrics::AuditCommitMetrics;
use crate::quota::month_of;

/// Entries committed in one transaction at most.
pub const MAX_BATCH: usize = 512;

/// Requests waiting for the writer at most; more wait to be queued.
const QUEUE: usize = 8_192;

struct Pending {
    record: AuditRecord,
    answer: oneshot::Sender<Result<AuditEntry, AuditError>>,
}

/// The [`AuditSink`] of a broker on PostgreSQL.
pub struct PgAuditSink {
    queue: mpsc::Sender<Pending>,
    /// This start's chain.
    pub chain_id: Uuid,
}

impl PgAuditSink {
    /// Start the writer task for a new chain of `node`, counting its commits in `metrics`. Call within a
    /// tokio runtime.
    pub fn start(postgres: Arc<Postgres>, node: String, metrics: AuditCommitMetrics) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let chain_id = Uuid::new_v4();
        tokio::spawn(write_batches(postgres, node, chain_id, waiting, metrics));
        Self { queue, chain_id }
    }
}

impl AuditSink for PgAuditSink {
    fn append_entry(&self, record: AuditRecord) -> AuditFuture<'_> {
        Box::pin(async move {
            let stopped = || AuditError::Unavailable("the audit writer has stopped".into());
            let (answer, answered) = oneshot::channel();
            self.queue
                .send(Pending { record, answer })
                .await
                .map_err(|_| stopped())?;
            answered.await.map_err(|_| stopped())?
        })
    }
}

/// The chain's last committed entry.
#[derive(Clone)]
struct Head {
    seq: u64,
    hash: String,
    time: DateTime<Utc>,
}

async fn write_batches(
    postgres: Arc<Postgres>,
    node: String,
    chain_id: Uuid,
    mut waiting: mpsc::Receiver<Pending>,
    metrics: AuditCommitMetrics,
) {
    // `None` until the chain is registered, and again after a failed batch: read from the database.
    let mut head: Option<Head> = None;
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let records: Vec<&AuditRecord> = batch.iter().map(|p| &p.record).collect();
        match commit_batch(&postgres, &node, chain_id, head.clone(), &records).await {
            Ok((entries, new_head)) => {
                head = Some(new_head);
                metrics.count_commit(entries.len());
                for (pending, entry) in batch.into_iter().zip(entries) {
                    let _ = pending.answer.send(Ok(entry));
                }
            }
            Err(cause) => {
                postgres.health().failed(&cause);
                head = None;
                for pending in batch {
                    let _ = pending.answer.send(Err(AuditError::Unavailable(format!(
                        "{}: {cause}",
                        postgres.redacted_url
                    ))));
                }
            }
        }
    }
}

/// Seal and insert `records` after `head` in one transaction, committed synchronously.
async fn commit_batch(
    postgres: &Postgres,
    node: &str,
    chain_id: Uuid,
    head: Option<Head>,
    records: &[&AuditRecord],
) -> Result<(Vec<AuditEntry>, Head), String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let mut client = postgres.pool().get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(db)?;
    let mut head = match head {
        Some(head) => head,
        None => committed_head(&tx, node, chain_id).await?,
    };
    let mut entries = Vec::with_capacity(records.len());
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        // Whole milliseconds (what the entry shows), never before the previous entry.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
        let time = now.max(head.time);
        let (entry, line) = AuditEntry::seal(
            head.seq + 1,
            time.to_rfc3339_opts(SecondsFormat::Millis, true),
            (*record).clone(),
            head.hash.clone(),
        )
        .map_err(|e| e.to_string())?;
        head = Head {
            seq: entry.seq,
            hash: entry.hash.clone(),
            time,
        };
        rows.push((time, line));
        entries.push(entry);
    }
    add_billing_totals(&tx, &entries, &rows).await?;
    insert_entries(&tx, chain_id, entries.iter().zip(rows)).await?;
    tx.commit().await.map_err(db)?;
    Ok((entries, head))
}

/// Count a batch's served and refused calls ([`AuditRecord::billed_as`], the rule of `billing reconcile`)
/// in `quota_totals`, per (month, agency, purpose, kind), in the batch's own transaction: the billing totals
/// and the trail commit together, and one row update per batch, not one commit per answer, holds the
/// totals' row lock (every node's answers of one agency and purpose meet on that row). Rows in key order,
/// so two nodes' batches queue rather than deadlock. `rows` are the entries' times and lines, in order.
pub(crate) async fn add_billing_totals(
    tx: &Transaction<'_>,
    entries: &[AuditEntry],
    rows: &[(DateTime<Utc>, String)],
) -> Result<(), String> {
    let mut totals = BTreeMap::new();
    for (entry, (time, _)) in entries.iter().zip(rows) {
        let record = &entry.record;
        let (Some(agency), Some(purpose), Some(billed)) =
            (&record.agency, &record.purpose, record.billed_as())
        else {
            continue;
        };
        *totals
            .entry((
                month_of(*time),
                agency.as_str(),
                purpose.as_str(),
                billed.as_str(),
            ))
            .or_insert(0i64) += 1;
    }
    if totals.is_empty() {
        return Ok(());
    }
    let (mut months, mut agencies, mut purposes, mut kinds, mut calls) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((month, agency, purpose, kind), n) in &totals {
        months.push(month.as_str());
        agencies.push(*agency);
        purposes.push(*purpose);
        kinds.push(*kind);
        calls.push(*n);
    }
    tx.execute(
        "INSERT INTO quota_totals (month, agency, purpose, kind, calls) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
         ON CONFLICT (month, agency, purpose, kind) DO UPDATE SET calls = quota_totals.calls + EXCLUDED.calls",
        &[&months, &agencies, &purposes, &kinds, &calls],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Insert entries of one chain, each with its time and stored line, in one statement.
pub(crate) async fn insert_entries<'e>(
    tx: &Transaction<'_>,
    chain_id: Uuid,
    entries: impl Iterator<Item = (&'e AuditEntry, (DateTime<Utc>, String))>,
) -> Result<(), String> {
    let (mut seqs, mut times, mut agencies, mut citizens, mut statuses, mut hashes, mut lines) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (entry, (time, line)) in entries {
        seqs.push(i64::try_from(entry.seq).map_err(|e| e.to_string())?);
        times.push(time);
        agencies.push(entry.record.agency.as_deref());
        citizens.push(entry.record.citizen_id.as_deref());
        statuses.push(i32::from(entry.record.status));
        hashes.push(entry.hash.as_str());
        lines.push(line);
    }
    tx.execute(
        "INSERT INTO audit_entries (chain_id, seq, time, agency, citizen_id, status, hash, line) \
         SELECT $1, * FROM unnest($2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::int4[], \
                                  $7::text[], $8::text[])",
        &[
            &chain_id, &seqs, &times, &agencies, &citizens, &statuses, &hashes, &lines,
        ],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The head of this start's chain as committed; registers the chain (continuing the node's previous
/// chain) if it has no row yet. The registration commits with the first batch or not at all.
async fn committed_head(tx: &Transaction<'_>, node: &str, chain_id: Uuid) -> Result<Head, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let registered = tx
        .query_opt(
            "SELECT continues_hash, started_at FROM audit_chains WHERE chain_id = $1",
            &[&chain_id],
        )
        .await
        .map_err(db)?;
    if let Some(chain) = registered {
        let last = tx
            .query_opt(
                "SELECT seq, hash, time FROM audit_entries WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&chain_id],
            )
            .await
            .map_err(db)?;
        return Ok(match last {
            Some(row) => Head {
                seq: u64::try_from(row.get::<_, i64>(0)).map_err(|e| e.to_string())?,
                hash: row.get(1),
                time: row.get(2),
            },
            None => Head {
                seq: 0,
                hash: chain.get(0),
                time: chain.get(1),
            },
        });
    }
    // The node's latest chain, and its head: every registered chain has at least one entry.
    let previous = tx
        .query_opt(
            "SELECT c.chain_id, e.seq, e.hash, e.time FROM audit_chains c \
             CROSS JOIN LATERAL (SELECT seq, hash, time FROM audit_entries \
                                 WHERE chain_id = c.chain_id ORDER BY seq DESC LIMIT 1) e \
             WHERE c.node = $1 ORDER BY c.started_at DESC LIMIT 1",
            &[&node],
        )
        .await
        .map_err(db)?;
    let (continues_chain, continues_seq, continues_hash, time) = match &previous {
        Some(row) => (
            Some(row.get::<_, Uuid>(0)),
            Some(row.get::<_, i64>(1)),
            row.get::<_, String>(2),
            row.get::<_, DateTime<Utc>>(3),
        ),
        None => (None, None, GENESIS_HASH.to_string(), DateTime::<Utc>::MIN_UTC),
    };
    tx.execute(
        "INSERT INTO audit_chains (chain_id, node, continues_chain, continues_seq, continues_hash) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &chain_id,
            &node,
            &continues_chain,
            &continues_seq,
            &continues_hash,
        ],
    )
    .await
    .map_err(db)?;
    tracing::info!(%chain_id, node, continues = ?continues_chain, "audit chain started");
    Ok(Head {
        seq: 0,
        hash: continues_hash,
        time,
    })
}

/// What `audit verify --database` found: every chain intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chains, in start order: id, node, entries, head hash.
    pub chains: Vec<(Uuid, String, u64, String)>,
}

impl VerifyReport {
    /// Entries over all chains.
    pub fn entries(&self) -> u64 {
        self.chains.iter().map(|c| c.2).sum()
    }
}

/// Entries read per query while verifying.
const VERIFY_PAGE: i64 = 5_000;

/// Walk every chain: seqs contiguous from 1, each entry's hash recomputed from its stored line, each
/// `prev_hash` the previous hash, each chain's first entry continuing the head its row names (which must
/// exist in the chain it names). The error names the chain and seq at fault.
pub async fn verify(client: &tokio_postgres::Client) -> Result<VerifyReport, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let chains = client
        .query(
            "SELECT chain_id, node, continues_chain, continues_seq, continues_hash FROM audit_chains \
             ORDER BY started_at, chain_id",
            &[],
        )
        .await
        .map_err(db)?;
    let mut report = VerifyReport { chains: Vec::new() };
    for chain in chains {
        let chain_id: Uuid = chain.get(0);
        let node: String = chain.get(1);
        let continues_chain: Option<Uuid> = chain.get(2);
        let continues_seq: Option<i64> = chain.get(3);
        let mut prev_hash: String = chain.get(4);
        let broken = |seq: i64, what: String| format!("chain {chain_id} (node {node}) seq {seq}: {what}");
        if let (Some(continued), Some(seq)) = (continues_chain, continues_seq) {
            let named = client
                .query_opt(
                    "SELECT hash FROM audit_entries WHERE chain_id = $1 AND seq = $2",
                    &[&continued, &seq],
                )
                .await
                .map_err(db)?;
            if named.map(|r| r.get::<_, String>(0)).as_deref() != Some(prev_hash.as_str()) {
                return Err(broken(
                    0,
                    format!("continues chain {continued} at seq {seq}, which does not hold that head"),
                ));
            }
        } else if prev_hash != GENESIS_HASH {
            return Err(broken(
                0,
                "continues no chain but does not start at genesis".into(),
            ));
        }
        let mut expected_seq: i64 = 1;
        loop {
            let page = client
                .query(
                    "SELECT seq, hash, line FROM audit_entries WHERE chain_id = $1 AND seq >= $2 \
                     ORDER BY seq LIMIT $3",
                    &[&chain_id, &expected_seq, &VERIFY_PAGE],
                )
                .await
                .map_err(db)?;
            let last_page = (page.len() as i64) < VERIFY_PAGE;
            for row in page {
                let seq: i64 = row.get(0);
                let hash: String = row.get(1);
                let line: String = row.get(2);
                if seq != expected_seq {
                    return Err(broken(
                        expected_seq,
                        format!("missing (next stored is seq {seq})"),
                    ));
                }
                let entry = AuditEntry::from_line(line.as_bytes()).map_err(|e| broken(seq, e))?;
                let recomputed = entry.compute_hash().map_err(|e| broken(seq, e.to_string()))?;
                if u64::try_from(seq).ok() != Some(entry.seq) || entry.hash != hash || recomputed != hash {
                    return Err(broken(seq, "hash does not match the entry".into()));
                }
                if entry.prev_hash != prev_hash {
                    return Err(broken(seq, "prev_hash is not the previous entry's hash".into()));
                }
                prev_hash = hash;
                expected_seq += 1;
            }
            if last_page {
                break;
            }
        }
        if expected_seq == 1 {
            return Err(broken(1, "a registered chain without entries (truncated)".into()));
        }
        report
            .chains
            .push((chain_id, node, (expected_seq - 1) as u64, prev_hash));
    }
    Ok(report)
}

/// Entries read per query while searching (the filters SQL cannot express are applied after).
const SEARCH_PAGE: i64 = 500;

/// Entries of every broker matching `filter`, newest first (by the shared table's `id`), strictly before
/// the id `before`, at most `limit`: each with its id, the cursor of the next page.
pub async fn search(
    postgres: &Postgres,
    filter: &crate::audit::AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, AuditEntry)>, AuditError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        postgres.health().failed(&e.to_string());
        AuditError::Unavailable(format!("{}: {e}", postgres.redacted_url))
    };
    let client = postgres.pool().get().await.map_err(|e| unavailable(&e))?;
    let status = filter.status.map(i32::from);
    let mut cursor = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut found = Vec::new();
    while found.len() < limit {
        let rows = client
            .query(
                "SELECT id, line, time FROM audit_entries \
                 WHERE id < $1 AND ($2::text IS NULL OR agency = $2) \
                   AND ($3::text IS NULL OR citizen_id = $3) AND ($4::int4 IS NULL OR status = $4) \
                   AND ($5::timestamptz IS NULL OR time >= $5) AND ($6::timestamptz IS NULL OR time < $6) \
                 ORDER BY id DESC LIMIT $7",
                &[
                    &cursor,
                    &filter.agency,
                    &filter.citizen_id,
                    &status,
                    &filter.from,
                    &filter.to,
                    &SEARCH_PAGE,
                ],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let last_page = (rows.len() as i64) < SEARCH_PAGE;
        for row in rows {
            cursor = row.get(0);
            let line: String = row.get(1);
            let entry = AuditEntry::from_line(line.as_bytes()).map_err(AuditError::Corrupt)?;
            // The rest of the filter (purpose, official, issue) as the embedded index applies it.
            if filter.matches(&entry, Some(row.get(2))) {
                found.push((u64::try_from(cursor).unwrap_or(0), entry));
                if found.len() == limit {
                    break;
                }
            }
        }
        if last_page {
            break;
        }
    }
    Ok(found)
}

/// `lienthong audit export --database`: every broker's entries as JSON Lines, chain by chain in start
/// order and by seq within a chain (so each chain's `prev_hash` links can be followed), `from` inclusive,
/// `to` exclusive. The stored lines as they are. How many were written.
pub async fn export(
    client: &tokio_postgres::Client,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    out: &mut dyn std::io::Write,
) -> Result<u64, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let chains = client
        .query(
            "SELECT chain_id FROM audit_chains ORDER BY started_at, chain_id",
            &[],
        )
        .await
        .map_err(db)?;
    let mut written = 0;
    for chain in chains {
        let chain_id: Uuid = chain.get(0);
        let mut after: i64 = 0;
        loop {
            let page = client
                .query(
                    "SELECT seq, line FROM audit_entries WHERE chain_id = $1 AND seq > $2 \
                       AND ($3::timestamptz IS NULL OR time >= $3) AND ($4::timestamptz IS NULL OR time < $4) \
                     ORDER BY seq LIMIT $5",
                    &[&chain_id, &after, &from, &to, &VERIFY_PAGE],
                )
                .await
                .map_err(db)?;
            for row in &page {
                after = row.get(0);
                let line: &str = row.get(1);
                out.write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| e.to_string())?;
                written += 1;
            }
            if (page.len() as i64) < VERIFY_PAGE {
                break;
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(written)
}
