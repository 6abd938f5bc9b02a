//! Issue 6: quotas and billing through the real mTLS server — exact counting under concurrency, headers,
//! plan changes at runtime, persistence across restart, exemption, and reconciliation with the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestBroker, AN};
use serde_json::json;

fn read_path() -> String {
    format!("/v1/citizens/{AN}?purpose=covid-qr-status")
}

fn month() -> String {
    lienthong::quota::month_of(chrono::Utc::now())
}

#[tokio::test]
async fn two_hundred_concurrent_calls_against_fifty_serve_exactly_fifty() {
    let b = TestBroker::start().await;
    b.set_plan(
        "pccovid",
        json!({ "covid-qr-status": { "per_minute": 1000, "per_day": 50 } }),
    )
    .await;
    let client = b.client("pccovid");
    let mut calls = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let addr = b.agency;
        calls.push(tokio::spawn(async move {
            client.get(addr, &read_path()).await.unwrap()
        }));
    }
    let mut served = 0;
    let mut refused = 0;
    for call in calls {
        let r = call.await.unwrap();
        match r.status {
            200 => {
                served += 1;
                assert!(r.headers.get("ratelimit-limit").is_some());
            }
            429 => {
                refused += 1;
                assert_eq!(r.error_code().as_deref(), Some("quota_exceeded"));
                let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=86_400).contains(&retry), "{retry}");
                assert_eq!(r.headers["ratelimit-remaining"], "0");
                assert_eq!(r.headers["ratelimit-limit"], "50");
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((served, refused), (50, 150));
    let report = b
        .admin_get(&format!("/admin/v1/billing/report?month={}", month()))
        .await
        .json();
    let line = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["agency"] == "pccovid")
        .unwrap()
        .clone();
    assert_eq!(
        (line["served"].as_u64(), line["refused_quota"].as_u64()),
        (Some(50), Some(150))
    );
    assert_eq!(line["amount_vnd"], 50 * 500);
    let rec = b
        .admin_get(&format!("/admin/v1/billing/reconcile?month={}", month()))
        .await
        .json();
    assert_eq!(rec["ok"], true, "{rec}");
}

#[tokio::test]
async fn served_calls_carry_rate_limit_headers_and_plans_change_at_runtime() {
    let b = TestBroker::start().await;
    let r = b.get("pccovid", &read_path()).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("ratelimit-limit").is_none(), "no plan, no limit");
    // Use is counted with or without a plan: the call above is the first of this minute.
    b.set_plan("pccovid", json!({ "*": { "per_day": 3 } })).await;
    let r = b.get("pccovid", &read_path()).await;
    assert_eq!(
        (
            r.headers["ratelimit-limit"].to_str().unwrap(),
            r.headers["ratelimit-remaining"].to_str().unwrap()
        ),
        ("3", "1")
    );
    assert_eq!(
        b.get("pccovid", &read_path()).await.headers["ratelimit-remaining"],
        "0"
    );
    assert_eq!(b.get("pccovid", &read_path()).await.status, 429);
    b.set_plan("pccovid", json!({ "*": { "per_day": 10 } })).await;
    assert_eq!(
        b.get("pccovid", &read_path()).await.status,
        200,
        "the raised limit applies on the next request"
    );
    // Refusals before the store are not metered: a bad purpose never consumes quota.
    for _ in 0..5 {
        assert_eq!(
            b.get("pccovid", &format!("/v1/citizens/{AN}?purpose=nope"))
                .await
                .status,
            400
        );
    }
    let usage = b.admin_get("/admin/v1/agencies/pccovid/usage").await.json();
    assert_eq!(usage["usage"]["covid-qr-status"]["used"]["day"], 4, "{usage}");
    let r = b
        .admin_put(
            "/admin/v1/agencies/pccovid/plan",
            r#"{"limits":{"nope":{"per_day":1}}}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("unknown_purpose"))
    );
}

#[tokio::test]
async fn counters_survive_a_restart() {
    let b = TestBroker::start().await;
    b.set_plan("pccovid", json!({ "*": { "per_day": 3 } })).await;
    assert_eq!(b.get("pccovid", &read_path()).await.status, 200);
    assert_eq!(b.get("pccovid", &read_path()).await.status, 200);
    let b = b.restart().await;
    assert_eq!(b.get("pccovid", &read_path()).await.status, 200);
    assert_eq!(b.get("pccovid", &read_path()).await.status, 429);
    let report = b
        .admin_get(&format!("/admin/v1/billing/report?month={}", month()))
        .await
        .json();
    assert_eq!(report["lines"][0]["served"], 3);
}

#[tokio::test]
async fn state_budget_use_is_counted_but_not_charged_and_csv_is_available() {
    let b = TestBroker::start().await;
    // The class applies from the change on (issue 22: calls are billed at the class of their instant).
    let r = b
        .admin_put(
            "/admin/v1/agencies/dvc/billing-class",
            r#"{"billing_class":"state-budget"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(
            b.get(
                "dvc",
                &format!("/v1/citizens/{AN}?purpose=public-service-prefill")
            )
            .await
            .status,
            200
        );
    }
    assert_eq!(b.get("pccovid", &read_path()).await.status, 200);
    let report = b
        .admin_get(&format!("/admin/v1/billing/report?month={}", month()))
        .await
        .json();
    let lines = report["lines"].as_array().unwrap();
    let dvc = lines.iter().find(|l| l["agency"] == "dvc").unwrap();
    assert_eq!(
        (
            dvc["served"].as_u64(),
            dvc["amount_vnd"].as_u64(),
            dvc["exempt"].as_bool()
        ),
        (Some(3), Some(0), Some(true))
    );
    assert_eq!(dvc["unit_price_vnd"], 1000);
    assert_eq!(report["total_vnd"], 500);
    let csv = b
        .admin_get(&format!("/admin/v1/billing/report?month={}&format=csv", month()))
        .await;
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text();
    assert!(text.starts_with("month,agency,purpose,served,refused_quota,unit_price_vnd,amount_vnd,exempt\n"));
    assert!(
        text.contains(",dvc,public-service-prefill,3,0,1000,0,true\n"),
        "{text}"
    );
    assert!(
        text.contains(",pccovid,covid-qr-status,1,0,500,500,false\n"),
        "{text}"
    );
}

#[tokio::test]
async fn reconcile_detects_a_tampered_counter() {
    let b = TestBroker::start().await;
    for _ in 0..4 {
        assert_eq!(b.get("pccovid", &read_path()).await.status, 200);
    }
    let rec = b
        .admin_get(&format!("/admin/v1/billing/reconcile?month={}", month()))
        .await
        .json();
    assert_eq!(rec["ok"], true, "{rec}");
    b.broker()
        .quota
        .set_total("served", &month(), "pccovid", "covid-qr-status", 2)
        .unwrap();
    let rec = b
        .admin_get(&format!("/admin/v1/billing/reconcile?month={}", month()))
        .await
        .json();
    assert_eq!(rec["ok"], false);
    assert_eq!(rec["differences"][0]["served"], json!([2, 4]));

    // The CLI exits 1 on the mismatch.
    let mut args: Vec<String> = vec!["billing".into(), "reconcile".into()];
    args.extend(b.cli_admin_args());
    let out = b.run_cli(args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
