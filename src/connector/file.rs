//! The connector file (`connectors/*.toml`) exactly as written, with the line of every value: what serde
//! reads before [`super::spec`] checks it against the schema and the purpose catalogue.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// Wire format of the agency's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON, addressed with JSON Pointers.
    Json,
    /// XML, addressed with namespace-aware element paths.
    Xml,
}

/// What the connector does with the canonical API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Read one citizen for the purpose.
    Read,
    /// Append to a citizen's history.
    Write,
}

/// How errors are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorStyle {
    /// `{"error": {"code", "message", "request_id"}}`.
    Json,
    /// An HL7 FHIR `OperationOutcome` (and `batch-response` Bundles for batches).
    Fhir,
    /// A SOAP 1.1 Fault with the code in `<detail>`.
    Soap,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) name: Spanned<String>,
    pub(super) description: String,
    pub(super) method: Spanned<String>,
    pub(super) path: Spanned<String>,
    pub(super) format: Format,
    pub(super) content_types: Vec<String>,
    pub(super) purpose: Spanned<String>,
    pub(super) operation: Operation,
    pub(super) agencies: Spanned<Vec<String>>,
    pub(super) errors: ErrorStyle,
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) enums: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) request: RequestFile,
    #[serde(default)]
    pub(super) response: ResponseFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestFile {
    #[serde(default)]
    pub(super) require: Vec<RequireFile>,
    pub(super) batch: Option<BatchFile>,
    #[serde(default)]
    pub(super) map: Vec<MapFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequireFile {
    pub(super) path: Spanned<String>,
    pub(super) equals: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchFile {
    pub(super) when: Spanned<String>,
    pub(super) equals: String,
    pub(super) entries: Spanned<String>,
    pub(super) item: Spanned<String>,
    #[serde(default = "default_max_entries")]
    pub(super) max_entries: usize,
}

pub(super) fn default_max_entries() -> usize {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MapFile {
    /// One source, or alternatives tried in order.
    pub(super) from: Spanned<OneOrMany>,
    pub(super) to: Spanned<String>,
    pub(super) transform: Option<Spanned<Vec<String>>>,
    #[serde(default = "yes")]
    pub(super) required: bool,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResponseFile {
    pub(super) root: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) map: Vec<ResponseMapFile>,
    #[serde(default, rename = "const")]
    pub(super) constants: Vec<ConstFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResponseMapFile {
    pub(super) from: Spanned<String>,
    pub(super) to: Spanned<String>,
    pub(super) transform: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConstFile {
    pub(super) to: Spanned<String>,
    pub(super) value: String,
}
