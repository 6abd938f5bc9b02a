//! Stage: schema. The canonical citizen record as JSON Schema (draft 2020-12), compiled once at start;
//! every write is validated against it before it reaches the store.
//!
//! Besides validation the schema is the source of truth for the canonical field paths the purpose
//! catalogue and the connectors may name ([`CitizenSchema::field_paths`]) and for the derived,
//! read-only fields that a write may never carry ([`CitizenSchema::derived_fields`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;
use unicode_normalization::is_nfc;

use crate::error::{ApiError, ErrorCode};
use crate::field_path::{FieldPath, Step};

/// The schema shipped with the broker, used when the configuration names no other file.
pub const EMBEDDED_SCHEMA: &str = include_str!("../schemas/citizen.schema.json");

/// How deep `$ref`s and nested properties may go before the schema is refused as (probably) recursive.
const MAX_DEPTH: usize = 32;

/// A schema that could not be loaded; the message names the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("{origin}: cannot read the schema: {source}")]
    Io {
        /// The file.
        origin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{origin}:{line}:{column}: the schema is not valid JSON: {message}")]
    Json {
        /// The file.
        origin: String,
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column of the syntax error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The document is JSON but not a usable schema.
    #[error("{origin}: invalid schema: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// A record that fails the schema: the first failing place as a JSON Pointer into the record
/// (`""` is the record itself) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer (RFC 6901) to the failing value, e.g. `/vaccinations/0/date`.
    pub pointer: String,
    /// Human-readable reason. Does not echo the failing value.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "schema violation at the record root: {}", self.message)
        } else {
            write!(f, "schema violation at {}: {}", self.pointer, self.message)
        }
    }
}

impl std::error::Error for SchemaViolation {}

impl From<SchemaViolation> for ApiError {
    fn from(v: SchemaViolation) -> Self {
        ApiError::new(ErrorCode::SchemaViolation, v.to_string())
    }
}

/// Whether `text` holds a C0 or C1 control character (or DEL).
pub fn has_control_char(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// The JSON Pointer of the first string (key or value) in `value` holding a control character.
fn first_control_char(value: &Value, pointer: String) -> Option<String> {
    match value {
        Value::String(s) => has_control_char(s).then_some(pointer),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_control_char(v, format!("{pointer}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let mut at = pointer.clone();
            push_token(&mut at, k);
            if has_control_char(k) {
                Some(at)
            } else {
                first_control_char(v, at)
            }
        }),
        _ => None,
    }
}

/// The compiled canonical schema, with the field paths and derived fields read from it.
pub struct CitizenSchema {
    raw: Value,
    validator: jsonschema::Validator,
    /// The same schema without its top-level `required`: checks part of a record (a history entry
    /// bound for a store that holds the rest).
    partial: jsonschema::Validator,
    field_paths: BTreeSet<String>,
    derived: BTreeSet<String>,
}

impl fmt::Debug for CitizenSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CitizenSchema")
            .field("id", &self.raw.get("$id"))
            .field("field_paths", &self.field_paths.len())
            .field("derived", &self.derived)
            .finish_non_exhaustive()
    }
}

