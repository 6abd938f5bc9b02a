//! Issue 3: the canonical API through the real mTLS server — each purpose releases exactly its fields,
//! every refusal has its stable code, writes are idempotent and schema-checked, and `covid_status`
//! moves at its boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use common::{TestBroker, AN};
use serde_json::{json, Value};

/// A citizen the tests add themselves, with an empty health history.
const BLANK: &str = "001090123456";

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn with_blank_citizen() -> TestBroker {
    let b = TestBroker::start().await;
    let record = json!({
        "citizen_id": BLANK, "full_name": "Phạm Thị Thu", "birth_date": "1990-02-03", "gender": "male",
        "permanent_address": { "detail": "Số 5 Tràng Tiền", "province": "Thành phố Hà Nội" }
    });
    lienthong::canonical::validate_record(&b.broker(), &record).unwrap();
    b.broker()
        .store
        .put_many(vec![(BLANK.into(), record)])
        .await
        .unwrap();
    b
}

fn vaccination(source: &str, dose: u32, date: &str) -> Value {
    json!({ "dose_number": dose, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
            "date": date, "lot": "FK1234", "site": "Trạm Y tế Phường Tràng Tiền", "source_record_id": source })
}

fn today() -> chrono::NaiveDate {
    lienthong::record::today_in_vietnam(Utc::now())
}

