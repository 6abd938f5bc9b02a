//! Stage: the ground floor every stage stands on. What is known about one request as it goes through the
//! pipeline ([`Exchange`]: peer, agency, purpose, operation, citizen, fields, outcome), the request once its
//! body is read ([`ReadRequest`]) and the answer before it becomes HTTP ([`Reply`]). It imports no stage:
//! only the error type. The peer's identity ([`PeerIdentity`], read by `identity`) and the
//! rate-limit figures ([`RateInfo`], computed by `quota`) are defined here because every request
//! carries them.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;

use crate::error::{ApiError, ErrorCode};

/// What the broker knows about the peer of one connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerIdentity {
    /// Lower-case hex SHA-256 of the leaf certificate's DER.
    pub fingerprint_sha256: String,
    /// The subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
    /// Subject alternative names (DNS, IP, URI, e-mail), as text.
    pub san: Vec<String>,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// What a request attempted, as the audit trail names it (`operation`). The names are part of the audit
/// format: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /healthz`.
    Health,
    /// `GET /v1/whoami`.
    Whoami,
    /// `GET /v1/catalogue`.
    Catalogue,
    /// `GET /v1/catalogue/versions`.
    CatalogueVersions,
    /// `GET /v1/catalogue/diff`.
    CatalogueDiff,
    /// `GET /.well-known/jwks.json`: the answer-signing keys.
    Jwks,
    /// `GET /v1/purposes`.
    ListPurposes,
    /// `GET /v1/purposes/{id}/release`.
    ReleaseDryRun,
    /// A canonical read of one citizen (canonical API or a read connector).
    Read,
    /// A canonical append to a citizen's history (canonical API or a write connector).
    Write,
    /// A citizen's own access log.
    AccessLog,
    /// SMS self-look-up.
    SmsLookup,
    /// Register a checkpoint.
    CheckpointRegister,
    /// List an agency's checkpoints.
    CheckpointList,
    /// A checkpoint check-in (QR scan or ID).
    CheckpointCheckin,
    /// Contact tracing for the health authority.
    ContactTracing,
    /// An X-Road message (SOAP or REST) before it names its service.
    Xroad,
    /// Issue an EU Digital COVID Certificate.
    DccIssue,
    /// Verify an EU Digital COVID Certificate.
    DccVerify,
    /// Refused before the body: too many requests in flight for the agency.
    ConcurrencyLimit,
    /// A request hyper refused before the pipeline saw it (`connection:{code}`).
    Connection(ErrorCode),
    /// An operator action on the admin listener (`admin:…`).
    Admin(AdminOperation),
}

/// The operator's actions on the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOperation {
    /// `GET /metrics`.
    Metrics,
    /// The console page.
    Console,
    /// The console's CSS and JS.
    ConsoleAsset,
    /// Suspend an agency.
    Suspend,
    /// Resume an agency.
    Resume,
    /// List agencies.
    ListAgencies,
    /// Register an agency.
    RegisterAgency,
    /// One agency.
    GetAgency,
    /// Bind a certificate to an agency.
    BindCertificate,
    /// Unbind a certificate.
    UnbindCertificate,
    /// Reload the TLS material.
    TlsReload,
    /// Set an agency's plan.
    SetPlan,
    /// Set an agency's billing class.
    SetBillingClass,
    /// Bind an agency to its X-Road client.
    SetXroad,
    /// Clear an agency's X-Road client.
    ClearXroad,
    /// Grant a purpose to an agency at run time.
    GrantPurpose,
    /// Revoke a run-time purpose grant.
    RevokePurpose,
    /// Import citizens' records (JSON Lines).
    ImportCitizens,
    /// An agency's quota usage.
    Usage,
    /// The monthly billing report.
    BillingReport,
    /// Billing reconciled with the audit trail.
    BillingReconcile,
    /// A closed month's signed bill.
    BillingClosed,
    /// Close a month.
    BillingClose,
    /// Every catalogue version.
    CatalogueVersions,
    /// What changed between two catalogue versions.
    CatalogueDiff,
    /// Load a catalogue version; [`Exchange::operation_detail`] names it once loaded.
    LoadCatalogue,
    /// The audit trail's head.
    AuditHead,
    /// Verify the audit trail.
    AuditVerify,
    /// Search the audit trail.
    AuditEntries,
    /// A signed audit checkpoint (the head, for a witness).
    AuditCheckpoint,
}

impl AdminOperation {
    /// `suspend` or `resume` (the only actions the routes let through).
    pub fn suspend_or_resume(action: &str) -> Self {
        if action == "suspend" {
            AdminOperation::Suspend
        } else {
            AdminOperation::Resume
        }
    }
}

