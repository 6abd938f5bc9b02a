//! The provider file (`providers/*.toml`): how the canonical operations of the citizen store — read these
//! fields of citizen X, append this entry to a history list — become the provider system's own requests,
//! and its answers canonical records again. The connector files' vocabulary, outbound: JSON Pointers or
//! namespace-aware element paths, the same transforms and enum tables. A new provider dialect is a new
//! file, checked at start against the canonical schema (`file:line: message`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use crate::connector::spec::{file_name, locator, method, transforms, ConnectorError, Ctx, Locator};
use crate::connector::transform::Transform;
use crate::connector::xml;
use crate::connector::Format;
use crate::error::{ApiError, ErrorCode};
use crate::schema::CitizenSchema;

pub use crate::config::upstream::EMBEDDED;

/// The provider's own error codes a provider file may map onto a canonical answer; every other error
/// of the provider is 502 `upstream_error` (its text never passed on).
const MAPPABLE: [ErrorCode; 4] = [
    ErrorCode::CitizenNotFound,
    ErrorCode::IdempotencyConflict,
    ErrorCode::SchemaViolation,
    ErrorCode::InvalidCitizenId,
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Spanned<String>,
    description: String,
    format: Format,
    purpose: String,
    #[serde(default = "json_type")]
    content_type: String,
    #[serde(default)]
    namespaces: BTreeMap<String, String>,
    #[serde(default)]
    enums: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default = "healthz")]
    health_path: String,
    read: CallFile,
    append: Option<CallFile>,
    errors: ErrorsFile,
}

fn json_type() -> String {
    "application/json".into()
}

fn healthz() -> String {
    "/healthz".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallFile {
    method: Spanned<String>,
    path: Spanned<String>,
    body: Option<String>,
    #[serde(default)]
    lists: BTreeMap<String, String>,
    #[serde(default)]
    response: ResponseFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseFile {
    root: Option<Spanned<String>>,
    #[serde(default)]
    map: Vec<MapFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    from: Spanned<String>,
    to: Spanned<String>,
    transform: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsFile {
    code: Spanned<String>,
    map: Option<Spanned<BTreeMap<String, String>>>,
}

/// One mapping from the provider's answer onto a canonical field.
#[derive(Debug, Clone)]
pub struct AnswerMap {
    /// Where the value is in the provider's answer.
    pub from: Locator,
    /// The canonical field path's segments (`permanent_address`, `province`).
    pub to: Vec<String>,
    /// Transforms applied in order (e.g. `date_from:dd/mm/yyyy`).
    pub transforms: Vec<Transform>,
}

/// One request template: method, path and body with `{placeholders}`.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: hyper::Method,
    /// Path and query, with `{citizen_id}`, `{purpose}`, `{fields}`, `{list}`.
    pub path: String,
    /// Body template (`{entry}` is the entry as JSON); none for a bodiless request.
    pub body: Option<String>,
    /// History list → its name in the provider's requests (`test_results` → `test-results`).
    pub lists: BTreeMap<String, String>,
    /// Where the record is in a JSON answer (a JSON Pointer; empty: the whole document).
    pub root: String,
    /// Mappings from the answer onto canonical fields; none (JSON only): the answer is canonical.
    pub map: Vec<AnswerMap>,
}

/// A loaded, checked provider dialect.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Unique name (metrics, logs, `/healthz`).
    pub name: String,
    /// What it talks to.
    pub description: String,
    /// Wire format.
    pub format: Format,
    /// The purpose the broker declares upstream.
    pub purpose: String,
    /// Content type of request bodies.
    pub content_type: String,
    /// Prefix → namespace URI (XML).
    pub namespaces: BTreeMap<String, String>,
    /// A `GET` that answers 200 while the provider serves.
    pub health_path: String,
    /// Read one citizen.
    pub read: Call,
    /// Append to a history list; `None`: the provider takes no writes through the broker.
    pub append: Option<Call>,
    /// Where the provider's error code is in an error answer.
    pub error_code: Locator,
    /// The provider's error codes that mean a canonical answer.
    pub error_map: BTreeMap<String, ErrorCode>,
}

/// Values filled into a request template.
#[derive(Debug, Default)]
pub struct Fill<'a> {
    /// The 12-digit ID.
    pub citizen_id: &'a str,
    /// The top-level fields asked for.
    pub fields: &'a [&'a str],
    /// The history list written (its canonical name).
    pub list: Option<&'a str>,
    /// The entry written.
    pub entry: Option<&'a Value>,
}

