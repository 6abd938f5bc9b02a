//! Stage: every stage. The one error a request can end in: an HTTP status, a stable machine-readable
//! `code`, and a message for humans. Internals never reach the body: a store or I/O failure is answered
//! with a generic message, and its cause is logged by the pipeline's log step under the request id.

use hyper::StatusCode;
use serde_json::json;

/// Declares [`ErrorCode`]: each variant with its wire name and its one HTTP status.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal => $status:ident,)+) => {
        /// Every stable error `code` the broker answers with, each with its one HTTP status. The wire
        /// names are a public contract (the README's "Errors" table lists exactly these); never rename one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The wire name, e.g. `forbidden_field`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The HTTP status this code is always answered with.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }
        }
    };
}

error_codes! {
    /// No `purpose` declared.
    PurposeRequired = "purpose_required" => BAD_REQUEST,
    /// The purpose is not in the catalogue.
    UnknownPurpose = "unknown_purpose" => BAD_REQUEST,
    /// A requested field is not a canonical field path.
    UnknownField = "unknown_field" => BAD_REQUEST,
    /// A malformed personal ID, or one that disagrees with the record (always 400).
    InvalidCitizenId = "invalid_citizen_id" => BAD_REQUEST,
    /// A CCCD QR payload with the wrong fields or impossible dates.
    InvalidQrPayload = "invalid_qr_payload" => BAD_REQUEST,
    /// Malformed JSON, invalid UTF-8, a duplicate key.
    InvalidJson = "invalid_json" => BAD_REQUEST,
    /// JSON or XML nested too deep.
    TooDeep = "too_deep" => BAD_REQUEST,
    /// Malformed XML.
    InvalidXml = "invalid_xml" => BAD_REQUEST,
    /// An XML document that is not UTF-8.
    InvalidEncoding = "invalid_encoding" => BAD_REQUEST,
    /// An XML `DOCTYPE`.
    XmlDoctypeRefused = "xml_doctype_refused" => BAD_REQUEST,
    /// An XML entity reference.
    XmlEntityRefused = "xml_entity_refused" => BAD_REQUEST,
    /// An XML document with too many elements or attributes.
    XmlTooLarge = "xml_too_large" => BAD_REQUEST,
    /// A billing month that is not `YYYY-MM`.
    InvalidMonth = "invalid_month" => BAD_REQUEST,
    /// A plan that does not parse.
    InvalidPlan = "invalid_plan" => BAD_REQUEST,
    /// Malformed query parameters.
    InvalidQuery = "invalid_query" => BAD_REQUEST,
    /// A malformed agency code.
    InvalidAgencyCode = "invalid_agency_code" => BAD_REQUEST,
    /// A malformed agency name.
    InvalidAgencyName = "invalid_agency_name" => BAD_REQUEST,
    /// A malformed certificate fingerprint.
    InvalidFingerprint = "invalid_fingerprint" => BAD_REQUEST,
    /// A certificate that does not parse.
    InvalidCertificate = "invalid_certificate" => BAD_REQUEST,
    /// A malformed admin request.
    InvalidRequest = "invalid_request" => BAD_REQUEST,
    /// A malformed checkpoint registration.
    InvalidCheckpoint = "invalid_checkpoint" => BAD_REQUEST,
    /// HTTP the server could not parse; the connection is closed.
    MalformedRequest = "malformed_request" => BAD_REQUEST,
    /// The request body could not be read.
    BadBody = "bad_body" => BAD_REQUEST,
    /// A query parameter given twice, or a connector's mapped XML element given twice.
    DuplicateParameter = "duplicate_parameter" => BAD_REQUEST,
    /// Binding an admin certificate (`tls.admin_certs`) to an agency.
    AdminCertificate = "admin_certificate" => BAD_REQUEST,
    /// Binding a certificate no CA of `tls.ca_bundle` issued.
    UntrustedCertificate = "untrusted_certificate" => BAD_REQUEST,
    /// A certificate `format` other than `json`, `hc1`, `png`.
    UnknownFormat = "unknown_format" => BAD_REQUEST,
    /// A malformed or repeated accountability header.
    InvalidAccountability = "invalid_accountability" => BAD_REQUEST,
    /// A consent-based purpose without `X-Road-PDU-Consent-Ref`.
    ConsentRefRequired = "consent_ref_required" => BAD_REQUEST,
    /// `X-Road-PDU-Hidden-Until` beyond the purpose's `max_hidden_days`.
    HiddenTooLong = "hidden_too_long" => BAD_REQUEST,
    /// X-Road: a message that is not XML.
    XroadInvalidXml = "xroad_invalid_xml" => BAD_REQUEST,
    /// X-Road: not a SOAP envelope.
    XroadInvalidSoap = "xroad_invalid_soap" => BAD_REQUEST,
    /// X-Road: no SOAP header.
    XroadMissingHeader = "xroad_missing_header" => BAD_REQUEST,
    /// X-Road: a required header field missing.
    XroadMissingHeaderField = "xroad_missing_header_field" => BAD_REQUEST,
    /// X-Road: a header field given twice.
    XroadDuplicateHeaderField = "xroad_duplicate_header_field" => BAD_REQUEST,
    /// X-Road: a protocol version other than 4.x.
    XroadInvalidProtocolVersion = "xroad_invalid_protocol_version" => BAD_REQUEST,
    /// X-Road: no SOAP body.
    XroadMissingBody = "xroad_missing_body" => BAD_REQUEST,
    /// X-Road: a SOAP body that does not fit the service.
    XroadInvalidBody = "xroad_invalid_body" => BAD_REQUEST,
    /// X-Road: headers that disagree with each other or with the message.
    XroadInconsistentHeaders = "xroad_inconsistent_headers" => BAD_REQUEST,
    /// X-Road: a malformed client identifier.
    XroadInvalidClientIdentifier = "xroad_invalid_client_identifier" => BAD_REQUEST,
    /// X-Road: a REST request that breaks the protocol.
    XroadBadRequest = "xroad_bad_request" => BAD_REQUEST,
    /// The certificate is valid but bound to no agency, or an admin call names no registered agency.
    UnknownAgency = "unknown_agency" => FORBIDDEN,
    /// The agency is suspended.
    AgencySuspended = "agency_suspended" => FORBIDDEN,
    /// The purpose is not granted to this agency.
    PurposeNotAllowed = "purpose_not_allowed" => FORBIDDEN,
    /// A requested (or written) field is outside the purpose.
    ForbiddenField = "forbidden_field" => FORBIDDEN,
    /// An agency certificate on the admin listener.
    AdminOnly = "admin_only" => FORBIDDEN,
    /// Scanning at another agency's checkpoint.
    CheckpointNotOwned = "checkpoint_not_owned" => FORBIDDEN,
    /// A cross-site form post to the admin console.
    CrossOrigin = "cross_origin" => FORBIDDEN,
    /// `X-Road-PDU-Hidden` under a purpose that may not hide an access.
    HidingNotAllowed = "hiding_not_allowed" => FORBIDDEN,
    /// The X-Road client named is not the one bound to the certificate's agency.
    XroadClientMismatch = "xroad_client_mismatch" => FORBIDDEN,
    /// No such citizen.
    CitizenNotFound = "citizen_not_found" => NOT_FOUND,
    /// No such certificate binding.
    UnknownFingerprint = "unknown_fingerprint" => NOT_FOUND,
    /// No such checkpoint.
    UnknownCheckpoint = "unknown_checkpoint" => NOT_FOUND,
    /// No such route.
    NotFound = "not_found" => NOT_FOUND,
    /// No `[[xroad.services]]` entry for the X-Road service named.
    XroadUnknownService = "xroad_unknown_service" => NOT_FOUND,
    /// No catalogue version with that id.
    UnknownCatalogueVersion = "unknown_catalogue_version" => NOT_FOUND,
    /// A closed month's bill asked for before it was closed.
    MonthNotClosed = "month_not_closed" => NOT_FOUND,
    /// Wrong method on a known route.
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED,
    /// The body arrived too slowly.
    RequestTimeout = "request_timeout" => REQUEST_TIMEOUT,
    /// The headers arrived too slowly.
    HeaderTimeout = "header_timeout" => REQUEST_TIMEOUT,
    /// Request headers over the limit.
    HeadersTooLarge = "headers_too_large" => REQUEST_HEADER_FIELDS_TOO_LARGE,
    /// The same `source_record_id` with different content.
    IdempotencyConflict = "idempotency_conflict" => CONFLICT,
    /// The agency code is taken.
    AgencyExists = "agency_exists" => CONFLICT,
    /// The certificate is bound to another agency.
    FingerprintBound = "fingerprint_bound" => CONFLICT,
    /// The checkpoint id is taken.
    CheckpointExists = "checkpoint_exists" => CONFLICT,
    /// A QR's name or birth date does not match the record.
    QrMismatch = "qr_mismatch" => CONFLICT,
    /// A citizens import line with the same `citizen_id` as an earlier line (reported per line only).
    DuplicateCitizen = "duplicate_citizen" => CONFLICT,
    /// The X-Road client is bound to another agency.
    XroadIdBound = "xroad_id_bound" => CONFLICT,
    /// Revoking a grant the catalogue file itself makes.
    PurposeInCatalogue = "purpose_in_catalogue" => CONFLICT,
    /// A catalogue version id already loaded.
    CatalogueVersionExists = "catalogue_version_exists" => CONFLICT,
    /// An effective instant already past or taken.
    CatalogueEffectiveConflict = "catalogue_effective_conflict" => CONFLICT,
    /// Closing a month before it ends.
    MonthNotOver = "month_not_over" => CONFLICT,
    /// Closing a month twice.
    MonthClosed = "month_closed" => CONFLICT,
    /// Body over `limits.max_body_bytes`.
    BodyTooLarge = "body_too_large" => PAYLOAD_TOO_LARGE,
    /// A FHIR batch over the entry limit.
    BatchTooLarge = "batch_too_large" => PAYLOAD_TOO_LARGE,
    /// A request line over hyper's limit (answered by hyper; audit only, as `connection:uri_too_long`).
    UriTooLong = "uri_too_long" => URI_TOO_LONG,
    /// Wrong content type.
    UnsupportedMediaType = "unsupported_media_type" => UNSUPPORTED_MEDIA_TYPE,
    /// X-Road SOAP: not `text/xml`.
    XroadInvalidContentType = "xroad_invalid_content_type" => UNSUPPORTED_MEDIA_TYPE,
    /// A write that breaks the canonical schema.
    SchemaViolation = "schema_violation" => UNPROCESSABLE_ENTITY,
    /// A connector request lacks a mapped value.
    MissingField = "missing_field" => UNPROCESSABLE_ENTITY,
    /// A connector value its transform refuses.
    InvalidValue = "invalid_value" => UNPROCESSABLE_ENTITY,
    /// Not the document a connector expects.
    UnexpectedDocument = "unexpected_document" => UNPROCESSABLE_ENTITY,
    /// A check-in time out of range.
    InvalidTime = "invalid_time" => UNPROCESSABLE_ENTITY,
    /// New TLS material that does not load; the old one stays in use.
    TlsReloadFailed = "tls_reload_failed" => UNPROCESSABLE_ENTITY,
    /// A catalogue version refused (`FILE:LINE: what is wrong`).
    InvalidCatalogue = "invalid_catalogue" => UNPROCESSABLE_ENTITY,
    /// A citizens import batch with refused lines; nothing written.
    InvalidImport = "invalid_import" => UNPROCESSABLE_ENTITY,
    /// A certificate asked for a citizen with no recorded vaccination.
    NoVaccination = "no_vaccination" => UNPROCESSABLE_ENTITY,
    /// The latest dose's vaccine code is not in the DCC value-set table.
    VaccineNotInValueSet = "vaccine_not_in_value_set" => UNPROCESSABLE_ENTITY,
    /// Too many requests in flight for this agency.
    ConcurrencyLimit = "concurrency_limit" => TOO_MANY_REQUESTS,
    /// Over the agency's plan for this purpose.
    QuotaExceeded = "quota_exceeded" => TOO_MANY_REQUESTS,
    /// One phone number asked too often.
    SmsRateLimited = "sms_rate_limited" => TOO_MANY_REQUESTS,
    /// Audit only (the SMS channel answers 200 with its reply text): the message did not parse.
    SmsSyntax = "sms_syntax" => OK,
    /// Audit only (the SMS channel answers 200 with its reply text): no citizen matched.
    SmsNoMatch = "sms_no_match" => OK,
    /// A bug; the cause is in the log.
    InternalError = "internal_error" => INTERNAL_SERVER_ERROR,
    /// The audit trail cannot be written.
    AuditUnavailable = "audit_unavailable" => SERVICE_UNAVAILABLE,
    /// The broker has no Document Signer (`[dcc] dsc_cert`, `dsc_key`).
    DccNotConfigured = "dcc_not_configured" => SERVICE_UNAVAILABLE,
    /// The database cannot be written.
    StoreUnavailable = "store_unavailable" => SERVICE_UNAVAILABLE,
    /// The upstream provider gave a malformed answer, refused the call, or failed TLS.
    UpstreamError = "upstream_error" => BAD_GATEWAY,
    /// The upstream provider cannot be reached (connection refused, circuit open).
    UpstreamUnavailable = "upstream_unavailable" => SERVICE_UNAVAILABLE,
    /// The upstream provider did not answer within `store.upstream.timeout_ms`.
    UpstreamTimeout = "upstream_timeout" => GATEWAY_TIMEOUT,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status to answer with (always `code.status()`).
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `forbidden_field`.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains citizen data beyond what the caller sent.
    pub message: String,
    /// Seconds to wait before retrying (429 and 503), sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// What went wrong inside, for the log only (never answered): set by [`ApiError::internal`].
    pub cause: Option<String>,
}

