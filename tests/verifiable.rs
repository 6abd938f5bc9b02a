//! Verifiable outputs over real mTLS: EU DCC vaccination certificates issued for every seeded citizen with
//! vaccinations and verified offline, and signed answers checked by `lienthong verify-response`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::{TestBroker, TEST_CITIZENS};
use lienthong::dcc::{self, TrustList};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn trust_list(b: &TestBroker) -> TrustList {
    let mut trust = TrustList::default();
    trust.add_pem_file(&b.certs_dir().join("dcc-dsc.pem")).unwrap();
    trust
}

fn certificate_path(citizen: &str) -> String {
    format!("/v1/citizens/{citizen}/covid-certificate?purpose=covid-certificate")
}

#[tokio::test]
async fn every_vaccinated_citizen_gets_a_certificate_that_verifies_offline() {
    let b = TestBroker::start().await;
    let trust = trust_list(&b);
    let mut issued = 0;
    for record in lienthong::dev::population::generate(TEST_CITIZENS, 2021) {
        let Some(doses) = record["vaccinations"].as_array().filter(|d| !d.is_empty()) else {
            continue;
        };
        let id = record["citizen_id"].as_str().unwrap();
        let who = if issued % 2 == 0 { "moh" } else { "pccovid" };
        let r = b.get(who, &certificate_path(id)).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let answer = r.json();
        let dcc_json = &answer["dcc"];
        assert_eq!(dcc::schema_errors(dcc_json), None, "{id}: {dcc_json}");
        let verified = dcc::verify(answer["hc1"].as_str().unwrap(), &trust, chrono::Utc::now())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(&verified.dcc, dcc_json, "{id}");
        assert_eq!(verified.issuer.as_deref(), Some("VN"));
        // Field by field from the canonical record: the latest dose.
        let latest = doses
            .iter()
            .max_by_key(|d| d["date"].as_str().unwrap().to_string())
            .unwrap();
        let v = &dcc_json["v"][0];
        assert_eq!(v["dt"], latest["date"], "{id}");
        assert_eq!(v["dn"], latest["dose_number"], "{id}");
        assert_eq!(v["tg"], "840539006");
        assert_eq!(v["co"], "VN");
        assert_eq!(
            v["mp"],
            dcc::vaccine_codes(latest["vaccine_code"].as_str().unwrap())
                .unwrap()
                .product
        );
        assert_eq!(dcc_json["dob"], record["birth_date"]);
        let name = record["full_name"].as_str().unwrap();
        assert_eq!(dcc_json["nam"], dcc::person_name(name), "{id}");
        let ci = v["ci"].as_str().unwrap();
        assert!(
            ci.starts_with("URN:UVCI:01:VN:") && dcc::check_matches(ci),
            "{ci}"
        );
        assert_eq!(answer["uvci"], ci);
        issued += 1;
    }
    assert!(
        issued > 50,
        "only {issued} vaccinated citizens in the test population"
    );
}

#[tokio::test]
async fn certificate_formats_purposes_and_refusals() {
    let b = TestBroker::start().await;
    let id = "001090000001"; // Nguyễn Văn An: two AstraZeneca doses.
    let r = b
        .get("pccovid", &format!("{}&format=hc1", certificate_path(id)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.text().starts_with("HC1:"));
    let r = b
        .get("pccovid", &format!("{}&format=png", certificate_path(id)))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "image/png");
    let png = png::Decoder::new(std::io::Cursor::new(r.body.to_vec()));
    let info = png.read_info().unwrap().info().clone();
    assert!(
        info.width >= 200 && info.width == info.height,
        "{}x{}",
        info.width,
        info.height
    );

    let r = b
        .get("pccovid", &format!("{}&format=pdf", certificate_path(id)))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("unknown_format"))
    );
    let r = b.get("dvc", &certificate_path(id)).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("purpose_not_allowed"))
    );
    let r = b
        .get(
            "pccovid",
            &format!("/v1/citizens/{id}/covid-certificate?purpose=covid-qr-status"),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("forbidden_field"))
    );
    let r = b.get("moh", &certificate_path("001090999999")).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("citizen_not_found"))
    );
    // A citizen without vaccinations: 422, audited, nothing released.
    let unvaccinated = lienthong::dev::population::generate(TEST_CITIZENS, 2021)
        .find(|r| r["vaccinations"].as_array().is_none_or(|v| v.is_empty()))
        .unwrap();
    let unvaccinated = unvaccinated["citizen_id"].as_str().unwrap();
    let r = b.get("moh", &certificate_path(unvaccinated)).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("no_vaccination"))
    );

    // The issue is audited: who, for which citizen, which fields went in; the UVCI names the request.
    let r = b.get("moh", &certificate_path(id)).await;
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let uvci = r.json()["uvci"].as_str().unwrap().to_string();
    assert!(
        uvci.contains(&request_id.replace('-', "").to_uppercase()),
        "{uvci}"
    );
    let entry = audit_entry(&b, id, &request_id).await;
    assert_eq!(entry["operation"], "dcc_issue");
    assert_eq!(entry["agency"], "moh");
    assert_eq!(entry["purpose"], "covid-certificate");
    assert_eq!(
        entry["fields"],
        json!([
            "birth_date",
            "full_name",
            "vaccinations[].date",
            "vaccinations[].dose_number",
            "vaccinations[].vaccine_code"
        ])
    );
}

