//! Channel: the X-Road message protocol for REST 1.x:
//! `{method} /r1/{instance}/{class}/{member}[/{subsystem}]/{service}[/path]` with `X-Road-Client`.
//!
//! - `X-Road-Client` (mandatory; the last one counts, as the protocol says) must be the client bound to
//!   the certificate's agency;
//! - `X-Road-Id` is echoed (one is made when the client sent none); `X-Road-UserId` and `X-Road-Issue` go
//!   to the audit entry like on every channel (`accountability`);
//! - a `read` service takes the citizen ID as its path (`…/{service}/{citizen_id}`) and `?fields=`;
//! - answers carry `X-Road-Id`, `X-Road-Client`, `X-Road-Service`, `X-Road-Request-Id` and
//!   `X-Road-Request-Hash`: Base64 of SHA-512(SHA-512(headers) ‖ SHA-512(body)), or of SHA-512(headers)
//!   for a request without a body, where "headers" are the request line and each header as
//!   `name: value` lines in the order received;
//! - X-Road's own errors answer with the `X-Road-Error` header and X-Road's JSON error body
//!   (`type`, `message`, `detail` = the request id), beside lienthong's `error` object; errors of the
//!   service itself (purpose, citizen, quota) are the provider's answer, as on the canonical API.

use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha512};

use super::{check_client, field_list, perform, Answer, ClientId, Operation, ServiceId};
use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, ReadRequest, Reply};
use crate::registry::Agency;

/// `X-Road-Client`.
pub const CLIENT: &str = "x-road-client";
/// `X-Road-Id`.
pub const ID: &str = "x-road-id";
/// `X-Road-Service` (answers).
pub const SERVICE: &str = "x-road-service";
/// `X-Road-Request-Hash` (answers).
pub const REQUEST_HASH: &str = "x-road-request-hash";
/// `X-Road-Request-Id` (answers).
pub const REQUEST_ID: &str = "x-road-request-id";
/// `X-Road-Error` (answers from X-Road's own errors).
pub const ERROR: &str = "x-road-error";

/// Serve one X-Road REST request for `agency`.
pub async fn exchange(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
) -> Result<Reply, ApiError> {
    exchange.operation = Some(crate::exchange::Operation::Xroad);
    let message_id = match crate::accountability::text(&req.parts.headers, ID, 128) {
        Ok(Some(id)) => id,
        Ok(None) => uuid::Uuid::new_v4().to_string(),
        Err(e) => return Err(ApiError::new(ErrorCode::XroadBadRequest, e.message)),
    };
    exchange.accountability.xroad_id = Some(message_id);
    let client = client_header(req)?;
    exchange.accountability.xroad_client = Some(client.to_string());
    check_client(agency, &client)?;
    let (service, rest) = resolve(broker, req.path())?;
    exchange.accountability.xroad_service = Some(service.to_string());
    let operation = broker.xroad_services.find(&service)?;
    let canonical = !matches!(operation, Operation::Connector { .. });
    if canonical && req.parts.method != Method::GET {
        return Err(ApiError::method_not_allowed(&req.parts.method, req.path()));
    }
    let fields = req.query("fields").map(|f| field_list(&f));
    let citizen = match (operation, rest.as_slice()) {
        (Operation::Read { .. }, [citizen]) => Some(citizen.as_str()),
        (Operation::ListPurposes | Operation::Connector { .. }, []) => None,
        _ => {
            return Err(ApiError::no_route(&req.parts.method, req.path()));
        }
    };
    let reply = match perform(broker, exchange, agency, operation, req, citizen, fields).await? {
        Answer::Canonical(value) => Reply::json(StatusCode::OK, &value),
        // The connector's own answer, success or error: the provider's, with no X-Road-Error.
        Answer::Connector(reply) => reply,
    };
    Ok(with_xroad_headers(reply, exchange, req))
}

