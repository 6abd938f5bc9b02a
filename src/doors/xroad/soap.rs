//! Channel: the X-Road message protocol v4.x for SOAP, at `POST /xroad`.
//!
//! The envelope is read with the connector's hardened XML reader, then checked in the order X-Road's own
//! parser (`SaxSoapParserImpl`) checks it, with the fault codes X-Road answers: duplicate header fields and
//! malformed identifiers while reading the header; then a missing header, missing required fields
//! (`protocolVersion`, `client`, `id`, `service`), a missing body, a body with other than one element,
//! and a body element that does not match the service code. `userId` is optional, as in X-Road.
//!
//! The answer copies the request's header fields in order and adds `requestHash`: the Base64 SHA-512 of
//! the request's bytes as received, with `algorithmId` `http://www.w3.org/2001/04/xmlenc#sha512`.

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha512};

use super::{check_client, field_list, perform, Answer, ClientId, ServiceId};
use crate::broker::Broker;
use crate::connector::xml::{self, escape, Element};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, ReadRequest, Reply};
use crate::registry::Agency;

/// SOAP 1.1 envelope namespace.
pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// X-Road message header namespace.
pub const XROAD_NS: &str = "http://x-road.eu/xsd/xroad.xsd";
/// X-Road identifier namespace.
pub const ID_NS: &str = "http://x-road.eu/xsd/identifiers";
/// X-Road represented-party extension namespace.
pub const REPR_NS: &str = "http://x-road.eu/xsd/representation.xsd";
/// `requestHash/@algorithmId` of SHA-512.
pub const SHA512_URI: &str = "http://www.w3.org/2001/04/xmlenc#sha512";

/// The prefixes an answer declares on its envelope.
const PREFIXES: [(&str, &str); 4] = [
    ("SOAP-ENV", SOAP_NS),
    ("xrd", XROAD_NS),
    ("id", ID_NS),
    ("repr", REPR_NS),
];

/// The X-Road header of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The service client.
    pub client: ClientId,
    /// The service called.
    pub service: ServiceId,
    /// The message id.
    pub id: String,
    /// The end user, if given.
    pub user_id: Option<String>,
    /// The issue, if given (an empty `<issue/>` counts as none).
    pub issue: Option<String>,
    /// `4.x`.
    pub protocol_version: String,
    /// The represented party (class, code), if given.
    pub represented_party: Option<(Option<String>, String)>,
}

/// A request read and checked: its header, the header elements to echo, and the one body element.
#[derive(Debug)]
pub struct Message<'a> {
    /// The parsed header.
    pub header: Header,
    /// The header's elements, in order, for the answer.
    pub header_elements: &'a [Element],
    /// The body's one element.
    pub body: &'a Element,
}

