//! Stage: the canonical operations every channel sits on — read a citizen for a purpose, add an entry
//! to a citizen's health history. The canonical HTTP API (`api`) and every connector call these,
//! so policy, store, quota and audit bookkeeping are written once.

use chrono::Utc;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::catalogue::PurposeInForce;
use crate::citizen_id::{check_consistency, CitizenId, Gender};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, ReadRequest};
use crate::policy::{Purpose, Purpose as P};
use crate::quota::QuotaCounters;
use crate::registry::{Agency, AgencyDirectory};
use crate::store::UpdateOutcome;

/// The history lists live with the record's shape; every front door names them through here too.
pub use crate::record::History;

/// The declared purpose, checked against the catalogue and the agency: 400 `purpose_required`,
/// 400 `unknown_purpose`, 403 `purpose_not_allowed`; then the declared accountability against the purpose
/// (consent reference, hiding: see `accountability::check_against`).
pub fn authorize(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    purpose: Option<&str>,
) -> Result<PurposeInForce, ApiError> {
    let purpose = purpose.map(str::trim).filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::PurposeRequired,
            "declare the purpose of the request (?purpose=…)",
        )
    })?;
    exchange.purpose = Some(purpose.to_string());
    let started = std::time::Instant::now();
    let authorized = crate::catalogue::authorize(&exchange.catalogue, purpose, &agency.code);
    broker
        .metrics
        .observe_since(crate::metrics::Stage::Policy, started);
    let purpose = authorized?;
    crate::accountability::check_against(&purpose, &exchange.accountability, broker.clock.now())?;
    Ok(purpose)
}

/// Every catalogue version, the one serving this request marked `in_force` (also on the admin listener).
pub fn catalogue_versions(broker: &Broker, exchange: &Exchange) -> serde_json::Value {
    let in_force = &exchange.catalogue.id;
    let versions: Vec<_> = broker
        .catalogues
        .list()
        .iter()
        .map(|v| v.summary(in_force))
        .collect();
    json!({ "in_force": in_force, "versions": versions })
}

/// `?from=A&to=B` (default `to`: the version in force): what changed, for machines.
pub fn catalogue_diff(
    broker: &Broker,
    exchange: &Exchange,
    req: &ReadRequest,
) -> Result<serde_json::Value, ApiError> {
    let from = req.query("from").ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidQuery,
            "give ?from=VERSION (and optionally &to=VERSION)",
        )
    })?;
    let from = broker.catalogues.require(&from)?;
    let to = match req.query("to") {
        Some(id) => broker.catalogues.require(&id)?,
        None => exchange.catalogue.clone(),
    };
    Ok(crate::catalogue::diff(&from, &to))
}

/// What an agency sees of a purpose.
pub fn describe_purpose(p: &crate::policy::Purpose) -> serde_json::Value {
    json!({
        "id": p.id, "title_vi": p.title_vi, "title_en": p.title_en, "legal_basis": p.legal_basis,
        "read": p.read, "write": p.write, "price_vnd": p.price_vnd,
        "consent_based": p.consent_based, "max_hidden_days": p.max_hidden_days,
    })
}

/// The accountability headers (`X-Road-UserId`, `X-Road-PDU-…`), recorded on the exchange for the audit
/// entry: 400 `invalid_accountability` when malformed. Checked against the purpose by [`authorize`].
pub fn declare_accountability(exchange: &mut Exchange, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
    let declared = crate::accountability::from_headers(headers)?;
    exchange.accountability = declared.record;
    exchange.bulk |= declared.bulk;
    Ok(())
}

/// A well-formed 12-digit ID, recorded on the exchange: 400 `invalid_citizen_id`.
pub fn citizen_id(exchange: &mut Exchange, raw: &str) -> Result<CitizenId, ApiError> {
    let id = CitizenId::parse(raw)?;
    exchange.citizen_id = Some(id.as_str().to_string());
    Ok(id)
}

/// Read one citizen for a purpose: the record projected onto what the purpose releases (intersected
/// with `requested`). The exact released field paths are recorded on the exchange for the audit trail.
pub async fn read(
    broker: &Broker,
    exchange: &mut Exchange,
    purpose: &Purpose,
    id: &CitizenId,
    requested: Option<&[String]>,
) -> Result<Value, ApiError> {
    exchange.operation = Some(Operation::Read);
    let fields = purpose.release_set(requested, &broker.schema)?;
    if fields.is_empty() {
        return Err(ApiError::new(
            ErrorCode::ForbiddenField,
            format!("purpose {} releases no fields", purpose.id),
        ));
    }
    let record = fetch_for_release(broker, exchange, id, &fields, &[]).await?;
    Ok(release(exchange, &record, &fields))
}

/// The stored record with its derived fields, for the broker's own use (matching a QR or a phone number);
/// nothing of it leaves except through [`release`]. 404 `citizen_not_found`.
pub async fn fetch(broker: &Broker, exchange: &mut Exchange, id: &CitizenId) -> Result<Value, ApiError> {
    fetch_fields(broker, exchange, id, None).await
}

