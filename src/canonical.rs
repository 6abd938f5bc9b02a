//! Stage: the canonical operations every channel sits on — read a citizen for a purpose, add an entry
//! to a citizen's health history. The canonical HTTP API ([`crate::api`]) and every connector call these,
//! so policy, store, quota and audit bookkeeping are written once.

use chrono::Utc;
use hyper::StatusCode;
use serde_json::Value;

use crate::broker::Broker;
use crate::citizen_id::{check_consistency, CitizenId, Gender};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation};
use crate::policy::{Purpose, Purpose as P};
use crate::quota::QuotaCounters;
use crate::registry::{Agency, AgencyDirectory};
use crate::store::UpdateOutcome;

/// The history lists live with the record's shape; every front door names them through here too.
pub use crate::record::History;

/// The declared purpose, checked against the catalogue and the agency: 400 `purpose_required`,
/// 400 `unknown_purpose`, 403 `purpose_not_allowed`.
pub fn authorize<'b>(
    broker: &'b Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    purpose: Option<&str>,
) -> Result<&'b Purpose, ApiError> {
    let purpose = purpose.map(str::trim).filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::PurposeRequired,
            "declare the purpose of the request (?purpose=…)",
        )
    })?;
    exchange.purpose = Some(purpose.to_string());
    let started = std::time::Instant::now();
    let authorized = broker.catalogue.authorize(purpose, &agency.code);
    broker
        .metrics
        .observe_since(crate::metrics::Stage::Policy, started);
    authorized
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
    match counters.meter(agency, &plan, purpose).await {
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
/// [`crate::qr::names_match`]) and birth date must both agree; 409 `qr_mismatch` otherwise.
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
    meter(broker, exchange).await?;
    let schema = &broker.schema;
    let change = Box::new(move |record: &mut Value| -> Result<UpdateOutcome, ApiError> {
        let list = record
            .as_object_mut()
            .ok_or_else(|| ApiError::internal("stored record is not an object"))?
            .entry(field)
            .or_insert_with(|| Value::Array(Vec::new()));
        let items = list
            .as_array_mut()
            .ok_or_else(|| ApiError::internal("stored history is not a list"))?;
        if let Some(existing) = items.iter().find(|e| e["source_record_id"] == source_id.as_str()) {
            return if *existing == entry {
                Ok(UpdateOutcome::Unchanged(existing.clone()))
            } else {
                Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    format!("source_record_id {source_id} was already recorded with different content"),
                ))
            };
        }
        items.push(entry.clone());
        schema.validate(record)?;
        Ok(UpdateOutcome::Written(entry.clone()))
    });
    let started = std::time::Instant::now();
    let outcome = broker.store.update(id.as_str(), change).await;
    broker
        .metrics
        .observe_since(crate::metrics::Stage::Store, started);
    let outcome = outcome?;
    exchange.fields = vec![field.to_string()];
    Ok(match outcome {
        UpdateOutcome::Written(e) => (StatusCode::CREATED, e),
        UpdateOutcome::Unchanged(e) => (StatusCode::OK, e),
    })
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
