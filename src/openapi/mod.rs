//! Stage: publication. The purpose catalogue and the agency API as one OpenAPI 3.1 document, served at
//! `GET /v1/catalogue` on the agency listener: every route, its request and response schemas, the
//! purposes it serves (legal basis, price, fields) and every error it can answer, by status and code.
//!
//! The document is generated from what the broker actually runs with (the loaded schema and purpose
//! catalogue), so it cannot drift from the code paths it describes. CI validates it with
//! `openapi-spec-validator` and runs `schemathesis` against the demo (`scripts/schemathesis.sh`).

use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::error::ErrorCode;
use crate::policy::Purpose;
use crate::record::History;

mod channels;
mod connectors;
mod routes;
mod schemas;

use channels::*;
use connectors::*;
use routes::*;
use schemas::*;

/// Errors every authenticated agency route can answer, whatever it does.
const COMMON_ERRORS: &[ErrorCode] = &[
    ErrorCode::BadBody,
    ErrorCode::DuplicateParameter,
    ErrorCode::UnknownAgency,
    ErrorCode::AgencySuspended,
    ErrorCode::RequestTimeout,
    ErrorCode::BodyTooLarge,
    ErrorCode::InternalError,
    ErrorCode::AuditUnavailable,
];

/// Errors of routes that take a declared purpose.
const PURPOSE_ERRORS: &[ErrorCode] = &[
    ErrorCode::PurposeRequired,
    ErrorCode::UnknownPurpose,
    ErrorCode::PurposeNotAllowed,
    ErrorCode::QuotaExceeded,
];

/// Errors of routes that name a citizen and touch the store (the `upstream_*` ones when the store is a
/// provider system, `[store] backend = "upstream"`: the contract is the same in every mode).
const CITIZEN_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidCitizenId,
    ErrorCode::CitizenNotFound,
    ErrorCode::StoreUnavailable,
    ErrorCode::UpstreamError,
    ErrorCode::UpstreamUnavailable,
    ErrorCode::UpstreamTimeout,
];

const FIELD_ERRORS: &[ErrorCode] = &[ErrorCode::UnknownField, ErrorCode::ForbiddenField];

const WRITE_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::ForbiddenField,
    ErrorCode::IdempotencyConflict,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::SchemaViolation,
    ErrorCode::InvalidCitizenId,
    ErrorCode::InvalidValue,
];

const ACCESS_LOG_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery];

const CHECKPOINT_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidRequest,
    ErrorCode::InvalidQuery,
    ErrorCode::UnknownCheckpoint,
    ErrorCode::CheckpointNotOwned,
    ErrorCode::InvalidCheckpoint,
    ErrorCode::CheckpointExists,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::StoreUnavailable,
];

const SCAN_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidQrPayload,
    ErrorCode::InvalidCitizenId,
    ErrorCode::CitizenNotFound,
    ErrorCode::IdempotencyConflict,
    ErrorCode::InvalidTime,
    ErrorCode::QrMismatch,
    ErrorCode::SchemaViolation,
];