#[tokio::test]
async fn the_verify_operation_names_the_reason() {
    let b = TestBroker::start().await;
    let r = b.get("moh", &certificate_path("001090000001")).await;
    let hc1 = r.json()["hc1"].as_str().unwrap().to_string();
    let ok = b_verify(&b, hc1.clone()).await;
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["certificate"]["dcc"]["nam"]["fnt"], "NGUYEN");

    // One character changed in the middle: the compressed stream no longer checks out.
    let mut chars: Vec<char> = hc1.chars().collect();
    let middle = chars.len() / 2;
    let position = (middle..chars.len()).find(|i| chars[*i] != '0').unwrap();
    chars[position] = '0';
    let tampered: String = chars.into_iter().collect();
    let refused = b_verify(&b, tampered).await;
    assert_eq!(
        (refused["valid"].clone(), refused["reason"].clone()),
        (json!(false), json!("zlib")),
        "{refused}"
    );

    // The signature's last byte flipped, everything else intact.
    let refused = b_verify(
        &b,
        resign(&hc1, |cose| {
            let last = cose.len() - 1;
            cose[last] ^= 1;
        }),
    )
    .await;
    assert_eq!(refused["reason"], "bad_signature", "{refused}");
    assert_eq!(
        b_verify(&b, hc1.replacen("HC1:", "HC2:", 1)).await["reason"],
        "bad_prefix"
    );
    assert_eq!(b_verify(&b, "HC1:a".into()).await["reason"], "base45");

    let r = b.post("moh", "/v1/dcc/verify", json!({ "qr": hc1 })).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("schema_violation"))
    );
}