fn fault(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn is(el: &Element, ns: &str, local: &str) -> bool {
    el.ns.as_deref() == Some(ns) && el.local == local
}

fn text_of(el: &Element) -> Option<String> {
    let t = el.text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Which identifier an element holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Client,
    Service,
}

/// `client` or `service`: the `id:objectType` attribute and the identifier parts.
fn identifier(el: &Element, kind: IdKind) -> Result<(ClientId, Option<String>, Option<String>), ApiError> {
    let object_type = el
        .attrs
        .iter()
        .find(|a| a.ns.as_deref() == Some(ID_NS) && a.local == "objectType")
        .map(|a| a.value.as_str())
        .ok_or_else(|| {
            fault(
                ErrorCode::XroadInvalidXml,
                format!("{}: missing objectType attribute", el.local),
            )
        })?;
    let expected = match (kind, object_type) {
        (IdKind::Client, "MEMBER" | "SUBSYSTEM") | (IdKind::Service, "SERVICE") => object_type,
        (_, "MEMBER" | "SUBSYSTEM" | "SERVICE") => {
            return Err(fault(
                ErrorCode::XroadInvalidXml,
                format!("{}: unexpected objectType {object_type}", el.local),
            ))
        }
        _ => {
            return Err(fault(
                ErrorCode::XroadInvalidXml,
                format!("{}: unknown objectType {object_type:?}", el.local),
            ))
        }
    };
    let part = |name: &str| -> Result<Option<String>, ApiError> {
        let mut found = el.children.iter().filter(|c| is(c, ID_NS, name));
        let first = found.next();
        if found.next().is_some() {
            return Err(fault(
                ErrorCode::XroadInvalidXml,
                format!("{}: {name} given twice", el.local),
            ));
        }
        Ok(first.and_then(text_of))
    };
    let required = |name: &str| -> Result<String, ApiError> {
        part(name)?.ok_or_else(|| {
            fault(
                ErrorCode::XroadMissingHeaderField,
                format!("{}: {name} missing", el.local),
            )
        })
    };
    let subsystem = part("subsystemCode")?;
    if (expected == "SUBSYSTEM") != subsystem.is_some() && kind == IdKind::Client {
        return Err(fault(
            ErrorCode::XroadInvalidXml,
            format!("client: objectType {expected} does not match the presence of subsystemCode"),
        ));
    }
    let id = ClientId {
        instance: required("xRoadInstance")?,
        member_class: required("memberClass")?,
        member_code: required("memberCode")?,
        subsystem_code: subsystem,
    }
    .validated()?;
    let (code, version) = match kind {
        IdKind::Service => (Some(required("serviceCode")?), part("serviceVersion")?),
        IdKind::Client => (None, None),
    };
    Ok((id, code, version))
}

/// Read and check an envelope, as X-Road does, in X-Road's order.
pub fn parse(root: &Element) -> Result<Message<'_>, ApiError> {
    if !is(root, SOAP_NS, "Envelope") {
        return Err(fault(
            ErrorCode::XroadInvalidSoap,
            "the document is not a SOAP 1.1 Envelope",
        ));
    }
    let header_el = root.children.iter().find(|c| is(c, SOAP_NS, "Header"));
    let body_el = root.children.iter().find(|c| is(c, SOAP_NS, "Body"));

    let mut client = None;
    let mut service = None;
    let mut id = None;
    let mut user_id = None;
    let mut issue = None;
    let mut protocol_version = None;
    let mut represented_party = None;
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for el in header_el.map_or(&[][..], |h| &h.children[..]) {
        let ns = el.ns.as_deref().unwrap_or_default();
        let known = (ns == XROAD_NS
            && matches!(
                el.local.as_str(),
                "client" | "service" | "id" | "userId" | "issue" | "protocolVersion" | "requestHash"
            ))
            || (ns == REPR_NS && el.local == "representedParty");
        if !known {
            // Other header extensions are the client's business, echoed untouched.
            continue;
        }
        if seen.contains(&(ns, el.local.as_str())) {
            return Err(fault(
                ErrorCode::XroadDuplicateHeaderField,
                format!("duplicate header field {}", el.local),
            ));
        }
        seen.push((ns, el.local.as_str()));
        match el.local.as_str() {
            "client" => client = Some(identifier(el, IdKind::Client)?.0),
            "service" => {
                let (provider, code, _version) = identifier(el, IdKind::Service)?;
                service = Some(ServiceId {
                    provider,
                    code: code.unwrap_or_default(),
                });
            }
            "id" => id = text_of(el),
            "userId" => user_id = text_of(el),
            "issue" => issue = text_of(el),
            "protocolVersion" => {
                let v = text_of(el).unwrap_or_default();
                if !v.starts_with("4.") {
                    return Err(fault(
                        ErrorCode::XroadInvalidProtocolVersion,
                        format!("invalid protocol version (supported: 4.x, provided: {v})"),
                    ));
                }
                protocol_version = Some(v);
            }
            "representedParty" => {
                let part = |name: &str| {
                    el.children
                        .iter()
                        .find(|c| is(c, REPR_NS, name))
                        .and_then(text_of)
                };
                let code = part("partyCode").ok_or_else(|| {
                    fault(
                        ErrorCode::XroadMissingHeaderField,
                        "representedParty: partyCode missing",
                    )
                })?;
                represented_party = Some((part("partyClass"), code));
            }
            _ => {} // requestHash in a request: ignored, as the protocol says.
        }
    }
    let Some(header_el) = header_el else {
        return Err(fault(ErrorCode::XroadMissingHeader, "the SOAP header is missing"));
    };
    let missing = |field: &str| {
        fault(
            ErrorCode::XroadMissingHeaderField,
            format!("required header field {field} is missing"),
        )
    };
    let protocol_version = protocol_version.ok_or_else(|| missing("protocolVersion"))?;
    let client = client.ok_or_else(|| missing("client"))?;
    let id = id.ok_or_else(|| missing("id"))?;
    let service = service.ok_or_else(|| missing("service"))?;
    let body_el = body_el.ok_or_else(|| fault(ErrorCode::XroadMissingBody, "the SOAP body is missing"))?;
    let [body] = body_el.children.as_slice() else {
        return Err(fault(
            ErrorCode::XroadInvalidBody,
            "the SOAP body must have exactly one child element",
        ));
    };
    if !body.local.starts_with(&service.code) {
        return Err(fault(
            ErrorCode::XroadInconsistentHeaders,
            "the service code does not match in header and body",
        ));
    }
    Ok(Message {
        header: Header {
            client,
            service,
            id,
            user_id,
            issue,
            protocol_version,
            represented_party,
        },
        header_elements: &header_el.children,
        body,
    })
}

