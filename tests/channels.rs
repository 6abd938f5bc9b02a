//! Issue 10: the other channels of the seeds — SMS self-look-up, checkpoint check-ins and contact tracing,
//! test results and recoveries — through the real mTLS server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::{TestBroker, AN};
use serde_json::{json, Value};

const BINH: &str = "079195000002";
const NO_MATCH: &str = "Số điện thoại hoặc công dân không tồn tại";

async fn record(b: &TestBroker, id: &str) -> Value {
    b.broker().store.get(id).await.unwrap().unwrap()
}

async fn sms(b: &TestBroker, from: &str, text: &str) -> Value {
    let r = b
        .post(
            "sms",
            "/v1/sms/inbound?purpose=citizen-self-sms",
            json!({ "from": from, "text": text }),
        )
        .await;
    assert!(r.status == 200 || r.status == 429, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn sms_answers_the_owner_of_the_number_and_nobody_else() {
    let b = TestBroker::start().await;
    let an = record(&b, AN).await;
    let phone = an["phone"].as_str().unwrap().to_string(); // "+849…"
    let local = format!("0{}", &phone[3..]);

    let ok = sms(&b, &local, "  ttcd   001090000001 ").await;
    let text = ok["reply"].as_str().unwrap();
    assert!(text.contains("Nguyễn Văn An") && text.contains(AN), "{text}");
    assert!(!text.contains(&phone[3..]), "the phone number is never released");
    assert_eq!(ok["encoding"], "UCS-2");
    let chars = text.encode_utf16().count();
    assert_eq!(ok["characters"].as_u64().unwrap() as usize, chars);
    assert_eq!(
        ok["segments"].as_u64().unwrap() as usize,
        if chars <= 70 { 1 } else { chars.div_ceil(67) }
    );

    // Wrong number for a real citizen, right number for another citizen, unknown citizen, malformed ID:
    // one and the same reply.
    let binh_phone = record(&b, BINH).await["phone"].as_str().unwrap().to_string();
    for (from, text) in [
        ("+84900000000", "TTCD 001090000001"),
        (binh_phone.as_str(), "TTCD 001090000001"),
        (phone.as_str(), "TTCD 001090999999"),
        (phone.as_str(), "TTCD 12345"),
        ("not a number", "TTCD 001090000001"),
    ] {
        let r = sms(&b, from, text).await;
        assert_eq!(r["reply"], NO_MATCH, "{from} {text}");
        assert_eq!(r["segments"], 1);
    }
    let r = sms(&b, &phone, "XEM 001090000001").await;
    assert!(r["reply"].as_str().unwrap().starts_with("Sai cú pháp"));

    // Other agencies cannot use the SMS purpose.
    let r = b
        .post(
            "dvc",
            "/v1/sms/inbound?purpose=citizen-self-sms",
            json!({ "from": phone, "text": "TTCD 001090000001" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );

    // Every attempt is audited; only the match released fields.
    let page = b
        .admin_get("/admin/v1/audit/entries?agency=sms&limit=100")
        .await
        .json();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    let released: Vec<&Value> = entries
        .iter()
        .filter(|e| !e["fields"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["citizen_id"], AN);
}

#[tokio::test]
async fn sms_rate_limit_per_phone_number() {
    let b = TestBroker::start().await;
    let phone = "+84911111111";
    for _ in 0..lienthong::doors::sms::PER_PHONE_LIMIT {
        assert_eq!(sms(&b, phone, "TTCD 001090000001").await["reply"], NO_MATCH);
    }
    let r = b
        .post(
            "sms",
            "/v1/sms/inbound?purpose=citizen-self-sms",
            json!({ "from": "0911111111", "text": "TTCD 001090000001" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (429, Some("sms_rate_limited")),
        "same number in another form"
    );
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(
        sms(&b, "+84922222222", "TTCD 001090000001").await["reply"],
        NO_MATCH,
        "other numbers unaffected"
    );
}

async fn register_checkpoint(b: &TestBroker, id: &str) {
    let r = b
        .post(
            "vneid",
            "/v1/checkpoints?purpose=checkpoint-checkin",
            json!({ "id": id, "name": "Siêu thị Co.opmart Cống Quỳnh", "address": "189C Cống Quỳnh, Quận 1, TP. Hồ Chí Minh", "kind": "supermarket" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn checkpoint_scan_answers_only_what_the_gate_needs() {
    let b = TestBroker::start().await;
    register_checkpoint(&b, "coopmart-cong-quynh").await;
    let r = b
        .post(
            "vneid",
            "/v1/checkpoints?purpose=checkpoint-checkin",
            json!({ "id": "coopmart-cong-quynh", "name": "x", "address": "y", "kind": "other" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("checkpoint_exists"))
    );

    let qr = lienthong::dev::population::qr_payload(&record(&b, AN).await).unwrap();
    let path = "/v1/checkpoints/coopmart-cong-quynh/checkins?purpose=checkpoint-checkin";
    let r = b.post("vneid", path, json!({ "qr": qr })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let citizen = r.json()["citizen"].clone();
    assert_eq!(
        citizen.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["full_name", "covid_status"]
    );
    assert_eq!(citizen["full_name"], "Nguyễn Văn An");
    let stored = record(&b, AN).await;
    assert_eq!(stored["checkins"][0]["checkpoint_id"], "coopmart-cong-quynh");

    // A QR whose name does not match the record.
    let forged = qr.replace("Nguyễn Văn An", "Nguyễn Văn Ân");
    let r = b.post("vneid", path, json!({ "qr": forged })).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("qr_mismatch")),
        "{}",
        r.text()
    );
    // The same name in decomposed (NFD) form and other case is the same name.
    use unicode_normalization::UnicodeNormalization;
    let nfd = qr.replace("Nguyễn Văn An", &"NGUYỄN VĂN AN".nfd().collect::<String>());
    let r = b
        .post(
            "vneid",
            path,
            json!({ "qr": nfd, "time": (Utc::now() - Duration::minutes(1)).to_rfc3339() }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = b
        .post(
            "vneid",
            path,
            json!({ "qr": "001090000001|Nguyễn Văn An|20051990" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("invalid_qr_payload"))
    );
    let r = b.post("vneid", path, json!({ "citizen_id": BINH })).await;
    assert_eq!(
        r.status,
        201,
        "a bare ID works where there is no chip card: {}",
        r.text()
    );

    // Only the agency that registered the checkpoint scans there; only the checkpoint purpose.
    let r = b.post("pccovid", path, json!({ "citizen_id": BINH })).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
    let r = b
        .post(
            "vneid",
            "/v1/checkpoints/nowhere/checkins?purpose=checkpoint-checkin",
            json!({ "citizen_id": BINH }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("unknown_checkpoint"))
    );
}

#[tokio::test]
async fn contact_tracing_is_for_the_health_authority_only() {
    let b = TestBroker::start().await;
    register_checkpoint(&b, "cho-ben-thanh").await;
    let scan = "/v1/checkpoints/cho-ben-thanh/checkins?purpose=checkpoint-checkin";
    let t0 = Utc::now() - Duration::hours(3);
    for (id, minutes) in [(AN, 0), (BINH, 30), ("048203000003", 150)] {
        let time = (t0 + Duration::minutes(minutes)).to_rfc3339_opts(SecondsFormat::Secs, true);
        assert_eq!(
            b.post("vneid", scan, json!({ "citizen_id": id, "time": time }))
                .await
                .status,
            201
        );
    }
    let from = (t0 - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let to = (t0 + Duration::minutes(60)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let trace = format!("/v1/checkpoints/cho-ben-thanh/checkins?purpose=contact-tracing&from={from}&to={to}");
    let r = b.get("moh", &trace).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let people = r.json()["checkins"].as_array().unwrap().clone();
    let ids: Vec<&str> = people.iter().map(|p| p["citizen_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [AN, BINH]);
    for p in &people {
        assert_eq!(
            p.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["citizen_id", "time"],
            "IDs and times only"
        );
    }
    let entry = b
        .admin_get("/admin/v1/audit/entries?purpose=contact-tracing")
        .await
        .json()["entries"][0]
        .clone();
    assert_eq!(entry["bulk"], true);

    for who in ["pccovid", "dvc", "sms", "vneid"] {
        let r = b.get(who, &trace).await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (403, Some("purpose_not_allowed")),
            "{who}"
        );
    }
}

#[tokio::test]
async fn covid_status_follows_new_test_results_and_recoveries() {
    let b = TestBroker::start().await;
    // Lê Minh Châu: no vaccination.
    let id = "048203000003";
    let status = |b: &TestBroker| {
        let path = format!("/v1/citizens/{id}?purpose=covid-qr-status");
        let client = b.client("pccovid");
        let addr = b.agency;
        async move {
            client.get(addr, &path).await.unwrap().json()["citizen"]["covid_status"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(status(&b).await, "none");
    let test = json!({ "date": (Utc::now() - Duration::hours(5)).to_rfc3339_opts(SecondsFormat::Secs, true),
                       "kind": "pcr", "result": "negative", "source_record_id": "lab-7" });
    let r = b
        .post(
            "moh",
            &format!("/v1/citizens/{id}/test-results?purpose=test-result-sync"),
            test,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(status(&b).await, "negative_test");
    let today = lienthong::record::today_in_vietnam(Utc::now());
    let recovery =
        json!({ "recovered_on": (today - Duration::days(10)).to_string(), "source_record_id": "f0-7" });
    let r = b
        .post(
            "moh",
            &format!("/v1/citizens/{id}/recoveries?purpose=recovery-sync"),
            recovery.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(status(&b).await, "recovered");
    let r = b
        .post(
            "moh",
            &format!("/v1/citizens/{id}/recoveries?purpose=recovery-sync"),
            recovery,
        )
        .await;
    assert_eq!(r.status, 200, "idempotent replay");
    // The vaccination purpose cannot write test results.
    let r = b
        .post(
            "moh",
            &format!("/v1/citizens/{id}/test-results?purpose=vaccination-sync"),
            json!({ "source_record_id": "x" }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("forbidden_field"))
    );
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors/examples")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn fhir_observation_and_recovery_connectors_move_covid_status() {
    let b = TestBroker::start().await;
    let id = "048203000003";
    let status = || async {
        b.get("pccovid", &format!("/v1/citizens/{id}?purpose=covid-qr-status"))
            .await
            .json()["citizen"]["covid_status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status().await, "none");
    // A lab result sampled within 72 hours: rewrite the example's time to two hours ago.
    let sampled = (Utc::now() - Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let obs = String::from_utf8(example("moh-observation.json"))
        .unwrap()
        .replace("2026-11-23T07:30:00+07:00", &sampled);
    let r = b
        .post_raw(
            "moh",
            "/connectors/moh/v1/Observation",
            "application/fhir+json",
            obs.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(status().await, "negative_test");
    let r = b
        .post_raw(
            "moh",
            "/connectors/moh/v1/Observation",
            "application/fhir+json",
            obs.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "idempotent");
    let stored = record(&b, id).await["test_results"].as_array().unwrap().clone();
    let ours: Vec<&Value> = stored
        .iter()
        .filter(|t| t["source_record_id"] == "CDC-DN-2026-11-23-004512")
        .collect();
    assert_eq!(ours.len(), 1, "written once");
    assert_eq!(
        (ours[0]["kind"].as_str(), ours[0]["result"].as_str()),
        (Some("pcr"), Some("negative"))
    );
    let unknown_code = obs
        .replace("94500-6", "12345-6")
        .replace("CDC-DN-2026-11-23-004512", "other");
    let r = b
        .post_raw(
            "moh",
            "/connectors/moh/v1/Observation",
            "application/fhir+json",
            unknown_code,
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json()["issue"][0]["details"]["coding"][0]["code"],
        "invalid_value"
    );

    // The recovery list: one good, one unknown citizen, one impossible date — each answered on its own.
    let today = lienthong::record::today_in_vietnam(Utc::now());
    let list = String::from_utf8(example("moh-recovery-list.json"))
        .unwrap()
        .replace(
            "15/11/2026",
            &(today - Duration::days(3)).format("%d/%m/%Y").to_string(),
        );
    let r = b
        .post_raw("moh", "/connectors/moh/v1/khoi-benh", "application/json", list)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses: Vec<u64> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 404, 422]);
    assert_eq!(status().await, "recovered");
    // The purposes stay apart: the recovery connector cannot be reached by other agencies.
    let r = b
        .post_raw(
            "pccovid",
            "/connectors/moh/v1/khoi-benh",
            "application/json",
            example("moh-recovery-list.json"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
}
