//! Stage: the canonical API on the agency listener. Authenticates the agency (registry), routes the
//! request, and records the outcome in the audit trail before the answer leaves.

use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::Digest;

use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::canonical::{self, History};
use crate::error::ApiError;
use crate::metrics::Stage;
use crate::registry::{Agency, AgencyStatus};
use crate::server::{Exchange, ReadRequest, Reply, Side};

/// Answer one agency request.
pub async fn handle(broker: &Broker, exchange: &mut Exchange, req: ReadRequest) -> Reply {
    match route(broker, exchange, &req).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e, &exchange.request_id),
    }
}

/// The active agency bound to the peer's certificate: 403 `unknown_agency` or `agency_suspended`.
pub fn authenticate(broker: &Broker, exchange: &mut Exchange) -> Result<Agency, ApiError> {
    let Some(agency) = broker.registry.by_fingerprint(&exchange.peer.fingerprint_sha256) else {
        return Err(ApiError::forbidden(
            "unknown_agency",
            format!(
                "the client certificate (SHA-256 {}) is not bound to any registered agency",
                exchange.peer.fingerprint_sha256
            ),
        ));
    };
    exchange.agency = Some(agency.code.clone());
    if agency.status == AgencyStatus::Suspended {
        return Err(ApiError::forbidden(
            "agency_suspended",
            format!("agency {} is suspended", agency.code),
        ));
    }
    Ok(agency)
}

async fn route(broker: &Broker, exchange: &mut Exchange, req: &ReadRequest) -> Result<Reply, ApiError> {
    let method = req.parts.method.clone();
    let path = req.path().to_string();
    if let Some(health) = crate::server::health(broker, exchange, &path) {
        return Ok(health);
    }
    // The answer-signing keys are public: any connected client may fetch them to check a signature.
    if method == Method::GET && path == crate::signed_answer::JWKS_PATH {
        exchange.operation = "jwks".into();
        let mut reply = Reply::json(StatusCode::OK, broker.answer_keys.jwks());
        reply.content_type = "application/jwk-set+json";
        return Ok(reply);
    }
    if let Some(protocol) = crate::xroad::Protocol::of(&path) {
        return Ok(crate::xroad::handle(broker, exchange, protocol, req).await);
    }
    let agency = authenticate(broker, exchange)?;
    let declared = crate::accountability::from_headers(&req.parts.headers)?;
    exchange.accountability = declared.record;
    exchange.bulk |= declared.bulk;
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/whoami") => {
            exchange.operation = "whoami".into();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "agency": agency.code,
                    "name": agency.name,
                    "certificate": &*exchange.peer,
                }),
            ))
        }
        (&Method::GET, "/v1/catalogue") => {
            exchange.operation = "catalogue".into();
            let version = match req.query("version") {
                Some(id) => broker.catalogues.require(&id)?,
                None => exchange.catalogue.clone(),
            };
            Ok(Reply::json(
                StatusCode::OK,
                &crate::openapi::document(broker, &version),
            ))
        }
        (&Method::GET, "/v1/catalogue/versions") => {
            exchange.operation = "catalogue_versions".into();
            Ok(Reply::json(StatusCode::OK, &catalogue_versions(broker, exchange)))
        }
        (&Method::GET, "/v1/catalogue/diff") => {
            exchange.operation = "catalogue_diff".into();
            Ok(Reply::json(
                StatusCode::OK,
                &catalogue_diff(broker, exchange, req)?,
            ))
        }
        (&Method::GET, "/v1/purposes") => {
            exchange.operation = "list_purposes".into();
            let purposes: Vec<_> = exchange
                .catalogue
                .for_agency(&agency.code)
                .into_iter()
                .map(describe_purpose)
                .collect();
            Ok(Reply::json(StatusCode::OK, &json!({ "purposes": purposes })))
        }
        _ => route_resources(broker, exchange, &agency, req, &method, &path).await,
    }
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
        ApiError::bad_request("invalid_query", "give ?from=VERSION (and optionally &to=VERSION)")
    })?;
    let from = broker.catalogues.require(&from)?;
    let to = match req.query("to") {
        Some(id) => broker.catalogues.require(&id)?,
        None => exchange.catalogue.clone(),
    };
    Ok(crate::catalogue::diff(&from, &to))
}

