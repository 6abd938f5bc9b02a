//! Stage: the pipeline. One request, from the verified peer to the response, stage by stage in
//! `run`: identify → admit → read body → route → audit → log → encode. Routing hands the request to
//! its front door (the canonical API, a connector, SMS, checkpoints, or the admin side), which decodes it
//! and runs the canonical operations (authorize → meter → store → release, `canonical`).
//!
//! The listeners (`server`) call `run` once per request; nothing here knows about sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use tracing::Instrument;

use crate::admission::{InFlight, InFlightSlot};
use crate::audit::{AuditRecord, AuditSink};
use crate::broker::Broker;
use crate::connector::Connector;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{mask_citizen_ids, Exchange, Operation, ReadRequest, Reply, Side};
use crate::identity::PeerIdentity;
use crate::metrics::Stage;
use crate::quota::QuotaCounters;
use crate::registry::{Agency, AgencyDirectory};

/// Answer one request from `peer` on `side`. `pending` counts bytes read on the connection since the
/// last request was consumed (the listener tells a half-sent request from an idle one by it).
pub(crate) async fn run(
    side: Side,
    broker: Arc<Broker>,
    peer: Arc<PeerIdentity>,
    in_flight: Arc<InFlight>,
    pending: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let route = format!("{} {}", req.method(), mask_citizen_ids(req.uri().path()));
    let mut exchange = Exchange::new(side, peer, route, broker.catalogue());
    let span = tracing::info_span!(
        "request",
        request_id = %exchange.request_id,
        route = %exchange.route,
        agency = tracing::field::Empty
    );
    let request_span = span.clone();
    async move {
        // identify: the connector the path belongs to, so that even a refused body is answered in its dialect.
        let connector = match side {
            Side::Agency => broker.connectors.find(req.method(), req.uri().path()),
            Side::Admin => None,
        };
        // admit: the registry looked up once; an agency over its concurrency cap goes no further.
        let (agency, _slot) = match admit(&broker, side, &mut exchange, &in_flight) {
            Ok(admitted) => admitted,
            Err(e) => {
                let reply = refusal(&mut exchange, connector, &e);
                let reply = audit(&broker, side, &exchange, reply).await;
                tracing::info!(status = reply.status.as_u16(), code = %e.code, "answered");
                return into_response(reply, &exchange.request_id);
            }
        };
        // The trace the agency sent (or, in front of an upstream provider, a new one) goes upstream and
        // into the audit entry.
        if side == Side::Agency {
            exchange.traceparent = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::upstream::parse_traceparent)
                .or_else(|| broker.store.is_remote().then(crate::upstream::new_traceparent));
        }
        // read body
        let started = Instant::now();
        let read = read_body(&broker, &mut exchange, req).await;
        broker.metrics.observe_since(Stage::Decode, started);
        // The request is consumed: any byte read from here on belongs to the next request's head.
        pending.store(0, Ordering::Relaxed);
        // route: the front door decodes, authorizes, meters, stores, releases and encodes.
        let reply = match read {
            Ok(read) => match side {
                Side::Agency => {
                    let trace = exchange.traceparent.clone();
                    let door = agency_door(&broker, &mut exchange, agency, connector, read);
                    crate::upstream::with_trace(trace, door).await
                }
                Side::Admin => match health(&broker, &mut exchange, read.path()) {
                    Some(health) => health,
                    None => crate::admin::handle(&broker, &mut exchange, read).await,
                },
            },
            Err(e) => refusal(&mut exchange, connector, &e),
        };
        // audit: durable before the answer leaves.
        let reply = audit(&broker, side, &exchange, reply).await;
        // log
        if let Some(agency) = &exchange.agency {
            request_span.record("agency", agency.as_str());
        }
        log(&broker, side, &exchange, &reply);
        // encode
        let started = Instant::now();
        let response = into_response(reply, &exchange.request_id);
        broker.metrics.observe_since(Stage::Encode, started);
        response
    }
    .instrument(span)
    .await
}

