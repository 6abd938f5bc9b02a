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

/// Entries matching `filter`, newest first, each with its cursor: the embedded trail's seq, or with
/// PostgreSQL the shared table's id (every broker's entries).
pub(crate) async fn search(
    broker: &Broker,
    filter: &AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, AuditEntry)>, ApiError> {
    Ok(match &broker.postgres {
        Some(backend) => crate::postgres::audit::search(&backend.postgres, filter, before, limit).await?,
        None => broker
            .audit
            .search(filter, before, limit)
            .await?
            .into_iter()
            .map(|e| (e.seq, e))
            .collect(),
    })
}

/// The cursor for the next (older) page: the last entry's, when the page is full.
fn next_before(entries: &[(u64, AuditEntry)], limit: usize) -> Option<u64> {
    (entries.len() == limit)
        .then(|| entries.last().map(|(cursor, _)| *cursor))
        .flatten()
}

/// A page of entries with the cursor for the next (older) page.
fn page(entries: Vec<(u64, AuditEntry)>, limit: usize, view: impl Fn(&AuditEntry) -> Value) -> Value {
    let next = next_before(&entries, limit);
    json!({ "entries": entries.iter().map(|(_, e)| view(e)).collect::<Vec<_>>(), "next_before": next })
}

/// `GET /admin/v1/audit/{head,verify,entries}`.
pub async fn admin_route(broker: &Broker, req: &ReadRequest, action: &str) -> Result<Reply, ApiError> {
    if let Some(backend) = &broker.postgres {
        // Every broker's chains and seals, read from the database.
        let postgres = &backend.postgres;
        match action {
            "head" => {
                return Ok(Reply::json(
                    StatusCode::OK,
                    &crate::postgres::seals::head_json(postgres).await?,
                ))
            }
            "verify" => {
                return Ok(Reply::json(
                    StatusCode::OK,
                    &crate::postgres::seals::verify_json(postgres).await?,
                ))
            }
            // A seal over every chain's head, signed now by this broker.
            "checkpoint" => {
                let seal =
                    crate::postgres::seals::seal_now(postgres, &backend.key_dir, &backend.node).await?;
                return Ok(Reply::json(StatusCode::OK, &json!(seal)));
            }
            _ => {}
        }
    }
    match action {
        "head" => {
            let (count, head_hash) = broker.audit.head();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "count": count, "head_hash": head_hash }),
            ))
        }
        // A freshly signed head for the operator to keep outside the broker (a witness line for
        // `audit verify --witness`).
        "checkpoint" => {
            broker.audit.checkpoint().await?;
            let dir = broker.config.storage.data_dir.join("audit");
            let latest = crate::audit::latest_checkpoint(&dir)?;
            Ok(Reply::json(StatusCode::OK, &latest))
        }
        "verify" => {
            let dir = broker.config.storage.data_dir.join("audit");
            // Against the configured witness too, once it holds a checkpoint: a cut tail is caught even
            // when `checkpoints.jsonl` went with it.
            let witness = broker.config.audit.witness(&broker.config.storage.data_dir);
            let verified = if std::fs::metadata(&witness).is_ok_and(|m| m.len() > 0) {
                crate::audit::check_witness(&dir, &witness).map(|(r, _)| r)
            } else {
                crate::audit::verify_dir(&dir)
            };
            Ok(match verified {
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
                user_id: req.query("user_id"),
                issue: req.query("issue"),
            };
            let (before, limit) = page_params(req)?;
            let entries = search(broker, &filter, before, limit).await?;
            Ok(Reply::json(StatusCode::OK, &page(entries, limit, |e| json!(e))))
        }
        _ => Err(ApiError::no_route(&req.parts.method, req.path())),
    }
}

/// The citizen's view of one entry: when, who, why, what — no certificate fingerprints or hashes. The
/// official's ID is shown as the purpose's `official_id_shown` says (masked by default); the legal basis
/// the official declared is shown as declared.
fn citizen_view(broker: &Broker, e: &AuditEntry) -> Value {
    let mut view = json!({
        "time": e.time,
        "agency": e.record.agency,
        "purpose": e.record.purpose,
        "channel": e.record.channel,
        "operation": e.record.operation,
        "fields": e.record.fields,
        "status": e.record.status,
    });
    if let Some(acc) = &e.record.accountability {
        let shown = purpose_of(broker, e)
            .map(|p| p.official_id_shown)
            .unwrap_or_default();
        if let Some(official) = acc.user_id.as_deref().and_then(|u| shown.show(u)) {
            view["official"] = json!(official);
        }
        if let Some(basis) = &acc.legal_basis {
            view["legal_basis"] = json!(basis);
        }
    }
    view
}

/// The catalogue version that served an entry (the one in force now for entries older than versions).
fn catalogue_of(broker: &Broker, e: &AuditEntry) -> std::sync::Arc<crate::catalogue::CatalogueVersion> {
    e.record
        .catalogue_version
        .as_deref()
        .and_then(|v| broker.catalogues.get(v))
        .unwrap_or_else(|| broker.catalogue())
}

/// The purpose an entry was served under, as the catalogue version that served it declares it (`None`
/// when the entry names no purpose, or one that version does not know).
fn purpose_of(broker: &Broker, e: &AuditEntry) -> Option<crate::policy::Purpose> {
    let purpose = e.record.purpose.as_deref()?;
    catalogue_of(broker, e).get(purpose).cloned()
}

/// Is this entry still hidden from the citizen at `now`? Only under a purpose that may hide, and never
/// longer than that purpose's cap from the time of the access, whatever the request asked: a refused
/// request under a purpose that may not hide stays visible.
fn hidden_from_citizen(broker: &Broker, e: &AuditEntry, now: DateTime<Utc>) -> bool {
    let Some(until) = e
        .record
        .accountability
        .as_ref()
        .and_then(|a| a.hidden_until_time())
    else {
        return false;
    };
    let cap_days = purpose_of(broker, e).map_or(0, |p| p.max_hidden_days);
    let Some(at) = e.parsed_time() else {
        return false;
    };
    cap_days > 0 && now < until.min(at + chrono::Duration::days(i64::from(cap_days)))
}

/// Entries about one citizen, newest first, paginated. An access hidden for an investigation is left
/// out until its date has come (by the broker's clock); it stays in the chain and in operator searches.
pub async fn access_log(broker: &Broker, req: &ReadRequest, id: &CitizenId) -> Result<Value, ApiError> {
    let (before, limit) = page_params(req)?;
    let filter = AuditFilter {
        citizen_id: Some(id.as_str().to_owned()),
        ..AuditFilter::default()
    };
    let entries = search(broker, &filter, before, limit).await?;
    // The cursor follows what was read, so a page thinned by hidden entries still leads to the next one.
    let next = next_before(&entries, limit);
    let now = broker.clock.now();
    let visible: Vec<Value> = entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| !hidden_from_citizen(broker, e, now))
        .map(|e| citizen_view(broker, e))
        .collect();
    Ok(json!({ "entries": visible, "next_before": next }))
}
