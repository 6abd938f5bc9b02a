//! Stage: decode. Strict JSON for everything agencies and operators send: UTF-8 only (a leading BOM is
//! tolerated, as real FHIR servers send one), duplicate keys refused (serde_json would silently keep the
//! last one — a classic way to smuggle a second value past a check), and nesting bounded.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::exchange::ReadRequest;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// JSON is UTF-8 (RFC 8259): a body declared in another charset would be misread, so it is refused (415).
pub fn refuse_non_utf8_charset(req: &ReadRequest) -> Result<(), ApiError> {
    match req.charset() {
        None => Ok(()),
        Some(charset) if charset == "utf-8" || charset == "utf8" => Ok(()),
        Some(other) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("JSON bodies are UTF-8; charset={other} is not accepted"),
        )),
    }
}

/// Parse a JSON body into `T`: 415 unless it is declared `application/json` (UTF-8), 400 `invalid_json`
/// naming the problem.
pub fn body<T: de::DeserializeOwned>(req: &ReadRequest) -> Result<T, ApiError> {
    req.require_media_type(&["application/json"], "application/json")?;
    refuse_non_utf8_charset(req)?;
    let value = parse(&req.body)?;
    serde_json::from_value(value).map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))
}

/// Parse a request body as JSON: 400 `invalid_json` (malformed, invalid UTF-8, duplicate key) or
/// 400 `too_deep`.
pub fn parse(body: &[u8]) -> Result<Value, ApiError> {
    let body = body.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de::DeserializeSeed::deserialize(StrictValue { depth: 0 }, &mut de)
        .map_err(|e| classify(e.to_string()))?;
    de.end().map_err(|e| classify(e.to_string()))?;
    Ok(value)
}

fn classify(message: String) -> ApiError {
    if message.contains("nesting deeper than") || message.contains("recursion limit") {
        ApiError::new(
            ErrorCode::TooDeep,
            format!("JSON nested deeper than {MAX_DEPTH} levels"),
        )
    } else {
        ApiError::new(ErrorCode::InvalidJson, message)
    }
}

/// A seed that builds a `Value` while checking duplicates and depth.
struct StrictValue {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.nested::<A::Error>()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue { depth })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.nested::<A::Error>()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue { depth })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

impl StrictValue {
    fn nested<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom(format!("nesting deeper than {MAX_DEPTH}")))
        } else {
            Ok(self.depth + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ordinary_json_and_a_bom() {
        assert_eq!(
            parse(br#"{"a":[1,2,{"b":null}]}"#).ok(),
            Some(serde_json::json!({"a":[1,2,{"b":null}]}))
        );
        assert!(parse("\u{FEFF}{\"a\":1}".as_bytes()).is_ok());
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        let e = parse(br#"{"a":{"id":"1","id":"2"}}"#)
            .err()
            .map(|e| (e.code.as_str(), e.message));
        assert!(matches!(e, Some(("invalid_json", m)) if m.contains("duplicate key \"id\"")));
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            parse(deep.as_bytes()).err().map(|e| e.code.as_str()),
            Some("too_deep")
        );
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn refuses_invalid_utf8_and_trailing_garbage() {
        assert_eq!(
            parse(b"{\"a\":\"\xff\"}").err().map(|e| e.code.as_str()),
            Some("invalid_json")
        );
        assert_eq!(
            parse(b"{} {}").err().map(|e| e.code.as_str()),
            Some("invalid_json")
        );
    }
}