/// What an agency sees of a purpose.
pub(crate) fn describe_purpose(p: &crate::policy::Purpose) -> serde_json::Value {
    json!({
        "id": p.id, "title_vi": p.title_vi, "title_en": p.title_en, "legal_basis": p.legal_basis,
        "read": p.read, "write": p.write, "price_vnd": p.price_vnd,
        "consent_based": p.consent_based, "max_hidden_days": p.max_hidden_days,
    })
}

/// The `fields=a,b` query parameter as a list.
fn requested_fields(req: &ReadRequest) -> Option<Vec<String>> {
    req.query("fields").map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

async fn route_resources(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    method: &Method,
    path: &str,
) -> Result<Reply, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "purposes", purpose, "release"]) => {
            exchange.operation = "release_dry_run".into();
            let purpose = canonical::authorize(broker, exchange, agency, Some(purpose))?;
            let requested = requested_fields(req);
            let fields = purpose.release_set(requested.as_deref(), &broker.schema)?;
            let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "purpose": purpose.id, "fields": fields }),
            ))
        }
        (&Method::GET, ["v1", "citizens", id, "covid-certificate"]) => {
            crate::dcc::http::issue(broker, exchange, agency, req, id).await
        }
        (&Method::POST, ["v1", "dcc", "verify"]) => crate::dcc::http::verify(broker, exchange, req),
        (&Method::GET, ["v1", "citizens", id]) => {
            let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
            let id = canonical::citizen_id(exchange, id)?;
            let requested = requested_fields(req);
            let record = canonical::read(broker, exchange, &purpose, &id, requested.as_deref()).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "purpose": purpose.id, "citizen": record }),
            ))
        }
        (_, ["v1", "checkpoints", rest @ ..]) => {
            crate::checkpoint::route(broker, exchange, agency, req, rest).await
        }
        (&Method::POST, ["v1", "sms", "inbound"]) => crate::sms::inbound(broker, exchange, agency, req).await,
        (&Method::GET, ["v1", "citizens", id, "access-log"]) => {
            exchange.operation = "access_log".into();
            let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
            if purpose.id != "citizen-self-service" {
                return Err(ApiError::forbidden(
                    "purpose_not_allowed",
                    "the access log is released only under purpose citizen-self-service",
                ));
            }
            let id = canonical::citizen_id(exchange, id)?;
            let log = crate::audit_api::access_log(broker, req, &id).await?;
            exchange.fields = vec!["access_log".into()];
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "citizen_id": id.as_str(), "access_log": log }),
            ))
        }
        (&Method::POST, ["v1", "citizens", id, history]) if History::from_segment(history).is_some() => {
            let history = History::from_segment(history).ok_or_else(|| ApiError::no_route(method, path))?;
            let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
            let id = canonical::citizen_id(exchange, id)?;
            let entry: serde_json::Value = crate::admin::json_body(req)?;
            if !entry.is_object() {
                return Err(ApiError::unprocessable(
                    "schema_violation",
                    "/: the body must be a JSON object",
                ));
            }
            let (status, stored) = canonical::append(broker, exchange, &purpose, &id, history, entry).await?;
            Ok(Reply::json(
                status,
                &json!({ "citizen_id": id.as_str(), history.field(): stored }),
            ))
        }
        (_, ["v1", "citizens", ..]) | (_, ["v1", "purposes", ..]) => {
            Err(ApiError::method_not_allowed(method, path))
        }
        _ => match broker.connectors.find(method, path) {
            Some(connector) => Ok(crate::connector::handle(broker, exchange, agency, connector, req).await),
            None if broker.connectors.has_path(path) => Err(ApiError::method_not_allowed(method, path)),
            None => Err(ApiError::no_route(method, path)),
        },
    }
}

