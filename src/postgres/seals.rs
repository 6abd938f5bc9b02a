//! Audit seals in PostgreSQL: every so often one broker of the cluster (elected with an advisory lock)
//! signs the head of every chain into `audit_seals` (append-only), so cutting a whole chain's tail, which
//! its own hashes cannot show, contradicts a seal. Also what operators read of the shared trail as a
//! whole: every chain's head, a seal made now (`/admin/v1/audit/checkpoint`), and the verification of
//! every chain and seal.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use uuid::Uuid;

use super::audit::verify;
use super::Postgres;
use crate::audit::AuditError;

/// `pg_try_advisory_xact_lock` key of the sealer election ("lienseal" in ASCII).
const SEAL_LOCK: i64 = 0x6c69_656e_7365_616c;

/// What a seal signs: `"lienthong-audit-seal-v1\n{time}\n"`, then [`head_lines`].
fn seal_message(time: &str, heads: &[SealedHead]) -> Vec<u8> {
    format!("lienthong-audit-seal-v1\n{time}\n{}", head_lines(heads)).into_bytes()
}

/// `"{chain_id} {seq} {hash}\n"` for every chain, in the order given (chain id order, as [`heads`]
/// reads them): how a seal and a closed billing month name the cluster's head.
pub fn head_lines(heads: &[SealedHead]) -> String {
    heads
        .iter()
        .map(|head| format!("{} {} {}\n", head.chain_id, head.seq, head.hash))
        .collect()
}

/// One chain's head as a seal (and a closed billing month) names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedHead {
    /// The chain.
    pub chain_id: Uuid,
    /// Its last entry's seq…
    pub seq: i64,
    /// …and hash.
    pub hash: String,
}

/// Every `every`, one broker of the cluster (whichever wins the advisory lock, when the last seal is older
/// than `every`) signs the head of every chain with its Ed25519 key (the embedded trail's
/// `checkpoint.key` in `key_dir`, its `audit.key_dir`) into `audit_seals`: cutting a whole chain's tail, which its own
/// hashes cannot show, then contradicts a seal. Stops when the pool is gone.
pub fn start_sealer(
    postgres: &Arc<Postgres>,
    key_dir: std::path::PathBuf,
    node: String,
    every: std::time::Duration,
) {
    let postgres = Arc::downgrade(postgres);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(postgres) = postgres.upgrade() else {
                return;
            };
            match seal_if_elected(&postgres, &key_dir, &node, every).await {
                Ok(Some(chains)) => tracing::debug!(chains, "audit seal written"),
                Ok(None) => {}
                Err(cause) => tracing::warn!(%cause, "audit seal not written; retrying"),
            }
        }
    });
}

/// Write a seal if this broker is elected and one is due; how many chains it covers.
async fn seal_if_elected(
    postgres: &Postgres,
    key_dir: &std::path::Path,
    node: &str,
    every: std::time::Duration,
) -> Result<Option<usize>, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let mut client = postgres.pool().get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(db)?;
    let elected: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEAL_LOCK])
        .await
        .map_err(db)?
        .get(0);
    let due: bool = elected
        && tx
            .query_one(
                "SELECT coalesce(max(sealed_at) < now() - make_interval(secs => $1), true) FROM audit_seals",
                &[&every.as_secs_f64()],
            )
            .await
            .map_err(db)?
            .get(0);
    if !due {
        return Ok(None);
    }
    let Some(seal) = write_seal(&tx, key_dir, node).await? else {
        return Ok(None);
    };
    tx.commit().await.map_err(db)?;
    Ok(Some(seal.heads.len()))
}

/// A seal as stored in `audit_seals` and answered by `/admin/v1/audit/checkpoint`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seal {
    /// Its id in `audit_seals`.
    pub id: i64,
    /// When it was signed, RFC 3339 UTC (signed).
    pub time: String,
    /// The broker that signed it.
    pub node: String,
    /// Every chain's head (signed).
    pub heads: Vec<SealedHead>,
    /// Entries over every chain.
    pub count: u64,
    /// The signer's Ed25519 public key, hex (the broker's `audit/checkpoint.pub`).
    pub public_key: String,
    /// Ed25519 over `"lienthong-audit-seal-v1\n{time}\n"` and `"{chain_id} {seq} {hash}\n"` per chain.
    pub signature: String,
}

/// Sign every chain's head with the broker's checkpoint key (in `key_dir`) into `audit_seals`, within
/// `tx`; `None` while there is no chain yet.
async fn write_seal(
    tx: &tokio_postgres::Transaction<'_>,
    key_dir: &std::path::Path,
    node: &str,
) -> Result<Option<Seal>, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let heads = chain_heads(tx).await.map_err(db)?;
    if heads.is_empty() {
        return Ok(None);
    }
    // The broker's own checkpoint key, made by its embedded trail when the broker opened.
    let key_file = key_dir.join("checkpoint.key");
    let pkcs8 = std::fs::read(&key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| e.to_string())?;
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let signature = hex::encode(key.sign(&seal_message(&time, &heads)));
    let public_key = hex::encode(ring::signature::KeyPair::public_key(&key).as_ref());
    let heads_json = serde_json::to_value(&heads).map_err(|e| e.to_string())?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO audit_seals (time, node, heads, public_key, signature) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
            &[&time, &node, &heads_json, &public_key, &signature],
        )
        .await
        .map_err(db)?
        .get(0);
    Ok(Some(Seal {
        id,
        time,
        node: node.to_string(),
        count: heads.iter().map(|h| u64::try_from(h.seq).unwrap_or(0)).sum(),
        heads,
        public_key,
        signature,
    }))
}

