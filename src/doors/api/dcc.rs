//! The DCC operations on the agency listener: issue a citizen's certificate, verify an `HC1:` string.

use base64::Engine;
use hyper::StatusCode;
use serde_json::json;

use crate::broker::Broker;
use crate::canonical;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, ReadRequest, Reply};
use crate::policy::FieldPath;
use crate::registry::Agency;

/// What `?format=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The DCC JSON, the `HC1:` string and the facts about both (default).
    Json,
    /// The `HC1:` string alone, `text/plain`.
    Hc1,
    /// The QR code, `image/png`.
    Png,
}

/// `GET /v1/citizens/{id}/covid-certificate?purpose=covid-certificate[&format=json|hc1|png]`: a signed EU
/// DCC for the citizen's latest vaccination. The UVCI's opaque part is the request id (hex, upper case),
/// so a certificate leads straight to its audit entry; the entry's `fields` are the canonical fields that
/// went in.
pub async fn issue(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
    raw_id: &str,
) -> Result<Reply, ApiError> {
    exchange.operation = Some(Operation::DccIssue);
    let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
    let sources: Vec<FieldPath> = crate::dcc::SOURCE_FIELDS
        .iter()
        .filter_map(|f| f.parse().ok())
        .collect();
    if let Some(missing) = sources.iter().find(|f| !purpose.read.iter().any(|r| r.covers(f))) {
        return Err(ApiError::new(
            ErrorCode::ForbiddenField,
            format!(
                "purpose `{}` may not read field `{missing}`, which a certificate carries",
                purpose.id
            ),
        ));
    }
    let format = match req.query("format").as_deref() {
        None | Some("json") => Format::Json,
        Some("hc1") => Format::Hc1,
        Some("png") => Format::Png,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::UnknownFormat,
                format!("format {other:?} is not one of json, hc1, png"),
            ))
        }
    };
    let id = canonical::citizen_id(exchange, raw_id)?;
    let signer = broker.dcc_signer.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::DccNotConfigured,
            "this broker has no Document Signer certificate ([dcc] dsc_cert, dsc_key)",
        )
    })?;
    let record = canonical::fetch_for_release(broker, exchange, &id, &sources, &[]).await?;
    let released = canonical::release(exchange, &record, &sources);
    let uvci = crate::dcc::uvci(&exchange.request_id.replace('-', "").to_ascii_uppercase());
    let dcc = crate::dcc::certificate_json(&released, &uvci, &broker.config.dcc.issuer)?;
    let validity = chrono::Duration::days(i64::from(broker.config.dcc.validity_days));
    let issued = signer.sign(dcc, crate::dcc::COUNTRY, chrono::Utc::now(), validity)?;
    Ok(match format {
        Format::Json => Reply::json(
            StatusCode::OK,
            &json!({
                "citizen_id": id.as_str(),
                "uvci": uvci,
                "kid": hex::encode(signer.kid()),
                "issued_at": issued.issued_at.to_rfc3339(),
                "expires": issued.expires.to_rfc3339(),
                "dcc": issued.dcc,
                "hc1": issued.hc1,
            }),
        ),
        Format::Hc1 => Reply {
            content_type: "text/plain",
            body: issued.hc1.into(),
            ..Reply::json(StatusCode::OK, &json!(null))
        },
        Format::Png => Reply {
            content_type: "image/png",
            body: crate::dcc::qr_png(&issued.hc1)?.into(),
            ..Reply::json(StatusCode::OK, &json!(null))
        },
    })
}

/// `POST /v1/dcc/verify` with `{"hc1": "HC1:…"}`: 200 `{"valid": true, "certificate"}`, or 200
/// `{"valid": false, "reason": code, "message"}`. Checked against the broker's trust list, now — or against
/// `trust_list` (base64 DER Document Signer certificates) and at `at` (RFC 3339) when the request gives them.
pub fn verify(broker: &Broker, exchange: &mut Exchange, req: &ReadRequest) -> Result<Reply, ApiError> {
    exchange.operation = Some(Operation::DccVerify);
    let body: serde_json::Value = crate::json::body(req)?;
    let invalid =
        |pointer: &str, what: &str| ApiError::new(ErrorCode::SchemaViolation, format!("{pointer}: {what}"));
    let hc1 = body["hc1"]
        .as_str()
        .ok_or_else(|| invalid("/hc1", "a string starting with HC1: is required"))?;
    let at = match body.get("at") {
        None => chrono::Utc::now(),
        Some(at) => at
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok_or_else(|| invalid("/at", "an RFC 3339 date-time"))?,
    };
    let given;
    let trust = match body.get("trust_list") {
        None => &broker.dcc_trust,
        Some(list) => {
            let mut trust = crate::dcc::TrustList::default();
            let items = list
                .as_array()
                .ok_or_else(|| invalid("/trust_list", "an array of base64 DER certificates"))?;
            for (i, item) in items.iter().enumerate() {
                let der = item
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .ok_or_else(|| invalid(&format!("/trust_list/{i}"), "not base64"))?;
                trust
                    .add_der(&der)
                    .map_err(|e| invalid(&format!("/trust_list/{i}"), &e))?;
            }
            given = trust;
            &given
        }
    };
    let answer = match crate::dcc::verify(hc1, trust, at) {
        Ok(verified) => json!({ "valid": true, "certificate": verified }),
        Err(refusal) => json!({
            "valid": false,
            "reason": refusal.code(),
            "message": refusal.to_string(),
        }),
    };
    Ok(Reply::json(StatusCode::OK, &answer))
}
