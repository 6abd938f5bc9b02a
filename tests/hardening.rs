//! Issue 20: what an outside security test found. Each test reproduces one finding over real mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestBroker;
use hyper::Method;
use lienthong::certs::{CertAuthority, Validity};
use lienthong::client::Alpn;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

async fn agency_status(b: &TestBroker, code: &str) -> String {
    let r = b.admin_get(&format!("/admin/v1/agencies/{code}")).await;
    r.json()["agency"]["status"].as_str().unwrap().to_string()
}

/// Finding 1: a page the operator visits posts a form to the admin API; the browser adds the imported
/// admin certificate. Whatever the body, no state-changing admin request from another site is obeyed.
#[tokio::test]
async fn cross_site_requests_cannot_drive_the_admin_api() {
    let b = TestBroker::start().await;
    let admin = b.client("admin");
    let form = ("content-type", "application/x-www-form-urlencoded");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let attempts: Vec<(Headers, u16, &str)> = vec![
        // What a browser sends for a cross-site form post.
        (
            vec![
                form,
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            403,
            "cross_origin",
        ),
        (
            vec![form, ("origin", "https://evil.example")],
            403,
            "cross_origin",
        ),
        (vec![form, ("sec-fetch-site", "same-site")], 403, "cross_origin"),
        // An older browser that sends neither header still cannot set a JSON content type on a form.
        (vec![form], 415, "unsupported_media_type"),
        (
            vec![("content-type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (vec![], 415, "unsupported_media_type"),
        // Even a JSON content type is refused from another site (a preflight would be needed anyway).
        (
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
            403,
            "cross_origin",
        ),
    ];
    for path in [
        "/admin/v1/agencies/pccovid/suspend",
        "/admin/v1/tls/reload",
        "/admin/v1/agencies",
    ] {
        for (headers, status, code) in &attempts {
            let r = admin
                .request_with_headers(b.admin, Method::POST, path, headers, "x=1")
                .await
                .unwrap();
            assert_eq!(r.status, *status, "{path} {headers:?}: {}", r.text());
            assert_eq!(r.error_code().as_deref(), Some(*code), "{path} {headers:?}");
        }
    }
    assert_eq!(agency_status(&b, "pccovid").await, "active");

    // The CLI and scripts (no browser headers, JSON content type) still work, with or without a body.
    let r = admin
        .request_with_headers(
            b.admin,
            Method::POST,
            "/admin/v1/agencies/pccovid/suspend",
            &[("content-type", "application/json")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agency_status(&b, "pccovid").await, "suspended");

    // The refusals were audited.
    let r = b.admin_get("/admin/v1/audit/entries?limit=500").await;
    let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["error_code"] == "cross_origin"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn cli_suspend_and_unbind_still_work_without_a_body() {
    let b = TestBroker::start().await;
    let r = b
        .client("admin")
        .request(
            b.admin,
            Method::DELETE,
            "/admin/v1/agencies/moh/certificates/00",
            None,
            "",
        )
        .await
        .unwrap();
    // Not a CSRF refusal: DELETE needs a preflight a cross-site page never gets.
    assert_ne!(
        r.error_code().as_deref(),
        Some("unsupported_media_type"),
        "{}",
        r.text()
    );
    assert_ne!(r.error_code().as_deref(), Some("cross_origin"), "{}", r.text());
}

/// Publish `crl` as the broker's CRL file and ask for a reload.
async fn push_crl(b: &TestBroker, crl: &str) -> lienthong::client::Response {
    std::fs::write(b.certs_dir().join("crl.pem"), crl).unwrap();
    b.admin_post("/admin/v1/tls/reload", json!({})).await
}

/// Finding 2: an empty CRL under the CA's name but signed by another key used to be taken, and every
/// handshake on both listeners then failed (`BadSignature`) until a restart.
#[tokio::test]
async fn a_crl_with_a_bad_signature_is_refused_and_locks_nobody_out() {
    let b = TestBroker::start().await;
    let forger = CertAuthority::generate("lienthong development CA").unwrap();
    let forged = forger.crl(&[], 9).unwrap();

    let r = push_crl(&b, &forged).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("tls_reload_failed"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("crl.pem") && message.contains("signature"),
        "{message}"
    );
    // The old config stays in force on both listeners.
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
    assert_eq!(b.admin_get("/admin/v1/agencies").await.status, 200);

    // check-config and start-up refuse it too, naming the file.
    let tls = b.broker().config.tls.clone();
    let err = lienthong::tls::build(&tls).err().expect("forged CRL refused");
    assert!(err.to_string().contains("crl.pem"), "{err}");
    let dir = b.stop().await;
    let err = TestBroker::try_start_in_with(dir, |_| {})
        .await
        .err()
        .expect("start refused");
    assert!(format!("{err}").contains("crl.pem"), "{err}");
}

/// Finding 2 (low): a CRL with a lower number than the running one silently un-revoked a certificate.
#[tokio::test]
async fn an_older_crl_cannot_roll_back_a_revocation() {
    let b = TestBroker::start().await;
    let cert = b.issue("moh-2", Validity::days(30));
    let r = b
        .admin_post(
            "/admin/v1/agencies/moh/certificates",
            json!({ "certificate_pem": cert.cert_pem }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = b.client_with(&cert, Alpn::Both);
    let r = push_crl(&b, &b.ca().crl(std::slice::from_ref(&cert.serial), 5).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.get(b.agency, "/v1/whoami").await.is_err());

    let r = push_crl(&b, &b.ca().crl(&[], 3).unwrap()).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("tls_reload_failed"));
    assert!(r.text().contains("lower"), "{}", r.text());
    assert!(c.get(b.agency, "/v1/whoami").await.is_err(), "still revoked");

    // A newer CRL is taken.
    let r = push_crl(&b, &b.ca().crl(&[], 6).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 200);
}

/// Finding 2 (low): a CRL past its nextUpdate is still used, but the operator is told.
#[tokio::test]
async fn a_stale_crl_is_used_with_a_warning_metric() {
    let b = TestBroker::start().await;
    let metric = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("lienthong_crl_stale "))
            .map(str::to_string)
    };
    let text = b.admin_get("/metrics").await.text();
    assert_eq!(metric(&text).as_deref(), Some("lienthong_crl_stale 0"), "{text}");
    let stale = b.ca().crl_until(&[], 7, time::Duration::days(-1)).unwrap();
    let r = push_crl(&b, &stale).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = b.admin_get("/metrics").await.text();
    assert_eq!(metric(&text).as_deref(), Some("lienthong_crl_stale 1"), "{text}");
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}

/// Finding 2: the admin listener pins operators by fingerprint and takes no agency CRL, so no CRL can
/// lock operators out of the API that replaces it.
#[tokio::test]
async fn the_admin_listener_does_not_depend_on_agency_crls() {
    let b = TestBroker::start().await;
    let admin_serial = {
        let pem = std::fs::read(b.certs_dir().join("admin.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        cert.raw_serial().to_vec()
    };
    let moh_serial = {
        let pem = std::fs::read(b.certs_dir().join("moh.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        cert.raw_serial().to_vec()
    };
    let r = push_crl(&b, &b.ca().crl(&[admin_serial, moh_serial], 4).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.client("moh").get(b.agency, "/v1/whoami").await.is_err());
    // The operator can still push the CRL that undoes a mistake.
    let r = push_crl(&b, &b.ca().crl(&[], 5).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}
