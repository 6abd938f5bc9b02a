//! Stage: connector. Declarative files in `connectors/` map an agency's own JSON or XML onto the canonical
//! operations (`canonical`) and the canonical answer back into the agency's shape. A connector only
//! translates: purpose, policy, store, audit (and quota) are the canonical pipeline's, so a new agency
//! dialect is a new file, never new Rust. The file format is described in `connectors/README.md`.
//!
//! This module is the loaded set ([`ConnectorSet`], held by the broker); `doors::connector` is the front door that
//! answers a connector's requests.

mod file;
pub mod spec;
pub mod transform;
pub mod xml;

use std::path::Path;

use hyper::Method;

use crate::policy::Catalogue;
use crate::schema::CitizenSchema;

pub use spec::{Connector, ConnectorError, ErrorStyle, Format, Operation};

/// The connectors shipped in the binary, used when no `catalogue.connectors_dir` is configured.
pub const EMBEDDED: [(&str, &str); 5] = [
    (
        "connectors/moh-vaccination.toml",
        include_str!("../../connectors/moh-vaccination.toml"),
    ),
    (
        "connectors/pccovid-qr-status.toml",
        include_str!("../../connectors/pccovid-qr-status.toml"),
    ),
    (
        "connectors/dvc-citizen-info.toml",
        include_str!("../../connectors/dvc-citizen-info.toml"),
    ),
    (
        "connectors/moh-test-result.toml",
        include_str!("../../connectors/moh-test-result.toml"),
    ),
    (
        "connectors/moh-recovery.toml",
        include_str!("../../connectors/moh-recovery.toml"),
    ),
];

/// Every loaded connector, looked up by route.
#[derive(Debug, Default)]
pub struct ConnectorSet {
    connectors: Vec<Connector>,
}

impl ConnectorSet {
    /// Load `dir/*.toml` (sorted), or the embedded set when `dir` is `None`. Names and routes must be unique.
    pub fn load(
        dir: Option<&Path>,
        schema: &CitizenSchema,
        catalogue: &Catalogue,
    ) -> Result<Self, ConnectorError> {
        let mut connectors = Vec::new();
        match dir {
            Some(dir) => {
                let io = |e: std::io::Error| ConnectorError {
                    file: dir.display().to_string(),
                    line: 0,
                    message: e.to_string(),
                };
                let mut files: Vec<_> = std::fs::read_dir(dir)
                    .map_err(io)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                files.sort();
                for file in files {
                    connectors.push(Connector::load(&file, schema, catalogue)?);
                }
            }
            None => {
                for (file, text) in EMBEDDED {
                    connectors.push(Connector::from_str(text, file, schema, catalogue)?);
                }
            }
        }
        for (i, c) in connectors.iter().enumerate() {
            if let Some(other) = connectors[..i]
                .iter()
                .find(|o| o.name == c.name || (o.method == c.method && o.path == c.path))
            {
                return Err(ConnectorError {
                    file: c.name.clone(),
                    line: 1,
                    message: format!("name or route clashes with connector {}", other.name),
                });
            }
        }
        Ok(Self { connectors })
    }

    /// The connector with this name (X-Road services map to connectors by name).
    pub fn by_name(&self, name: &str) -> Option<&Connector> {
        self.connectors.iter().find(|c| c.name == name)
    }

    /// The connector serving this route.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Connector> {
        self.connectors
            .iter()
            .find(|c| c.method == method && c.path == path)
    }

    /// Is any connector at this path (for 405)?
    pub fn has_path(&self, path: &str) -> bool {
        self.connectors.iter().any(|c| c.path == path)
    }

    /// All connectors, in load order.
    pub fn all(&self) -> &[Connector] {
        &self.connectors
    }
}