async fn status_of(b: &TestBroker, id: &str) -> String {
    let r = b
        .get("pccovid", &format!("/v1/citizens/{id}?purpose=covid-qr-status"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["citizen"]["covid_status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn each_purpose_releases_exactly_its_fields() {
    let b = TestBroker::start().await;
    let r = b
        .get("pccovid", &format!("/v1/citizens/{AN}?purpose=covid-qr-status"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        keys(&r.json()["citizen"]),
        set(&["citizen_id", "full_name", "covid_status"])
    );
    assert_eq!(r.json()["citizen"]["full_name"], "Nguyễn Văn An");

    let r = b
        .get("moh", &format!("/v1/citizens/{AN}?purpose=vaccination-sync"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        keys(&r.json()["citizen"]),
        set(&["citizen_id", "full_name", "birth_date"])
    );

    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let released = keys(&r.json()["citizen"]);
    let allowed = set(&[
        "citizen_id",
        "old_id_number",
        "full_name",
        "birth_date",
        "gender",
        "permanent_address",
        "current_address",
        "id_card_issue_date",
    ]);
    assert!(released.is_subset(&allowed), "{released:?}");
    for must in [
        "citizen_id",
        "full_name",
        "birth_date",
        "gender",
        "permanent_address",
    ] {
        assert!(released.contains(must), "{must} missing from {released:?}");
    }
    let text = r.text();
    for never in [
        "vaccinations",
        "phone",
        "covid_status",
        "test_results",
        "recoveries",
    ] {
        assert!(!text.contains(never), "{never} leaked: {text}");
    }
}

#[tokio::test]
async fn fields_parameter_narrows_and_never_widens() {
    let b = TestBroker::start().await;
    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=full_name,birth_date"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(keys(&r.json()["citizen"]), set(&["full_name", "birth_date"]));

    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=permanent_address.province"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        keys(&r.json()["citizen"]["permanent_address"]),
        set(&["province"])
    );

    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=full_name,phone"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("forbidden_field"))
    );
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("phone"));

    let r = b
        .get(
            "pccovid",
            &format!("/v1/citizens/{AN}?purpose=covid-qr-status&fields=vaccinations[].date"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("forbidden_field"))
    );
}

#[tokio::test]
async fn purpose_errors_have_stable_codes() {
    let b = TestBroker::start().await;
    let cases = [
        ("dvc", format!("/v1/citizens/{AN}"), 400, "purpose_required"),
        (
            "dvc",
            format!("/v1/citizens/{AN}?purpose="),
            400,
            "purpose_required",
        ),
        (
            "dvc",
            format!("/v1/citizens/{AN}?purpose=marketing"),
            400,
            "unknown_purpose",
        ),
        (
            "pccovid",
            format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
            403,
            "purpose_not_allowed",
        ),
        (
            "moh",
            format!("/v1/citizens/{AN}?purpose=covid-qr-status"),
            403,
            "purpose_not_allowed",
        ),
        (
            "dvc",
            "/v1/citizens/12345?purpose=public-service-prefill".to_string(),
            400,
            "invalid_citizen_id",
        ),
        (
            "dvc",
            "/v1/citizens/003090000001?purpose=public-service-prefill".to_string(),
            400,
            "invalid_citizen_id",
        ),
        (
            "dvc",
            "/v1/citizens/００１090000001?purpose=public-service-prefill".to_string(),
            400,
            "invalid_citizen_id",
        ),
        (
            "dvc",
            "/v1/citizens/001090999999?purpose=public-service-prefill".to_string(),
            404,
            "citizen_not_found",
        ),
        (
            "dvc",
            format!("/v1/citizens/{AN}?purpose=public-service-prefill&fields=nosuchfield"),
            400,
            "unknown_field",
        ),
    ];
    for (who, path, status, code) in cases {
        let r = b.get(who, &path).await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (status, Some(code)),
            "{who} {path}: {}",
            r.text()
        );
        assert!(r.json()["error"]["request_id"].is_string());
    }
}

#[tokio::test]
async fn purposes_listing_and_release_dry_run() {
    let b = TestBroker::start().await;
    let r = b.get("dvc", "/v1/purposes").await;
    assert_eq!(r.status, 200);
    let ids: BTreeSet<String> = r.json()["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, set(&["citizen-self-service", "public-service-prefill"]));
    let r = b.get("pccovid", "/v1/purposes/covid-qr-status/release").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["fields"],
        json!(["citizen_id", "full_name", "covid_status"])
    );
    let r = b
        .get("pccovid", "/v1/purposes/public-service-prefill/release")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
}

#[tokio::test]
async fn vaccination_write_is_idempotent_and_conflicts_are_refused() {
    let b = with_blank_citizen().await;
    let path = format!("/v1/citizens/{BLANK}/vaccinations?purpose=vaccination-sync");
    let v = vaccination("moh-imm-1", 1, "2021-08-01");
    let r = b.post("moh", &path, v.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["vaccinations"], v);
    let r = b.post("moh", &path, v.clone()).await;
    assert_eq!(r.status, 200, "replay answers 200: {}", r.text());
    assert_eq!(r.json()["vaccinations"], v);
    let r = b
        .post("moh", &path, vaccination("moh-imm-1", 1, "2021-08-02"))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("idempotency_conflict"))
    );
    let stored = b.broker().store.get(BLANK).await.unwrap().unwrap();
    assert_eq!(
        stored["vaccinations"].as_array().unwrap().len(),
        1,
        "no duplicate, no half write"
    );
}

#[tokio::test]
async fn schema_violations_name_the_pointer_and_write_nothing() {
    let b = with_blank_citizen().await;
    let path = format!("/v1/citizens/{BLANK}/vaccinations?purpose=vaccination-sync");
    let mut bad = vaccination("moh-imm-2", 1, "01/08/2021");
    let r = b.post("moh", &path, bad.clone()).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("schema_violation")),
        "{}",
        r.text()
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/vaccinations/-/date"),
        "{}",
        r.text()
    );
    bad["date"] = json!("2021-08-01");
    bad["covid_status"] = json!("fully_vaccinated");
    let r = b.post("moh", &path, bad).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("schema_violation")),
        "{}",
        r.text()
    );
    let r = b.post("moh", &path, json!(["not", "an", "object"])).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("schema_violation"))
    );
    let r = b.post_raw("moh", &path, "application/json", "{not json").await;
    assert_eq!((r.status, r.error_code().as_deref()), (400, Some("invalid_json")));
    let r = b.post_raw("moh", &path, "text/plain", "{}").await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (415, Some("unsupported_media_type"))
    );
    let stored = b.broker().store.get(BLANK).await.unwrap().unwrap();
    assert!(stored
        .get("vaccinations")
        .is_none_or(|v| v.as_array().unwrap().is_empty()));
}