/// Record the exchange in the audit trail, then hand back the reply to send. If the trail cannot be
/// written the reply is replaced by 503 `audit_unavailable`: nothing leaves unaccounted.
/// Health checks on the admin listener are not recorded (they touch no data and no registry).
/// On the agency listener the final answer is signed ([`crate::signed_answer`]) over its body, the
/// request id, agency, purpose and the audit entry's time.
pub async fn record(broker: &Broker, side: Side, exchange: &Exchange, reply: Reply) -> Reply {
    let (reply, time) = record_in_trail(broker, side, exchange, reply).await;
    match side {
        Side::Agency => sign(broker, exchange, reply, &time),
        Side::Admin => reply,
    }
}

/// Add the detached JWS of `reply` to its headers.
fn sign(broker: &Broker, exchange: &Exchange, mut reply: Reply, time: &str) -> Reply {
    let signature = broker.answer_keys.sign(
        &reply.body,
        crate::signed_answer::Exchange {
            request_id: &exchange.request_id,
            agency: exchange.agency.as_deref(),
            purpose: exchange.purpose.as_deref(),
            time,
        },
    );
    match hyper::header::HeaderValue::from_str(&signature) {
        Ok(value) => reply.headers.push((
            hyper::header::HeaderName::from_static(crate::signed_answer::SIGNATURE_HEADER),
            value,
        )),
        // base64url and dots only: always a valid header value.
        Err(e) => tracing::error!(error = %e, "answer signature is not a header value"),
    }
    reply
}

/// [`record`] without the signature: the reply to send and the time to sign it with (the audit entry's,
/// or now when nothing was recorded).
async fn record_in_trail(
    broker: &Broker,
    side: Side,
    exchange: &Exchange,
    mut reply: Reply,
) -> (Reply, String) {
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Metrics scrapes and the console's CSS/JS touch no data and come often: no trail entry each.
    if side == Side::Admin
        && matches!(
            exchange.operation.as_str(),
            "health" | "admin:metrics" | crate::console::ASSET_OPERATION
        )
    {
        return (reply, now());
    }
    if let Some(rate) = &exchange.rate {
        reply.headers.extend(rate.headers());
    }
    let served = exchange.metered && reply.status.is_success();
    let entry = AuditRecord {
        agency: exchange.agency.clone(),
        cert_fingerprint: Some(exchange.peer.fingerprint_sha256.clone()),
        purpose: exchange.purpose.clone(),
        channel: exchange.channel.clone(),
        operation: if exchange.operation.is_empty() {
            exchange.route.clone()
        } else {
            exchange.operation.clone()
        },
        citizen_id: exchange.citizen_id.clone(),
        // A refused or failed request released nothing, whatever the stages had noted.
        fields: if reply.status.is_success() {
            exchange.fields.clone()
        } else {
            Vec::new()
        },
        status: reply.status.as_u16(),
        error_code: reply.error_code.map(str::to_string),
        request_id: exchange.request_id.clone(),
        request_sha256: exchange.body_sha256.clone(),
        bulk: exchange.bulk,
        metered: exchange.metered,
        catalogue_version: Some(exchange.catalogue.id.clone()),
        answer_sha256: Some(hex::encode(sha2::Sha256::digest(&reply.body))),
        accountability: (!exchange.accountability.is_empty()).then(|| exchange.accountability.clone()),
    };
    // A hidden access: a citizen's data served under a purpose that allowed hiding it.
    let hidden = reply.status.is_success()
        && exchange.citizen_id.is_some()
        && exchange.accountability.hidden_until.is_some();
    // A bulk answer is recorded once per citizen it concerns (same request id, not metered again), then as a
    // whole; any failure withholds the answer.
    if reply.status.is_success() {
        for citizen in &exchange.also_concerns {
            let per_citizen = AuditRecord {
                citizen_id: Some(citizen.clone()),
                metered: false,
                ..entry.clone()
            };
            if let Err(e) = broker.audit.append(per_citizen).await {
                tracing::error!(error = %e, "audit append failed; withholding the answer");
                return (audit_unavailable(exchange), now());
            }
        }
    }
    let started = std::time::Instant::now();
    let appended = broker.audit.append(entry).await;
    broker.metrics.observe_since(Stage::AuditFlush, started);
    match appended {
        Ok(entry) => {
            if hidden {
                // Oversight sees how much is hidden, whatever the citizens cannot see yet.
                broker
                    .metrics
                    .count_hidden_access(exchange.purpose.as_deref().unwrap_or("-"));
            }
            // Billing totals follow the audit trail: counted only once the entry is durable.
            let outcome = if served {
                Some("served")
            } else if reply.error_code == Some("quota_exceeded") {
                Some("refused")
            } else {
                None
            };
            if let (Some(kind), Some(agency), Some(purpose)) = (outcome, &exchange.agency, &exchange.purpose)
            {
                let at = chrono::DateTime::parse_from_rfc3339(&entry.time)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_else(|_| chrono::Utc::now());
                if let Err(e) = broker.quota.record_outcome(agency, purpose, kind, at) {
                    tracing::error!(error = %e.message, "billing counter not updated; `billing reconcile` will show it");
                }
            }
            (reply, entry.time)
        }
        Err(e) => {
            tracing::error!(error = %e, "audit append failed; withholding the answer");
            (audit_unavailable(exchange), now())
        }
    }
}

