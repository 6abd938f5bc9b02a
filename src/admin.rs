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

/// JSON is UTF-8 (RFC 8259): a body declared in another charset would be misread, so it is refused (415).
pub fn refuse_non_utf8_charset(req: &ReadRequest) -> Result<(), ApiError> {
    match req.charset() {
        None => Ok(()),
        Some(charset) if charset == "utf-8" || charset == "utf8" => Ok(()),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("JSON bodies are UTF-8; charset={other} is not accepted"),
        )),
    }
}

/// Parse a JSON body into `T`: 415 unless it is declared `application/json` (UTF-8), 400 `invalid_json`
/// naming the problem.
pub fn json_body<T: for<'de> Deserialize<'de>>(req: &ReadRequest) -> Result<T, ApiError> {
    match req.media_type().as_deref() {
        Some("application/json") => refuse_non_utf8_charset(req)?,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected application/json, got {}",
                    other.unwrap_or("no Content-Type")
                ),
            ))
        }
    }
    let value = crate::json::parse(&req.body)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

/// `POST /admin/v1/catalogue/versions?origin=FILE`: the body is a catalogue file (TOML) with a
/// `[release]` table; `origin` names the file in errors (`FILE:LINE: …`). Checked against the schema,
/// the registered agencies and the loaded connectors before it is accepted.
async fn load_catalogue(
    broker: &Broker,
    req: &ReadRequest,
) -> Result<std::sync::Arc<crate::catalogue::CatalogueVersion>, ApiError> {
    match req.media_type().as_deref() {
        Some("application/toml") => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/toml, got {}", other.unwrap_or("none")),
            ))
        }
    }
    let origin = req.query("origin").unwrap_or_else(|| "catalogue".into());
    let text = std::str::from_utf8(&req.body)
        .map_err(|e| ApiError::unprocessable("invalid_catalogue", format!("{origin}: not UTF-8 ({e})")))?;
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

