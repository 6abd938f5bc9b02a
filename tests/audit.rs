//! Issue 5: the audit trail as users see it — every refusal and every release has its entry, the
//! citizen sees only their own, a failing trail withholds data (503), `audit verify` works offline and
//! catches tampering, and a SIGKILL mid-load loses no acknowledged entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::{ChildBroker, TestBroker, AN};
use lienthong::client::{Alpn, Response};
use lienthong::dev::certs::Validity;
use serde_json::{json, Value};

const BINH: &str = "079195000002";

fn request_id(r: &Response) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_string()
}

async fn entry_for(b: &TestBroker, request_id: &str) -> Value {
    let page = b.admin_get("/admin/v1/audit/entries?limit=500").await.json();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == request_id)
        .cloned()
        .unwrap_or_else(|| panic!("no audit entry for {request_id}"))
}

#[tokio::test]
async fn every_refusal_and_release_has_its_entry() {
    let b = TestBroker::start().await;
    let stranger = b.issue("stranger", Validity::days(5));
    let r = b
        .client_with(&stranger, Alpn::Both)
        .get(b.agency, "/v1/whoami")
        .await
        .unwrap();
    let e = entry_for(&b, &request_id(&r)).await;
    assert_eq!(
        (e["status"].as_u64(), e["error_code"].as_str()),
        (Some(403), Some("unknown_agency"))
    );
    assert_eq!(e["agency"], Value::Null);
    assert_eq!(e["cert_fingerprint"], stranger.fingerprint);

    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("dvc", format!("/v1/citizens/{AN}"), 400, Some("purpose_required")),
        (
            "dvc",
            format!("/v1/citizens/{AN}?purpose=nope"),
            400,
            Some("unknown_purpose"),
        ),
        (
            "pccovid",
            format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
            403,
            Some("purpose_not_allowed"),
        ),
        (
            "dvc",
            format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=phone"),
            403,
            Some("forbidden_field"),
        ),
        (
            "dvc",
            "/v1/citizens/12x?purpose=public-service-prefill".into(),
            400,
            Some("invalid_citizen_id"),
        ),
        (
            "dvc",
            "/v1/citizens/001090999999?purpose=public-service-prefill".into(),
            404,
            Some("citizen_not_found"),
        ),
        ("dvc", "/v1/nowhere".into(), 404, Some("not_found")),
        (
            "pccovid",
            format!("/v1/citizens/{AN}?purpose=covid-qr-status"),
            200,
            None,
        ),
    ];
    for (who, path, status, code) in cases {
        let r = b.get(who, &path).await;
        assert_eq!(r.status, status, "{path}");
        let e = entry_for(&b, &request_id(&r)).await;
        assert_eq!(e["status"].as_u64(), Some(status as u64), "{path}");
        assert_eq!(e["error_code"].as_str(), code, "{path}");
        assert_eq!(e["agency"], who);
        assert_eq!(e["request_sha256"].as_str().unwrap().len(), 64);
        if status == 200 {
            assert_eq!(e["citizen_id"], AN);
            assert_eq!(e["purpose"], "covid-qr-status");
            assert_eq!(
                e["fields"],
                json!(["citizen_id", "covid_status", "full_name"]),
                "sorted field paths"
            );
        } else {
            assert_eq!(e["fields"], json!([]), "a refusal releases nothing");
        }
    }

    b.admin_post("/admin/v1/agencies/pccovid/suspend", json!({}))
        .await;
    let r = b
        .get("pccovid", &format!("/v1/citizens/{AN}?purpose=covid-qr-status"))
        .await;
    let e = entry_for(&b, &request_id(&r)).await;
    assert_eq!(e["error_code"], "agency_suspended");
    // The admin change itself is on the chain too.
    let page = b.admin_get("/admin/v1/audit/entries?agency=admin").await.json();
    assert!(page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["operation"] == "admin:suspend"));
    let verify = b.admin_get("/admin/v1/audit/verify").await.json();
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test]
async fn citizen_sees_who_read_their_data_and_nobody_elses() {
    let b = TestBroker::start().await;
    assert_eq!(
        b.get("pccovid", &format!("/v1/citizens/{AN}?purpose=covid-qr-status"))
            .await
            .status,
        200
    );
    assert_eq!(
        b.get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=full_name")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        b.get(
            "dvc",
            &format!("/v1/citizens/{BINH}?purpose=public-service-prefill")
        )
        .await
        .status,
        200
    );

    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}/access-log?purpose=citizen-self-service"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = r.json()["access_log"]["entries"].as_array().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["agency"], "dvc");
    assert_eq!(log[0]["purpose"], "public-service-prefill");
    assert_eq!(log[0]["fields"], json!(["full_name"]));
    assert_eq!(log[1]["agency"], "pccovid");
    assert!(log.iter().all(|e| e.get("cert_fingerprint").is_none()));
    assert!(!r.text().contains(BINH), "another citizen's entries leaked");

    // Only the self-service purpose opens the log, and only for the portal.
    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}/access-log?purpose=public-service-prefill"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
    let r = b
        .get(
            "pccovid",
            &format!("/v1/citizens/{AN}/access-log?purpose=citizen-self-service"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
}

#[tokio::test]
async fn a_failing_audit_trail_withholds_the_answer() {
    let b = TestBroker::start().await;
    b.broker().audit.set_fail_writes(true);
    let r = b
        .get("pccovid", &format!("/v1/citizens/{AN}?purpose=covid-qr-status"))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (503, Some("audit_unavailable"))
    );
    assert!(!r.text().contains("Nguyễn"), "no data may leave: {}", r.text());
    assert!(r.headers.get("retry-after").is_some());
    b.broker().audit.set_fail_writes(false);
    let r = b
        .get("pccovid", &format!("/v1/citizens/{AN}?purpose=covid-qr-status"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.admin_get("/admin/v1/audit/verify").await.json()["ok"], true);
}

fn lienthong() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lienthong"))
}

