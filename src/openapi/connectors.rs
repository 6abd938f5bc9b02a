//! The connectors' routes, one per loaded connector, in the agency's own format.

use super::*;

const CONNECTOR_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidXml,
    ErrorCode::TooDeep,
    ErrorCode::InvalidQrPayload,
    ErrorCode::ForbiddenField,
    ErrorCode::IdempotencyConflict,
    ErrorCode::QrMismatch,
    ErrorCode::BatchTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::MissingField,
    ErrorCode::InvalidValue,
    ErrorCode::UnexpectedDocument,
    ErrorCode::SchemaViolation,
    ErrorCode::InvalidCitizenId,
];

/// A JSON document shape from the JSON Pointers a connector reads or writes: objects along the way,
/// arrays where a step is an index. Nothing is required or closed: the connector names what it needs
/// (422 `missing_field`) and ignores the rest.
pub(super) fn pointer_schema(pointers: &[&str]) -> Value {
    fn insert(node: &mut Value, steps: &[String]) {
        let Some((first, rest)) = steps.split_first() else {
            return;
        };
        let is_index = first.parse::<usize>().is_ok();
        if is_index {
            node["type"] = json!("array");
            if node.get("items").is_none() {
                node["items"] = json!({});
            }
            if !rest.is_empty() {
                insert(&mut node["items"], rest);
            }
        } else {
            node["type"] = json!("object");
            if node.get("properties").is_none() {
                node["properties"] = json!({});
            }
            let child = &mut node["properties"][first.as_str()];
            if child.is_null() {
                *child = json!({});
            }
            insert(child, rest);
        }
    }
    let mut root = json!({ "type": "object" });
    for p in pointers {
        let steps: Vec<String> = p
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        insert(&mut root, &steps);
    }
    root
}

pub(super) fn connector_route(purposes: &[Purpose], c: &crate::connector::Connector) -> Value {
    use crate::connector::spec::Locator;
    use crate::connector::{ErrorStyle, Format};
    let served: Vec<&Purpose> = purposes.iter().filter(|p| p.id == c.purpose).collect();
    let response_type = match (c.format, c.errors) {
        (Format::Xml, _) => "text/xml",
        (_, ErrorStyle::Fhir) => "application/fhir+json",
        _ => "application/json",
    };
    let (request_schema, answer_schema) = match c.format {
        Format::Json => {
            let from: Vec<&str> = c
                .request
                .iter()
                .flat_map(|m| m.from.iter())
                .filter_map(|l| match l {
                    Locator::Pointer(p) => Some(p.as_str()),
                    Locator::Element { .. } => None,
                })
                .collect();
            let to: Vec<&str> = c
                .response
                .iter()
                .filter_map(|m| match &m.to {
                    Locator::Pointer(p) => Some(p.as_str()),
                    Locator::Element { .. } => None,
                })
                .chain(c.constants.iter().filter_map(|(l, _)| match l {
                    Locator::Pointer(p) => Some(p.as_str()),
                    Locator::Element { .. } => None,
                }))
                .collect();
            let answer = if c.response.is_empty() && c.constants.is_empty() {
                json!({ "type": "object" })
            } else {
                pointer_schema(&to)
            };
            (pointer_schema(&from), answer)
        }
        Format::Xml => (
            json!({ "type": "string", "description": "An XML document (see the connector's description)." }),
            json!({ "type": "string" }),
        ),
    };
    let mut request_content = Map::new();
    for ct in &c.content_types {
        request_content.insert(ct.clone(), json!({ "schema": request_schema }));
    }
    let ok_statuses: &[u16] = match c.operation {
        crate::connector::Operation::Read => &[200],
        crate::connector::Operation::Write => &[200, 201],
    };
    let ok: Vec<(u16, Value)> = ok_statuses
        .iter()
        .map(|s| {
            (
                *s,
                json!({
                    "description": "Answered in the agency's own format.",
                    "headers": { "x-request-id": { "$ref": "#/components/headers/RequestId" } },
                    "content": { response_type: { "schema": answer_schema } },
                }),
            )
        })
        .collect();
    let mut op = operation(
        &format!("connector_{}", c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_")),
        "connectors",
        &c.description,
        format!(
            "Connector `{}` ({} {:?}, {:?} errors) for agencies {}: the purpose is fixed by the connector.\n\n{}",
            c.name,
            c.method,
            c.format,
            c.errors,
            c.agencies.join(", "),
            purposes_markdown(&served, |p| match c.operation {
                crate::connector::Operation::Read => joined(&p.read),
                crate::connector::Operation::Write => joined(&p.write),
            })
        ),
        vec![],
        &ok,
        &[COMMON_ERRORS, PURPOSE_ERRORS, CITIZEN_ERRORS, CONNECTOR_ERRORS],
    );
    // Errors come in the connector's own style (FHIR OperationOutcome, SOAP Fault) with the same codes.
    if c.errors != ErrorStyle::Json {
        let error_schema = match c.format {
            Format::Xml => json!({ "type": "string" }),
            Format::Json => json!({ "type": "object" }),
        };
        if let Some(responses) = op["responses"].as_object_mut() {
            for (status, r) in responses.iter_mut() {
                if status.starts_with('4') || status.starts_with('5') {
                    r["content"] = json!({ response_type: { "schema": error_schema } });
                }
            }
        }
    }
    op["requestBody"] = json!({ "required": true, "content": request_content });
    op["x-purposes"] = json!([c.purpose]);
    op["x-connector"] = json!({
        "name": c.name, "format": format!("{:?}", c.format).to_lowercase(),
        "errors": format!("{:?}", c.errors).to_lowercase(), "agencies": c.agencies,
    });
    let method = c.method.as_str().to_ascii_lowercase();
    json!({ method: op })
}