/// [`fetch`], reading only what releasing `fields` needs (and the top-level fields `also`, e.g. to match
/// a QR): a read of a name and an address does not decode a citizen's whole health history.
pub async fn fetch_for_release(
    broker: &Broker,
    exchange: &mut Exchange,
    id: &CitizenId,
    fields: &[crate::policy::FieldPath],
    also: &[&str],
) -> Result<Value, ApiError> {
    let mut keep: Vec<&str> = fields.iter().filter_map(|f| f.top_level()).collect();
    keep.extend_from_slice(also);
    if keep.contains(&"covid_status") {
        keep.extend_from_slice(&crate::record::COVID_STATUS_INPUTS);
    }
    fetch_fields(broker, exchange, id, Some(&keep)).await
}

async fn fetch_fields(
    broker: &Broker,
    exchange: &mut Exchange,
    id: &CitizenId,
    keep: Option<&[&str]>,
) -> Result<Value, ApiError> {
    meter(broker, exchange).await?;
    let started = std::time::Instant::now();
    let stored = match keep {
        Some(keep) => broker.store.get_fields(id.as_str(), keep).await,
        None => broker.store.get(id.as_str()).await,
    };
    broker
        .metrics
        .observe_since(crate::metrics::Stage::Store, started);
    let Some(mut record) = stored? else {
        return Err(ApiError::new(
            ErrorCode::CitizenNotFound,
            format!("no citizen {id}"),
        ));
    };
    crate::record::with_derived(&mut record, Utc::now());
    Ok(record)
}

/// Count this request against the agency's quota for its purpose, once, as it reaches the store:
/// 429 `quota_exceeded` when over a limit. The rate-limit figures go on the exchange for the headers.
pub async fn meter(broker: &Broker, exchange: &mut Exchange) -> Result<(), ApiError> {
    if exchange.metered {
        return Ok(());
    }
    let (Some(agency), Some(purpose)) = (exchange.agency.as_deref(), exchange.purpose.as_deref()) else {
        return Err(ApiError::internal("metering a request without agency or purpose"));
    };
    let directory: &dyn AgencyDirectory = &broker.registry;
    let counters: &dyn QuotaCounters = broker.quota_counters();
    let plan = directory.get(agency).and_then(|a| a.plan).unwrap_or_default();
    match counters.meter(agency, &plan, purpose, broker.clock.now()).await {
        Ok(rate) => {
            exchange.metered = true;
            exchange.rate = rate;
            Ok(())
        }
        Err((e, rate)) => {
            exchange.rate = rate;
            Err(e)
        }
    }
}

/// Project a fetched record onto `fields`, recording what was released on the exchange.
pub fn release(exchange: &mut Exchange, record: &Value, fields: &[crate::policy::FieldPath]) -> Value {
    let (projected, released) = P::project(record, fields);
    exchange.fields = released;
    projected
}

/// The stored fields [`check_qr_matches`] reads.
pub const QR_MATCH_FIELDS: [&str; 2] = ["full_name", "birth_date"];

/// Does a scanned CCCD QR belong to this record? Name (NFC, case- and space-insensitive, see
/// `qr::names_match`) and birth date must both agree; 409 `qr_mismatch` otherwise.
pub fn check_qr_matches(qr: &crate::qr::CccdQr, record: &Value) -> Result<(), ApiError> {
    let name_ok = record["full_name"]
        .as_str()
        .is_some_and(|n| crate::qr::names_match(n, &qr.full_name));
    let birth_ok =
        record["birth_date"].as_str() == Some(qr.birth_date.format("%Y-%m-%d").to_string().as_str());
    if name_ok && birth_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::QrMismatch,
            "the QR's name or birth date does not match the citizen's record",
        ))
    }
}

