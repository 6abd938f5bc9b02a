//! Channel: X-Road. Agency systems that already talk to an X-Road security server reach lienthong with
//! the messages they already send:
//!
//! - [`soap`]: the X-Road message protocol v4.x for SOAP at `POST /xroad` — the header is parsed and
//!   checked as X-Road's own parser does, the answer echoes it with `requestHash`, errors are SOAP
//!   Faults with X-Road's fault codes;
//! - [`rest`]: the X-Road message protocol for REST 1.x at `/r1/{instance}/{class}/{member}/{subsystem}/{service}[/path]`.
//!
//! Both are thin: the named X-Road client must be the one bound to the certificate's agency
//! ([`check_client`]; the header is a claim, the certificate is the proof), the service id maps by config
//! (`[[xroad.services]]`) to a canonical operation and purpose, or to a connector ([`ServiceMap`]), and from
//! there the request runs through `canonical` (or the connector) like any other channel.

pub mod rest;
pub mod soap;

use serde_json::{json, Value};

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, ReadRequest, Reply};
use crate::registry::Agency;
pub use crate::xroad_id::{ClientId, Operation, ServiceId, ServiceMap};

/// The X-Road client a request names must be the one bound to the agency of its certificate:
/// 403 `xroad_client_mismatch` otherwise.
pub fn check_client(agency: &Agency, named: &ClientId) -> Result<(), ApiError> {
    match &agency.xroad {
        Some(bound) if bound == named => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::XroadClientMismatch,
            format!(
                "the request names X-Road client {named}, which is not the one bound to agency {}",
                agency.code
            ),
        )),
        None => Err(ApiError::new(
            ErrorCode::XroadClientMismatch,
            format!(
                "the request names X-Road client {named}; agency {} has no X-Road identity",
                agency.code
            ),
        )),
    }
}

/// X-Road's error type for a lienthong error code, when the error is X-Road's (the message did not
/// follow the protocol, or the client may not call): answered with X-Road's fault code and, on REST,
/// the `X-Road-Error` header. `None` for errors of the service itself (purpose, citizen, quota), which
/// X-Road passes through as the provider's own answer.
pub fn fault_type(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::XroadInvalidContentType | ErrorCode::UnsupportedMediaType => "Client.InvalidContentType",
        ErrorCode::XroadInvalidXml
        | ErrorCode::InvalidXml
        | ErrorCode::InvalidEncoding
        | ErrorCode::XmlEntityRefused
        | ErrorCode::XmlTooLarge => "Client.InvalidXml",
        ErrorCode::XroadInvalidSoap => "Client.InvalidSoap",
        ErrorCode::XroadMissingHeader => "Client.MissingHeader",
        ErrorCode::XroadMissingHeaderField => "Client.MissingHeaderField",
        ErrorCode::XroadDuplicateHeaderField => "Client.DuplicateHeaderField",
        ErrorCode::XroadInvalidProtocolVersion => "Client.InvalidProtocolVersion",
        ErrorCode::XroadMissingBody => "Client.MissingBody",
        ErrorCode::XroadInvalidBody => "Client.InvalidBody",
        ErrorCode::XroadInconsistentHeaders => "Client.InconsistentHeaders",
        ErrorCode::XroadInvalidClientIdentifier | ErrorCode::XroadClientMismatch => {
            "Client.InvalidClientIdentifier"
        }
        ErrorCode::XroadUnknownService => "Client.UnknownService",
        ErrorCode::XroadBadRequest | ErrorCode::InvalidAccountability => "Client.BadRequest",
        ErrorCode::UnknownAgency | ErrorCode::AgencySuspended => "Client.AccessDenied",
        ErrorCode::MethodNotAllowed => "Client.InvalidHttpMethod",
        _ => return None,
    })
}

/// What a mapped service answered.
#[derive(Debug)]
pub enum Answer {
    /// A canonical answer, for the protocol to encode.
    Canonical(Value),
    /// A connector's own answer (success or its error), in its format.
    Connector(Reply),
}

