//! Stage: policy. The purpose catalogue (`schemas/purposes.toml`): for each declared purpose, the fields
//! it may read and write, its legal basis, its price per call and the agencies that may use it.
//! Deny by default: what is not listed is not released, and a record is projected onto the released
//! fields before it leaves the broker.
//!
//! The catalogue is checked against the canonical schema at start; every mistake is reported with the
//! file and line, so a broker never runs with a catalogue that names a field that does not exist.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use toml::Spanned;

use crate::error::ApiError;
use crate::schema::CitizenSchema;

/// The catalogue shipped with the broker, used when the configuration names no other file.
pub const EMBEDDED_PURPOSES: &str = include_str!("../schemas/purposes.toml");

/// One step of a field path: an object key, or "every element of the array" (`[]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Step {
    Key(String),
    Elements,
}

/// A field path such as `full_name`, `permanent_address.province` or `vaccinations[].date`.
/// Names are ASCII letters, digits and `_`; `[]` after a name steps into every element of an array.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath {
    text: String,
    steps: Vec<Step>,
}

/// A string that is not a well-formed field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {0:?}")]
pub struct InvalidFieldPath(pub String);

impl FromStr for FieldPath {
    type Err = InvalidFieldPath;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidFieldPath(text.to_string());
        let mut steps = Vec::new();
        for segment in text.split('.') {
            let mut name = segment;
            let mut arrays = 0usize;
            while let Some(rest) = name.strip_suffix("[]") {
                name = rest;
                arrays += 1;
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(bad());
            }
            steps.push(Step::Key(name.to_string()));
            steps.extend(std::iter::repeat_n(Step::Elements, arrays));
        }
        Ok(Self {
            text: text.to_string(),
            steps,
        })
    }
}

impl FieldPath {
    /// The top-level record field the path starts at, e.g. `vaccinations` for `vaccinations[].date`.
    pub fn top_level(&self) -> Option<&str> {
        match self.steps.first() {
            Some(Step::Key(name)) => Some(name),
            _ => None,
        }
    }

