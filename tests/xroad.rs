//! The X-Road channel and the accountability of every request, over real mTLS: X-Road's own test queries
//! with the outcomes X-Road's `SoapMessageTest` (and its proxy test cases) expect, an X-Road REST read,
//! X-Road clients bound to agencies, the official and the reason in the audit trail, and accesses hidden
//! from the citizen until a date.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::TestBroker;
use hyper::Method;
use lienthong::client::Response;
use lienthong::config::{Config, XRoadServiceConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha512};

const AN: &str = "001090000001";
const CONSUMER: &str = "EE/BUSINESS/consumer";

/// A catalogue with the published purposes plus one that may hide (investigations) and one resting on
/// consent, for `dvc`.
const EXTRA_PURPOSES: &str = r#"
[[purpose]]
id = "police-investigation"
title_vi = "Điều tra hình sự"
title_en = "Criminal investigation"
legal_basis = "Bộ luật Tố tụng hình sự 2015"
read = ["citizen_id", "full_name"]
price_vnd = 0
agencies = ["dvc"]
max_hidden_days = 30
official_id_shown = "none"

[[purpose]]
id = "consented-check"
title_vi = "Kiểm tra theo sự đồng ý của công dân"
title_en = "Check with the citizen's consent"
legal_basis = "Nghị định 13/2023/NĐ-CP"
read = ["citizen_id", "full_name"]
price_vnd = 0
agencies = ["dvc"]
consent_based = true
"#;

fn service(id: &str, operation: &str, purpose: Option<&str>) -> XRoadServiceConfig {
    XRoadServiceConfig {
        service: id.into(),
        operation: operation.into(),
        purpose: purpose.map(str::to_string),
        connector: None,
    }
}

fn connector_service(id: &str, connector: &str) -> XRoadServiceConfig {
    XRoadServiceConfig {
        connector: Some(connector.into()),
        ..service(id, "connector", None)
    }
}

/// A test broker and the catalogue file it was started with.
struct Fixture {
    broker: TestBroker,
    _catalogue: tempfile::TempPath,
}

impl std::ops::Deref for Fixture {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.broker
    }
}

async fn broker() -> Fixture {
    let catalogue = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        catalogue.path(),
        format!("{}{EXTRA_PURPOSES}", lienthong::policy::EMBEDDED_PURPOSES),
    )
    .unwrap();
    let catalogue = catalogue.into_temp_path();
    let path = catalogue.to_path_buf();
    let b = TestBroker::start_with(move |c: &mut Config| {
        c.catalogue.purposes = Some(path);
        c.xroad.services = vec![
            service("EE/BUSINESS/producer/testQuery", "list_purposes", None),
            service("EE/GOV/MEMBER2/SUBSYSTEM2/exampleService", "list_purposes", None),
            service(
                "EE/BUSINESS/producer/getCitizen",
                "read",
                Some("public-service-prefill"),
            ),
            service(
                "VN/GOV/lienthong/citizens/getCitizen",
                "read",
                Some("public-service-prefill"),
            ),
            service("VN/GOV/lienthong/citizens/purposes", "list_purposes", None),
            connector_service("EE/BUSINESS/producer/TraCuuThongTinCongDan", "dvc-citizen-info"),
            connector_service("VN/GOV/lienthong/citizens/qrStatus", "pccovid-qr-status"),
        ];
    })
    .await;
    set_xroad(
        &b,
        "dvc",
        json!({"instance": "EE", "member_class": "BUSINESS", "member_code": "consumer"}),
    )
    .await;
    Fixture {
        broker: b,
        _catalogue: catalogue,
    }
}

async fn set_xroad(b: &TestBroker, agency: &str, id: Value) -> Response {
    let r = b
        .client("admin")
        .request(
            b.admin,
            Method::PUT,
            &format!("/admin/v1/agencies/{agency}/xroad"),
            Some("application/json"),
            id.to_string(),
        )
        .await
        .unwrap();
    if r.status != 200 {
        return r;
    }
    assert!(
        r.json()["agency"]["xroad"]["member_code"].is_string(),
        "{}",
        r.text()
    );
    r
}

