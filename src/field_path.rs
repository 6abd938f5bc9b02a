//! The one field-path parser: `full_name`, `permanent_address.province`, `vaccinations[].date`. The
//! purpose catalogue (`policy`), the schema's checks (`schema`), the connectors and the
//! OpenAPI document all read paths through [`FieldPath`]. It imports nothing of the broker.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// One step of a field path: an object key, or "every element of the array" (`[]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// An object key.
    Key(String),
    /// Every element of an array.
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

    /// The steps: `vaccinations[].date` → `vaccinations`, every element, `date`.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The steps as text, `[]` for "every element" (the form the OpenAPI projection walks).
    pub fn segments(&self) -> Vec<&str> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Key(name) => name.as_str(),
                Step::Elements => "[]",
            })
            .collect()
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
