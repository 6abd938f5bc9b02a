//! Stage: front door. The canonical API on the agency listener: routes an authenticated agency's
//! request to the canonical operations (reads, appends, the access log, the catalogue and its versions,
//! the EU DCC routes).

pub mod dcc;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::broker::Broker;
use crate::canonical::{self, History};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, ReadRequest, Reply};
use crate::registry::Agency;

/// Whether the canonical API answers `method` on `path` (split into `segments`): everything under
/// `/v1/citizens` and `/v1/purposes`, `GET /v1/whoami` and `/v1/catalogue[/versions|/diff]`, and
/// `POST /v1/dcc/verify`.
pub fn serves(method: &Method, path: &str, segments: &[&str]) -> bool {
    matches!(segments, ["v1", "citizens" | "purposes", ..])
        || (method == Method::GET
            && matches!(
                path,
                "/v1/whoami" | "/v1/catalogue" | "/v1/catalogue/versions" | "/v1/catalogue/diff"
            ))
        || (method == Method::POST && path == "/v1/dcc/verify")
}

/// Answer a canonical API request from an authenticated agency (see [`serves`]).
pub async fn route(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    segments: &[&str],
) -> Result<Reply, ApiError> {
    let method = &req.parts.method;
    match (method, req.path()) {
        (&Method::GET, "/v1/whoami") => {
            exchange.operation = Some(Operation::Whoami);
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
            exchange.operation = Some(Operation::Catalogue);
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
            exchange.operation = Some(Operation::CatalogueVersions);
            Ok(Reply::json(
                StatusCode::OK,
                &canonical::catalogue_versions(broker, exchange),
            ))
        }
        (&Method::GET, "/v1/catalogue/diff") => {
            exchange.operation = Some(Operation::CatalogueDiff);
            Ok(Reply::json(
                StatusCode::OK,
                &canonical::catalogue_diff(broker, exchange, req)?,
            ))
        }
        (&Method::GET, "/v1/purposes") => {
            exchange.operation = Some(Operation::ListPurposes);
            let purposes: Vec<_> = exchange
                .catalogue
                .for_agency(&agency.code)
                .into_iter()
                .map(canonical::describe_purpose)
                .collect();
            Ok(Reply::json(StatusCode::OK, &json!({ "purposes": purposes })))
        }
        _ => route_resources(broker, exchange, agency, req, method, segments).await,
    }
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
    segments: &[&str],
) -> Result<Reply, ApiError> {
    let path = req.path();
    match (method, segments) {
        (&Method::GET, ["v1", "purposes", purpose, "release"]) => {
            exchange.operation = Some(Operation::ReleaseDryRun);
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
            crate::doors::api::dcc::issue(broker, exchange, agency, req, id).await
        }
        (&Method::POST, ["v1", "dcc", "verify"]) => crate::doors::api::dcc::verify(broker, exchange, req),
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
        (&Method::GET, ["v1", "citizens", id, "access-log"]) => {
            exchange.operation = Some(Operation::AccessLog);
            let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
            if purpose.id != "citizen-self-service" {
                return Err(ApiError::new(
                    ErrorCode::PurposeNotAllowed,
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
            let entry: serde_json::Value = crate::json::body(req)?;
            if !entry.is_object() {
                return Err(ApiError::new(
                    ErrorCode::SchemaViolation,
                    "/: the body must be a JSON object",
                ));
            }
            let (status, stored) = canonical::append(broker, exchange, &purpose, &id, history, entry).await?;
            Ok(Reply::json(
                status,
                &json!({ "citizen_id": id.as_str(), history.field(): stored }),
            ))
        }
        _ => Err(ApiError::method_not_allowed(method, path)),
    }
}
