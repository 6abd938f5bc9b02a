//! Channel: checkpoint check-ins (seed 000). Agencies, businesses, restaurants, hotels and supermarkets run
//! checkpoints where people's CCCD QR is scanned. A checkpoint is registered to the agency that runs it; a
//! scan is checked against the record (name and birth date), stored on the citizen's record as a check-in,
//! and answered with only what the gate needs (name and `covid_status`). The health authority — and only it,
//! under `contact-tracing` — may list who checked in at a checkpoint within a time window (F1 candidates):
//! IDs and times only, marked as bulk processing in the audit trail.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::canonical::{self, History};
use crate::error::ApiError;
use crate::registry::Agency;
use crate::server::{Exchange, ReadRequest, Reply};

/// What kind of place runs the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A state agency's gate.
    Agency,
    /// A business or factory.
    Business,
    /// A restaurant.
    Restaurant,
    /// A hotel.
    Hotel,
    /// A supermarket or market.
    Supermarket,
    /// Anything else (patrol, event).
    Other,
}

/// A registered checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stable id, `a-z0-9-`, 2..=64.
    pub id: String,
    /// The agency that registered and runs it.
    pub agency: String,
    /// Display name, e.g. `Siêu thị Co.opmart Cống Quỳnh`.
    pub name: String,
    /// Address, one line.
    pub address: String,
    /// Kind of place.
    pub kind: CheckpointKind,
    /// When it was registered, RFC 3339.
    pub created_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCheckpoint {
    id: String,
    name: String,
    address: String,
    kind: CheckpointKind,
}

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

/// Registered checkpoints and the index of check-ins by checkpoint and time.
pub struct Checkpoints {
    registry: sled::Tree,
    by_checkpoint: sled::Tree,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("checkpoints", e)
}

/// Fixed-width UTC time, so index keys sort by time.
fn key_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Checkpoints {
    /// Open the `checkpoints` and `checkins_by_checkpoint` trees.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            registry: db.open_tree("checkpoints")?,
            by_checkpoint: db.open_tree("checkins_by_checkpoint")?,
        })
    }

    /// A checkpoint by id.
    pub fn get(&self, id: &str) -> Result<Option<Checkpoint>, ApiError> {
        match self.registry.get(id.as_bytes()).map_err(store_error)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
            None => Ok(None),
        }
    }

    /// The checkpoints one agency runs.
    pub fn for_agency(&self, agency: &str) -> Result<Vec<Checkpoint>, ApiError> {
        let mut out = Vec::new();
        for item in self.registry.iter() {
            let (_, bytes) = item.map_err(store_error)?;
            let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(store_error)?;
            if cp.agency == agency {
                out.push(cp);
            }
        }
        Ok(out)
    }

    async fn register(&self, agency: &str, new: NewCheckpoint) -> Result<Checkpoint, ApiError> {
        let id_ok = (2..=64).contains(&new.id.len())
            && new
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !new.id.starts_with('-');
        if !id_ok {
            return Err(ApiError::bad_request(
                "invalid_checkpoint",
                "a checkpoint id is 2-64 of a-z, 0-9 and '-'",
            ));
        }
        if new.name.trim().is_empty() || new.address.trim().is_empty() {
            return Err(ApiError::bad_request(
                "invalid_checkpoint",
                "name and address must not be empty",
            ));
        }
        if crate::schema::has_control_char(&new.name) || crate::schema::has_control_char(&new.address) {
            return Err(ApiError::bad_request(
                "invalid_checkpoint",
                "name and address must not contain control characters",
            ));
        }
        let cp = Checkpoint {
            id: new.id,
            agency: agency.to_string(),
            name: new.name.trim().to_string(),
            address: new.address.trim().to_string(),
            kind: new.kind,
            created_at: key_time(Utc::now()),
        };
        let bytes = serde_json::to_vec(&cp).map_err(store_error)?;
        // compare_and_swap from "absent" makes registration race-free.
        match self
            .registry
            .compare_and_swap(cp.id.as_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(store_error)?
        {
            Ok(()) => {
                crate::store::durable_flush(&self.registry)
                    .await
                    .map_err(store_error)?;
                Ok(cp)
            }
            Err(_) => Err(ApiError::conflict(
                "checkpoint_exists",
                format!("checkpoint {} is already registered", cp.id),
            )),
        }
    }

    async fn index(&self, checkpoint: &str, time: DateTime<Utc>, citizen: &str) -> Result<(), ApiError> {
        let key = format!("{checkpoint}\u{0}{}\u{0}{citizen}", key_time(time));
        self.by_checkpoint
            .insert(key.as_bytes(), &[])
            .map_err(store_error)?;
        crate::store::durable_flush(&self.by_checkpoint)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Check-ins at `checkpoint` with `from <= time < to`, in time order: (citizen ID, time).
    pub fn checkins(
        &self,
        checkpoint: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let start = format!("{checkpoint}\u{0}{}", key_time(from));
        let end = format!("{checkpoint}\u{0}{}", key_time(to));
        let mut out = Vec::new();
        for item in self.by_checkpoint.range(start.as_bytes()..end.as_bytes()) {
            let (key, _) = item.map_err(store_error)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let mut parts = key.split('\u{0}').skip(1);
            if let (Some(time), Some(citizen)) = (parts.next(), parts.next()) {
                out.push((citizen.to_string(), time.to_string()));
            }
        }
        Ok(out)
    }
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::bad_request("invalid_query", format!("{name}: not an RFC 3339 time")))
}

