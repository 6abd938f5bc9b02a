//! `[store.upstream]`: the provider system an upstream-mode broker reads and writes citizens at.

use std::path::PathBuf;

use serde::Deserialize;

/// The provider files shipped in the binary, by file name (`store.upstream.provider` may name one of
/// them instead of a path).
pub const EMBEDDED: [(&str, &str); 2] = [
    (
        "lienthong-rest.toml",
        include_str!("../../providers/lienthong-rest.toml"),
    ),
    (
        "qcvn109-soap.toml",
        include_str!("../../providers/qcvn109-soap.toml"),
    ),
];

/// `[store.upstream]`: where the provider is and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The provider's base URL, `https://host:port` (paths come from the provider file).
    pub url: String,
    /// The provider file (`providers/*.toml`), or the name of a shipped one (`lienthong-rest.toml`).
    pub provider: PathBuf,
    /// PEM CA bundle the provider's server certificate must chain to.
    pub ca_bundle: PathBuf,
    /// PEM certificate chain the broker presents to the provider.
    pub client_cert: PathBuf,
    /// PEM private key of `client_cert`.
    pub client_key: PathBuf,
    /// Time allowed for one call (connect, request, whole answer), in milliseconds: 504 past it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Time allowed to open a TCP connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Retries after a failed call (refused, timed out, connection lost, provider 5xx): reads, and writes
    /// (idempotent on `source_record_id`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Idle keep-alive connections kept open to the provider.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Failures in a row that open the circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe, in milliseconds.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// How often the provider's health path is probed (for `/healthz` and metrics), in milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

fn default_timeout_ms() -> u64 {
    2_000
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_retries() -> u32 {
    2
}
fn default_pool_size() -> usize {
    32
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5_000
}
fn default_probe_interval_ms() -> u64 {
    2_000
}

impl UpstreamConfig {
    /// Make relative paths absolute against `base` (the config file's folder). A provider named like a
    /// shipped file that does not exist there stays a name.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.ca_bundle, &mut self.client_cert, &mut self.client_key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let joined = base.join(&self.provider);
        if self.provider.is_relative() && (joined.exists() || self.provider.components().count() > 1) {
            self.provider = joined;
        }
    }

    /// What the types cannot say: `(key, message)` of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let uri: hyper::Uri = self
            .url
            .parse()
            .map_err(|e| ("store.upstream.url", format!("{:?} is not a URL: {e}", self.url)))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err((
                "store.upstream.url",
                format!(
                    "{:?}: the provider is reached over https://host:port only",
                    self.url
                ),
            ));
        }
        for (key, p) in [
            ("store.upstream.ca_bundle", &self.ca_bundle),
            ("store.upstream.client_cert", &self.client_cert),
            ("store.upstream.client_key", &self.client_key),
        ] {
            if !p.is_file() {
                return Err((key, format!("file not found: {}", p.display())));
            }
        }
        let shipped = EMBEDDED
            .iter()
            .any(|(name, _)| std::path::Path::new(name) == self.provider);
        if !shipped && !self.provider.is_file() {
            return Err((
                "store.upstream.provider",
                format!("file not found: {}", self.provider.display()),
            ));
        }
        for (key, v) in [
            ("store.upstream.timeout_ms", self.timeout_ms),
            ("store.upstream.connect_timeout_ms", self.connect_timeout_ms),
            ("store.upstream.breaker_open_ms", self.breaker_open_ms),
            ("store.upstream.probe_interval_ms", self.probe_interval_ms),
        ] {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.pool_size == 0 {
            return Err(("store.upstream.pool_size", "must be greater than 0".into()));
        }
        Ok(())
    }
}