/// The last `X-Road-Client` header: 400 `xroad_missing_header_field` when there is none.
fn client_header(req: &ReadRequest) -> Result<ClientId, ApiError> {
    let value = req
        .parts
        .headers
        .get_all(CLIENT)
        .iter()
        .next_back()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::XroadMissingHeaderField,
                "the X-Road-Client header is missing",
            )
        })?;
    let text = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::XroadInvalidClientIdentifier,
            "X-Road-Client is not visible ASCII",
        )
    })?;
    ClientId::parse(text.trim())
}

/// The service id in the path and what follows it: the mapped service with a subsystem
/// (`{i}/{c}/{m}/{s}/{service}`) or without (`{i}/{c}/{m}/{service}`).
fn resolve(broker: &Broker, path: &str) -> Result<(ServiceId, Vec<String>), ApiError> {
    let segments: Vec<&str> = path
        .trim_start_matches("/r1")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if segments.len() < 4 {
        return Err(ApiError::new(
            ErrorCode::XroadBadRequest,
            "an X-Road REST call is /r1/{instance}/{class}/{member}/{subsystem}/{service}[/path]",
        ));
    }
    let mut first_tried = None;
    for id_len in [5, 4] {
        if segments.len() < id_len {
            continue;
        }
        let id = ServiceId::parse(&segments[..id_len].join("/"))?;
        if broker.xroad_services.lookup(&id).is_some() {
            let rest = segments[id_len..]
                .iter()
                .map(|s| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect();
            return Ok((id, rest));
        }
        first_tried.get_or_insert(id);
    }
    let id = first_tried.ok_or_else(|| ApiError::new(ErrorCode::XroadBadRequest, "no service id"))?;
    Err(ApiError::new(
        ErrorCode::XroadUnknownService,
        format!("no X-Road service {id}"),
    ))
}

/// `X-Road-Request-Hash` of a request.
pub fn request_hash(req: &ReadRequest) -> String {
    let mut headers = Sha512::new();
    headers.update(format!("{} {}\n", req.parts.method, req.parts.uri).as_bytes());
    for (name, value) in &req.parts.headers {
        headers.update(name.as_str().as_bytes());
        headers.update(b": ");
        headers.update(value.as_bytes());
        headers.update(b"\n");
    }
    let headers = headers.finalize();
    let hash = if req.body.is_empty() {
        headers.to_vec()
    } else {
        let mut both = Sha512::new();
        both.update(headers);
        both.update(Sha512::digest(&req.body));
        both.finalize().to_vec()
    };
    base64::engine::general_purpose::STANDARD.encode(hash)
}

fn with_xroad_headers(mut reply: Reply, exchange: &Exchange, req: &ReadRequest) -> Reply {
    let record = &exchange.accountability;
    let mut add = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            reply.headers.push((HeaderName::from_static(name), v));
        }
    };
    add(ID, record.xroad_id.as_deref());
    add(CLIENT, record.xroad_client.as_deref());
    add(SERVICE, record.xroad_service.as_deref());
    add(REQUEST_ID, Some(&exchange.request_id));
    add(REQUEST_HASH, Some(&request_hash(req)));
    reply
}

/// An error answer: X-Road's own errors with `X-Road-Error` and X-Road's JSON body (plus lienthong's
/// `error` object); the service's errors as the canonical API answers them.
pub fn error_reply(e: &ApiError, exchange: &Exchange, req: &ReadRequest) -> Reply {
    let reply = match super::fault_type(e.code) {
        Some(kind) => {
            let mut body = e.to_json(&exchange.request_id);
            if let Some(obj) = body.as_object_mut() {
                obj.insert("type".into(), json!(kind));
                obj.insert("message".into(), json!(e.message));
                obj.insert("detail".into(), json!(exchange.request_id));
            }
            let mut reply = Reply::json(e.status, &body);
            reply.error_code = Some(e.code);
            reply.internal_cause = e.cause.clone();
            reply
                .headers
                .push((HeaderName::from_static(ERROR), HeaderValue::from_static(kind)));
            reply
        }
        None => Reply::error(e, &exchange.request_id),
    };
    with_xroad_headers(reply, exchange, req)
}
