//! Stage: connector front door. Decodes an agency's document (JSON or XML, as its connector says), runs the
//! canonical operations it maps onto, and encodes the answer — or the error — in the agency's own shape.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::canonical;
use crate::citizen_id::CitizenId;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, ReadRequest, Reply};
use crate::policy::FieldPath;
use crate::registry::Agency;

use crate::connector::spec::{Connector, ErrorStyle, Format, Locator, Operation, Source, Target};
use crate::connector::xml::{self, Element, Step};

/// A decoded request document.
enum Doc {
    Json(Value),
    Xml(Element),
}

/// Values read from one request (or one batch entry).
#[derive(Default)]
struct Inputs {
    citizen_id: Option<String>,
    qr: Option<String>,
    echo: Map<String, Value>,
    entry: Map<String, Value>,
}

/// Answer one connector request: in the connector's own format, errors included.
pub async fn handle(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    connector: &Connector,
    req: &ReadRequest,
) -> Reply {
    exchange.channel = connector.name.clone();
    exchange.operation = Some(match connector.operation {
        Operation::Read => crate::exchange::Operation::Read,
        Operation::Write => crate::exchange::Operation::Write,
    });
    let mut echo = Map::new();
    match run(broker, exchange, agency, connector, req, &mut echo).await {
        Ok(reply) => reply,
        Err(e) => error_reply(connector, &e, &exchange.request_id),
    }
}

async fn run(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    connector: &Connector,
    req: &ReadRequest,
    echo: &mut Map<String, Value>,
) -> Result<Reply, ApiError> {
    if !connector.agencies.contains(&agency.code) {
        exchange.purpose = Some(connector.purpose.clone());
        return Err(ApiError::new(
            ErrorCode::PurposeNotAllowed,
            format!(
                "connector {} is not open to agency {}",
                connector.name, agency.code
            ),
        ));
    }
    let purpose = canonical::authorize(broker, exchange, agency, Some(&connector.purpose))?;
    let media = req.media_type().unwrap_or_default();
    if connector.format == Format::Json {
        crate::json::refuse_non_utf8_charset(req)?;
    }
    if !connector.content_types.contains(&media) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "expected {}, got {}",
                connector.content_types.join(" or "),
                if media.is_empty() { "none" } else { &media }
            ),
        ));
    }
    let doc = match connector.format {
        Format::Json => Doc::Json(crate::json::parse(&req.body)?),
        Format::Xml => Doc::Xml(xml::parse(&req.body)?),
    };
    match connector.operation {
        Operation::Read => {
            let inputs = extract(connector, &doc)?;
            *echo = inputs.echo.clone();
            let (id, qr) = subject(exchange, &inputs)?;
            let fields = purpose.release_set(Some(&connector.read_fields), &broker.schema)?;
            let record =
                canonical::fetch_for_release(broker, exchange, &id, &fields, &canonical::QR_MATCH_FIELDS)
                    .await?;
            if let Some(qr) = &qr {
                canonical::check_qr_matches(qr, &record)?;
            }
            let released = canonical::release(exchange, &record, &fields);
            let body = render(connector, &released, &inputs.echo)?;
            Ok(reply(connector, StatusCode::OK, body))
        }
        Operation::Write => {
            let history = connector
                .history
                .ok_or_else(|| ApiError::internal("write connector without history"))?;
            if let (Some(batch), Doc::Json(v)) = (&connector.batch, &doc) {
                if v.pointer(&batch.when).and_then(Value::as_str) == Some(batch.equals.as_str()) {
                    return write_batch(broker, exchange, &purpose, connector, history, v, batch).await;
                }
            }
            let inputs = extract(connector, &doc)?;
            let (id, _) = subject(exchange, &inputs)?;
            let (status, stored) = canonical::append(
                broker,
                exchange,
                &purpose,
                &id,
                history,
                Value::Object(inputs.entry),
            )
            .await?;
            Ok(write_reply(connector, status, &stored))
        }
    }
}

