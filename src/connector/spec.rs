//! The connector file format (`connectors/*.toml`) and its load-time checks. Every mistake that could
//! leak or mis-file data is caught at start, naming file and line: a request mapping onto an unknown or
//! unwritable canonical field, a response mapping naming a field outside the purpose, a malformed JSON
//! Pointer or element path, an unknown transform or enum table.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use toml::Spanned;

use crate::policy::{Catalogue, FieldPath, Purpose};
use crate::record::History;
use crate::schema::CitizenSchema;

pub use super::file::{ErrorStyle, Format, Operation};
use super::file::{File, OneOrMany};
use super::transform::Transform;
use super::xml::Step;

/// A load-time problem: `file:line: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConnectorError {
    /// The connector file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Where a value sits in the agency's document.
#[derive(Debug, Clone, PartialEq)]
pub enum Locator {
    /// A JSON Pointer.
    Pointer(String),
    /// An element path from the root (first step = the root element), with an optional attribute.
    Element {
        /// Steps.
        steps: Vec<Step>,
        /// Attribute of the last element.
        attribute: Option<Step>,
    },
}

/// What a request value becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The 12-digit ID.
    CitizenId,
    /// A CCCD QR payload (or a bare 12-digit ID): gives the ID and is checked against the record.
    Qr,
    /// A value kept to echo back in the response (`echo.<name>`).
    Echo(String),
    /// A field of the history entry being written (`vaccinations[].date` → `date`).
    EntryField(String),
}

/// One request mapping.
#[derive(Debug, Clone)]
pub struct RequestMap {
    /// Alternatives, the first present wins.
    pub from: Vec<Locator>,
    /// Where the value goes.
    pub to: Target,
    /// Transforms applied in order.
    pub transforms: Vec<Transform>,
    /// Missing → 422 `missing_field`.
    pub required: bool,
    /// The source as written, for error messages.
    pub label: String,
}

/// Where a response value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A canonical field path of the released record.
    Field(FieldPath),
    /// A value captured from the request.
    Echo(String),
}

/// One response mapping.
#[derive(Debug, Clone)]
pub struct ResponseMap {
    /// Value source.
    pub from: Source,
    /// Where it goes.
    pub to: Locator,
    /// Transforms applied in order.
    pub transforms: Vec<Transform>,
}

/// A batch: when `when` equals `equals`, `entries` is an array whose elements hold an item at `item`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Discriminator pointer.
    pub when: String,
    /// Value that marks a batch.
    pub equals: String,
    /// Pointer to the entries array.
    pub entries: String,
    /// Pointer, within an entry, to the item.
    pub item: String,
    /// Most entries in one call (413 above).
    pub max_entries: usize,
}

/// A loaded, checked connector.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Unique name (also the audit channel).
    pub name: String,
    /// What it is for.
    pub description: String,
    /// HTTP method.
    pub method: hyper::Method,
    /// Route on the agency listener.
    pub path: String,
    /// Wire format.
    pub format: Format,
    /// Accepted media types.
    pub content_types: Vec<String>,
    /// The purpose it serves.
    pub purpose: String,
    /// Read or write.
    pub operation: Operation,
    /// For writes: the history appended to.
    pub history: Option<History>,
    /// Agencies allowed to call it.
    pub agencies: Vec<String>,
    /// Error style.
    pub errors: ErrorStyle,
    /// Prefix → namespace URI (XML).
    pub namespaces: BTreeMap<String, String>,
    /// Values that must hold (`path == equals`), else 422 `unexpected_document`.
    pub require: Vec<(Locator, String)>,
    /// Batch handling (JSON writes).
    pub batch: Option<Batch>,
    /// Request mappings.
    pub request: Vec<RequestMap>,
    /// XML response root path (e.g. `soap:Envelope/soap:Body/dc:…Response`).
    pub response_root: Vec<Step>,
    /// Response mappings.
    pub response: Vec<ResponseMap>,
    /// Constant response values.
    pub constants: Vec<(Locator, String)>,
    /// The canonical fields a read asks the policy for (the union of response sources).
    pub read_fields: Vec<String>,
}