impl Operation {
    /// The audit trail's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Health => "health",
            Operation::Whoami => "whoami",
            Operation::Catalogue => "catalogue",
            Operation::CatalogueVersions => "catalogue_versions",
            Operation::CatalogueDiff => "catalogue_diff",
            Operation::Jwks => "jwks",
            Operation::ListPurposes => "list_purposes",
            Operation::ReleaseDryRun => "release_dry_run",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::AccessLog => "access_log",
            Operation::SmsLookup => "sms:lookup",
            Operation::CheckpointRegister => "checkpoint:register",
            Operation::CheckpointList => "checkpoint:list",
            Operation::CheckpointCheckin => "checkpoint:checkin",
            Operation::ContactTracing => "contact_tracing",
            Operation::Xroad => "xroad",
            Operation::DccIssue => "dcc_issue",
            Operation::DccVerify => "dcc_verify",
            Operation::ConcurrencyLimit => "concurrency_limit",
            Operation::Connection(code) => match code {
                ErrorCode::HeadersTooLarge => "connection:headers_too_large",
                ErrorCode::MalformedRequest => "connection:malformed_request",
                ErrorCode::HeaderTimeout => "connection:header_timeout",
                ErrorCode::UriTooLong => "connection:uri_too_long",
                _ => "connection:refused",
            },
            Operation::Admin(op) => match op {
                AdminOperation::Metrics => "admin:metrics",
                AdminOperation::Console => "admin:console",
                AdminOperation::ConsoleAsset => "admin:console_asset",
                AdminOperation::Suspend => "admin:suspend",
                AdminOperation::Resume => "admin:resume",
                AdminOperation::ListAgencies => "admin:list_agencies",
                AdminOperation::RegisterAgency => "admin:register_agency",
                AdminOperation::GetAgency => "admin:get_agency",
                AdminOperation::BindCertificate => "admin:bind_certificate",
                AdminOperation::UnbindCertificate => "admin:unbind_certificate",
                AdminOperation::TlsReload => "admin:tls_reload",
                AdminOperation::SetPlan => "admin:set_plan",
                AdminOperation::SetBillingClass => "admin:set_billing_class",
                AdminOperation::SetXroad => "admin:set_xroad",
                AdminOperation::ClearXroad => "admin:clear_xroad",
                AdminOperation::GrantPurpose => "admin:grant_purpose",
                AdminOperation::RevokePurpose => "admin:revoke_purpose",
                AdminOperation::ImportCitizens => "admin:import_citizens",
                AdminOperation::Usage => "admin:usage",
                AdminOperation::BillingReport => "admin:billing_report",
                AdminOperation::BillingReconcile => "admin:billing_reconcile",
                AdminOperation::BillingClosed => "admin:billing_closed",
                AdminOperation::BillingClose => "admin:billing_close",
                AdminOperation::CatalogueVersions => "admin:catalogue_versions",
                AdminOperation::CatalogueDiff => "admin:catalogue_diff",
                AdminOperation::LoadCatalogue => "admin:load_catalogue",
                AdminOperation::AuditHead => "admin:audit_head",
                AdminOperation::AuditVerify => "admin:audit_verify",
                AdminOperation::AuditEntries => "admin:audit_entries",
                AdminOperation::AuditCheckpoint => "admin:audit_checkpoint",
            },
        }
    }

    /// Operator traffic that touches no data and comes often (health probes, metrics scrapes, the
    /// console's CSS/JS): not put on the audit trail when it arrives on the admin listener.
    pub fn unaudited_on_admin(self) -> bool {
        matches!(
            self,
            Operation::Health | Operation::Admin(AdminOperation::Metrics | AdminOperation::ConsoleAsset)
        )
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Agencies.
    Agency,
    /// Operators.
    Admin,
}

/// What one request accumulates on its way through the stages; it becomes the audit entry.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Request id, also in the `x-request-id` header, the error body and the log span.
    pub request_id: String,
    /// The verified peer.
    pub peer: Arc<PeerIdentity>,
    /// Agency code, once the registry knows it.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// `canonical`, a connector name, `xroad-soap`, `xroad-rest` or `admin`.
    pub channel: String,
    /// What was attempted, once routing knows; the audit entry falls back to [`Exchange::route`].
    pub operation: Option<Operation>,
    /// What the operation acted on, when its audit name carries it (`admin:load_catalogue:{version}`).
    pub operation_detail: Option<String>,
    /// The citizen concerned, if any.
    pub citizen_id: Option<String>,
    /// Field paths released (reads) or written (writes).
    pub fields: Vec<String>,
    /// Hex SHA-256 of the request body.
    pub body_sha256: String,
    /// Bulk processing (many citizens at once).
    pub bulk: bool,
    /// HTTP method and path, for the log.
    pub route: String,
    /// The request reached the store and was counted against the quota.
    pub metered: bool,
    /// Rate-limit figures for the response headers, when the plan limits this purpose.
    pub rate: Option<RateInfo>,
    /// Other citizens a bulk answer released data about; each gets an audit entry of their own.
    pub also_concerns: Vec<String>,
    /// The catalogue version in force when the request started: the only one it sees.
    pub catalogue: Arc<crate::catalogue::CatalogueVersion>,
    /// The person behind the request and the reason, as declared (`accountability`).
    pub accountability: crate::accountability::Accountability,
    /// The W3C `traceparent` followed across the agency, the broker and an upstream provider.
    pub traceparent: Option<String>,
}