/// `POST|GET /admin/v1/audit/checkpoint` on PostgreSQL: a seal over every chain's head, signed now by this
/// broker (after any seal being written elsewhere), for the operator to keep outside the cluster.
pub async fn seal_now(
    postgres: &Postgres,
    key_dir: &std::path::Path,
    node: &str,
) -> Result<Seal, AuditError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        postgres.health().failed(&e.to_string());
        AuditError::Unavailable(format!("{}: {e}", postgres.redacted_url))
    };
    let mut client = postgres.pool().get().await.map_err(|e| unavailable(&e))?;
    let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SEAL_LOCK])
        .await
        .map_err(|e| unavailable(&e))?;
    let seal = write_seal(&tx, key_dir, node)
        .await
        .map_err(|e| AuditError::Unavailable(format!("{}: {e}", postgres.redacted_url)))?
        .ok_or_else(|| AuditError::Unavailable("no audit chain yet: nothing to seal".into()))?;
    tx.commit().await.map_err(|e| unavailable(&e))?;
    Ok(seal)
}

/// Every chain's head, read in one snapshot (a closed billing month names them).
pub async fn heads(postgres: &Postgres) -> Result<Vec<SealedHead>, AuditError> {
    let unavailable =
        |e: &dyn std::fmt::Display| AuditError::Unavailable(format!("{}: {e}", postgres.redacted_url));
    let mut client = postgres.pool().get().await.map_err(|e| unavailable(&e))?;
    let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
    chain_heads(&tx).await.map_err(|e| unavailable(&e))
}

/// The head of every chain, in chain id order.
async fn chain_heads(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<SealedHead>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT c.chain_id, e.seq, e.hash FROM audit_chains c \
             CROSS JOIN LATERAL (SELECT seq, hash FROM audit_entries \
                                 WHERE chain_id = c.chain_id ORDER BY seq DESC LIMIT 1) e \
             ORDER BY c.chain_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SealedHead {
            chain_id: r.get(0),
            seq: r.get(1),
            hash: r.get(2),
        })
        .collect())
}

/// `GET /admin/v1/audit/head` on PostgreSQL: every chain's head and the number of entries.
pub async fn head_json(postgres: &Postgres) -> Result<serde_json::Value, AuditError> {
    let heads = heads(postgres).await?;
    let count: u64 = heads.iter().map(|h| u64::try_from(h.seq).unwrap_or(0)).sum();
    Ok(serde_json::json!({ "count": count, "chains": heads }))
}

/// `GET /admin/v1/audit/verify` on PostgreSQL: every chain and seal, as `audit verify --database` does.
pub async fn verify_json(postgres: &Postgres) -> Result<serde_json::Value, AuditError> {
    let unavailable =
        |e: &dyn std::fmt::Display| AuditError::Unavailable(format!("{}: {e}", postgres.redacted_url));
    let client = postgres.pool().get().await.map_err(|e| unavailable(&e))?;
    let verified = match verify(&client).await {
        Ok(report) => verify_seals(&client).await.map(|seals| (report, seals)),
        Err(broken) => Err(broken),
    };
    Ok(match verified {
        Ok((report, (seals, keys))) => serde_json::json!({
            "ok": true,
            "count": report.entries(),
            "chains": report.chains.iter().map(|(chain, node, entries, head)| serde_json::json!({
                "chain_id": chain, "node": node, "entries": entries, "head_hash": head,
            })).collect::<Vec<_>>(),
            "seals": seals,
            "seal_keys": keys,
        }),
        Err(reason) => serde_json::json!({ "ok": false, "reason": reason }),
    })
}

/// Check every seal: its signature, and that every head it names is still in its chain with that hash.
/// The number of seals and the public keys that signed them (compare with the brokers'
/// `audit/checkpoint.pub`).
pub async fn verify_seals(client: &tokio_postgres::Client) -> Result<(u64, Vec<String>), String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let seals = client
        .query(
            "SELECT id, time, heads, public_key, signature FROM audit_seals ORDER BY id",
            &[],
        )
        .await
        .map_err(db)?;
    let mut keys: Vec<String> = Vec::new();
    for seal in &seals {
        let id: i64 = seal.get(0);
        let time: String = seal.get(1);
        let public_key: String = seal.get(3);
        let signature: String = seal.get(4);
        let broken = |what: String| format!("seal {id} ({time}): {what}");
        let heads: Vec<SealedHead> =
            serde_json::from_value(seal.get(2)).map_err(|e| broken(format!("unreadable heads: {e}")))?;
        let signed = hex::decode(&signature)
            .ok()
            .zip(hex::decode(&public_key).ok())
            .is_some_and(|(sig, key)| {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                    .verify(&seal_message(&time, &heads), &sig)
                    .is_ok()
            });
        if !signed {
            return Err(broken("the signature does not match".into()));
        }
        for head in &heads {
            let held = client
                .query_opt(
                    "SELECT hash FROM audit_entries WHERE chain_id = $1 AND seq = $2",
                    &[&head.chain_id, &head.seq],
                )
                .await
                .map_err(db)?;
            match held.map(|r| r.get::<_, String>(0)) {
                Some(hash) if hash == head.hash => {}
                Some(_) => {
                    return Err(broken(format!(
                        "chain {} seq {} holds another entry than was sealed",
                        head.chain_id, head.seq
                    )))
                }
                None => {
                    return Err(broken(format!(
                        "chain {} seq {} was sealed but is gone (the chain's tail was cut)",
                        head.chain_id, head.seq
                    )))
                }
            }
        }
        if !keys.contains(&public_key) {
            keys.push(public_key);
        }
    }
    Ok((seals.len() as u64, keys))
}