fn audit_unavailable(exchange: &Exchange) -> Reply {
    Reply::error(
        &ApiError::unavailable(
            "audit_unavailable",
            "the audit trail cannot be written; nothing was released",
        ),
        &exchange.request_id,
    )
}

/// Work to do once the last request has been answered: a final signed audit checkpoint.
pub async fn on_shutdown(broker: &Broker) {
    if let Err(e) = broker.audit.checkpoint().await {
        tracing::error!(error = %e, "final audit checkpoint failed");
    }
}

/// Seed a synthetic population into an empty store, validating every record like any other write.
pub async fn seed_demo(broker: &Broker, citizens: usize) -> Result<(), crate::broker::StartError> {
    if broker.store.count() > 0 || citizens == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut progress = crate::progress::Progress::start("seeding citizens", Some(citizens as u64));
    for record in crate::population::generate(citizens, 2021) {
        progress.advance(1);
        canonical::validate_record(broker, &record).map_err(|e| {
            crate::broker::StartError::Other(format!("synthetic record invalid: {}", e.message))
        })?;
        let id = record["citizen_id"].as_str().unwrap_or_default().to_string();
        batch.push((id, record));
        if batch.len() == 10_000 {
            broker
                .store
                .put_many(std::mem::take(&mut batch))
                .await
                .map_err(|e| crate::broker::StartError::Other(e.message))?;
        }
    }
    broker
        .store
        .put_many(batch)
        .await
        .map_err(|e| crate::broker::StartError::Other(e.message))?;
    progress.finish();
    tracing::info!(
        citizens,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "seeded synthetic population"
    );
    Ok(())
}

/// Example `curl` lines for the canonical API and connectors, given a `curl` prefix for an agency.
pub fn demo_curl_examples(curl: &dyn Fn(&str) -> String, agency_addr: &str) -> String {
    let a = agency_addr;
    [
        format!("{} 'https://{a}/v1/citizens/001090000001?purpose=public-service-prefill'", curl("dvc")),
        format!("{} 'https://{a}/v1/citizens/001090000001?purpose=covid-qr-status'", curl("pccovid")),
        format!(
            "{} -H 'content-type: application/json' --data-binary @connectors/examples/pccovid-qr-status.json https://{a}/connectors/pccovid/v1/qr-status",
            curl("pccovid")
        ),
        format!(
            "{} -H 'content-type: text/xml' --data-binary @connectors/examples/dvc-tra-cuu.xml https://{a}/connectors/dvc/v1/TraCuuThongTinCongDan",
            curl("dvc")
        ),
        format!(
            "{} -H 'content-type: application/fhir+json' --data-binary @connectors/examples/moh-bundle.json https://{a}/connectors/moh/v1/Immunization",
            curl("moh")
        ),
    ]
    .iter()
    .map(|line| format!("  {line}\n"))
    .collect()
}