impl Provider {
    /// Load a provider file: a path, or the name of an embedded one (`lienthong-rest.toml`).
    pub fn load(path: &Path, schema: &CitizenSchema) -> Result<Self, ConnectorError> {
        let file = path.display().to_string();
        if !path.exists() {
            if let Some((name, text)) = EMBEDDED.iter().find(|(name, _)| Path::new(name) == path) {
                return Self::from_str(text, &format!("providers/{name} (embedded)"), schema);
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConnectorError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_str(&text, &file, schema)
    }

    /// Parse and check a provider file against the canonical schema.
    pub fn from_str(text: &str, file: &str, schema: &CitizenSchema) -> Result<Self, ConnectorError> {
        let ctx = Ctx { file, text };
        let f: File = toml::from_str(text).map_err(|e| ConnectorError {
            file: file.into(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let name = file_name(&ctx, &f.name)?;
        let read = call(&ctx, &f, &f.read, schema)?;
        if f.format == Format::Xml && read.map.is_empty() {
            return ctx.err(
                f.name.span(),
                "an XML provider maps its answer: [[read.response.map]]",
            );
        }
        let append = f.append.as_ref().map(|a| call(&ctx, &f, a, schema)).transpose()?;
        if let Some(append) = &append {
            for list in append.lists.keys() {
                if crate::record::History::from_field(list).is_none() {
                    return ctx.err(
                        f.name.span(),
                        format!("append.lists: {list:?} is not a history list"),
                    );
                }
            }
        }
        let error_code = locator(
            &ctx,
            f.format,
            &f.namespaces,
            f.errors.code.get_ref(),
            f.errors.code.span(),
        )?;
        let mut error_map = BTreeMap::new();
        for (theirs, ours, span) in f
            .errors
            .map
            .iter()
            .flat_map(|m| m.get_ref().iter().map(|(k, v)| (k, v, m.span())))
        {
            let Some(code) = MAPPABLE.iter().find(|c| c.as_str() == ours) else {
                return ctx.err(
                    span,
                    format!(
                        "{ours:?} is not a code a provider error may map to ({})",
                        MAPPABLE.map(|c| c.as_str()).join(", ")
                    ),
                );
            };
            error_map.insert(theirs.clone(), *code);
        }
        Ok(Provider {
            name,
            description: f.description,
            format: f.format,
            purpose: f.purpose,
            content_type: f.content_type,
            namespaces: f.namespaces,
            health_path: f.health_path,
            read,
            append,
            error_code,
            error_map,
        })
    }

    /// The path and query of a call, placeholders filled (percent-encoded).
    pub fn path(&self, call: &Call, fill: &Fill<'_>) -> String {
        let encode = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        self.fill(&call.path, call, fill, &encode)
    }

    /// The body of a call, placeholders filled (escaped for the format); `None` for a bodiless call.
    pub fn body(&self, call: &Call, fill: &Fill<'_>) -> Option<String> {
        let template = match (&call.body, fill.entry) {
            (Some(t), _) => t.as_str(),
            // A JSON write without a template sends the canonical entry itself.
            (None, Some(entry)) if self.format == Format::Json => return Some(entry.to_string()),
            (None, _) => return None,
        };
        let escape = |v: &str| match self.format {
            Format::Xml => xml::escape(v),
            // Inside a JSON string: the JSON-escaped text without its quotes.
            Format::Json => {
                let quoted = Value::from(v).to_string();
                quoted[1..quoted.len() - 1].to_string()
            }
        };
        Some(self.fill(template, call, fill, &escape))
    }

    fn fill(&self, template: &str, call: &Call, fill: &Fill<'_>, escape: &dyn Fn(&str) -> String) -> String {
        let list = fill
            .list
            .map(|l| call.lists.get(l).map_or(l, String::as_str))
            .unwrap_or_default();
        let mut out = template
            .replace("{citizen_id}", &escape(fill.citizen_id))
            .replace("{purpose}", &escape(&self.purpose))
            .replace("{fields}", &escape(&fill.fields.join(",")))
            .replace("{list}", &escape(list));
        if let Some(entry) = fill.entry {
            // The entry is JSON already (bodies only).
            out = out.replace("{entry}", &entry.to_string());
        }
        out
    }

    /// Does the dialect tell the provider which fields are wanted?
    pub fn asks_fields(&self) -> bool {
        self.read.path.contains("{fields}")
            || self.read.body.as_deref().is_some_and(|b| b.contains("{fields}"))
    }

    /// The canonical record in a read answer (before minimisation and schema check). 502 material:
    /// `Err` carries what is wrong with the answer, for the log.
    pub fn record(&self, body: &[u8]) -> Result<Value, String> {
        match self.format {
            Format::Json => {
                // The same strict reading as agencies' JSON: a duplicate key or deep nesting is malformed.
                let doc = crate::json::parse(body).map_err(|e| format!("not JSON: {}", e.message))?;
                let at = if self.read.root.is_empty() {
                    &doc
                } else {
                    doc.pointer(&self.read.root)
                        .ok_or_else(|| format!("no {} in the answer", self.read.root))?
                };
                if self.read.map.is_empty() {
                    return match at {
                        Value::Object(_) => Ok(at.clone()),
                        _ => Err("the record is not a JSON object".into()),
                    };
                }
                self.mapped(|from| match from {
                    Locator::Pointer(p) => at.pointer(p).filter(|v| !v.is_null()).cloned(),
                    Locator::Element { .. } => None,
                })
            }
            Format::Xml => {
                let root = xml::parse(body).map_err(|e| format!("not XML: {}", e.message))?;
                self.mapped(|from| match from {
                    Locator::Element { steps, attribute } => root
                        .find(steps, attribute.as_ref())
                        .map(|t| Value::String(t.to_string())),
                    Locator::Pointer(_) => None,
                })
            }
        }
    }

    fn mapped(&self, lookup: impl Fn(&Locator) -> Option<Value>) -> Result<Value, String> {
        let mut record = Value::Object(Map::new());
        for m in &self.read.map {
            let Some(mut value) = lookup(&m.from) else {
                continue;
            };
            for t in &m.transforms {
                value = t.apply(value).map_err(|e| format!("{}: {e}", m.to.join(".")))?;
            }
            // Field names hold no `/` or `~`: the path is a JSON Pointer as it is.
            crate::json::set_pointer(&mut record, &format!("/{}", m.to.join("/")), value);
        }
        Ok(record)
    }

    /// The provider's error code in an error answer, if it has one where the file says.
    pub fn error_code_of(&self, body: &[u8]) -> Option<String> {
        match &self.error_code {
            Locator::Pointer(p) => crate::json::parse(body)
                .ok()?
                .pointer(p)?
                .as_str()
                .map(str::to_string),
            Locator::Element { steps, attribute } => xml::parse(body)
                .ok()?
                .find(steps, attribute.as_ref())
                .map(|t| t.trim().to_string()),
        }
    }
}

fn call(ctx: &Ctx<'_>, f: &File, c: &CallFile, schema: &CitizenSchema) -> Result<Call, ConnectorError> {
    let method = method(ctx, &c.method)?;
    let path = c.path.get_ref().clone();
    if !path.starts_with('/') || path.contains("..") || path.contains("://") {
        return ctx.err(
            c.path.span(),
            "path must be a plain absolute path (the URL is in the config)",
        );
    }
    if !path.contains("{citizen_id}") && !c.body.as_deref().is_some_and(|b| b.contains("{citizen_id}")) {
        return ctx.err(
            c.path.span(),
            "the request must carry {citizen_id} in its path or body",
        );
    }
    let root = match &c.response.root {
        Some(root) if f.format == Format::Json => {
            match locator(ctx, f.format, &f.namespaces, root.get_ref(), root.span())? {
                Locator::Pointer(p) => p,
                Locator::Element { .. } => String::new(),
            }
        }
        Some(root) => {
            return ctx.err(
                root.span(),
                "response.root is for JSON providers (XML maps whole paths)",
            )
        }
        None => String::new(),
    };
    let mut map = Vec::new();
    for m in &c.response.map {
        let to = m.to.get_ref();
        if to.contains('[') || !schema.field_paths().contains(to) {
            return ctx.err(
                m.to.span(),
                format!("{to:?} is not a canonical field path outside a list"),
            );
        }
        if schema.derived_fields().contains(to) {
            return ctx.err(
                m.to.span(),
                format!("{to:?} is derived by the broker, never read upstream"),
            );
        }
        map.push(AnswerMap {
            from: locator(ctx, f.format, &f.namespaces, m.from.get_ref(), m.from.span())?,
            to: to.split('.').map(str::to_string).collect(),
            transforms: transforms(ctx, &m.transform, &f.enums)?,
        });
    }
    Ok(Call {
        method,
        path,
        body: c.body.clone(),
        lists: c.lists.clone(),
        root,
        map,
    })
}

/// A canonical answer for a provider error code the file maps, else 502 `upstream_error`.
pub fn mapped_error(provider: &Provider, code: Option<&str>) -> Option<ApiError> {
    let code = provider.error_map.get(code?)?;
    Some(ApiError::new(
        *code,
        match code {
            ErrorCode::CitizenNotFound => "no citizen with that ID",
            ErrorCode::IdempotencyConflict => "source_record_id was already recorded with different content",
            ErrorCode::SchemaViolation => "the provider refused the entry: it breaks the canonical schema",
            _ => "the provider refused the citizen ID",
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn schema() -> CitizenSchema {
        CitizenSchema::load(None).unwrap()
    }

    #[test]
    fn the_shipped_providers_load() {
        for (name, text) in EMBEDDED {
            Provider::from_str(text, name, &schema()).unwrap();
        }
    }

    #[test]
    fn rest_requests_carry_the_fields_and_the_canonical_answer_is_read_at_its_root() {
        let p = Provider::from_str(EMBEDDED[0].1, "rest", &schema()).unwrap();
        let fields = ["citizen_id", "full_name"];
        let fill = Fill {
            citizen_id: "001090000001",
            fields: &fields,
            ..Fill::default()
        };
        let path = p.path(&p.read, &fill);
        assert!(path.starts_with("/v1/citizens/001090000001?purpose="), "{path}");
        assert!(path.ends_with("&fields=citizen%5Fid%2Cfull%5Fname"), "{path}");
        let record = p
            .record(br#"{"purpose":"x","citizen":{"citizen_id":"001090000001","full_name":"A"}}"#)
            .unwrap();
        assert_eq!(record["full_name"], "A");
        assert!(p.record(b"<html>").is_err());
        assert!(
            p.record(br#"{"citizen":{"full_name":"A","full_name":"B"}}"#)
                .is_err(),
            "a duplicate key is malformed"
        );
        assert_eq!(
            p.error_code_of(br#"{"error":{"code":"citizen_not_found","message":"x"}}"#)
                .as_deref(),
            Some("citizen_not_found")
        );
    }

    #[test]
    fn soap_answers_are_mapped_back_with_transforms() {
        let p = Provider::from_str(EMBEDDED[1].1, "soap", &schema()).unwrap();
        let fill = Fill {
            citizen_id: "001090000001<&>",
            ..Fill::default()
        };
        let body = p.body(&p.read, &fill).unwrap();
        assert!(
            body.contains("<dc:SoDinhDanh>001090000001&lt;&amp;&gt;</dc:SoDinhDanh>"),
            "{body}"
        );
        let answer = r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:dc="http://www.mic.gov.vn/dancu/1.0"><soap:Body><dc:TraCuuCongDanResponse><dc:CongDan><dc:SoDinhDanh>001090000001</dc:SoDinhDanh><dc:HoVaTen>Nguyễn Văn An</dc:HoVaTen><dc:GioiTinh>1</dc:GioiTinh><dc:NgayThangNamSinh>20/05/1990</dc:NgayThangNamSinh><dc:ThuongTru><dc:TinhThanh>Hà Nội</dc:TinhThanh></dc:ThuongTru></dc:CongDan></dc:TraCuuCongDanResponse></soap:Body></soap:Envelope>"#;
        let record = p.record(answer.as_bytes()).unwrap();
        assert_eq!(record["gender"], "male");
        assert_eq!(record["birth_date"], "1990-05-20");
        assert_eq!(record["permanent_address"]["province"], "Hà Nội");
        let fault = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>internal text</faultstring><detail><lt:error xmlns:lt="urn:lienthong:error"><lt:code>citizen_not_found</lt:code></lt:error></detail></soap:Fault></soap:Body></soap:Envelope>"#;
        let code = p.error_code_of(fault.as_bytes());
        assert_eq!(code.as_deref(), Some("citizen_not_found"));
        let e = mapped_error(&p, code.as_deref()).unwrap();
        assert_eq!(e.code, ErrorCode::CitizenNotFound);
        assert!(!e.message.contains("internal text"));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let bad = EMBEDDED[0].1.replace(
            "citizen_not_found = \"citizen_not_found\"",
            "x = \"internal_error\"",
        );
        let e = Provider::from_str(&bad, "bad.toml", &schema()).unwrap_err();
        assert!(
            e.message.contains("not a code a provider error may map to"),
            "{e}"
        );
        let bad = EMBEDDED[1]
            .1
            .replacen("to = \"full_name\"", "to = \"covid_status\"", 1);
        let e = Provider::from_str(&bad, "bad.toml", &schema()).unwrap_err();
        assert!(e.message.contains("derived"), "{e}");
        assert!(e.line > 1);
    }
}