/// The citizen a request is about, from `citizen_id` or a QR payload (or a bare ID in the QR field).
fn subject(
    exchange: &mut Exchange,
    inputs: &Inputs,
) -> Result<(CitizenId, Option<crate::qr::CccdQr>), ApiError> {
    if let Some(raw) = &inputs.qr {
        let raw = raw.trim();
        if raw.len() == 12 && raw.bytes().all(|b| b.is_ascii_digit()) {
            return Ok((canonical::citizen_id(exchange, raw)?, None));
        }
        let qr = crate::qr::parse(raw)?;
        let id = canonical::citizen_id(exchange, qr.citizen_id.as_str())?;
        return Ok((id, Some(qr)));
    }
    match &inputs.citizen_id {
        Some(raw) => Ok((canonical::citizen_id(exchange, raw.trim())?, None)),
        None => Err(ApiError::new(
            ErrorCode::MissingField,
            "the request names no citizen",
        )),
    }
}

fn describe(at: &Locator) -> String {
    match at {
        Locator::Pointer(p) => p.clone(),
        Locator::Element { steps, attribute } => {
            let mut s: Vec<String> = steps.iter().map(|x| x.local.clone()).collect();
            if let Some(a) = attribute {
                s.push(format!("@{}", a.local));
            }
            format!("/{}", s.join("/"))
        }
    }
}

fn lookup(doc: &Doc, at: &Locator) -> Option<Value> {
    match (doc, at) {
        (Doc::Json(v), Locator::Pointer(p)) => v.pointer(p).filter(|v| !v.is_null()).cloned(),
        (Doc::Xml(root), Locator::Element { steps, attribute }) => root
            .find(steps, attribute.as_ref())
            .map(|s| Value::String(s.to_string())),
        _ => None,
    }
}

/// Check the document is what the connector expects, then read every mapped value, transformed.
fn extract(connector: &Connector, doc: &Doc) -> Result<Inputs, ApiError> {
    for (at, equals) in &connector.require {
        if lookup(doc, at).as_ref().and_then(Value::as_str) != Some(equals.as_str()) {
            return Err(ApiError::new(
                ErrorCode::UnexpectedDocument,
                format!("expected {equals} at {}", describe(at)),
            ));
        }
    }
    let mut inputs = Inputs::default();
    if let Doc::Xml(root) = doc {
        for m in &connector.request {
            for at in &m.from {
                if let Locator::Element { steps, .. } = at {
                    if root.ambiguous(steps) {
                        return Err(ApiError::new(
                            ErrorCode::DuplicateParameter,
                            format!("{} appears more than once", describe(at)),
                        ));
                    }
                }
            }
        }
    }
    for m in &connector.request {
        let found = m
            .from
            .iter()
            .find_map(|at| lookup(doc, at))
            .filter(|v| v.as_str().is_none_or(|s| !s.trim().is_empty()));
        let Some(mut value) = found else {
            if m.required {
                return Err(ApiError::new(
                    ErrorCode::MissingField,
                    format!("{} is missing", m.label),
                ));
            }
            continue;
        };
        for t in &m.transforms {
            value = t
                .apply(value)
                .map_err(|msg| ApiError::new(ErrorCode::InvalidValue, format!("{}: {msg}", m.label)))?;
        }
        let text = || {
            value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string())
        };
        match &m.to {
            Target::CitizenId => inputs.citizen_id = Some(text()),
            Target::Qr => inputs.qr = Some(text()),
            Target::Echo(name) => {
                inputs.echo.insert(name.clone(), value);
            }
            Target::EntryField(field) => {
                inputs.entry.insert(field.clone(), value);
            }
        }
    }
    Ok(inputs)
}