    /// The text form, e.g. `vaccinations[].date`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `other` is this path or lies beneath it: `vaccinations` covers `vaccinations` and
    /// `vaccinations[].date`; `permanent_address` covers `permanent_address.province`.
    pub fn covers(&self, other: &FieldPath) -> bool {
        other.steps.starts_with(&self.steps)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A declared purpose: what it may read and write, for whom, on what legal basis, at what price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purpose {
    /// Stable identifier, e.g. `vaccination-sync`.
    pub id: String,
    /// Title in Vietnamese.
    pub title_vi: String,
    /// Title in English.
    pub title_en: String,
    /// The legal text(s) the purpose rests on.
    pub legal_basis: String,
    /// Fields a read may release.
    pub read: Vec<FieldPath>,
    /// Fields a write may set.
    pub write: Vec<FieldPath>,
    /// Price per served call, in đồng.
    pub price_vnd: u64,
    /// Agency codes allowed to use the purpose.
    pub agencies: Vec<String>,
    /// The purpose rests on the citizen's consent: every request names it (`X-Road-PDU-Consent-Ref`).
    pub consent_based: bool,
    /// How many days an access under this purpose may stay hidden from the citizen (investigations);
    /// 0 = never hidden.
    pub max_hidden_days: u32,
    /// How the citizen's "who read my data" shows the official's ID.
    pub official_id_shown: crate::accountability::OfficialIdShown,
}

impl Purpose {
    /// What a read would release: the purpose's read set, intersected with `requested` when given.
    /// A requested field that is not a canonical path → 400 `unknown_field` naming it; one that is not
    /// covered by the read set → 403 `forbidden_field` naming it.
    pub fn release_set(
        &self,
        requested: Option<&[String]>,
        schema: &CitizenSchema,
    ) -> Result<Vec<FieldPath>, ApiError> {
        let Some(requested) = requested else {
            return Ok(self.read.clone());
        };
        let mut out: Vec<FieldPath> = Vec::with_capacity(requested.len());
        for name in requested {
            let field = name
                .parse::<FieldPath>()
                .ok()
                .filter(|f| schema.field_paths().contains(f.as_str()))
                .ok_or_else(|| {
                    let hint = did_you_mean(name, schema.field_paths().iter().map(String::as_str));
                    ApiError::bad_request("unknown_field", format!("unknown field {name:?}{hint}"))
                })?;
            if !self.read.iter().any(|r| r.covers(&field)) {
                return Err(ApiError::forbidden(
                    "forbidden_field",
                    format!("purpose `{}` may not read field `{field}`", self.id),
                ));
            }
            if !out.contains(&field) {
                out.push(field);
            }
        }
        Ok(out)
    }

    /// Projects a record (derived fields already added) onto `fields`. Returns the projected object and
    /// the paths of `fields` actually released (present in the record), sorted. Nothing outside `fields`
    /// is ever included; objects and array elements left empty by the projection are dropped.
    pub fn project(record: &Value, fields: &[FieldPath]) -> (Value, Vec<String>) {
        let mut tree = Node::default();
        for f in fields {
            tree.insert(&f.steps);
        }
        let projected = tree.project(record).unwrap_or_else(|| Value::Object(Map::new()));
        let released: BTreeSet<String> = fields
            .iter()
            .filter(|f| present(record, &f.steps))
            .map(|f| f.text.clone())
            .collect();
        (projected, released.into_iter().collect())
    }

    /// True when a write of `field` is covered by the purpose's write set.
    pub fn may_write(&self, field: &str) -> bool {
        field
            .parse::<FieldPath>()
            .is_ok_and(|f| self.write.iter().any(|w| w.covers(&f)))
    }
}

/// The field paths of a projection, as a trie over steps. A `whole` node releases its value entire.
#[derive(Default)]
struct Node {
    whole: bool,
    keys: std::collections::BTreeMap<String, Node>,
    elements: Option<Box<Node>>,
}

impl Node {
    fn insert(&mut self, steps: &[Step]) {
        let Some((first, rest)) = steps.split_first() else {
            self.whole = true;
            return;
        };
        let child = match first {
            Step::Key(k) => self.keys.entry(k.clone()).or_default(),
            Step::Elements => self.elements.get_or_insert_with(Box::default),
        };
        child.insert(rest);
    }

    /// The part of `value` this node releases, or `None` when it releases nothing.
    fn project(&self, value: &Value) -> Option<Value> {
        if self.whole {
            return Some(value.clone());
        }
        match value {
            Value::Object(obj) if !self.keys.is_empty() => {
                // Iterate the record, not the trie, so the output keeps the record's key order.
                let out: Map<String, Value> = obj
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.keys.get(k)?.project(v)?)))
                    .collect();
                (!out.is_empty()).then_some(Value::Object(out))
            }
            Value::Array(items) => {
                let el = self.elements.as_deref()?;
                let out: Vec<Value> = items.iter().filter_map(|v| el.project(v)).collect();
                (!out.is_empty()).then_some(Value::Array(out))
            }
            _ => None,
        }
    }
}

/// True when `value` holds something at `steps` (for `[]`, in at least one element).
fn present(value: &Value, steps: &[Step]) -> bool {
    let Some((first, rest)) = steps.split_first() else {
        return true;
    };
    match (first, value) {
        (Step::Key(k), Value::Object(obj)) => obj.get(k).is_some_and(|v| present(v, rest)),
        (Step::Elements, Value::Array(items)) => items.iter().any(|v| present(v, rest)),
        _ => false,
    }
}

/// A catalogue that cannot be used; the message names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file could not be read.
    #[error("{origin}: cannot read the purpose catalogue: {source}")]
    Io {
        /// The file.
        origin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The catalogue is malformed or inconsistent with the schema.
    #[error("{origin}:{line}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// 1-based line of the offending entry.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    release: Option<Spanned<RawRelease>>,
    #[serde(default)]
    purpose: Vec<RawPurpose>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    version: Spanned<String>,
    effective: Spanned<String>,
}

/// The `[release]` table of a catalogue file: which yearly version it is and when it takes effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// The version's identifier, e.g. `2027`.
    pub version: String,
    /// The instant it takes effect.
    pub effective_at: chrono::DateTime<chrono::Utc>,
}

/// An instant as a catalogue or an operator writes it: RFC 3339 (`2027-01-01T00:00:00+07:00`), or a
/// Vietnam-time date and time (`2027-01-01T00:00:00`) or date (`2027-01-01`, midnight).
pub fn parse_vietnam_instant(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
        })?;
    crate::quota::vietnam()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// True when `id` may name a catalogue version: 1..=32 of letters, digits, `.`, `_` and `-`.
