//! Channel: SMS self-look-up (seed 004). A citizen texts `TTCD <12-digit ID>` from a phone number verified by
//! the telecom ministry; the SMS gateway (an agency with its own certificate, purpose `citizen-self-sms`)
//! relays sender and text. The broker answers with the citizen's own basic data only if the sender's number
//! is the one on the record, and otherwise with one single reply —
//! "Số điện thoại hoặc công dân không tồn tại" — whether the number or the citizen is wrong, so the channel
//! cannot be used to probe who exists.
//!
//! Syntax: the keyword `TTCD` (any case), blanks, the 12-digit ID; extra spaces and a trailing full stop are
//! accepted. Numbers: `+84…`, `84…` and `0…` forms of a Vietnamese mobile number all mean `+84…`.
//! Vietnamese needs UCS-2: 70 characters in a single SMS, 67 per segment when concatenated.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

/// The per-phone limit lives with the other admission limits; named here for the SMS channel's users.
pub use crate::admission::{PER_PHONE_LIMIT, PER_PHONE_WINDOW};
use crate::broker::Broker;
use crate::canonical;
use crate::citizen_id::CitizenId;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{Exchange, Operation, ReadRequest, Reply};
use crate::registry::Agency;

/// The one reply for a wrong number or an unknown citizen.
pub const NO_MATCH_REPLY: &str = "Số điện thoại hoặc công dân không tồn tại";
/// The reply to a message that is not `TTCD <ID>`.
pub const SYNTAX_REPLY: &str = "Sai cú pháp. Soạn: TTCD <số định danh cá nhân 12 số>";
/// The reply when a number asks too often.
pub const RATE_LIMIT_REPLY: &str = "Bạn đã tra cứu quá số lần cho phép. Vui lòng thử lại sau.";
/// How an SMS text is encoded, and in how many segments it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// `GSM-7` or `UCS-2`.
    pub encoding: &'static str,
    /// Characters as the encoding counts them (UTF-16 code units for UCS-2; escaped GSM characters count 2).
    pub units: usize,
    /// Number of SMS segments.
    pub count: usize,
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{000C}";

/// Count the segments of an SMS text: GSM-7 (160 / 153 per segment) when every character is in the GSM
/// alphabet, otherwise UCS-2 (70 / 67).
pub fn segments(text: &str) -> Segments {
    let gsm_units: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENDED.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, multi) = match gsm_units {
        Some(units) => ("GSM-7", units, 160, 153),
        None => ("UCS-2", text.encode_utf16().count(), 70, 67),
    };
    let count = if units <= single { 1 } else { units.div_ceil(multi) };
    Segments {
        encoding,
        units,
        count,
    }
}

/// A Vietnamese mobile number in E.164 (`+84` and nine digits), from `+84…`, `84…` or `0…` forms with
/// blanks, dots or dashes.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
        .collect();
    let national = compact
        .strip_prefix("+84")
        .or_else(|| compact.strip_prefix("84").filter(|r| r.len() == 9))
        .or_else(|| compact.strip_prefix('0'))?;
    (national.len() == 9 && national.bytes().all(|b| b.is_ascii_digit())).then(|| format!("+84{national}"))
}