/// Run a mapped operation for the agency; `citizen` and `fields` come from the message body (SOAP) or
/// the path and query (REST). A canonical operation answers what the canonical API would; a connector
/// gets the request as received (its own checks, purpose and mapping apply).
pub async fn perform(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    operation: &Operation,
    req: &ReadRequest,
    citizen: Option<&str>,
    fields: Option<Vec<String>>,
) -> Result<Answer, ApiError> {
    match operation {
        Operation::ListPurposes => {
            exchange.operation = Some(crate::exchange::Operation::ListPurposes);
            let catalogue = broker.catalogue();
            let purposes: Vec<Value> = catalogue
                .for_agency(&agency.code)
                .into_iter()
                .map(crate::canonical::describe_purpose)
                .collect();
            Ok(Answer::Canonical(json!({ "purposes": purposes })))
        }
        Operation::Read { purpose } => {
            let purpose = crate::canonical::authorize(broker, exchange, agency, Some(purpose))?;
            let id = crate::canonical::citizen_id(exchange, citizen.unwrap_or_default())?;
            let record = crate::canonical::read(broker, exchange, &purpose, &id, fields.as_deref()).await?;
            Ok(Answer::Canonical(
                json!({ "purpose": purpose.id, "citizen": record }),
            ))
        }
        Operation::Connector { name } => {
            let connector = broker.connectors.by_name(name).ok_or_else(|| {
                ApiError::internal(format!("X-Road service maps to missing connector {name}"))
            })?;
            if connector.method != req.parts.method {
                return Err(ApiError::method_not_allowed(&req.parts.method, req.path()));
            }
            Ok(Answer::Connector(
                crate::doors::connector::handle(broker, exchange, agency, connector, req).await,
            ))
        }
    }
}

/// The path of the SOAP endpoint.
pub const SOAP_PATH: &str = "/xroad";

/// Which X-Road protocol a path speaks, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /xroad`.
    Soap,
    /// `/r1/…`.
    Rest,
}

impl Protocol {
    /// The protocol of `path`.
    pub fn of(path: &str) -> Option<Self> {
        if path == SOAP_PATH {
            Some(Protocol::Soap)
        } else if path == "/r1" || path.starts_with("/r1/") {
            Some(Protocol::Rest)
        } else {
            None
        }
    }

    /// The channel name in the audit trail and metrics.
    pub fn channel(self) -> &'static str {
        match self {
            Protocol::Soap => "xroad-soap",
            Protocol::Rest => "xroad-rest",
        }
    }
}

/// Answer one X-Road request (the hook the pipeline calls for `/xroad` and `/r1/…`): the agency of
/// the certificate (as admitted), the accountability headers, then the protocol. Every error is answered in the
/// protocol's own form.
pub async fn handle(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: Option<Agency>,
    protocol: Protocol,
    req: &ReadRequest,
) -> Reply {
    exchange.channel = protocol.channel().into();
    let outcome = async {
        let agency = crate::admission::authenticate(exchange, agency)?;
        crate::canonical::declare_accountability(exchange, &req.parts.headers)?;
        match protocol {
            Protocol::Soap => soap::exchange(broker, exchange, &agency, req).await,
            Protocol::Rest => rest::exchange(broker, exchange, &agency, req).await,
        }
    }
    .await;
    match (outcome, protocol) {
        (Ok(reply), _) => reply,
        (Err(e), Protocol::Soap) => soap::fault_reply(&e, &exchange.request_id),
        (Err(e), Protocol::Rest) => rest::error_reply(&e, exchange, req),
    }
}

/// `fields=a,b` as a list.
pub(crate) fn field_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identifiers_parse_and_print() {
        let c = ClientId::parse("EE/GOV/MEMBER1/SUBSYSTEM1").unwrap();
        assert_eq!(c.subsystem_code.as_deref(), Some("SUBSYSTEM1"));
        assert_eq!(c.to_string(), "EE/GOV/MEMBER1/SUBSYSTEM1");
        assert_eq!(
            ClientId::parse("EE/BUSINESS/consumer").unwrap().subsystem_code,
            None
        );
        assert!(ClientId::parse("EE/GOV").is_err());
        assert!(ClientId::parse("EE/GOV/a b").is_err());
        let s = ServiceId::parse("EE/BUSINESS/producer/testQuery").unwrap();
        assert_eq!(
            (s.provider.member_code.as_str(), s.code.as_str()),
            ("producer", "testQuery")
        );
        assert_eq!(
            ServiceId::parse("VN/GOV/lienthong/citizens/get%3ACitizen")
                .unwrap()
                .code,
            "get:Citizen"
        );
    }
}