#[tokio::test]
async fn writes_outside_the_purpose_are_refused() {
    let b = with_blank_citizen().await;
    let r = b
        .post(
            "pccovid",
            &format!("/v1/citizens/{BLANK}/vaccinations?purpose=covid-qr-status"),
            vaccination("x", 1, "2021-08-01"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("forbidden_field"))
    );
    let r = b
        .post(
            "dvc",
            &format!("/v1/citizens/{BLANK}/vaccinations?purpose=vaccination-sync"),
            vaccination("x", 1, "2021-08-01"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
    let r = b
        .post(
            "moh",
            "/v1/citizens/001090999999/vaccinations?purpose=vaccination-sync",
            vaccination("x", 1, "2021-08-01"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("citizen_not_found"))
    );
}

#[tokio::test]
async fn covid_status_fully_vaccinated_from_day_14() {
    for (days_ago, expected) in [(13, "partially_vaccinated"), (14, "fully_vaccinated")] {
        let b = with_blank_citizen().await;
        assert_eq!(status_of(&b, BLANK).await, "none");
        let path = format!("/v1/citizens/{BLANK}/vaccinations?purpose=vaccination-sync");
        let first = (today() - Duration::days(90)).to_string();
        let second = (today() - Duration::days(days_ago)).to_string();
        assert_eq!(
            b.post("moh", &path, vaccination("d1", 1, &first)).await.status,
            201
        );
        assert_eq!(status_of(&b, BLANK).await, "partially_vaccinated");
        assert_eq!(
            b.post("moh", &path, vaccination("d2", 2, &second)).await.status,
            201
        );
        assert_eq!(
            status_of(&b, BLANK).await,
            expected,
            "second dose {days_ago} days ago"
        );
    }
}

#[tokio::test]
async fn covid_status_recovered_within_180_days_and_negative_test_within_72_hours() {
    let b = with_blank_citizen().await;
    let set_history = |field: &'static str, entry: Value| {
        let store = b.broker().store.clone();
        async move {
            let mut record = store.get(BLANK).await.unwrap().unwrap();
            record[field] = json!([entry]);
            store.put_many(vec![(BLANK.into(), record)]).await.unwrap();
        }
    };
    set_history(
        "recoveries",
        json!({ "recovered_on": (today() - Duration::days(180)).to_string(), "source_record_id": "f0" }),
    )
    .await;
    assert_eq!(status_of(&b, BLANK).await, "recovered");
    set_history(
        "recoveries",
        json!({ "recovered_on": (today() - Duration::days(181)).to_string(), "source_record_id": "f0" }),
    )
    .await;
    assert_eq!(status_of(&b, BLANK).await, "none");

    let at = |h: i64, s: i64| {
        (Utc::now() - Duration::hours(h) + Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    // A minute of slack either side of the 72-hour line, for the time the request takes.
    set_history(
        "test_results",
        json!({ "date": at(72, 60), "kind": "pcr", "result": "negative", "source_record_id": "t" }),
    )
    .await;
    assert_eq!(status_of(&b, BLANK).await, "negative_test");
    set_history(
        "test_results",
        json!({ "date": at(72, -60), "kind": "pcr", "result": "negative", "source_record_id": "t" }),
    )
    .await;
    assert_eq!(status_of(&b, BLANK).await, "none");
    set_history(
        "test_results",
        json!({ "date": at(1, 0), "kind": "pcr", "result": "positive", "source_record_id": "t" }),
    )
    .await;
    assert_eq!(status_of(&b, BLANK).await, "none");
}