async fn soap(b: &TestBroker, who: &str, body: Vec<u8>) -> Response {
    b.post_raw(who, "/xroad", "text/xml; charset=utf-8", body).await
}

fn query(name: &str) -> Vec<u8> {
    std::fs::read(common::realdata(&format!("xroad/{name}"))).unwrap()
}

/// The faultcode of a SOAP Fault.
fn fault_code(text: &str) -> Option<String> {
    let start = text.find("<faultcode>")? + "<faultcode>".len();
    let end = text[start..].find("</faultcode>")? + start;
    Some(text[start..end].to_string())
}

/// lienthong's stable code in a fault's detail.
fn lienthong_code(text: &str) -> Option<String> {
    let start = text.find("<lt:code>")? + "<lt:code>".len();
    let end = text[start..].find("</lt:code>")? + start;
    Some(text[start..end].to_string())
}

async fn entries(b: &TestBroker, query: &str) -> Vec<Value> {
    let r = b.admin_get(&format!("/admin/v1/audit/entries?{query}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entries"].as_array().unwrap().clone()
}

async fn verify(b: &TestBroker) {
    let r = b.admin_get("/admin/v1/audit/verify").await;
    assert_eq!(r.json()["ok"], true, "{}", r.text());
}

#[tokio::test]
async fn every_x_road_test_query_gets_the_outcome_x_road_expects() {
    let b = broker().await;
    // (file, HTTP status, X-Road fault code or None when served) — SoapMessageTest and the proxy test
    // cases MissingProtocolVersionHeader, MissingObjectTypeMessage and MissingUserIdHeader.
    let expected: [(&str, u16, Option<&str>); 11] = [
        ("simple.query", 200, None),
        ("simple-representedparty.query", 200, None),
        ("missing-userId.query", 200, None),
        ("no-header.query", 400, Some("Client.MissingHeader")),
        ("missing-body.query", 400, Some("Client.MissingBody")),
        ("faulty-header.query", 400, Some("Client.MissingHeaderField")),
        ("faulty-header2.query", 400, Some("Client.DuplicateHeaderField")),
        (
            "inconsistent-headers.query",
            400,
            Some("Client.InconsistentHeaders"),
        ),
        (
            "missing-protocolVersion.query",
            400,
            Some("Client.MissingHeaderField"),
        ),
        ("missingobjecttype.query", 400, Some("Client.InvalidXml")),
        // Annex E.1 names the client EE/GOV/MEMBER1/SUBSYSTEM1; dvc's certificate is bound to another.
        (
            "pr-mess_annexE1_request.xml",
            403,
            Some("Client.InvalidClientIdentifier"),
        ),
    ];
    let dir = common::realdata("xroad");
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().to_string_lossy().to_string();
            name.ends_with(".query") || name.ends_with(".xml")
        })
        .count();
    assert_eq!(
        on_disk,
        expected.len(),
        "every shared query has its expected outcome"
    );
    for (name, status, code) in expected {
        let request = query(name);
        let r = soap(&b, "dvc", request.clone()).await;
        let text = r.text();
        assert_eq!(r.status, status, "{name}: {text}");
        assert!(text.contains("<SOAP-ENV:Envelope"), "{name}: {text}");
        assert_eq!(fault_code(&text).as_deref(), code, "{name}: {text}");
        if code.is_none() {
            // The header comes back, in order, with the request's hash as X-Road computes it.
            let hash = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&request));
            assert!(
                text.contains(&format!(
                    "<xrd:requestHash algorithmId=\"http://www.w3.org/2001/04/xmlenc#sha512\">{hash}</xrd:requestHash>"
                )),
                "{name}: {text}"
            );
            let client = text
                .find("<xrd:client id:objectType=\"MEMBER\">")
                .expect("client echoed");
            let service = text
                .find("<xrd:service id:objectType=\"SERVICE\">")
                .expect("service echoed");
            let id = text.find("<xrd:id>1234567890</xrd:id>").expect("id echoed");
            let version = text
                .find("<xrd:protocolVersion>4.0</xrd:protocolVersion>")
                .unwrap();
            assert!(
                client < service && service < id && id < version,
                "{name}: order kept: {text}"
            );
            assert!(
                text.contains("<svc:testQueryResponse xmlns:svc=\"http://cosumer.ee.xroad.net\"><purposes>"),
                "{name}: {text}"
            );
        }
    }
    let r = b
        .post_raw("dvc", "/xroad", "text/html", query("simple.query"))
        .await;
    assert_eq!(
        fault_code(&r.text()).as_deref(),
        Some("Client.InvalidContentType")
    );
    assert_eq!(
        lienthong_code(&r.text()).as_deref(),
        Some("xroad_invalid_content_type")
    );

    let text = soap(&b, "dvc", query("simple-representedparty.query"))
        .await
        .text();
    assert!(
        text.contains("<repr:representedParty><repr:partyClass>COM</repr:partyClass><repr:partyCode>MEMBER3</repr:partyCode></repr:representedParty>"),
        "{text}"
    );
    assert!(text.contains("<xrd:issue>issue-1</xrd:issue>"), "{text}");

    // Every outcome is in the trail, with the official and the X-Road ids of the served ones.
    let trail = entries(&b, "agency=dvc&limit=100").await;
    let soap_entries: Vec<&Value> = trail.iter().filter(|e| e["channel"] == "xroad-soap").collect();
    assert_eq!(soap_entries.len(), expected.len() + 2);
    let mismatch = soap_entries
        .iter()
        .find(|e| e["error_code"] == "xroad_client_mismatch")
        .expect("the refused client is on the trail");
    assert_eq!(mismatch["status"], 403);
    let served = entries(&b, "agency=dvc&user_id=EE37702211234").await;
    assert!(served.iter().any(|e| e["accountability"]["issue"] == "issue-1"
        && e["accountability"]["xroad_client"] == CONSUMER
        && e["accountability"]["xroad_service"] == "EE/BUSINESS/producer/testQuery"
        && e["accountability"]["xroad_id"] == "1234567890"));

    // The same Annex E.1 request from the agency bound to its client is served.
    set_xroad(
        &b,
        "moh",
        json!({"instance": "EE", "member_class": "GOV", "member_code": "MEMBER1", "subsystem_code": "SUBSYSTEM1"}),
    )
    .await;
    let r = soap(&b, "moh", query("pr-mess_annexE1_request.xml")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .text()
        .contains("<svc:exampleServiceResponse xmlns:svc=\"http://producer.x-road.eu\">"));
    verify(&b).await;
}