/// An answer before it becomes an HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// Extra headers (rate-limit headers, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The stable error code when this is an error answer.
    pub error_code: Option<ErrorCode>,
    /// What went wrong inside (a 500's cause), for the log step only; never answered.
    pub internal_cause: Option<String>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
            error_code: None,
            internal_cause: None,
        }
    }

    /// A JSON error answer `{ "error": { code, message, request_id } }`.
    pub fn error(err: &ApiError, request_id: &str) -> Self {
        let mut reply = Self::json(err.status, &err.to_json(request_id));
        reply.error_code = Some(err.code);
        reply.internal_cause = err.cause.clone();
        if let Some(secs) = err.retry_after {
            reply
                .headers
                .push((hyper::header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        reply
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl Exchange {
    /// A fresh request from `peer` on `side`, before anything is known about it; `route` is the method and
    /// (masked) path for the log; `catalogue` is the version in force now.
    pub fn new(
        side: Side,
        peer: Arc<PeerIdentity>,
        route: String,
        catalogue: Arc<crate::catalogue::CatalogueVersion>,
    ) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            peer,
            agency: None,
            purpose: None,
            channel: match side {
                Side::Admin => "admin".into(),
                Side::Agency => "canonical".into(),
            },
            operation: None,
            operation_detail: None,
            citizen_id: None,
            fields: Vec::new(),
            body_sha256: String::new(),
            bulk: false,
            route,
            metered: false,
            rate: None,
            also_concerns: Vec::new(),
            catalogue,
            accountability: Default::default(),
            traceparent: None,
        }
    }

    /// The operation's audit name, or the route when routing never got that far.
    pub fn operation_name(&self) -> String {
        match (self.operation, &self.operation_detail) {
            (Some(op), Some(detail)) => format!("{}:{detail}", op.as_str()),
            (Some(op), None) => op.as_str().to_string(),
            (None, _) => self.route.clone(),
        }
    }
}

/// What the rate-limit headers say about the tightest window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// The limit of the tightest window.
    pub limit: u64,
    /// Calls left in it.
    pub remaining: u64,
    /// Seconds until it resets.
    pub reset: u64,
}

impl RateInfo {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        vec![
            (
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(self.reset),
            ),
        ]
    }
}

/// A request after its body has been read within the limits.
pub struct ReadRequest {
    /// Method, URI, headers.
    pub parts: hyper::http::request::Parts,
    /// The whole body.
    pub body: Bytes,
}

impl ReadRequest {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The value of query parameter `name`, percent-decoded (the first one if repeated).
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.parts.uri.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }

    /// The `charset` parameter of `Content-Type`, lower-cased and unquoted, if given.
    pub fn charset(&self) -> Option<String> {
        let ct = self.parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        ct.split(';').skip(1).find_map(|param| {
            let (name, value) = param.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("charset"))
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        })
    }

    /// The media type of the body (`Content-Type` without parameters), lower-cased.
    pub fn media_type(&self) -> Option<String> {
        let ct = self.parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        Some(ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }

    /// The body's declared media type when it is one of `accepted`, else 415 `unsupported_media_type`
    /// (`expected` names what is accepted in the message).
    pub fn require_media_type(&self, accepted: &[&str], expected: &str) -> Result<String, ApiError> {
        match self.media_type() {
            Some(media) if accepted.contains(&media.as_str()) => Ok(media),
            other => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "expected {expected}, got {}",
                    other.as_deref().unwrap_or("no Content-Type")
                ),
            )),
        }
    }
}

pub(crate) fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// A path fit for logs and audit `operation` text: any run of 9 or more digits (a citizen ID or an old
/// ID number) keeps its first three and last two digits, the rest masked. Citizen data never reaches a
/// log line in the clear.
pub fn mask_citizen_ids(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 9 {
            out.push_str(&digits[..3]);
            out.extend(std::iter::repeat_n('*', digits.len() - 5));
            out.push_str(&digits[digits.len() - 2..]);
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in path.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_citizen_ids;

    #[test]
    fn citizen_ids_are_masked_in_routes() {
        assert_eq!(
            mask_citizen_ids("/v1/citizens/001090000001"),
            "/v1/citizens/001*******01"
        );
        assert_eq!(
            mask_citizen_ids("/v1/purposes/covid-qr-status/release"),
            "/v1/purposes/covid-qr-status/release"
        );
        assert_eq!(mask_citizen_ids("/x/12345678/y"), "/x/12345678/y");
    }
}