/// The file being checked, for `file:line` errors (shared with the provider files of
/// `upstream`).
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, ConnectorError> {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        Err(ConnectorError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        })
    }
}

/// A path in the dialect's document: a JSON Pointer, or an element path with namespace prefixes.
pub(crate) fn locator(
    ctx: &Ctx<'_>,
    format: Format,
    ns: &BTreeMap<String, String>,
    raw: &str,
    span: std::ops::Range<usize>,
) -> Result<Locator, ConnectorError> {
    match format {
        Format::Json => {
            if raw.is_empty() || (raw.starts_with('/') && !raw.contains("//")) {
                Ok(Locator::Pointer(raw.to_string()))
            } else {
                ctx.err(
                    span,
                    format!("{raw:?} is not a JSON Pointer (it must start with '/')"),
                )
            }
        }
        Format::Xml => {
            let (path, attribute) = match raw.split_once('@') {
                Some((p, a)) => (p.trim_end_matches('/'), Some(a)),
                None => (raw, None),
            };
            let step = |name: &str| -> Result<Step, ConnectorError> {
                let (prefix, local) = match name.split_once(':') {
                    Some((p, l)) => (Some(p), l),
                    None => (None, name),
                };
                let ok = !local.is_empty() && local.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c));
                if !ok {
                    return ctx.err(
                        span.clone(),
                        format!("{name:?} in {raw:?} is not an element name"),
                    );
                }
                let ns = match prefix {
                    Some(p) => match ns.get(p) {
                        Some(uri) => Some(uri.clone()),
                        None => {
                            return ctx.err(
                                span.clone(),
                                format!("prefix {p:?} in {raw:?} is not declared under [namespaces]"),
                            )
                        }
                    },
                    None => None,
                };
                Ok(Step {
                    ns,
                    local: local.to_string(),
                })
            };
            let steps = path
                .trim_start_matches('/')
                .split('/')
                .filter(|s| !s.is_empty())
                .map(step)
                .collect::<Result<Vec<_>, _>>()?;
            if steps.is_empty() && attribute.is_none() {
                return ctx.err(span, format!("{raw:?} is not an element path"));
            }
            let attribute = attribute.map(step).transpose()?;
            Ok(Locator::Element { steps, attribute })
        }
    }
}

/// The transforms a mapping names, checked.
pub(crate) fn transforms(
    ctx: &Ctx<'_>,
    names: &Option<Spanned<Vec<String>>>,
    enums: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<Transform>, ConnectorError> {
    let Some(names) = names else { return Ok(Vec::new()) };
    names
        .get_ref()
        .iter()
        .map(|n| Transform::parse(n, enums).or_else(|m| ctx.err(names.span(), m)))
        .collect()
}

/// A file's `name`: lower-case letters, digits and '-' (it names metrics series and audit channels).
pub(crate) fn file_name(ctx: &Ctx<'_>, name: &Spanned<String>) -> Result<String, ConnectorError> {
    let text = name.get_ref();
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return ctx.err(name.span(), "name must be lower-case letters, digits and '-'");
    }
    Ok(text.clone())
}

/// An HTTP method a file may name: GET, POST or PUT.
pub(crate) fn method(ctx: &Ctx<'_>, method: &Spanned<String>) -> Result<hyper::Method, ConnectorError> {
    match method.get_ref().as_str() {
        "GET" => Ok(hyper::Method::GET),
        "POST" => Ok(hyper::Method::POST),
        "PUT" => Ok(hyper::Method::PUT),
        other => ctx.err(method.span(), format!("method {other:?} is not GET, POST or PUT")),
    }
}

