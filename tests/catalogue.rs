//! Issue 22: the yearly service catalogue — versions with effective instants, switched with no restart,
//! published (`GET /v1/catalogue`, versions, diff), and bills at the terms in force at each call: the
//! catalogue version on each audit entry, dated billing-class changes, and closed (signed) months.
//! Time is moved on the broker's clock, never waited for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::TestBroker;
use serde_json::{json, Value};

const AN: &str = "001090000001";

fn qr_read() -> String {
    format!("/v1/citizens/{AN}?purpose=covid-qr-status")
}

fn prefill_read() -> String {
    format!("/v1/citizens/{AN}?purpose=public-service-prefill")
}

/// An instant written in Vietnam time.
fn vn(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{text}+07:00"))
        .unwrap()
        .with_timezone(&Utc)
}

/// The shipped catalogue as version `id`, effective at `effective`, with the QR look-up at `qr_price`.
fn version_file(id: &str, effective: &str, qr_price: u64) -> String {
    let shipped = lienthong::policy::EMBEDDED_PURPOSES;
    let priced = shipped.replacen("price_vnd = 500", &format!("price_vnd = {qr_price}"), 1);
    assert!(shipped.contains("price_vnd = 500"), "the shipped QR price is 500");
    format!("[release]\nversion = \"{id}\"\neffective = \"{effective}\"\n\n{priced}")
}

async fn load(b: &TestBroker, origin: &str, text: &str) -> lienthong::client::Response {
    b.client("admin")
        .request(
            b.admin,
            hyper::Method::POST,
            &format!("/admin/v1/catalogue/versions?origin={origin}"),
            Some("application/toml"),
            text.to_string(),
        )
        .await
        .unwrap()
}

