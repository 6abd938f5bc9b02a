//! Channel: checkpoint check-ins (seed 000). Agencies, businesses, restaurants, hotels and supermarkets run
//! checkpoints where people's CCCD QR is scanned. A checkpoint is registered to the agency that runs it; a
//! scan is checked against the record (name and birth date), stored on the citizen's record as a check-in,
//! and answered with only what the gate needs (name and `covid_status`). The health authority — and only it,
//! under `contact-tracing` — may list who checked in at a checkpoint within a time window (F1 candidates):
//! IDs and times only, marked as bulk processing in the audit trail.

use chrono::{DateTime, Duration, Utc};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::canonical::{self, History};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, ReadRequest, Reply};
use crate::registry::Agency;

use crate::checkpoint::{key_time, NewCheckpoint};
pub use crate::checkpoint::{Checkpoint, CheckpointKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scan {
    /// The raw CCCD QR payload, or…
    qr: Option<String>,
    /// …a bare 12-digit ID where the citizen has no chip card yet.
    citizen_id: Option<String>,
    /// When the card was scanned (RFC 3339); default now.
    time: Option<String>,
}

/// Longest window a contact-tracing query may span.
pub const MAX_TRACE_WINDOW_DAYS: i64 = 21;

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, format!("{name}: not an RFC 3339 time")))
}

/// The checkpoint, which must exist and (for scans and listing) belong to `agency`.
async fn owned_checkpoint(broker: &Broker, agency: &Agency, id: &str) -> Result<Checkpoint, ApiError> {
    let cp = broker
        .checkpoints
        .get(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownCheckpoint, format!("no checkpoint {id}")))?;
    if cp.agency != agency.code {
        return Err(ApiError::new(
            ErrorCode::CheckpointNotOwned,
            format!("checkpoint {id} belongs to another agency"),
        ));
    }
    Ok(cp)
}

/// Routes under `/v1/checkpoints`.
pub async fn route(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    rest: &[&str],
) -> Result<Reply, ApiError> {
    exchange.channel = "checkpoint".into();
    let method = &req.parts.method;
    match (method, rest) {
        (&Method::POST, []) => {
            exchange.operation = Some(Operation::CheckpointRegister);
            canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
                .and_then(|p| require(p, "checkpoint-checkin"))?;
            let new: NewCheckpoint = crate::json::body(req)?;
            let cp = new.into_checkpoint(&agency.code)?;
            broker.checkpoints.insert(&cp).await?;
            Ok(Reply::json(StatusCode::CREATED, &json!({ "checkpoint": cp })))
        }
        (&Method::GET, []) => {
            exchange.operation = Some(Operation::CheckpointList);
            canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
                .and_then(|p| require(p, "checkpoint-checkin"))?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "checkpoints": broker.checkpoints.for_agency(&agency.code).await? }),
            ))
        }
        (&Method::POST, [cp, "checkins"]) => scan(broker, exchange, agency, req, cp).await,
        (&Method::GET, [cp, "checkins"]) => trace(broker, exchange, agency, req, cp).await,
        _ => Err(ApiError::no_route(method, req.path())),
    }
}

fn require(
    purpose: crate::catalogue::PurposeInForce,
    id: &str,
) -> Result<crate::catalogue::PurposeInForce, ApiError> {
    if purpose.id == id {
        Ok(purpose)
    } else {
        Err(ApiError::new(
            ErrorCode::PurposeNotAllowed,
            format!("this route serves purpose {id} only"),
        ))
    }
}

async fn scan(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    cp: &str,
) -> Result<Reply, ApiError> {
    exchange.operation = Some(Operation::CheckpointCheckin);
    let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
        .and_then(|p| require(p, "checkpoint-checkin"))?;
    let cp = owned_checkpoint(broker, agency, cp).await?;
    let scan: Scan = crate::json::body(req)?;
    let (id, qr) = match (scan.qr, scan.citizen_id) {
        (Some(payload), None) => {
            let qr = crate::qr::parse(&payload)?;
            (qr.citizen_id.clone(), Some(qr))
        }
        (None, Some(raw)) => (crate::citizen_id::CitizenId::parse(&raw)?, None),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of qr or citizen_id",
            ))
        }
    };
    exchange.citizen_id = Some(id.as_str().to_string());
    let now = Utc::now();
    let time = match scan.time {
        Some(t) => parse_time("time", &t)?,
        None => now,
    };
    if time > now + Duration::minutes(5) || time < now - Duration::days(MAX_TRACE_WINDOW_DAYS) {
        return Err(ApiError::new(
            ErrorCode::InvalidTime,
            "the scan time must be within the last 21 days",
        ));
    }
    let record = canonical::fetch(broker, exchange, &id).await?;
    if let Some(qr) = &qr {
        canonical::check_qr_matches(qr, &record)?;
    }
    let entry = json!({
        "checkpoint_id": cp.id,
        "time": key_time(time),
        "source_record_id": format!("{}@{}", cp.id, key_time(time)),
    });
    let (status, _) = canonical::append(broker, exchange, &purpose, &id, History::CheckIns, entry).await?;
    broker.checkpoints.index(&cp.id, time, id.as_str()).await?;
    let fields = purpose.release_set(None, &broker.schema)?;
    let answer = canonical::release(exchange, &record, &fields);
    exchange.fields.push("checkins".into());
    exchange.operation = Some(Operation::CheckpointCheckin);
    Ok(Reply::json(
        status,
        &json!({ "checkpoint": cp.id, "time": key_time(time), "citizen": answer }),
    ))
}

async fn trace(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    cp_id: &str,
) -> Result<Reply, ApiError> {
    exchange.operation = Some(Operation::ContactTracing);
    canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
        .and_then(|p| require(p, "contact-tracing"))?;
    let cp = broker
        .checkpoints
        .get(cp_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownCheckpoint, format!("no checkpoint {cp_id}")))?;
    let (from, to) = match (req.query("from"), req.query("to")) {
        (Some(f), Some(t)) => (parse_time("from", &f)?, parse_time("to", &t)?),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "give the window as from=…&to=… (RFC 3339)",
            ))
        }
    };
    if to <= from || to - from > Duration::days(MAX_TRACE_WINDOW_DAYS) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "the window must be positive and at most 21 days",
        ));
    }
    canonical::meter(broker, exchange).await?;
    let checkins = broker.checkpoints.checkins(&cp.id, from, to).await?;
    exchange.bulk = true;
    // Each person released gets an entry of their own, so contact tracing shows in their access log.
    exchange.also_concerns = checkins.iter().map(|(id, _)| id.clone()).collect();
    exchange.also_concerns.sort();
    exchange.also_concerns.dedup();
    exchange.fields = vec![
        "checkins[].checkpoint_id".into(),
        "checkins[].time".into(),
        "citizen_id".into(),
    ];
    let people: Vec<Value> = checkins
        .iter()
        .map(|(id, t)| json!({ "citizen_id": id, "time": t }))
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({ "checkpoint": cp.id, "from": key_time(from), "to": key_time(to), "count": people.len(), "checkins": people }),
    ))
}
