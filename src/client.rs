//! A small mTLS HTTP client (rustls + hyper) for the CLI's admin commands, the integration tests and the
//! benchmark harness. It speaks HTTP/1.1 or HTTP/2 as ALPN decides, presents a client certificate, and
//! trusts only the given CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A client-side failure: TLS, connection or HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Certificates or keys could not be read.
    #[error("client credentials: {0}")]
    Credentials(String),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (e.g. the broker refused the client certificate).
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    /// HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Which HTTP versions to offer in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Offer `h2` and `http/1.1`; the server picks (it prefers h2).
    Both,
    /// Offer only `http/1.1`.
    Http1,
    /// Offer only `h2`.
    Http2,
}

/// An answer, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// The HTTP version used.
    pub version: hyper::Version,
}

impl Response {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The stable error code of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }
}

/// A configured client: trust anchor, optional client certificate, ALPN choice.
#[derive(Clone)]
pub struct MtlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

/// One open connection; requests on it reuse the TLS session (keep-alive or h2 multiplexing).
pub enum Connection {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl MtlsClient {
    /// Build from PEM bytes. `identity` is the client certificate chain and key, if any.
    pub fn from_pem(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        alpn: Alpn,
    ) -> Result<Self, ClientError> {
        Self::from_pem_with_versions(ca_pem, identity, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// As [`MtlsClient::from_pem`], offering only the given TLS versions.
    pub fn from_pem_with_versions(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        alpn: Alpn,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Self, ClientError> {
        let cred = |e: &dyn std::fmt::Display| ClientError::Credentials(e.to_string());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.map_err(|e| cred(&e))?).map_err(|e| cred(&e))?;
        }
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .map_err(|e| cred(&e))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| cred(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| cred(&e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| cred(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match alpn {
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
        };
        let server_name = ServerName::try_from("localhost").map_err(|e| cred(&e))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Build from PEM files: CA bundle, client certificate, client key.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, alpn: Alpn) -> Result<Self, ClientError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::Credentials(format!("{}: {e}", p.display())))
        };
        Self::from_pem(&read(ca)?, Some((&read(cert)?, &read(key)?)), alpn)
    }

    /// The name the server certificate must carry (default `localhost`).
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ClientError> {
        self.server_name =
            ServerName::try_from(name.to_string()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(self)
    }

    /// Open a connection: TCP, TLS handshake, HTTP handshake per the negotiated ALPN.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let tcp = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ClientError::Handshake)?;
        Connection::over_tls(tls).await
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut conn = self.connect(addr).await?;
        conn.send(method, path, content_type, body.into()).await
    }

    /// One request with arbitrary headers on a fresh connection (tests of what browsers add).
    pub async fn request_with_headers(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut conn = self.connect(addr).await?;
        conn.send_with_headers(method, path, headers, body.into()).await
    }

    /// GET on a fresh connection.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Response, ClientError> {
        self.request(addr, Method::GET, path, None, Bytes::new()).await
    }

    /// POST JSON on a fresh connection.
    pub async fn post_json(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ClientError> {
        self.request(
            addr,
            Method::POST,
            path,
            Some("application/json"),
            body.to_string(),
        )
        .await
    }
}

impl Connection {
    /// The HTTP handshake on an established TLS session, in the version ALPN chose.
    pub async fn over_tls(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Result<Self, ClientError> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Connection::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Connection::H1(sender))
        }
    }

    /// Send one request and read the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let headers: &[(&str, &str)] = match content_type {
            Some(ct) => &[("content-type", ct)],
            None => &[],
        };
        self.send_with_headers(method, path, headers, body).await
    }

    /// Send one request with the given headers and read the whole answer.
    pub async fn send_with_headers(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let mut builder = Request::builder().method(method);
        builder = match self {
            // HTTP/2 needs an absolute URI (the :authority pseudo-header); HTTP/1.1 sends a Host header.
            Connection::H2(_) => builder.uri(format!("https://localhost{path}")),
            Connection::H1(_) => builder.uri(path).header(hyper::header::HOST, "localhost"),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body))?;
        let response = match self {
            Connection::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Connection::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }
}