async fn set_class(b: &TestBroker, agency: &str, class: &str) {
    let r = b
        .client("admin")
        .request(
            b.admin,
            hyper::Method::PUT,
            &format!("/admin/v1/agencies/{agency}/billing-class"),
            Some("application/json"),
            json!({ "billing_class": class }).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn report(b: &TestBroker, month: &str) -> Value {
    let r = b
        .admin_get(&format!("/admin/v1/billing/report?month={month}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn lines_of(report: &Value, agency: &str) -> Vec<Value> {
    report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["agency"] == agency)
        .cloned()
        .collect()
}

async fn serve(b: &TestBroker, who: &str, path: &str, times: usize) {
    for _ in 0..times {
        let r = b.get(who, path).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn a_price_raised_on_the_15th_bills_two_lines_each_at_its_own_price() {
    let b = TestBroker::start().await;
    let clock = b.broker().clock.clone();
    clock.set(vn("2030-03-05T09:00:00"));
    let r = load(
        &b,
        "purposes-2030.toml",
        &version_file("2030-03", "2030-03-15", 800),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["effective_at"], "2030-03-15T00:00:00+07:00");
    serve(&b, "pccovid", &qr_read(), 2).await;
    clock.set(vn("2030-03-20T09:00:00"));
    serve(&b, "pccovid", &qr_read(), 3).await;

    let report = report(&b, "2030-03").await;
    let lines = lines_of(&report, "pccovid");
    assert_eq!(lines.len(), 2, "{report}");
    let brief = |l: &Value| {
        (
            l["unit_price_vnd"].as_u64().unwrap(),
            l["served"].as_u64().unwrap(),
            l["amount_vnd"].as_u64().unwrap(),
            l["catalogue_versions"].clone(),
        )
    };
    assert_eq!(brief(&lines[0]), (500, 2, 1000, json!(["initial"])));
    assert_eq!(brief(&lines[1]), (800, 3, 2400, json!(["2030-03"])));
    assert_eq!(report["total_vnd"], 3400);
    let csv = b
        .admin_get("/admin/v1/billing/report?month=2030-03&format=csv")
        .await
        .text();
    assert!(
        csv.contains("2030-03,pccovid,covid-qr-status,2,0,500,1000,false\n"),
        "{csv}"
    );
    assert!(
        csv.contains("2030-03,pccovid,covid-qr-status,3,0,800,2400,false\n"),
        "{csv}"
    );

    // Each audit entry names the version that served it; reconcile recomputes exactly this.
    let entries = b
        .admin_get("/admin/v1/audit/entries?agency=pccovid&limit=10")
        .await
        .json();
    let versions: Vec<&str> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["catalogue_version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2030-03", "2030-03", "2030-03", "initial", "initial"]);
    let rec = b
        .admin_get("/admin/v1/billing/reconcile?month=2030-03")
        .await
        .json();
    assert_eq!(rec["ok"], true, "{rec}");
    assert_eq!(rec["from_audit"]["lines"], report["lines"]);
    let verify = b.admin_get("/admin/v1/audit/verify").await.json();
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test]
async fn an_agency_moved_to_state_budget_on_the_10th_is_charged_before_and_exempt_after() {
    let b = TestBroker::start().await;
    let clock = b.broker().clock.clone();
    clock.set(vn("2030-05-03T10:00:00"));
    serve(&b, "dvc", &prefill_read(), 2).await;
    clock.set(vn("2030-05-10T00:00:00"));
    set_class(&b, "dvc", "state-budget").await;
    clock.set(vn("2030-05-12T10:00:00"));
    serve(&b, "dvc", &prefill_read(), 1).await;

    let report = report(&b, "2030-05").await;
    let lines = lines_of(&report, "dvc");
    let brief = |l: &Value| {
        (
            l["billing_class"].as_str().unwrap().to_string(),
            l["served"].as_u64().unwrap(),
            l["amount_vnd"].as_u64().unwrap(),
            l["exempt"].as_bool().unwrap(),
        )
    };
    assert_eq!(
        lines.iter().map(brief).collect::<Vec<_>>(),
        [
            ("billed".to_string(), 2, 2000, false),
            ("state-budget".to_string(), 1, 0, true)
        ],
        "{report}"
    );
    assert_eq!(report["total_vnd"], 2000);
    // The change is dated and on the audit trail.
    let agency = b.admin_get("/admin/v1/agencies/dvc").await.json();
    assert_eq!(agency["agency"]["billing_class"], "state-budget");
    let admin = b
        .admin_get("/admin/v1/audit/entries?agency=admin&limit=50")
        .await
        .json();
    let change = admin["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["operation"] == "admin:set_billing_class")
        .expect("the class change is audited");
    assert_eq!(change["time"], "2030-05-09T17:00:00.000Z");
}

#[tokio::test]
async fn a_closed_month_is_signed_and_unchanged_by_a_new_version_and_a_class_change() {
    let b = TestBroker::start().await;
    let clock = b.broker().clock.clone();
    clock.set(vn("2030-06-10T10:00:00"));
    serve(&b, "pccovid", &qr_read(), 2).await;
    serve(&b, "dvc", &prefill_read(), 1).await;

    // Not before the month is over.
    let r = b
        .admin_post("/admin/v1/billing/close?month=2030-06", json!({}))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("month_not_over"))
    );

    clock.set(vn("2030-07-01T00:00:00"));
    // Closed through the CLI, as an operator would, exported as JSON.
    let out = b.dir.path().join("2030-06.json");
    let code = cli(
        &b,
        &[
            "billing",
            "close",
            "--month",
            "2030-06",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0);
    let closed: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let statement = &closed["statement"];
    assert_eq!(statement["report"]["total_vnd"], 2000);
    assert!(statement["audit_head_seq"].as_u64().unwrap() > 3);
    assert_eq!(statement["audit_head_hash"].as_str().unwrap().len(), 64);
    // The signature is the trail's key over the exported statement.
    let public = std::fs::read_to_string(b.dir.path().join("data/audit/checkpoint.pub")).unwrap();
    assert_eq!(closed["signature"]["public_key"], public.trim());
    let signed = closed["signed_json"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(signed).unwrap(), *statement);
    let message = format!("lienthong-billing-close-v1\n{signed}");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, hex::decode(public.trim()).unwrap())
        .verify(
            message.as_bytes(),
            &hex::decode(closed["signature"]["signature"].as_str().unwrap()).unwrap(),
        )
        .expect("the closed month's signature verifies");

    // A later version and a class change leave the closed month as it was.
    let r = load(
        &b,
        "purposes-2030-07.toml",
        &version_file("2030-07", "2030-07-02", 9000),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    set_class(&b, "dvc", "state-budget").await;
    clock.set(vn("2030-07-03T00:00:00"));
    let after = report(&b, "2030-06").await;
    assert_eq!(after["closed"], true);
    assert_eq!(after["lines"], statement["report"]["lines"]);
    assert_eq!(after["total_vnd"], 2000);
    let rec = b
        .admin_get("/admin/v1/billing/reconcile?month=2030-06")
        .await
        .json();
    assert_eq!(
        (rec["ok"].clone(), rec["closed_report_matches"].clone()),
        (json!(true), json!(true)),
        "{rec}"
    );

    // Closed once; the CSV export carries the chain head and the signature.
    let r = b
        .admin_post("/admin/v1/billing/close?month=2030-06", json!({}))
        .await;
    assert_eq!((r.status, r.error_code().as_deref()), (409, Some("month_closed")));
    let csv = b
        .admin_get("/admin/v1/billing/closed?month=2030-06&format=csv")
        .await
        .text();
    assert!(csv.starts_with("month,agency,purpose,served,refused_quota,unit_price_vnd,amount_vnd,exempt\n"));
    assert!(
        csv.contains(&format!(
            "# audit_head_hash={}\n",
            statement["audit_head_hash"].as_str().unwrap()
        )),
        "{csv}"
    );
    assert!(csv.contains(&format!(
        "# signature={}\n",
        closed["signature"]["signature"].as_str().unwrap()
    )));
    let r = b.admin_get("/admin/v1/billing/closed?month=2030-05").await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("month_not_closed"))
    );
}

#[tokio::test]
async fn a_scheduled_version_takes_effect_at_its_instant_and_the_boundary_sees_exactly_one() {
    let b = TestBroker::start().await;
    let clock = b.broker().clock.clone();
    let boundary = vn("2031-01-01T00:00:00");
    clock.set(vn("2030-12-20T08:00:00"));
    let r = load(
        &b,
        "purposes-2031.toml",
        &version_file("2031", "2031-01-01T00:00:00+07:00", 650),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Published before it takes effect: listed as scheduled, fetchable, diffable.
    let versions = b.get("pccovid", "/v1/catalogue/versions").await.json();
    assert_eq!(versions["in_force"], "initial");
    assert_eq!(
        versions["versions"][1],
        json!({ "version": "2031", "effective_at": "2031-01-01T00:00:00+07:00", "in_force": false, "purposes": 10 })
    );
    let doc = b.get("pccovid", "/v1/catalogue?version=2031").await.json();
    assert_eq!(doc["x-catalogue"]["version"], "2031");
    let diff = b
        .get("pccovid", "/v1/catalogue/diff?from=initial&to=2031")
        .await
        .json();
    assert_eq!(
        diff["prices_changed"],
        json!([{ "purpose": "covid-qr-status", "from_vnd": 500, "to_vnd": 650 }])
    );
    assert_eq!(diff["purposes_added"], json!([]));
    let r = b.get("pccovid", "/v1/catalogue?version=1999").await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("unknown_catalogue_version"))
    );

    // One millisecond before: the old terms; exactly at the instant: the new ones. No restart.
    clock.set(boundary - Duration::milliseconds(1));
    let doc = b.get("pccovid", "/v1/catalogue").await.json();
    assert_eq!(
        doc["x-catalogue"],
        json!({ "version": "initial", "effective_at": "1970-01-01T07:00:00+07:00" })
    );
    serve(&b, "pccovid", &qr_read(), 1).await;
    clock.set(boundary);
    let doc = b.get("pccovid", "/v1/catalogue").await.json();
    assert_eq!(doc["x-catalogue"]["version"], "2031");
    let qr = doc["x-purposes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "covid-qr-status")
        .unwrap()
        .clone();
    assert_eq!(qr["price_vnd"], 650);
    serve(&b, "pccovid", &qr_read(), 1).await;

    let entries = b
        .admin_get("/admin/v1/audit/entries?agency=pccovid&purpose=covid-qr-status&limit=2")
        .await
        .json();
    let seen: Vec<(String, String)> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["time"].as_str().unwrap().into(),
                e["catalogue_version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("2030-12-31T17:00:00.000Z".to_string(), "2031".to_string()),
            ("2030-12-31T16:59:59.999Z".to_string(), "initial".to_string())
        ]
    );
    // The call at the boundary is January's and billed at the new price; the one before is December's.
    let jan = report(&b, "2031-01").await;
    assert_eq!(lines_of(&jan, "pccovid")[0]["amount_vnd"], 650, "{jan}");
    let dec = report(&b, "2030-12").await;
    assert_eq!(lines_of(&dec, "pccovid")[0]["amount_vnd"], 500, "{dec}");

    // Kept across a restart.
    let b = b.restart().await;
    b.broker().clock.set(boundary);
    let versions = b.admin_get("/admin/v1/catalogue/versions").await.json();
    let ids: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["initial", "2031"]);
    assert_eq!(versions["in_force"], "2031", "{versions}");
}

