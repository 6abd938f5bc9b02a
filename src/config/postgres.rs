//! `[storage.postgres]`: the PostgreSQL database of a cluster, and how its URL is shown (never with a
//! password).

use std::path::PathBuf;

use serde::Deserialize;

/// `[storage.postgres]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection string, URL (`postgres://user:password@host:5432/db`) or key=value form.
    pub url: String,
    /// Connections this broker keeps open at most.
    pub pool_size: usize,
    /// Time allowed to connect, and to wait for a free connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// PEM CA bundle: when set, every connection uses TLS (required) and the server certificate must
    /// chain to it and name the host. Unset: plain TCP (a socket on a trusted network only).
    pub ca_bundle: Option<PathBuf>,
    /// This broker's name in the audit trail (its chains are continued across restarts by name).
    /// Empty: the agency listener address.
    pub node_name: String,
    /// How often one broker of the cluster signs every chain's head (an audit seal), in milliseconds.
    pub seal_every_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 16,
            connect_timeout_ms: 5_000,
            ca_bundle: None,
            node_name: String::new(),
            seal_every_ms: 10_000,
        }
    }
}

impl PostgresConfig {
    /// Check what the types cannot; the error names the key under `storage.postgres`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.url.is_empty() {
            return Err(("url", "required with storage.backend = \"postgres\"".into()));
        }
        self.url.parse::<tokio_postgres::Config>().map_err(|e| {
            (
                "url",
                format!("{} is not a connection string: {e}", redact_url(&self.url)),
            )
        })?;
        if self.pool_size == 0 {
            return Err(("pool_size", "must be greater than 0".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be greater than 0".into()));
        }
        if self.seal_every_ms == 0 {
            return Err(("seal_every_ms", "must be greater than 0".into()));
        }
        if let Some(p) = &self.ca_bundle {
            if !p.is_file() {
                return Err(("ca_bundle", format!("file not found: {}", p.display())));
            }
        }
        Ok(())
    }
}

/// The connection string with any password replaced by `***` (URL userinfo or a `password=` parameter).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some((user, _password)) = rest[..at].split_once(':') {
                out = format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
            }
        }
    }
    // `password=…` in a query string (`&`-separated) or the key=value form (space-separated).
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let value_start = i + "password=".len();
        redacted.push_str(&rest[..value_start]);
        redacted.push_str("***");
        let value_len = rest[value_start..]
            .find(['&', ' '])
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    redacted.push_str(rest);
    redacted
}
