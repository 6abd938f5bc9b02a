//! The operator surface over real mTLS: the OpenAPI catalogue, `/metrics`, the console's routes, and the
//! logs (one span per request carrying the request id; no citizen ID in the clear in any line).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::TestBroker;
use lienthong::client::Alpn;
use lienthong::dev::certs::{CertAuthority, Validity};
use serde_json::{json, Value};

/// Every log line of this test binary, as JSON lines (one global subscriber per process).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buf = buf.clone();
            move || SharedWriter(buf.clone())
        };
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(writer)
            .init();
        buf
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines() -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .map(str::to_string)
        .collect()
}

async fn metrics(b: &TestBroker) -> String {
    let r = b.admin_get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.headers["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    r.text()
}

/// The value of the sample line starting with `prefix` (labels included), if present.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn catalogue_describes_every_route_purpose_and_error() {
    let b = TestBroker::start().await;
    let r = b.get("dvc", "/v1/catalogue").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/healthz",
        "/v1/whoami",
        "/v1/catalogue",
        "/v1/purposes",
        "/v1/purposes/{purpose}/release",
        "/v1/citizens/{citizen_id}",
        "/v1/citizens/{citizen_id}/access-log",
        "/v1/citizens/{citizen_id}/vaccinations",
    ] {
        assert!(paths.contains_key(route), "{route} missing");
    }
    // Every purpose of the loaded catalogue, with legal basis and price.
    let purposes = doc["x-purposes"].as_array().unwrap();
    for p in b.broker().catalogue().all() {
        let published = purposes.iter().find(|x| x["id"] == p.id.as_str()).unwrap();
        assert_eq!(published["legal_basis"], p.legal_basis.as_str());
        assert_eq!(published["price_vnd"], p.price_vnd);
    }
    // The read route answers per purpose, and names its errors by status and code.
    let read = &doc["paths"]["/v1/citizens/{citizen_id}"]["get"];
    let projections = read["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
        ["citizen"]["anyOf"]
        .as_array()
        .unwrap();
    let readers = b
        .broker()
        .catalogue()
        .all()
        .iter()
        .filter(|p| !p.read.is_empty())
        .count();
    assert_eq!(projections.len(), readers, "{projections:?}");
    let codes = |status: &str| -> Vec<String> {
        read["responses"][status]["content"]["application/json"]["schema"]["properties"]["error"]
            ["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    assert!(codes("403").contains(&"forbidden_field".to_string()));
    assert!(codes("403").contains(&"purpose_not_allowed".to_string()));
    assert!(codes("404").contains(&"citizen_not_found".to_string()));
    assert!(codes("429").contains(&"quota_exceeded".to_string()));
    // The purpose that may not see phone numbers is published without them.
    let prefill = &doc["components"]["schemas"]["Citizen_public_service_prefill"];
    assert!(prefill["properties"].get("full_name").is_some());
    assert!(prefill["properties"].get("phone").is_none());
    // Writes only where a purpose may write.
    let write = &doc["paths"]["/v1/citizens/{citizen_id}/vaccinations"]["post"];
    assert_eq!(write["x-purposes"], json!(["vaccination-sync"]));
    for route in [
        "/v1/checkpoints",
        "/v1/checkpoints/{checkpoint_id}/checkins",
        "/v1/sms/inbound",
    ] {
        assert!(paths.contains_key(route), "{route} missing");
    }
    // Every loaded connector, with its own purpose.
    for c in b.broker().connectors.all() {
        let op = &doc["paths"][c.path.as_str()][c.method.as_str().to_ascii_lowercase()];
        assert_eq!(op["x-purposes"], json!([c.purpose]), "{}", c.name);
        assert!(op["requestBody"]["content"]
            .as_object()
            .unwrap()
            .contains_key(&c.content_types[0]));
    }
    assert!(paths.contains_key("/connectors/moh/v1/Immunization"));
    // No dangling local references.
    let text = doc.to_string();
    for cap in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = cap.split('"').next().unwrap().split('/').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
    assert!(!text.contains("#/$defs/"));
}

#[tokio::test]
async fn a_real_answer_matches_the_published_projection() {
    let b = TestBroker::start().await;
    let doc = b.get("pccovid", "/v1/catalogue").await.json();
    let r = b
        .get("pccovid", "/v1/citizens/001090000001?purpose=covid-qr-status")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let citizen = r.json()["citizen"].clone();
    let schema = &doc["components"]["schemas"]["Citizen_covid_qr_status"];
    let allowed: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    for key in citizen.as_object().unwrap().keys() {
        assert!(allowed.contains(&key), "{key} released but not published");
    }
}

#[tokio::test]
async fn metrics_count_requests_stages_and_handshake_failures() {
    let b = TestBroker::start().await;
    // Agencies never see the metrics.
    let r = b.client("dvc").get(b.admin, "/metrics").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("admin_only"));

    let r = b
        .get("dvc", "/v1/citizens/001090000001?purpose=public-service-prefill")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b
        .post(
            "moh",
            "/v1/citizens/001090000001/vaccinations?purpose=vaccination-sync",
            json!({ "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty",
                    "date": "2021-08-01", "source_record_id": "metrics-test-1" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Over quota: counted as a rejection.
    b.set_plan("pccovid", json!({ "*": { "per_minute": 1 } })).await;
    let path = "/v1/citizens/001090000001?purpose=covid-qr-status";
    assert_eq!(b.get("pccovid", path).await.status, 200);
    let r = b.get("pccovid", path).await;
    assert_eq!(r.error_code().as_deref(), Some("quota_exceeded"), "{}", r.text());
    // A made-up purpose is counted under `-`, not as a new series.
    let r = b.get("dvc", "/v1/citizens/001090000001?purpose=made-up-x").await;
    assert_eq!(r.status, 400);
    // Handshakes that fail: no certificate, a certificate from another CA.
    let ca = std::fs::read(b.certs_dir().join("ca.pem")).unwrap();
    let anonymous = lienthong::client::MtlsClient::from_pem(&ca, None, Alpn::Both).unwrap();
    assert!(anonymous.get(b.agency, "/healthz").await.is_err());
    let rogue = CertAuthority::generate("rogue CA")
        .unwrap()
        .issue_client("dvc", "rogue", Validity::days(3))
        .unwrap();
    assert!(b
        .client_with(&rogue, Alpn::Both)
        .get(b.agency, "/healthz")
        .await
        .is_err());

    // The server side of a failed handshake may finish just after the client gives up.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(&b).await;
        if text.contains("reason=\"unknown_ca\"") && text.contains("reason=\"no_client_certificate\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sample(
            &text,
            r#"lienthong_requests_total{side="agency",agency="dvc",purpose="public-service-prefill",connector="canonical",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"lienthong_requests_total{side="agency",agency="moh",purpose="vaccination-sync",connector="canonical",status="201"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"lienthong_requests_total{side="agency",agency="dvc",purpose="-",connector="canonical",status="400"}"#
        ),
        Some(1.0)
    );
    assert!(!text.contains("made-up-x"));
    for stage in ["tls", "decode", "policy", "store", "audit_flush", "encode"] {
        let count = sample(
            &text,
            &format!("lienthong_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(count.unwrap_or(0.0) >= 1.0, "no {stage} timing in\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            r#"lienthong_handshake_failures_total{side="agency",reason="unknown_ca"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"lienthong_handshake_failures_total{side="agency",reason="no_client_certificate"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // The scrape's own connection is open while it is answered.
    assert!(sample(&text, r#"lienthong_open_connections{side="admin"}"#).unwrap() >= 1.0);
    // The head sequence is the trail's (scrapes themselves are not audited).
    let head = b.broker().audit.head().0 as f64;
    assert_eq!(sample(&text, "lienthong_audit_head_seq"), Some(head));
    assert_eq!(
        sample(
            &text,
            r#"lienthong_quota_rejections_total{agency="pccovid",purpose="covid-qr-status"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn console_routes_are_admin_only_and_masked() {
    let b = TestBroker::start().await;
    let r = b
        .get("dvc", "/v1/citizens/079195000002?purpose=public-service-prefill")
        .await;
    assert_eq!(r.status, 200);
    let r = b.client("dvc").get(b.admin, "/admin/console").await.unwrap();
    assert_eq!(r.status, 403);
    let r = b.admin_get("/admin/console").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.headers.contains_key("content-security-policy"));
    let html = r.text();
    assert!(html.contains("079*******02"));
    assert!(!html.contains("079195000002"));
    // Filters reach the audit search (and bad ones are refused, not ignored).
    let r = b.admin_get("/admin/console?status=abc").await;
    assert_eq!(r.status, 400);
    let r = b
        .admin_get("/admin/console?citizen_id=079195000002&agency=dvc")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("079*******02"));
    // A post without a browser's Origin is allowed for certificate holders (like the admin API)…
    let r = b
        .client("admin")
        .request(
            b.admin,
            hyper::Method::POST,
            "/admin/console/agencies/moh/suspend",
            Some("application/x-www-form-urlencoded"),
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r.headers["location"]
        .to_str()
        .unwrap()
        .starts_with("/admin/console?notice="));
    assert_eq!(
        b.get("moh", "/v1/whoami").await.error_code().as_deref(),
        Some("agency_suspended")
    );
    let r = b
        .client("admin")
        .request(
            b.admin,
            hyper::Method::POST,
            "/admin/console/agencies/nope/resume",
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(b.admin_get("/admin/console/console.css").await.status == 200);
    assert!(b.admin_get("/admin/console/console.js").await.status == 200);
}

#[tokio::test]
async fn request_id_is_shared_by_answer_audit_and_log_and_ids_are_masked() {
    let logs = logs();
    let b = TestBroker::start().await;
    let ids = ["001090000001", "079195000002", "048203000003"];
    // Served, refused, malformed, not found, and a body that carries a citizen ID.
    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{}?purpose=public-service-prefill", ids[0]),
        )
        .await;
    assert_eq!(r.status, 200);
    let refused = b
        .get(
            "pccovid",
            &format!("/v1/citizens/{}?purpose=public-service-prefill", ids[1]),
        )
        .await;
    assert_eq!(refused.status, 403);
    let r = b
        .post_raw(
            "moh",
            &format!("/v1/citizens/{}/vaccinations?purpose=vaccination-sync", ids[2]),
            "application/json",
            format!("{{\"citizen_id\": \"{}\", ", ids[2]),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = b
        .get("dvc", "/v1/citizens/001090999999?purpose=public-service-prefill")
        .await;
    assert_eq!(r.status, 404);

    // The SMS channel carries a phone number and an ID in its body.
    let r = b
        .post(
            "sms",
            "/v1/sms/inbound?purpose=citizen-self-sms",
            json!({ "from": "+84912345678", "text": format!("TTCD {}", ids[1]) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let request_id = refused.json()["error"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(refused.headers["x-request-id"].to_str().unwrap(), request_id);
    let trail = b.admin_get("/admin/v1/audit/entries?agency=pccovid").await.json();
    assert!(trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["request_id"] == request_id.as_str()));

    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = log_lines();
    drop(logs);
    let answered: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["request_id"] == request_id.as_str())
        .collect();
    assert!(!answered.is_empty(), "no log line in the request's span");
    let line = answered
        .iter()
        .find(|v| v["fields"]["message"] == "answered")
        .expect("the answered line");
    assert_eq!(line["fields"]["status"], 403);
    assert_eq!(line["fields"]["code"], "purpose_not_allowed");
    assert_eq!(line["span"]["agency"], "pccovid");
    assert_eq!(line["span"]["route"], "GET /v1/citizens/079*******02");
    for l in &lines {
        for id in ids.iter().chain(&["001090999999", "912345678"]) {
            assert!(!l.contains(id), "citizen ID in a log line: {l}");
        }
    }
}