/// Serve one X-Road SOAP request for `agency`.
pub async fn exchange(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
) -> Result<Reply, ApiError> {
    exchange.operation = Some(crate::exchange::Operation::Xroad);
    if req.parts.method != hyper::Method::POST {
        return Err(ApiError::method_not_allowed(&req.parts.method, req.path()));
    }
    let envelope = read_envelope(req)?;
    let message = parse(&envelope)?;
    // The claim goes on the record before it is checked.
    account(exchange, &message.header)?;
    check_client(agency, &message.header.client)?;
    let operation = broker.xroad_services.find(&message.header.service)?;
    let citizen = body_value(message.body, "citizenId");
    let fields = body_value(message.body, "fields").map(|f| field_list(&f));
    Ok(
        match perform(
            broker,
            exchange,
            agency,
            operation,
            req,
            citizen.as_deref(),
            fields,
        )
        .await?
        {
            Answer::Canonical(value) => answer(&message, &req.body, |out| write_value(out, &value)),
            Answer::Connector(reply) => connector_answer(&message, &req.body, reply),
        },
    )
}

/// Read the request body as an X-Road SOAP message: 415 `xroad_invalid_content_type` unless `text/xml`;
/// the reader's own refusals (not UTF-8, DOCTYPE, entities, size) are X-Road's `InvalidXml`.
pub fn read_envelope(req: &ReadRequest) -> Result<Element, ApiError> {
    match req.media_type().as_deref() {
        Some("text/xml") => {}
        other => {
            return Err(fault(
                ErrorCode::XroadInvalidContentType,
                format!(
                    "X-Road SOAP messages are text/xml, not {}",
                    other.unwrap_or("(none)")
                ),
            ))
        }
    }
    xml::parse(&req.body).map_err(|e| fault(ErrorCode::XroadInvalidXml, e.message))
}

/// The value of the body element's child `name` (any namespace), e.g. `citizenId`.
pub fn body_value(body: &Element, name: &str) -> Option<String> {
    body.children.iter().find(|c| c.local == name).and_then(text_of)
}

/// Base64 SHA-512 of the request bytes, as X-Road's `requestHash`.
pub fn request_hash(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha512::digest(body))
}

/// A connector's answer as an X-Road answer: its body element under the echoed header. Its faults (and
/// anything that is not an envelope) pass through unchanged, as X-Road passes a service's faults.
fn connector_answer(message: &Message<'_>, request_bytes: &[u8], reply: Reply) -> Reply {
    if !reply.status.is_success() {
        return reply;
    }
    let Ok(envelope) = xml::parse(&reply.body) else {
        return reply;
    };
    let body = envelope
        .children
        .iter()
        .find(|c| is(c, SOAP_NS, "Body"))
        .and_then(|b| b.children.first());
    let Some(body) = body else {
        return reply;
    };
    let mut answered = raw_answer(message, request_bytes, |out| write_element(out, body, None));
    answered.status = reply.status;
    answered.headers = reply.headers;
    answered
}