impl CitizenSchema {
    /// Parses and compiles a schema document; `origin` names its file in errors.
    #[allow(clippy::should_implement_trait)] // needs `origin`, so it cannot be `FromStr`
    pub fn from_str(text: &str, origin: &str) -> Result<Self, SchemaError> {
        // A UTF-8 BOM is harmless; editors on some desks add one.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: Value = serde_json::from_str(text).map_err(|e| SchemaError::Json {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| SchemaError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if !raw.is_object() {
            return Err(invalid("the document must be a JSON object".into()));
        }
        // Formats are annotations only in 2020-12 unless switched on; dates must really be dates.
        let compile = |schema: &Value| {
            jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| invalid(e.to_string()))
        };
        let validator = compile(&raw)?;
        let mut without_required = raw.clone();
        if let Some(map) = without_required.as_object_mut() {
            map.remove("required");
        }
        let partial = compile(&without_required)?;
        let mut field_paths = BTreeSet::new();
        let mut derived = BTreeSet::new();
        walk(&raw, &raw, "", 0, &mut field_paths, &mut derived).map_err(invalid)?;
        if field_paths.is_empty() {
            return Err(invalid("the schema declares no properties".into()));
        }
        Ok(Self {
            raw,
            validator,
            partial,
            field_paths,
            derived,
        })
    }

    /// Loads the schema from `path`, or the embedded one when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, SchemaError> {
        match path {
            None => Self::from_str(EMBEDDED_SCHEMA, "schemas/citizen.schema.json (embedded)"),
            Some(p) => {
                let origin = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| SchemaError::Io {
                    origin: origin.clone(),
                    source,
                })?;
                Self::from_str(&text, &origin)
            }
        }
    }

    /// Validates a record about to be written. Derived (read-only) fields are refused; otherwise the
    /// first schema failure is returned with its JSON Pointer.
    pub fn validate(&self, record: &Value) -> Result<(), SchemaViolation> {
        self.check(&self.validator, record)
    }

    /// Validates part of a record (fields absent are not missing): the same checks as
    /// [`CitizenSchema::validate`] but the top-level `required`. A write to a store that holds the whole
    /// record elsewhere (an upstream provider) is checked with it before it leaves the broker.
    pub fn validate_partial(&self, record: &Value) -> Result<(), SchemaViolation> {
        self.check(&self.partial, record)
    }

    fn check(&self, validator: &jsonschema::Validator, record: &Value) -> Result<(), SchemaViolation> {
        for path in &self.derived {
            let steps = path
                .parse::<FieldPath>()
                .map(|p| p.steps().to_vec())
                .unwrap_or_default();
            if let Some(pointer) = first_pointer(record, &steps) {
                return Err(SchemaViolation {
                    pointer,
                    message: format!("`{path}` is derived at read time and cannot be written"),
                });
            }
        }
        if let Err(e) = validator.validate(record) {
            let mut pointer = e.instance_path().as_str().to_string();
            // Point at the offending or missing property itself, not at its parent object.
            match e.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    if let Some(first) = unexpected.first() {
                        push_token(&mut pointer, first);
                    }
                }
                ValidationErrorKind::Required {
                    property: Value::String(name),
                } => {
                    push_token(&mut pointer, name);
                }
                _ => {}
            }
            return Err(SchemaViolation {
                pointer,
                message: e.masked().to_string(),
            });
        }
        // Text is for people and for the agencies' own systems: a NUL or a terminal escape stored here
        // would travel into every answer and export.
        if let Some(pointer) = first_control_char(record, String::new()) {
            return Err(SchemaViolation {
                pointer,
                message: "control characters (U+0000-U+001F, U+007F-U+009F) are not allowed in text".into(),
            });
        }
        // JSON Schema cannot say "NFC"; names are compared after normalisation, so store them so.
        if let Some(Value::String(name)) = record.get("full_name") {
            if !is_nfc(name) {
                return Err(SchemaViolation {
                    pointer: "/full_name".into(),
                    message: "value is not in Unicode NFC".into(),
                });
            }
        }
        Ok(())
    }

    /// Every canonical field path, walking `$defs`/`$ref`: `citizen_id`, `permanent_address`,
    /// `permanent_address.province`, `vaccinations`, `vaccinations[].date`, `covid_status`, …
    pub fn field_paths(&self) -> &BTreeSet<String> {
        &self.field_paths
    }

    /// The derived fields: those marked `readOnly: true` (`covid_status`).
    pub fn derived_fields(&self) -> &BTreeSet<String> {
        &self.derived
    }

    /// The schema document, for publishing.
    pub fn raw(&self) -> &Value {
        &self.raw
    }
}

/// The one `$ref` resolver (the schema's checks and the OpenAPI document share it): follows local `$ref`s
/// (`#/...`) until a schema without one.
pub fn resolve_ref<'a>(root: &'a Value, mut node: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..MAX_DEPTH {
        match node.get("$ref").and_then(Value::as_str) {
            None => return Ok(node),
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("only local $refs are supported: {r}"))?;
                node = root
                    .pointer(pointer)
                    .ok_or_else(|| format!("unresolvable $ref {r}"))?;
            }
        }
    }
    Err("$ref chain too long (cyclic?)".into())
}

fn is_read_only(root: &Value, node: &Value) -> Result<bool, String> {
    let flag = |n: &Value| n.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
    Ok(flag(node) || flag(resolve_ref(root, node)?))
}

/// Collects the property paths under `node`, whose own path is `path` (`""` for the record).
fn walk(
    root: &Value,
    node: &Value,
    path: &str,
    depth: usize,
    paths: &mut BTreeSet<String>,
    derived: &mut BTreeSet<String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("schema nests too deeply at `{path}` (recursive $ref?)"));
    }
    let node = resolve_ref(root, node)?;
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            // Field paths use `.` and `[]` as separators, so names must stay simple.
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("property name {name:?} cannot be named by a field path"));
            }
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if is_read_only(root, sub)? {
                derived.insert(p.clone());
            }
            walk(root, sub, &p, depth + 1, paths, derived)?;
            paths.insert(p);
        }
    }
    if let Some(items) = node.get("items") {
        if !path.is_empty() && items.is_object() {
            walk(root, items, &format!("{path}[]"), depth + 1, paths, derived)?;
        }
    }
    for kw in ["allOf", "anyOf", "oneOf"] {
        for sub in node.get(kw).and_then(Value::as_array).into_iter().flatten() {
            walk(root, sub, path, depth + 1, paths, derived)?;
        }
    }
    Ok(())
}

