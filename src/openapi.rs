//! Stage: publication. The purpose catalogue and the agency API as one OpenAPI 3.1 document, served at
//! `GET /v1/catalogue` on the agency listener: every route, its request and response schemas, the
//! purposes it serves (legal basis, price, fields) and every error it can answer, by status and code.
//!
//! The document is generated from what the broker actually runs with (the loaded schema and purpose
//! catalogue), so it cannot drift from the code paths it describes. CI validates it with
//! `openapi-spec-validator` and runs `schemathesis` against the demo (`scripts/schemathesis.sh`).

use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::canonical::History;
use crate::policy::Purpose;

/// Errors every authenticated agency route can answer, whatever it does.
const COMMON_ERRORS: &[(u16, &str)] = &[
    (400, "bad_body"),
    (400, "duplicate_parameter"),
    (403, "unknown_agency"),
    (403, "agency_suspended"),
    (408, "request_timeout"),
    (413, "body_too_large"),
    (500, "internal_error"),
    (503, "audit_unavailable"),
];

/// Errors of routes that take a declared purpose.
const PURPOSE_ERRORS: &[(u16, &str)] = &[
    (400, "purpose_required"),
    (400, "unknown_purpose"),
    (403, "purpose_not_allowed"),
    (429, "quota_exceeded"),
];

/// Errors of routes that name a citizen and touch the store.
const CITIZEN_ERRORS: &[(u16, &str)] = &[
    (400, "invalid_citizen_id"),
    (404, "citizen_not_found"),
    (503, "store_unavailable"),
];

const FIELD_ERRORS: &[(u16, &str)] = &[(400, "unknown_field"), (403, "forbidden_field")];

const WRITE_ERRORS: &[(u16, &str)] = &[
    (400, "invalid_json"),
    (403, "forbidden_field"),
    (409, "idempotency_conflict"),
    (415, "unsupported_media_type"),
    (422, "schema_violation"),
    (422, "invalid_citizen_id"),
    (422, "invalid_value"),
];

const ACCESS_LOG_ERRORS: &[(u16, &str)] = &[(400, "invalid_query")];

const CHECKPOINT_ERRORS: &[(u16, &str)] = &[
    (400, "invalid_json"),
    (400, "invalid_request"),
    (400, "invalid_query"),
    (404, "unknown_checkpoint"),
    (403, "checkpoint_not_owned"),
    (400, "invalid_checkpoint"),
    (409, "checkpoint_exists"),
    (415, "unsupported_media_type"),
    (503, "store_unavailable"),
];

const SCAN_ERRORS: &[(u16, &str)] = &[
    (400, "invalid_qr_payload"),
    (400, "invalid_citizen_id"),
    (404, "citizen_not_found"),
    (409, "idempotency_conflict"),
    (422, "invalid_time"),
    (409, "qr_mismatch"),
    (422, "schema_violation"),
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

/// Errors of issuing a DCC.
const DCC_ISSUE_ERRORS: &[(u16, &str)] = &[
    (400, "unknown_format"),
    (403, "forbidden_field"),
    (422, "no_vaccination"),
    (422, "vaccine_not_in_value_set"),
    (503, "dcc_not_configured"),
];

fn covid_certificate(purposes: &[Purpose]) -> Value {
    let issuers: Vec<&Purpose> = purposes
        .iter()
        .filter(|p| {
            crate::dcc::SOURCE_FIELDS.iter().all(|f| {
                f.parse::<crate::policy::FieldPath>()
                    .is_ok_and(|f| p.read.iter().any(|r| r.covers(&f)))
            })
        })
        .collect();
    let mut ok = ok_response(
        "The certificate: DCC JSON, `HC1:` string and facts; or with `format=hc1` the string as text/plain, \
         with `format=png` the QR code as image/png.",
        json!({
            "type": "object",
            "required": ["citizen_id", "uvci", "kid", "issued_at", "expires", "dcc", "hc1"],
            "properties": {
                "citizen_id": { "type": "string" },
                "uvci": { "type": "string" },
                "kid": { "type": "string", "description": "Document Signer key id, hex" },
                "issued_at": { "type": "string" },
                "expires": { "type": "string" },
                "dcc": { "type": "object", "description": "EU DCC JSON, schema 1.3.3" },
                "hc1": { "type": "string" },
            },
        }),
    );
    ok["content"]["text/plain"] = json!({ "schema": { "type": "string", "pattern": "^HC1:" } });
    ok["content"]["image/png"] = json!({ "schema": { "type": "string", "contentMediaType": "image/png" } });
    let mut op = operation(
        "issueCovidCertificate",
        "citizens",
        "An EU Digital COVID Certificate for the citizen's latest vaccination",
        "COSE_Sign1 (ES256) by the broker's Document Signer certificate, CWT claims iss/iat/exp/hcert, zlib, \
         base45, `HC1:`. The UVCI's opaque part is the request id. Verify offline with the Document Signer \
         certificate, or with `POST /v1/dcc/verify`."
            .into(),
        vec![
            citizen_param(),
            purpose_param("query", &issuers),
            json!({ "name": "format", "in": "query", "required": false,
                    "schema": { "type": "string", "enum": ["json", "hc1", "png"], "default": "json" } }),
        ],
        &[(200, ok)],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CITIZEN_ERRORS, DCC_ISSUE_ERRORS],
    );
    op["x-purposes"] = json!(issuers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>());
    json!({ "get": op })
}

