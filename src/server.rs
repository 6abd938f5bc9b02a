//! Stage: server. The two listeners, per-connection TLS handshake and peer identity, the per-request
//! pipeline (body → registry → route → audit → response), and graceful shutdown.
//!
//! `serve` takes already-bound listeners, so tests bind `127.0.0.1:0` and read the port back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::broker::Broker;
use crate::error::ApiError;
use crate::identity::PeerIdentity;
use crate::listener::Opening;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Agencies.
    Agency,
    /// Operators.
    Admin,
}

/// What one request accumulates on its way through the stages; it becomes the audit entry.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Request id, also in the `x-request-id` header, the error body and the log span.
    pub request_id: String,
    /// The verified peer.
    pub peer: Arc<PeerIdentity>,
    /// Agency code, once the registry knows it.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// `canonical`, a connector name, `xroad-soap`, `xroad-rest` or `admin`.
    pub channel: String,
    /// What was attempted: `read`, `write`, `admin:suspend`, …
    pub operation: String,
    /// The citizen concerned, if any.
    pub citizen_id: Option<String>,
    /// Field paths released (reads) or written (writes).
    pub fields: Vec<String>,
    /// Hex SHA-256 of the request body.
    pub body_sha256: String,
    /// Bulk processing (many citizens at once).
    pub bulk: bool,
    /// HTTP method and path, for the log.
    pub route: String,
    /// The request reached the store and was counted against the quota.
    pub metered: bool,
    /// Rate-limit figures for the response headers, when the plan limits this purpose.
    pub rate: Option<crate::quota::RateInfo>,
    /// Other citizens a bulk answer released data about; each gets an audit entry of their own.
    pub also_concerns: Vec<String>,
    /// The catalogue version in force when the request started: the only one it sees.
    pub catalogue: Arc<crate::catalogue::CatalogueVersion>,
    /// The person behind the request and the reason, as declared ([`crate::accountability`]).
    pub accountability: crate::accountability::Accountability,
}

