//! The channels' routes: checkpoints (registration, check-ins, contact tracing), SMS look-ups, EU DCC issue and verify.

use super::*;

pub(super) fn checkpoint_schema() -> Value {
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

pub(super) fn checkpoints(purposes: &[Purpose]) -> Value {
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

pub(super) fn checkins(purposes: &[Purpose]) -> Value {
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

pub(super) fn sms_inbound(purposes: &[Purpose]) -> Value {
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
                ErrorCode::InvalidJson,
                ErrorCode::UnsupportedMediaType,
                ErrorCode::SmsRateLimited,
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

/// Errors of issuing a DCC.
const DCC_ISSUE_ERRORS: &[ErrorCode] = &[
    ErrorCode::UnknownFormat,
    ErrorCode::ForbiddenField,
    ErrorCode::NoVaccination,
    ErrorCode::VaccineNotInValueSet,
    ErrorCode::DccNotConfigured,
];

pub(super) fn covid_certificate(purposes: &[Purpose]) -> Value {
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

pub(super) fn dcc_verify() -> Value {
    let mut op = operation(
        "verifyCovidCertificate",
        "citizens",
        "Verify an `HC1:` string against the broker's trust list of Document Signer certificates",
        "Always 200 for a readable request: `valid` true with the certificate, or false with `reason` one of \
         bad_prefix, base45, zlib, cose_structure, unknown_kid, bad_signature, dsc_not_valid, expired, schema_violation."
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
                ErrorCode::InvalidJson,
                ErrorCode::TooDeep,
                ErrorCode::UnsupportedMediaType,
                ErrorCode::SchemaViolation,
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
