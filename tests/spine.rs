//! Issue 2: the spine. mTLS outcomes, registry changes through the admin API (live and after a
//! restart), both HTTP versions, health checks and configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestBroker;
use lienthong::client::{Alpn, MtlsClient};
use lienthong::dev::certs::{CertAuthority, Validity};
use serde_json::json;

#[tokio::test]
async fn health_on_both_listeners_over_http1_and_http2() {
    let b = TestBroker::start().await;
    for alpn in [Alpn::Http1, Alpn::Http2] {
        let d = b.certs_dir();
        let c =
            MtlsClient::from_files(&d.join("ca.pem"), &d.join("moh.pem"), &d.join("moh.key"), alpn).unwrap();
        let r = c.get(b.agency, "/healthz").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "ok");
        let expected = if alpn == Alpn::Http2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        };
        assert_eq!(r.version, expected);
        let r = c.get(b.admin, "/healthz").await.unwrap();
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn registered_agency_is_identified_by_its_certificate() {
    let b = TestBroker::start().await;
    let r = b.get("pccovid", "/v1/whoami").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["agency"], "pccovid");
    assert!(body["certificate"]["subject"]
        .as_str()
        .unwrap()
        .contains("CN=pccovid"));
    assert_eq!(
        body["certificate"]["fingerprint_sha256"].as_str().unwrap().len(),
        64
    );
    assert!(r.headers.get("x-request-id").is_some());
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_fails_the_handshake() {
    let b = TestBroker::start().await;
    let rogue_ca = CertAuthority::generate("rogue CA").unwrap();
    let rogue = rogue_ca
        .issue_client("moh", "Bộ Y tế", Validity::days(30))
        .unwrap();
    let c = b.client_with(&rogue, Alpn::Both);
    assert!(c.get(b.agency, "/healthz").await.is_err(), "handshake must fail");
    assert!(
        c.get(b.admin, "/healthz").await.is_err(),
        "handshake must fail on admin too"
    );
}

#[tokio::test]
async fn expired_certificate_fails_the_handshake() {
    let b = TestBroker::start().await;
    let expired = b.issue("expired", Validity::expired());
    // Even bound to an active agency, an expired certificate never gets past TLS.
    let r = b
        .admin_post(
            "/admin/v1/agencies/moh/certificates",
            json!({ "fingerprint": expired.fingerprint }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b
        .client_with(&expired, Alpn::Both)
        .get(b.agency, "/v1/whoami")
        .await
        .is_err());
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let b = TestBroker::start().await;
    let ca = std::fs::read(b.certs_dir().join("ca.pem")).unwrap();
    let anonymous = MtlsClient::from_pem(&ca, None, Alpn::Both).unwrap();
    assert!(anonymous.get(b.agency, "/healthz").await.is_err());
}

#[tokio::test]
async fn revoked_certificate_fails_the_handshake_after_crl_reload() {
    let b = TestBroker::start().await;
    let cert = b.issue_bound("moh", "moh-2").await;
    let c = b.client_with(&cert, Alpn::Both);
    assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 200);
    b.revoke(std::slice::from_ref(&cert.serial)).await;
    assert!(
        c.get(b.agency, "/v1/whoami").await.is_err(),
        "revoked certificate must fail the handshake"
    );
    // Other certificates from the same CA are unaffected.
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}

/// A chain verified once is remembered: a new connection with the same certificate checks only the proof
/// of possession. Operators see both counts on `/metrics`; a revocation still applies after a reload (above).
#[tokio::test]
async fn a_returning_certificate_is_verified_once_then_remembered() {
    let b = TestBroker::start().await;
    let counts = |text: &str| {
        let read = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        };
        (
            read("lienthong_tls_client_chains_verified_total"),
            read("lienthong_tls_client_chains_remembered_total"),
        )
    };
    let (verified, remembered) = counts(&b.admin_get("/metrics").await.text());
    let cert = b.issue_bound("moh", "moh-returning").await;
    // Two clients, so that the second cannot resume the first one's session: two full handshakes.
    for _ in 0..2 {
        let c = b.client_with(&cert, Alpn::Http1);
        assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 200);
    }
    let after = counts(&b.admin_get("/metrics").await.text());
    assert_eq!(after, (verified + 1, remembered + 1));
}