/// The answer: the request's header fields in order plus `requestHash`, and `{service}Response`
/// holding what `write_body` writes (unqualified elements).
pub fn answer(message: &Message<'_>, request_bytes: &[u8], write_body: impl FnOnce(&mut String)) -> Reply {
    let body = message.body;
    let local = body.local.strip_suffix("Request").unwrap_or(&body.local);
    raw_answer(message, request_bytes, |out| {
        let (open, close) = match &body.ns {
            Some(ns) => (
                format!("<svc:{local}Response xmlns:svc=\"{}\">", escape(ns)),
                format!("</svc:{local}Response>"),
            ),
            None => (format!("<{local}Response>"), format!("</{local}Response>")),
        };
        out.push_str(&open);
        write_body(out);
        out.push_str(&close);
    })
}

/// The envelope of an answer: the request's header fields in order plus `requestHash`, then the body
/// `write_body` writes.
fn raw_answer(message: &Message<'_>, request_bytes: &[u8], write_body: impl FnOnce(&mut String)) -> Reply {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><SOAP-ENV:Envelope");
    for (prefix, ns) in PREFIXES {
        out.push_str(&format!(" xmlns:{prefix}=\"{ns}\""));
    }
    out.push_str("><SOAP-ENV:Header>");
    for el in message.header_elements {
        if is(el, XROAD_NS, "requestHash") {
            continue;
        }
        write_element(&mut out, el, None);
    }
    out.push_str(&format!(
        "<xrd:requestHash algorithmId=\"{SHA512_URI}\">{}</xrd:requestHash></SOAP-ENV:Header><SOAP-ENV:Body>",
        request_hash(request_bytes)
    ));
    write_body(&mut out);
    out.push_str("</SOAP-ENV:Body></SOAP-ENV:Envelope>");
    Reply {
        status: StatusCode::OK,
        content_type: "text/xml; charset=utf-8",
        body: out.into(),
        headers: Vec::new(),
        error_code: None,
        internal_cause: None,
    }
}

/// Write an element of the request again, with the answer's prefixes (the protocol gives prefixes no
/// meaning; namespaces, order and values are kept).
fn write_element(out: &mut String, el: &Element, default_ns: Option<&str>) {
    let known = |ns: &str| PREFIXES.iter().find(|(_, n)| *n == ns).map(|(p, _)| *p);
    let mut decl = String::new();
    let mut child_default = default_ns;
    let name = match el.ns.as_deref() {
        Some(ns) => match known(ns) {
            Some(prefix) => format!("{prefix}:{}", el.local),
            None => {
                if default_ns != Some(ns) {
                    decl = format!(" xmlns=\"{}\"", escape(ns));
                }
                child_default = Some(ns);
                el.local.clone()
            }
        },
        None => {
            if default_ns.is_some() {
                decl = " xmlns=\"\"".into();
            }
            child_default = None;
            el.local.clone()
        }
    };
    out.push('<');
    out.push_str(&name);
    out.push_str(&decl);
    for (i, a) in el.attrs.iter().enumerate() {
        let attr_name = match a.ns.as_deref() {
            None => a.local.clone(),
            Some(ns) => match known(ns) {
                Some(prefix) => format!("{prefix}:{}", a.local),
                None => {
                    out.push_str(&format!(" xmlns:a{i}=\"{}\"", escape(ns)));
                    format!("a{i}:{}", a.local)
                }
            },
        };
        out.push_str(&format!(" {attr_name}=\"{}\"", escape(&a.value)));
    }
    out.push('>');
    if el.children.is_empty() {
        out.push_str(&escape(el.text.trim()));
    }
    for child in &el.children {
        write_element(out, child, child_default);
    }
    out.push_str(&format!("</{name}>"));
}