impl Connector {
    /// Parse and check one connector file against the schema and the purpose catalogue.
    pub fn from_str(
        text: &str,
        file: &str,
        schema: &CitizenSchema,
        catalogue: &Catalogue,
    ) -> Result<Self, ConnectorError> {
        let ctx = Ctx { file, text };
        let f: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConnectorError {
                file: file.into(),
                line,
                message: e.message().to_string(),
            }
        })?;
        let name = file_name(&ctx, &f.name)?;
        let method = method(&ctx, &f.method)?;
        let path = f.path.get_ref().clone();
        if !path.starts_with("/connectors/") || path.contains("..") || path.contains("//") {
            return ctx.err(
                f.path.span(),
                "path must start with /connectors/ and be a plain path",
            );
        }
        let Some(purpose) = catalogue.get(f.purpose.get_ref()) else {
            return ctx.err(
                f.purpose.span(),
                format!("unknown purpose {:?}", f.purpose.get_ref()),
            );
        };
        if f.agencies.get_ref().is_empty() {
            return ctx.err(f.agencies.span(), "at least one agency must be allowed");
        }
        for agency in f.agencies.get_ref() {
            if !purpose.agencies.contains(agency) {
                return ctx.err(
                    f.agencies.span(),
                    format!("agency {agency:?} may not use purpose {}", purpose.id),
                );
            }
        }
        if f.content_types.is_empty() {
            return ctx.err(f.name.span(), "content_types must list at least one media type");
        }
        for (prefix, uri) in &f.namespaces {
            if prefix.is_empty() || uri.is_empty() {
                return ctx.err(f.name.span(), "namespace prefixes and URIs must not be empty");
            }
        }

        let mut request = Vec::new();
        let mut history: Option<History> = None;
        let mut echoes = HashSet::new();
        let mut has_subject = false;
        for m in &f.request.map {
            let sources = match m.from.get_ref() {
                OneOrMany::One(s) => vec![s.clone()],
                OneOrMany::Many(v) => v.clone(),
            };
            if sources.is_empty() {
                return ctx.err(m.from.span(), "from must name at least one source");
            }
            let from = sources
                .iter()
                .map(|s| locator(&ctx, f.format, &f.namespaces, s, m.from.span()))
                .collect::<Result<Vec<_>, _>>()?;
            let to_raw = m.to.get_ref().as_str();
            let to = match to_raw {
                "citizen_id" => Target::CitizenId,
                "qr" if f.operation == Operation::Read => Target::Qr,
                echo if echo.starts_with("echo.") && echo.len() > 5 => {
                    echoes.insert(echo[5..].to_string());
                    Target::Echo(echo[5..].to_string())
                }
                field if f.operation == Operation::Write => {
                    let Some((list, sub)) = field.split_once("[].") else {
                        return ctx.err(m.to.span(), format!("{field:?}: a write maps onto a history entry field, like vaccinations[].date"));
                    };
                    let Some(h) = History::from_field(list) else {
                        return ctx.err(
                            m.to.span(),
                            format!("{list:?} is not a history that can be written"),
                        );
                    };
                    if !schema.field_paths().contains(field) {
                        return ctx.err(m.to.span(), format!("unknown canonical field {field:?}"));
                    }
                    if !purpose.may_write(field) {
                        return ctx.err(
                            m.to.span(),
                            format!("{field:?} is outside purpose {} (not writable)", purpose.id),
                        );
                    }
                    if history.is_some_and(|x| x != h) {
                        return ctx.err(m.to.span(), "a connector writes to one history only");
                    }
                    history = Some(h);
                    Target::EntryField(sub.to_string())
                }
                other => {
                    return ctx.err(
                        m.to.span(),
                        format!("unknown target {other:?} (citizen_id, qr, echo.<name>)"),
                    )
                }
            };
            has_subject |= matches!(to, Target::CitizenId | Target::Qr);
            request.push(RequestMap {
                from,
                to,
                transforms: transforms(&ctx, &m.transform, &f.enums)?,
                required: m.required,
                label: sources.join(" | "),
            });
        }
        if !has_subject {
            return ctx.err(f.name.span(), "the request must map citizen_id or qr");
        }
        if f.operation == Operation::Write && history.is_none() {
            return ctx.err(
                f.name.span(),
                "a write connector must map at least one history entry field",
            );
        }

        let require = f
            .request
            .require
            .iter()
            .map(|r| {
                Ok((
                    locator(&ctx, f.format, &f.namespaces, r.path.get_ref(), r.path.span())?,
                    r.equals.clone(),
                ))
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        let batch = match &f.request.batch {
            Some(b) if f.format == Format::Json && f.operation == Operation::Write => {
                for p in [&b.when, &b.entries, &b.item] {
                    locator(&ctx, f.format, &f.namespaces, p.get_ref(), p.span())?;
                }
                Some(Batch {
                    when: b.when.get_ref().clone(),
                    equals: b.equals.clone(),
                    entries: b.entries.get_ref().clone(),
                    item: b.item.get_ref().clone(),
                    max_entries: b.max_entries,
                })
            }
            Some(b) => {
                return ctx.err(
                    b.when.span(),
                    "batches are supported for JSON write connectors only",
                )
            }
            None => None,
        };

        let mut response = Vec::new();
        let mut read_fields = Vec::new();
        for m in &f.response.map {
            let raw = m.from.get_ref();
            let from = if let Some(echo) = raw.strip_prefix("echo.") {
                if !echoes.contains(echo) {
                    return ctx.err(
                        m.from.span(),
                        format!("echo.{echo} is not captured by any request mapping"),
                    );
                }
                Source::Echo(echo.to_string())
            } else {
                if !schema.field_paths().contains(raw) {
                    return ctx.err(m.from.span(), format!("unknown canonical field {raw:?}"));
                }
                let path: FieldPath = raw
                    .parse()
                    .or_else(|_| ctx.err(m.from.span(), format!("malformed field path {raw:?}")))?;
                if !readable(purpose, &path) {
                    return ctx.err(
                        m.from.span(),
                        format!(
                            "{raw:?} is outside purpose {} (not readable): it would leak",
                            purpose.id
                        ),
                    );
                }
                if !read_fields.contains(raw) {
                    read_fields.push(raw.clone());
                }
                Source::Field(path)
            };
            response.push(ResponseMap {
                from,
                to: locator(&ctx, f.format, &f.namespaces, m.to.get_ref(), m.to.span())?,
                transforms: transforms(&ctx, &m.transform, &f.enums)?,
            });
        }
        let constants = f
            .response
            .constants
            .iter()
            .map(|c| {
                Ok((
                    locator(&ctx, f.format, &f.namespaces, c.to.get_ref(), c.to.span())?,
                    c.value.clone(),
                ))
            })
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        let response_root = match (&f.response.root, f.format) {
            (Some(root), Format::Xml) => {
                match locator(&ctx, f.format, &f.namespaces, root.get_ref(), root.span())? {
                    Locator::Element {
                        steps,
                        attribute: None,
                    } => steps,
                    _ => return ctx.err(root.span(), "the response root is an element path"),
                }
            }
            (None, Format::Xml) if f.operation == Operation::Read => {
                return ctx.err(f.name.span(), "an XML read connector needs response.root")
            }
            (Some(root), Format::Json) => return ctx.err(root.span(), "response.root is for XML connectors"),
            _ => Vec::new(),
        };
        if f.operation == Operation::Read && read_fields.is_empty() {
            return ctx.err(
                f.name.span(),
                "a read connector must map at least one canonical field into its response",
            );
        }
        Ok(Connector {
            name,
            description: f.description,
            method,
            path,
            format: f.format,
            content_types: f.content_types.iter().map(|c| c.to_ascii_lowercase()).collect(),
            purpose: purpose.id.clone(),
            operation: f.operation,
            history,
            agencies: f.agencies.into_inner(),
            errors: f.errors,
            namespaces: f.namespaces,
            require,
            batch,
            request,
            response_root,
            response,
            constants,
            read_fields,
        })
    }

    /// Read and check a connector file.
    pub fn load(path: &Path, schema: &CitizenSchema, catalogue: &Catalogue) -> Result<Self, ConnectorError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConnectorError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_str(&text, &file, schema, catalogue)
    }
}

/// True when the purpose's read set covers `path`.
fn readable(purpose: &Purpose, path: &FieldPath) -> bool {
    purpose.read.iter().any(|r| r.covers(path))
}