/// The agency bound to the peer (looked up once, for the whole request) and, on the agency listener, a
/// slot under its concurrency cap: 429 `concurrency_limit` when it has none left. Operators are never
/// capped.
fn admit(
    broker: &Broker,
    side: Side,
    exchange: &mut Exchange,
    in_flight: &Arc<InFlight>,
) -> Result<(Option<Agency>, Option<InFlightSlot>), ApiError> {
    if side == Side::Admin {
        return Ok((None, None));
    }
    let directory: &dyn AgencyDirectory = &broker.registry;
    let agency = directory.by_fingerprint(&exchange.peer.fingerprint_sha256);
    let key = match &agency {
        Some(a) => a.code.clone(),
        None => format!("cert:{}", exchange.peer.fingerprint_sha256),
    };
    // Known before the body is read, so that a refusal on the way (slow body) names the agency.
    exchange.agency = agency.as_ref().map(|a| a.code.clone());
    match in_flight.try_acquire(&key) {
        Some(slot) => Ok((agency, Some(slot))),
        None => {
            exchange.operation = Some(Operation::ConcurrencyLimit);
            exchange.body_sha256 = broker.audit.body_hash(b"");
            let mut err = ApiError::new(
                ErrorCode::ConcurrencyLimit,
                format!(
                    "more than {} requests in flight for this agency; retry shortly",
                    in_flight.cap
                ),
            );
            err.retry_after = Some(1);
            Err(err)
        }
    }
}

/// A request refused before any front door saw it, answered in the connector's dialect if it has one.
fn refusal(exchange: &mut Exchange, connector: Option<&Connector>, e: &ApiError) -> Reply {
    match connector {
        Some(c) => {
            exchange.channel = c.name.clone();
            crate::doors::connector::error_reply(c, e, &exchange.request_id)
        }
        None => Reply::error(e, &exchange.request_id),
    }
}

/// Route an agency request to its front door: health, then (for a registered, active agency) the
/// checkpoints, the SMS gateway, the canonical API, or a connector.
async fn agency_door(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: Option<Agency>,
    connector: Option<&Connector>,
    req: ReadRequest,
) -> Reply {
    let routed = async {
        if let Some(health) = health(broker, exchange, req.path()) {
            return Ok(health);
        }
        let method = &req.parts.method;
        let path = req.path();
        // The answer-signing keys are public: any connected client may fetch them to check a signature.
        if method == Method::GET && path == crate::signed_answer::JWKS_PATH {
            exchange.operation = Some(Operation::Jwks);
            let mut reply = Reply::json(StatusCode::OK, broker.answer_keys.jwks());
            reply.content_type = "application/jwk-set+json";
            return Ok(reply);
        }
        // X-Road authenticates and reads the accountability headers itself, to answer in its own form.
        if let Some(protocol) = crate::doors::xroad::Protocol::of(path) {
            return Ok(crate::doors::xroad::handle(broker, exchange, agency, protocol, &req).await);
        }
        let agency = crate::admission::authenticate(exchange, agency)?;
        crate::canonical::declare_accountability(exchange, &req.parts.headers)?;
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (_, ["v1", "checkpoints", rest @ ..]) => {
                crate::doors::checkpoint::route(broker, exchange, &agency, &req, rest).await
            }
            (&Method::POST, ["v1", "sms", "inbound"]) => {
                crate::doors::sms::inbound(broker, exchange, &agency, &req).await
            }
            _ if crate::doors::api::serves(method, path, &segments) => {
                crate::doors::api::route(broker, exchange, &agency, &req, &segments).await
            }
            _ => match connector {
                Some(c) => Ok(crate::doors::connector::handle(broker, exchange, &agency, c, &req).await),
                None if broker.connectors.has_path(path) => Err(ApiError::method_not_allowed(method, path)),
                None => Err(ApiError::no_route(method, path)),
            },
        }
    };
    match routed.await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e, &exchange.request_id),
    }
}