fn get_citizen_query(client: &str, user: &str, citizen: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers"
    xmlns:lt="urn:lienthong:citizens">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="MEMBER"><id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>BUSINESS</id:memberClass><id:memberCode>{client}</id:memberCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>BUSINESS</id:memberClass><id:memberCode>producer</id:memberCode><id:serviceCode>getCitizen</id:serviceCode></xrd:service>
    <xrd:id>q-1</xrd:id>
    <xrd:userId>{user}</xrd:userId>
    <xrd:issue>HS-2026-17</xrd:issue>
    <xrd:protocolVersion>4.0</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><lt:getCitizen><citizenId>{citizen}</citizenId><fields>full_name,permanent_address</fields></lt:getCitizen></SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#
    )
}

#[tokio::test]
async fn a_soap_read_releases_the_purposes_fields_and_a_named_client_must_be_the_certificates() {
    let b = broker().await;
    let r = soap(
        &b,
        "dvc",
        get_citizen_query("consumer", "VN001090000099", AN).into_bytes(),
    )
    .await;
    let text = r.text();
    assert_eq!(r.status, 200, "{text}");
    assert!(text.contains("<svc:getCitizenResponse xmlns:svc=\"urn:lienthong:citizens\"><purpose>public-service-prefill</purpose><citizen><full_name>"), "{text}");
    assert!(text.contains("<permanent_address>"), "{text}");
    assert!(
        !text.contains("phone") && !text.contains("vaccinations"),
        "{text}"
    );

    // Another member named by dvc's certificate: refused, nothing released, on the trail.
    let r = soap(
        &b,
        "dvc",
        get_citizen_query("10239452", "VN001090000099", AN).into_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        fault_code(&r.text()).as_deref(),
        Some("Client.InvalidClientIdentifier")
    );
    assert!(!r.text().contains("full_name"));
    // An agency without an X-Road identity may not name one either.
    let r = soap(
        &b,
        "moh",
        get_citizen_query("consumer", "VN001090000099", AN).into_bytes(),
    )
    .await;
    assert_eq!(
        lienthong_code(&r.text()).as_deref(),
        Some("xroad_client_mismatch")
    );
    // The service's own errors are SOAP faults of the plain kind.
    let r = soap(
        &b,
        "dvc",
        get_citizen_query("consumer", "VN001090000099", "001090123456").into_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, fault_code(&r.text()).as_deref()),
        (404, Some("SOAP-ENV:Client"))
    );
    assert_eq!(lienthong_code(&r.text()).as_deref(), Some("citizen_not_found"));
    // An official ID with a space is refused before any data is read.
    let r = soap(&b, "dvc", get_citizen_query("consumer", "VN 1", AN).into_bytes()).await;
    assert_eq!(
        lienthong_code(&r.text()).as_deref(),
        Some("invalid_accountability")
    );

    let read = entries(&b, "agency=dvc&issue=HS-2026-17&status=200").await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["citizen_id"], AN);
    assert_eq!(read[0]["accountability"]["user_id"], "VN001090000099");
    assert_eq!(read[0]["fields"], json!(["full_name", "permanent_address"]));
    let refused = entries(&b, "agency=dvc&status=403").await;
    assert_eq!(refused[0]["error_code"], "xroad_client_mismatch");
    verify(&b).await;
}

