//! Stage: the admin API on the admin listener. Only certificates pinned in `tls.admin_certs` may use
//! it; an agency certificate (same CA) gets 403 `admin_only`. Every change is persisted, takes effect
//! on the next request and is recorded in the audit trail.

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::broker::Broker;
use crate::error::ApiError;
use crate::registry::{AgencyStatus, NewAgency};
use crate::server::{Exchange, ReadRequest, Reply};

/// Answer one admin request.
pub async fn handle(broker: &Broker, exchange: &mut Exchange, req: ReadRequest) -> Reply {
    match route(broker, exchange, &req).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e, &exchange.request_id),
    }
}

/// Parse a JSON body into `T`: 415 if it is not JSON, 400 `invalid_json` naming the problem.
pub fn json_body<T: for<'de> Deserialize<'de>>(req: &ReadRequest) -> Result<T, ApiError> {
    match req.media_type().as_deref() {
        Some("application/json") | None => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/json, got {other}"),
            ))
        }
    }
    let value = crate::json::parse(&req.body)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindRequest {
    /// SHA-256 fingerprint of the certificate, or…
    fingerprint: Option<String>,
    /// …the certificate itself, PEM.
    certificate_pem: Option<String>,
}

async fn route(broker: &Broker, exchange: &mut Exchange, req: &ReadRequest) -> Result<Reply, ApiError> {
    let method = req.parts.method.clone();
    let path = req.path().to_string();
    if let Some(health) = crate::server::health(broker, exchange, &path) {
        return Ok(health);
    }
    if !broker
        .admin_fingerprints
        .contains(&exchange.peer.fingerprint_sha256)
    {
        return Err(ApiError::forbidden(
            "admin_only",
            "this certificate is not an admin certificate",
        ));
    }
    exchange.agency = Some("admin".into());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |value: serde_json::Value| Ok(Reply::json(StatusCode::OK, &value));
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            exchange.operation = "admin:metrics".into();
            let text = broker.metrics.render(broker.audit.head().0);
            Ok(Reply {
                status: StatusCode::OK,
                content_type: crate::metrics::CONTENT_TYPE,
                body: text.into(),
                headers: Vec::new(),
                error_code: None,
            })
        }
        (_, ["admin", "console", ..]) => crate::console::route(broker, exchange, req).await,
        (&Method::GET, ["admin", "v1", "agencies"]) => {
            exchange.operation = "admin:list_agencies".into();
            ok(json!({ "agencies": broker.registry.list() }))
        }
        (&Method::POST, ["admin", "v1", "agencies"]) => {
            exchange.operation = "admin:register_agency".into();
            let new: NewAgency = json_body(req)?;
            let agency = broker.registry.register(new).await?;
            Ok(Reply::json(StatusCode::CREATED, &json!({ "agency": agency })))
        }
        (&Method::GET, ["admin", "v1", "agencies", code]) => {
            exchange.operation = "admin:get_agency".into();
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::not_found("unknown_agency", format!("no agency {code}")))?;
            ok(json!({ "agency": agency }))
        }
        (&Method::POST, ["admin", "v1", "agencies", code, action @ ("suspend" | "resume")]) => {
            exchange.operation = format!("admin:{action}");
            let status = if *action == "suspend" {
                AgencyStatus::Suspended
            } else {
                AgencyStatus::Active
            };
            ok(json!({ "agency": broker.registry.set_status(code, status).await? }))
        }
        (&Method::POST, ["admin", "v1", "agencies", code, "certificates"]) => {
            exchange.operation = "admin:bind_certificate".into();
            let bind: BindRequest = json_body(req)?;
            let fingerprint = match (bind.fingerprint, bind.certificate_pem) {
                (Some(fp), None) => fp,
                (None, Some(pem)) => crate::identity::fingerprint_of_pem(&pem).ok_or_else(|| {
                    ApiError::bad_request("invalid_certificate", "certificate_pem is not a PEM certificate")
                })?,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        "give exactly one of fingerprint or certificate_pem",
                    ))
                }
            };
            ok(json!({ "agency": broker.registry.bind(code, &fingerprint).await? }))
        }
        (&Method::DELETE, ["admin", "v1", "agencies", code, "certificates", fingerprint]) => {
            exchange.operation = "admin:unbind_certificate".into();
            ok(json!({ "agency": broker.registry.unbind(code, fingerprint).await? }))
        }
        (&Method::POST, ["admin", "v1", "tls", "reload"]) => {
            exchange.operation = "admin:tls_reload".into();
            broker
                .tls
                .reload()
                .map_err(|e| ApiError::unprocessable("tls_reload_failed", e.to_string()))?;
            ok(json!({ "reloaded": true }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "plan"]) => {
            exchange.operation = "admin:set_plan".into();
            let value = crate::json::parse(&req.body)?;
            let plan = crate::quota::Plan::from_json(&value)?;
            for purpose in plan.limits.keys().filter(|p| p.as_str() != "*") {
                if broker.catalogue.get(purpose).is_none() {
                    return Err(ApiError::bad_request(
                        "unknown_purpose",
                        format!("no purpose {purpose}"),
                    ));
                }
            }
            let plan = serde_json::to_value(plan).map_err(ApiError::internal)?;
            ok(json!({ "agency": broker.registry.update(code, |a| { a.plan = plan; Ok(()) }).await? }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "xroad"]) => {
            exchange.operation = "admin:set_xroad".into();
            let id: crate::xroad::ClientId = json_body(req)?;
            ok(json!({ "agency": broker.registry.set_xroad(code, Some(id)).await? }))
        }
        (&Method::DELETE, ["admin", "v1", "agencies", code, "xroad"]) => {
            exchange.operation = "admin:clear_xroad".into();
            ok(json!({ "agency": broker.registry.set_xroad(code, None).await? }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "billing-class"]) => {
            exchange.operation = "admin:set_billing_class".into();
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Class {
                billing_class: crate::registry::BillingClass,
            }
            let class: Class = json_body(req)?;
            ok(
                json!({ "agency": broker.registry.update(code, |a| { a.billing_class = class.billing_class; Ok(()) }).await? }),
            )
        }
        (&Method::GET, ["admin", "v1", "agencies", code, "usage"]) => {
            exchange.operation = "admin:usage".into();
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::not_found("unknown_agency", format!("no agency {code}")))?;
            let mut usage = serde_json::Map::new();
            let plan = crate::quota::Plan::from_json(&agency.plan)?;
            for purpose in broker.catalogue.for_agency(code) {
                usage.insert(
                    purpose.id.clone(),
                    json!({ "used": broker.quota.usage(code, &purpose.id)?, "limits": plan.for_purpose(&purpose.id) }),
                );
            }
            ok(json!({ "agency": code, "usage": usage }))
        }
        (&Method::GET, ["admin", "v1", "billing", action]) => {
            exchange.operation = format!("admin:billing_{action}");
            crate::billing::admin_route(broker, req, action).await
        }
        (&Method::GET, ["admin", "v1", "audit", action]) => {
            exchange.operation = format!("admin:audit_{action}");
            crate::audit_api::admin_route(broker, req, action).await
        }
        _ => Err(ApiError::no_route(&method, &path)),
    }
}
