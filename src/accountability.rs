//! Stage: accountability — the person behind a request and the reason for it, on every channel.
//!
//! An agency names the official who asked (`userId`), the case or issue the request serves, the legal
//! basis it relies on, a consent reference where the purpose rests on consent, whether this is bulk
//! processing, and — for investigations — that the access is to stay hidden from the citizen until a
//! date. X-Road carries the first two in its message headers; the rest follow Estonia's Data Tracker
//! extension. The same HTTP headers are accepted on every channel (canonical API, connectors, X-Road
//! REST); the X-Road SOAP channel takes `userId` and `issue` from its SOAP header instead.
//!
//! Everything is validated before any data is touched and recorded in the audit entry
//! (`audit::AuditRecord::accountability`).

use chrono::{DateTime, NaiveDate, Utc};
use hyper::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
pub use crate::policy::OfficialIdShown;
use crate::policy::Purpose;

/// The official's ID (`X-Road-UserId`).
pub const USER_ID: &str = "x-road-userid";
/// The case, application or issue reference (`X-Road-Issue`).
pub const ISSUE: &str = "x-road-issue";
/// The legal basis the request relies on.
pub const LEGAL_BASIS: &str = "x-road-pdu-legal-basis";
/// The consent reference, required under a consent-based purpose.
pub const CONSENT_REF: &str = "x-road-pdu-consent-ref";
/// `true` for bulk processing.
pub const BULK: &str = "x-road-pdu-bulk";
/// `true` to hide the access from the citizen until [`HIDDEN_UNTIL`].
pub const HIDDEN: &str = "x-road-pdu-hidden";
/// Why the access is hidden (e.g. the investigation).
pub const HIDDEN_REASON: &str = "x-road-pdu-hidden-reason";
/// The date (or RFC 3339 time) the hidden access becomes visible to the citizen.
pub const HIDDEN_UNTIL: &str = "x-road-pdu-hidden-until";

/// Longest official ID accepted.
const MAX_USER_ID: usize = 64;
/// Longest free-text reference (issue, consent reference) accepted.
const MAX_REFERENCE: usize = 128;
/// Longest legal basis or hiding reason accepted.
const MAX_TEXT: usize = 256;

/// What the client declared about the person and the reason; stored in the audit entry. Fields left out
/// of the encoding when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Accountability {
    /// The official (end user) who initiated the request, e.g. `EE37702211234`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The case, application or issue the request serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<String>,
    /// The legal basis the official relied on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// The citizen's consent, where the purpose rests on consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_ref: Option<String>,
    /// Hidden from the citizen's access log until this time (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_until: Option<String>,
    /// Why it is hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_reason: Option<String>,
    /// The X-Road client the request named (`INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xroad_client: Option<String>,
    /// The X-Road service the request named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xroad_service: Option<String>,
    /// The X-Road message id (`id` / `X-Road-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xroad_id: Option<String>,
}

impl Accountability {
    /// Nothing declared: no field in the audit entry.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// When the hidden access becomes visible, if it is hidden.
    pub fn hidden_until_time(&self) -> Option<DateTime<Utc>> {
        self.hidden_until
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The declaration as read from the request headers, before it is checked against the purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// What goes into the audit entry.
    pub record: Accountability,
    /// The bulk-processing flag.
    pub bulk: bool,
}

fn invalid(header: &str, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidAccountability,
        format!("header {header}: {why}"),
    )
}

/// One header's value: at most once, UTF-8, no control characters, 1..=`max` characters.
pub fn text(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(name, "given more than once"));
    }
    let value = std::str::from_utf8(value.as_bytes()).map_err(|_| invalid(name, "not UTF-8"))?;
    checked(name, value, max).map(Some)
}

/// A declared value: trimmed, non-empty, no control characters, at most `max` characters.
pub fn checked(name: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(name, "empty"));
    }
    if value.chars().count() > max {
        return Err(invalid(name, &format!("longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(name, "control characters"));
    }
    Ok(value.to_string())
}

/// An official's ID: visible ASCII without spaces (X-Road recommends a country prefix, `EE1234…`).
pub fn user_id(name: &str, value: &str) -> Result<String, ApiError> {
    let value = checked(name, value, MAX_USER_ID)?;
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(name, "only visible ASCII characters, no spaces"));
    }
    Ok(value)
}

fn flag(headers: &HeaderMap, name: &str) -> Result<bool, ApiError> {
    match text(headers, name, 5)?.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(name, "true or false")),
    }
}

/// A date (`2027-01-31`, midnight UTC) or an RFC 3339 time.
fn until(value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| invalid(HIDDEN_UNTIL, "a date (YYYY-MM-DD) or an RFC 3339 time"))
}