/// Path, request headers, status, X-Road error type, lienthong code.
type RestCase<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);

async fn rest(b: &TestBroker, who: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    b.client(who)
        .request_with_headers(b.agency, Method::GET, path, headers, bytes::Bytes::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_x_road_rest_client_reads_a_citizen_with_the_fields_of_its_purpose() {
    let b = broker().await;
    let headers = [
        ("X-Road-Client", CONSUMER),
        ("X-Road-Id", "8e3c1c1e-6f1b-4d0e-9d0a-2f0c7f1d6b11"),
        ("X-Road-UserId", "VN001090000099"),
        ("X-Road-Issue", "HS-2026-18"),
        ("X-Road-PDU-Legal-Basis", "Nghị định 137/2015/NĐ-CP, Điều 13"),
    ];
    let r = rest(
        &b,
        "dvc",
        &format!("/r1/VN/GOV/lienthong/citizens/getCitizen/{AN}"),
        &headers,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let citizen = r.json()["citizen"].clone();
    assert_eq!(citizen["citizen_id"], AN);
    assert!(
        citizen.get("full_name").is_some() && citizen.get("phone").is_none(),
        "{citizen}"
    );
    assert_eq!(r.headers["x-road-id"], "8e3c1c1e-6f1b-4d0e-9d0a-2f0c7f1d6b11");
    assert_eq!(r.headers["x-road-client"], CONSUMER);
    assert_eq!(
        r.headers["x-road-service"],
        "VN/GOV/lienthong/citizens/getCitizen"
    );
    let hash = r.headers["x-road-request-hash"].to_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(hash)
            .unwrap()
            .len(),
        64
    );
    assert!(r.headers.get("x-road-error").is_none());

    let r = rest(
        &b,
        "dvc",
        &format!("/r1/VN/GOV/lienthong/citizens/getCitizen/{AN}?fields=full_name"),
        &headers[..1],
    )
    .await;
    assert_eq!(
        r.json()["citizen"],
        json!({ "full_name": r.json()["citizen"]["full_name"] })
    );
    assert!(
        r.headers.get("x-road-id").is_some(),
        "an X-Road-Id is made when none was sent"
    );
    let r = rest(&b, "dvc", "/r1/VN/GOV/lienthong/citizens/purposes", &headers[..1]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "public-service-prefill"));

    // X-Road's errors: X-Road-Error and X-Road's JSON body, beside lienthong's code.
    let cases: [RestCase; 4] = [
        (
            "/r1/VN/GOV/lienthong/citizens/getCitizen/001090000001",
            &[("X-Road-Client", "EE/BUSINESS/10239452")],
            403,
            "Client.InvalidClientIdentifier",
            "xroad_client_mismatch",
        ),
        (
            "/r1/VN/GOV/lienthong/citizens/getCitizen/001090000001",
            &[],
            400,
            "Client.MissingHeaderField",
            "xroad_missing_header_field",
        ),
        (
            "/r1/VN/GOV/lienthong/citizens/getTaxes/001090000001",
            &headers[..1],
            404,
            "Client.UnknownService",
            "xroad_unknown_service",
        ),
        (
            "/r1/VN/GOV",
            &headers[..1],
            400,
            "Client.BadRequest",
            "xroad_bad_request",
        ),
    ];
    for (path, hs, status, kind, code) in cases {
        let r = rest(&b, "dvc", path, hs).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.headers["x-road-error"], kind, "{path}");
        let body = r.json();
        assert_eq!(body["type"], kind);
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["detail"], body["error"]["request_id"]);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The service's own answer (no such citizen) carries no X-Road-Error.
    let r = rest(
        &b,
        "dvc",
        "/r1/VN/GOV/lienthong/citizens/getCitizen/001090123456",
        &headers[..1],
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("citizen_not_found"))
    );
    assert!(r.headers.get("x-road-error").is_none());

    // The official, the issue and the legal basis are in the trail and searchable.
    let found = entries(&b, "user_id=VN001090000099").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let acc = &found[0]["accountability"];
    assert_eq!(acc["issue"], "HS-2026-18");
    assert_eq!(acc["legal_basis"], "Nghị định 137/2015/NĐ-CP, Điều 13");
    assert_eq!(found[0]["channel"], "xroad-rest");
    verify(&b).await;
}