impl ApiError {
    /// An error with the given code (which fixes the status) and message. A 503 asks to retry in 1 s.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = code.status();
        Self {
            status,
            code,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
            cause: None,
        }
    }

    /// 500 `internal_error`; the cause is kept for the log, not answered.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(ErrorCode::InternalError, "internal error; see the broker log")
        }
    }

    /// 404 `not_found` for an unknown route.
    pub fn no_route(method: &hyper::Method, path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no route for {method} {path}"))
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(method: &hyper::Method, path: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        )
    }

    /// The JSON body `{ "error": { "code", "message", "request_id" } }`.
    pub fn to_json(&self, request_id: &str) -> serde_json::Value {
        json!({ "error": { "code": self.code, "message": self.message, "request_id": request_id } })
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;
    use std::collections::BTreeSet;

    /// The README's error table lists exactly the codes of [`ErrorCode`], each with its status.
    #[test]
    fn readme_error_table_lists_exactly_the_enum() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
        let table = readme
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("an Errors section");
        let mut documented = BTreeSet::new();
        for row in table.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let Ok(status) = cells[1].parse::<u16>() else {
                continue;
            };
            for code in cells[2].split(',').map(|c| c.trim().trim_matches('`')) {
                assert!(
                    documented.insert((code.to_string(), status)),
                    "{code} listed twice in the README"
                );
            }
        }
        let declared: BTreeSet<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.status().as_u16()))
            .collect();
        assert_eq!(documented, declared, "README error table vs ErrorCode");
        let names: BTreeSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "a wire name used twice");
    }
}
