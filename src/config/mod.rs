//! Stage: configuration. One typed TOML file (`lienthong.toml`) with defaults that make `demo` work.
//! Parsing is strict (`deny_unknown_fields`), then [`Config::validate`] checks what types cannot
//! (files exist, addresses parse) and names the offending key and file. Relative paths are resolved
//! against the directory of the config file, so a config can be moved with its certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod postgres;
pub mod upstream;

pub use postgres::PostgresConfig;
pub use upstream::UpstreamConfig;

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
    /// EU Digital COVID Certificates: the Document Signer and the verifier's trust list.
    pub dcc: DccConfig,
    /// The X-Road channel: which service codes map to which operation and purpose.
    pub xroad: XRoadConfig,
    /// Where citizen records live: the embedded database, or an upstream provider system.
    pub store: StoreConfig,
}

/// Where citizen records live. Registry, quota and audit stay in `storage.data_dir` either way.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (sled in `storage.data_dir`, the default) or `upstream`.
    pub backend: StoreBackend,
    /// The provider, for `backend = "upstream"`.
    pub upstream: Option<UpstreamConfig>,
}

/// The citizen store's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled in the data directory.
    #[default]
    Embedded,
    /// A provider system over HTTPS with mTLS (`[store.upstream]`).
    Upstream,
}

/// EU DCC issuing and verifying. Without `dsc_cert` and `dsc_key` the broker issues no certificates
/// (503 `dcc_not_configured`); it still verifies against `trust_list`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DccConfig {
    /// The Document Signer certificate (PEM), issued by the country signing CA.
    pub dsc_cert: Option<PathBuf>,
    /// Its P-256 private key (PEM, PKCS#8).
    pub dsc_key: Option<PathBuf>,
    /// The certificate issuer (`is`), at most 80 characters.
    pub issuer: String,
    /// How long an issued certificate is valid (CWT `exp` − `iat`), in days.
    pub validity_days: u32,
    /// Further Document Signer certificates (PEM files) the verifier trusts besides the broker's own.
    pub trust_list: Vec<PathBuf>,
}

impl Default for DccConfig {
    fn default() -> Self {
        Self {
            dsc_cert: None,
            dsc_key: None,
            issuer: "Bộ Y tế (Ministry of Health of Viet Nam)".into(),
            validity_days: 365,
            trust_list: Vec::new(),
        }
    }
}

/// The X-Road channel (SOAP at `POST /xroad`, REST at `/r1/…`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct XRoadConfig {
    /// One entry per X-Road service lienthong provides.
    pub services: Vec<XRoadServiceConfig>,
}

/// One X-Road service: its identifier and the lienthong operation behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XRoadServiceConfig {
    /// `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]/SERVICECODE`, as X-Road REST writes a service id.
    pub service: String,
    /// `read` (a citizen, for the purpose), `list_purposes` (the purposes open to the client's agency) or
    /// `connector` (the message, as received, to the connector named by `connector`).
    pub operation: String,
    /// The purpose a `read` is made under.
    #[serde(default)]
    pub purpose: Option<String>,
    /// The connector (its `name`) a `connector` service hands the message to.
    #[serde(default)]
    pub connector: Option<String>,
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
    /// Where citizen records and the audit trail live: `sled` (embedded, the default) or `postgres`
    /// (shared by several brokers; see `postgres`).
    pub backend: StorageBackend,
    /// The PostgreSQL database, with `backend = "postgres"`.
    pub postgres: PostgresConfig,
}

/// Which storage backend the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded sled database and audit segment files in `data_dir`.
    #[default]
    Sled,
    /// A PostgreSQL database shared by every broker of a cluster.
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: "data/demo".into(),
            cache_mb: 64,
            backend: StorageBackend::Sled,
            postgres: Default::default(),
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
    /// Folder of the checkpoint signing key and the body-hash key (mode 0600), outside the data dir;
    /// default: the data dir's sibling `<name>-keys`. The data dir keeps only the public key.
    pub key_dir: Option<PathBuf>,
    /// Witness file every signed checkpoint is also appended to, outside the data dir (ideally on
    /// another volume); default `<key_dir>/witness.jsonl`. At start-up a trail behind it is refused.
    pub witness: Option<PathBuf>,
    /// Microseconds the audit writer may hold a batch for more concurrent appends before its
    /// `fdatasync` (only while requests arrive concurrently); 0 turns the wait off.
    pub commit_delay_us: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            key_dir: None,
            witness: None,
            commit_delay_us: crate::audit::DEFAULT_COMMIT_DELAY.as_micros() as u64,
        }
    }
}

