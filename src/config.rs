//! Stage: configuration. One typed TOML file (`lienthong.toml`) with defaults that make `demo` work.
//! Parsing is strict (`deny_unknown_fields`), then [`Config::validate`] checks what types cannot
//! (files exist, addresses parse) and names the offending key and file. Relative paths are resolved
//! against the directory of the config file, so a config can be moved with its certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, naming the file and the key. The CLI exits with code 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file (or `<defaults>`).
    pub file: String,
    /// The dotted key at fault, e.g. `tls.ca_bundle`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// The whole broker configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The listener agencies connect to.
    pub agency_listener: ListenerConfig,
    /// The listener operators connect to (admin certificates only).
    pub admin_listener: AdminListenerConfig,
    /// Certificates, CA bundle and CRLs.
    pub tls: TlsConfig,
    /// Where the broker keeps its data.
    pub storage: StorageConfig,
    /// The canonical schema, purpose catalogue and connector folder.
    pub catalogue: CatalogueConfig,
    /// Request limits and timeouts.
    pub limits: LimitsConfig,
    /// Audit trail settings.
    pub audit: AuditConfig,
}

/// The agency listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `127.0.0.1:8443`.
    pub addr: String,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8443".into(),
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminListenerConfig {
    /// Address to bind, e.g. `127.0.0.1:8444`.
    pub addr: String,
}

impl Default for AdminListenerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8444".into(),
        }
    }
}

/// TLS material. Every client must present a certificate that chains to `ca_bundle` and is not
/// revoked by any of `crls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of CA certificates that agency and admin certificates must chain to.
    pub ca_bundle: PathBuf,
    /// PEM certificate chain the broker presents.
    pub server_cert: PathBuf,
    /// PEM private key of `server_cert`.
    pub server_key: PathBuf,
    /// PEM or DER certificate revocation lists, checked on every handshake.
    pub crls: Vec<PathBuf>,
    /// PEM certificates allowed on the admin listener (pinned by SHA-256 fingerprint).
    pub admin_certs: Vec<PathBuf>,
    /// Accept a client certificate whose revocation status no configured CRL covers.
    /// Off by default: with CRLs configured, an issuer without a CRL is refused.
    pub allow_unknown_revocation: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_bundle: "certs/demo/ca.pem".into(),
            server_cert: "certs/demo/server.pem".into(),
            server_key: "certs/demo/server.key".into(),
            crls: vec!["certs/demo/crl.pem".into()],
            admin_certs: vec!["certs/demo/admin.pem".into()],
            allow_unknown_revocation: false,
        }
    }
}

/// Storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory holding the sled database and the audit segments.
    pub data_dir: PathBuf,
    /// sled's page cache, MiB: most of the broker's memory once the store is large (sled's own default is
    /// 1024). Records beyond it are read back from the file system's cache; at 100,000 citizens 32, 64 and
    /// 256 cost the same per request (BENCHMARKS.md), so the default keeps memory low.
    pub cache_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: "data/demo".into(),
            cache_mb: 64,
        }
    }
}

/// The published catalogue. An empty path means the copy embedded in the binary.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogueConfig {
    /// The canonical citizen record schema (JSON Schema 2020-12).
    pub schema: Option<PathBuf>,
    /// The purpose catalogue (TOML).
    pub purposes: Option<PathBuf>,
    /// Folder of connector files (`*.toml`).
    pub connectors_dir: Option<PathBuf>,
}

/// Limits that protect the broker from slow or oversized clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) answered, in bytes: 431 `headers_too_large`
    /// above it. hyper refuses heads over 64 KiB by itself, before any request exists to audit.
    pub max_header_bytes: usize,
    /// Time allowed to receive a request's headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time allowed for a whole request, body included, in milliseconds.
    pub request_timeout_ms: u64,
    /// Time allowed for a TLS handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Connections served at once on each listener; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// Requests one agency may have in flight at once on the agency listener (keyed by agency code, or
    /// by certificate fingerprint for an unregistered certificate); above it, 429 `concurrency_limit`.
    pub max_concurrent_per_agency: usize,
    /// Time graceful shutdown waits for in-flight requests, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_header_bytes: 32 * 1024,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_connections: 4096,
            max_concurrent_per_agency: 64,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Audit trail settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Sign a checkpoint of the chain head every this many entries (and on shutdown).
    pub checkpoint_every: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
        }
    }
}

