//! The baseline: a bare hyper 1 + rustls server with the broker's own TLS and hyper settings, answering
//! every request with a fixed JSON body (`lienthong bench --serve-baseline ADDR`, run as a child).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::dev::demo::DemoOptions;

/// A fixed JSON body of exactly `size` bytes (at least the bytes of the smallest such JSON).
pub fn baseline_body(size: usize) -> Bytes {
    let head = r#"{"purpose":"public-service-prefill","citizen":{"pad":""#;
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size);
    s.push_str(head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    Bytes::from(s)
}

/// The baseline: hyper 1 + rustls with the broker's TLS material and settings (same CA, CRL, versions,
/// ALPN; stock rustls client verification, without the broker's memory of verified chains) and
/// the broker's hyper settings, answering every request (body read in full) with `body_bytes` of JSON.
/// Runs until `shutdown` resolves.
pub async fn serve_baseline(
    certs_dir: &Path,
    listener: TcpListener,
    body_bytes: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let config = crate::dev::demo::demo_config(&DemoOptions {
        certs_dir: certs_dir.to_path_buf(),
        ..DemoOptions::default()
    });
    let tls = crate::tls::server_config(&config.tls).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let body = baseline_body(body_bytes);
    let builder = Arc::new(crate::server::http_builder(&config.limits));
    let accept = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut resp = Response::new(Full::new(body));
                        let h = resp.headers_mut();
                        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        h.insert(
                            HeaderName::from_static("x-request-id"),
                            HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    #[test]
    fn baseline_body_has_the_exact_size_and_is_json() {
        for size in [0, 10, 60, 61, 1000, 4096] {
            let b = baseline_body(size);
            let min = baseline_body(0).len();
            assert_eq!(b.len(), size.max(min));
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert!(v["citizen"].is_object());
        }
    }
}