/// An answer before it becomes an HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// Extra headers (rate-limit headers, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The stable error code when this is an error answer.
    pub error_code: Option<&'static str>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
            error_code: None,
        }
    }

    /// A JSON error answer `{ "error": { code, message, request_id } }`.
    pub fn error(err: &ApiError, request_id: &str) -> Self {
        let mut reply = Self::json(err.status, &err.to_json(request_id));
        reply.error_code = Some(err.code);
        if let Some(secs) = err.retry_after {
            reply
                .headers
                .push((hyper::header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        reply
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A request after its body has been read within the limits.
pub struct ReadRequest {
    /// Method, URI, headers.
    pub parts: hyper::http::request::Parts,
    /// The whole body.
    pub body: Bytes,
}

impl ReadRequest {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The value of query parameter `name`, percent-decoded (the first one if repeated).
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.parts.uri.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }

    /// The `charset` parameter of `Content-Type`, lower-cased and unquoted, if given.
    pub fn charset(&self) -> Option<String> {
        let ct = self.parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        ct.split(';').skip(1).find_map(|param| {
            let (name, value) = param.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("charset"))
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        })
    }

    /// The media type of the body (`Content-Type` without parameters), lower-cased.
    pub fn media_type(&self) -> Option<String> {
        let ct = self.parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        Some(ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// `GET /healthz`, the same on both listeners: the answer, or `None` for any other path. 503
/// `store_unavailable` while the database has failed (until the supervisor has reopened it).
pub fn health(broker: &Broker, exchange: &mut Exchange, path: &str) -> Option<Reply> {
    (path == "/healthz").then(|| {
        exchange.operation = "health".into();
        match broker.store_failure() {
            None => Reply::json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            // The supervisor has logged the cause; a health probe every few seconds need not repeat it.
            Some(_) => Reply::error(
                &ApiError::unavailable("store_unavailable", crate::store::UNAVAILABLE),
                &exchange.request_id,
            ),
        }
    })
}

/// A path fit for logs and audit `operation` text: any run of 9 or more digits (a citizen ID or an old
/// ID number) keeps its first three and last two digits, the rest masked. Citizen data never reaches a
/// log line in the clear.
pub fn mask_citizen_ids(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 9 {
            out.push_str(&digits[..3]);
            out.extend(std::iter::repeat_n('*', digits.len() - 5));
            out.push_str(&digits[digits.len() - 2..]);
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in path.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// Run both listeners until `shutdown` resolves, then stop accepting, let in-flight requests finish
/// (up to `limits.shutdown_grace_ms`), and flush the stores. A database that fails on the way (a full
/// disk) is reopened live by the supervisor once the data dir is writable again ([`crate::supervisor`]).
pub async fn serve(
    broker: Arc<Broker>,
    agency: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::supervisor::supervise(broker, agency, admin, shutdown, None).await
}

/// Both accept loops of one broker, on listeners that outlive it (the supervisor swaps brokers).
pub(crate) struct Accepting {
    stop: watch::Sender<bool>,
    loops: [tokio::task::JoinHandle<()>; 2],
    graceful: Arc<GracefulShutdown>,
}

impl Accepting {
    /// Start accepting on both listeners for `broker`.
    pub(crate) fn start(broker: &Arc<Broker>, agency: &Arc<TcpListener>, admin: &Arc<TcpListener>) -> Self {
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop, stop_rx) = watch::channel(false);
        let in_flight = Arc::new(InFlight::new(broker.config.limits.max_concurrent_per_agency));
        let loops = [
            tokio::spawn(accept_loop(
                Side::Agency,
                agency.clone(),
                broker.clone(),
                graceful.clone(),
                stop_rx.clone(),
                in_flight.clone(),
            )),
            tokio::spawn(accept_loop(
                Side::Admin,
                admin.clone(),
                broker.clone(),
                graceful.clone(),
                stop_rx,
                in_flight,
            )),
        ];
        Self {
            stop,
            loops,
            graceful,
        }
    }

    /// Stop accepting (the listeners stay bound: new connections wait in the backlog) and let
    /// in-flight requests finish, up to `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        for handle in self.loops {
            let _ = handle.await;
        }
        match Arc::try_unwrap(self.graceful) {
            Ok(graceful) => {
                if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                    tracing::warn!("grace period over; closing the remaining connections");
                }
            }
            Err(_) => tracing::warn!("connection tracker still shared; skipping the graceful wait"),
        }
    }
}

/// The HTTP/1.1 and HTTP/2 settings of both listeners (and of the benchmark's baseline, so that it differs
/// from the broker only by the pipeline).
pub fn http_builder(limits: &crate::config::LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

async fn accept_loop(
    side: Side,
    listener: Arc<TcpListener>,
    broker: Arc<Broker>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
) {
    let permits = Arc::new(Semaphore::new(broker.config.limits.max_connections));
    let builder = http_builder(&broker.config.limits);
    // With ALPN the protocol is known: skip hyper-util's preface sniffing, which has no timeout (a
    // client that connects and sends nothing would hold its connection slot for ever). The header read
    // timeout then runs from the first moment.
    let builders = Arc::new(ProtocolBuilders {
        h1: builder.clone().http1_only(),
        h2: builder.clone().http2_only(),
        sniff: builder,
    });
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (mut tcp, remote) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let broker = broker.clone();
        let builders = builders.clone();
        let watcher = graceful.watcher();
        let in_flight = in_flight.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(match side {
                    Side::Agency => broker.tls.current(),
                    Side::Admin => broker.tls.admin(),
                });
                let handshake = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
                let started = std::time::Instant::now();
                match crate::listener::sniff_opening(&mut tcp, handshake).await {
                    Opening::Handshake => {}
                    Opening::AnsweredPlaintext => {
                        broker.metrics.count_handshake_failure(side, "plaintext_http");
                        return;
                    }
                    Opening::Silent => {
                        broker.metrics.count_handshake_failure(side, "timeout");
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                }
                let handshake = handshake.saturating_sub(started.elapsed());
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp).into_fallible()).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err((e, tcp))) => {
                        let reason = crate::metrics::handshake_failure_reason(&e);
                        broker.metrics.count_handshake_failure(side, reason);
                        let hint = crate::listener::handshake_hint(reason);
                        tracing::info!(error = %e, reason, hint, "TLS handshake refused");
                        crate::listener::close_after_refusal(tcp, reason).await;
                        return;
                    }
                    Err(_) => {
                        broker.metrics.count_handshake_failure(side, "timeout");
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                };
                broker.metrics.observe_since(crate::metrics::Stage::Tls, started);
                let _open = broker.metrics.connection_opened(side);
                let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    Some(der) => match broker.identities.identify(der) {
                        Ok(peer) => peer,
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable client certificate");
                            return;
                        }
                    },
                    // The verifier makes client certificates mandatory; this is unreachable in practice.
                    None => return,
                };
                tracing::debug!(subject = %peer.subject, fingerprint = %peer.fingerprint_sha256, "connected");
                if side == Side::Agency && broker.registry.by_fingerprint(&peer.fingerprint_sha256).is_none()
                {
                    crate::listener::log_unbound_certificate(&peer);
                }
                let pending = Arc::new(AtomicU64::new(0));
                let service = hyper::service::service_fn({
                    let (broker, peer, pending) = (broker.clone(), peer.clone(), pending.clone());
                    move |req| {
                        let broker = broker.clone();
                        let peer = peer.clone();
                        let in_flight = in_flight.clone();
                        let pending = pending.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(side, broker, peer, in_flight, pending, req).await,
                            )
                        }
                    }
                });
                let io = CountingIo {
                    inner: tls,
                    read: pending.clone(),
                };
                let builder = match io.inner.get_ref().1.alpn_protocol() {
                    Some(b"h2") => &builders.h2,
                    Some(b"http/1.1") => &builders.h1,
                    _ => &builders.sniff,
                };
                let conn = builder.serve_connection(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(conn).await {
                    let partial = pending.load(Ordering::Relaxed) > 0;
                    match connection_event(&*e, partial) {
                        Some((status, code, message)) => {
                            record_connection_event(&broker, side, peer, status, code, message).await
                        }
                        None => tracing::debug!(error = %e, "connection ended with an error"),
                    }
                }
            }
            .instrument(tracing::info_span!("conn", side = ?side, %remote)),
        );
    }
}