#[tokio::test]
async fn hostile_xml_on_the_x_road_channel_is_a_fault_never_a_crash() {
    let b = broker().await;
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body>&lol2;</SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    for body in [
        laughs.as_bytes().to_vec(),
        deep.into_bytes(),
        b"<r>\xff</r>".to_vec(),
        b"not xml".to_vec(),
    ] {
        let r = soap(&b, "dvc", body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            fault_code(&r.text()).as_deref(),
            Some("Client.InvalidXml"),
            "{}",
            r.text()
        );
        assert_eq!(lienthong_code(&r.text()).as_deref(), Some("xroad_invalid_xml"));
    }
    let r = soap(&b, "dvc", b"<html/>".to_vec()).await;
    assert_eq!(fault_code(&r.text()).as_deref(), Some("Client.InvalidSoap"));
    let trail = entries(&b, "agency=dvc&status=400").await;
    assert_eq!(trail.len(), 5);
    assert!(trail
        .iter()
        .all(|e| e["channel"] == "xroad-soap" && e["fields"] == json!([])));
}

#[tokio::test]
async fn x_road_identities_are_unique_and_well_formed() {
    let b = broker().await;
    let r = set_xroad(
        &b,
        "moh",
        json!({"instance": "EE", "member_class": "BUSINESS", "member_code": "consumer"}),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("xroad_id_bound"))
    );
    let r = set_xroad(
        &b,
        "moh",
        json!({"instance": "EE", "member_class": "GOV", "member_code": "a b"}),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("xroad_invalid_client_identifier"))
    );
    let r = set_xroad(&b, "moh", json!({"instance": "EE", "member_class": "GOV"})).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = b
        .client("admin")
        .request(
            b.admin,
            Method::DELETE,
            "/admin/v1/agencies/dvc/xroad",
            None,
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["agency"].get("xroad").is_none());
    let r = soap(&b, "dvc", query("simple.query")).await;
    assert_eq!(
        lienthong_code(&r.text()).as_deref(),
        Some("xroad_client_mismatch")
    );
}

async fn canonical(b: &TestBroker, path: &str, headers: &[(&str, &str)]) -> Response {
    rest(b, "dvc", path, headers).await
}