/// `GET /healthz`, the same on both listeners: the answer, or `None` for any other path. 503
/// `store_unavailable` while the database has failed (until the supervisor has reopened it); in upstream
/// provider mode the provider's reachability too (503 `upstream_unavailable` while it is unreachable).
fn health(broker: &Broker, exchange: &mut Exchange, path: &str) -> Option<Reply> {
    (path == "/healthz").then(|| {
        exchange.operation = Some(Operation::Health);
        if let Some((dependency, _cause)) = broker.dependency_failure() {
            // Which dependency is down, for the operator's probe; the cause (a host, an OS error) is logged.
            let err = ApiError::new(ErrorCode::StoreUnavailable, crate::store::UNAVAILABLE);
            let mut reply = Reply::error(&err, &exchange.request_id);
            let mut body = err.to_json(&exchange.request_id);
            body["error"]["dependency"] = dependency.into();
            reply.body = serde_json::to_vec(&body).unwrap_or_default().into();
            return reply;
        }
        if broker.store_failure().is_some() {
            // The supervisor has logged the cause; a health probe every few seconds need not repeat it.
            return Reply::error(
                &ApiError::new(ErrorCode::StoreUnavailable, crate::store::UNAVAILABLE),
                &exchange.request_id,
            );
        }
        // An upstream provider's reachability (its probe logs the cause).
        match broker.store.health() {
            Ok(None) => Reply::json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            Ok(Some(upstream)) => Reply::json(
                StatusCode::OK,
                &serde_json::json!({ "status": "ok", "upstream": upstream }),
            ),
            Err(e) => Reply::error(&e, &exchange.request_id),
        }
    })
}

/// Read the body within the size and time limits, hashing it for the audit trail (keyed: see
/// `audit::AuditLog::body_hash`). The request target is checked first ([`refuse_ambiguous_target`]),
/// and a declared length over the limit is refused before a byte of the body is awaited.
async fn read_body(
    broker: &Broker,
    exchange: &mut Exchange,
    req: Request<Incoming>,
) -> Result<ReadRequest, ApiError> {
    let limits = &broker.config.limits;
    let (parts, body) = req.into_parts();
    let head_bytes = parts.uri.to_string().len()
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes > limits.max_header_bytes {
        exchange.body_sha256 = broker.audit.body_hash(b"");
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request headers are over the limit of {} bytes",
                limits.max_header_bytes
            ),
        ));
    }
    refuse_ambiguous_target(&parts.uri)?;
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        exchange.body_sha256 = broker.audit.body_hash(b"");
        return Err(body_too_large(limits.max_body_bytes));
    }
    let limited = Limited::new(body, limits.max_body_bytes);
    let collected = tokio::time::timeout(
        Duration::from_millis(limits.request_timeout_ms),
        limited.collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            exchange.body_sha256 = broker.audit.body_hash(b"");
            return Err(body_too_large(limits.max_body_bytes));
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                ErrorCode::BadBody,
                format!("could not read the request body: {e}"),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                "the request body arrived too slowly",
            ))
        }
    };
    exchange.body_sha256 = broker.audit.body_hash(&body);
    Ok(ReadRequest { parts, body })
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body is over the limit of {limit} bytes"),
    )
}

/// One rule for every route on both listeners, applied before routing: a path with an empty segment
/// (`//v1/…`, `/v1/citizens/{id}/`) names no resource (404), and a query parameter given twice
/// (`?purpose=a&purpose=b`) is refused (400 `duplicate_parameter`) rather than one of them picked.
fn refuse_ambiguous_target(uri: &hyper::Uri) -> Result<(), ApiError> {
    let path = uri.path();
    if path != "/"
        && path
            .strip_prefix('/')
            .is_none_or(|p| p.split('/').any(str::is_empty))
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {}: empty path segment", mask_citizen_ids(path)),
        ));
    }
    if let Some(query) = uri.query() {
        let mut seen = std::collections::HashSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let name = crate::exchange::decode(pair.split_once('=').map_or(pair, |(k, _)| k));
            if !seen.insert(name.clone()) {
                return Err(ApiError::new(
                    ErrorCode::DuplicateParameter,
                    format!("query parameter {name} is given more than once"),
                ));
            }
        }
    }
    Ok(())
}

