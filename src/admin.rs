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

/// `POST /admin/v1/catalogue/versions?origin=FILE`: the body is a catalogue file (TOML) with a
/// `[release]` table; `origin` names the file in errors (`FILE:LINE: …`). Checked against the schema,
/// the registered agencies and the loaded connectors before it is accepted.
async fn load_catalogue(
    broker: &Broker,
    req: &ReadRequest,
) -> Result<std::sync::Arc<crate::catalogue::CatalogueVersion>, ApiError> {
    req.require_media_type(&["application/toml"], "application/toml")?;
    let origin = req.query("origin").unwrap_or_else(|| "catalogue".into());
    let text = std::str::from_utf8(&req.body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidCatalogue, format!("{origin}: not UTF-8 ({e})")))?;
    let is_agency = |code: &str| broker.registry.get(code).is_some();
    let connectors_served = |version: &crate::catalogue::CatalogueVersion| {
        for c in broker.connectors.all() {
            let Some(purpose) = version.get(&c.purpose) else {
                return Err(format!(
                    "connector {} serves purpose `{}`, which this version removes",
                    c.name, c.purpose
                ));
            };
            purpose
                .release_set(Some(&c.read_fields), &broker.schema)
                .map_err(|e| {
                    format!(
                        "connector {} reads what purpose `{}` no longer releases: {}",
                        c.name, c.purpose, e.message
                    )
                })?;
        }
        Ok(())
    };
    broker
        .catalogues
        .load(
            text,
            &origin,
            &broker.schema,
            &is_agency,
            connectors_served,
            broker.clock.now(),
        )
        .await
}

/// The admin API's guard against cross-site request forgery, whatever the body: a state-changing
/// request must not come from another site, and a `POST` (the one state-changing method an HTML form
/// can send without a CORS preflight) must say `Content-Type: application/json`, which a form cannot.
/// `PUT` and `DELETE` always need a preflight, which the admin listener never grants.
fn refuse_forgeable(req: &ReadRequest) -> Result<(), ApiError> {
    let method = &req.parts.method;
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    crate::console::refuse_cross_site(req)?;
    // A form can post only the CORS-safelisted types (or none) without a preflight, which the admin
    // listener never grants; any other declared type (JSON, TOML, JSON Lines) proves a scripted client.
    let forgeable = matches!(
        req.media_type().as_deref(),
        None | Some("application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain")
    );
    if *method == Method::POST && forgeable {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType,
            "admin API posts must declare their body's type, e.g. Content-Type: application/json (even with an empty body)",
        ));
    }
    Ok(())
}