/// The whole document, for one version of the catalogue.
pub fn document(broker: &Broker, version: &crate::catalogue::CatalogueVersion) -> Value {
    let purposes = version.all();
    let mut schemas = component_schemas(broker.schema.raw());
    for p in purposes.iter().filter(|p| !p.read.is_empty()) {
        let projected = project_schema(broker.schema.raw(), p);
        schemas.insert(purpose_schema_name(&p.id), projected);
    }
    let mut paths = Map::new();
    paths.insert("/healthz".into(), healthz());
    paths.insert("/v1/whoami".into(), whoami());
    paths.insert("/v1/catalogue".into(), catalogue_route());
    paths.insert("/v1/catalogue/versions".into(), catalogue_versions_route());
    paths.insert("/v1/catalogue/diff".into(), catalogue_diff_route());
    paths.insert("/v1/purposes".into(), list_purposes());
    paths.insert("/v1/purposes/{purpose}/release".into(), release(purposes));
    paths.insert("/v1/citizens/{citizen_id}".into(), read_citizen(purposes));
    paths.insert(
        "/v1/citizens/{citizen_id}/access-log".into(),
        access_log(purposes),
    );
    for history in [
        History::Vaccinations,
        History::TestResults,
        History::Recoveries,
        History::CheckIns,
    ] {
        let writers: Vec<&Purpose> = purposes.iter().filter(|p| p.may_write(history.field())).collect();
        if writers.is_empty() {
            continue;
        }
        paths.insert(
            format!("/v1/citizens/{{citizen_id}}/{}", history_segment(history)),
            write_history(broker.schema.raw(), history, &writers),
        );
    }
    paths.insert("/v1/checkpoints".into(), checkpoints(purposes));
    paths.insert(
        "/v1/checkpoints/{checkpoint_id}/checkins".into(),
        checkins(purposes),
    );
    paths.insert("/v1/sms/inbound".into(), sms_inbound(purposes));
    paths.insert(
        "/v1/citizens/{citizen_id}/covid-certificate".into(),
        covid_certificate(purposes),
    );
    paths.insert("/v1/dcc/verify".into(), dcc_verify());
    paths.insert(crate::signed_answer::JWKS_PATH.into(), jwks_route());
    for c in broker.connectors.all() {
        let route = connector_route(purposes, c);
        match paths.get_mut(&c.path).and_then(Value::as_object_mut) {
            Some(existing) => {
                if let Some(ops) = route.as_object() {
                    existing.extend(ops.clone());
                }
            }
            None => {
                paths.insert(c.path.clone(), route);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "lienthong agency API",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The one door through which government agencies share citizen data, per declared purpose, audited and billed.",
            "description": "Every request needs a client certificate bound to a registered agency (mutual TLS) and, \
                for citizen data, a declared purpose from the catalogue below. Each purpose releases only its listed \
                fields and is billed at its price per served call (agencies funded by the state budget are exempt). \
                Every request is written to a hash-chained audit trail before the answer leaves. Errors are \
                `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable `code`. Every answer, errors \
                included, carries `x-jws-signature`: a JWS with detached payload (RFC 7515 Appendix F, EdDSA/Ed25519) \
                over the exact body bytes, with `request_id`, `agency`, `purpose` and `time` in its protected header; \
                the keys are published at `/.well-known/jwks.json` and under `x-answer-signing` below.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "servers": [{ "url": "/", "description": "this broker's agency listener (mutual TLS)" }],
        "tags": [
            { "name": "meta", "description": "who am I, what may I do, this document" },
            { "name": "citizens", "description": "citizen data, per declared purpose" },
            { "name": "checkpoints", "description": "checkpoint check-ins and contact tracing" },
            { "name": "sms", "description": "SMS self-look-up through the telecom gateway" },
            { "name": "connectors", "description": "agency dialects (JSON, FHIR, SOAP) mapped onto the canonical operations" },
        ],
        "x-catalogue": {
            "version": version.id,
            "effective_at": crate::catalogue::vietnam_time(version.effective_at),
        },
        "x-purposes": purposes.iter().map(describe_purpose).collect::<Vec<_>>(),
        "x-answer-signing": {
            "header": crate::signed_answer::SIGNATURE_HEADER,
            "format": "JWS compact serialization with detached payload (RFC 7515 Appendix F); alg EdDSA",
            "jwks_path": crate::signed_answer::JWKS_PATH,
            "jwks": broker.answer_keys.jwks(),
        },
        "paths": paths,
        "security": [{ "agencyCertificate": [] }],
        "components": {
            "securitySchemes": {
                "agencyCertificate": {
                    "type": "mutualTLS",
                    "description": "A client certificate from the broker's CA, bound to a registered agency.",
                },
            },
            "schemas": schemas,
            "headers": {
                "RequestId": {
                    "description": "The request id, also in the error body and the audit entry.",
                    "schema": { "type": "string" },
                },
                "AnswerSignature": {
                    "description": "Detached JWS over the body bytes, request id, agency, purpose and time (see x-answer-signing).",
                    "schema": { "type": "string" },
                },
            },
        },
    })
}

fn history_segment(history: History) -> &'static str {
    match history {
        History::Vaccinations => "vaccinations",
        History::TestResults => "test-results",
        History::Recoveries => "recoveries",
        History::CheckIns => "checkins",
    }
}

