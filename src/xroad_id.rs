//! The X-Road identifiers: a member or subsystem ([`ClientId`], which the registry binds to an agency) and
//! a service ([`ServiceId`]). Plain data with their parsing and checks, below both the registry and the
//! X-Road front door (`xroad`), which re-exports them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, XRoadConfig};
use crate::connector::ConnectorSet;
use crate::error::{ApiError, ErrorCode};
use crate::policy::Catalogue;

/// The X-Road identifier of a member or subsystem (`INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientId {
    /// X-Road instance, e.g. `EE`.
    pub instance: String,
    /// Member class, e.g. `GOV`.
    pub member_class: String,
    /// Member code.
    pub member_code: String,
    /// Subsystem code, for a subsystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem_code: Option<String>,
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.instance, self.member_class, self.member_code)?;
        if let Some(s) = &self.subsystem_code {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// X-Road's identifier character set (protocol §2.7): letters, digits and `'()+,-.=?`, plus `_` and
/// `:`, which X-Road's own test data uses in member codes.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 255
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "'()+,-.=?_:".contains(c))
}

impl ClientId {
    /// Check every part's characters: 400 `xroad_invalid_client_identifier`.
    pub fn validated(self) -> Result<Self, ApiError> {
        let parts = [
            Some(&self.instance),
            Some(&self.member_class),
            Some(&self.member_code),
            self.subsystem_code.as_ref(),
        ];
        if parts.into_iter().flatten().all(|p| valid_part(p)) {
            Ok(self)
        } else {
            Err(ApiError::new(
                ErrorCode::XroadInvalidClientIdentifier,
                "an X-Road identifier part is 1..=255 of letters, digits and '()+,-.=?_:",
            ))
        }
    }

    /// Parse `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]` (each part percent-decoded, as X-Road REST sends it).
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let parts: Vec<String> = text.split('/').map(percent_decoded).collect();
        Self::from_parts(&parts)
    }

    pub(crate) fn from_parts(parts: &[String]) -> Result<Self, ApiError> {
        let id = match parts {
            [i, c, m] => ClientId {
                instance: i.clone(),
                member_class: c.clone(),
                member_code: m.clone(),
                subsystem_code: None,
            },
            [i, c, m, s] => ClientId {
                instance: i.clone(),
                member_class: c.clone(),
                member_code: m.clone(),
                subsystem_code: Some(s.clone()),
            },
            _ => {
                return Err(ApiError::new(
                    ErrorCode::XroadInvalidClientIdentifier,
                    "an X-Road client is INSTANCE/CLASS/MEMBER[/SUBSYSTEM]",
                ))
            }
        };
        id.validated()
    }
}

fn percent_decoded(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

/// An X-Road service: its provider and service code (the version is not part of the mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    /// The provider member or subsystem.
    pub provider: ClientId,
    /// The service code.
    pub code: String,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.code)
    }
}

impl ServiceId {
    /// Parse `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]/SERVICECODE`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let parts: Vec<String> = text.split('/').map(percent_decoded).collect();
        let Some((code, provider)) = parts.split_last() else {
            return Err(ApiError::new(ErrorCode::XroadUnknownService, "empty service id"));
        };
        if !valid_part(code) {
            return Err(ApiError::new(
                ErrorCode::XroadUnknownService,
                "a service code is 1..=255 of letters, digits and '()+,-.=?_:",
            ));
        }
        Ok(Self {
            provider: ClientId::from_parts(provider)?,
            code: code.clone(),
        })
    }
}

/// What a service code runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A canonical read of one citizen under the purpose.
    Read {
        /// The purpose id.
        purpose: String,
    },
    /// The purposes open to the client's agency (no citizen data).
    ListPurposes,
    /// The message as received, to a connector (by name): its purpose, mapping and checks apply.
    Connector {
        /// The connector's name.
        name: String,
    },
}

/// The configured services, checked against the catalogue at start.
#[derive(Debug, Clone, Default)]
pub struct ServiceMap {
    services: Vec<(ServiceId, Operation)>,
}

impl ServiceMap {
    /// Build from `[[xroad.services]]`; a bad id, operation or purpose names its key.
    pub fn load(
        config: &XRoadConfig,
        catalogue: &Catalogue,
        connectors: &ConnectorSet,
    ) -> Result<Self, ConfigError> {
        let mut services = Vec::new();
        for (i, s) in config.services.iter().enumerate() {
            let err = |field: &str, message: String| ConfigError {
                file: "config".into(),
                key: format!("xroad.services[{i}].{field}"),
                message,
            };
            let id = ServiceId::parse(&s.service).map_err(|e| err("service", e.message))?;
            if services.iter().any(|(known, _)| *known == id) {
                return Err(err("service", format!("{id} is mapped twice")));
            }
            let op = match (s.operation.as_str(), &s.purpose, &s.connector) {
                ("read", Some(p), None) if catalogue.get(p).is_some() => {
                    Operation::Read { purpose: p.clone() }
                }
                ("read", Some(p), None) => {
                    return Err(err("purpose", format!("no purpose {p} in the catalogue")))
                }
                ("read", None, _) => return Err(err("purpose", "a read names its purpose".into())),
                ("list_purposes", None, None) => Operation::ListPurposes,
                ("connector", None, Some(name)) if connectors.by_name(name).is_some() => {
                    Operation::Connector { name: name.clone() }
                }
                ("connector", None, Some(name)) => {
                    return Err(err("connector", format!("no connector named {name}")))
                }
                ("connector", None, None) => {
                    return Err(err("connector", "a connector service names its connector".into()))
                }
                ("read" | "list_purposes" | "connector", _, _) => {
                    return Err(err(
                        "operation",
                        "read takes `purpose`, connector takes `connector`, list_purposes neither".into(),
                    ))
                }
                (other, _, _) => {
                    return Err(err(
                        "operation",
                        format!("{other:?}: expected \"read\", \"list_purposes\" or \"connector\""),
                    ))
                }
            };
            services.push((id, op));
        }
        Ok(Self { services })
    }

    /// The operation behind a service, if it is mapped.
    pub fn lookup(&self, id: &ServiceId) -> Option<&Operation> {
        self.services
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, op)| op)
    }

    /// The operation behind a service: 404 `xroad_unknown_service`.
    pub fn find(&self, id: &ServiceId) -> Result<&Operation, ApiError> {
        self.lookup(id)
            .ok_or_else(|| ApiError::new(ErrorCode::XroadUnknownService, format!("no X-Road service {id}")))
    }
}