#[tokio::test]
async fn verify_works_offline_and_finds_the_tampered_entry() {
    let b = TestBroker::start().await;
    for _ in 0..5 {
        b.get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
        )
        .await;
    }
    let dir = b.stop().await;
    let data = dir.path().join("data");
    let out = lienthong()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 5 entries"));

    let export = lienthong()
        .args(["audit", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 5);

    // Change who read the data in entry 3.
    let segment = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("\"agency\":\"dvc\"", "\"agency\":\"moh\"");
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let out = lienthong()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigkill_under_load_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ChildBroker::start(dir.path()).await;
    let (agency, client) = (broker.agency, broker.clients());

    // Mixed reads and writes from 8 workers, until the broker dies under them.
    let ids: Vec<String> = lienthong::dev::population::generate(300, 2021)
        .map(|r| r["citizen_id"].as_str().unwrap().to_string())
        .collect();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (reader, writer) = (client("dvc"), client("moh"));
        let ids = ids.clone();
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let id = &ids[(w * 37 + i) % ids.len()];
                let result = if i % 3 == 0 {
                    let body = json!({ "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty",
                                       "date": "2021-09-01", "source_record_id": format!("crash-{w}-{i}") });
                    writer
                        .post_json(
                            agency,
                            &format!("/v1/citizens/{id}/vaccinations?purpose=vaccination-sync"),
                            &body,
                        )
                        .await
                } else {
                    reader
                        .get(
                            agency,
                            &format!("/v1/citizens/{id}?purpose=public-service-prefill"),
                        )
                        .await
                };
                match result {
                    Ok(r) if (200..300).contains(&r.status) => acknowledged.push(request_id(&r)),
                    Ok(_) => {}
                    Err(_) => break, // the broker is gone
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill(); // SIGKILL
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "too little load to prove anything: {}",
        acknowledged.len()
    );

    let data = dir.path().join("data");
    let verify = lienthong()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = lienthong()
        .args(["audit", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let recorded: HashSet<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let missing: Vec<&String> = acknowledged.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged requests have no audit entry",
        missing.len()
    );

    // And the broker starts again on what the crash left, with the chain intact.
    broker.restart().await;
    let r = client("dvc")
        .get(
            agency,
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    broker.kill();
    let verify = lienthong()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