#[tokio::test]
async fn valid_but_unregistered_certificate_gets_unknown_agency() {
    let b = TestBroker::start().await;
    // The subject claims to be the health ministry; identity is by fingerprint, so it gains nothing.
    let stranger = b.ca().issue_client("moh", "Bộ Y tế", Validity::days(30)).unwrap();
    let r = b
        .client_with(&stranger, Alpn::Both)
        .get(b.agency, "/v1/whoami")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("unknown_agency"));
    let body = r.json();
    assert_eq!(
        body["error"]["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn suspended_agency_is_refused_until_resumed_without_restart() {
    let b = TestBroker::start().await;
    let r = b
        .admin_post("/admin/v1/agencies/pccovid/suspend", json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["agency"]["status"], "suspended");
    let r = b.get("pccovid", "/v1/whoami").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("agency_suspended"));
    // Others are unaffected.
    assert_eq!(b.get("dvc", "/v1/whoami").await.status, 200);
    let r = b.admin_post("/admin/v1/agencies/pccovid/resume", json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get("pccovid", "/v1/whoami").await.status, 200);
}

#[tokio::test]
async fn admin_api_refuses_agency_certificates() {
    let b = TestBroker::start().await;
    for who in ["moh", "pccovid", "dvc"] {
        let c = b.client(who);
        let r = c.get(b.admin, "/admin/v1/agencies").await.unwrap();
        assert_eq!(r.status, 403, "{who}");
        assert_eq!(r.error_code().as_deref(), Some("admin_only"));
        let r = c
            .post_json(b.admin, "/admin/v1/agencies/moh/suspend", &json!({}))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    // And nothing changed.
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}

#[tokio::test]
async fn register_bind_unbind_take_effect_live_and_survive_restart() {
    let b = TestBroker::start().await;
    let cert = b.issue("bhxh", Validity::days(30));
    let c = b.client_with(&cert, Alpn::Both);
    assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 403);

    let r = b
        .admin_post(
            "/admin/v1/agencies",
            json!({ "code": "bhxh", "name": "Bảo hiểm xã hội Việt Nam", "billing_class": "state-budget" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = b
        .admin_post("/admin/v1/agencies", json!({ "code": "bhxh", "name": "again" }))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code().as_deref(), Some("agency_exists"));

    let r = b
        .admin_post(
            "/admin/v1/agencies/bhxh/certificates",
            json!({ "fingerprint": cert.fingerprint }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(b.agency, "/v1/whoami").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["agency"], "bhxh");

    // A certificate already bound elsewhere cannot be bound twice.
    let r = b
        .admin_post(
            "/admin/v1/agencies/moh/certificates",
            json!({ "fingerprint": cert.fingerprint }),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code().as_deref(), Some("fingerprint_bound"));

    let b = b.restart().await;
    let c = b.client_with(&cert, Alpn::Both);
    let r = c.get(b.agency, "/v1/whoami").await.unwrap();
    assert_eq!(r.status, 200, "registration must survive a restart: {}", r.text());
    let list = b.admin_get("/admin/v1/agencies").await.json();
    let codes: Vec<&str> = list["agencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["bhxh", "dvc", "moh", "pccovid", "sms", "vneid"]);

    let r = b
        .client("admin")
        .request(
            b.admin,
            hyper::Method::DELETE,
            &format!("/admin/v1/agencies/bhxh/certificates/{}", cert.fingerprint),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(b.agency, "/v1/whoami").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("unknown_agency"));
}

#[tokio::test]
async fn admin_errors_are_json_with_stable_codes() {
    let b = TestBroker::start().await;
    let r = b.admin_post("/admin/v1/agencies/nosuch/suspend", json!({})).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("unknown_agency"))
    );
    let r = b
        .admin_post("/admin/v1/agencies", json!({ "code": "Bad Code!", "name": "x" }))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("invalid_agency_code"))
    );
    let r = b
        .admin_post(
            "/admin/v1/agencies",
            json!({ "code": "ok", "name": "x", "surprise": 1 }),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_deref()), (400, Some("invalid_json")));
    let r = b
        .admin_post(
            "/admin/v1/agencies/moh/certificates",
            json!({ "fingerprint": "abc" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("invalid_fingerprint"))
    );
    let r = b.admin_get("/admin/v1/nothing-here").await;
    assert_eq!((r.status, r.error_code().as_deref()), (404, Some("not_found")));
}

#[tokio::test]
async fn tls12_is_accepted_and_the_session_is_mutual() {
    // rustls cannot even offer TLS 1.0/1.1; the broker's config lists only 1.2 and 1.3 (checked with
    // sslyze in SECURITY.md). Here: a 1.2-only client still gets through with its certificate.
    let b = TestBroker::start().await;
    let d = b.certs_dir();
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let cert = std::fs::read(d.join("dvc.pem")).unwrap();
    let key = std::fs::read(d.join("dvc.key")).unwrap();
    let c = lienthong::client::MtlsClient::from_pem_with_versions(
        &ca,
        Some((&cert, &key)),
        Alpn::Both,
        &[&rustls::version::TLS12],
    )
    .unwrap();
    assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 200);
}
