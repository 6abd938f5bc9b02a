//! Stage: listener, the moment before and after the TLS handshake, where a confused client would
//! otherwise get only a cryptic error (curl: "Received HTTP/0.9", "getpeername() failed"):
//! - a plaintext HTTP request on a TLS port is answered with a short plain-text 400 saying what the
//!   port speaks (as nginx's 497 does); every TLS connection starts with a handshake record (0x16),
//!   an HTTP request with an ASCII method name, so the first byte tells them apart;
//! - a refused handshake and a certificate bound to no agency are logged with what the operator should
//!   check.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::PeerIdentity;

/// The body of the answer to a plaintext request.
pub const PLAINTEXT_MESSAGE: &str = "This port speaks HTTPS with client certificates. Use https:// and \
present your agency's certificate, e.g. curl --cacert ca.pem --cert agency.pem --key agency.key https://…\n";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a new connection's first byte said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Anything but plaintext HTTP (a TLS record, EOF, an error): the handshake deals with it.
    Handshake,
    /// Plaintext HTTP: answered with a plain-text 400 and closed.
    AnsweredPlaintext,
    /// Nothing arrived within the handshake timeout.
    Silent,
}

/// Wait for the client's first byte (within `patience`) without consuming it. If it starts a plaintext
/// HTTP request, read the request head, answer 400 in plain text and close; otherwise leave every byte
/// for the TLS handshake.
pub async fn sniff_opening(tcp: &mut TcpStream, patience: Duration) -> Opening {
    let mut first = [0u8; 1];
    match tokio::time::timeout(patience, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase() => {}
        Ok(_) => return Opening::Handshake,
        Err(_) => return Opening::Silent,
    }
    // Read the request head first: closing with unread bytes would reset the connection and the client
    // would never see the answer.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{PLAINTEXT_MESSAGE}",
        PLAINTEXT_MESSAGE.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
    tracing::info!(
        "plaintext HTTP on a TLS port: answered 400 (the client should use https:// and a client certificate)"
    );
    Opening::AnsweredPlaintext
}

/// Close a connection whose client certificate was refused so that the client sees why. In TLS 1.3 a
/// client considers the handshake done once it has sent its certificate, and sends its request at
/// once; closing straight away resets the connection under that request, and the client reports a
/// socket error ("getpeername() failed") instead of the alert rustls sent (`certificate required`,
/// `unknown ca`…). So read what it sends for a moment (at most 64 KiB, 500 ms), then close.
pub async fn close_after_refusal(mut tcp: TcpStream, reason: &str) {
    let certificate_refused = matches!(
        reason,
        "no_client_certificate"
            | "unknown_ca"
            | "certificate_expired"
            | "certificate_not_yet_valid"
            | "certificate_revoked"
            | "bad_signature"
            | "bad_certificate"
    );
    if !certificate_refused {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = tcp.flush().await;
        let mut buf = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    let _ = tcp.shutdown().await;
}

/// What the operator should check after a refused handshake, by the reason counted in the metrics
/// (`metrics::handshake_failure_reason`).
pub fn handshake_hint(reason: &str) -> &'static str {
    match reason {
        "no_client_certificate" => {
            "the client presented no certificate: every client needs one issued by a CA in tls.ca_bundle \
             (curl: --cert FILE --key FILE)"
        }
        "unknown_ca" => {
            "the client certificate is not issued by a CA in tls.ca_bundle: add its CA to the bundle and \
             POST /admin/v1/tls/reload, or issue it from that CA"
        }
        "certificate_expired" | "certificate_not_yet_valid" => {
            "the client certificate is outside its validity period (or a clock is wrong): issue a new one"
        }
        "certificate_revoked" => "the client certificate is revoked by a CRL in tls.crls",
        "bad_signature" | "bad_certificate" => {
            "the client certificate is malformed or not signed by the CA it names"
        }
        "incompatible" => "the client offers no TLS 1.2/1.3 cipher suite or protocol version we accept",
        "alert_received" => {
            "the client aborted: it probably does not trust our server certificate (give it tls.ca_bundle's CA)"
        }
        "eof" | "reset" => "the client closed the connection during the handshake",
        _ => "not a TLS client, or a broken one",
    }
}

/// A verified certificate that no agency is bound to: its requests get 403 `unknown_agency`. Logged once
/// per connection with what to do about it.
pub fn log_unbound_certificate(peer: &PeerIdentity) {
    tracing::warn!(
        subject = %peer.subject,
        fingerprint = %peer.fingerprint_sha256,
        "client certificate valid but bound to no agency (403 unknown_agency): bind it with \
         `lienthong agency bind CODE --fingerprint {}` or register an agency with it",
        peer.fingerprint_sha256
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_reason_has_a_specific_hint() {
        for reason in [
            "no_client_certificate",
            "unknown_ca",
            "certificate_expired",
            "certificate_revoked",
            "alert_received",
        ] {
            assert_ne!(handshake_hint(reason), handshake_hint("other"), "{reason}");
        }
    }
}