async fn b_verify(b: &TestBroker, hc1: String) -> Value {
    let r = b.post("pccovid", "/v1/dcc/verify", json!({ "hc1": hc1 })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Unwrap an `HC1:` string to its COSE bytes, change them, and wrap them again.
fn resign(hc1: &str, change: impl FnOnce(&mut Vec<u8>)) -> String {
    let compressed = base45::decode(&hc1[4..]).unwrap();
    let mut cose = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .read_to_end(&mut cose)
        .unwrap();
    change(&mut cose);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&cose).unwrap();
    format!("HC1:{}", base45::encode(zlib.finish().unwrap()))
}

async fn audit_entry(b: &TestBroker, citizen: &str, request_id: &str) -> Value {
    let r = b
        .admin_get(&format!("/admin/v1/audit/entries?citizen_id={citizen}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == request_id)
        .cloned()
        .unwrap_or_else(|| panic!("no audit entry for request {request_id}"))
}

fn verify_response(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .arg("verify-response")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn answers_are_signed_and_verify_offline() {
    let b = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = "/v1/citizens/001090000001?purpose=covid-qr-status";
    let r = b.get("pccovid", path).await;
    assert_eq!(r.status, 200);
    let signature = r.headers["x-jws-signature"].to_str().unwrap().to_string();
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(signature.contains(".."), "detached: {signature}");
    let jwks = b.get("dvc", "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.headers["content-type"], "application/jwk-set+json");
    assert_eq!(jwks.json()["keys"][0]["kty"], "OKP");
    std::fs::write(dir.path().join("jwks.json"), &jwks.body).unwrap();
    std::fs::write(dir.path().join("body"), &r.body).unwrap();
    std::fs::write(dir.path().join("signature"), &signature).unwrap();

    // The audit entry's answer hash is the SHA-256 of the body received.
    let entry = audit_entry(&b, "001090000001", &request_id).await;
    assert_eq!(entry["answer_sha256"], hex::encode(Sha256::digest(&r.body)));

    let base = [
        "--body",
        "body",
        "--signature-file",
        "signature",
        "--jwks",
        "jwks.json",
    ];
    let (code, text) = verify_response(
        dir.path(),
        &[&base[..], &["--request-id", &request_id, "--agency", "pccovid"]].concat(),
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid") && text.contains(&request_id), "{text}");

    // Another request id than the one signed.
    let (code, text) = verify_response(
        dir.path(),
        &[
            &base[..],
            &["--request-id", "00000000-0000-0000-0000-000000000000"],
        ]
        .concat(),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("request_id"), "{text}");
    // One byte of the body changed.
    let mut body = r.body.to_vec();
    body[10] ^= 0x01;
    std::fs::write(dir.path().join("body"), &body).unwrap();
    let (code, text) = verify_response(dir.path(), &base);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("does not match"), "{text}");

    // Errors are signed too, and connector answers.
    let r = b.get("dvc", path).await;
    assert_eq!(r.status, 403);
    let signed = lienthong::signed_answer::verify(
        r.headers["x-jws-signature"].to_str().unwrap(),
        &r.body,
        &jwks.json(),
    )
    .unwrap();
    assert_eq!(signed["agency"], "dvc");
    assert_eq!(signed["purpose"], "covid-qr-status");
    let example = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/examples/pccovid-qr-status.json"),
    )
    .unwrap();
    let r = b
        .post_raw(
            "pccovid",
            "/connectors/pccovid/v1/qr-status",
            "application/json",
            example,
        )
        .await;
    lienthong::signed_answer::verify(
        r.headers["x-jws-signature"].to_str().unwrap(),
        &r.body,
        &jwks.json(),
    )
    .unwrap();
}

#[tokio::test]
async fn rotated_keys_keep_old_answers_verifiable() {
    let b = TestBroker::start().await;
    let r = b
        .get("pccovid", "/v1/citizens/001090000001?purpose=covid-qr-status")
        .await;
    let old_signature = r.headers["x-jws-signature"].to_str().unwrap().to_string();
    let data_dir = b.dir.path().join("data");
    let dir = b.stop().await;
    let out = Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(["answer-keys", "rotate", "--data-dir", data_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = TestBroker::start_in(dir).await;
    let jwks = b.get("moh", "/.well-known/jwks.json").await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    lienthong::signed_answer::verify(&old_signature, &r.body, &jwks).unwrap();
    let fresh = b
        .get("pccovid", "/v1/citizens/001090000001?purpose=covid-qr-status")
        .await;
    let signed = lienthong::signed_answer::verify(
        fresh.headers["x-jws-signature"].to_str().unwrap(),
        &fresh.body,
        &jwks,
    )
    .unwrap();
    assert_eq!(signed["kid"], jwks["keys"][0]["kid"]);
    assert_ne!(signed["kid"], jwks["keys"][1]["kid"]);
}

#[tokio::test]
async fn the_catalogue_publishes_the_keys_and_the_certificate_routes() {
    let b = TestBroker::start().await;
    let doc = b.get("moh", "/v1/catalogue").await.json();
    let jwks = b.get("moh", "/.well-known/jwks.json").await.json();
    assert_eq!(doc["x-answer-signing"]["jwks"], jwks);
    assert_eq!(doc["x-answer-signing"]["header"], "x-jws-signature");
    let issue = &doc["paths"]["/v1/citizens/{citizen_id}/covid-certificate"]["get"];
    assert_eq!(issue["x-purposes"], json!(["covid-certificate"]));
    assert!(doc["paths"]["/v1/dcc/verify"]["post"].is_object());
    assert!(doc["paths"]["/.well-known/jwks.json"]["get"].is_object());
}

#[tokio::test]
async fn dcc_verify_command_checks_an_issued_certificate_offline() {
    let b = TestBroker::start().await;
    let hc1 = b.get("moh", &certificate_path("001090000001")).await.json()["hc1"]
        .as_str()
        .unwrap()
        .to_string();
    let dsc = b.certs_dir().join("dcc-dsc.pem");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lienthong"))
            .args(["dcc", "verify"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, text) = run(&[&hc1, "--trust", dsc.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid") && text.contains("NGUYEN"), "{text}");
    let (code, text) = run(&[&hc1[4..], "--trust", dsc.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("bad_prefix"), "{text}");
    // A year and a day later the certificate has expired.
    let later = (chrono::Utc::now() + chrono::Duration::days(366)).to_rfc3339();
    let (code, text) = run(&[&hc1, "--trust", dsc.to_str().unwrap(), "--at", &later]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("expired"), "{text}");
    // Someone else's Document Signer.
    let (code, text) = run(&[
        &hc1,
        "--trust",
        b.certs_dir().join("server.pem").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown_kid"), "{text}");
}