async fn access_log(b: &TestBroker) -> Vec<Value> {
    let r = b
        .get(
            "dvc",
            &format!("/v1/citizens/{AN}/access-log?purpose=citizen-self-service"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_log"]["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_canonical_api_records_the_official_and_the_citizen_sees_it_masked() {
    let b = broker().await;
    let read = format!("/v1/citizens/{AN}?purpose=public-service-prefill");
    let r = canonical(
        &b,
        &read,
        &[
            ("X-Road-UserId", "VN001090000099"),
            ("X-Road-Issue", "1.001234.000.00.H26"),
            ("X-Road-PDU-Legal-Basis", "Luật Cư trú 2020"),
            ("X-Road-PDU-Bulk", "false"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = access_log(&b).await;
    let seen = log
        .iter()
        .find(|e| e["purpose"] == "public-service-prefill")
        .expect("the read is in the log");
    assert_eq!(seen["official"], "VN**********99");
    assert_eq!(seen["legal_basis"], "Luật Cư trú 2020");
    assert!(seen.get("issue").is_none());

    for (name, value) in [
        ("X-Road-UserId", "VN 0010"),
        ("X-Road-PDU-Bulk", "maybe"),
        ("X-Road-PDU-Hidden-Until", "2030-01-01"),
    ] {
        let r = canonical(&b, &read, &[(name, value)]).await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (400, Some("invalid_accountability")),
            "{name}"
        );
        assert!(
            r.json()["error"]["message"].as_str().unwrap().contains("x-road-"),
            "{name}"
        );
        assert!(r.json().get("citizen").is_none());
    }
    let refused = entries(&b, "agency=dvc&status=400").await;
    assert_eq!(refused.len(), 3);
    assert!(refused
        .iter()
        .all(|e| e["error_code"] == "invalid_accountability" && e["fields"] == json!([])));

    // A consent-based purpose needs the consent named.
    let consented = format!("/v1/citizens/{AN}?purpose=consented-check");
    let r = canonical(&b, &consented, &[]).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("consent_ref_required"))
    );
    let r = canonical(
        &b,
        &consented,
        &[
            ("X-Road-PDU-Consent-Ref", "VNeID-consent-5521"),
            ("X-Road-PDU-Bulk", "true"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let with_consent = entries(&b, "purpose=consented-check&status=200").await;
    assert_eq!(
        with_consent[0]["accountability"]["consent_ref"],
        "VNeID-consent-5521"
    );
    assert_eq!(with_consent[0]["bulk"], true);
    let r = b.get("dvc", "/v1/purposes").await;
    let listed = r.json()["purposes"].as_array().unwrap().clone();
    let consent = listed.iter().find(|p| p["id"] == "consented-check").unwrap();
    assert_eq!(consent["consent_based"], true);
    assert_eq!(consent["max_hidden_days"], 0);
    verify(&b).await;
}

#[tokio::test]
async fn a_hidden_access_stays_out_of_the_citizens_log_until_its_date_and_in_the_chain_throughout() {
    let b = broker().await;
    let until = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let hidden = [
        ("X-Road-UserId", "VN079188000111"),
        ("X-Road-Issue", "VKS-2026-0042"),
        ("X-Road-PDU-Hidden", "true"),
        ("X-Road-PDU-Hidden-Reason", "Điều tra vụ án số 42"),
        ("X-Road-PDU-Hidden-Until", until.as_str()),
    ];
    // A purpose that may not hide refuses; the cap is enforced.
    let r = canonical(
        &b,
        &format!("/v1/citizens/{AN}?purpose=public-service-prefill"),
        &hidden,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("hiding_not_allowed"))
    );
    let far = (chrono::Utc::now() + chrono::Duration::days(40))
        .format("%Y-%m-%d")
        .to_string();
    let mut too_long = hidden;
    too_long[4] = ("X-Road-PDU-Hidden-Until", far.as_str());
    let investigate = format!("/v1/citizens/{AN}?purpose=police-investigation");
    let r = canonical(&b, &investigate, &too_long).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some("hidden_too_long"))
    );

    let r = canonical(&b, &investigate, &hidden).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !access_log(&b)
            .await
            .iter()
            .any(|e| e["purpose"] == "police-investigation" && e["status"] == 200),
        "hidden from the citizen before its date"
    );
    // Operators see it, with the reason; the chain verifies; oversight counts it.
    let ops = entries(&b, "purpose=police-investigation&status=200").await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["accountability"]["hidden_reason"], "Điều tra vụ án số 42");
    assert_eq!(
        ops[0]["accountability"]["hidden_until"],
        format!("{until}T00:00:00.000Z")
    );
    verify(&b).await;
    let metrics = b.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(r#"lienthong_hidden_accesses_total{purpose="police-investigation"} 1"#),
        "{metrics}"
    );

    // Eleven days later, with nobody doing anything, the citizen sees it (the official's ID not at all,
    // as the catalogue says for this purpose).
    b.broker().clock.advance(chrono::Duration::days(11));
    let log = access_log(&b).await;
    let shown = log
        .iter()
        .find(|e| e["purpose"] == "police-investigation" && e["status"] == 200)
        .expect("visible after its date");
    assert!(shown.get("official").is_none());
    assert_eq!(shown["fields"], json!(["citizen_id", "full_name"]));
    verify(&b).await;
}

#[tokio::test]
async fn the_demo_speaks_x_road_rest_out_of_the_box() {
    let b = TestBroker::start().await;
    let path = format!("/r1/{}/{AN}", lienthong::dev::demo::DEMO_XROAD_READ);
    let r = rest(
        &b,
        "dvc",
        &path,
        &[("X-Road-Client", lienthong::dev::demo::DEMO_DVC_XROAD)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purpose"], "public-service-prefill");
    let r = rest(
        &b,
        "moh",
        &path,
        &[("X-Road-Client", lienthong::dev::demo::DEMO_DVC_XROAD)],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.headers["x-road-error"], "Client.InvalidClientIdentifier");
}

#[tokio::test]
async fn x_road_services_can_map_to_connectors() {
    let b = broker().await;
    // The portal's own QCVN 109 envelope, with an X-Road header: the connector answers under the echoed header.
    let portal = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/examples/dvc-tra-cuu.xml"
    ))
    .unwrap();
    let header = r#"<soap:Header xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers">
    <xrd:client id:objectType="MEMBER"><id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>BUSINESS</id:memberClass><id:memberCode>consumer</id:memberCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>BUSINESS</id:memberClass><id:memberCode>producer</id:memberCode><id:serviceCode>TraCuuThongTinCongDan</id:serviceCode></xrd:service>
    <xrd:id>dvc-1</xrd:id><xrd:userId>VN001090000099</xrd:userId><xrd:protocolVersion>4.0</xrd:protocolVersion>
  </soap:Header>"#;
    let request = portal.replace("<soap:Header/>", header);
    assert_ne!(request, portal);
    let r = soap(&b, "dvc", request.into_bytes()).await;
    let text = r.text();
    assert_eq!(r.status, 200, "{text}");
    assert!(
        text.contains("<xrd:id>dvc-1</xrd:id>") && text.contains("<xrd:requestHash"),
        "{text}"
    );
    assert!(
        text.contains("TraCuuThongTinCongDanResponse xmlns=\"http://www.mic.gov.vn/dancu/1.0\""),
        "{text}"
    );
    assert!(
        text.contains("<KetQua>0</KetQua>") && text.contains("Nguyễn Văn An"),
        "{text}"
    );
    let read = entries(&b, "agency=dvc&status=200&user_id=VN001090000099").await;
    assert_eq!(read[0]["channel"], "dvc-citizen-info");
    assert_eq!(
        read[0]["accountability"]["xroad_service"],
        "EE/BUSINESS/producer/TraCuuThongTinCongDan"
    );

    // A JSON connector over X-Road REST, for the agency bound to its client.
    set_xroad(
        &b,
        "pccovid",
        json!({"instance": "VN", "member_class": "COM", "member_code": "pccovid"}),
    )
    .await;
    let r = b
        .client("pccovid")
        .request_with_headers(
            b.agency,
            Method::POST,
            "/r1/VN/GOV/lienthong/citizens/qrStatus",
            &[
                ("X-Road-Client", "VN/COM/pccovid"),
                ("X-Road-Id", "qr-1"),
                ("content-type", "application/json"),
            ],
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/connectors/examples/pccovid-id-only.json"
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-road-id"], "qr-1");
    assert!(r.headers.get("x-road-request-hash").is_some());
    assert!(r.text().contains("079195000002"), "{}", r.text());
    verify(&b).await;
}