#[tokio::test]
async fn a_malformed_version_is_refused_with_file_and_line_and_the_running_one_keeps_serving() {
    let b = TestBroker::start().await;
    let clock = b.broker().clock.clone();
    clock.set(vn("2032-01-05T08:00:00"));
    let good = version_file("2033", "2033-01-01", 500);
    let cases: Vec<(String, u16, &str, &str)> = vec![
        // A field outside the canonical schema, on line 20 of the file.
        (
            good.replacen("\"birth_date\"]", "\"shoe_size\"]", 1),
            422,
            "invalid_catalogue",
            "purposes-2033.toml:20: ",
        ),
        // A grant to an agency the registry does not know.
        (
            good.replacen(
                "agencies = [\"pccovid\"]",
                "agencies = [\"pccovid\", \"nobody\"]",
                1,
            ),
            422,
            "invalid_catalogue",
            "purposes-2033.toml:33: ",
        ),
        // An unknown key.
        (
            good.replacen("price_vnd = 1000", "price_vnd = 1000\nprice_usd = 1", 1),
            422,
            "invalid_catalogue",
            "purposes-2033.toml:",
        ),
        // A purpose a loaded connector serves, removed.
        (
            good.replacen("id = \"recovery-sync\"", "id = \"recovery-sync-v2\"", 1),
            422,
            "invalid_catalogue",
            "purposes-2033.toml: connector moh-recovery serves purpose `recovery-sync`",
        ),
        // No [release] table.
        (
            lienthong::policy::EMBEDDED_PURPOSES.to_string(),
            422,
            "invalid_catalogue",
            "purposes-2033.toml:1: ",
        ),
        // An effective date that is not a date.
        (
            good.replacen("effective = \"2033-01-01\"", "effective = \"next year\"", 1),
            422,
            "invalid_catalogue",
            "purposes-2033.toml:3: ",
        ),
        // Terms already served cannot be rewritten.
        (
            version_file("2031", "2031-06-01", 500),
            409,
            "catalogue_effective_conflict",
            "",
        ),
        // Nor can a version id be reused.
        (
            version_file("initial", "2034-01-01", 500),
            409,
            "catalogue_version_exists",
            "",
        ),
    ];
    for (text, status, code, message_start) in cases {
        let r = load(&b, "purposes-2033.toml", &text).await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (status, Some(code)),
            "{}",
            r.text()
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(message_start), "{message}");
    }
    // The running version still serves, nothing was kept, and every refusal is on the trail.
    serve(&b, "pccovid", &qr_read(), 1).await;
    let versions = b.admin_get("/admin/v1/catalogue/versions").await.json();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1, "{versions}");
    let admin = b
        .admin_get("/admin/v1/audit/entries?agency=admin&limit=50")
        .await
        .json();
    let refused = admin["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "admin:load_catalogue" && e["status"] != 201)
        .count();
    assert_eq!(refused, 8);

    // The CLI names the file and line too, and exits 1.
    let file = b.dir.path().join("bad.toml");
    std::fs::write(&file, good.replacen("\"birth_date\"]", "\"shoe_size\"]", 1)).unwrap();
    let code = cli(&b, &["catalogue", "load", file.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    let file = b.dir.path().join("good.toml");
    std::fs::write(&file, &good).unwrap();
    assert_eq!(cli(&b, &["catalogue", "load", file.to_str().unwrap()]).await, 0);
    let versions = b.admin_get("/admin/v1/catalogue/versions").await.json();
    assert_eq!(versions["versions"][1]["version"], "2033");
    let admin = b
        .admin_get("/admin/v1/audit/entries?agency=admin&limit=5")
        .await
        .json();
    assert!(
        admin["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "admin:load_catalogue:2033" && e["status"] == 201),
        "{admin}"
    );
}

/// Run the CLI against the test broker's admin listener; its exit code.
async fn cli(b: &TestBroker, args: &[&str]) -> i32 {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(b.cli_admin_args());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lienthong"))
            .args(&all)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("bad.toml:20: "),
            "a refusal names file and line: {stderr}"
        );
    }
    out.status.code().unwrap_or(-1)
}