/// Socket addresses after validation.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddrs {
    /// Agency listener.
    pub agency: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

impl Config {
    /// Read, parse, resolve relative paths against the file's folder, and validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            key: key_of_toml_error(&e),
            message: e.message().to_string() + &line_of(&text, e.span()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate(&file)?;
        Ok(config)
    }

    /// Make every relative path absolute with respect to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.ca_bundle);
        fix(&mut self.tls.server_cert);
        fix(&mut self.tls.server_key);
        self.tls.crls.iter_mut().for_each(fix);
        self.tls.admin_certs.iter_mut().for_each(fix);
        fix(&mut self.storage.data_dir);
        for p in [
            &mut self.catalogue.schema,
            &mut self.catalogue.purposes,
            &mut self.catalogue.connectors_dir,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Check what the types cannot: addresses parse, files exist, limits are sane.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.into(),
            key: key.into(),
            message,
        };
        self.listen_addrs().map_err(|(key, m)| err(key, m))?;
        let must_exist = |key: &str, p: &Path| -> Result<(), ConfigError> {
            if p.is_file() {
                Ok(())
            } else {
                Err(err(key, format!("file not found: {}", p.display())))
            }
        };
        must_exist("tls.ca_bundle", &self.tls.ca_bundle)?;
        must_exist("tls.server_cert", &self.tls.server_cert)?;
        must_exist("tls.server_key", &self.tls.server_key)?;
        for p in &self.tls.crls {
            must_exist("tls.crls", p)?;
        }
        if self.tls.admin_certs.is_empty() {
            return Err(err(
                "tls.admin_certs",
                "at least one admin certificate is required".into(),
            ));
        }
        for p in &self.tls.admin_certs {
            must_exist("tls.admin_certs", p)?;
        }
        if let Some(p) = &self.catalogue.schema {
            must_exist("catalogue.schema", p)?;
        }
        if let Some(p) = &self.catalogue.purposes {
            must_exist("catalogue.purposes", p)?;
        }
        if let Some(p) = &self.catalogue.connectors_dir {
            if !p.is_dir() {
                return Err(err(
                    "catalogue.connectors_dir",
                    format!("not a directory: {}", p.display()),
                ));
            }
        }
        if self.storage.cache_mb == 0 {
            return Err(err("storage.cache_mb", "must be greater than 0".into()));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(err("limits.max_body_bytes", "must be greater than 0".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(err("limits.max_connections", "must be greater than 0".into()));
        }
        if self.limits.max_concurrent_per_agency == 0 {
            return Err(err(
                "limits.max_concurrent_per_agency",
                "must be greater than 0".into(),
            ));
        }
        if self.audit.checkpoint_every == 0 {
            return Err(err("audit.checkpoint_every", "must be greater than 0".into()));
        }
        Ok(())
    }

    /// The two listen addresses, or the key that does not parse.
    pub fn listen_addrs(&self) -> Result<ListenAddrs, (&'static str, String)> {
        let agency = self.agency_listener.addr.parse().map_err(|e| {
            (
                "agency_listener.addr",
                format!("{:?} is not an address: {e}", self.agency_listener.addr),
            )
        })?;
        let admin = self.admin_listener.addr.parse().map_err(|e| {
            (
                "admin_listener.addr",
                format!("{:?} is not an address: {e}", self.admin_listener.addr),
            )
        })?;
        Ok(ListenAddrs { agency, admin })
    }
}

/// The dotted key a TOML error is about, read from serde's message where it names one.
fn key_of_toml_error(e: &toml::de::Error) -> String {
    let msg = e.message();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    "(syntax)".into()
}

/// ` (line N)` for the start of a span, or nothing.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        ),
        None => String::new(),
    }
}
