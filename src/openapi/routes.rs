//! The canonical API's routes: health, whoami, the catalogue, purposes, release dry runs, reads, access
//! logs and history writes.

use super::*;

pub(super) fn healthz() -> Value {
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
            ErrorCode::RequestTimeout,
            ErrorCode::BodyTooLarge,
            ErrorCode::BadBody,
        ]],
    );
    json!({ "get": op })
}

pub(super) fn whoami() -> Value {
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

pub(super) fn catalogue_route() -> Value {
    json!({ "get": operation(
        "catalogue",
        "meta",
        "This document",
        "The OpenAPI 3.1 document of the agency API, generated from the catalogue version in force (named with its \
         effective instant under `x-catalogue`), the schema and the connectors; `?version=` gives a past or scheduled \
         version's document.".into(),
        vec![version_param("version", false, "A catalogue version id (default: the one in force).")],
        &[(200, ok_response("An OpenAPI 3.1 document.", json!({ "type": "object", "required": ["openapi", "paths", "x-catalogue"] })))],
        &[COMMON_ERRORS, &[ErrorCode::UnknownCatalogueVersion]],
    ) })
}

pub(super) fn catalogue_versions_route() -> Value {
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

pub(super) fn catalogue_diff_route() -> Value {
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
        &[COMMON_ERRORS, &[ErrorCode::InvalidQuery, ErrorCode::UnknownCatalogueVersion]],
    ) })
}

pub(super) fn list_purposes() -> Value {
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

pub(super) fn release(purposes: &[Purpose]) -> Value {
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

pub(super) fn read_citizen(purposes: &[Purpose]) -> Value {
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

pub(super) fn access_log(purposes: &[Purpose]) -> Value {
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

pub(super) fn write_history(raw: &Value, history: History, writers: &[&Purpose]) -> Value {
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

pub(super) fn jwks_route() -> Value {
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