fn valid_version_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    id: Spanned<String>,
    title_vi: Spanned<String>,
    title_en: Spanned<String>,
    legal_basis: Spanned<String>,
    #[serde(default)]
    read: Vec<Spanned<String>>,
    #[serde(default)]
    write: Vec<Spanned<String>>,
    price_vnd: u64,
    #[serde(default)]
    agencies: Vec<Spanned<String>>,
    #[serde(default)]
    consent_based: bool,
    #[serde(default)]
    max_hidden_days: u32,
    #[serde(default)]
    official_id_shown: crate::accountability::OfficialIdShown,
}

/// The purpose catalogue, checked against the schema.
#[derive(Debug, Clone, Serialize)]
pub struct Catalogue {
    #[serde(skip)]
    release: Option<Release>,
    purposes: Vec<Purpose>,
    /// Purposes an operator granted to agencies at run time, on top of each purpose's `agencies`.
    #[serde(skip)]
    grants: RuntimeGrants,
}

/// Run-time grants: agency code → purpose ids. The registry persists them with each agency (and its
/// changes are audited); the broker copies them here at start and after every change, so that
/// [`Catalogue::authorize`] keeps answering from memory.
#[derive(Debug, Default)]
struct RuntimeGrants(std::sync::RwLock<std::collections::HashMap<String, BTreeSet<String>>>);

impl RuntimeGrants {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, BTreeSet<String>>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clone for RuntimeGrants {
    fn clone(&self) -> Self {
        Self(std::sync::RwLock::new(self.read().clone()))
    }
}

/// `; did you mean `full_name`?` when one of `known` is close to `name` (a typo, a missing `_` or `-`),
/// else nothing. The names are the public catalogue's, so suggesting one reveals nothing.
pub fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    let squash = |s: &str| s.to_lowercase().replace(['_', '-', ' '], "");
    let wanted = squash(name);
    known
        .map(|k| (strsim::damerau_levenshtein(&wanted, &squash(k)), k))
        .filter(|(distance, k)| *distance <= (k.len() / 4).max(1))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

impl Catalogue {
    /// Parses and checks a catalogue; `origin` names its file in errors.
    #[allow(clippy::should_implement_trait)] // needs `origin` and the schema, so it cannot be `FromStr`
    pub fn from_str(text: &str, origin: &str, schema: &CitizenSchema) -> Result<Self, CatalogueError> {
        Self::from_str_checked(text, origin, schema, &|_| true)
    }