fn dcc_verify() -> Value {
    let mut op = operation(
        "verifyCovidCertificate",
        "citizens",
        "Verify an `HC1:` string against the broker's trust list of Document Signer certificates",
        "Always 200 for a readable request: `valid` true with the certificate, or false with `reason` one of \
         bad_prefix, base45, zlib, cose_structure, unknown_kid, bad_signature, expired, schema_violation."
            .into(),
        vec![],
        &[(200, ok_response("The verdict.", json!({
            "type": "object",
            "required": ["valid"],
            "properties": {
                "valid": { "type": "boolean" },
                "reason": { "type": "string" },
                "message": { "type": "string" },
                "certificate": { "type": "object" },
            },
        })))],
        &[
            COMMON_ERRORS,
            &[
                (400, "invalid_json"),
                (400, "too_deep"),
                (415, "unsupported_media_type"),
                (422, "schema_violation"),
            ],
        ],
    );
    op["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object",
            "required": ["hc1"],
            "properties": {
                "hc1": { "type": "string", "description": "The QR code's text, `HC1:…`" },
                "trust_list": { "type": "array", "items": { "type": "string", "contentEncoding": "base64" },
                                "description": "Document Signer certificates (base64 DER) to trust instead of the broker's" },
                "at": { "type": "string", "format": "date-time", "description": "Check at this instant instead of now" },
            },
        } } },
    });
    json!({ "post": op })
}

fn jwks_route() -> Value {
    let mut jwks = ok_response(
        "A JSON Web Key Set.",
        json!({
            "type": "object",
            "required": ["keys"],
            "properties": { "keys": { "type": "array", "items": { "type": "object" } } },
        }),
    );
    // Served as application/jwk-set+json (RFC 7517, section 8.5).
    if let Some(content) = jwks["content"].as_object_mut() {
        if let Some(schema) = content.remove("application/json") {
            content.insert("application/jwk-set+json".into(), schema);
        }
    }
    json!({ "get": operation(
        "answerSigningKeys",
        "meta",
        "The keys that sign every answer (JWKS), current first",
        "Ed25519 public keys as OKP JWKs; `kid` is the RFC 7638 thumbprint. Earlier keys stay listed after a \
         rotation so that saved answers still verify."
            .into(),
        vec![],
        &[(200, jwks)],
        &[COMMON_ERRORS],
    ) })
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

/// `#/$defs/X` → `#/components/schemas/X`, everywhere in `value`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/$defs/") {
                    *r = format!("#/components/schemas/{name}");
                }
            }
            obj.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// `Citizen`, its `$defs`, `Error`, `Purpose`.