async fn write_batch(
    broker: &Broker,
    exchange: &mut Exchange,
    purpose: &crate::catalogue::PurposeInForce,
    connector: &Connector,
    history: canonical::History,
    doc: &Value,
    batch: &crate::connector::spec::Batch,
) -> Result<Reply, ApiError> {
    let entries = doc
        .pointer(&batch.entries)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.len() > batch.max_entries {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "{} entries; at most {} per call",
                entries.len(),
                batch.max_entries
            ),
        ));
    }
    exchange.bulk = entries.len() > 1;
    // One HTTP call is one metered call, however many entries it carries.
    canonical::meter(broker, exchange).await?;
    let mut outcomes = Vec::new();
    let mut citizens = std::collections::BTreeSet::new();
    let mut written = false;
    for entry in &entries {
        // Each entry is its own atomic canonical write: a bad one never stops or half-writes the others.
        let mut sub = exchange.clone();
        let item = entry.pointer(&batch.item).cloned().unwrap_or(Value::Null);
        let doc = Doc::Json(item);
        let result = async {
            let inputs = extract(connector, &doc)?;
            let (id, _) = subject(&mut sub, &inputs)?;
            canonical::append(
                broker,
                &mut sub,
                purpose,
                &id,
                history,
                Value::Object(inputs.entry),
            )
            .await
        }
        .await;
        if let Some(id) = &sub.citizen_id {
            citizens.insert(id.clone());
        }
        match result {
            Ok((status, stored)) => {
                written = true;
                outcomes.push(Ok((status, stored)));
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    if written {
        exchange.fields = vec![history.field().to_string()];
    }
    if citizens.len() == 1 {
        exchange.citizen_id = citizens.into_iter().next();
    }
    let body = match connector.errors {
        ErrorStyle::Fhir => json!({
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": outcomes.iter().map(|o| match o {
                Ok((status, _)) => json!({ "response": { "status": fhir_status(*status) } }),
                Err(e) => json!({ "response": { "status": fhir_status(e.status), "outcome": operation_outcome(e, &exchange.request_id) } }),
            }).collect::<Vec<_>>(),
        }),
        _ => json!({
            "results": outcomes.iter().map(|o| match o {
                Ok((status, stored)) => json!({ "status": status.as_u16(), "entry": stored }),
                Err(e) => json!({ "status": e.status.as_u16(), "error": { "code": e.code, "message": e.message } }),
            }).collect::<Vec<_>>(),
        }),
    };
    Ok(reply(connector, StatusCode::OK, body.to_string()))
}

fn fhir_status(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

fn operation_outcome(e: &ApiError, request_id: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": if e.status.is_server_error() { "fatal" } else { "error" },
            "code": if e.status == StatusCode::NOT_FOUND { "not-found" } else if e.status == StatusCode::CONFLICT { "conflict" } else if e.status.is_server_error() { "exception" } else { "invalid" },
            "details": { "coding": [{ "system": "urn:lienthong:error", "code": e.code }], "text": e.message },
            "diagnostics": format!("request_id {request_id}"),
        }]
    })
}

fn write_reply(connector: &Connector, status: StatusCode, stored: &Value) -> Reply {
    let body = match connector.errors {
        ErrorStyle::Fhir => json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "information", "code": "informational",
                        "diagnostics": if status == StatusCode::CREATED { "recorded" } else { "already recorded (idempotent replay)" } }]
        }),
        _ => json!({ "status": status.as_u16(), "entry": stored }),
    };
    reply(connector, status, body.to_string())
}

fn content_type(connector: &Connector) -> &'static str {
    match (connector.format, connector.errors) {
        (Format::Xml, _) => "text/xml; charset=utf-8",
        (_, ErrorStyle::Fhir) => "application/fhir+json",
        _ => "application/json",
    }
}

fn reply(connector: &Connector, status: StatusCode, body: String) -> Reply {
    let mut r = Reply::json(status, &Value::Null);
    r.body = body.into();
    r.content_type = content_type(connector);
    r
}

/// The value at a canonical path of the released record (first element for array paths).
fn field_value(record: &Value, path: &FieldPath) -> Option<Value> {
    let mut at = record;
    for part in path.as_str().split('.') {
        let (name, each) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        at = at.get(name)?;
        if each {
            at = at.get(0)?;
        }
    }
    (!at.is_null()).then(|| at.clone())
}

fn render(connector: &Connector, record: &Value, echo: &Map<String, Value>) -> Result<String, ApiError> {
    let mut values: Vec<(&Locator, String)> = Vec::new();
    for m in &connector.response {
        let value = match &m.from {
            Source::Field(path) => field_value(record, path),
            Source::Echo(name) => echo.get(name).cloned(),
        };
        let Some(mut value) = value else { continue };
        for t in &m.transforms {
            value = t
                .apply(value)
                .map_err(|msg| ApiError::internal(format!("response transform: {msg}")))?;
        }
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        values.push((&m.to, text));
    }
    for (at, value) in &connector.constants {
        values.push((at, value.clone()));
    }
    Ok(match connector.format {
        Format::Json => {
            let mut out = Value::Object(Map::new());
            for (at, text) in values {
                if let Locator::Pointer(p) = at {
                    crate::json::set_pointer(&mut out, p, Value::String(text));
                }
            }
            out.to_string()
        }
        Format::Xml => {
            let mut root = Element::default();
            for (at, text) in values {
                if let Locator::Element { steps, attribute } = at {
                    set_xml(&mut root, steps, attribute.as_ref(), text);
                }
            }
            envelope(connector, &connector.response_root, root.children)
        }
    })
}