/// A JSON answer as unqualified XML: an object's keys become elements, an array's items `<item>`.
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                // Canonical field names are XML names already; anything else is not emitted as a name.
                let name = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                {
                    key.as_str()
                } else {
                    "field"
                };
                out.push_str(&format!("<{name}>"));
                write_value(out, v);
                out.push_str(&format!("</{name}>"));
            }
        }
        Value::Array(items) => {
            for v in items {
                out.push_str("<item>");
                write_value(out, v);
                out.push_str("</item>");
            }
        }
        Value::Null => {}
        Value::String(s) => out.push_str(&escape(s)),
        other => out.push_str(&other.to_string()),
    }
}

/// A SOAP Fault. X-Road's own errors carry its fault code (`Client.MissingHeader`, …); errors of the
/// service itself (purpose, citizen, quota) `SOAP-ENV:Client` or `SOAP-ENV:Server`. The detail holds
/// X-Road's `faultDetail` (the request id) and lienthong's stable code.
pub fn fault_reply(e: &ApiError, request_id: &str) -> Reply {
    let code = super::fault_type(e.code).unwrap_or(if e.status.is_server_error() {
        "SOAP-ENV:Server"
    } else {
        "SOAP-ENV:Client"
    });
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><SOAP-ENV:Envelope xmlns:SOAP-ENV=\"{SOAP_NS}\"><SOAP-ENV:Body><SOAP-ENV:Fault><faultcode>{code}</faultcode><faultstring>{}</faultstring><detail><faultDetail xmlns=\"\">{}</faultDetail><lt:error xmlns:lt=\"urn:lienthong:error\"><lt:code>{}</lt:code><lt:requestId>{}</lt:requestId></lt:error></detail></SOAP-ENV:Fault></SOAP-ENV:Body></SOAP-ENV:Envelope>",
        escape(&e.message),
        escape(request_id),
        e.code,
        escape(request_id),
    );
    let mut reply = Reply {
        status: e.status,
        content_type: "text/xml; charset=utf-8",
        body: body.into(),
        headers: Vec::new(),
        error_code: Some(e.code),
        internal_cause: e.cause.clone(),
    };
    if let Some(secs) = e.retry_after {
        reply
            .headers
            .push((hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs)));
    }
    reply
}

/// Record the header on the exchange: the official and the issue into the accountability, the X-Road
/// identifiers beside them.
pub fn account(exchange: &mut Exchange, header: &Header) -> Result<(), ApiError> {
    let record = &mut exchange.accountability;
    if let Some(user) = &header.user_id {
        record.user_id = Some(crate::accountability::user_id("userId", user)?);
    }
    if let Some(issue) = &header.issue {
        record.issue = Some(crate::accountability::checked("issue", issue, 128)?);
    }
    record.xroad_client = Some(header.client.to_string());
    record.xroad_service = Some(header.service.to_string());
    record.xroad_id = Some(crate::accountability::checked("id", &header.id, 128)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_annex_e1_request() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/realdata/xroad/pr-mess_annexE1_request.xml"
        ))
        .unwrap();
        let root = xml::parse(&bytes).unwrap();
        let m = parse(&root).unwrap();
        assert_eq!(m.header.client.to_string(), "EE/GOV/MEMBER1/SUBSYSTEM1");
        assert_eq!(
            m.header.service.to_string(),
            "EE/GOV/MEMBER2/SUBSYSTEM2/exampleService"
        );
        assert_eq!(m.header.user_id.as_deref(), Some("EE12345678901"));
        assert_eq!(m.header.issue.as_deref(), Some("12345"));
        let value = serde_json::json!({"a": [1, "x<"]});
        let reply = answer(&m, &bytes, |out| write_value(out, &value));
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        // The answer parses as an X-Road message again, with the same header.
        let again = xml::parse(text.as_bytes()).unwrap();
        let header = again.children[0].children.len();
        assert_eq!(header, m.header_elements.len() + 1, "{text}");
        assert!(text.contains("<svc:exampleServiceResponse xmlns:svc=\"http://producer.x-road.eu\"><a><item>1</item><item>x&lt;</item></a>"), "{text}");
    }
}