fn component_schemas(raw: &Value) -> Map<String, Value> {
    let mut schemas = Map::new();
    let mut citizen = raw.clone();
    if let Some(obj) = citizen.as_object_mut() {
        // The document's own dialect applies; $id would re-base the refs.
        obj.remove("$schema");
        obj.remove("$id");
        if let Some(Value::Object(defs)) = obj.remove("$defs") {
            for (name, mut def) in defs {
                rewrite_refs(&mut def);
                schemas.insert(name, def);
            }
        }
    }
    rewrite_refs(&mut citizen);
    schemas.insert("Citizen".into(), citizen);
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": { "type": "string", "description": "Stable machine-readable code." },
                        "message": { "type": "string" },
                        "request_id": { "type": "string" },
                    },
                },
            },
        }),
    );
    schemas.insert(
        "Purpose".into(),
        json!({
            "type": "object",
            "required": ["id", "title_vi", "title_en", "legal_basis", "read", "write", "price_vnd"],
            "properties": {
                "id": { "type": "string" },
                "title_vi": { "type": "string" },
                "title_en": { "type": "string" },
                "legal_basis": { "type": "string" },
                "read": { "type": "array", "items": { "type": "string" } },
                "write": { "type": "array", "items": { "type": "string" } },
                "price_vnd": { "type": "integer", "minimum": 0 },
                "consent_based": {
                    "type": "boolean",
                    "description": "Every request names the citizen's consent (X-Road-PDU-Consent-Ref).",
                },
                "max_hidden_days": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "How long an access may stay hidden from the citizen (X-Road-PDU-Hidden); 0 = never.",
                },
            },
        }),
    );
    schemas
}

/// Follow a local `$ref` into the raw schema's `$defs`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs")?.get(name))
            .unwrap_or(node),
        None => node,
    }
}

/// A field path as steps: `vaccinations[].date` → `vaccinations`, `[]`, `date`.
fn steps(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for segment in path.split('.') {
        let mut name = segment;
        let mut arrays = 0;
        while let Some(rest) = name.strip_suffix("[]") {
            name = rest;
            arrays += 1;
        }
        out.push(name);
        out.extend(std::iter::repeat_n("[]", arrays));
    }
    out
}

/// The schema of what a projection onto `paths` can contain: only those properties, none required.
fn project_node(root: &Value, node: &Value, paths: &[Vec<&str>]) -> Value {
    if paths.iter().any(|p| p.is_empty()) {
        let mut whole = node.clone();
        rewrite_refs(&mut whole);
        return whole;
    }
    let node = resolve(root, node);
    let description = node.get("description").cloned();
    let mut out = if paths.iter().all(|p| p.first() == Some(&"[]")) {
        let rest: Vec<Vec<&str>> = paths.iter().map(|p| p[1..].to_vec()).collect();
        let items = node.get("items").unwrap_or(&Value::Null);
        json!({ "type": "array", "items": project_node(root, items, &rest) })
    } else {
        let mut props = Map::new();
        let mut names: Vec<&str> = paths.iter().filter_map(|p| p.first().copied()).collect();
        names.dedup();
        for name in names {
            let Some(child) = node.get("properties").and_then(|p| p.get(name)) else {
                continue;
            };
            let rest: Vec<Vec<&str>> = paths
                .iter()
                .filter(|p| p.first() == Some(&name))
                .map(|p| p[1..].to_vec())
                .collect();
            props.insert(name.to_string(), project_node(root, child, &rest));
        }
        json!({ "type": "object", "additionalProperties": false, "properties": props })
    };
    if let (Some(d), Some(obj)) = (description, out.as_object_mut()) {
        obj.insert("description".into(), d);
    }
    out
}

/// What purpose `p` can release of a citizen record.
fn project_schema(raw: &Value, p: &Purpose) -> Value {
    let mut paths: Vec<Vec<&str>> = p.read.iter().map(|f| steps(f.as_str())).collect();
    paths.sort();
    let mut schema = project_node(raw, raw, &paths);
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "description".into(),
            json!(format!(
                "What purpose `{}` releases of a citizen record ({}); fields absent from the record are left out.",
                p.id, p.title_en
            )),
        );
    }
    schema
}

fn error_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Error" })
}