/// A browser sending a request from another site adds its own `Origin` (or `Sec-Fetch-Site: cross-site`);
/// the operator's admin certificate, imported into that browser, would go along with it, so such
/// requests are refused. Non-browser clients send neither header and are authenticated by their
/// certificate alone.
pub(crate) fn refuse_cross_site(req: &ReadRequest) -> Result<(), ApiError> {
    let headers = &req.parts.headers;
    let refuse = || {
        ApiError::forbidden(
            "cross_origin",
            "state-changing admin requests must not come from another site",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return Err(refuse());
        }
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        let host = req
            .parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                headers
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .ok_or_else(refuse)?;
        if origin.to_str().ok() != Some(&format!("https://{host}")) {
            return Err(refuse());
        }
    }
    Ok(())
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
    refuse_cross_site(req)?;
    // A form can post only the CORS-safelisted types (or none) without a preflight, which the admin
    // listener never grants; any other declared type (JSON, TOML, JSON Lines) proves a scripted client.
    let forgeable = matches!(
        req.media_type().as_deref(),
        None | Some("application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain")
    );
    if *method == Method::POST && forgeable {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
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
        ApiError::bad_request("invalid_certificate", "certificate_pem is not a PEM certificate")
    })?;
    let cas = crate::tls::read_certs(&broker.config.tls.ca_bundle).map_err(ApiError::internal)?;
    if !crate::tls::issued_by_bundle(&cert, &cas) {
        return Err(ApiError::bad_request(
            "untrusted_certificate",
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
    if segments.starts_with(&["admin", "v1"]) {
        refuse_forgeable(req)?;
    }
    let ok = |value: serde_json::Value| Ok(Reply::json(StatusCode::OK, &value));
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            exchange.operation = "admin:metrics".into();
            broker.metrics.set_stale_crls(broker.tls.stale_crls());
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
        (&Method::POST, ["admin", "v1", "citizens", "import"]) => {
            exchange.operation = "admin:import_citizens".into();
            exchange.bulk = true; // many citizens' records in one request
            crate::import::import_batch(broker, req, &exchange.request_id).await
        }
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
                (None, Some(pem)) => bindable_certificate(broker, &pem)?,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        "give exactly one of fingerprint or certificate_pem",
                    ))
                }
            };
            // An operator's certificate bound to an agency would read citizen data on the agency listener.
            let normalized = crate::registry::normalize_fingerprint(&fingerprint)?;
            if broker.admin_fingerprints.contains(&normalized) {
                return Err(ApiError::bad_request(
                    "admin_certificate",
                    "an admin certificate (tls.admin_certs) cannot be bound to an agency",
                ));
            }
            ok(json!({ "agency": broker.registry.bind(code, &fingerprint).await? }))
        }
        (&Method::POST | &Method::DELETE, ["admin", "v1", "agencies", code, "purposes", purpose]) => {
            let grant = method == Method::POST;
            exchange.operation = if grant {
                "admin:grant_purpose"
            } else {
                "admin:revoke_purpose"
            }
            .into();
            let purpose = broker.catalogue().known(purpose)?.id.clone();
            exchange.purpose = Some(purpose.clone());
            if !grant && broker.catalogue().declares(&purpose, code) {
                return Err(ApiError::conflict(
                    "purpose_in_catalogue",
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
            exchange.operation = "admin:unbind_certificate".into();
            ok(json!({ "agency": broker.registry.unbind(code, fingerprint).await? }))
        }
        (&Method::POST, ["admin", "v1", "tls", "reload"]) => {
            exchange.operation = "admin:tls_reload".into();
            broker
                .tls
                .reload()
                .map_err(|e| ApiError::unprocessable("tls_reload_failed", e.to_string()))?;
            let stale = broker.tls.stale_crls();
            if stale > 0 {
                tracing::warn!(stale, "reloaded: CRLs past their nextUpdate are in force");
            }
            ok(json!({ "reloaded": true }))
        }
        (&Method::PUT, ["admin", "v1", "agencies", code, "plan"]) => {
            exchange.operation = "admin:set_plan".into();
            let value = crate::json::parse(&req.body)?;
            let plan = crate::quota::Plan::from_json(&value)?;
            for purpose in plan.limits.keys().filter(|p| p.as_str() != "*") {
                if exchange.catalogue.get(purpose).is_none() {
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
            let agency = broker
                .registry
                .set_billing_class(code, class.billing_class, broker.clock.now())
                .await?;
            ok(json!({ "agency": agency, "class_changes": broker.registry.class_changes(code)? }))
        }
        (&Method::GET, ["admin", "v1", "agencies", code, "usage"]) => {
            exchange.operation = "admin:usage".into();
            let agency = broker
                .registry
                .get(code)
                .ok_or_else(|| ApiError::not_found("unknown_agency", format!("no agency {code}")))?;
            let mut usage = serde_json::Map::new();
            let plan = crate::quota::Plan::from_json(&agency.plan)?;
            for purpose in exchange.catalogue.for_agency(code) {
                usage.insert(
                    purpose.id.clone(),
                    json!({ "used": broker.quota.usage(code, &purpose.id)?, "limits": plan.for_purpose(&purpose.id) }),
                );
            }
            ok(json!({ "agency": code, "usage": usage }))
        }
        (&Method::GET, ["admin", "v1", "billing", action @ ("report" | "reconcile" | "closed")])
        | (&Method::POST, ["admin", "v1", "billing", action @ "close"]) => {
            exchange.operation = format!("admin:billing_{action}");
            crate::billing::admin_route(broker, req, action).await
        }
        (&Method::GET, ["admin", "v1", "catalogue", "versions"]) => {
            exchange.operation = "admin:catalogue_versions".into();
            ok(crate::api::catalogue_versions(broker, exchange))
        }
        (&Method::GET, ["admin", "v1", "catalogue", "diff"]) => {
            exchange.operation = "admin:catalogue_diff".into();
            ok(crate::api::catalogue_diff(broker, exchange, req)?)
        }
        (&Method::POST, ["admin", "v1", "catalogue", "versions"]) => {
            exchange.operation = "admin:load_catalogue".into();
            let version = load_catalogue(broker, req).await?;
            exchange.operation = format!("admin:load_catalogue:{}", version.id);
            Ok(Reply::json(
                StatusCode::CREATED,
                &json!({ "version": version.id, "effective_at": crate::catalogue::vietnam_time(version.effective_at),
                         "origin": version.origin, "purposes": version.all().len() }),
            ))
        }
        (&Method::GET, ["admin", "v1", "audit", action]) => {
            exchange.operation = format!("admin:audit_{action}");
            crate::audit_api::admin_route(broker, req, action).await
        }
        _ => Err(ApiError::no_route(&method, &path)),
    }
}
