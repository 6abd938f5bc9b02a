//! Issue 20: what an outside security test found. Each test reproduces one finding over real mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestBroker;
use hyper::Method;
use lienthong::client::Alpn;
use lienthong::dev::certs::{CertAuthority, Validity};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

async fn agency_status(b: &TestBroker, code: &str) -> String {
    let r = b.admin_get(&format!("/admin/v1/agencies/{code}")).await;
    r.json()["agency"]["status"].as_str().unwrap().to_string()
}

/// Finding 1: a page the operator visits posts a form to the admin API; the browser adds the imported
/// admin certificate. Whatever the body, no state-changing admin request from another site is obeyed.
#[tokio::test]
async fn cross_site_requests_cannot_drive_the_admin_api() {
    let b = TestBroker::start().await;
    let admin = b.client("admin");
    let form = ("content-type", "application/x-www-form-urlencoded");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let attempts: Vec<(Headers, u16, &str)> = vec![
        // What a browser sends for a cross-site form post.
        (
            vec![
                form,
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            403,
            "cross_origin",
        ),
        (
            vec![form, ("origin", "https://evil.example")],
            403,
            "cross_origin",
        ),
        (vec![form, ("sec-fetch-site", "same-site")], 403, "cross_origin"),
        // An older browser that sends neither header still cannot set a JSON content type on a form.
        (vec![form], 415, "unsupported_media_type"),
        (
            vec![("content-type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (vec![], 415, "unsupported_media_type"),
        // Even a JSON content type is refused from another site (a preflight would be needed anyway).
        (
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
            403,
            "cross_origin",
        ),
    ];
    for path in [
        "/admin/v1/agencies/pccovid/suspend",
        "/admin/v1/tls/reload",
        "/admin/v1/agencies",
    ] {
        for (headers, status, code) in &attempts {
            let r = admin
                .request_with_headers(b.admin, Method::POST, path, headers, "x=1")
                .await
                .unwrap();
            assert_eq!(r.status, *status, "{path} {headers:?}: {}", r.text());
            assert_eq!(r.error_code().as_deref(), Some(*code), "{path} {headers:?}");
        }
    }
    assert_eq!(agency_status(&b, "pccovid").await, "active");

    // The CLI and scripts (no browser headers, JSON content type) still work, with or without a body.
    let r = admin
        .request_with_headers(
            b.admin,
            Method::POST,
            "/admin/v1/agencies/pccovid/suspend",
            &[("content-type", "application/json")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agency_status(&b, "pccovid").await, "suspended");

    // The refusals were audited.
    let r = b.admin_get("/admin/v1/audit/entries?limit=500").await;
    let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["error_code"] == "cross_origin"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn cli_suspend_and_unbind_still_work_without_a_body() {
    let b = TestBroker::start().await;
    let r = b
        .client("admin")
        .request(
            b.admin,
            Method::DELETE,
            "/admin/v1/agencies/moh/certificates/00",
            None,
            "",
        )
        .await
        .unwrap();
    // Not a CSRF refusal: DELETE needs a preflight a cross-site page never gets.
    assert_ne!(
        r.error_code().as_deref(),
        Some("unsupported_media_type"),
        "{}",
        r.text()
    );
    assert_ne!(r.error_code().as_deref(), Some("cross_origin"), "{}", r.text());
}

/// Publish `crl` as the broker's CRL file and ask for a reload.
async fn push_crl(b: &TestBroker, crl: &str) -> lienthong::client::Response {
    std::fs::write(b.certs_dir().join("crl.pem"), crl).unwrap();
    b.admin_post("/admin/v1/tls/reload", json!({})).await
}

/// Finding 2: an empty CRL under the CA's name but signed by another key used to be taken, and every
/// handshake on both listeners then failed (`BadSignature`) until a restart.
#[tokio::test]
async fn a_crl_with_a_bad_signature_is_refused_and_locks_nobody_out() {
    let b = TestBroker::start().await;
    let forger = CertAuthority::generate("lienthong development CA").unwrap();
    let forged = forger.crl(&[], 9).unwrap();

    let r = push_crl(&b, &forged).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("tls_reload_failed"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("crl.pem") && message.contains("signature"),
        "{message}"
    );
    // The old config stays in force on both listeners.
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
    assert_eq!(b.admin_get("/admin/v1/agencies").await.status, 200);

    // check-config and start-up refuse it too, naming the file.
    let tls = b.broker().config.tls.clone();
    let err = lienthong::tls::build(&tls).err().expect("forged CRL refused");
    assert!(err.to_string().contains("crl.pem"), "{err}");
    let dir = b.stop().await;
    let err = TestBroker::try_start_in_with(dir, |_| {})
        .await
        .err()
        .expect("start refused");
    assert!(format!("{err}").contains("crl.pem"), "{err}");
}

/// Finding 2 (low): a CRL with a lower number than the running one silently un-revoked a certificate.
#[tokio::test]
async fn an_older_crl_cannot_roll_back_a_revocation() {
    let b = TestBroker::start().await;
    let cert = b.issue_bound("moh", "moh-2").await;
    let c = b.client_with(&cert, Alpn::Both);
    let r = push_crl(&b, &b.ca().crl(std::slice::from_ref(&cert.serial), 5).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.get(b.agency, "/v1/whoami").await.is_err());

    let r = push_crl(&b, &b.ca().crl(&[], 3).unwrap()).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("tls_reload_failed"));
    assert!(r.text().contains("lower"), "{}", r.text());
    assert!(c.get(b.agency, "/v1/whoami").await.is_err(), "still revoked");

    // A newer CRL is taken.
    let r = push_crl(&b, &b.ca().crl(&[], 6).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get(b.agency, "/v1/whoami").await.unwrap().status, 200);
}

/// Finding 2 (low): a CRL past its nextUpdate is still used, but the operator is told.
#[tokio::test]
async fn a_stale_crl_is_used_with_a_warning_metric() {
    let b = TestBroker::start().await;
    let metric = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("lienthong_crl_stale "))
            .map(str::to_string)
    };
    let text = b.admin_get("/metrics").await.text();
    assert_eq!(metric(&text).as_deref(), Some("lienthong_crl_stale 0"), "{text}");
    let stale = b.ca().crl_until(&[], 7, time::Duration::days(-1)).unwrap();
    let r = push_crl(&b, &stale).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = b.admin_get("/metrics").await.text();
    assert_eq!(metric(&text).as_deref(), Some("lienthong_crl_stale 1"), "{text}");
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}

/// Finding 2: the admin listener pins operators by fingerprint and takes no agency CRL, so no CRL can
/// lock operators out of the API that replaces it.
#[tokio::test]
async fn the_admin_listener_does_not_depend_on_agency_crls() {
    let b = TestBroker::start().await;
    let admin_serial = {
        let pem = std::fs::read(b.certs_dir().join("admin.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        cert.raw_serial().to_vec()
    };
    let moh_serial = {
        let pem = std::fs::read(b.certs_dir().join("moh.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        cert.raw_serial().to_vec()
    };
    let r = push_crl(&b, &b.ca().crl(&[admin_serial, moh_serial], 4).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.client("moh").get(b.agency, "/v1/whoami").await.is_err());
    // The operator can still push the CRL that undoes a mistake.
    let r = push_crl(&b, &b.ca().crl(&[], 5).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
}

/// Finding 4: `request_sha256` was an unsalted SHA-256 of the body, so the sender of an SMS look-up
/// (`{"from":"+84…","text":"TTCD <id>"}`) could be recovered from an audit export by trying every number.
#[tokio::test]
async fn the_body_hash_is_keyed_and_the_key_is_kept_apart_from_the_trail() {
    use sha2::Digest;
    let b = TestBroker::start().await;
    let body = json!({ "from": "+84912345678", "text": "TTCD 001090000001" });
    let r = b
        .post("sms", "/v1/sms/inbound?purpose=citizen-self-sms", body.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    let page = b
        .admin_get("/admin/v1/audit/entries?agency=sms&limit=50")
        .await
        .json();
    let entry = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == rid.as_str())
        .cloned()
        .expect("an entry for the look-up");
    let stored = entry["request_sha256"].as_str().unwrap();
    let sent = body.to_string();
    let unkeyed = hex::encode(sha2::Sha256::digest(sent.as_bytes()));
    assert_ne!(
        stored, unkeyed,
        "an unkeyed hash can be reversed by trying every phone number"
    );

    // HMAC-SHA256 under a key outside the data dir, mode 0600.
    let keys = b.dir.path().join("data-keys");
    let key_bytes = std::fs::read(keys.join("body-hash.key")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    assert_eq!(
        stored,
        hex::encode(ring::hmac::sign(&key, sent.as_bytes()).as_ref())
    );
    use std::os::unix::fs::PermissionsExt;
    for name in ["body-hash.key", "checkpoint.key"] {
        let mode = std::fs::metadata(keys.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let trail = b.dir.path().join("data/audit");
    assert!(
        !trail.join("checkpoint.key").exists(),
        "the signing key must not sit beside the trail"
    );
    assert!(trail.join("checkpoint.pub").exists());
}

/// What an attacker who can write the data dir does: cut the newest `n` entries of the trail and the
/// checkpoints file that names them.
fn cut_newest_entries(trail: &std::path::Path, n: usize) {
    let (segment, lines) = newest_segment(trail);
    let kept = lines.len().saturating_sub(n);
    let text: String = lines[..kept].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&segment, text).unwrap();
    std::fs::remove_file(trail.join("checkpoints.jsonl")).unwrap();
}

/// The newest segment of the trail, its lines.
fn newest_segment(trail: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let mut segments: Vec<_> = std::fs::read_dir(trail)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    segments.sort();
    let path = segments.pop().unwrap();
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (path, lines)
}

fn verify_cli(data_dir: &std::path::Path, witness: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lienthong"));
    cmd.args(["audit", "verify", "--data-dir"]).arg(data_dir);
    if let Some(w) = witness {
        cmd.arg("--witness").arg(w);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Finding 3: cutting the newest segment and deleting `checkpoints.jsonl` left `audit verify` at "ok" and
/// the broker started on it. The signed heads are now also kept by a witness outside the data dir.
#[tokio::test]
async fn a_trail_cut_at_its_end_is_caught_by_the_witness() {
    let b = TestBroker::start().await;
    for _ in 0..5 {
        assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
    }
    // An operator fetches a signed head and keeps it elsewhere.
    let r = b.admin_get("/admin/v1/audit/checkpoint").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let head = r.json();
    assert!(
        head["seq"].as_u64().unwrap() >= 5 && head["signature"].is_string(),
        "{head}"
    );
    let saved = b.dir.path().join("operator-heads.jsonl");
    // …or with the CLI, which prints the same line.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(["audit", "checkpoint"])
        .args(b.cli_admin_args())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_head: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cli_head["seq"].as_u64() >= head["seq"].as_u64(), "{cli_head}");
    std::fs::write(&saved, format!("{head}\n{cli_head}\n")).unwrap();
    let r = b.admin_get("/admin/v1/audit/verify").await;
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    let dir = b.stop().await;

    let data = dir.path().join("data");
    let trail = data.join("audit");
    let witness = dir.path().join("data-keys/witness.jsonl");
    assert!(std::fs::read_to_string(&witness)
        .unwrap()
        .contains(head["hash"].as_str().unwrap()));
    let (ok, out) = verify_cli(&data, Some(&witness));
    assert!(ok, "{out}");
    // The count after `ok:` is the number of entries (item 11).
    assert!(out.starts_with("ok: "), "{out}");

    // The attack: cut the newest entries and the checkpoints that name them.
    cut_newest_entries(&trail, 4);

    // The trail alone still looks whole…
    let (ok, out) = verify_cli(&data, None);
    assert!(ok, "{out}");
    // …but not against either witness.
    for w in [&witness, &saved] {
        let (ok, out) = verify_cli(&data, Some(w));
        assert!(!ok && out.contains("missing"), "{out}");
    }
    // The broker refuses to start on it, saying why.
    let err = TestBroker::try_start_in_with(dir.clone(), |_| {})
        .await
        .err()
        .expect("a cut trail is refused at start-up");
    assert!(format!("{err}").contains("witness"), "{err}");
}

const AN: &str = "001090000001";

fn vaccination(source: &str, dose: u32, date: &str) -> serde_json::Value {
    json!({ "dose_number": dose, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
            "date": date, "lot": "FK1234", "site": "Trạm Y tế Phường Tràng Tiền", "source_record_id": source })
}

/// Findings 6 and 7: one rule for the request target, before routing — no empty path segment, no
/// query parameter given twice — on every route.
#[tokio::test]
async fn empty_path_segments_and_repeated_parameters_are_refused() {
    let b = TestBroker::start().await;
    let good = format!("/v1/citizens/{AN}?purpose=vaccination-sync");
    assert_eq!(b.get("moh", &good).await.status, 200);
    for path in [
        format!("//v1/citizens/{AN}?purpose=vaccination-sync"),
        format!("/v1/citizens/{AN}/?purpose=vaccination-sync"),
        format!("/v1//citizens/{AN}?purpose=vaccination-sync"),
    ] {
        let r = b.get("moh", &path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("not_found"), "{path}");
        assert!(!r.text().contains("full_name"), "{path}: data served");
    }
    for path in [
        format!("/v1/citizens/{AN}?purpose=vaccination-sync&purpose=public-service-prefill"),
        format!("/v1/citizens/{AN}?purpose=vaccination-sync&fields=full_name&fields=vaccinations"),
        format!("/v1/citizens/{AN}?purpose=vaccination-sync&%70urpose=x"),
    ] {
        let r = b.get("moh", &path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("duplicate_parameter"), "{path}");
    }
    // The same rule on the admin listener.
    let r = b.admin_get("/admin/v1/agencies/").await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Two SoDinhDanh in a SOAP look-up: which one was meant? Neither is answered.
    let good = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/examples/dvc-tra-cuu.xml"),
    )
    .unwrap();
    let twice = good.replace(
        "<dc:SoDinhDanh>001090000001</dc:SoDinhDanh>",
        "<dc:SoDinhDanh>001090000001</dc:SoDinhDanh><dc:SoDinhDanh>001090000002</dc:SoDinhDanh>",
    );
    let dvc = "/connectors/dvc/v1/TraCuuThongTinCongDan";
    let r = b.post_raw("dvc", dvc, "text/xml", twice).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("duplicate_parameter"), "{}", r.text());
    assert!(!r.text().contains("Nguyễn"), "{}", r.text());
    assert_eq!(b.post_raw("dvc", dvc, "text/xml", good).await.status, 200);
}

/// Finding 8: a canonical write with no Content-Type, or JSON declared in a charset other than UTF-8.
#[tokio::test]
async fn json_writes_need_a_utf8_json_content_type() {
    let b = TestBroker::start().await;
    let path = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    let dose = vaccination("h20-ct", 3, "2021-12-01").to_string();
    let moh = b.client("moh");
    for ct in [
        None,
        Some("application/json;charset=utf-16"),
        Some("application/json; charset=\"latin1\""),
    ] {
        let r = moh
            .request(b.agency, Method::POST, &path, ct, dose.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("unsupported_media_type"));
    }
    let r = moh
        .request(
            b.agency,
            Method::POST,
            &path,
            Some("application/json; charset=UTF-8"),
            dose,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
}

async fn vaccination_count(b: &TestBroker, id: &str) -> usize {
    let record = b.broker().store.get(id).await.unwrap().unwrap();
    record["vaccinations"].as_array().map_or(0, Vec::len)
}

/// Finding 5: a dose dated 2099 was stored (and made `covid_status` drop); now refused on every channel.
#[tokio::test]
async fn future_event_dates_are_refused_on_every_channel() {
    let b = TestBroker::start().await;
    let before = vaccination_count(&b, AN).await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::hours(7) + chrono::Duration::days(1))
        .date_naive()
        .to_string();
    let canonical = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    for date in ["2099-01-01", tomorrow.as_str()] {
        let r = b
            .post("moh", &canonical, vaccination(&format!("f-{date}"), 9, date))
            .await;
        assert_eq!(r.status, 422, "{date}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("invalid_value"), "{date}");
    }
    let r = b
        .post(
            "moh",
            &format!("/v1/citizens/{AN}/recoveries?purpose=recovery-sync"),
            json!({ "recovered_on": "2099-01-01", "source_record_id": "f-rec" }),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("invalid_value"));
    // The FHIR connector writes through the same canonical operation.
    let fhir = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/examples/moh-immunization.json"),
    )
    .unwrap()
    .replace("2021-09-12T08:30:00+07:00", "2099-09-12T08:30:00+07:00");
    let r = b
        .post_raw(
            "moh",
            "/connectors/moh/v1/Immunization",
            "application/fhir+json",
            fhir,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("invalid_value"), "{}", r.text());
    assert_eq!(vaccination_count(&b, AN).await, before, "nothing written");
    // Today is fine.
    let today = (chrono::Utc::now() + chrono::Duration::hours(7))
        .date_naive()
        .to_string();
    let r = b.post("moh", &canonical, vaccination("today", 9, &today)).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Findings 9 and 10: control characters in free text are refused, and a violation inside a history
/// names the appended entry (`/vaccinations/-/…`), not its index, to a purpose that cannot read it.
#[tokio::test]
async fn control_characters_are_refused_and_violations_hide_history_positions() {
    let b = TestBroker::start().await;
    let canonical = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    for bad in [
        "Comirnaty\u{0}",
        "Comirnaty\u{1b}[31m",
        "Comirnaty\u{7f}",
        "Comirnaty\u{85}",
    ] {
        let mut dose = vaccination(&format!("cc-{}", bad.len()), 3, "2021-12-01");
        dose["vaccine_name"] = json!(bad);
        let r = b.post("moh", &canonical, dose).await;
        assert_eq!(r.status, 422, "{bad:?}: {}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("schema_violation"));
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("/vaccinations/-/vaccine_name"), "{message}");
    }
    let mut dose = vaccination("wrong-type", 3, "2021-12-01");
    dose["dose_number"] = json!("three");
    let r = b.post("moh", &canonical, dose).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/vaccinations/-/dose_number"), "{message}");
    assert!(
        !(0..10).any(|d| message.contains(&format!("/vaccinations/{d}"))),
        "{message}"
    );

    // Checkpoint names and addresses, on the checkpoint channel.
    let r = b
        .post(
            "vneid",
            "/v1/checkpoints?purpose=checkpoint-checkin",
            json!({ "id": "nul-gate", "name": "Cổng\u{0}A", "address": "1 Lê Lợi", "kind": "supermarket" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("invalid_checkpoint"));
}

/// Finding 12: history lists are capped in the schema (writes slowed ~3x at ~1,000 doses).
#[tokio::test]
async fn history_lists_are_capped() {
    let b = TestBroker::start().await;
    let canonical = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    let mut refused = None;
    for n in 0..80 {
        let r = b
            .post(
                "moh",
                &canonical,
                vaccination(&format!("cap-{n}"), 3, "2021-12-01"),
            )
            .await;
        if r.status != 201 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the 65th dose is refused");
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("schema_violation"));
    assert_eq!(vaccination_count(&b, AN).await, 64);
}

/// Finding 13: the admin certificate, or a certificate no handshake would accept, cannot be bound.
#[tokio::test]
async fn the_admin_certificate_and_foreign_certificates_cannot_be_bound() {
    let b = TestBroker::start().await;
    let admin_pem = std::fs::read_to_string(b.certs_dir().join("admin.pem")).unwrap();
    let admin_fp = lienthong::identity::fingerprint_of_pem(&admin_pem).unwrap();
    for body in [
        json!({ "certificate_pem": admin_pem }),
        json!({ "fingerprint": admin_fp }),
        json!({ "fingerprint": admin_fp.to_uppercase() }),
    ] {
        let r = b.admin_post("/admin/v1/agencies/moh/certificates", body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.error_code().as_deref(), Some("admin_certificate"));
    }
    let foreign = CertAuthority::generate("lienthong development CA")
        .unwrap()
        .issue_client("moh-x", "moh", Validity::days(30))
        .unwrap();
    let r = b
        .admin_post(
            "/admin/v1/agencies/moh/certificates",
            json!({ "certificate_pem": foreign.cert_pem }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("untrusted_certificate"));
    // The admin certificate still reads nothing on the agency listener.
    let r = b
        .get("admin", &format!("/v1/citizens/{AN}?purpose=vaccination-sync"))
        .await;
    assert_eq!(r.error_code().as_deref(), Some("unknown_agency"), "{}", r.text());
}

/// Finding 3: with the witness lost too, a trail cut below what the store saw before its last write is
/// refused at start-up (the store's own high-water mark).
#[tokio::test]
async fn a_trail_behind_the_stores_high_water_mark_is_refused() {
    let b = TestBroker::start().await;
    for _ in 0..5 {
        assert_eq!(b.get("moh", "/v1/whoami").await.status, 200);
    }
    let canonical = format!("/v1/citizens/{AN}/vaccinations?purpose=vaccination-sync");
    let r = b
        .post("moh", &canonical, vaccination("hw-1", 3, "2021-12-01"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let dir = b.stop().await;
    let trail = dir.path().join("data/audit");
    // Cut the write's entry and those before it; drop both copies of the checkpoints.
    cut_newest_entries(&trail, 7);
    std::fs::remove_file(dir.path().join("data-keys/witness.jsonl")).unwrap();
    let err = TestBroker::try_start_in_with(dir.clone(), |_| {})
        .await
        .err()
        .expect("a trail behind the store is refused");
    assert!(format!("{err}").contains("cut from its end"), "{err}");
}