/// The checkpoint, which must exist and (for scans and listing) belong to `agency`.
fn owned_checkpoint(broker: &Broker, agency: &Agency, id: &str) -> Result<Checkpoint, ApiError> {
    let cp = broker
        .checkpoints
        .get(id)?
        .ok_or_else(|| ApiError::not_found("unknown_checkpoint", format!("no checkpoint {id}")))?;
    if cp.agency != agency.code {
        return Err(ApiError::forbidden(
            "checkpoint_not_owned",
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
            exchange.operation = "checkpoint:register".into();
            canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
                .and_then(|p| require(p, "checkpoint-checkin"))?;
            let new: NewCheckpoint = crate::admin::json_body(req)?;
            let cp = broker.checkpoints.register(&agency.code, new).await?;
            Ok(Reply::json(StatusCode::CREATED, &json!({ "checkpoint": cp })))
        }
        (&Method::GET, []) => {
            exchange.operation = "checkpoint:list".into();
            canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
                .and_then(|p| require(p, "checkpoint-checkin"))?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "checkpoints": broker.checkpoints.for_agency(&agency.code)? }),
            ))
        }
        (&Method::POST, [cp, "checkins"]) => scan(broker, exchange, agency, req, cp).await,
        (&Method::GET, [cp, "checkins"]) => trace(broker, exchange, agency, req, cp),
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
        Err(ApiError::forbidden(
            "purpose_not_allowed",
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
    exchange.operation = "checkpoint:checkin".into();
    let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
        .and_then(|p| require(p, "checkpoint-checkin"))?;
    let cp = owned_checkpoint(broker, agency, cp)?;
    let scan: Scan = crate::admin::json_body(req)?;
    let (id, qr) = match (scan.qr, scan.citizen_id) {
        (Some(payload), None) => {
            let qr = crate::qr::parse(&payload)?;
            (qr.citizen_id.clone(), Some(qr))
        }
        (None, Some(raw)) => (crate::citizen_id::CitizenId::parse(&raw)?, None),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
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
        return Err(ApiError::unprocessable(
            "invalid_time",
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
    exchange.operation = "checkpoint:checkin".into();
    Ok(Reply::json(
        status,
        &json!({ "checkpoint": cp.id, "time": key_time(time), "citizen": answer }),
    ))
}

fn trace(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    cp_id: &str,
) -> Result<Reply, ApiError> {
    exchange.operation = "contact_tracing".into();
    canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())
        .and_then(|p| require(p, "contact-tracing"))?;
    let cp = broker
        .checkpoints
        .get(cp_id)?
        .ok_or_else(|| ApiError::not_found("unknown_checkpoint", format!("no checkpoint {cp_id}")))?;
    let (from, to) = match (req.query("from"), req.query("to")) {
        (Some(f), Some(t)) => (parse_time("from", &f)?, parse_time("to", &t)?),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give the window as from=…&to=… (RFC 3339)",
            ))
        }
    };
    if to <= from || to - from > Duration::days(MAX_TRACE_WINDOW_DAYS) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "the window must be positive and at most 21 days",
        ));
    }
    canonical::meter(broker, exchange)?;
    let checkins = broker.checkpoints.checkins(&cp.id, from, to)?;
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