/// The JSON Pointer of the first value in `value` found along `steps`, if any.
fn first_pointer(value: &Value, steps: &[Step]) -> Option<String> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(String::new());
    };
    match step {
        Step::Key(k) => {
            let inner = first_pointer(value.as_object()?.get(k.as_str())?, rest)?;
            let mut p = String::new();
            push_token(&mut p, k);
            Some(p + &inner)
        }
        Step::Elements => value
            .as_array()?
            .iter()
            .enumerate()
            .find_map(|(i, e)| first_pointer(e, rest).map(|inner| format!("/{i}{inner}"))),
    }
}

/// Appends one reference token to a JSON Pointer, escaped per RFC 6901.
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn schema() -> CitizenSchema {
        CitizenSchema::load(None).unwrap()
    }

    /// A synthetic citizen (not a real person).
    fn sample() -> Value {
        json!({
            "citizen_id": "079195000002",
            "old_id_number": "025123456",
            "full_name": "Trần Thị Bình",
            "birth_date": "1995-03-14",
            "gender": "female",
            "permanent_address": {
                "detail": "12 Lê Lợi", "ward": "Phường Bến Nghé", "district": "Quận 1",
                "province": "Thành phố Hồ Chí Minh", "admin_unit_code": "26734", "country": "VN"
            },
            "current_address": { "detail": "5 Nguyễn Huệ", "province": "Thành phố Hồ Chí Minh" },
            "id_card_issue_date": "2021-04-10",
            "phone": "+84912345678",
            "vaccinations": [{
                "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
                "date": "2021-08-01", "lot": "FF1234", "site": "Trạm Y tế Phường Bến Nghé",
                "source_record_id": "moh-imm-000123"
            }],
            "test_results": [{
                "date": "2021-10-01T08:00:00Z", "kind": "pcr", "result": "negative",
                "source_record_id": "moh-lab-1"
            }],
            "recoveries": [{ "recovered_on": "2021-09-01", "source_record_id": "moh-f0-1" }]
        })
    }

    fn violation(record: &Value) -> SchemaViolation {
        schema().validate(record).unwrap_err()
    }

    #[test]
    fn full_and_minimal_records_are_valid() {
        let s = schema();
        s.validate(&sample()).unwrap();
        let minimal = json!({
            "citizen_id": "001090000001", "full_name": "Nguyễn Văn An", "birth_date": "1990-01-01",
            "gender": "male", "permanent_address": { "detail": "1 Tràng Tiền", "province": "Hà Nội" }
        });
        s.validate(&minimal).unwrap();
    }

    #[test]
    fn a_partial_record_misses_nothing_but_breaks_nothing() {
        let s = schema();
        let dose = json!({ "source_record_id": "p-1", "dose_number": 1, "vaccine_code": "208",
                           "vaccine_name": "Comirnaty", "date": "2021-08-01" });
        s.validate_partial(&json!({ "vaccinations": [dose.clone()] }))
            .unwrap();
        assert!(
            s.validate(&json!({ "vaccinations": [dose.clone()] })).is_err(),
            "a record needs its required fields"
        );
        let mut bad = dose;
        bad["dose_number"] = json!(99);
        let v = s.validate_partial(&json!({ "vaccinations": [bad] })).unwrap_err();
        assert_eq!(v.pointer, "/vaccinations/0/dose_number");
        let v = s
            .validate_partial(&json!({ "covid_status": "green" }))
            .unwrap_err();
        assert_eq!(
            v.pointer, "/covid_status",
            "derived fields are refused in part as in whole"
        );
    }

    #[test]
    fn date_formats_are_checked() {
        let mut r = sample();
        r["vaccinations"][0]["date"] = json!("2021-02-30");
        let v = violation(&r);
        assert_eq!(v.pointer, "/vaccinations/0/date");
        assert!(v.to_string().contains("/vaccinations/0/date"), "{v}");

        let mut r = sample();
        r["birth_date"] = json!("14/03/1995");
        assert_eq!(violation(&r).pointer, "/birth_date");

        let mut r = sample();
        r["test_results"][0]["date"] = json!("2021-10-01 08:00");
        assert_eq!(violation(&r).pointer, "/test_results/0/date");
    }

    #[test]
    fn patterns_and_bounds_are_checked() {
        for (pointer, bad) in [
            ("/citizen_id", json!("07919500000")),
            ("/citizen_id", json!("07919500000x")),
            ("/citizen_id", json!("٠٧٩١٩٥٠٠٠٠٠٢")), // Arabic-Indic digits are not ASCII digits
            ("/old_id_number", json!("0251234567")),
            ("/phone", json!("0912345678")),
            ("/phone", json!("+849123456789")),
            ("/gender", json!("other")),
            ("/full_name", json!("")),
            ("/full_name", json!("A".repeat(101))),
        ] {
            let mut r = sample();
            r[&pointer[1..]] = bad.clone();
            assert_eq!(violation(&r).pointer, pointer, "{bad}");
        }
        let mut r = sample();
        r["full_name"] = json!("Ầ".repeat(100)); // 100 characters, more bytes
        schema().validate(&r).unwrap();
        let mut r = sample();
        r["vaccinations"][0]["dose_number"] = json!(11);
        assert_eq!(violation(&r).pointer, "/vaccinations/0/dose_number");
        r["vaccinations"][0]["dose_number"] = json!(0);
        assert_eq!(violation(&r).pointer, "/vaccinations/0/dose_number");
        r["vaccinations"][0]["dose_number"] = json!(10);
        schema().validate(&r).unwrap();
    }

    #[test]
    fn unknown_and_missing_properties_point_at_the_property() {
        let mut r = sample();
        r["nickname"] = json!("Bé");
        let v = violation(&r);
        assert_eq!(v.pointer, "/nickname");
        assert!(v.message.contains("nickname"));

        let mut r = sample();
        r["permanent_address"]["zip"] = json!("700000");
        assert_eq!(violation(&r).pointer, "/permanent_address/zip");

        let mut r = sample();
        r.as_object_mut().unwrap().remove("full_name");
        assert_eq!(violation(&r).pointer, "/full_name");

        let mut r = sample();
        r["vaccinations"][0]
            .as_object_mut()
            .unwrap()
            .remove("source_record_id");
        assert_eq!(violation(&r).pointer, "/vaccinations/0/source_record_id");

        assert_eq!(violation(&json!([])).pointer, "");
    }

    #[test]
    fn derived_fields_are_refused_on_write() {
        let mut r = sample();
        r["covid_status"] = json!("fully_vaccinated");
        let v = violation(&r);
        assert_eq!(v.pointer, "/covid_status");
        let e = ApiError::from(v);
        assert_eq!(e.status, hyper::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, "schema_violation");
        assert!(e.message.contains("/covid_status"));
    }

    #[test]
    fn full_name_must_be_nfc() {
        let mut r = sample();
        r["full_name"] = json!("Tra\u{0302}\u{0300}n Thị Bình"); // decomposed "Trần"
        assert_eq!(violation(&r).pointer, "/full_name");
    }

    #[test]
    fn field_paths_walk_defs() {
        let s = schema();
        let paths = s.field_paths();
        for p in [
            "citizen_id",
            "permanent_address",
            "permanent_address.province",
            "current_address.admin_unit_code",
            "vaccinations",
            "vaccinations[].date",
            "test_results[].kind",
            "recoveries[].recovered_on",
            "covid_status",
        ] {
            assert!(paths.contains(p), "{p} missing from {paths:?}");
        }
        assert!(!paths.contains("vaccinations[]"));
        assert!(!paths.iter().any(|p| p.contains("$defs") || p.contains("Address")));
        assert_eq!(s.derived_fields().iter().collect::<Vec<_>>(), ["covid_status"]);
        assert_eq!(s.raw()["$id"], "https://lienthong.invalid/schemas/citizen.json");
    }

    #[test]
    fn load_errors_name_the_file() {
        let e = CitizenSchema::from_str("{\n  \"type\": \n}", "bad.json").unwrap_err();
        assert!(e.to_string().starts_with("bad.json:3:"), "{e}");
        let e = CitizenSchema::from_str(r#"{"type": 12}"#, "odd.json").unwrap_err();
        assert!(e.to_string().starts_with("odd.json: invalid schema"), "{e}");
        let e = CitizenSchema::from_str(r##"{"properties": {"a": {"$ref": "#/$defs/nope"}}}"##, "r.json")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("r.json: invalid schema") && e.to_string().contains("/$defs/nope"),
            "{e}"
        );
        let e = CitizenSchema::load(Some(Path::new("/nonexistent/citizen.json"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/citizen.json: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn recursive_refs_are_refused_not_overflowed() {
        let text = r##"{"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
                       "properties": {"head": {"$ref": "#/$defs/N"}}}"##;
        let e = CitizenSchema::from_str(text, "loop.json").unwrap_err();
        assert!(e.to_string().contains("too deeply"), "{e}");
    }
}