/// The schema component holding what purpose `id` releases.
fn purpose_schema_name(id: &str) -> String {
    let mut name = String::from("Citizen_");
    name.extend(
        id.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    name
}

/// A purpose as published: titles, legal basis, price, fields, agencies.
fn describe_purpose(p: &Purpose) -> Value {
    json!({
        "id": p.id, "title_vi": p.title_vi, "title_en": p.title_en, "legal_basis": p.legal_basis,
        "price_vnd": p.price_vnd, "read": p.read, "write": p.write, "agencies": p.agencies,
        "consent_based": p.consent_based, "max_hidden_days": p.max_hidden_days,
    })
}

/// Markdown lines naming each purpose with its legal basis and price, for an operation description.
fn purposes_markdown(purposes: &[&Purpose], fields: impl Fn(&Purpose) -> String) -> String {
    purposes
        .iter()
        .map(|p| {
            format!(
                "- `{}` — {} ({}). Legal basis: {}. Price: {} VND per served call. Fields: {}.",
                p.id,
                p.title_en,
                p.title_vi,
                p.legal_basis,
                p.price_vnd,
                fields(p)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn error_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Error" })
}

/// The error responses for `lists`, grouped by status, each naming its codes.
fn error_responses(lists: &[&[ErrorCode]]) -> Map<String, Value> {
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for code in lists.iter().flat_map(|list| list.iter()) {
        let codes = by_status.entry(code.status().as_u16()).or_default();
        if !codes.contains(&code.as_str()) {
            codes.push(code.as_str());
        }
    }
    let mut out = Map::new();
    for (status, codes) in by_status {
        let described: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        let mut headers = json!({ "x-request-id": { "$ref": "#/components/headers/RequestId" } });
        if status == 429 || status == 503 {
            headers["Retry-After"] = json!({
                "description": "Seconds to wait before retrying.",
                "schema": { "type": "integer" },
            });
        }
        out.insert(
            status.to_string(),
            json!({
                "description": format!("Error: {}", described.join(", ")),
                "headers": headers,
                "content": { "application/json": { "schema": {
                    "allOf": [error_ref()],
                    "properties": { "error": { "properties": { "code": { "enum": codes } } } },
                } } },
            }),
        );
    }
    out
}

fn ok_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "headers": {
            "x-request-id": { "$ref": "#/components/headers/RequestId" },
            "x-jws-signature": { "$ref": "#/components/headers/AnswerSignature" },
        },
        "content": { "application/json": { "schema": schema } },
    })
}

fn operation(
    id: &str,
    tag: &str,
    summary: &str,
    description: String,
    parameters: Vec<Value>,
    ok: &[(u16, Value)],
    errors: &[&[ErrorCode]],
) -> Value {
    let mut responses = Map::new();
    for (status, response) in ok {
        responses.insert(status.to_string(), response.clone());
    }
    responses.extend(error_responses(errors));
    let mut op = json!({
        "operationId": id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    op
}

fn purpose_param(location: &str, ids: &[&Purpose]) -> Value {
    json!({
        "name": "purpose",
        "in": location,
        "required": true,
        "description": "The declared purpose of the request; it decides what is released and the price.",
        "schema": { "type": "string", "enum": ids.iter().map(|p| p.id.as_str()).collect::<Vec<_>>() },
    })
}

fn citizen_param() -> Value {
    json!({
        "name": "citizen_id",
        "in": "path",
        "required": true,
        "description": "12-digit personal ID (số định danh cá nhân).",
        "schema": { "type": "string", "pattern": "^[0-9]{12}$" },
        // The demo's fixed synthetic citizens, so generated requests also reach real records.
        "examples": {
            "hanoi": { "value": "001090000001" },
            "hcmc": { "value": "079195000002" },
            "danang": { "value": "048203000003" },
        },
    })
}

fn fields_param() -> Value {
    json!({
        "name": "fields",
        "in": "query",
        "required": false,
        "description": "Comma-separated field paths to narrow the release to (e.g. `full_name,permanent_address.province`).",
        "schema": { "type": "string" },
        "explode": false,
    })
}

fn joined(fields: &[crate::policy::FieldPath]) -> String {
    if fields.is_empty() {
        return "none".into();
    }
    fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn purposes_named<'p>(purposes: &'p [Purpose], ids: &[&str]) -> Vec<&'p Purpose> {
    purposes.iter().filter(|p| ids.contains(&p.id.as_str())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::Catalogue;
    use crate::schema::CitizenSchema;

    fn catalogue() -> (CitizenSchema, Catalogue) {
        let schema = CitizenSchema::load(None).unwrap();
        let catalogue = Catalogue::load(None, &schema).unwrap();
        (schema, catalogue)
    }

    #[test]
    fn refs_point_into_components() {
        let (schema, _) = catalogue();
        let schemas = component_schemas(schema.raw());
        let text = serde_json::to_string(&schemas).unwrap();
        assert!(!text.contains("#/$defs/"), "{text}");
        for name in [
            "Citizen",
            "Address",
            "Vaccination",
            "TestResult",
            "Recovery",
            "Error",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert!(schemas["Citizen"].get("$id").is_none());
    }

    #[test]
    fn projection_keeps_only_released_fields() {
        let (schema, catalogue) = catalogue();
        let qr = catalogue.get("covid-qr-status").unwrap();
        let projected = project_schema(schema.raw(), qr);
        let props = projected["properties"].as_object().unwrap();
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        assert_eq!(names, ["citizen_id", "covid_status", "full_name"]);
        assert_eq!(projected["additionalProperties"], false);
        assert!(projected.get("required").is_none());
        let prefill = project_schema(schema.raw(), catalogue.get("public-service-prefill").unwrap());
        assert!(prefill["properties"].get("phone").is_none());
        assert!(prefill["properties"].get("vaccinations").is_none());
        assert_eq!(
            prefill["properties"]["permanent_address"]["$ref"],
            "#/components/schemas/Address"
        );
    }

    #[test]
    fn nested_paths_project_sub_schemas() {
        let (schema, _) = catalogue();
        let p = Purpose {
            id: "x".into(),
            title_vi: String::new(),
            title_en: String::new(),
            legal_basis: String::new(),
            read: vec![
                "permanent_address.province".parse().unwrap(),
                "vaccinations[].date".parse().unwrap(),
            ],
            write: vec![],
            price_vnd: 0,
            agencies: vec![],
            consent_based: false,
            max_hidden_days: 0,
            official_id_shown: Default::default(),
        };
        let projected = project_schema(schema.raw(), &p);
        let addr = &projected["properties"]["permanent_address"];
        assert_eq!(addr["type"], "object");
        assert_eq!(
            addr["properties"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["province"]
        );
        let vacc = &projected["properties"]["vaccinations"];
        assert_eq!(vacc["type"], "array");
        assert_eq!(vacc["items"]["properties"]["date"]["format"], "date");
        assert!(vacc["items"]["properties"].get("lot").is_none());
    }

    #[test]
    fn pointers_make_nested_shapes() {
        let s = pointer_schema(&["/patient/identifier/value", "/identifier/0/value", "/maQR"]);
        assert_eq!(
            s["properties"]["patient"]["properties"]["identifier"]["properties"]["value"],
            json!({})
        );
        assert_eq!(s["properties"]["identifier"]["type"], "array");
        assert_eq!(
            s["properties"]["identifier"]["items"]["properties"]["value"],
            json!({})
        );
        assert!(s.get("required").is_none());
    }

    #[test]
    fn error_responses_group_codes_by_status() {
        let r = error_responses(&[COMMON_ERRORS, PURPOSE_ERRORS]);
        let forbidden = &r["403"]["content"]["application/json"]["schema"]["properties"]["error"]
            ["properties"]["code"]["enum"];
        assert_eq!(
            forbidden,
            &json!(["unknown_agency", "agency_suspended", "purpose_not_allowed"])
        );
        assert!(r["429"]["headers"].get("Retry-After").is_some());
    }
}
