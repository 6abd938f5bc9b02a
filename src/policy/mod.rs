//! Stage: policy. The purpose catalogue (`schemas/purposes.toml`): for each declared purpose, the fields
//! it may read and write, its legal basis, its price per call and the agencies that may use it.
//! Deny by default: what is not listed is not released, and a record is projected onto the released
//! fields before it leaves the broker.
//!
//! The catalogue is checked against the canonical schema at start; every mistake is reported with the
//! file and line, so a broker never runs with a catalogue that names a field that does not exist.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use toml::Spanned;

use crate::error::{ApiError, ErrorCode};
pub use crate::field_path::FieldPath;
use crate::field_path::Step;
use crate::schema::CitizenSchema;

/// The catalogue shipped with the broker, used when the configuration names no other file.
pub const EMBEDDED_PURPOSES: &str = include_str!("../../schemas/purposes.toml");

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
    pub official_id_shown: OfficialIdShown,
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
                    ApiError::new(ErrorCode::UnknownField, format!("unknown field {name:?}{hint}"))
                })?;
            if !self.read.iter().any(|r| r.covers(&field)) {
                return Err(ApiError::new(
                    ErrorCode::ForbiddenField,
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
            tree.insert(f.steps());
        }
        let projected = tree.project(record).unwrap_or_else(|| Value::Object(Map::new()));
        let released: BTreeSet<String> = fields
            .iter()
            .filter(|f| present(record, f.steps()))
            .map(|f| f.as_str().to_string())
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

/// How the citizen sees the official's ID, as the catalogue says for the purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfficialIdShown {
    /// Country prefix and last two characters, the rest masked: `EE*********34`.
    #[default]
    Masked,
    /// As declared.
    Full,
    /// Not at all.
    None,
}

impl OfficialIdShown {
    /// The official's ID as the citizen sees it.
    pub fn show(self, user_id: &str) -> Option<String> {
        match self {
            OfficialIdShown::Full => Some(user_id.to_string()),
            OfficialIdShown::None => None,
            OfficialIdShown::Masked => {
                let chars: Vec<char> = user_id.chars().collect();
                if chars.len() <= 4 {
                    return Some("*".repeat(chars.len()));
                }
                let mut out: String = chars[..2].iter().collect();
                out.extend(std::iter::repeat_n('*', chars.len() - 4));
                out.extend(&chars[chars.len() - 2..]);
                Some(out)
            }
        }
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
    crate::clock::vietnam()
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
    official_id_shown: OfficialIdShown,
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
            ApiError::new(
                ErrorCode::UnknownPurpose,
                format!("unknown purpose {purpose:?}{hint}"),
            )
        })
    }

    /// The purpose, checked for this agency: 400 `unknown_purpose`, 403 `purpose_not_allowed`.
    pub fn authorize(&self, purpose: &str, agency: &str) -> Result<&Purpose, ApiError> {
        let p = self.known(purpose)?;
        let granted = || self.grants.read().get(agency).is_some_and(|g| g.contains(&p.id));
        if !p.agencies.iter().any(|a| a == agency) && !granted() {
            return Err(ApiError::new(
                ErrorCode::PurposeNotAllowed,
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
mod tests;
