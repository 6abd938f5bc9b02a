//! Upstream provider mode: the front broker reads and writes citizens at a provider system over mTLS.
//! The provider is a real second process — `lienthong demo --provider`, lienthong serving its own store,
//! the front broker registered there as agency `front` (purpose `population-proxy`, and a QCVN 109 SOAP
//! connector for the XML dialect). Failures the real provider cannot stage (a slow, garbled or chatty
//! answer) come from a tiny TLS server in the test; a lost acknowledgement from a TCP relay that swallows
//! the provider's answers on the connection it had.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{client_for, ChildBroker, TestBroker, AN};
use lienthong::client::MtlsClient;
use lienthong::config::Config;
use lienthong::dev::upstream_demo::{front_store, use_upstream};
use lienthong::upstream::UpstreamConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bình, the second documented sample citizen.
const BINH: &str = "079195000002";

/// Log lines of every broker in this test binary (the front brokers run in-process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("lienthong=info")
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle)
}

/// `lienthong demo --provider` as a child process, its certificates under `dir/certs` (copied for the
/// front brokers), its data under `dir/data`.
struct ProviderProcess {
    child: ChildBroker,
    certs: PathBuf,
}

impl ProviderProcess {
    async fn start(dir: &Path) -> Self {
        Self {
            child: ChildBroker::start_with(dir, &["--provider"]).await,
            certs: dir.join("certs"),
        }
    }

    fn agency(&self) -> SocketAddr {
        self.child.agency
    }

    fn client(&self, who: &str) -> MtlsClient {
        client_for(&self.certs, who)
    }

    fn kill(&mut self) {
        self.child.kill();
    }

    async fn restart(&mut self) {
        self.child.restart().await;
    }