fn set_xml(root: &mut Element, steps: &[Step], attribute: Option<&Step>, text: String) {
    let mut at = root;
    for step in steps {
        let index = match at
            .children
            .iter()
            .position(|c| c.local == step.local && c.ns == step.ns)
        {
            Some(i) => i,
            None => {
                at.children.push(Element {
                    ns: step.ns.clone(),
                    local: step.local.clone(),
                    ..Element::default()
                });
                at.children.len() - 1
            }
        };
        at = &mut at.children[index];
    }
    match attribute {
        Some(a) => at.attrs.push(xml::Attribute {
            ns: a.ns.clone(),
            local: a.local.clone(),
            value: text,
        }),
        None => at.text = text,
    }
}

/// Serialise the response: the wrapper path (e.g. SOAP Envelope/Body/…Response) around the mapped elements,
/// with every namespace of the connector's table declared once on the outermost element.
fn envelope(connector: &Connector, wrapper: &[Step], children: Vec<Element>) -> String {
    let mut inner = children;
    for step in wrapper.iter().rev() {
        inner = vec![Element {
            ns: step.ns.clone(),
            local: step.local.clone(),
            children: inner,
            ..Element::default()
        }];
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    for e in &inner {
        write_element(connector, e, true, &mut out);
    }
    out
}

fn prefix_of<'c>(connector: &'c Connector, ns: &str) -> Option<&'c str> {
    connector
        .namespaces
        .iter()
        .find(|(_, uri)| uri.as_str() == ns)
        .map(|(p, _)| p.as_str())
}

fn qualified(connector: &Connector, ns: &Option<String>, local: &str) -> String {
    match ns.as_deref().and_then(|n| prefix_of(connector, n)) {
        Some(p) => format!("{p}:{local}"),
        None => local.to_string(),
    }
}

fn write_element(connector: &Connector, e: &Element, top: bool, out: &mut String) {
    let name = qualified(connector, &e.ns, &e.local);
    out.push('<');
    out.push_str(&name);
    if top {
        for (prefix, uri) in &connector.namespaces {
            out.push_str(&format!(" xmlns:{prefix}=\"{}\"", xml::escape(uri)));
        }
    }
    for a in &e.attrs {
        out.push_str(&format!(
            " {}=\"{}\"",
            qualified(connector, &a.ns, &a.local),
            xml::escape(&a.value)
        ));
    }
    out.push('>');
    out.push_str(&xml::escape(&e.text));
    for c in &e.children {
        write_element(connector, c, false, out);
    }
    out.push_str(&format!("</{name}>"));
}

/// An error in the connector's own style, carrying the same stable `code`.
pub fn error_reply(connector: &Connector, e: &ApiError, request_id: &str) -> Reply {
    let mut r = match connector.errors {
        ErrorStyle::Json => return Reply::error(e, request_id),
        ErrorStyle::Fhir => reply(connector, e.status, operation_outcome(e, request_id).to_string()),
        ErrorStyle::Soap => {
            // SOAP 1.1 wants faults on HTTP 500; agencies also need the 4xx class, so the HTTP status is the
            // mapped one and the fault code says Client (their fault) or Server (ours).
            let fault = if e.status.is_server_error() {
                "soap:Server"
            } else {
                "soap:Client"
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><soap:Fault><faultcode>{fault}</faultcode><faultstring>{}</faultstring><detail><lt:error xmlns:lt=\"urn:lienthong:error\"><lt:code>{}</lt:code><lt:requestId>{}</lt:requestId></lt:error></detail></soap:Fault></soap:Body></soap:Envelope>",
                xml::escape(&e.message),
                e.code,
                xml::escape(request_id)
            );
            reply(connector, e.status, body)
        }
    };
    r.error_code = Some(e.code);
    r.internal_cause = e.cause.clone();
    if let Some(secs) = e.retry_after {
        r.headers
            .push((hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs)));
    }
    r
}