/// Add one entry (vaccination, test result, recovery) to a citizen's history, idempotent on its
/// `source_record_id`: a replay answers 200 with the stored entry, a different entry under the same
/// id 409 `idempotency_conflict`. The whole record is schema-validated before anything is written.
pub async fn append(
    broker: &Broker,
    exchange: &mut Exchange,
    purpose: &Purpose,
    id: &CitizenId,
    history: History,
    entry: Value,
) -> Result<(StatusCode, Value), ApiError> {
    exchange.operation = Some(Operation::Write);
    let field = history.field();
    if !purpose.may_write(field) {
        return Err(ApiError::new(
            ErrorCode::ForbiddenField,
            format!("purpose {} may not write {field}", purpose.id),
        ));
    }
    let Some(source_id) = entry
        .get("source_record_id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(ApiError::new(
            ErrorCode::SchemaViolation,
            format!(
                "/{field}/-/source_record_id: every entry needs a source_record_id (the idempotency key)"
            ),
        ));
    };
    refuse_future_event(history, &entry)?;
    meter(broker, exchange).await?;
    // A provider system holds the rest of the record: the entry is checked here, before it leaves.
    if broker.store.is_remote() {
        broker
            .schema
            .validate_partial(&serde_json::json!({ field: [&entry] }))
            .map_err(|v| ApiError::from(hide_history_position(field, v)))?;
    }
    let validate = |record: &Value| -> Result<(), ApiError> {
        broker
            .schema
            .validate(record)
            .map_err(|v| ApiError::from(hide_history_position(field, v)))
    };
    // Every entry up to here is durable: the store may remember having seen the trail this long.
    let trail_seen = broker.audit.head().0;
    let started = std::time::Instant::now();
    let outcome = broker
        .store
        .append_history(id.as_str(), field, &source_id, entry, &validate)
        .await;
    broker
        .metrics
        .observe_since(crate::metrics::Stage::Store, started);
    let outcome = outcome?;
    if matches!(outcome, UpdateOutcome::Written(_)) {
        raise_audit_high_water(broker, trail_seen)?;
    }
    exchange.fields = vec![field.to_string()];
    Ok(match outcome {
        UpdateOutcome::Written(e) => (StatusCode::CREATED, e),
        UpdateOutcome::Unchanged(e) => (StatusCode::OK, e),
    })
}

/// Where the store keeps the longest audit trail it has seen before a write.
const META_TREE: &str = "meta";
const AUDIT_HIGH_WATER: &[u8] = b"audit_high_water";

/// Remember that the trail had reached `seq` before a store write. A trail found shorter at start-up
/// has lost entries the store outlived ([`audit_high_water`]).
fn raise_audit_high_water(broker: &Broker, seq: u64) -> Result<(), ApiError> {
    let tree = broker
        .db
        .open_tree(META_TREE)
        .map_err(|e| crate::store::unavailable("meta", e))?;
    tree.fetch_and_update(AUDIT_HIGH_WATER, |old| {
        let old = old
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        Some(old.max(seq).to_be_bytes().to_vec())
    })
    .map_err(|e| crate::store::unavailable("meta", e))?;
    Ok(())
}

/// The longest audit trail the store has seen before one of its writes (0 if none yet).
pub fn audit_high_water(db: &sled::Db) -> Result<u64, String> {
    let tree = db.open_tree(META_TREE).map_err(|e| e.to_string())?;
    let value = tree.get(AUDIT_HIGH_WATER).map_err(|e| e.to_string())?;
    Ok(value
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// A violation inside the history being appended to is about the entry being written: name it
/// `/{field}/-/…` (as JSON Patch names an appended item), never by its index, which would tell a writer
/// how many entries a history it may not read holds.
fn hide_history_position(
    field: &str,
    mut violation: crate::schema::SchemaViolation,
) -> crate::schema::SchemaViolation {
    let prefix = format!("/{field}/");
    if let Some(rest) = violation.pointer.strip_prefix(&prefix) {
        let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if tail.len() < rest.len() {
            violation.pointer = format!("{prefix}-{tail}");
        }
    }
    violation
}

/// The entry field holding when the event happened, for the histories whose events can only be past
/// (check-ins have their own window, checked by the checkpoint channel).
fn event_date_field(history: History) -> Option<&'static str> {
    match history {
        History::Vaccinations | History::TestResults => Some("date"),
        History::Recoveries => Some("recovered_on"),
        History::CheckIns => None,
    }
}

/// A dose, test or recovery dated after today (Vietnam time) has not happened: 422 `invalid_value`
/// (a future dose would also skew `covid_status`). The schema checks the format; this checks the day.
fn refuse_future_event(history: History, entry: &Value) -> Result<(), ApiError> {
    let Some(field) = event_date_field(history) else {
        return Ok(());
    };
    let Some(day) = entry
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| s.get(..10))
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    else {
        return Ok(()); // missing or malformed: the schema names it
    };
    let today_in_vietnam = (chrono::Utc::now() + chrono::Duration::hours(7)).date_naive();
    if day > today_in_vietnam {
        return Err(ApiError::new(
            ErrorCode::InvalidValue,
            format!(
                "/{}/-/{field}: {day} is in the future (today is {today_in_vietnam} in Vietnam)",
                history.field()
            ),
        ));
    }
    Ok(())
}

/// Validate a whole record before it is stored: the schema, then what JSON Schema cannot say (the ID
/// agrees with the birth year and gender).
pub fn validate_record(broker: &Broker, record: &Value) -> Result<(), ApiError> {
    broker.schema.validate(record)?;
    let id = CitizenId::parse(record["citizen_id"].as_str().unwrap_or_default())?;
    let birth = record["birth_date"]
        .as_str()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| ApiError::new(ErrorCode::SchemaViolation, "/birth_date: not a date"))?;
    let gender: Gender = record["gender"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::SchemaViolation, "/gender: not male or female"))?;
    check_consistency(&id, birth, gender)?;
    Ok(())
}