/// Record the exchange in the audit trail, then hand back the reply to send. If the trail cannot be
/// written the reply is replaced by 503 `audit_unavailable`: nothing leaves unaccounted. Health checks,
/// metrics scrapes and console assets on the admin listener are not recorded (they touch no data).
/// On the agency listener the final answer is signed (`signed_answer`) over its body, the
/// request id, agency, purpose and the audit entry's time.
pub(crate) async fn audit(broker: &Broker, side: Side, exchange: &Exchange, reply: Reply) -> Reply {
    let (reply, time) = record(broker, side, exchange, reply).await;
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
    match HeaderValue::from_str(&signature) {
        Ok(value) => reply.headers.push((
            HeaderName::from_static(crate::signed_answer::SIGNATURE_HEADER),
            value,
        )),
        // base64url and dots only: always a valid header value.
        Err(e) => tracing::error!(error = %e, "answer signature is not a header value"),
    }
    reply
}

/// [`audit`] without the signature: the reply to send and the time to sign it with (the audit entry's,
/// or now when nothing was recorded).
async fn record(broker: &Broker, side: Side, exchange: &Exchange, mut reply: Reply) -> (Reply, String) {
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if side == Side::Admin && exchange.operation.is_some_and(Operation::unaudited_on_admin) {
        return (reply, now());
    }
    if let Some(rate) = &exchange.rate {
        reply.headers.extend(rate.headers());
    }
    let sink: &dyn AuditSink = &*broker.audit_sink;
    let counters: &dyn QuotaCounters = broker.quota_counters();
    let entry = AuditRecord::of(exchange, &reply);
    // A hidden access: a citizen's data served under a purpose that allowed hiding it.
    let hidden = reply.status.is_success()
        && exchange.citizen_id.is_some()
        && exchange.accountability.hidden_until.is_some();
    let unavailable = || {
        Reply::error(
            &ApiError::new(
                ErrorCode::AuditUnavailable,
                "the audit trail cannot be written; nothing was released",
            ),
            &exchange.request_id,
        )
    };
    // A bulk answer is recorded once per citizen it concerns (same request id, not metered again), then as a
    // whole; any failure withholds the answer.
    if reply.status.is_success() {
        for citizen in &exchange.also_concerns {
            let per_citizen = AuditRecord {
                citizen_id: Some(citizen.clone()),
                metered: false,
                ..entry.clone()
            };
            if let Err(e) = sink.append_entry(per_citizen).await {
                tracing::error!(error = %e, "audit append failed; withholding the answer");
                return (unavailable(), now());
            }
        }
    }
    let started = Instant::now();
    let appended = sink.append_entry(entry).await;
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
            if let (Some(billed), Some(agency), Some(purpose)) =
                (entry.record.billed_as(), &exchange.agency, &exchange.purpose)
            {
                let kind = billed.as_str();
                let at = entry.parsed_time().unwrap_or_else(chrono::Utc::now);
                if let Err(e) = counters.record_outcome(agency, purpose, kind, at).await {
                    tracing::error!(error = %e.message, "billing counter not updated; `billing reconcile` will show it");
                }
            }
            (reply, entry.time)
        }
        Err(e) => {
            tracing::error!(error = %e, "audit append failed; withholding the answer");
            (unavailable(), now())
        }
    }
}

/// The log step: metrics, the cause of an internal error, and one line per answered request. A
/// purpose outside the catalogue is counted as `-` so made-up purposes cannot create new series.
fn log(broker: &Broker, side: Side, exchange: &Exchange, reply: &Reply) {
    let purpose = exchange
        .purpose
        .as_deref()
        .filter(|p| exchange.catalogue.get(p).is_some())
        .unwrap_or("-");
    let agency = exchange.agency.as_deref().unwrap_or("-");
    broker.metrics.count_request(crate::metrics::RequestOutcome {
        side,
        agency,
        purpose,
        connector: &exchange.channel,
        status: reply.status.as_u16(),
    });
    if reply.error_code == Some(ErrorCode::QuotaExceeded) {
        broker.metrics.count_quota_rejection(agency, purpose);
    }
    if let Some(cause) = &reply.internal_cause {
        tracing::error!(%cause, "internal error");
    }
    tracing::info!(
        status = reply.status.as_u16(),
        agency,
        code = reply.error_code.map_or("-", ErrorCode::as_str),
        "answered"
    );
}

/// The reply as an HTTP response, with the request id and `Cache-Control: no-store`.
pub(crate) fn into_response(reply: Reply, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    // Citizen data must never sit in a shared cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    for (name, value) in reply.headers {
        headers.append(name, value);
    }
    response
}
