//! Issue 4: declarative connectors through the real mTLS server — the three shipped dialects, every bad
//! input in each connector's own error format, batches with mixed entries, and files that would leak
//! refused at load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::TestBroker;
use serde_json::{json, Value};

const MOH: &str = "/connectors/moh/v1/Immunization";
const PCCOVID: &str = "/connectors/pccovid/v1/qr-status";
const DVC: &str = "/connectors/dvc/v1/TraCuuThongTinCongDan";

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors/examples")
            .join(name),
    )
    .unwrap()
}

fn fault_code(body: &str) -> Option<String> {
    let start = body.find("<lt:code>")? + "<lt:code>".len();
    let end = body[start..].find("</lt:code>")? + start;
    Some(body[start..end].to_string())
}

fn outcome_code(v: &Value) -> Option<&str> {
    v["issue"][0]["details"]["coding"][0]["code"].as_str()
}

#[tokio::test]
async fn pccovid_answers_its_fields_in_its_own_shape() {
    let b = TestBroker::start().await;
    let r = b
        .post_raw(
            "pccovid",
            PCCOVID,
            "application/json",
            example("pccovid-qr-status.json"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["soDinhDanh", "hoTen", "trangThai", "mauThe", "maYeuCau"]);
    assert_eq!(body["hoTen"], "Nguyễn Văn An");
    assert_eq!(body["trangThai"], "fully_vaccinated");
    assert_eq!(body["mauThe"], "xanh");
    // A bare 12-digit ID works too.
    let r = b
        .post_raw(
            "pccovid",
            PCCOVID,
            "application/json",
            example("pccovid-id-only.json"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hoTen"], "Trần Thị Bình");
    // Audited under the connector's name, with exactly the released fields.
    let e = b
        .admin_get("/admin/v1/audit/entries?agency=pccovid&limit=1")
        .await
        .json()["entries"][0]
        .clone();
    assert_eq!(e["channel"], "pccovid-qr-status");
    assert_eq!(e["fields"], json!(["citizen_id", "covid_status", "full_name"]));
}

#[tokio::test]
async fn pccovid_refuses_mismatched_and_malformed_qr() {
    let b = TestBroker::start().await;
    let good = String::from_utf8(example("pccovid-qr-status.json")).unwrap();
    let cases = [
        (good.replace("20051990", "21051990"), 409, "qr_mismatch"),
        (
            good.replace("Nguyễn Văn An", "Nguyễn Văn Bình"),
            409,
            "qr_mismatch",
        ),
        (good.replace("20051990", "31021990"), 400, "invalid_qr_payload"),
        (
            good.replace("001090000001|", "001090000001|x|y|"),
            400,
            "invalid_qr_payload",
        ),
        (r#"{"maQR": ""}"#.to_string(), 422, "missing_field"),
        (r#"{"maYeuCau": "x"}"#.to_string(), 422, "missing_field"),
        (
            r#"{"maQR": "001090000001", "maQR": "079195000002"}"#.to_string(),
            400,
            "invalid_json",
        ),
        ("{".to_string(), 400, "invalid_json"),
        (
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            400,
            "too_deep",
        ),
    ];
    for (body, status, code) in cases {
        let r = b
            .post_raw("pccovid", PCCOVID, "application/json", body.clone())
            .await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (status, Some(code)),
            "{}: {}",
            &body[..body.len().min(80)],
            r.text()
        );
        assert!(!r.text().contains("Nguyễn Văn An\""), "no data in an error");
    }
    let r = b
        .post_raw(
            "pccovid",
            PCCOVID,
            "application/json",
            b"{\"maQR\": \"\xff\"}".to_vec(),
        )
        .await;
    assert_eq!(r.error_code().as_deref(), Some("invalid_json"));
    let r = b.post_raw("pccovid", PCCOVID, "text/plain", good.clone()).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (415, Some("unsupported_media_type"))
    );
    // Another agency's certificate cannot use the PC-Covid connector.
    let r = b.post_raw("dvc", PCCOVID, "application/json", good).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
}

#[tokio::test]
async fn dvc_soap_answers_qcvn_elements_and_faults_with_codes() {
    let b = TestBroker::start().await;
    let r = b
        .post_raw("dvc", DVC, "text/xml; charset=utf-8", example("dvc-tra-cuu.xml"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    for expected in [
        "<dc:MaYeuCau>DVC-20261123-0000123</dc:MaYeuCau>",
        "<dc:HoVaTen>Nguyễn Văn An</dc:HoVaTen>",
        "<dc:GioiTinh>1</dc:GioiTinh>",
        "<dc:NgayThangNamSinh>20/05/1990</dc:NgayThangNamSinh>",
        "<dc:ThuongTru><dc:ChiTiet>15 Tràng Tiền</dc:ChiTiet>",
        "xmlns:dc=\"http://www.mic.gov.vn/dancu/1.0\"",
    ] {
        assert!(text.contains(expected), "{expected} missing in {text}");
    }
    for never in ["vaccin", "phone", "covid"] {
        assert!(!text.to_lowercase().contains(never), "{never} leaked");
    }
    let parsed = lienthong::connector::xml::parse(text.as_bytes()).expect("well-formed SOAP");
    assert_eq!(parsed.local, "Envelope");

    let good = String::from_utf8(example("dvc-tra-cuu.xml")).unwrap();
    let xxe = good.replace(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>",
    );
    let cases = [
        (
            good.replace("001090000001", "001090999999"),
            404,
            "citizen_not_found",
        ),
        (
            good.replace("001090000001", "00109000000X"),
            400,
            "invalid_citizen_id",
        ),
        (xxe, 400, "xml_doctype_refused"),
        (good.replace("Nguyễn Văn An", "&xxe;"), 400, "xml_entity_refused"),
        (
            good.replace(
                "<soap:Header/>",
                &format!("<soap:Header a=\"{}\"/>", "x".repeat(10_000)),
            ),
            400,
            "xml_too_large",
        ),
        (good.replace("</soap:Envelope>", ""), 400, "invalid_xml"),
        (
            format!("{}{}", "<a>".repeat(200), "</a>".repeat(200)),
            400,
            "too_deep",
        ),
        (
            good.replace("dc:SoDinhDanh", "dc:SoDinhDanhX"),
            422,
            "missing_field",
        ),
    ];
    for (body, status, code) in cases {
        let r = b.post_raw("dvc", DVC, "text/xml", body).await;
        assert_eq!(r.status, status, "{code}: {}", r.text());
        assert!(r.text().contains("<soap:Fault>"), "{}", r.text());
        assert_eq!(fault_code(&r.text()).as_deref(), Some(code), "{}", r.text());
    }
    let r = b.post_raw("dvc", DVC, "application/json", good.clone()).await;
    assert_eq!(
        (r.status, fault_code(&r.text()).as_deref()),
        (415, Some("unsupported_media_type"))
    );
    let r = b.post_raw("dvc", DVC, "text/xml", b"<r>\xff</r>".to_vec()).await;
    assert_eq!(fault_code(&r.text()).as_deref(), Some("invalid_encoding"));
}

#[tokio::test]
async fn dvc_accepts_real_x_road_envelopes_with_a_fault_never_a_crash() {
    let b = TestBroker::start().await;
    let dir = common::realdata("xroad");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".query") || name.ends_with(".xml")) {
            continue;
        }
        let r = b
            .post_raw("dvc", DVC, "text/xml", std::fs::read(&path).unwrap())
            .await;
        assert!(
            (400..500).contains(&r.status),
            "{name}: {} {}",
            r.status,
            r.text()
        );
        assert!(r.text().contains("<soap:Fault>"), "{name}: {}", r.text());
        assert!(fault_code(&r.text()).is_some(), "{name}");
        seen += 1;
    }
    assert!(seen >= 10, "the X-Road queries are all exercised ({seen})");
}

#[tokio::test]
async fn moh_writes_a_fhir_immunization_idempotently() {
    let b = TestBroker::start().await;
    let r = b
        .post_raw(
            "moh",
            MOH,
            "application/fhir+json",
            example("moh-immunization.json"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let r = b
        .post_raw(
            "moh",
            MOH,
            "application/fhir+json",
            example("moh-immunization.json"),
        )
        .await;
    assert_eq!(r.status, 200, "replay: {}", r.text());
    let record = b.broker().store.get("048203000003").await.unwrap().unwrap();
    let v = record["vaccinations"].as_array().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["date"], "2021-09-12");
    assert_eq!(v[0]["dose_number"], 1);
    assert_eq!(
        v[0]["site"],
        "Trạm Y tế Phường Hải Châu I, Quận Hải Châu, Đà Nẵng"
    );
    let changed = String::from_utf8(example("moh-immunization.json"))
        .unwrap()
        .replace("FF2587", "FF0000");
    let r = b.post_raw("moh", MOH, "application/fhir+json", changed).await;
    assert_eq!(
        (r.status, outcome_code(&r.json())),
        (409, Some("idempotency_conflict"))
    );
}

#[tokio::test]
async fn moh_refuses_the_real_fhir_example_clearly() {
    let b = TestBroker::start().await;
    // HL7's own Immunization example names its patient by reference, with no 12-digit ID.
    let r = b
        .post_raw(
            "moh",
            MOH,
            "application/fhir+json",
            std::fs::read(common::realdata("fhir-r4/Immunization.json")).unwrap(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(outcome_code(&body), Some("missing_field"));
    // A Patient (one with a UTF-8 BOM) is not an Immunization.
    for file in [
        "fhir-r4/Patient-f001.json",
        "fhir-r4/Patient.json",
        "fhir-r4/PatientMissingResourceType.json",
    ] {
        let r = b
            .post_raw(
                "moh",
                MOH,
                "application/fhir+json",
                std::fs::read(common::realdata(file)).unwrap(),
            )
            .await;
        assert_eq!(
            (r.status, outcome_code(&r.json())),
            (422, Some("unexpected_document")),
            "{file}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn a_bundle_with_mixed_entries_writes_the_good_ones_exactly_once() {
    let b = TestBroker::start().await;
    let binh_before = b.broker().store.get("079195000002").await.unwrap().unwrap()["vaccinations"]
        .as_array()
        .unwrap()
        .len();
    let r = b
        .post_raw("moh", MOH, "application/fhir+json", example("moh-bundle.json"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["type"], "batch-response");
    let statuses: Vec<&str> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "404 Not Found",
            "422 Unprocessable Entity",
            "201 Created"
        ]
    );
    assert_eq!(
        outcome_code(&body["entry"][1]["response"]["outcome"]),
        Some("citizen_not_found")
    );
    assert_eq!(
        outcome_code(&body["entry"][2]["response"]["outcome"]),
        Some("invalid_value")
    );
    let chau = b.broker().store.get("048203000003").await.unwrap().unwrap();
    assert_eq!(chau["vaccinations"].as_array().unwrap().len(), 1);
    let binh = b.broker().store.get("079195000002").await.unwrap().unwrap();
    assert_eq!(binh["vaccinations"].as_array().unwrap().len(), binh_before + 1);

    // Replaying the night's bundle writes nothing twice.
    let r = b
        .post_raw("moh", MOH, "application/fhir+json", example("moh-bundle.json"))
        .await;
    let statuses: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses,
        ["200 OK", "404 Not Found", "422 Unprocessable Entity", "200 OK"]
    );
    let binh = b.broker().store.get("079195000002").await.unwrap().unwrap();
    assert_eq!(binh["vaccinations"].as_array().unwrap().len(), binh_before + 1);
    let e = b
        .admin_get("/admin/v1/audit/entries?agency=moh&limit=1")
        .await
        .json()["entries"][0]
        .clone();
    assert_eq!(e["bulk"], true);
    assert_eq!(e["channel"], "moh-vaccination");
}

#[tokio::test]
async fn oversized_bodies_are_refused_in_the_connector_format() {
    let b = TestBroker::start().await;
    let huge = vec![b' '; 2 * 1024 * 1024];
    let r = b.post_raw("moh", MOH, "application/fhir+json", huge).await;
    assert_eq!(
        (r.status, outcome_code(&r.json())),
        (413, Some("body_too_large")),
        "{}",
        r.text()
    );
    let r = b
        .post_raw("dvc", DVC, "text/xml", vec![b' '; 2 * 1024 * 1024])
        .await;
    assert_eq!(
        (r.status, fault_code(&r.text()).as_deref()),
        (413, Some("body_too_large"))
    );
}

fn load_one(text: &str) -> Result<lienthong::connector::ConnectorSet, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.toml"), text).unwrap();
    let schema = lienthong::schema::CitizenSchema::load(None).unwrap();
    let catalogue = lienthong::policy::Catalogue::load(None, &schema).unwrap();
    lienthong::connector::ConnectorSet::load(Some(dir.path()), &schema, &catalogue).map_err(|e| e.to_string())
}

#[test]
fn connector_files_that_would_leak_or_misfile_fail_to_load_naming_the_line() {
    let pccovid = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/pccovid-qr-status.toml"),
    )
    .unwrap();
    assert!(load_one(&pccovid).is_ok());
    let leak = pccovid.replacen("from = \"full_name\"", "from = \"phone\"", 1);
    let err = load_one(&leak).unwrap_err();
    assert!(
        err.contains("outside purpose covid-qr-status") && err.contains("x.toml:"),
        "{err}"
    );
    let line = leak.lines().position(|l| l.contains("\"phone\"")).unwrap() + 1;
    assert!(err.contains(&format!("x.toml:{line}:")), "line {line}: {err}");
    let unknown = pccovid.replacen("from = \"full_name\"", "from = \"nickname\"", 1);
    assert!(load_one(&unknown)
        .unwrap_err()
        .contains("unknown canonical field"));
    let bad_pointer = pccovid.replacen("to = \"/hoTen\"", "to = \"hoTen\"", 1);
    assert!(load_one(&bad_pointer).unwrap_err().contains("not a JSON Pointer"));
    let bad_transform = pccovid.replacen("enum:mau_the", "enum:nope", 1);
    assert!(load_one(&bad_transform).unwrap_err().contains("nope"));

    let moh = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/moh-vaccination.toml"),
    )
    .unwrap();
    let misfile = moh.replacen("to = \"vaccinations[].lot\"", "to = \"test_results[].result\"", 1);
    assert!(
        load_one(&misfile).unwrap_err().contains("not writable"),
        "{}",
        load_one(&misfile).unwrap_err()
    );
    let dvc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/dvc-citizen-info.toml"),
    )
    .unwrap();
    let prefix = dvc.replacen("dc:CongDan/dc:HoVaTen", "xx:CongDan/dc:HoVaTen", 1);
    assert!(load_one(&prefix).unwrap_err().contains("prefix \"xx\""));
    let health = dvc.replacen("from = \"full_name\"", "from = \"vaccinations\"", 1);
    assert!(load_one(&health).unwrap_err().contains("would leak"));
}