async fn handle(
    side: Side,
    broker: Arc<Broker>,
    peer: Arc<PeerIdentity>,
    in_flight: Arc<InFlight>,
    pending: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut exchange = Exchange {
        request_id: uuid::Uuid::new_v4().to_string(),
        peer,
        agency: None,
        purpose: None,
        channel: if side == Side::Admin {
            "admin".into()
        } else {
            "canonical".into()
        },
        operation: String::new(),
        citizen_id: None,
        fields: Vec::new(),
        body_sha256: String::new(),
        bulk: false,
        route: format!("{} {}", req.method(), mask_citizen_ids(req.uri().path())),
        metered: false,
        rate: None,
        also_concerns: Vec::new(),
        catalogue: broker.catalogue(),
        accountability: Default::default(),
    };
    let span = tracing::info_span!(
        "request",
        request_id = %exchange.request_id,
        route = %exchange.route,
        agency = tracing::field::Empty
    );
    let request_span = span.clone();
    async move {
        // Known before the body is read, so that even a refused body is answered in the dialect's format.
        let connector = match side {
            Side::Agency => broker.connectors.find(req.method(), req.uri().path()),
            Side::Admin => None,
        };
        // Agencies share the broker: one of them may not hold every worker. Operators are never capped.
        let _slot = if side == Side::Agency {
            let agency = broker.registry.by_fingerprint(&exchange.peer.fingerprint_sha256);
            let key = match &agency {
                Some(a) => a.code.clone(),
                None => format!("cert:{}", exchange.peer.fingerprint_sha256),
            };
            // Known before the body is read, so that a refusal on the way (slow body) names the agency.
            exchange.agency = agency.map(|a| a.code);
            match in_flight.try_acquire(&key) {
                Some(slot) => Some(slot),
                None => {
                    exchange.operation = "concurrency_limit".into();
                    exchange.body_sha256 = broker.audit.body_hash(b"");
                    let mut err = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "concurrency_limit",
                        format!(
                            "more than {} requests in flight for this agency; retry shortly",
                            in_flight.cap
                        ),
                    );
                    err.retry_after = Some(1);
                    let reply = match connector {
                        Some(c) => {
                            exchange.channel = c.name.clone();
                            crate::connector::error_reply(c, &err, &exchange.request_id)
                        }
                        None => Reply::error(&err, &exchange.request_id),
                    };
                    let reply = crate::api::record(&broker, side, &exchange, reply).await;
                    tracing::info!(
                        status = reply.status.as_u16(),
                        code = "concurrency_limit",
                        "answered"
                    );
                    return into_response(reply, &exchange.request_id);
                }
            }
        } else {
            None
        };
        let started = std::time::Instant::now();
        let read = read_request(&broker, &mut exchange, req).await;
        broker
            .metrics
            .observe_since(crate::metrics::Stage::Decode, started);
        // The request is consumed: any byte read from here on belongs to the next request's head.
        pending.store(0, Ordering::Relaxed);
        let reply = match read {
            Ok(read) => match side {
                Side::Agency => crate::api::handle(&broker, &mut exchange, read).await,
                Side::Admin => crate::admin::handle(&broker, &mut exchange, read).await,
            },
            Err(e) => match connector {
                Some(c) => {
                    exchange.channel = c.name.clone();
                    crate::connector::error_reply(c, &e, &exchange.request_id)
                }
                None => Reply::error(&e, &exchange.request_id),
            },
        };
        let reply = crate::api::record(&broker, side, &exchange, reply).await;
        if let Some(agency) = &exchange.agency {
            request_span.record("agency", agency.as_str());
        }
        count_request(&broker, side, &exchange, &reply);
        tracing::info!(
            status = reply.status.as_u16(),
            agency = exchange.agency.as_deref().unwrap_or("-"),
            code = reply.error_code.unwrap_or("-"),
            "answered"
        );
        let started = std::time::Instant::now();
        let response = into_response(reply, &exchange.request_id);
        broker
            .metrics
            .observe_since(crate::metrics::Stage::Encode, started);
        response
    }
    .instrument(span)
    .await
}