/// The ID asked for in a `TTCD <ID>` message, or `None` when the syntax is wrong.
pub fn parse_command(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let keyword = words.next()?;
    if !keyword.eq_ignore_ascii_case("TTCD") {
        return None;
    }
    let id = words.next()?.trim_end_matches('.');
    if words.next().is_some() {
        return None;
    }
    Some(id.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inbound {
    /// Sender's number as the gateway received it.
    from: String,
    /// The message text.
    text: String,
}

fn reply(status: StatusCode, to: &str, text: &str, code: Option<ErrorCode>) -> Reply {
    let seg = segments(text);
    let mut reply = Reply::json(
        status,
        &json!({ "to": to, "reply": text, "encoding": seg.encoding, "characters": seg.units, "segments": seg.count }),
    );
    reply.error_code = code;
    reply
}

/// `POST /v1/sms/inbound?purpose=citizen-self-sms` with `{"from": "+84…", "text": "TTCD …"}`: the SMS to send
/// back. Every attempt is audited; only a full match releases anything.
pub async fn inbound(
    broker: &Broker,
    exchange: &mut Exchange,
    agency: &Agency,
    req: &ReadRequest,
) -> Result<Reply, ApiError> {
    exchange.channel = "sms".into();
    exchange.operation = Some(Operation::SmsLookup);
    let purpose = canonical::authorize(broker, exchange, agency, req.query("purpose").as_deref())?;
    if purpose.id != "citizen-self-sms" {
        return Err(ApiError::new(
            ErrorCode::PurposeNotAllowed,
            "this route serves purpose citizen-self-sms only",
        ));
    }
    let sms: Inbound = crate::json::body(req)?;
    let phone = normalize_phone(&sms.from);
    let to = phone.clone().unwrap_or_else(|| sms.from.trim().to_string());
    if !broker.sms_limiter.allow(&to) {
        let mut r = reply(
            StatusCode::TOO_MANY_REQUESTS,
            &to,
            RATE_LIMIT_REPLY,
            Some(ErrorCode::SmsRateLimited),
        );
        // A refusal carries the usual error object too, beside the text the gateway should still send.
        let mut body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        body["error"] = ApiError::new(ErrorCode::SmsRateLimited, "too many look-ups from this number")
            .to_json(&exchange.request_id)["error"]
            .clone();
        r.body = body.to_string().into();
        r.headers.push((
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(PER_PHONE_WINDOW.as_secs()),
        ));
        return Ok(r);
    }
    let Some(asked) = parse_command(&sms.text) else {
        return Ok(reply(
            StatusCode::OK,
            &to,
            SYNTAX_REPLY,
            Some(ErrorCode::SmsSyntax),
        ));
    };
    // From here on every failure gives the same reply, so the channel reveals nothing about who exists.
    let no_match = || reply(StatusCode::OK, &to, NO_MATCH_REPLY, Some(ErrorCode::SmsNoMatch));
    let Ok(id) = CitizenId::parse(&asked) else {
        return Ok(no_match());
    };
    exchange.citizen_id = Some(id.as_str().to_string());
    let record = match canonical::fetch(broker, exchange, &id).await {
        Ok(record) => record,
        Err(e) if e.code == "citizen_not_found" => return Ok(no_match()),
        Err(e) => return Err(e),
    };
    if phone.is_none() || record["phone"].as_str() != phone.as_deref() {
        return Ok(no_match());
    }
    let fields = purpose.release_set(None, &broker.schema)?;
    let data = canonical::release(exchange, &record, &fields);
    let birth = data["birth_date"]
        .as_str()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .map(|d| d.format("%d/%m/%Y").to_string())
        .unwrap_or_default();
    let gender = match data["gender"].as_str() {
        Some("male") => "Nam",
        Some("female") => "Nữ",
        _ => "",
    };
    let text = format!(
        "CCCD {}: {}, sinh {}, {}.",
        data["citizen_id"].as_str().unwrap_or_default(),
        data["full_name"].as_str().unwrap_or_default(),
        birth,
        gender
    );
    Ok(reply(StatusCode::OK, &to, &text, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_forms_normalise_to_e164() {
        for raw in [
            "+84912345678",
            "84912345678",
            "0912345678",
            "091 234 5678",
            "0912.345.678",
            " +84 912-345-678 ",
        ] {
            assert_eq!(normalize_phone(raw).as_deref(), Some("+84912345678"), "{raw}");
        }
        for bad in ["912345678", "+1912345678", "09123456789", "0912abc678", ""] {
            assert_eq!(normalize_phone(bad), None, "{bad}");
        }
    }

    #[test]
    fn command_syntax_variants() {
        assert_eq!(
            parse_command("TTCD 001090000001").as_deref(),
            Some("001090000001")
        );
        assert_eq!(
            parse_command("  ttcd    001090000001.  ").as_deref(),
            Some("001090000001")
        );
        assert_eq!(
            parse_command("Ttcd\t001090000001\n").as_deref(),
            Some("001090000001")
        );
        assert_eq!(parse_command("TTCD"), None);
        assert_eq!(parse_command("CCCD 001090000001"), None);
        assert_eq!(parse_command("TTCD 001090000001 extra"), None);
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2_limits() {
        assert_eq!(
            segments(&"a".repeat(160)),
            Segments {
                encoding: "GSM-7",
                units: 160,
                count: 1
            }
        );
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"€".repeat(80)).units, 160);
        let vi = "ữ".repeat(70);
        assert_eq!(
            segments(&vi),
            Segments {
                encoding: "UCS-2",
                units: 70,
                count: 1
            }
        );
        assert_eq!(segments(&"ữ".repeat(71)).count, 2);
        assert_eq!(segments(&"ữ".repeat(134)).count, 2);
        assert_eq!(segments(&"ữ".repeat(135)).count, 3);
        let reply = segments(NO_MATCH_REPLY);
        assert_eq!((reply.encoding, reply.count), ("UCS-2", 1));
    }

    #[test]
    fn per_phone_limit_counts_within_the_window() {
        let limiter = crate::admission::PhoneLimiter::default();
        for _ in 0..PER_PHONE_LIMIT {
            assert!(limiter.allow("+84912345678"));
        }
        assert!(!limiter.allow("+84912345678"));
        assert!(limiter.allow("+84987654321"));
    }
}