/// The error responses for `lists`, grouped by status, each naming its codes.
fn error_responses(lists: &[&[(u16, &str)]]) -> Map<String, Value> {
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for list in lists {
        for (status, code) in list.iter() {
            let codes = by_status.entry(*status).or_default();
            if !codes.contains(code) {
                codes.push(code);
            }
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
    errors: &[&[(u16, &str)]],
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

fn healthz() -> Value {
    let op = operation(
        "healthz",
        "meta",
        "Liveness",
        "Answers on both listeners; needs a client certificate from the broker's CA but no agency.".into(),
        vec![],
        &[(
            200,
            ok_response(
                "The broker is up.",
                json!({ "type": "object", "required": ["status"], "properties": { "status": { "const": "ok" } } }),
            ),
        )],
        &[&[
            (408, "request_timeout"),
            (413, "body_too_large"),
            (400, "bad_body"),
        ]],
    );
    json!({ "get": op })
}

fn whoami() -> Value {
    json!({ "get": operation(
        "whoami",
        "meta",
        "The agency and certificate the broker sees",
        "The registered agency bound to the presented client certificate.".into(),
        vec![],
        &[(200, ok_response("The calling agency.", json!({
            "type": "object",
            "required": ["agency", "name", "certificate"],
            "properties": {
                "agency": { "type": "string" },
                "name": { "type": "string" },
                "certificate": { "type": "object" },
            },
        })))],
        &[COMMON_ERRORS],
    ) })
}

fn version_param(name: &str, required: bool, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": required, "description": description,
            "schema": { "type": "string" } })
}

fn catalogue_route() -> Value {
    json!({ "get": operation(
        "catalogue",
        "meta",
        "This document",
        "The OpenAPI 3.1 document of the agency API, generated from the catalogue version in force (named with its \
         effective instant under `x-catalogue`), the schema and the connectors; `?version=` gives a past or scheduled \
         version's document.".into(),
        vec![version_param("version", false, "A catalogue version id (default: the one in force).")],
        &[(200, ok_response("An OpenAPI 3.1 document.", json!({ "type": "object", "required": ["openapi", "paths", "x-catalogue"] })))],
        &[COMMON_ERRORS, &[(404, "unknown_catalogue_version")]],
    ) })
}

fn catalogue_versions_route() -> Value {
    json!({ "get": operation(
        "catalogueVersions",
        "meta",
        "Every catalogue version: past, in force, scheduled",
        "Each with its effective instant (Vietnam time); the one serving now is marked `in_force`.".into(),
        vec![],
        &[(200, ok_response("The versions, oldest first.", json!({ "type": "object", "required": ["in_force", "versions"] })))],
        &[COMMON_ERRORS],
    ) })
}

fn catalogue_diff_route() -> Value {
    json!({ "get": operation(
        "catalogueDiff",
        "meta",
        "What changed between two catalogue versions",
        "Purposes added and removed; for purposes in both: fields granted and withdrawn, prices changed, agencies \
         granted and withdrawn.".into(),
        vec![
            version_param("from", true, "The earlier version id."),
            version_param("to", false, "The later version id (default: the one in force)."),
        ],
        &[(200, ok_response("The differences.", json!({ "type": "object", "required": ["from", "to", "purposes_added",
            "purposes_removed", "fields_granted", "fields_withdrawn", "prices_changed", "agencies_granted",
            "agencies_withdrawn"] })))],
        &[COMMON_ERRORS, &[(400, "invalid_query"), (404, "unknown_catalogue_version")]],
    ) })
}

fn list_purposes() -> Value {
    json!({ "get": operation(
        "listPurposes",
        "meta",
        "The purposes this agency may use",
        "With titles, legal basis, readable and writable fields, and price per served call.".into(),
        vec![],
        &[(200, ok_response("The agency's purposes.", json!({
            "type": "object",
            "required": ["purposes"],
            "properties": { "purposes": { "type": "array", "items": { "$ref": "#/components/schemas/Purpose" } } },
        })))],
        &[COMMON_ERRORS],
    ) })
}

fn release(purposes: &[Purpose]) -> Value {
    let all: Vec<&Purpose> = purposes.iter().collect();
    json!({ "get": operation(
        "releaseDryRun",
        "meta",
        "Exactly which fields a purpose would release (dry run, no citizen data)",
        format!("Purposes:\n\n{}", purposes_markdown(&all, |p| joined(&p.read))),
        vec![
            json!({
                "name": "purpose", "in": "path", "required": true,
                "description": "A purpose id from the catalogue.",
                "schema": { "type": "string", "enum": all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>() },
            }),
            fields_param(),
        ],
        &[(200, ok_response("The field paths the purpose would release.", json!({
            "type": "object",
            "required": ["purpose", "fields"],
            "properties": {
                "purpose": { "type": "string" },
                "fields": { "type": "array", "items": { "type": "string" } },
            },
        })))],
        &[COMMON_ERRORS, PURPOSE_ERRORS, FIELD_ERRORS],
    ) })
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

fn read_citizen(purposes: &[Purpose]) -> Value {
    let readers: Vec<&Purpose> = purposes.iter().filter(|p| !p.read.is_empty()).collect();
    let projections: Vec<Value> = readers
        .iter()
        .map(|p| json!({ "$ref": format!("#/components/schemas/{}", purpose_schema_name(&p.id)) }))
        .collect();
    let mut op = operation(
        "readCitizen",
        "citizens",
        "A citizen's record, projected onto what the purpose releases",
        format!(
            "Only the fields the declared purpose may read (narrowed further by `fields`) are released; \
             the released field paths are recorded in the audit trail.\n\nPurposes:\n\n{}",
            purposes_markdown(&readers, |p| joined(&p.read))
        ),
        vec![citizen_param(), purpose_param("query", &readers), fields_param()],
        &[(
            200,
            ok_response(
                "The projected record.",
                json!({
                    "type": "object",
                    "required": ["purpose", "citizen"],
                    "properties": {
                        "purpose": { "type": "string" },
                        "citizen": { "anyOf": projections },
                    },
                }),
            ),
        )],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CITIZEN_ERRORS, FIELD_ERRORS],
    );
    op["x-purposes"] = json!(readers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>());
    json!({ "get": op })
}

fn access_log(purposes: &[Purpose]) -> Value {
    let self_service: Vec<&Purpose> = purposes
        .iter()
        .filter(|p| p.id == "citizen-self-service")
        .collect();
    let entry = json!({
        "type": "object",
        "properties": {
            "time": { "type": "string" },
            "agency": { "type": ["string", "null"] },
            "purpose": { "type": ["string", "null"] },
            "channel": { "type": "string" },
            "operation": { "type": "string" },
            "fields": { "type": "array", "items": { "type": "string" } },
            "status": { "type": "integer" },
        },
    });
    let mut op = operation(
        "citizenAccessLog",
        "citizens",
        "Who read my data: the audit entries about one citizen, newest first",
        format!(
            "Released only under `citizen-self-service` (a portal acting for the logged-in citizen); \
             other purposes get 403 `purpose_not_allowed`.\n\n{}",
            purposes_markdown(&self_service, |p| joined(&p.read))
        ),
        vec![
            citizen_param(),
            purpose_param("query", &self_service),
            json!({ "name": "before", "in": "query", "required": false,
                    "description": "Cursor: only entries with a lower sequence number.",
                    "schema": { "type": "integer", "minimum": 0 } }),
            json!({ "name": "limit", "in": "query", "required": false,
                    "description": "Page size (1 to 500, default 100).",
                    "schema": { "type": "integer", "minimum": 1, "maximum": 500 } }),
        ],
        &[(
            200,
            ok_response(
                "A page of the citizen's access log.",
                json!({
                    "type": "object",
                    "required": ["citizen_id", "access_log"],
                    "properties": {
                        "citizen_id": { "type": "string" },
                        "access_log": {
                            "type": "object",
                            "properties": {
                                "entries": { "type": "array", "items": entry },
                                "next_before": { "type": ["integer", "null"] },
                            },
                        },
                    },
                }),
            ),
        )],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CITIZEN_ERRORS, ACCESS_LOG_ERRORS],
    );
    op["x-purposes"] = json!(["citizen-self-service"]);
    json!({ "get": op })
}

