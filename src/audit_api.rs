//! Stage: audit, as operators and citizens see it. Admin routes (`/admin/v1/audit/…`: head, verify,
//! paginated search) and the citizen's own "who read my data" view on the agency listener, under the
//! `citizen-self-service` purpose (the portal acting for the logged-in citizen).

use chrono::{DateTime, Utc};
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::audit::{AuditEntry, AuditFilter};
use crate::broker::Broker;
use crate::citizen_id::CitizenId;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{ReadRequest, Reply};

/// Largest page a search answers.
pub const MAX_PAGE: usize = 500;

fn page_params(req: &ReadRequest) -> Result<(Option<u64>, usize), ApiError> {
    let before = match req.query("before") {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "before: not a sequence number"))?,
        ),
        None => None,
    };
    let limit = match req.query("limit") {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "limit: not a number"))?,
        None => 100,
    };
    Ok((before, limit.clamp(1, MAX_PAGE)))
}

fn time_param(req: &ReadRequest, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    req.query(name)
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, format!("{name}: not an RFC 3339 time")))
        })
        .transpose()
}

/// A page of entries with the cursor for the next (older) page.
fn page(entries: Vec<AuditEntry>, limit: usize, view: impl Fn(&AuditEntry) -> Value) -> Value {
    let next = if entries.len() == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    json!({ "entries": entries.iter().map(view).collect::<Vec<_>>(), "next_before": next })
}

/// `GET /admin/v1/audit/{head,verify,entries}`.
pub async fn admin_route(broker: &Broker, req: &ReadRequest, action: &str) -> Result<Reply, ApiError> {
    broker.embedded_only("the audit API on a broker (use `lienthong audit verify --database`)")?;
    match action {
        "head" => {
            let (count, head_hash) = broker.audit.head();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "count": count, "head_hash": head_hash }),
            ))
        }
        "verify" => {
            let dir = broker.config.storage.data_dir.join("audit");
            Ok(match crate::audit::verify_dir(&dir) {
                Ok(r) => Reply::json(
                    StatusCode::OK,
                    &json!({ "ok": true, "count": r.count, "first_seq": r.first_seq, "head_hash": r.head_hash,
                             "checkpoints": r.checkpoints, "torn_tail": r.torn_tail }),
                ),
                Err(f) => Reply::json(
                    StatusCode::OK,
                    &json!({ "ok": false, "failed_seq": f.seq, "reason": f.reason }),
                ),
            })
        }
        "entries" => {
            let status = match req.query("status") {
                Some(s) => Some(
                    s.parse::<u16>()
                        .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "status: not a number"))?,
                ),
                None => None,
            };
            let filter = AuditFilter {
                agency: req.query("agency"),
                purpose: req.query("purpose"),
                status,
                citizen_id: req.query("citizen_id"),
                from: time_param(req, "from")?,
                to: time_param(req, "to")?,
            };
            let (before, limit) = page_params(req)?;
            let entries = broker.audit.search(&filter, before, limit).await?;
            Ok(Reply::json(StatusCode::OK, &page(entries, limit, |e| json!(e))))
        }
        _ => Err(ApiError::no_route(&req.parts.method, req.path())),
    }
}

/// The citizen's view of one entry: when, who, why, what — no certificate fingerprints or hashes.
fn citizen_view(e: &AuditEntry) -> Value {
    json!({
        "time": e.time,
        "agency": e.record.agency,
        "purpose": e.record.purpose,
        "channel": e.record.channel,
        "operation": e.record.operation,
        "fields": e.record.fields,
        "status": e.record.status,
    })
}

/// Entries about one citizen, newest first, paginated.
pub async fn access_log(broker: &Broker, req: &ReadRequest, id: &CitizenId) -> Result<Value, ApiError> {
    broker.embedded_only("the citizen's access log")?;
    let (before, limit) = page_params(req)?;
    let entries = broker.audit.for_citizen(id.as_str(), before, limit).await?;
    Ok(page(entries, limit, citizen_view))
}
