//! Stage: the admin API on the admin listener. Only certificates pinned in `tls.admin_certs` may use
//! it; an agency certificate (same CA) gets 403 `admin_only`. Every change is persisted, takes effect
//! on the next request and is recorded in the audit trail.

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{AdminOperation, Exchange, Operation, ReadRequest, Reply};
use crate::registry::{AgencyStatus, NewAgency};

/// Answer one admin request.
pub async fn handle(broker: &Broker, exchange: &mut Exchange, req: ReadRequest) -> Reply {
    match route(broker, exchange, &req).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(&e, &exchange.request_id),
    }
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
    if !broker
        .admin_fingerprints
        .contains(&exchange.peer.fingerprint_sha256)
    {
        return Err(ApiError::new(
            ErrorCode::AdminOnly,
            "this certificate is not an admin certificate",
        ));
    }
    exchange.agency = Some("admin".into());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |value: serde_json::Value| Ok(Reply::json(StatusCode::OK, &value));
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::Metrics));
            let text = broker.metrics.render(broker.audit.head().0);
            Ok(Reply {
                status: StatusCode::OK,
                content_type: crate::metrics::CONTENT_TYPE,
                body: text.into(),
                headers: Vec::new(),
                error_code: None,
                internal_cause: None,
            })
        }
        (_, ["admin", "console", ..]) => crate::console::route(broker, exchange, req).await,
        (&Method::GET, ["admin", "v1", "agencies"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::ListAgencies));
            ok(json!({ "agencies": broker.registry.list() }))
        }
        (&Method::POST, ["admin", "v1", "agencies"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::RegisterAgency));
            let new: NewAgency = crate::json::body(req)?;
            let agency = broker.registry.register(new).await?;
            Ok(Reply::json(StatusCode::CREATED, &json!({ "agency": agency })))
        }
        (&Method::GET, ["admin", "v1", "agencies", code]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::GetAgency));
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::new(ErrorCode::UnknownAgency, format!("no agency {code}")))?;
            ok(json!({ "agency": agency }))
        }
        (&Method::POST, ["admin", "v1", "agencies", code, action @ ("suspend" | "resume")]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::suspend_or_resume(action)));
            let status = if *action == "suspend" {
                AgencyStatus::Suspended
            } else {
                AgencyStatus::Active
            };
            ok(json!({ "agency": broker.registry.set_status(code, status).await? }))
        }
        (&Method::POST, ["admin", "v1", "agencies", code, "certificates"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::BindCertificate));
            let bind: BindRequest = crate::json::body(req)?;
            let fingerprint = match (bind.fingerprint, bind.certificate_pem) {
                (Some(fp), None) => fp,
                (None, Some(pem)) => crate::identity::fingerprint_of_pem(&pem).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidCertificate,
                        "certificate_pem is not a PEM certificate",
                    )
                })?,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "give exactly one of fingerprint or certificate_pem",
                    ))
                }
            };
            ok(json!({ "agency": broker.registry.bind(code, &fingerprint).await? }))
        }
        (&Method::DELETE, ["admin", "v1", "agencies", code, "certificates", fingerprint]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::UnbindCertificate));
            ok(json!({ "agency": broker.registry.unbind(code, fingerprint).await? }))
        }
        (&Method::POST, ["admin", "v1", "tls", "reload"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::TlsReload));
            broker
                .tls
                .reload()
                .map_err(|e| ApiError::new(ErrorCode::TlsReloadFailed, e.to_string()))?;
            ok(json!({ "reloaded": true }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "plan"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::SetPlan));
            let value = crate::json::parse(&req.body)?;
            let plan = crate::quota::Plan::from_json(&value)?;
            for purpose in plan.limits.keys().filter(|p| p.as_str() != "*") {
                if broker.catalogue.get(purpose).is_none() {
                    return Err(ApiError::new(
                        ErrorCode::UnknownPurpose,
                        format!("no purpose {purpose}"),
                    ));
                }
            }
            ok(json!({ "agency": broker.registry.update(code, |a| { a.plan = Some(plan); Ok(()) }).await? }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "billing-class"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::SetBillingClass));
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Class {
                billing_class: crate::registry::BillingClass,
            }
            let class: Class = crate::json::body(req)?;
            ok(
                json!({ "agency": broker.registry.update(code, |a| { a.billing_class = class.billing_class; Ok(()) }).await? }),
            )
        }
        (&Method::GET, ["admin", "v1", "agencies", code, "usage"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::Usage));
            broker.embedded_only("quota usage")?;
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::new(ErrorCode::UnknownAgency, format!("no agency {code}")))?;
            let mut usage = serde_json::Map::new();
            let plan = agency.plan.unwrap_or_default();
            for purpose in broker.catalogue.for_agency(code) {
                usage.insert(
                    purpose.id.clone(),
                    json!({ "used": broker.quota.usage(code, &purpose.id)?, "limits": plan.for_purpose(&purpose.id) }),
                );
            }
            ok(json!({ "agency": code, "usage": usage }))
        }
        (&Method::GET, ["admin", "v1", "billing", action @ ("report" | "reconcile")]) => {
            exchange.operation = Some(Operation::Admin(match *action {
                "report" => AdminOperation::BillingReport,
                _ => AdminOperation::BillingReconcile,
            }));
            crate::billing::admin_route(broker, req, action).await
        }
        (&Method::GET, ["admin", "v1", "audit", action @ ("head" | "verify" | "entries")]) => {
            exchange.operation = Some(Operation::Admin(match *action {
                "head" => AdminOperation::AuditHead,
                "verify" => AdminOperation::AuditVerify,
                _ => AdminOperation::AuditEntries,
            }));
            crate::audit_api::admin_route(broker, req, action).await
        }
        _ => Err(ApiError::no_route(&method, &path)),
    }
}
