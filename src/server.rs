//! Stage: server. The two listeners, per-connection TLS handshake and peer identity, the per-request
//! pipeline (body → registry → route → audit → response), and graceful shutdown.
//!
//! `serve` takes already-bound listeners, so tests bind `127.0.0.1:0` and read the port back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::broker::Broker;
use crate::error::ApiError;
use crate::identity::PeerIdentity;

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
    /// `canonical`, a connector name, or `admin`.
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

    /// The media type of the body (`Content-Type` without parameters), lower-cased.
    pub fn media_type(&self) -> Option<String> {
        let ct = self.parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        Some(ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
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
/// (up to `limits.shutdown_grace_ms`), and flush the stores.
pub async fn serve(
    broker: Arc<Broker>,
    agency: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let loops = [
        tokio::spawn(accept_loop(
            Side::Agency,
            agency,
            broker.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(accept_loop(
            Side::Admin,
            admin,
            broker.clone(),
            graceful.clone(),
            stop_rx,
        )),
    ];
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    for handle in loops {
        let _ = handle.await;
    }
    let grace = Duration::from_millis(broker.config.limits.shutdown_grace_ms);
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                tracing::warn!("grace period over; closing the remaining connections");
            }
        }
        Err(_) => tracing::warn!("connection tracker still shared; skipping the graceful wait"),
    }
    crate::api::on_shutdown(&broker).await;
    broker.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(
    side: Side,
    listener: TcpListener,
    broker: Arc<Broker>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(broker.config.limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(broker.config.limits.header_read_timeout_ms))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (tcp, remote) = tokio::select! {
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
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let _permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(broker.tls.current());
                let handshake = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
                let started = std::time::Instant::now();
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let reason = crate::metrics::handshake_failure_reason(&e);
                        broker.metrics.count_handshake_failure(side, reason);
                        tracing::info!(error = %e, reason, "TLS handshake refused");
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
                    Some(der) => match PeerIdentity::from_der(der) {
                        Ok(peer) => Arc::new(peer),
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable client certificate");
                            return;
                        }
                    },
                    // The verifier makes client certificates mandatory; this is unreachable in practice.
                    None => return,
                };
                tracing::debug!(subject = %peer.subject, fingerprint = %peer.fingerprint_sha256, "connected");
                let service = hyper::service::service_fn(move |req| {
                    let broker = broker.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(side, broker, peer, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "connection ended with an error");
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
        let started = std::time::Instant::now();
        let read = read_request(&broker, &mut exchange, req).await;
        broker
            .metrics
            .observe_since(crate::metrics::Stage::Decode, started);
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
        .filter(|p| broker.catalogue.get(p).is_some())
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
    let limited = Limited::new(body, limits.max_body_bytes);
    let collected = tokio::time::timeout(
        Duration::from_millis(limits.request_timeout_ms),
        limited.collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            exchange.body_sha256 = hex::encode(Sha256::digest(b""));
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is over the limit of {} bytes",
                    limits.max_body_bytes
                ),
            ));
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
    exchange.body_sha256 = hex::encode(Sha256::digest(&body));
    Ok(ReadRequest { parts, body })
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