fn write_history(raw: &Value, history: History, writers: &[&Purpose]) -> Value {
    let field = history.field();
    // The entry schema is whatever the canonical schema says the list holds.
    let mut item_ref = raw["properties"][field]["items"].clone();
    if item_ref.is_null() {
        item_ref = json!({ "type": "object" });
    }
    rewrite_refs(&mut item_ref);
    let answer = json!({
        "type": "object",
        "required": ["citizen_id", field],
        "properties": { "citizen_id": { "type": "string" }, field: item_ref },
    });
    let mut op = operation(
        &format!("append_{field}"),
        "citizens",
        &format!("Add one entry to a citizen's {field}, idempotent on source_record_id"),
        format!(
            "201 when new, 200 with the stored entry when replayed, 409 `idempotency_conflict` when the same \
             `source_record_id` arrives with different content. The whole record is validated against the \
             canonical schema before anything is written.\n\nPurposes:\n\n{}",
            purposes_markdown(writers, |p| joined(&p.write))
        ),
        vec![citizen_param(), purpose_param("query", writers)],
        &[
            (201, ok_response("Recorded.", answer.clone())),
            (200, ok_response("Already recorded (a replay).", answer)),
        ],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CITIZEN_ERRORS, WRITE_ERRORS],
    );
    op["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": item_ref } },
    });
    op["x-purposes"] = json!(writers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>());
    json!({ "post": op })
}