impl AuditConfig {
    /// What types cannot check: the dotted key at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.checkpoint_every == 0 {
            return Err(("audit.checkpoint_every", "must be greater than 0".into()));
        }
        // Every concurrent answer may wait this long: past a few milliseconds it costs more than a sync.
        if self.commit_delay_us > 10_000 {
            return Err(("audit.commit_delay_us", "must be at most 10000 (10 ms)".into()));
        }
        Ok(())
    }

    /// The key folder in force for `data_dir`.
    pub fn key_dir(&self, data_dir: &Path) -> PathBuf {
        self.key_dir
            .clone()
            .unwrap_or_else(|| crate::audit::default_key_dir(data_dir))
    }

    /// The witness file in force for `data_dir`.
    pub fn witness(&self, data_dir: &Path) -> PathBuf {
        self.witness
            .clone()
            .unwrap_or_else(|| self.key_dir(data_dir).join("witness.jsonl"))
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
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let (key, line) = locate_toml_error(&text, &e);
            ConfigError {
                file: file.clone(),
                key,
                message: e.message().to_string() + &line.map(|n| format!(" (line {n})")).unwrap_or_default(),
            }
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
        if let Some(p) = &mut self.storage.postgres.ca_bundle {
            fix(p);
        }
        self.dcc.trust_list.iter_mut().for_each(fix);
        if let Some(upstream) = &mut self.store.upstream {
            upstream.resolve_paths(base);
        }
        for p in [
            &mut self.catalogue.schema,
            &mut self.catalogue.purposes,
            &mut self.catalogue.connectors_dir,
            &mut self.audit.key_dir,
            &mut self.audit.witness,
            &mut self.dcc.dsc_cert,
            &mut self.dcc.dsc_key,
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
        // The keys and the witness are there to survive someone who can rewrite the data dir.
        let data_dir = &self.storage.data_dir;
        for (key, path) in [
            ("audit.key_dir", self.audit.key_dir(data_dir)),
            ("audit.witness", self.audit.witness(data_dir)),
        ] {
            if path.starts_with(data_dir) {
                return Err(err(
                    key,
                    format!(
                        "{} is inside storage.data_dir; keep it apart from the trail",
                        path.display()
                    ),
                ));
            }
        }
        if self.storage.backend == StorageBackend::Postgres {
            self.storage
                .postgres
                .validate()
                .map_err(|(key, m)| err(&format!("storage.postgres.{key}"), m))?;
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
        match (self.store.backend, &self.store.upstream) {
            (StoreBackend::Upstream, None) => {
                return Err(err(
                    "store.upstream",
                    "backend = \"upstream\" needs a [store.upstream] table (url, provider, certificates)"
                        .into(),
                ))
            }
            (StoreBackend::Upstream, Some(upstream)) => {
                upstream.check().map_err(|(key, m)| err(key, m))?;
            }
            (StoreBackend::Embedded, _) => {}
        }
        self.audit.check().map_err(|(key, m)| err(key, m))?;
        match (&self.dcc.dsc_cert, &self.dcc.dsc_key) {
            (Some(cert), Some(key)) => {
                must_exist("dcc.dsc_cert", cert)?;
                must_exist("dcc.dsc_key", key)?;
            }
            (None, None) => {}
            (Some(_), None) => return Err(err("dcc.dsc_key", "dcc.dsc_cert needs its key".into())),
            (None, Some(_)) => return Err(err("dcc.dsc_cert", "dcc.dsc_key needs its certificate".into())),
        }
        for p in &self.dcc.trust_list {
            must_exist("dcc.trust_list", p)?;
        }
        let issuer_chars = self.dcc.issuer.chars().count();
        if issuer_chars == 0 || issuer_chars > 80 {
            return Err(err("dcc.issuer", "must be 1 to 80 characters".into()));
        }
        if self.dcc.validity_days == 0 {
            return Err(err("dcc.validity_days", "must be greater than 0".into()));
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

/// The dotted key (`storage.cache_mb`) and the 1-based line a TOML error is about. toml reports an unknown
/// field with the span of its whole table and a type error with the span of the value, so the key is
/// read from serde's message where it names one, else from the line the span starts on; the table is the
/// nearest `[header]` above.
fn locate_toml_error(text: &str, e: &toml::de::Error) -> (String, Option<usize>) {
    let named = ["unknown field `", "missing field `"].iter().find_map(|prefix| {
        let rest = e.message().strip_prefix(prefix)?;
        Some(rest[..rest.find('`')?].to_string())
    });
    let Some(span) = e.span() else {
        return (named.unwrap_or_else(|| "(syntax)".into()), None);
    };
    let lines: Vec<&str> = text.lines().collect();
    let start_line = text[..span.start.min(text.len())].matches('\n').count();
    let table_at = |line: usize| {
        lines[..=line.min(lines.len().saturating_sub(1))]
            .iter()
            .rev()
            .find_map(|l| table_header(l))
            .unwrap_or_default()
    };
    let dotted = |table: &str, key: &str| match table {
        "" => key.to_string(),
        t => format!("{t}.{key}"),
    };
    match named {
        Some(key) => {
            // The key's own line inside the reported table, if it is written there.
            let table = table_at(start_line);
            let line = (start_line..lines.len())
                .take_while(|&n| n == start_line || table_header(lines[n]).is_none())
                .find(|&n| key_of_line(lines[n]) == Some(key.as_str()));
            (dotted(&table, &key), Some(line.unwrap_or(start_line) + 1))
        }
        None => match lines.get(start_line).and_then(|l| key_of_line(l)) {
            Some(key) => (dotted(&table_at(start_line), key), Some(start_line + 1)),
            None => ("(syntax)".into(), Some(start_line + 1)),
        },
    }
}

/// `storage` for a `[storage]` line.
fn table_header(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?.split(']').next()?;
    (!inner.starts_with('[')).then(|| inner.trim().to_string())
}

/// `cache_mb` for a `cache_mb = 256` line.
fn key_of_line(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#') && !key.starts_with('[')).then_some(key)
}

#[cfg(test)]
mod tests;