    /// The provider's own audit entries for the front broker, newest first.
    async fn audit_of_front(&self, citizen: &str) -> Vec<Value> {
        let r = self
            .client("admin")
            .get(
                self.child.admin,
                &format!("/admin/v1/audit/entries?agency=front&citizen_id={citizen}&limit=100"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["entries"].as_array().cloned().unwrap_or_default()
    }

    /// A history list as the provider holds it (read directly, as the front broker).
    async fn history(&self, citizen: &str, list: &str) -> Vec<Value> {
        let r = self
            .client("front")
            .get(
                self.child.agency,
                &format!("/v1/citizens/{citizen}?purpose=population-proxy&fields={list}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["citizen"][list].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// A front broker (in-process, in a folder of its own with a copy of the provider's dev PKI) whose
/// store is `upstream`.
async fn front(certs: &Path, upstream: UpstreamConfig) -> TestBroker {
    logs();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    copy_certs(certs, &dir.path().join("certs"));
    TestBroker::try_start_in_with(dir, |config: &mut Config| use_upstream(config, upstream))
        .await
        .expect("the front broker starts")
}

/// Quick failure settings for tests: short timeouts, one retry, a breaker that opens after two failures.
fn quick(mut u: UpstreamConfig) -> UpstreamConfig {
    u.timeout_ms = 400;
    u.retries = 1;
    u.breaker_failures = 2;
    u.breaker_open_ms = 300;
    u.probe_interval_ms = 200;
    u
}

fn vaccination(source: &str) -> Value {
    json!({ "source_record_id": source, "dose_number": 3, "vaccine_code": "208",
            "vaccine_name": "Comirnaty", "date": "2022-01-10" })
}

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// GET with one extra header, over a fresh connection (HTTP/1.1 or h2 as ALPN decides).
async fn client_with_header(
    client: &MtlsClient,
    addr: SocketAddr,
    path: &str,
    name: &str,
    value: &str,
) -> lienthong::client::Response {
    let mut conn = client.connect(addr).await.unwrap();
    conn.send_with_headers(hyper::Method::GET, path, &[(name, value)], bytes::Bytes::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_both_legs_like_embedded_asking_only_released_fields_and_surviving_a_lost_ack() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let provider = ProviderProcess::start(dir.path()).await;
    let certs = dir.path().join("certs");
    let relay = Relay::start(provider.agency()).await;
    let rest = front(
        &certs,
        front_store(&certs, &relay.addr.to_string(), "lienthong-rest.toml"),
    )
    .await;
    let embedded = TestBroker::start().await;

    // Reads: the same answers as the embedded mode, for every purpose's shape.
    for (who, purpose, citizen) in [
        ("dvc", "public-service-prefill", AN),
        ("dvc", "public-service-prefill", BINH),
        ("pccovid", "covid-qr-status", AN),
        ("moh", "vaccination-sync", BINH),
    ] {
        let path = format!("/v1/citizens/{citizen}?purpose={purpose}");
        let (through, local) = (rest.get(who, &path).await, embedded.get(who, &path).await);
        assert_eq!(through.status, 200, "{}", through.text());
        assert_eq!(through.json(), local.json(), "{purpose} {citizen}");
    }
    let missing = rest
        .get("dvc", "/v1/citizens/001090000099?purpose=public-service-prefill")
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code().as_deref(), Some("citizen_not_found"));
    // A connector rides on the same canonical read.
    let qr = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/examples/pccovid-qr-status.json"
    ))
    .unwrap();
    let (through, local) = (
        rest.post_raw(
            "pccovid",
            "/connectors/pccovid/v1/qr-status",
            "application/json",
            qr.clone(),
        )
        .await,
        embedded
            .post_raw(
                "pccovid",
                "/connectors/pccovid/v1/qr-status",
                "application/json",
                qr,
            )
            .await,
    );
    assert_eq!(through.status, 200, "{}", through.text());
    assert_eq!(through.json(), local.json());

    // Only the released fields left the provider, as its own audit trail says.
    let entries = provider.audit_of_front(BINH).await;
    let prefill = entries
        .iter()
        .find(|e| {
            e["operation"] == "read"
                && e["fields"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "old_id_number"))
        })
        .expect("the prefill read in the provider's trail");
    let asked: Vec<&str> = prefill["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let purposes = rest.get("dvc", "/v1/purposes").await.json();
    let prefill_reads: Vec<&str> = purposes
        .as_array()
        .or_else(|| purposes["purposes"].as_array())
        .and_then(|all| all.iter().find(|p| p["id"] == "public-service-prefill"))
        .and_then(|p| p["read"].as_array())
        .map(|read| read.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(!prefill_reads.is_empty(), "{purposes}");
    assert!(
        asked.iter().all(|f| prefill_reads.contains(f)),
        "only what the purpose releases: {asked:?}"
    );
    let released = through_fields(
        &rest
            .get(
                "dvc",
                &format!("/v1/citizens/{BINH}?purpose=public-service-prefill"),
            )
            .await
            .json(),
    );
    assert!(
        released.iter().all(|f| asked.contains(&f.as_str())),
        "{released:?} within {asked:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| !e["fields"].as_array().unwrap().iter().any(|f| f == "phone")),
        "no phone ever asked"
    );
    let sync = entries
        .iter()
        .find(|e| {
            e["purpose"] == "population-proxy"
                && e["fields"]
                    .as_array()
                    .is_some_and(|f| f.len() == 3 && f.iter().any(|x| x == "birth_date"))
        })
        .expect("the vaccination-sync read");
    assert!(!sync["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "vaccinations"));

    // The W3C trace: the agency's trace-id in the front's audit entry and in the provider's.
    let traced = client_with_header(
        &rest.client("dvc"),
        rest.agency,
        &format!("/v1/citizens/{AN}?purpose=citizen-self-service"),
        "traceparent",
        TRACE,
    )
    .await;
    assert_eq!(traced.status, 200, "{}", traced.text());
    let front_entries = rest
        .admin_get(&format!(
            "/admin/v1/audit/entries?agency=dvc&citizen_id={AN}&limit=5"
        ))
        .await
        .json();
    assert_eq!(front_entries["entries"][0]["traceparent"], TRACE);
    let trace_id = TRACE.split('-').nth(1).unwrap();
    let upstream_entry = provider.audit_of_front(AN).await;
    let continued = upstream_entry[0]["traceparent"]
        .as_str()
        .expect("the provider recorded the trace");
    assert_eq!(continued.split('-').nth(1), Some(trace_id));
    assert_ne!(
        continued, TRACE,
        "the front broker's own span is the provider's parent"
    );

    // Writes: the same statuses and bodies as embedded; the provider holds the entry once.
    let write_path = format!("/v1/citizens/{BINH}/vaccinations?purpose=vaccination-sync");
    for (entry, status) in [
        (vaccination("up-1"), 201),
        (vaccination("up-1"), 200),
        (
            json!({ "source_record_id": "up-1", "dose_number": 4, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2022-01-10" }),
            409,
        ),
        (
            json!({ "source_record_id": "up-2", "dose_number": 99, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2022-01-10" }),
            422,
        ),
    ] {
        let (through, local) = (
            rest.post("moh", &write_path, entry.clone()).await,
            embedded.post("moh", &write_path, entry).await,
        );
        assert_eq!(through.status, status, "{}", through.text());
        assert_eq!(through.status, local.status);
        assert_eq!(through.error_code(), local.error_code());
        if status < 300 {
            assert_eq!(through.json(), local.json());
        }
    }
    let held = provider.history(BINH, "vaccinations").await;
    assert_eq!(held.iter().filter(|v| v["source_record_id"] == "up-1").count(), 1);
    assert!(!held.iter().any(|v| v["source_record_id"] == "up-2"));
    // The entry that breaks the schema was refused by the front broker: the provider never saw it.
    let refused_at_provider = provider
        .audit_of_front(BINH)
        .await
        .into_iter()
        .filter(|e| e["operation"] == "write" && e["status"] == 422)
        .count();
    assert_eq!(refused_at_provider, 0, "checked before it left the front broker");

    // A write whose acknowledgement is lost: the relay swallows every answer on the connection the
    // front broker holds; it retries on a new one, the provider answers "already there".
    relay.swallow_answers_on_open_connections();
    let lost = rest.post("moh", &write_path, vaccination("up-3")).await;
    assert_eq!(lost.status, 201, "{}", lost.text());
    let held = provider.history(BINH, "vaccinations").await;
    assert_eq!(
        held.iter().filter(|v| v["source_record_id"] == "up-3").count(),
        1,
        "no duplicate"
    );
    let tries = provider
        .audit_of_front(BINH)
        .await
        .into_iter()
        .filter(|e| {
            e["operation"] == "write"
                && e["fields"][0] == "vaccinations"
                && e["status"].as_u64().is_some_and(|s| s < 300)
        })
        .count();
    assert!(
        tries >= 4,
        "the write reached the provider more than once ({tries} served writes in all)"
    );

    // The SOAP dialect against the provider's own SOAP connector: same answer, the phone number it
    // answers unasked is dropped and counted.
    let soap = front(
        &certs,
        front_store(&certs, &provider.agency().to_string(), "qcvn109-soap.toml"),
    )
    .await;
    let path = format!("/v1/citizens/{AN}?purpose=public-service-prefill");
    let (through, local) = (soap.get("dvc", &path).await, embedded.get("dvc", &path).await);
    assert_eq!(through.status, 200, "{}", through.text());
    assert_eq!(through.json(), local.json());
    let metrics = soap.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lienthong_upstream_dropped_fields_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let missing = soap
        .get("dvc", "/v1/citizens/001090000099?purpose=public-service-prefill")
        .await;
    assert_eq!(
        missing.error_code().as_deref(),
        Some("citizen_not_found"),
        "a SOAP Fault mapped"
    );
    let write = soap.post("moh", &write_path, vaccination("up-4")).await;
    assert_eq!(
        (write.status, write.error_code().as_deref()),
        (502, Some("upstream_error")),
        "this dialect takes no writes"
    );
}

fn through_fields(answer: &Value) -> Vec<String> {
    answer["citizen"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn copy_certs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_answers_503_and_the_front_recovers_by_itself() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut provider = ProviderProcess::start(dir.path()).await;
    let certs = dir.path().join("certs");
    let rest = front(
        &certs,
        quick(front_store(
            &certs,
            &provider.agency().to_string(),
            "lienthong-rest.toml",
        )),
    )
    .await;
    let path = format!("/v1/citizens/{AN}?purpose=public-service-prefill");
    assert_eq!(rest.get("dvc", &path).await.status, 200);

    provider.kill();
    let down = rest.get("dvc", &path).await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(down.headers.contains_key("retry-after"));
    // The breaker is open now: refused at once, without waiting for the provider.
    let started = std::time::Instant::now();
    let fast = rest.get("dvc", &path).await;
    assert_eq!(fast.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let health = rest.admin_get("/healthz").await;
    assert_eq!(
        (health.status, health.error_code().as_deref()),
        (503, Some("upstream_unavailable"))
    );
    let console = rest.admin_get("/admin/console").await.text();
    assert!(
        console.contains("upstream provider unreachable"),
        "the console shows it"
    );
    let audit = rest
        .admin_get(&format!(
            "/admin/v1/audit/entries?agency=dvc&citizen_id={AN}&limit=5"
        ))
        .await
        .json();
    assert_eq!(
        audit["entries"][0]["error_code"], "upstream_unavailable",
        "audited"
    );
    assert_eq!(audit["entries"][0]["fields"], json!([]), "nothing released");
    let metrics = rest.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("lienthong_upstream_errors_total{kind=\"unavailable\"}"),
        "{metrics}"
    );

    provider.restart().await;
    let mut recovered = false;
    for _ in 0..100 {
        if rest.get("dvc", &path).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the front broker serves again without a restart");
    assert_eq!(rest.admin_get("/healthz").await.status, 200);
    let console = rest.admin_get("/admin/console").await.text();
    assert!(
        console.contains("reachable, circuit closed"),
        "the console shows it"
    );
}

#[tokio::test]
async fn check_config_names_the_upstream_keys() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    lienthong::dev::certs::init_dir(&certs, &[("front", "front broker"), ("admin", "operators")]).unwrap();
    let base = String::from(
        "[tls]\nca_bundle = \"certs/ca.pem\"\nserver_cert = \"certs/server.pem\"\nserver_key = \"certs/server.key\"\n\
         crls = []\nadmin_certs = [\"certs/admin.pem\"]\n[storage]\ndata_dir = \"data\"\n[store]\nbackend = \"upstream\"\n"
    );
    let upstream = "[store.upstream]\nurl = \"https://127.0.0.1:9\"\nprovider = \"lienthong-rest.toml\"\n\
                    ca_bundle = \"certs/ca.pem\"\nclient_cert = \"certs/front.pem\"\nclient_key = \"certs/front.key\"\n";
    for (text, ok, key) in [
        (base.clone(), false, "store.upstream"),
        (format!("{base}{upstream}"), true, ""),
        (
            format!("{base}{}", upstream.replace("https://", "http://")),
            false,
            "store.upstream.url",
        ),
        (
            format!(
                "{base}{}",
                upstream.replace("lienthong-rest.toml", "providers/nope.toml")
            ),
            false,
            "store.upstream.provider",
        ),
        (
            format!("{base}{upstream}retries = \"x\"\n"),
            false,
            "expected u32",
        ),
    ] {
        let file = dir.path().join("lienthong.toml");
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lienthong"))
            .arg("check-config")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{text}\n{stderr}");
        if !ok {
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains(key), "{key} in {stderr}");
        }
    }
}

/// What the tiny provider in the test answers.
const SLOW: u8 = 0;
const GARBAGE: u8 = 1;
const CHATTY: u8 = 2;
const OFF_SCHEMA: u8 = 3;
const FAILING: u8 = 4;

/// A tiny HTTPS provider (the dev CA's server certificate, HTTP/1.1, no client certificate asked) that
/// answers every request the way `mode` says.
async fn tiny_provider(certs: &Path, mode: Arc<AtomicU8>) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(certs.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(lienthong::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, mode) = (acceptor.clone(), mode.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let citizen = json!({ "citizen_id": AN, "full_name": "Nguyễn Văn An", "birth_date": "1990-05-20",
                    "gender": "male", "permanent_address": { "detail": "15 Tràng Tiền", "province": "Thành phố Hà Nội", "country": "VN" } });
                let (status, body) = match mode.load(Ordering::Relaxed) {
                    SLOW => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        (200, String::new())
                    }
                    GARBAGE => (200, "<html>welcome to the population database</html>".to_string()),
                    CHATTY => {
                        let mut c = citizen.clone();
                        c["phone"] = json!("0912345678");
                        c["religion"] = json!("không");
                        (200, json!({ "citizen": c }).to_string())
                    }
                    OFF_SCHEMA => {
                        let mut c = citizen.clone();
                        c["birth_date"] = json!("20/05/1990");
                        (200, json!({ "citizen": c }).to_string())
                    }
                    _ => (
                        500,
                        json!({ "error": { "code": "db_down", "message": "ORA-12541 at 10.0.0.7" } })
                            .to_string(),
                    ),
                };
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_garbled_chatty_and_untrusted_providers() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let certs = dir.path().join("certs");
    lienthong::dev::certs::init_dir(&certs, &[("front", "front broker")]).unwrap();
    let mode = Arc::new(AtomicU8::new(SLOW));
    let tiny = tiny_provider(&certs, mode.clone()).await;
    let mut upstream = quick(front_store(&certs, &tiny.to_string(), "lienthong-rest.toml"));
    upstream.breaker_failures = 100;
    let rest = front(&certs, upstream).await;
    let path = format!("/v1/citizens/{AN}?purpose=public-service-prefill");

    let started = std::time::Instant::now();
    let slow = rest.get("dvc", &path).await;
    assert_eq!(
        (slow.status, slow.error_code().as_deref()),
        (504, Some("upstream_timeout")),
        "{}",
        slow.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );

    mode.store(GARBAGE, Ordering::Relaxed);
    let garbled = rest.get("dvc", &path).await;
    assert_eq!(
        (garbled.status, garbled.error_code().as_deref()),
        (502, Some("upstream_error"))
    );

    mode.store(OFF_SCHEMA, Ordering::Relaxed);
    let off = rest.get("dvc", &path).await;
    assert_eq!(
        (off.status, off.error_code().as_deref()),
        (502, Some("upstream_error")),
        "checked against the schema"
    );

    mode.store(FAILING, Ordering::Relaxed);
    let failing = rest.get("dvc", &path).await;
    assert_eq!(
        (failing.status, failing.error_code().as_deref()),
        (502, Some("upstream_error"))
    );
    assert!(
        !failing.text().contains("ORA-") && !failing.text().contains("10.0.0.7"),
        "the provider's text never passed on"
    );

    mode.store(CHATTY, Ordering::Relaxed);
    let chatty = rest.get("dvc", &path).await;
    assert_eq!(chatty.status, 200, "{}", chatty.text());
    let citizen = &chatty.json()["citizen"];
    assert_eq!(citizen["full_name"], "Nguyễn Văn An");
    assert!(
        citizen.get("phone").is_none() && citizen.get("religion").is_none(),
        "{citizen}"
    );
    let metrics = rest.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("lienthong_upstream_dropped_fields_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lienthong_upstream_errors_total{kind=\"timeout\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lienthong_upstream_in_flight 0"),
        "every call finished: {metrics}"
    );
    let audit = rest
        .admin_get(&format!(
            "/admin/v1/audit/entries?agency=dvc&citizen_id={AN}&limit=10"
        ))
        .await
        .json();
    let codes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["error_code"].as_str())
        .collect();
    assert!(
        codes.contains(&"upstream_timeout") && codes.contains(&"upstream_error"),
        "{codes:?}"
    );

    // A provider whose certificate comes from another CA: refused, and the log names the provider.
    let other = tempfile::tempdir().unwrap();
    lienthong::dev::certs::init_dir(other.path(), &[]).unwrap();
    let mut untrusting = quick(front_store(&certs, &tiny.to_string(), "lienthong-rest.toml"));
    untrusting.ca_bundle = other.path().join("ca.pem");
    let wary = front(&certs, untrusting).await;
    let refused = wary.get("dvc", &path).await;
    assert_eq!(
        (refused.status, refused.error_code().as_deref()),
        (502, Some("upstream_error")),
        "{}",
        refused.text()
    );
    assert!(logged("upstream provider refused: TLS"), "the refusal is logged");
    assert!(logged("provider=lienthong-rest"), "naming the provider");
}

/// A TCP relay in front of the provider that can swallow the provider's answers on the connections open
/// at that moment (a lost acknowledgement), closing them a second later; new connections pass.
struct Relay {
    addr: SocketAddr,
    next_id: Arc<AtomicU64>,
    swallow_below: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            next_id: Arc::new(AtomicU64::new(0)),
            swallow_below: Arc::new(AtomicU64::new(0)),
        };
        let (next_id, swallow_below) = (relay.next_id.clone(), relay.swallow_below.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                let swallow_below = swallow_below.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                    let downstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut deadline: Option<tokio::time::Instant> = None;
                        loop {
                            let read = match deadline {
                                Some(d) => match tokio::time::timeout_at(d, server_read.read(&mut buf)).await
                                {
                                    Ok(r) => r,
                                    Err(_) => return,
                                },
                                None => server_read.read(&mut buf).await,
                            };
                            let n = match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if id < swallow_below.load(Ordering::SeqCst) {
                                deadline.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(1));
                                continue;
                            }
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        () = downstream => {}
                    }
                });
            }
        });
        relay
    }

    fn swallow_answers_on_open_connections(&self) {
        self.swallow_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}