/// The fingerprint of a certificate offered for binding, once it is known to be issued by a CA of the
/// bundle (a certificate no handshake would accept is a mistake worth naming, not a silent no-op).
fn bindable_certificate(broker: &Broker, pem: &str) -> Result<String, ApiError> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidCertificate,
            "certificate_pem is not a PEM certificate",
        )
    })?;
    let cas = crate::tls::read_certs(&broker.config.tls.ca_bundle).map_err(ApiError::internal)?;
    if !crate::tls::issued_by_bundle(&cert, &cas) {
        return Err(ApiError::new(
            ErrorCode::UntrustedCertificate,
            "the certificate is not issued by a CA of tls.ca_bundle; no handshake would accept it",
        ));
    }
    Ok(crate::identity::fingerprint(cert.as_ref()))
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
    if segments.starts_with(&["admin", "v1"]) {
        refuse_forgeable(req)?;
    }
    let ok = |value: serde_json::Value| Ok(Reply::json(StatusCode::OK, &value));
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::Metrics));
            broker.metrics.set_stale_crls(broker.tls.stale_crls());
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
        (&Method::POST, ["admin", "v1", "citizens", "import"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::ImportCitizens));
            exchange.bulk = true; // many citizens' records in one request
            crate::import::import_batch(broker, req, &exchange.request_id).await
        }
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
                (None, Some(pem)) => bindable_certificate(broker, &pem)?,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "give exactly one of fingerprint or certificate_pem",
                    ))
                }
            };
            // An operator's certificate bound to an agency would read citizen data on the agency listener.
            let normalized = crate::registry::normalize_fingerprint(&fingerprint)?;
            if broker.admin_fingerprints.contains(&normalized) {
                return Err(ApiError::new(
                    ErrorCode::AdminCertificate,
                    "an admin certificate (tls.admin_certs) cannot be bound to an agency",
                ));
            }
            ok(json!({ "agency": broker.registry.bind(code, &fingerprint).await? }))
        }
        (&Method::POST | &Method::DELETE, ["admin", "v1", "agencies", code, "purposes", purpose]) => {
            let grant = method == Method::POST;
            exchange.operation = Some(Operation::Admin(if grant {
                AdminOperation::GrantPurpose
            } else {
                AdminOperation::RevokePurpose
            }));
            let purpose = broker.catalogue().known(purpose)?.id.clone();
            exchange.purpose = Some(purpose.clone());
            if !grant && broker.catalogue().declares(&purpose, code) {
                return Err(ApiError::new(ErrorCode::PurposeInCatalogue,
                    format!("the purpose catalogue itself grants `{purpose}` to {code}; change the catalogue file"),
                ));
            }
            let agency = broker
                .registry
                .update(code, |a| {
                    a.granted_purposes.retain(|p| *p != purpose);
                    if grant && !broker.catalogue().declares(&purpose, code) {
                        a.granted_purposes.push(purpose.clone());
                    }
                    Ok(())
                })
                .await?;
            broker.catalogues.set_grants(code, &agency.granted_purposes);
            let catalogue = broker.catalogue();
            let purposes: Vec<&str> = catalogue.for_agency(code).iter().map(|p| p.id.as_str()).collect();
            ok(json!({ "agency": agency, "purposes": purposes }))
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
            let stale = broker.tls.stale_crls();
            if stale > 0 {
                tracing::warn!(stale, "reloaded: CRLs past their nextUpdate are in force");
            }
            // In a cluster, every broker reloads its own files too.
            if let Some(backend) = &broker.postgres {
                backend.registry.announce_tls_reload().await?;
            }
            ok(json!({ "reloaded": true }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "plan"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::SetPlan));
            let value = crate::json::parse(&req.body)?;
            let plan = crate::quota::Plan::from_json(&value)?;
            for purpose in plan.limits.keys().filter(|p| p.as_str() != "*") {
                if exchange.catalogue.get(purpose).is_none() {
                    return Err(ApiError::new(
                        ErrorCode::UnknownPurpose,
                        format!("no purpose {purpose}"),
                    ));
                }
            }
            ok(json!({ "agency": broker.registry.update(code, |a| { a.plan = Some(plan); Ok(()) }).await? }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "xroad"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::SetXroad));
            let id: crate::doors::xroad::ClientId = crate::json::body(req)?;
            ok(json!({ "agency": broker.registry.set_xroad(code, Some(id)).await? }))
        }
        (&Method::DELETE, ["admin", "v1", "agencies", code, "xroad"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::ClearXroad));
            ok(json!({ "agency": broker.registry.set_xroad(code, None).await? }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "billing-class"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::SetBillingClass));
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Class {
                billing_class: crate::registry::BillingClass,
            }
            let class: Class = crate::json::body(req)?;
            let agency = broker
                .registry
                .set_billing_class(code, class.billing_class, broker.clock.now())
                .await?;
            ok(json!({ "agency": agency, "class_changes": broker.registry.class_changes(code)? }))
        }
        (&Method::GET, ["admin", "v1", "agencies", code, "usage"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::Usage));
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::new(ErrorCode::UnknownAgency, format!("no agency {code}")))?;
            let mut usage = serde_json::Map::new();
            let plan = agency.plan.unwrap_or_default();
            for purpose in exchange.catalogue.for_agency(code) {
                usage.insert(
                    purpose.id.clone(),
                    json!({ "used": broker.quota_usage(code, &purpose.id).await?, "limits": plan.for_purpose(&purpose.id) }),
                );
            }
            ok(json!({ "agency": code, "usage": usage }))
        }
        (&Method::GET, ["admin", "v1", "billing", action @ ("report" | "reconcile" | "closed")])
        | (&Method::POST, ["admin", "v1", "billing", action @ "close"]) => {
            exchange.operation = Some(Operation::Admin(match *action {
                "report" => AdminOperation::BillingReport,
                "reconcile" => AdminOperation::BillingReconcile,
                "closed" => AdminOperation::BillingClosed,
                _ => AdminOperation::BillingClose,
            }));
            crate::billing::admin_route(broker, req, action).await
        }
        (&Method::GET, ["admin", "v1", "catalogue", "versions"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::CatalogueVersions));
            ok(crate::canonical::catalogue_versions(broker, exchange))
        }
        (&Method::GET, ["admin", "v1", "catalogue", "diff"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::CatalogueDiff));
            ok(crate::canonical::catalogue_diff(broker, exchange, req)?)
        }
        (&Method::POST, ["admin", "v1", "catalogue", "versions"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::LoadCatalogue));
            let version = load_catalogue(broker, req).await?;
            exchange.operation_detail = Some(version.id.clone());
            Ok(Reply::json(
                StatusCode::CREATED,
                &json!({ "version": version.id, "effective_at": crate::catalogue::vietnam_time(version.effective_at),
                         "origin": version.origin, "purposes": version.all().len() }),
            ))
        }
        (&Method::GET, ["admin", "v1", "audit", action @ ("head" | "checkpoint" | "verify" | "entries")]) => {
            exchange.operation = Some(Operation::Admin(match *action {
                "head" => AdminOperation::AuditHead,
                "checkpoint" => AdminOperation::AuditCheckpoint,
                "verify" => AdminOperation::AuditVerify,
                _ => AdminOperation::AuditEntries,
            }));
            crate::audit_api::admin_route(broker, req, action).await
        }
        _ => Err(ApiError::no_route(&method, &path)),
    }
}