/// Read the accountability headers: 400 `invalid_accountability` naming the header at fault.
pub fn from_headers(headers: &HeaderMap) -> Result<Declared, ApiError> {
    let mut record = Accountability {
        user_id: text(headers, USER_ID, MAX_USER_ID)?
            .map(|v| user_id(USER_ID, &v))
            .transpose()?,
        issue: text(headers, ISSUE, MAX_REFERENCE)?,
        legal_basis: text(headers, LEGAL_BASIS, MAX_TEXT)?,
        consent_ref: text(headers, CONSENT_REF, MAX_REFERENCE)?,
        ..Accountability::default()
    };
    let bulk = flag(headers, BULK)?;
    let hidden = flag(headers, HIDDEN)?;
    let reason = text(headers, HIDDEN_REASON, MAX_TEXT)?;
    let until_value = text(headers, HIDDEN_UNTIL, 40)?;
    match (hidden, reason, until_value) {
        (false, None, None) => {}
        (true, Some(reason), Some(until_value)) => {
            let until = until(&until_value)?;
            record.hidden_until = Some(until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            record.hidden_reason = Some(reason);
        }
        (true, _, _) => {
            return Err(invalid(
                HIDDEN,
                "a hidden access needs both X-Road-PDU-Hidden-Reason and X-Road-PDU-Hidden-Until",
            ))
        }
        (false, _, _) => {
            return Err(invalid(
                HIDDEN,
                "X-Road-PDU-Hidden-Reason and -Hidden-Until need X-Road-PDU-Hidden: true",
            ))
        }
    }
    Ok(Declared { record, bulk })
}

/// Check the declaration against the purpose it is made under: 400 `consent_ref_required` when the
/// purpose rests on consent and none is named; 403 `hiding_not_allowed` when the purpose may not hide an
/// access; 400 `hidden_too_long` beyond the purpose's cap; 400 `invalid_accountability` for a date
/// already past.
pub fn check_against(
    purpose: &Purpose,
    declared: &Accountability,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if purpose.consent_based && declared.consent_ref.is_none() {
        return Err(ApiError::new(
            ErrorCode::ConsentRefRequired,
            format!(
                "purpose {} rests on the citizen's consent: name it (X-Road-PDU-Consent-Ref)",
                purpose.id
            ),
        ));
    }
    let Some(until) = declared.hidden_until_time() else {
        return Ok(());
    };
    if purpose.max_hidden_days == 0 {
        return Err(ApiError::new(
            ErrorCode::HidingNotAllowed,
            format!(
                "purpose {} does not allow hiding an access from the citizen",
                purpose.id
            ),
        ));
    }
    if until <= now {
        return Err(invalid(HIDDEN_UNTIL, "already past"));
    }
    let cap = now + chrono::Duration::days(i64::from(purpose.max_hidden_days));
    if until > cap {
        return Err(ApiError::new(
            ErrorCode::HiddenTooLong,
            format!(
                "purpose {} hides an access for at most {} days",
                purpose.id, purpose.max_hidden_days
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        h
    }

    #[test]
    fn reads_and_validates_the_headers() {
        let d = from_headers(&headers(&[
            ("x-road-userid", "EE37702211234"),
            ("x-road-issue", "case-17"),
            ("x-road-pdu-legal-basis", "Police Act §12"),
            ("x-road-pdu-bulk", "true"),
            ("x-road-pdu-hidden", "true"),
            ("x-road-pdu-hidden-reason", "investigation 42"),
            ("x-road-pdu-hidden-until", "2030-01-31"),
        ]))
        .unwrap();
        assert!(d.bulk);
        assert_eq!(d.record.user_id.as_deref(), Some("EE37702211234"));
        assert_eq!(d.record.hidden_until.as_deref(), Some("2030-01-31T00:00:00.000Z"));
        assert!(from_headers(&HeaderMap::new()).unwrap().record.is_empty());
        for bad in [
            headers(&[("x-road-userid", "EE 123")]),
            headers(&[("x-road-userid", "a"), ("x-road-userid", "b")]),
            headers(&[("x-road-pdu-bulk", "yes")]),
            headers(&[("x-road-pdu-hidden", "true")]),
            headers(&[("x-road-pdu-hidden-until", "2030-01-01")]),
            headers(&[
                ("x-road-pdu-hidden", "true"),
                ("x-road-pdu-hidden-reason", "x"),
                ("x-road-pdu-hidden-until", "soon"),
            ]),
        ] {
            assert_eq!(from_headers(&bad).unwrap_err().code, "invalid_accountability");
        }
    }

    #[test]
    fn masks_the_official_id() {
        assert_eq!(
            OfficialIdShown::Masked.show("EE37702211234").as_deref(),
            Some("EE*********34")
        );
        assert_eq!(OfficialIdShown::Masked.show("abc").as_deref(), Some("***"));
        assert_eq!(OfficialIdShown::None.show("abc"), None);
    }
}
