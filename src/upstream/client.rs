//! The broker's HTTPS client towards the provider: hyper-util's pooled client (keep-alive connections,
//! HTTP/2 when the provider's ALPN offers it) over rustls, presenting the broker's own client certificate
//! and trusting only the provider's CA. One call = one request with a per-call timeout; what went wrong
//! is classified so that the store can answer 502, 503 or 504 and decide whether to retry.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::UpstreamConfig;

/// The largest answer read from the provider; a bigger one is a malformed answer.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What went wrong with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, reset before sending, unreachable (503; retried).
    Unavailable(String),
    /// No answer within the per-call timeout (504; retried).
    Timeout,
    /// The TLS handshake failed: the provider's certificate is not trusted, or it refused ours (502;
    /// never retried: it will not fix itself).
    Tls(String),
    /// The request went out and the connection broke before the whole answer came back: the provider
    /// may or may not have acted on it (502; retried only because every call is idempotent).
    Lost(String),
}

impl Failure {
    /// The `kind` label of `lienthong_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unavailable(_) => "unavailable",
            Failure::Timeout => "timeout",
            Failure::Tls(_) => "tls",
            Failure::Lost(_) => "connection_lost",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(e) => write!(f, "provider unreachable: {e}"),
            Failure::Timeout => f.write_str("no answer within the timeout"),
            Failure::Tls(e) => write!(f, "TLS with the provider failed: {e}"),
            Failure::Lost(e) => write!(f, "connection lost before the answer: {e}"),
        }
    }
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body (at most [`MAX_ANSWER_BYTES`]).
    pub body: Bytes,
}

/// The pooled mTLS client for one provider.
pub struct ProviderClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

/// Why the client could not be built (config-time: names the file).
pub fn credentials_error(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl ProviderClient {
    /// Build from the config: the broker's client certificate and key, the provider's CA, pool size,
    /// connect and per-call timeouts.
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let read =
            |what: &str, p: &std::path::Path| std::fs::read(p).map_err(|e| credentials_error(what, p, e));
        let ca = read("store.upstream.ca_bundle", &config.ca_bundle)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert =
                cert.map_err(|e| credentials_error("store.upstream.ca_bundle", &config.ca_bundle, e))?;
            roots
                .add(cert)
                .map_err(|e| credentials_error("store.upstream.ca_bundle", &config.ca_bundle, e))?;
        }
        if roots.is_empty() {
            return Err(credentials_error(
                "store.upstream.ca_bundle",
                &config.ca_bundle,
                "no certificate in it",
            ));
        }
        let chain = CertificateDer::pem_slice_iter(&read("store.upstream.client_cert", &config.client_cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| credentials_error("store.upstream.client_cert", &config.client_cert, e))?;
        let key = PrivateKeyDer::from_pem_slice(&read("store.upstream.client_key", &config.client_key)?)
            .map_err(|e| credentials_error("store.upstream.client_key", &config.client_key, e))?;
        let tls = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| credentials_error("store.upstream.client_key", &config.client_key, e))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_size)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Self {
            client,
            base: config.url.trim_end_matches('/').to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// One request, the whole answer read within the per-call timeout.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<Answer, Failure> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| Failure::Unavailable(format!("bad request URI: {e}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT, content_type);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(t) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
            builder = builder.header("traceparent", t);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Unavailable(format!("request: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(classify)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::Lost(e.to_string()))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Sort a client error: a failed connect (refused, or a TLS handshake the certificates do not allow)
/// from a connection lost after the request went out.
fn classify(e: hyper_util::client::legacy::Error) -> Failure {
    let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
    match std::error::Error::source(&e).and_then(rustls_cause) {
        Some(tls) => Failure::Tls(tls),
        None if e.is_connect() => Failure::Unavailable(detail),
        None => Failure::Lost(detail),
    }
}

/// The rustls error somewhere in `e`'s chain. An `io::Error` wrapping another error hides it from
/// `source()` (which skips to the wrapped error's own source), so wrapped errors are opened too.
fn rustls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if let Some(wrapped) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        if let Some(found) = rustls_cause(wrapped) {
            return Some(found);
        }
    }
    e.source().and_then(rustls_cause)
}