fn purposes_named<'p>(purposes: &'p [Purpose], ids: &[&str]) -> Vec<&'p Purpose> {
    purposes.iter().filter(|p| ids.contains(&p.id.as_str())).collect()
}

fn checkpoint_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "agency", "name", "address", "kind", "created_at"],
        "properties": {
            "id": { "type": "string" },
            "agency": { "type": "string" },
            "name": { "type": "string" },
            "address": { "type": "string" },
            "kind": { "type": "string", "enum": ["agency", "business", "restaurant", "hotel", "supermarket", "other"] },
            "created_at": { "type": "string" },
        },
    })
}

fn checkpoints(purposes: &[Purpose]) -> Value {
    let owners = purposes_named(purposes, &["checkpoint-checkin"]);
    let describe = format!(
        "Checkpoints registered by the calling agency.\n\n{}",
        purposes_markdown(&owners, |p| joined(&p.read))
    );
    let mut register = operation(
        "registerCheckpoint",
        "checkpoints",
        "Register a checkpoint run by the calling agency",
        describe.clone(),
        vec![purpose_param("query", &owners)],
        &[(
            201,
            ok_response(
                "Registered.",
                json!({ "type": "object", "required": ["checkpoint"], "properties": { "checkpoint": checkpoint_schema() } }),
            ),
        )],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CHECKPOINT_ERRORS],
    );
    register["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object",
            "additionalProperties": false,
            "required": ["id", "name", "address", "kind"],
            "properties": {
                "id": { "type": "string", "pattern": "^[a-z0-9-]{2,64}$" },
                "name": { "type": "string", "minLength": 1 },
                "address": { "type": "string", "minLength": 1 },
                "kind": checkpoint_schema()["properties"]["kind"].clone(),
            },
        } } },
    });
    let list = operation(
        "listCheckpoints",
        "checkpoints",
        "The calling agency's checkpoints",
        describe,
        vec![purpose_param("query", &owners)],
        &[(
            200,
            ok_response(
                "The checkpoints.",
                json!({ "type": "object", "required": ["checkpoints"],
                        "properties": { "checkpoints": { "type": "array", "items": checkpoint_schema() } } }),
            ),
        )],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CHECKPOINT_ERRORS],
    );
    json!({ "post": register, "get": list })
}

fn checkins(purposes: &[Purpose]) -> Value {
    let scanners = purposes_named(purposes, &["checkpoint-checkin"]);
    let tracers = purposes_named(purposes, &["contact-tracing"]);
    let cp_param = json!({
        "name": "checkpoint_id", "in": "path", "required": true,
        "description": "A registered checkpoint.",
        "schema": { "type": "string" },
    });
    let scan_projection = scanners
        .iter()
        .map(|p| json!({ "$ref": format!("#/components/schemas/{}", purpose_schema_name(&p.id)) }))
        .collect::<Vec<_>>();
    let answer = json!({
        "type": "object",
        "required": ["checkpoint", "time", "citizen"],
        "properties": {
            "checkpoint": { "type": "string" },
            "time": { "type": "string" },
            "citizen": { "anyOf": scan_projection },
        },
    });
    let mut scan = operation(
        "checkIn",
        "checkpoints",
        "A CCCD QR (or bare ID) scanned at the checkpoint",
        format!(
            "Checked against the record (name, birth date), stored as a check-in, answered with only what \
             the gate needs.\n\n{}",
            purposes_markdown(&scanners, |p| joined(&p.read))
        ),
        vec![cp_param.clone(), purpose_param("query", &scanners)],
        &[
            (201, ok_response("Checked in.", answer.clone())),
            (200, ok_response("Already checked in (a replay).", answer)),
        ],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CHECKPOINT_ERRORS, SCAN_ERRORS],
    );
    scan["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object",
            "additionalProperties": false,
            "description": "Exactly one of `qr` (the raw CCCD QR payload) or `citizen_id`.",
            "properties": {
                "qr": { "type": "string" },
                "citizen_id": { "type": "string", "pattern": "^[0-9]{12}$" },
                "time": { "type": "string", "format": "date-time" },
            },
        } } },
    });
    let window = |name: &str| {
        json!({ "name": name, "in": "query", "required": true,
                "description": "RFC 3339; the window is at most 21 days.",
                "schema": { "type": "string", "format": "date-time" } })
    };
    let mut trace = operation(
        "contactTracing",
        "checkpoints",
        "Who checked in at a checkpoint within a window (F1 candidates; bulk, audited)",
        format!(
            "IDs and times only.\n\n{}",
            purposes_markdown(&tracers, |p| joined(&p.read))
        ),
        vec![
            cp_param,
            purpose_param("query", &tracers),
            window("from"),
            window("to"),
        ],
        &[(
            200,
            ok_response(
                "The check-ins in the window.",
                json!({
                    "type": "object",
                    "required": ["checkpoint", "from", "to", "count", "checkins"],
                    "properties": {
                        "checkpoint": { "type": "string" },
                        "from": { "type": "string" },
                        "to": { "type": "string" },
                        "count": { "type": "integer", "minimum": 0 },
                        "checkins": { "type": "array", "items": {
                            "type": "object",
                            "properties": { "citizen_id": { "type": "string" }, "time": { "type": "string" } },
                        } },
                    },
                }),
            ),
        )],
        &[COMMON_ERRORS, PURPOSE_ERRORS, CHECKPOINT_ERRORS],
    );
    trace["x-purposes"] = json!(["contact-tracing"]);
    scan["x-purposes"] = json!(["checkpoint-checkin"]);
    json!({ "post": scan, "get": trace })
}

