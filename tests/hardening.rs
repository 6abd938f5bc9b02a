//! Issue 20: what an outside security test found. Each test reproduces one finding over real mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestBroker;
use hyper::Method;
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
    let attempts: Vec<(Vec<(&str, &str)>, u16, &str)> = vec![
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