/// Count the answered request; a purpose outside the catalogue is counted as `-` so made-up
/// purposes cannot create new series.
fn count_request(broker: &Broker, side: Side, exchange: &Exchange, reply: &Reply) {
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
    if reply.error_code == Some("quota_exceeded") {
        broker.metrics.count_quota_rejection(agency, purpose);
    }
}

/// Read the body within the size and time limits, hashing it for the audit trail.
async fn read_request(
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
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are over the limit of {} bytes",
                limits.max_header_bytes
            ),
        ));
    }
    refuse_ambiguous_target(&parts.uri)?;
    // A declared length over the limit is refused before a byte of the body is awaited.
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
            return Err(ApiError::bad_request(
                "bad_body",
                format!("could not read the request body: {e}"),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body arrived too slowly",
            ))
        }
    };
    exchange.body_sha256 = broker.audit.body_hash(&body);
    Ok(ReadRequest { parts, body })
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
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
        return Err(ApiError::not_found(
            "not_found",
            format!("no route for {}: empty path segment", mask_citizen_ids(path)),
        ));
    }
    if let Some(query) = uri.query() {
        let mut seen = std::collections::HashSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let name = decode(pair.split_once('=').map_or(pair, |(k, _)| k));
            if !seen.insert(name.clone()) {
                return Err(ApiError::bad_request(
                    "duplicate_parameter",
                    format!("query parameter {name} is given more than once"),
                ));
            }
        }
    }
    Ok(())
}

/// How far back [`check_store_against_audit`] looks, in audit entries.
const STORE_CHECK_ENTRIES: usize = 10_000;

/// The history lists a `201` write appends exactly one entry to.
const HISTORIES: [&str; 4] = ["vaccinations", "test_results", "recoveries", "checkins"];

/// Refuse to serve a citizen store that has lost acknowledged writes. sled checksums its log, but on
/// recovery it cannot tell a corrupted record from a torn tail and silently rolls back to the last
/// good one (or to nothing). The audit trail is written to its own fdatasync'd, hash-chained files
/// *after* the store write succeeded, so every recent `201` entry naming a history list is a write the
/// store must still hold: a store with fewer entries in that list is corrupt or rolled back.
pub async fn check_store_against_audit(broker: &Broker) -> Result<(), String> {
    // The other direction: the store outlived entries of the trail (a tail cut below what the store saw).
    let high_water = crate::canonical::audit_high_water(&broker.db)?;
    let head = broker.audit.head().0;
    if head < high_water {
        return Err(format!(
            "audit trail {}: ends at seq {head}, but the store saw it reach seq {high_water} before a later \
             write: entries were cut from its end. Refusing to start; restore the trail from a backup and run \
             `lienthong audit verify --witness …`.",
            broker.config.storage.data_dir.join("audit").display()
        ));
    }
    let filter = crate::audit::AuditFilter {
        status: Some(201),
        ..Default::default()
    };
    let entries = broker
        .audit
        .search(&filter, None, STORE_CHECK_ENTRIES)
        .await
        .map_err(|e| format!("audit trail: {e}"))?;
    let mut expected: HashMap<(String, &'static str), usize> = HashMap::new();
    for entry in &entries {
        let Some(citizen) = &entry.record.citizen_id else {
            continue;
        };
        if let Some(list) = HISTORIES
            .iter()
            .find(|h| entry.record.fields.iter().any(|f| f == *h))
        {
            *expected.entry((citizen.clone(), list)).or_insert(0) += 1;
        }
    }
    for ((citizen, list), written) in expected {
        let record = broker
            .store
            .get(&citizen)
            .await
            .map_err(|e| format!("citizen store: {}", e.message))?;
        let held = record
            .as_ref()
            .and_then(|r| r.get(list))
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if held < written {
            return Err(format!(
                "database {}: corrupt or rolled back, refusing to start: the audit trail acknowledges {written} writes \
                 to {list} of citizen {}, the store holds {held}. Restore the data directory from a backup; \
                 `lienthong audit export` lists what was acknowledged.",
                broker.config.storage.data_dir.display(),
                mask_citizen_ids(&citizen)
            ));
        }
    }
    Ok(())
}

/// Connection builders per negotiated protocol.
struct ProtocolBuilders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    sniff: auto::Builder<TokioExecutor>,
}

