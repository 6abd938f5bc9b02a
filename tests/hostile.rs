//! Issue 8: hostile input. Each attempt gets a clear 4xx (or a refused handshake), an audit entry where
//! a request exists to attach it to, no panic and no leaked citizen data. Raw TLS sockets are used where
//! a well-behaved client cannot misbehave on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestBroker, AN};
use lienthong::client::{Alpn, Response};
use lienthong::dev::certs::Validity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unicode_normalization::UnicodeNormalization;

const AN_NAME: &str = "Nguyễn Văn An";
const GENEROUS: Duration = Duration::from_secs(10);

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

fn tls_config(b: &TestBroker, cert_pem: &[u8], key_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(b.certs_dir().join("ca.pem")).unwrap();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(lienthong::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// An HTTP/1.1 connection over mTLS on which anything can be written.
async fn raw(b: &TestBroker, who: &str) -> Tls {
    let d = b.certs_dir();
    let cert = std::fs::read(d.join(format!("{who}.pem"))).unwrap();
    let key = std::fs::read(d.join(format!("{who}.key"))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(b, &cert, &key)));
    let tcp = TcpStream::connect(b.agency).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Everything the server sends until it closes the connection (panics if it never does).
async fn read_until_closed(tls: &mut Tls) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GENEROUS, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; got so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn request_id(r: &Response) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_string()
}

async fn entries(b: &TestBroker, query: &str) -> Vec<Value> {
    let page = b
        .admin_get(&format!("/admin/v1/audit/entries?limit=500&{query}"))
        .await
        .json();
    page["entries"].as_array().cloned().unwrap_or_default()
}

async fn entry_for(b: &TestBroker, rid: &str) -> Value {
    entries(b, "")
        .await
        .into_iter()
        .find(|e| e["request_id"] == rid)
        .unwrap_or_else(|| panic!("no audit entry for {rid}"))
}

/// Connection-level events are appended after the connection ends: wait for one to appear.
async fn wait_for_operation(b: &TestBroker, operation: &str) -> Value {
    for _ in 0..100 {
        if let Some(e) = entries(b, "")
            .await
            .into_iter()
            .find(|e| e["operation"] == operation)
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit entry with operation {operation}");
}

fn assert_refused(r: &Response, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (status, Some(code)),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(AN_NAME), "citizen data leaked: {}", r.text());
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_audited_but_idle_keepalive_is_not() {
    let b = TestBroker::start_with(|c| c.limits.header_read_timeout_ms = 300).await;
    // An idle connection that never begins a request times out quietly.
    let mut idle = raw(&b, "dvc").await;
    read_until_closed(&mut idle).await;

    let mut slow = raw(&b, "moh").await;
    slow.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    read_until_closed(&mut slow).await;
    let e = wait_for_operation(&b, "connection:header_timeout").await;
    assert_eq!(e["agency"], "moh");
    assert_eq!(e["status"], 408);
    assert_eq!(e["error_code"], "header_timeout");
    assert!(
        entries(&b, "agency=dvc").await.is_empty(),
        "an idle keep-alive close is not an attack"
    );
}

#[tokio::test]
async fn slowloris_body_gets_408_and_an_entry() {
    let b = TestBroker::start_with(|c| c.limits.request_timeout_ms = 300).await;
    let mut slow = raw(&b, "moh").await;
    slow.write_all(
        format!(
            "POST /v1/citizens/{AN}/vaccinations?purpose=vaccination-sync HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"dose"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_until_closed_or_answered(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let rid = header_value(&answer, "x-request-id");
    let e = entry_for(&b, &rid).await;
    assert_eq!(
        (e["agency"].as_str(), e["status"].as_u64()),
        (Some("moh"), Some(408))
    );
}

/// Issue 20, item 12: a declared length over the limit is refused at once, not after the body timeout.
#[tokio::test]
async fn a_declared_oversized_body_gets_413_at_once() {
    let b = TestBroker::start().await;
    let mut tls = raw(&b, "moh").await;
    tls.write_all(
        format!(
            "POST /v1/citizens/{AN}/vaccinations?purpose=vaccination-sync HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{{\"dose"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_closed_or_answered(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let e = entry_for(&b, &header_value(&answer, "x-request-id")).await;
    assert_eq!(e["status"], 413);
}

/// Read one response head and body (the server may keep the connection open after answering).
async fn read_until_closed_or_answered(tls: &mut Tls) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = header_value(head, "content-length").parse().unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match tokio::time::timeout(GENEROUS, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return text,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer; got so far: {text}"),
        }
    }
}

fn header_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn one_agency_cannot_hold_every_worker() {
    let b = TestBroker::start_with(|c| c.limits.max_concurrent_per_agency = 1).await;
    // moh's one slot is held by a request whose body never finishes.
    let mut holder = raw(&b, "moh").await;
    holder
        .write_all(
            format!(
                "POST /v1/citizens/{AN}/vaccinations?purpose=vaccination-sync HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    holder.flush().await.unwrap();
    let mut refused = None;
    for _ in 0..100 {
        let r = b.get("moh", "/v1/whoami").await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = refused.expect("the second concurrent moh request must be refused");
    assert_refused(&r, 429, "concurrency_limit");
    assert_eq!(r.headers["retry-after"], "1");
    let e = entry_for(&b, &request_id(&r)).await;
    assert_eq!(
        (e["agency"].as_str(), e["status"].as_u64()),
        (Some("moh"), Some(429))
    );
    assert_eq!(e["error_code"], "concurrency_limit");
    // Other agencies are unaffected, and the slot comes back when the holder goes away.
    assert_eq!(b.get("dvc", "/v1/whoami").await.status, 200);
    drop(holder);
    let mut freed = false;
    for _ in 0..100 {
        if b.get("moh", "/v1/whoami").await.status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the slot must be released when the connection drops");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let b = TestBroker::start().await;
    // Over the broker's limit: a 431 from the service, with its own audit entry.
    let mut tls = raw(&b, "moh").await;
    let big = "a".repeat(40 * 1024);
    let request = format!("GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed_or_answered(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.300}");
    assert!(answer.contains("headers_too_large") && !answer.contains("pccovid"));
    let e = entry_for(&b, &header_value(&answer, "x-request-id")).await;
    assert_eq!(
        (e["agency"].as_str(), e["status"].as_u64()),
        (Some("moh"), Some(431))
    );

    // Over hyper's buffer: hyper answers 431 and closes before any request exists; the connection
    // event is audited.
    let mut tls = raw(&b, "moh").await;
    let huge = "a".repeat(300 * 1024);
    let request = format!("GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n");
    // The server stops reading at its limit; the write may fail once it has answered.
    let _ = tls.write_all(request.as_bytes()).await;
    let _ = tls.flush().await;
    let answer = read_until_closed(&mut tls).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.300}"
    );
    let e = wait_for_operation(&b, "connection:headers_too_large").await;
    assert_eq!(
        (e["agency"].as_str(), e["status"].as_u64()),
        (Some("moh"), Some(431))
    );

    // A request line over hyper's URI limit: hyper answers 414; the entry says so (issue 20, item 13).
    let mut tls = raw(&b, "moh").await;
    let long = "a".repeat(70 * 1024);
    let request = format!("GET /v1/whoami?x={long} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let _ = tls.write_all(request.as_bytes()).await;
    let _ = tls.flush().await;
    let answer = read_until_closed(&mut tls).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 414"),
        "{answer:.300}"
    );
    let e = wait_for_operation(&b, "connection:uri_too_long").await;
    assert_eq!(e["status"].as_u64(), Some(414));
}

#[tokio::test]
async fn request_smuggling_is_refused_with_400_and_the_connection_closed() {
    let b = TestBroker::start().await;
    let attempts = [
        // CL.TE: both framings; the second request would hide in the body.
        "POST /v1/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n",
        // Two different Content-Lengths.
        "POST /v1/whoami HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        // An obfuscated Transfer-Encoding (whitespace before the colon).
        "POST /v1/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        // A Transfer-Encoding that does not end in chunked.
        "POST /v1/whoami HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for attempt in attempts {
        let mut tls = raw(&b, "moh").await;
        tls.write_all(attempt.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let answer = read_until_closed(&mut tls).await;
        // CL.TE: hyper lets Transfer-Encoding win (RFC 9112 §6.1), answers the one request (POST on
        // whoami: 405/404) and closes; the rest refuse the framing with 400.
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 40"),
            "{attempt:?} → {answer}"
        );
        assert!(
            !answer.contains("\"agency\""),
            "the smuggled request ran: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "exactly one answer, nothing smuggled: {answer}"
        );
    }
    let e = wait_for_operation(&b, "connection:malformed_request").await;
    assert_eq!(
        (e["agency"].as_str(), e["status"].as_u64()),
        (Some("moh"), Some(400))
    );
}

#[tokio::test]
async fn path_traversal_and_encoding_tricks_get_4xx_with_an_entry_and_no_data() {
    let b = TestBroker::start().await;
    let p = "purpose=public-service-prefill";
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("/v1/citizens/../../admin/v1/agencies?{p}"),
            405,
            "method_not_allowed",
        ),
        ("/admin/v1/agencies".into(), 404, "not_found"),
        ("/%2e%2e/%2e%2e/etc/passwd".into(), 404, "not_found"),
        (format!("//v1//citizens//{AN}?{p}"), 404, "not_found"),
        (
            format!("/v1/citizens/%30%30%31%30%39%30%30%30%30%30%30%31?{p}"),
            400,
            "invalid_citizen_id",
        ),
        (format!("/v1/citizens/{AN}%00?{p}"), 400, "invalid_citizen_id"),
        (
            format!("/v1/citizens/{AN}%2F..%2F..?{p}"),
            400,
            "invalid_citizen_id",
        ),
        (
            format!("/v1/citizens/{AN}/..%2f..%2fwhoami?{p}"),
            405,
            "method_not_allowed",
        ),
        (
            "/v1/purposes/..%2Fpurposes/release".into(),
            400,
            "unknown_purpose",
        ),
        (
            format!("/v1/citizens/{AN}?purpose=public-service-prefill%26fields%3Dphone"),
            400,
            "unknown_purpose",
        ),
        (
            format!("/v1/citizens/{AN}?purpose=public%2Dservice%2Dprefill&fields=phone"),
            403,
            "forbidden_field",
        ),
    ];
    for (path, status, code) in cases {
        let r = b.get("dvc", &path).await;
        assert_refused(&r, status, code);
        let e = entry_for(&b, &request_id(&r)).await;
        assert_eq!(e["status"].as_u64(), Some(status as u64), "{path}");
        assert_eq!(e["fields"], json!([]), "{path}");
    }
}

#[tokio::test]
async fn json_with_duplicate_keys_or_deep_nesting_is_refused_and_nothing_is_written() {
    let b = TestBroker::start().await;
    let path = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    let before = b.broker().store.get(AN).await.unwrap().unwrap();
    // The second source_record_id would slip past an idempotency check made on the first.
    let dup = r#"{"dose_number":1,"vaccine_code":"208","vaccine_name":"Comirnaty","date":"2021-09-01",
                  "source_record_id":"dup-1","source_record_id":"dup-2"}"#;
    let r = b.post_raw("moh", &path, "application/json", dup).await;
    assert_refused(&r, 400, "invalid_json");
    assert!(
        r.text().contains("source_record_id"),
        "names the key: {}",
        r.text()
    );
    assert_eq!(entry_for(&b, &request_id(&r)).await["error_code"], "invalid_json");

    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let r = b.post_raw("moh", &path, "application/json", deep).await;
    assert_refused(&r, 400, "too_deep");
    assert_eq!(entry_for(&b, &request_id(&r)).await["status"], 400);
    assert_eq!(b.broker().store.get(AN).await.unwrap().unwrap(), before);

    // The admin API parses the same way.
    let r = b
        .client("admin")
        .request(
            b.admin,
            hyper::Method::POST,
            "/admin/v1/agencies",
            Some("application/json"),
            r#"{"code":"bhxh","name":"x","code":"moh"}"#,
        )
        .await
        .unwrap();
    assert_refused(&r, 400, "invalid_json");
    assert!(b.broker().registry.get("bhxh").is_none());
}

#[tokio::test]
async fn qr_confusables_and_invisible_characters_never_match_a_citizen() {
    let b = TestBroker::start().await;
    let r = b
        .post(
            "vneid",
            "/v1/checkpoints?purpose=checkpoint-checkin",
            json!({ "id": "gate-1", "name": "Cổng 1", "address": "1 Lê Lợi", "kind": "agency" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let record = b.broker().store.get(AN).await.unwrap().unwrap();
    let qr = lienthong::dev::population::qr_payload(&record).unwrap();
    assert!(qr.contains(AN_NAME));
    let path = "/v1/checkpoints/gate-1/checkins?purpose=checkpoint-checkin";
    let cases = [
        // Cyrillic "А" (U+0410) looks like Latin "A": a different name, never folded into a match.
        (qr.replace(AN_NAME, "Nguyễn Văn \u{0410}n"), 409, "qr_mismatch"),
        // Greek omicron for "o"-like letters, and a Latin name without diacritics: different names.
        (qr.replace(AN_NAME, "Nguyen Van An"), 409, "qr_mismatch"),
        // Invisible characters and bidi overrides are refused outright.
        (
            qr.replace(AN_NAME, "Nguyễn Văn\u{200D} An"),
            400,
            "invalid_qr_payload",
        ),
        (
            qr.replace(AN_NAME, "\u{202E}nA năV nễyugN"),
            400,
            "invalid_qr_payload",
        ),
        (qr.replacen('|', "\u{FEFF}|", 1), 400, "invalid_qr_payload"),
        (qr.replace(AN_NAME, &"x".repeat(2000)), 400, "invalid_qr_payload"),
    ];
    for (payload, status, code) in cases {
        let r = b.post("vneid", path, json!({ "qr": payload })).await;
        assert_refused(&r, status, code);
        let e = entry_for(&b, &request_id(&r)).await;
        assert_eq!(e["status"].as_u64(), Some(status as u64));
    }
    // The normalisation rule: NFC, trimmed, whitespace runs collapsed, case folded; diacritics count.
    let nfd: String = AN_NAME.nfd().collect();
    assert!(lienthong::qr::names_match(
        AN_NAME,
        &format!("  {}  ", nfd.to_uppercase())
    ));
    assert!(lienthong::qr::names_match(AN_NAME, "Nguyễn\t Văn  An"));
    assert!(!lienthong::qr::names_match(AN_NAME, "Nguyễn Văn Ân"));
    assert!(!lienthong::qr::names_match(AN_NAME, "Nguyễn Văn \u{0410}n"));
    let r = b
        .post("vneid", path, json!({ "qr": qr.replace(AN_NAME, &nfd) }))
        .await;
    assert_eq!(r.status, 201, "NFD is the same name: {}", r.text());
}

#[tokio::test]
async fn tampered_client_chains_fail_the_handshake() {
    let b = TestBroker::start().await;
    let d = b.certs_dir();
    let key = std::fs::read(d.join("moh.key")).unwrap();
    // A registered certificate with one byte of its signature changed.
    let pem = std::fs::read(d.join("moh.pem")).unwrap();
    let mut der = CertificateDer::from_pem_slice(&pem).unwrap().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_of(&der);
    // A rogue CA with the same name as the broker's, and a "moh" leaf it signed.
    let rogue = lienthong::dev::certs::CertAuthority::generate("lienthong development CA").unwrap();
    let forged = rogue.issue_client("moh", "Bộ Y tế", Validity::days(30)).unwrap();
    let forged_chain = format!("{}{}", forged.cert_pem, rogue.cert_pem());
    for (cert, key) in [
        (tampered.into_bytes(), key.clone()),
        (forged_chain.into_bytes(), forged.key_pem.clone().into_bytes()),
    ] {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&b, &cert, &key)));
        let tcp = TcpStream::connect(b.agency).await.unwrap();
        let outcome = async {
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await?;
            // TLS 1.3 reports a refused client certificate on the first read.
            tls.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut buf = [0u8; 64];
            let n = tls.read(&mut buf).await?;
            Ok::<usize, std::io::Error>(n)
        }
        .await;
        assert!(
            matches!(outcome, Err(_) | Ok(0)),
            "a tampered chain must never be served"
        );
    }
}

fn pem_of(der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap());
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn subject_or_san_claiming_an_agency_code_gains_nothing() {
    let b = TestBroker::start().await;
    let d = b.certs_dir();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(d.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(d.join("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["moh".to_string(), "moh.gov.vn".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "moh");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Bộ Y tế");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let spoof = lienthong::dev::certs::IssuedCert {
        fingerprint: lienthong::identity::fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: Vec::new(),
    };
    let r = b
        .client_with(&spoof, Alpn::Both)
        .get(b.agency, &format!("/v1/citizens/{AN}?purpose=vaccination-sync"))
        .await
        .unwrap();
    assert_refused(&r, 403, "unknown_agency");
    let e = entry_for(&b, &request_id(&r)).await;
    assert_eq!(e["agency"], Value::Null);
    assert_eq!(e["cert_fingerprint"], spoof.fingerprint);
}

/// A hand-made ClientHello: `version` in the record and hello, the given cipher suites, no extensions.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    let mut hs = vec![1u8, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, version[0], version[1]];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn old_protocol_versions_and_weak_suites_are_refused() {
    let b = TestBroker::start().await;
    let weak = [
        0x0005, // RC4-SHA
        0x000a, // DES-CBC3-SHA
        0x002f, // AES128-SHA (RSA key exchange)
        0x0035, // AES256-SHA
        0x003c, // AES128-SHA256
        0x009c, // AES128-GCM-SHA256 (RSA key exchange, no forward secrecy)
    ];
    for (version, suites) in [
        ([3u8, 0u8], &weak[..]),     // SSL 3.0
        ([3, 1], &weak[..]),         // TLS 1.0
        ([3, 2], &weak[..]),         // TLS 1.1
        ([3, 3], &weak[..]),         // TLS 1.2, weak suites only
        ([3, 1], &[0xc02f_u16][..]), // TLS 1.0 with a strong suite
    ] {
        let mut tcp = TcpStream::connect(b.agency).await.unwrap();
        tcp.write_all(&client_hello(version, suites)).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(GENEROUS, tcp.read(&mut buf))
            .await
            .expect("the server answers or closes")
            .unwrap_or(0);
        assert!(
            n == 0 || buf[0] == 0x15,
            "{version:?}: expected an alert or a close, got {:?}",
            &buf[..n]
        );
    }
}

#[tokio::test]
async fn hostile_xml_gets_a_soap_fault_an_entry_and_no_data() {
    let b = TestBroker::start().await;
    let dvc = "/connectors/dvc/v1/TraCuuThongTinCongDan";
    let good = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/examples/dvc-tra-cuu.xml"),
    )
    .unwrap();
    let r = b.post_raw("dvc", dvc, "text/xml", good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let prolog = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>";
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>";
    let deep = format!("{}{}", "<x>".repeat(10_000), "</x>".repeat(10_000));
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace(prolog, laughs).replace("Nguyễn Văn An", "&c;"),
            "xml_doctype_refused",
        ),
        (
            good.replace(prolog, xxe).replace("Nguyễn Văn An", "&x;"),
            "xml_doctype_refused",
        ),
        (good.replace("Nguyễn Văn An", "&x;"), "xml_entity_refused"),
        (
            good.replace("<soap:Header/>", &format!("<soap:Header>{deep}</soap:Header>")),
            "too_deep",
        ),
        (
            good.replace(
                "<soap:Header/>",
                &format!("<soap:Header a=\"{}\"/>", "x".repeat(100_000)),
            ),
            "xml_too_large",
        ),
    ];
    for (body, code) in cases {
        let r = b.post_raw("dvc", dvc, "text/xml", body).await;
        assert!(
            (400..500).contains(&r.status),
            "{code}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            r.text().contains("<soap:Fault>") && r.text().contains(code),
            "{}",
            r.text()
        );
        assert!(
            !r.text().contains(AN_NAME) && !r.text().contains("root:"),
            "{}",
            r.text()
        );
        let e = entry_for(&b, &request_id(&r)).await;
        assert_eq!(e["status"].as_u64(), Some(r.status as u64), "{code}");
        assert_eq!(e["fields"], json!([]));
    }
}