fn sms_inbound(purposes: &[Purpose]) -> Value {
    let sms = purposes_named(purposes, &["citizen-self-sms"]);
    let reply = json!({
        "type": "object",
        "required": ["to", "reply", "encoding", "characters", "segments"],
        "properties": {
            "to": { "type": "string" },
            "reply": { "type": "string", "description": "The SMS text to send back." },
            "encoding": { "type": "string" },
            "characters": { "type": "integer" },
            "segments": { "type": "integer" },
            "error": { "$ref": "#/components/schemas/Error/properties/error" },
        },
    });
    let mut op = operation(
        "smsInbound",
        "sms",
        "An SMS relayed by the gateway: `TTCD <12-digit ID>`; answers the SMS to send back",
        format!(
            "The citizen's own basic data only when the sender's number is the one on the record; one single \
             reply otherwise, so the channel reveals nothing about who exists.\n\n{}",
            purposes_markdown(&sms, |p| joined(&p.read))
        ),
        vec![purpose_param("query", &sms)],
        &[(
            200,
            ok_response(
                "The reply SMS (also for syntax errors and no match).",
                reply.clone(),
            ),
        )],
        &[
            COMMON_ERRORS,
            PURPOSE_ERRORS,
            &[
                (400, "invalid_json"),
                (415, "unsupported_media_type"),
                (429, "sms_rate_limited"),
            ],
        ],
    );
    // A rate-limited number still gets a reply text beside the error object.
    op["responses"]["429"]["content"]["application/json"]["schema"] = reply;
    op["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": {
            "type": "object",
            "additionalProperties": false,
            "required": ["from", "text"],
            "properties": {
                "from": { "type": "string", "description": "Sender's number as the gateway received it." },
                "text": { "type": "string", "description": "The message text." },
            },
        } } },
    });
    op["x-purposes"] = json!(["citizen-self-sms"]);
    json!({ "post": op })
}

const CONNECTOR_ERRORS: &[(u16, &str)] = &[
    (400, "invalid_json"),
    (400, "invalid_xml"),
    (400, "too_deep"),
    (400, "invalid_qr_payload"),
    (403, "forbidden_field"),
    (409, "idempotency_conflict"),
    (409, "qr_mismatch"),
    (413, "batch_too_large"),
    (415, "unsupported_media_type"),
    (422, "missing_field"),
    (422, "invalid_value"),
    (422, "unexpected_document"),
    (422, "schema_violation"),
    (422, "invalid_citizen_id"),
];

/// A JSON document shape from the JSON Pointers a connector reads or writes: objects along the way,
/// arrays where a step is an index. Nothing is required or closed: the connector names what it needs
/// (422 `missing_field`) and ignores the rest.
fn pointer_schema(pointers: &[&str]) -> Value {
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

fn connector_route(purposes: &[Purpose], c: &crate::connector::Connector) -> Value {
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