    /// [`Catalogue::from_str`], also refusing a grant to an agency for which `is_agency` is false.
    pub fn from_str_checked(
        text: &str,
        origin: &str,
        schema: &CitizenSchema,
        is_agency: &dyn Fn(&str) -> bool,
    ) -> Result<Self, CatalogueError> {
        let err = |offset: usize, message: String| CatalogueError::Invalid {
            origin: origin.to_string(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawCatalogue = toml::from_str(text)
            .map_err(|e| err(e.span().map_or(0, |s| s.start), e.message().trim().into()))?;
        if raw.purpose.is_empty() {
            return Err(err(0, "the catalogue declares no [[purpose]]".into()));
        }
        let release = match raw.release {
            None => None,
            Some(release) => {
                let release = release.into_inner();
                let version = release.version.get_ref().trim().to_string();
                if !valid_version_id(&version) {
                    return Err(err(
                        release.version.span().start,
                        format!(
                            "release version {version:?} must be 1..=32 of letters, digits, '.', '_' and '-'"
                        ),
                    ));
                }
                let effective_at = parse_vietnam_instant(release.effective.get_ref()).ok_or_else(|| {
                    err(
                        release.effective.span().start,
                        format!(
                            "release effective {:?} is not an instant (RFC 3339, or a Vietnam-time date)",
                            release.effective.get_ref()
                        ),
                    )
                })?;
                Some(Release {
                    version,
                    effective_at,
                })
            }
        };
        let mut purposes: Vec<Purpose> = Vec::with_capacity(raw.purpose.len());
        let mut first_line = std::collections::HashMap::new();
        for p in raw.purpose {
            let at = p.id.span().start;
            let id = p.id.into_inner();
            if !valid_id(&id) {
                return Err(err(
                    at,
                    format!("purpose id {id:?} must be 1..=64 of a-z, 0-9 and '-'"),
                ));
            }
            if let Some(line) = first_line.insert(id.clone(), line_of(text, at)) {
                return Err(err(
                    at,
                    format!("duplicate purpose id `{id}` (first declared on line {line})"),
                ));
            }
            for (key, value) in [
                ("title_vi", &p.title_vi),
                ("title_en", &p.title_en),
                ("legal_basis", &p.legal_basis),
            ] {
                if value.get_ref().trim().is_empty() {
                    return Err(err(
                        value.span().start,
                        format!("purpose `{id}`: `{key}` is empty"),
                    ));
                }
            }
            let read = field_list(&p.read, "read", &id, schema, &err)?;
            let write = field_list(&p.write, "write", &id, schema, &err)?;
            for (w, raw) in write.iter().zip(&p.write) {
                if let Some(d) = derived_overlap(w, schema) {
                    return Err(err(
                        raw.span().start,
                        format!("purpose `{id}`: `{w}` under write includes derived field `{d}`, which is never writable"),
                    ));
                }
            }
            if read.is_empty() && write.is_empty() {
                return Err(err(
                    at,
                    format!("purpose `{id}` has neither read nor write fields"),
                ));
            }
            let mut agencies: Vec<String> = Vec::new();
            for a in &p.agencies {
                if a.get_ref().trim().is_empty() {
                    return Err(err(a.span().start, format!("purpose `{id}`: empty agency code")));
                }
                if !is_agency(a.get_ref()) {
                    return Err(err(
                        a.span().start,
                        format!("purpose `{id}`: agency `{}` is not registered", a.get_ref()),
                    ));
                }
                if !agencies.contains(a.get_ref()) {
                    agencies.push(a.get_ref().clone());
                }
            }
            if agencies.is_empty() {
                return Err(err(at, format!("purpose `{id}` lists no agencies")));
            }
            purposes.push(Purpose {
                id,
                title_vi: p.title_vi.into_inner(),
                title_en: p.title_en.into_inner(),
                legal_basis: p.legal_basis.into_inner(),
                read,
                write,
                price_vnd: p.price_vnd,
                agencies,
                consent_based: p.consent_based,
                max_hidden_days: p.max_hidden_days,
                official_id_shown: p.official_id_shown,
            });
        }
        Ok(Self {
            release,
            purposes,
            grants: RuntimeGrants::default(),
        })
    }

    /// The `[release]` table, when the file has one.
    pub fn release(&self) -> Option<&Release> {
        self.release.as_ref()
    }

    /// Loads the catalogue from `path`, or the embedded one when `None`.
    pub fn load(path: Option<&Path>, schema: &CitizenSchema) -> Result<Self, CatalogueError> {
        match path {
            None => Self::from_str(EMBEDDED_PURPOSES, "schemas/purposes.toml (embedded)", schema),
            Some(p) => {
                let origin = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| CatalogueError::Io {
                    origin: origin.clone(),
                    source,
                })?;
                Self::from_str(&text, &origin, schema)
            }
        }
    }

    /// The purpose with this id.
    pub fn get(&self, id: &str) -> Option<&Purpose> {
        self.purposes.iter().find(|p| p.id == id)
    }

    /// Every purpose, in catalogue order.
    pub fn all(&self) -> &[Purpose] {
        &self.purposes
    }

    /// The purposes this agency may use (declared in the catalogue or granted at run time).
    pub fn for_agency(&self, agency: &str) -> Vec<&Purpose> {
        let grants = self.grants.read();
        let granted = grants.get(agency);
        self.purposes
            .iter()
            .filter(|p| p.agencies.iter().any(|a| a == agency) || granted.is_some_and(|g| g.contains(&p.id)))
            .collect()
    }

    /// Whether the catalogue file itself lists `agency` for `purpose` (such a grant cannot be revoked at
    /// run time: it is part of the published catalogue).
    pub fn declares(&self, purpose: &str, agency: &str) -> bool {
        self.get(purpose)
            .is_some_and(|p| p.agencies.iter().any(|a| a == agency))
    }

    /// Replace the run-time grants of one agency.
    /// Take over another catalogue's run-time grants (a new version keeps what operators granted).
    pub fn copy_grants_from(&self, other: &Catalogue) {
        let grants = other.grants.read().clone();
        match self.grants.0.write() {
            Ok(mut guard) => *guard = grants,
            Err(poisoned) => *poisoned.into_inner() = grants,
        }
    }

    pub fn set_grants(&self, agency: &str, purposes: &[String]) {
        let mut grants = self
            .grants
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        grants.insert(agency.to_string(), purposes.iter().cloned().collect());
    }

    /// The purpose with this id, or 400 `unknown_purpose` suggesting the nearest id.
    pub fn known(&self, purpose: &str) -> Result<&Purpose, ApiError> {
        self.get(purpose).ok_or_else(|| {
            let hint = did_you_mean(purpose, self.all().iter().map(|p| p.id.as_str()));
            ApiError::bad_request("unknown_purpose", format!("unknown purpose {purpose:?}{hint}"))
        })
    }

    /// The purpose, checked for this agency: 400 `unknown_purpose`, 403 `purpose_not_allowed`.
    pub fn authorize(&self, purpose: &str, agency: &str) -> Result<&Purpose, ApiError> {
        let p = self.known(purpose)?;
        let granted = || self.grants.read().get(agency).is_some_and(|g| g.contains(&p.id));
        if !p.agencies.iter().any(|a| a == agency) && !granted() {
            return Err(ApiError::forbidden(
                "purpose_not_allowed",
                format!("agency {agency:?} may not use purpose `{}`", p.id),
            ));
        }
        Ok(p)
    }
}

/// Parses and checks one `read` or `write` list, dropping repeats.
fn field_list(
    raw: &[Spanned<String>],
    key: &str,
    id: &str,
    schema: &CitizenSchema,
    err: &impl Fn(usize, String) -> CatalogueError,
) -> Result<Vec<FieldPath>, CatalogueError> {
    let mut out: Vec<FieldPath> = Vec::with_capacity(raw.len());
    for r in raw {
        let name = r.get_ref();
        let field = name
            .parse::<FieldPath>()
            .ok()
            .filter(|f| schema.field_paths().contains(f.as_str()))
            .ok_or_else(|| {
                err(
                    r.span().start,
                    format!("purpose `{id}`: unknown field path {name:?} under {key}"),
                )
            })?;
        if !out.contains(&field) {
            out.push(field);
        }
    }
    Ok(out)
}

/// A derived field that `path` names, contains or lies inside.
fn derived_overlap(path: &FieldPath, schema: &CitizenSchema) -> Option<String> {
    schema.derived_fields().iter().find_map(|d| {
        let d_path = d.parse::<FieldPath>().ok()?;
        (path.covers(&d_path) || d_path.covers(path)).then(|| d.clone())
    })
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema() -> CitizenSchema {
        CitizenSchema::load(None).unwrap()
    }

    fn catalogue() -> Catalogue {
        Catalogue::load(None, &schema()).unwrap()
    }

    fn fp(s: &str) -> FieldPath {
        s.parse().unwrap()
    }

    /// A synthetic citizen (not a real person), with derived fields added.
    fn sample() -> Value {
        json!({
            "citizen_id": "079195000002",
            "full_name": "Trần Thị Bình",
            "birth_date": "1995-03-14",
            "gender": "female",
            "permanent_address": { "detail": "12 Lê Lợi", "province": "Thành phố Hồ Chí Minh", "country": "VN" },
            "phone": "+84912345678",
            "vaccinations": [
                { "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2021-08-01",
                  "lot": "FF1234", "source_record_id": "moh-imm-1" },
                { "dose_number": 2, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2021-08-29",
                  "source_record_id": "moh-imm-2" }
            ],
            "test_results": [],
            "covid_status": "fully_vaccinated"
        })
    }

    /// A valid one-purpose catalogue with `body` spliced in; the purpose id is on line 2.
    fn one(body: &str) -> String {
        format!(
            "[[purpose]]\nid = \"p\"\ntitle_vi = \"Thử\"\ntitle_en = \"Test\"\nlegal_basis = \"none\"\nprice_vnd = 0\n{body}"
        )
    }

    fn invalid(text: &str) -> (usize, String) {
        match Catalogue::from_str(text, "purposes.toml", &schema()).unwrap_err() {
            CatalogueError::Invalid {
                origin,
                line,
                message,
            } => {
                assert_eq!(origin, "purposes.toml");
                let shown = format!("{origin}:{line}: {message}");
                assert!(shown.starts_with(&format!("purposes.toml:{line}: ")));
                (line, message)
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn field_paths_parse_and_cover() {
        assert_eq!(fp("vaccinations[].date").to_string(), "vaccinations[].date");
        for bad in [
            "", ".", "a.", ".a", "a..b", "[]", "a[", "a[]b", "a b", "a-b", "a.[]", "ä",
        ] {
            assert!(bad.parse::<FieldPath>().is_err(), "{bad:?}");
        }
        assert!(fp("vaccinations").covers(&fp("vaccinations[].date")));
        assert!(fp("vaccinations").covers(&fp("vaccinations")));
        assert!(fp("permanent_address").covers(&fp("permanent_address.province")));
        assert!(!fp("permanent_address.province").covers(&fp("permanent_address")));
        assert!(!fp("full").covers(&fp("full_name")));
        assert!(!fp("vaccinations[].date").covers(&fp("vaccinations[].dose_number")));
        assert!(!fp("current_address").covers(&fp("permanent_address.province")));
    }

    #[test]
    fn embedded_catalogue_loads() {
        let c = catalogue();
        let ids: Vec<&str> = c.all().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "vaccination-sync",
                "covid-qr-status",
                "public-service-prefill",
                "citizen-self-service",
                "test-result-sync",
                "recovery-sync",
                "citizen-self-sms",
                "checkpoint-checkin",
                "contact-tracing",
                "covid-certificate"
            ]
        );
        let sync = c.get("vaccination-sync").unwrap();
        assert!(sync.may_write("vaccinations"));
        assert!(sync.may_write("vaccinations[].date"));
        assert!(!sync.may_write("full_name"));
        assert!(!sync.may_write("covid_status"));
        assert!(!sync.may_write("not a path"));
        assert_eq!(c.for_agency("dvc").len(), 2);
        assert!(c.for_agency("nobody").is_empty());
        let qr = c.get("covid-qr-status").unwrap();
        assert_eq!(qr.read, [fp("citizen_id"), fp("full_name"), fp("covid_status")]);
        assert!(qr.price_vnd > 0);
        for p in c.all() {
            assert!(!p.title_vi.is_ascii(), "{}: Vietnamese title", p.id);
        }
    }

    #[test]
    fn prefill_never_reads_health_data_or_phone() {
        let c = catalogue();
        let prefill = c.get("public-service-prefill").unwrap();
        for secret in [
            "phone",
            "vaccinations[].date",
            "test_results",
            "recoveries",
            "covid_status",
        ] {
            assert!(!prefill.read.iter().any(|r| r.covers(&fp(secret))), "{secret}");
        }
        let (out, released) = Purpose::project(&sample(), &prefill.read);
        assert_eq!(
            out.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "citizen_id",
                "full_name",
                "birth_date",
                "gender",
                "permanent_address"
            ]
        );
        assert_eq!(
            released,
            [
                "birth_date",
                "citizen_id",
                "full_name",
                "gender",
                "permanent_address"
            ]
        );
    }

    #[test]
    fn authorize_denies_by_default() {
        let c = catalogue();
        assert_eq!(
            c.authorize("covid-qr-status", "pccovid").unwrap().id,
            "covid-qr-status"
        );
        let e = c.authorize("covid-qr-status", "moh").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "purpose_not_allowed"));
        let e = c.authorize("marketing", "pccovid").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "unknown_purpose"));
        assert!(e.message.contains("marketing"));
        assert_eq!(
            did_you_mean("fullname", ["full_name", "birth_date"].into_iter()),
            "; did you mean `full_name`?"
        );
        assert_eq!(
            did_you_mean("salary", ["full_name", "birth_date"].into_iter()),
            ""
        );
        let e = c.authorize("covid-qr-stauts", "pccovid").unwrap_err();
        assert!(
            e.message.ends_with("did you mean `covid-qr-status`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn release_set_intersects_and_refuses() {
        let (s, c) = (schema(), catalogue());
        let prefill = c.get("public-service-prefill").unwrap();
        assert_eq!(prefill.release_set(None, &s).unwrap(), prefill.read);
        let req = [
            "full_name".to_string(),
            "permanent_address.province".into(),
            "full_name".into(),
        ];
        assert_eq!(
            prefill.release_set(Some(&req), &s).unwrap(),
            [fp("full_name"), fp("permanent_address.province")]
        );
        assert!(prefill.release_set(Some(&[]), &s).unwrap().is_empty());

        let e = prefill.release_set(Some(&["phone".into()]), &s).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "forbidden_field"));
        assert!(e.message.contains("phone"));
        let e = prefill.release_set(Some(&["shoe_size".into()]), &s).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "unknown_field"));
        assert!(e.message.contains("shoe_size"));
        let e = prefill.release_set(Some(&["full_name[".into()]), &s).unwrap_err();
        assert_eq!(e.code, "unknown_field");

        // A narrower read set does not release its parent.
        let sync = c.get("vaccination-sync").unwrap();
        let e = sync.release_set(Some(&["vaccinations".into()]), &s).unwrap_err();
        assert_eq!(e.code, "forbidden_field");
    }

    #[test]
    fn project_releases_only_the_fields() {
        let r = sample();
        let fields = [
            fp("vaccinations[].lot"),
            fp("permanent_address.province"),
            fp("current_address"),
        ];
        let (out, released) = Purpose::project(&r, &fields);
        assert_eq!(
            out,
            json!({ "permanent_address": { "province": "Thành phố Hồ Chí Minh" },
                    "vaccinations": [{ "lot": "FF1234" }] })
        );
        assert_eq!(released, ["permanent_address.province", "vaccinations[].lot"]);

        let (out, released) =
            Purpose::project(&r, &[fp("vaccinations[].date"), fp("vaccinations[].dose_number")]);
        assert_eq!(
            out,
            json!({ "vaccinations": [{ "dose_number": 1, "date": "2021-08-01" },
                                     { "dose_number": 2, "date": "2021-08-29" }] })
        );
        assert_eq!(released, ["vaccinations[].date", "vaccinations[].dose_number"]);

        // Whole arrays stay whole, even empty ones.
        let (out, released) = Purpose::project(&r, &[fp("test_results"), fp("covid_status")]);
        assert_eq!(
            out,
            json!({ "test_results": [], "covid_status": "fully_vaccinated" })
        );
        assert_eq!(released, ["covid_status", "test_results"]);

        assert_eq!(Purpose::project(&r, &[]), (json!({}), vec![]));
        assert_eq!(
            Purpose::project(&json!("x"), &[fp("full_name")]),
            (json!({}), vec![])
        );
    }

    #[test]
    fn catalogue_errors_name_file_and_line() {
        // Unknown field path under read (line 7).
        let (line, msg) = invalid(&one(
            "read = [\"full_name\",\n  \"shoe_size\"]\nagencies = [\"x\"]\n",
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("shoe_size") && msg.contains("read"), "{msg}");
        // Unknown nested path and malformed path.
        let (line, msg) = invalid(&one("read = [\"permanent_address.zip\"]\nagencies = [\"x\"]\n"));
        assert_eq!((line, msg.contains("permanent_address.zip")), (7, true));
        let (line, _) = invalid(&one(
            "read = [\"full_name\"]\nwrite = [\"vaccinations[]\"]\nagencies = [\"x\"]\n",
        ));
        assert_eq!(line, 8);
        // Derived field under write.
        let (line, msg) = invalid(&one(
            "read = [\"full_name\"]\nwrite = [\"covid_status\"]\nagencies = [\"x\"]\n",
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("covid_status"), "{msg}");
        // Neither read nor write.
        let (line, msg) = invalid(&one("read = []\nagencies = [\"x\"]\n"));
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("neither read nor write"));
        // No agencies, missing or empty.
        let (line, msg) = invalid(&one("read = [\"full_name\"]\n"));
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("no agencies"));
        assert_eq!(invalid(&one("read = [\"full_name\"]\nagencies = []\n")).0, 2);
        // Unknown key.
        let (line, msg) = invalid(&one(
            "read = [\"full_name\"]\nagencies = [\"x\"]\nprice_usd = 1\n",
        ));
        assert_eq!(line, 9, "{msg}");
        assert!(msg.contains("price_usd"), "{msg}");
        let (line, msg) = invalid(&format!(
            "version = 2\n{}",
            one("read = [\"full_name\"]\nagencies = [\"x\"]\n")
        ));
        assert_eq!(line, 1, "{msg}");
        assert!(msg.contains("version"), "{msg}");
        // Duplicate id: reported on the second, naming the first.
        let p = one("read = [\"full_name\"]\nagencies = [\"x\"]\n");
        let (line, msg) = invalid(&format!("{p}\n{p}"));
        assert_eq!(line, 11, "{msg}");
        assert!(msg.contains("duplicate") && msg.contains("line 2"), "{msg}");
        // Bad id, empty title, bad types, syntax.
        let (line, _) =
            invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("\"p\"", "\"P Q\""));
        assert_eq!(line, 2);
        let (line, _) =
            invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("\"Test\"", "\" \""));
        assert_eq!(line, 4);
        let (line, _) = invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("= 0", "= -1"));
        assert_eq!(line, 6);
        let (line, _) = invalid(&one("read = [\"full_name\"\nagencies = [\"x\"]\n"));
        assert!(line >= 7);
        assert_eq!(invalid("# nothing\n").0, 1);
    }

    #[test]
    fn load_reads_files() {
        let s = schema();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purposes.toml");
        std::fs::write(&path, one("read = [\"full_name\"]\nagencies = [\"x\"]\n")).unwrap();
        let c = Catalogue::load(Some(&path), &s).unwrap();
        assert_eq!(c.all().len(), 1);
        std::fs::write(&path, one("read = [\"nope\"]\nagencies = [\"x\"]\n")).unwrap();
        let e = Catalogue::load(Some(&path), &s).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:7: ", path.display())), "{e}");
        let e = Catalogue::load(Some(&dir.path().join("missing.toml")), &s).unwrap_err();
        assert!(matches!(e, CatalogueError::Io { .. }));
    }

    /// Every leaf of `v` (scalars and empty containers) as a field path.
    fn leaf_paths(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaf_paths(x, &p, out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for x in a {
                    leaf_paths(x, &format!("{path}[]"), out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }

    const KEYS: [&str; 6] = ["a", "b", "full_name", "vaccinations", "date", "permanent_address"];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Value> {
        prop::collection::vec((prop::sample::select(&KEYS[..]), json_value()), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }

    fn field_path() -> impl Strategy<Value = FieldPath> {
        prop::collection::vec((prop::sample::select(&KEYS[..]), 0..3usize), 1..4).prop_map(|segs| {
            let text: Vec<String> = segs
                .iter()
                .map(|(k, n)| format!("{k}{}", "[]".repeat(*n)))
                .collect();
            fp(&text.join("."))
        })
    }

    proptest! {
        #[test]
        fn project_never_leaks(rec in record(), fields in prop::collection::vec(field_path(), 0..5)) {
            let (out, released) = Purpose::project(&rec, &fields);
            prop_assert!(out.is_object());
            let mut leaves = Vec::new();
            if out.as_object().is_some_and(|m| !m.is_empty()) {
                leaf_paths(&out, "", &mut leaves);
            }
            for leaf in &leaves {
                let leaf = fp(leaf);
                prop_assert!(fields.iter().any(|f| f.covers(&leaf)), "{} not covered by {:?}", leaf, fields);
            }
            let mut sorted = released.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &released);
            for r in &released {
                prop_assert!(fields.iter().any(|f| f.as_str() == r));
            }
            // Something is released exactly when the projection is non-empty.
            prop_assert_eq!(released.is_empty(), leaves.is_empty());
        }

        #[test]
        fn project_canonical_subsets(mask in prop::collection::vec(any::<bool>(), 64)) {
            let s = schema();
            let fields: Vec<FieldPath> = s.field_paths().iter().zip(&mask).filter(|(_, m)| **m).map(|(p, _)| fp(p)).collect();
            let (out, _) = Purpose::project(&sample(), &fields);
            let mut leaves = Vec::new();
            if out.as_object().is_some_and(|m| !m.is_empty()) {
                leaf_paths(&out, "", &mut leaves);
            }
            for leaf in &leaves {
                let leaf = fp(leaf);
                prop_assert!(fields.iter().any(|f| f.covers(&leaf)), "{}", leaf);
            }
            // Top-level fields asked for whole come back unchanged.
            for f in &fields {
                if let Some(v) = sample().get(f.as_str()) {
                    prop_assert_eq!(out.get(f.as_str()), Some(v));
                }
            }
        }
    }
}