/// Requests in flight per agency, with a cap.
struct InFlight {
    cap: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One request's slot; released on drop, whatever way the request ends.
struct InFlightSlot {
    owner: Arc<InFlight>,
    key: String,
}

impl InFlight {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn try_acquire(self: &Arc<Self>, key: &str) -> Option<InFlightSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.to_string()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(InFlightSlot {
            owner: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The decrypted stream, counting bytes read since the last request was consumed, so that a header
/// timeout on a half-sent request (slowloris) can be told from an idle keep-alive connection closing.
struct CountingIo<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request hyper refused before our service saw it (it answers 431 or 400 itself, or closes on a
/// header timeout): the status hyper sent, our stable code and a message. `None` for ordinary endings
/// (client went away, idle keep-alive timed out with no request begun).
fn connection_event(
    err: &(dyn std::error::Error + 'static),
    partial_request: bool,
) -> Option<(u16, &'static str, &'static str)> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // hyper answers an over-long request line 414 itself and tells it apart only in its message.
            if h.is_parse_too_large() && h.to_string().contains("URI too long") {
                return Some((414, "uri_too_long", "request URI over the size limit"));
            }
            if h.is_parse_too_large() {
                return Some((431, "headers_too_large", "request headers over the size limit"));
            }
            if h.is_parse() {
                return Some((
                    400,
                    "malformed_request",
                    "malformed or ambiguous HTTP request (e.g. conflicting Content-Length/Transfer-Encoding)",
                ));
            }
            if h.is_timeout() && partial_request {
                return Some((
                    408,
                    "header_timeout",
                    "request headers arrived too slowly; connection closed",
                ));
            }
            return None;
        }
        source = e.source();
    }
    None
}

/// Put a connection-level refusal on the audit trail, with the peer that caused it.
async fn record_connection_event(
    broker: &Broker,
    side: Side,
    peer: Arc<PeerIdentity>,
    status: u16,
    code: &'static str,
    message: &'static str,
) {
    let agency = broker
        .registry
        .by_fingerprint(&peer.fingerprint_sha256)
        .map(|a| a.code);
    tracing::warn!(status, code, agency = agency.as_deref().unwrap_or("-"), fingerprint = %peer.fingerprint_sha256, "connection refused by the HTTP layer");
    let exchange = Exchange {
        request_id: uuid::Uuid::new_v4().to_string(),
        peer,
        agency: if side == Side::Admin { None } else { agency },
        purpose: None,
        channel: "connection".into(),
        operation: format!("connection:{code}"),
        citizen_id: None,
        fields: Vec::new(),
        body_sha256: broker.audit.body_hash(b""),
        bulk: false,
        route: "-".into(),
        metered: false,
        rate: None,
        also_concerns: Vec::new(),
        catalogue: broker.catalogue(),
        accountability: Default::default(),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut reply = Reply::error(&ApiError::new(status, code, message), &exchange.request_id);
    reply.error_code = Some(code);
    let _ = crate::api::record(broker, side, &exchange, reply).await;
}

fn into_response(reply: Reply, request_id: &str) -> Response<Full<Bytes>> {
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

#[cfg(test)]
mod tests {
    use super::mask_citizen_ids;

    #[test]
    fn citizen_ids_are_masked_in_routes() {
        assert_eq!(
            mask_citizen_ids("/v1/citizens/001090000001"),
            "/v1/citizens/001*******01"
        );
        assert_eq!(
            mask_citizen_ids("/v1/purposes/covid-qr-status/release"),
            "/v1/purposes/covid-qr-status/release"
        );
        assert_eq!(mask_citizen_ids("/x/12345678/y"), "/x/12345678/y");
    }
}
