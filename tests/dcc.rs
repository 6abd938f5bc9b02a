//! EU DCC: the real Austrian, German and common test vectors decoded and verified as their
//! `EXPECTEDRESULTS` say, issuing round trips, and tampering refused with the right reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use chrono::{DateTime, Utc};
use common::realdata;
use lienthong::dcc::{self, Refusal, TrustList};
use serde_json::Value;

struct Vector {
    json: Value,
    hc1: String,
    trust: TrustList,
    clock: DateTime<Utc>,
    expected: Value,
}

fn vector(name: &str) -> Vector {
    let text = std::fs::read_to_string(realdata(&format!("dgc-testdata/{name}"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(v["TESTCTX"]["CERTIFICATE"].as_str().unwrap())
        .unwrap();
    let mut trust = TrustList::default();
    trust.add_der(&der).unwrap();
    Vector {
        json: v["JSON"].clone(),
        hc1: v["PREFIX"].as_str().unwrap().to_string(),
        trust,
        clock: DateTime::parse_from_rfc3339(v["TESTCTX"]["VALIDATIONCLOCK"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc),
        expected: v["EXPECTEDRESULTS"].clone(),
    }
}

#[test]
fn austrian_and_german_vectors_verify_with_their_dsc() {
    for name in ["AT_2DCode_raw_1.json", "DE_2DCode_raw_1.json"] {
        let v = vector(name);
        assert_eq!(v.expected["EXPECTEDVERIFY"], true, "{name}");
        assert_eq!(v.expected["EXPECTEDSCHEMAVALIDATION"], true, "{name}");
        let verified = dcc::verify(&v.hc1, &v.trust, v.clock).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            verified.dcc, v.json,
            "{name}: decoded DCC equals the vector's JSON"
        );
    }
}

#[test]
fn common_vectors_follow_their_expected_schema_results() {
    let dgc6 = vector("common_2DCode_raw_DGC6.json");
    assert_eq!(dgc6.expected["EXPECTEDSCHEMAVALIDATION"], true);
    let verified = dcc::verify(&dgc6.hc1, &dgc6.trust, dgc6.clock).unwrap();
    assert_eq!(verified.dcc, dgc6.json);

    let dgc2 = vector("common_2DCode_raw_DGC2.json");
    assert_eq!(dgc2.expected["EXPECTEDSCHEMAVALIDATION"], false);
    let refusal = dcc::verify(&dgc2.hc1, &dgc2.trust, dgc2.clock).unwrap_err();
    assert_eq!(refusal.code(), "schema_violation", "{refusal}");
}

#[test]
fn vectors_are_refused_for_the_right_reason() {
    let v = vector("AT_2DCode_raw_1.json");
    let reason = |hc1: &str, trust: &TrustList, at: DateTime<Utc>| dcc::verify(hc1, trust, at).unwrap_err();
    assert_eq!(reason(&v.hc1[4..], &v.trust, v.clock), Refusal::BadPrefix);
    assert_eq!(reason("HC1:abc", &v.trust, v.clock).code(), "base45");
    assert_eq!(reason("HC1:000", &v.trust, v.clock).code(), "zlib");
    // Someone else's trust list.
    let de = vector("DE_2DCode_raw_1.json");
    assert_eq!(reason(&v.hc1, &de.trust, v.clock).code(), "unknown_kid");
    // After `exp` (2021-11-02 for this vector).
    let later = DateTime::parse_from_rfc3339("2022-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(reason(&v.hc1, &v.trust, later).code(), "expired");
}

#[test]
fn a_certificate_issued_outside_its_signers_validity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    lienthong::dev::certs::init_dcc_signer(dir.path()).unwrap();
    let signer =
        dcc::DocumentSigner::load(&dir.path().join("dcc-dsc.pem"), &dir.path().join("dcc-dsc.key")).unwrap();
    let mut trust = TrustList::default();
    trust.add_der(signer.certificate_der()).unwrap();
    let json = vector("common_2DCode_raw_DGC6.json").json;
    let year = chrono::Duration::days(365);
    // Issued now: valid.
    let now = Utc::now();
    let fresh = signer.sign(json.clone(), dcc::COUNTRY, now, year).unwrap();
    dcc::verify(&fresh.hc1, &trust, now).unwrap();
    // "Issued" in 2000, long before the Document Signer existed: its signature verifies, its date cannot.
    let then = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let backdated = signer.sign(json, dcc::COUNTRY, then, year).unwrap();
    let refusal = dcc::verify(&backdated.hc1, &trust, then).unwrap_err();
    assert_eq!(refusal.code(), "dsc_not_valid", "{refusal}");
}

#[test]
fn shipped_schema_is_the_shared_copy() {
    let shared = std::fs::read_to_string(realdata("ehn-dcc-schema/DCC.combined-schema.json")).unwrap();
    assert_eq!(dcc::DCC_SCHEMA, shared);
    for example in [
        "simple.json",
        "standard_case_2-of-2-moderna-moderna.json",
        "special-case-birthday-year-only.json",
    ] {
        let text = std::fs::read_to_string(realdata(&format!("ehn-dcc-schema/{example}"))).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(dcc::schema_errors(&json), None, "{example}");
    }
}

#[tokio::test]
async fn the_verify_operation_checks_the_real_vectors_with_their_own_trust_list() {
    let b = common::TestBroker::start().await;
    for (name, valid, reason) in [
        ("AT_2DCode_raw_1.json", true, None),
        ("DE_2DCode_raw_1.json", true, None),
        ("common_2DCode_raw_DGC6.json", true, None),
        ("common_2DCode_raw_DGC2.json", false, Some("schema_violation")),
    ] {
        let text = std::fs::read_to_string(realdata(&format!("dgc-testdata/{name}"))).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let body = serde_json::json!({
            "hc1": v["PREFIX"],
            "trust_list": [v["TESTCTX"]["CERTIFICATE"]],
            "at": v["TESTCTX"]["VALIDATIONCLOCK"],
        });
        let r = b.post("moh", "/v1/dcc/verify", body.clone()).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let answer = r.json();
        assert_eq!(answer["valid"], valid, "{name}: {answer}");
        assert_eq!(answer["reason"].as_str(), reason, "{name}: {answer}");
        if valid {
            assert_eq!(answer["certificate"]["dcc"], v["JSON"], "{name}");
        }
        // The broker's own trust list does not hold these signers.
        let r = b
            .post("moh", "/v1/dcc/verify", serde_json::json!({ "hc1": v["PREFIX"] }))
            .await;
        assert_eq!(r.json()["reason"], "unknown_kid", "{name}");
    }
    let r = b
        .post(
            "moh",
            "/v1/dcc/verify",
            serde_json::json!({ "hc1": "HC1:", "trust_list": ["%%"] }),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (422, Some("schema_violation"))
    );
}
