//! Issue 15: cluster mode on PostgreSQL. A real PostgreSQL (Debian's binaries, started here in a temp dir
//! as an unprivileged user), real brokers as child processes (`lienthong serve`), real mTLS clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lienthong::client::{MtlsClient, Response};
use lienthong::dev::throwaway_pg::ThrowawayPostgres;
use lienthong::postgres::{citizens::PgCitizenStore, Postgres, PostgresConfig};
use lienthong::store::CitizenStore;
use serde_json::{json, Value};

/// A throw-away PostgreSQL on 127.0.0.1 (`lienthong::dev::throwaway_pg`: trust auth, user `lienthong`; as
/// root it runs as `nobody`, owning the temp dir), stopped when dropped.
struct Pg {
    server: ThrowawayPostgres,
    _dir: tempfile::TempDir,
}

impl Pg {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ThrowawayPostgres::start(dir.path(), common::free_port()).unwrap();
        Self { server, _dir: dir }
    }

    fn start_server(&self) {
        self.server.start_server().unwrap();
    }

    fn stop_server(&self) {
        self.server.stop_server().unwrap();
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// A connection for the test's own queries.
    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

/// A `lienthong` command (not a server) and its output.
fn lienthong(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Certificates every node and client shares: a development PKI.
fn make_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let out = lienthong(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--client",
        "moh",
        "--client",
        "dvc",
        "--client",
        "pccovid",
        "--client",
        "vneid",
        "--client",
        "admin",
    ]);
    assert!(out.status.success(), "certs init: {}", text(&out.stderr));
    certs
}

/// `GET /admin/v1/billing/reconcile` on `admin_addr`, asserted clean (every counter matches the trail).
async fn reconciled(admin: &MtlsClient, admin_addr: SocketAddr) -> Value {
    let r = admin
        .get(admin_addr, "/admin/v1/billing/reconcile")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let rec = r.json();
    assert_eq!(
        (rec["ok"].clone(), rec["differences"].clone()),
        (json!(true), json!([])),
        "{rec}"
    );
    rec
}

fn client(certs: &Path, who: &str) -> MtlsClient {
    common::client_for(certs, who)
}

/// One broker of the cluster: `lienthong serve` as a child process with its own data dir.
struct Node {
    name: String,
    child: Child,
    agency: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

/// Write a node's config (its own ports and data dir, the shared database); the path and the ports.
fn node_config(dir: &Path, certs: &Path, name: &str, url: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    let (agency, admin) = (common::free_port(), common::free_port());
    let config = dir.join(format!("{name}.toml"));
    let c = certs.display();
    std::fs::write(
        &config,
        format!(
            r#"
[agency_listener]
addr = "127.0.0.1:{agency}"
[admin_listener]
addr = "127.0.0.1:{admin}"
[tls]
ca_bundle = "{c}/ca.pem"
server_cert = "{c}/server.pem"
server_key = "{c}/server.key"
crls = ["{c}/crl.pem"]
admin_certs = ["{c}/admin.pem"]
[storage]
data_dir = "{data}"
backend = "postgres"
[storage.postgres]
url = "{url}"
pool_size = 8
connect_timeout_ms = 2000
node_name = "{name}"
seal_every_ms = 300
"#,
            data = dir.join(name).display()
        ),
    )
    .unwrap();
    let addr = |port: u16| format!("127.0.0.1:{port}").parse().unwrap();
    (config, addr(agency), addr(admin))
}

fn serve(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Node {
    /// Write the node's config and start it; returns once it answers `/healthz`.
    async fn start(dir: &Path, certs: &Path, name: &str, url: &str) -> Self {
        let (config, agency, admin) = node_config(dir, certs, name, url);
        let log = dir.join(format!("{name}.log"));
        let mut node = Self {
            name: name.into(),
            child: serve(&config, &log),
            agency,
            admin,
            log,
            config,
        };
        node.wait_ready(certs).await;
        node
    }

    /// Start it again (after [`Node::kill`]) and wait until it serves.
    async fn restart(&mut self, certs: &Path) {
        self.child = serve(&self.config, &self.log);
        self.wait_ready(certs).await;
    }

    async fn wait_ready(&mut self, certs: &Path) {
        let admin = client(certs, "admin");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "node {} exited ({status}): {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if admin
                .get(self.admin, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {} did not come up", self.name);
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Register the agencies the tests use, on this node (every node shares the registry).
    async fn register(&self, certs: &Path, agencies: &[&str]) {
        let admin = client(certs, "admin");
        for code in agencies {
            let fingerprint =
                lienthong::identity::fingerprint_of_pem_file(&certs.join(format!("{code}.pem"))).unwrap();
            let r = admin
                .post_json(
                    self.admin,
                    "/admin/v1/agencies",
                    &json!({ "code": code, "name": code, "fingerprints": [fingerprint] }),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{}", text(&r.body));
        }
    }
}

impl Node {
    /// Wait until this node's registry shows `code` as `check` wants it (changes made on another node
    /// arrive through the shared registry).
    async fn wait_for_agency(&self, certs: &Path, code: &str, check: impl Fn(&Value) -> bool) {
        let admin = client(certs, "admin");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = admin
                .get(self.admin, &format!("/admin/v1/agencies/{code}"))
                .await
                .unwrap();
            if r.status == 200 && check(&r.json()["agency"]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: agency {code}: {}",
                self.name,
                text(&r.body)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Citizens with an empty health history: `count` IDs, validated and written straight into the database
/// (the schema is migrated first, as a broker would).
async fn seed(url: &str, count: usize) -> Vec<String> {
    let postgres = Postgres::open(&PostgresConfig {
        url: url.into(),
        ..Default::default()
    })
    .unwrap();
    postgres.migrate().await.unwrap();
    let store = PgCitizenStore::new(postgres);
    let records: Vec<(String, Value)> = (0..count)
        .map(|i| {
            let id = format!("0010901{i:05}");
            let record = json!({
                "citizen_id": id, "full_name": "Phạm Thị Thu", "birth_date": "1990-02-03", "gender": "male",
                "permanent_address": { "detail": "Số 5 Tràng Tiền", "province": "Thành phố Hà Nội" }
            });
            (id, record)
        })
        .collect();
    let ids = records.iter().map(|(id, _)| id.clone()).collect();
    store.put_many(records).await.unwrap();
    ids
}

fn vaccination(source: &str) -> Value {
    json!({ "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
            "date": "2021-08-01", "lot": "FK1234", "site": "Trạm Y tế Phường Tràng Tiền", "source_record_id": source })
}

fn write_path(id: &str) -> String {
    format!("/v1/citizens/{id}/vaccinations?purpose=vaccination-sync")
}

fn request_id(r: &Response) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_string()
}

fn error_code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// The request ids among `ids` that have no entry in the shared audit trail.
async fn unaudited(pg: &Pg, ids: &[String]) -> Vec<String> {
    let db = pg.client().await;
    let rows = db
        .query(
            "SELECT r FROM unnest($1::text[]) r WHERE NOT EXISTS \
             (SELECT 1 FROM audit_entries WHERE (line::jsonb)->>'request_id' = r)",
            &[&ids],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// `PUT` a JSON body on an admin listener.
async fn put_json(admin: &MtlsClient, addr: SocketAddr, path: &str, body: Value) -> Response {
    admin
        .request(
            addr,
            hyper::Method::PUT,
            path,
            Some("application/json"),
            body.to_string(),
        )
        .await
        .unwrap()
}

fn verify(pg: &Pg) -> Output {
    lienthong(&["audit", "verify", "--database", &pg.url()])
}

#[tokio::test]
async fn three_nodes_share_records_and_one_tamper_evident_trail_through_a_kill() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());

    let out = lienthong(&["db", "migrate", "--database", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("from version 0 to 7"),
        "{}",
        text(&out.stdout)
    );
    let out = lienthong(&["db", "migrate", "--database", &pg.url()]);
    assert!(
        text(&out.stdout).contains("schema version 7 is current"),
        "{}",
        text(&out.stdout)
    );

    let ids = seed(&pg.url(), 80).await;
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(dir.path(), &certs, name, &pg.url()).await);
    }
    // Registered on B, known everywhere.
    nodes[1].register(&certs, &["moh", "dvc", "vneid"]).await;
    for node in &nodes {
        for code in ["moh", "dvc", "vneid"] {
            node.wait_for_agency(&certs, code, |_| true).await;
        }
    }
    let r = client(&certs, "admin")
        .post_json(
            nodes[2].admin,
            "/admin/v1/agencies",
            &json!({ "code": "moh", "name": "again", "fingerprints": [] }),
        )
        .await
        .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (409, "agency_exists"));
    let (moh, dvc) = (client(&certs, "moh"), client(&certs, "dvc"));

    // Written on B, seen on C: the replay answers 200 with what B stored; a different entry under the
    // same source id is a conflict on A.
    let r = dvc
        .get(
            nodes[0].agency,
            &format!("/v1/citizens/{}?purpose=public-service-prefill", ids[0]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["citizen"]["full_name"], "Phạm Thị Thu");
    let v = vaccination("moh-imm-0");
    let r = moh
        .post_json(nodes[1].agency, &write_path(&ids[0]), &v)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", text(&r.body));
    let r = moh
        .post_json(nodes[2].agency, &write_path(&ids[0]), &v)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["vaccinations"], v);
    let mut changed = v.clone();
    changed["lot"] = "OTHER".into();
    let r = moh
        .post_json(nodes[0].agency, &write_path(&ids[0]), &changed)
        .await
        .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (409, "idempotency_conflict"));

    // The citizen's access log and the operators' search read every broker's chain.
    let r = dvc
        .get(
            nodes[2].agency,
            &format!("/v1/citizens/{}/access-log?purpose=citizen-self-service", ids[0]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let log: Vec<(String, u64)> = r.json()["access_log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["agency"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        log,
        [
            ("moh".to_string(), 409),
            ("moh".into(), 200),
            ("moh".into(), 201),
            ("dvc".into(), 200)
        ],
        "newest first, from nodes A, C, B and A"
    );
    let r = client(&certs, "admin")
        .get(
            nodes[1].admin,
            &format!("/admin/v1/audit/entries?citizen_id={}&limit=2", ids[0]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2);
    let next = r.json()["next_before"].as_u64().unwrap();
    let r = client(&certs, "admin")
        .get(
            nodes[1].admin,
            &format!(
                "/admin/v1/audit/entries?citizen_id={}&limit=2&before={next}",
                ids[0]
            ),
        )
        .await
        .unwrap();
    let older: Vec<u64> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    // Page one held the access-log read itself and the 409; then C's replay and B's write.
    assert_eq!(older, [200, 201], "{}", text(&r.body));

    // A checkpoint registered on B, scanned at through C, traced through A.
    let vneid = client(&certs, "vneid");
    let r = vneid
        .post_json(
            nodes[1].agency,
            "/v1/checkpoints?purpose=checkpoint-checkin",
            &json!({ "id": "cho-ben-thanh", "name": "Chợ Bến Thành", "address": "Quận 1", "kind": "supermarket" }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", text(&r.body));
    let r = vneid
        .post_json(
            nodes[0].agency,
            "/v1/checkpoints?purpose=checkpoint-checkin",
            &json!({ "id": "cho-ben-thanh", "name": "x", "address": "y", "kind": "other" }),
        )
        .await
        .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (409, "checkpoint_exists"));
    let scanned_at = chrono::Utc::now() - chrono::Duration::hours(1);
    let scan = "/v1/checkpoints/cho-ben-thanh/checkins?purpose=checkpoint-checkin";
    let time = scanned_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for id in &ids[70..73] {
        let r = vneid
            .post_json(nodes[2].agency, scan, &json!({ "citizen_id": id, "time": time }))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", text(&r.body));
    }
    let window = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let trace = format!(
        "/v1/checkpoints/cho-ben-thanh/checkins?purpose=contact-tracing&from={}&to={}",
        window(scanned_at - chrono::Duration::minutes(5)),
        window(scanned_at + chrono::Duration::minutes(5))
    );
    let r = moh.get(nodes[0].agency, &trace).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let traced: Vec<String> = r.json()["checkins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["citizen_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(traced, ids[70..73].to_vec());

    // Writes spread over the three nodes, node A killed -9 half-way.
    let mut writers = Vec::new();
    for (i, id) in ids.iter().enumerate().skip(1) {
        let (moh, addr, id) = (moh.clone(), nodes[i % 3].agency, id.clone());
        writers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            let r = moh
                .post_json(addr, &write_path(&id), &vaccination(&format!("moh-imm-{id}")))
                .await;
            (id, r.ok())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[0].kill();
    let mut acknowledged = Vec::new();
    let mut request_ids = Vec::new();
    for w in writers {
        let (id, r) = w.await.unwrap();
        if let Some(r) = r {
            if r.status == 201 {
                request_ids.push(request_id(&r));
                acknowledged.push(id);
            }
        }
    }
    assert!(
        acknowledged.len() >= 40,
        "only {} writes acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < ids.len() - 1,
        "node A was killed after the load ended"
    );
    // Every acknowledged write is there on the survivors, and every 2xx has its audit entry.
    for (i, id) in acknowledged.iter().enumerate() {
        let survivor = nodes[1 + i % 2].agency;
        let v = vaccination(&format!("moh-imm-{id}"));
        let r = moh.post_json(survivor, &write_path(id), &v).await.unwrap();
        assert_eq!(r.status, 200, "{id}: {}", text(&r.body));
        request_ids.push(request_id(&r));
    }
    assert_eq!(unaudited(&pg, &request_ids).await, Vec::<String>::new());

    // Node A back: a new chain continuing the one it was killed in.
    nodes[0].restart(&certs).await;
    let r = dvc
        .get(
            nodes[0].agency,
            &format!("/v1/citizens/{}?purpose=public-service-prefill", ids[1]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let db = pg.client().await;
    let chains = db
        .query(
            "SELECT node, continues_chain IS NOT NULL FROM audit_chains ORDER BY started_at",
            &[],
        )
        .await
        .unwrap();
    let chains: Vec<(String, bool)> = chains.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(chains.len(), 4, "{chains:?}");
    assert_eq!(chains[3], ("node-a".to_string(), true), "{chains:?}");
    // Once a seal covers the four chains, every chain and seal verifies.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sealed: Vec<Value> = loop {
        let row = db
            .query_opt("SELECT heads FROM audit_seals ORDER BY id DESC LIMIT 1", &[])
            .await
            .unwrap();
        if let Some(Value::Array(heads)) = row.map(|r| r.get::<_, Value>(0)) {
            if heads.len() == 4 {
                break heads;
            }
        }
        assert!(Instant::now() < deadline, "no seal over the four chains");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = verify(&pg);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ok: 4 chains"), "{stdout}");
    assert!(stdout.contains("seals signed by public key"), "{stdout}");
    // The same through any broker's admin API.
    let admin = client(&certs, "admin");
    let r = admin.get(nodes[2].admin, "/admin/v1/audit/verify").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["ok"], true, "{}", text(&r.body));
    assert_eq!(r.json()["chains"].as_array().unwrap().len(), 4);
    let r = admin.get(nodes[1].admin, "/admin/v1/audit/head").await.unwrap();
    assert_eq!(
        r.json()["chains"].as_array().unwrap().len(),
        4,
        "{}",
        text(&r.body)
    );

    // The trail refuses changes; one made behind its back (trigger disabled by the owner) is found.
    for sql in [
        "UPDATE audit_entries SET status = 200",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries CASCADE",
        "DELETE FROM audit_chains",
    ] {
        let e = db.batch_execute(sql).await.unwrap_err();
        assert!(format!("{e:?}").contains("append-only"), "{sql}: {e:?}");
    }
    // Cutting node B's chain back before its sealed head: the chain alone still verifies, the seal does not.
    let chain_b: uuid::Uuid = db
        .query_one("SELECT chain_id FROM audit_chains WHERE node = 'node-b'", &[])
        .await
        .unwrap()
        .get(0);
    let sealed_b = sealed
        .iter()
        .find(|h| h["chain_id"] == chain_b.to_string())
        .unwrap()["seq"]
        .as_i64()
        .unwrap();
    db.batch_execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
        .await
        .unwrap();
    db.execute(
        "DELETE FROM audit_entries WHERE chain_id = $1 AND seq >= $2",
        &[&chain_b, &sealed_b],
    )
    .await
    .unwrap();
    let out = verify(&pg);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("chain {chain_b} seq {sealed_b} was sealed but is gone")),
        "{stderr}"
    );
    let r = admin.get(nodes[2].admin, "/admin/v1/audit/verify").await.unwrap();
    assert_eq!(r.json()["ok"], false, "{}", text(&r.body));
    assert!(
        text(&r.body).contains("was sealed but is gone"),
        "{}",
        text(&r.body)
    );

    db.batch_execute(
        "UPDATE audit_entries SET line = replace(line, '\"status\":201', '\"status\":200')
             WHERE status = 201 AND seq = (SELECT min(seq) FROM audit_entries WHERE status = 201);",
    )
    .await
    .unwrap();
    let out = verify(&pg);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("audit chain broken: chain ") && stderr.contains("hash does not match"),
        "{stderr}"
    );
}

#[tokio::test]
async fn three_nodes_under_concurrent_reads_serve_exactly_the_plan() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let ids = seed(&pg.url(), 3).await;
    let admin = client(&certs, "admin");
    let mut nodes = Vec::new();
    for name in ["q-a", "q-b", "q-c"] {
        nodes.push(Node::start(dir.path(), &certs, name, &pg.url()).await);
    }
    nodes[0].register(&certs, &["dvc"]).await;
    // A plan set on C applies on every node.
    let r = put_json(
        &admin,
        nodes[2].admin,
        "/admin/v1/agencies/dvc/plan",
        json!({ "limits": { "public-service-prefill": { "per_day": 50 } } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    for node in &nodes {
        node.wait_for_agency(&certs, "dvc", |a| !a["plan"].is_null())
            .await;
    }
    let dvc = client(&certs, "dvc");
    let mut readers = Vec::new();
    for i in 0..90 {
        let (dvc, addr) = (dvc.clone(), nodes[i % 3].agency);
        let path = format!("/v1/citizens/{}?purpose=public-service-prefill", ids[i % 3]);
        readers.push(tokio::spawn(async move { dvc.get(addr, &path).await.unwrap() }));
    }
    let (mut served, mut refused) = (Vec::new(), 0);
    for r in readers {
        let r = r.await.unwrap();
        match r.status {
            200 => served.push(request_id(&r)),
            429 => {
                assert_eq!(error_code(&r), "quota_exceeded");
                assert!(r.headers.contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("{other}: {}", text(&r.body)),
        }
    }
    assert_eq!((served.len(), refused), (50, 40));
    assert_eq!(unaudited(&pg, &served).await, Vec::<String>::new());
    // Billing totals count what the trail holds, across the nodes.
    let db = pg.client().await;
    let rows = db
        .query(
            "SELECT kind, calls FROM quota_totals WHERE agency = 'dvc' ORDER BY kind",
            &[],
        )
        .await
        .unwrap();
    let totals: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        totals,
        vec![("refused".to_string(), 40), ("served".to_string(), 50)]
    );
    // Usage counts every node's calls.
    let r = admin
        .get(nodes[1].admin, "/admin/v1/agencies/dvc/usage")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(
        r.json()["usage"]["public-service-prefill"]["used"]["day"],
        50,
        "{}",
        text(&r.body)
    );
    // The billing report on B counts every node's calls.
    let r = admin
        .get(nodes[1].admin, "/admin/v1/billing/report")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let line = &r.json()["lines"][0];
    assert_eq!(
        (
            line["agency"].clone(),
            line["served"].clone(),
            line["refused_quota"].clone()
        ),
        (json!("dvc"), json!(50), json!(40)),
        "{}",
        text(&r.body)
    );

    // Suspended on A: refused on C within a second; resumed on B: served on A again.
    let read = format!("/v1/citizens/{}?purpose=public-service-prefill", ids[0]);
    let r = admin
        .post_json(nodes[0].admin, "/admin/v1/agencies/dvc/suspend", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let suspended = Instant::now();
    loop {
        let r = dvc.get(nodes[2].agency, &read).await.unwrap();
        if r.status == 403 {
            assert_eq!(error_code(&r), "agency_suspended");
            break;
        }
        assert!(
            suspended.elapsed() < Duration::from_secs(1),
            "still {} on node C",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = admin
        .post_json(nodes[1].admin, "/admin/v1/agencies/dvc/resume", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    nodes[0]
        .wait_for_agency(&certs, "dvc", |a| a["status"] == "active")
        .await;

    // A second dvc certificate bound on A serves on C; revoked by a CRL reloaded on A, refused on C.
    let ca = lienthong::dev::certs::CertAuthority::from_pem(
        &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(certs.join("ca.key")).unwrap(),
    )
    .unwrap();
    let extra = ca
        .issue_client("dvc-2", "dvc", lienthong::dev::certs::Validity::days(30))
        .unwrap();
    std::fs::write(certs.join("dvc-2.pem"), &extra.cert_pem).unwrap();
    std::fs::write(certs.join("dvc-2.key"), &extra.key_pem).unwrap();
    let r = admin
        .post_json(
            nodes[0].admin,
            "/admin/v1/agencies/dvc/certificates",
            &json!({ "certificate_pem": extra.cert_pem }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    nodes[2]
        .wait_for_agency(&certs, "dvc", |a| {
            a["fingerprints"].as_array().unwrap().len() == 2
        })
        .await;
    let dvc2 = client(&certs, "dvc-2");
    let r = dvc2.get(nodes[2].agency, "/v1/whoami").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    std::fs::write(
        certs.join("crl.pem"),
        ca.crl(std::slice::from_ref(&extra.serial), 2).unwrap(),
    )
    .unwrap();
    let r = admin
        .post_json(nodes[0].admin, "/admin/v1/tls/reload", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let reloaded = Instant::now();
    while dvc2.get(nodes[2].agency, "/v1/whoami").await.is_ok() {
        assert!(
            reloaded.elapsed() < Duration::from_secs(2),
            "node C still accepts the revoked certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = dvc.get(nodes[2].agency, "/v1/whoami").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
}

#[tokio::test]
async fn postgres_down_answers_503_and_the_broker_recovers_by_itself() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let ids = seed(&pg.url(), 5).await;
    let node = Node::start(dir.path(), &certs, "solo", &pg.url()).await;
    node.register(&certs, &["moh", "dvc"]).await;
    let (dvc, admin) = (client(&certs, "dvc"), client(&certs, "admin"));
    let read = format!("/v1/citizens/{}?purpose=public-service-prefill", ids[0]);
    let mut served = Vec::new();
    let r = dvc.get(node.agency, &read).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    served.push(request_id(&r));

    pg.stop_server();
    let r = dvc.get(node.agency, &read).await.unwrap();
    assert_eq!(r.status, 503, "{}", text(&r.body));
    assert!(
        ["store_unavailable", "audit_unavailable"].contains(&error_code(&r).as_str()),
        "{}",
        text(&r.body)
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        !text(&r.body).contains("127.0.0.1"),
        "the cause leaked: {}",
        text(&r.body)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.get(node.admin, "/healthz").await.unwrap();
        if r.status == 503 {
            assert_eq!(r.json()["error"]["code"], "store_unavailable");
            assert_eq!(r.json()["error"]["dependency"], "postgres");
            break;
        }
        assert!(Instant::now() < deadline, "healthz still {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = dvc.get(node.agency, &read).await.unwrap();
        if r.status == 200 {
            served.push(request_id(&r));
            break;
        }
        assert_eq!(r.status, 503, "{}", text(&r.body));
        assert!(Instant::now() < deadline, "not serving again: {}", text(&r.body));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = admin.get(node.admin, "/healthz").await.unwrap();
    assert!(r.status == 200 || r.status == 503);
    assert_eq!(unaudited(&pg, &served).await, Vec::<String>::new());
    let out = verify(&pg);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[tokio::test]
async fn a_database_newer_than_the_broker_is_refused_naming_both_versions() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let out = lienthong(&["db", "migrate", "--database", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    pg.client()
        .await
        .batch_execute("INSERT INTO lienthong_schema_version (version, name) VALUES (99, 'from the future')")
        .await
        .unwrap();
    let out = lienthong(&["db", "migrate", "--database", &pg.url()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("schema version 99 is newer than this broker understands (version 7)"),
        "{stderr}"
    );

    // A broker refuses to start on it, with the same words.
    let (config, _, _) = node_config(dir.path(), &certs, "old", &pg.url());
    let log = dir.path().join("old.log");
    let mut old = serve(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = old.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the broker started on a newer database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("schema version 99 is newer than this broker understands (version 7)"),
        "{log}"
    );
}

#[tokio::test]
async fn an_embedded_installation_moves_over_with_its_chain_intact() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    // A demo broker (sled) that served a little, then killed.
    let mut demo = common::ChildBroker::start(dir.path()).await;
    let dvc = demo.clients()("dvc");
    let read = "/v1/citizens/001090000001?purpose=public-service-prefill";
    let embedded = dvc.get(demo.agency, read).await.unwrap();
    assert_eq!(embedded.status, 200, "{}", text(&embedded.body));
    let vneid = demo.clients()("vneid");
    let r = vneid
        .post_json(
            demo.agency,
            "/v1/checkpoints?purpose=checkpoint-checkin",
            &json!({ "id": "cho-ben-thanh", "name": "Chợ Bến Thành", "address": "Quận 1", "kind": "supermarket" }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", text(&r.body));
    let scanned_at = chrono::Utc::now() - chrono::Duration::hours(1);
    let time = scanned_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = vneid
        .post_json(
            demo.agency,
            "/v1/checkpoints/cho-ben-thanh/checkins?purpose=checkpoint-checkin",
            &json!({ "citizen_id": "001090000001", "time": time }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", text(&r.body));
    demo.kill();
    let data = dir.path().join("data");
    let local = lienthong(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(local.status.success(), "{}", text(&local.stderr));

    let import = |node: &str| {
        lienthong(&[
            "db",
            "import",
            "--data-dir",
            data.to_str().unwrap(),
            "--node-name",
            node,
            "--database",
            &pg.url(),
        ])
    };
    let out = import("node-x");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("imported 5 agencies, 300 citizens, 1 checkpoints with 1 check-ins, "),
        "{stdout}"
    );
    let again = import("node-x");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("imported already?"),
        "{}",
        text(&again.stderr)
    );

    // A broker on PostgreSQL named like the imported chain serves the same data and continues that chain.
    let certs = dir.path().join("certs");
    let node = Node::start(dir.path(), &certs, "node-x", &pg.url()).await;
    let r = dvc.get(node.agency, read).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["citizen"], embedded.json()["citizen"]);
    let window = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let trace = format!(
        "/v1/checkpoints/cho-ben-thanh/checkins?purpose=contact-tracing&from={}&to={}",
        window(scanned_at - chrono::Duration::minutes(5)),
        window(scanned_at + chrono::Duration::minutes(5))
    );
    let r = demo.clients()("moh").get(node.agency, &trace).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["checkins"][0]["citizen_id"], "001090000001");
    // The calls served before the move are in the billing totals too: reconcile agrees after it.
    let rec = reconciled(&demo.clients()("admin"), node.admin).await;
    assert!(rec["from_audit"]["lines"].to_string().contains("dvc"), "{rec}");
    let db = pg.client().await;
    let continues: Vec<bool> = db
        .query(
            "SELECT continues_chain IS NOT NULL FROM audit_chains WHERE node = 'node-x' ORDER BY started_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(continues, vec![false, true]);
    let out = verify(&pg);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: 2 chains"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn postgres_settings_are_checked_and_the_password_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let c = certs.display();
    let config = dir.path().join("lienthong.toml");
    let write = |storage: &str| {
        std::fs::write(
            &config,
            format!(
                "[tls]\nca_bundle = \"{c}/ca.pem\"\nserver_cert = \"{c}/server.pem\"\nserver_key = \"{c}/server.key\"\n\
                 crls = [\"{c}/crl.pem\"]\nadmin_certs = [\"{c}/admin.pem\"]\n{storage}"
            ),
        )
        .unwrap();
    };
    let check = || lienthong(&["check-config", "--config", config.to_str().unwrap()]);

    // Each refused with exit 2 and a message naming the key; the password never shown.
    for (storage, expected) in [
        ("[storage]\nbackend = \"postgres\"\n", "storage.postgres.url: required"),
        (
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://broker:s3cret@db/x\"\npool_size = 0\n",
            "storage.postgres.pool_size",
        ),
        (
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://broker:s3cret@db:notaport/x\"\n",
            "postgres://broker:***@db:notaport/x",
        ),
        ("[storage]\nbackend = \"mysql\"\n", "expected `sled` or `postgres`"),
    ] {
        write(storage);
        let out = check();
        assert_eq!(out.status.code(), Some(2), "{storage}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }

    write("[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"postgres://broker@127.0.0.1/x\"\n");
    let out = check();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The month before the one `now` is in (Vietnam time), `YYYY-MM`: over, so it can be closed.
fn last_month() -> String {
    let vietnam = chrono::Utc::now() + chrono::Duration::hours(7);
    let first = chrono::NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&vietnam),
        chrono::Datelike::month(&vietnam),
        1,
    )
    .unwrap();
    (first - chrono::Duration::days(1)).format("%Y-%m").to_string()
}

#[tokio::test]
async fn billing_checkpoints_and_export_answer_for_the_whole_cluster() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let ids = seed(&pg.url(), 4).await;
    let admin = client(&certs, "admin");
    let a = Node::start(dir.path(), &certs, "bill-a", &pg.url()).await;
    let b = Node::start(dir.path(), &certs, "bill-b", &pg.url()).await;
    a.register(&certs, &["dvc", "pccovid"]).await;
    b.wait_for_agency(&certs, "pccovid", |x| x["code"] == "pccovid")
        .await;
    // pccovid is funded by the state budget: set on B, seen on A.
    let r = put_json(
        &admin,
        b.admin,
        "/admin/v1/agencies/pccovid/billing-class",
        json!({ "billing_class": "state-budget" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    a.wait_for_agency(&certs, "pccovid", |x| x["billing_class"] == "state-budget")
        .await;
    // A plan, so the shared counters meter dvc (a purpose without limits is not counted).
    let r = put_json(
        &admin,
        a.admin,
        "/admin/v1/agencies/dvc/plan",
        json!({ "limits": { "public-service-prefill": { "per_month": 100 } } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    b.wait_for_agency(&certs, "dvc", |x| !x["plan"].is_null()).await;

    // dvc: 3 calls on A, 2 on B (1000 VND each); pccovid: 2 on A, 1 on B (exempt).
    let (dvc, pccovid) = (client(&certs, "dvc"), client(&certs, "pccovid"));
    let mut served = Vec::new();
    for (who, purpose, node, times) in [
        (&dvc, "public-service-prefill", &a, 3),
        (&dvc, "public-service-prefill", &b, 2),
        (&pccovid, "covid-qr-status", &a, 2),
        (&pccovid, "covid-qr-status", &b, 1),
    ] {
        for i in 0..times {
            let path = format!("/v1/citizens/{}?purpose={purpose}", ids[i % ids.len()]);
            let r = who.get(node.agency, &path).await.unwrap();
            assert_eq!(r.status, 200, "{}", text(&r.body));
            served.push(request_id(&r));
        }
    }

    // The same report on both nodes: the sum of their use, state-budget use counted but not charged.
    let mut reports = Vec::new();
    for node in [&a, &b] {
        let r = admin.get(node.admin, "/admin/v1/billing/report").await.unwrap();
        assert_eq!(r.status, 200, "{}", text(&r.body));
        reports.push(r.json());
    }
    assert_eq!(reports[0], reports[1]);
    let report = &reports[0];
    let lines = report["lines"].as_array().unwrap();
    let line = |agency: &str| lines.iter().find(|l| l["agency"] == agency).unwrap().clone();
    let dvc_line = line("dvc");
    assert_eq!(
        (
            dvc_line["served"].clone(),
            dvc_line["amount_vnd"].clone(),
            dvc_line["exempt"].clone()
        ),
        (json!(5), json!(5000), json!(false)),
        "{report}"
    );
    let pccovid_line = line("pccovid");
    assert_eq!(
        (
            pccovid_line["served"].clone(),
            pccovid_line["amount_vnd"].clone(),
            pccovid_line["exempt"].clone(),
            pccovid_line["billing_class"].clone()
        ),
        (json!(3), json!(0), json!(true), json!("state-budget")),
        "{report}"
    );
    assert_eq!(
        (report["total_vnd"].clone(), report["closed"].clone()),
        (json!(5000), json!(false))
    );
    let r = admin
        .get(a.admin, "/admin/v1/billing/report?format=csv")
        .await
        .unwrap();
    assert!(
        text(&r.body).contains(",dvc,public-service-prefill,5,0,1000,5000,false\n"),
        "{}",
        text(&r.body)
    );

    // Reconcile: every node's counters match every node's audit entries.
    let rec = reconciled(&admin, b.admin).await;
    assert_eq!(rec["from_audit"]["total_vnd"], 5000);
    // The same through the operator's CLI, on either node.
    let cli = |node: &Node, args: &[&str]| {
        let admin_addr = node.admin.to_string();
        let (ca, cert, key) = (
            certs.join("ca.pem"),
            certs.join("admin.pem"),
            certs.join("admin.key"),
        );
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--admin-addr",
            &admin_addr,
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        lienthong(&all)
    };
    let out = cli(&a, &["billing", "reconcile"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = cli(&b, &["billing", "report", "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(",TOTAL,,,,,5000,\n"),
        "{}",
        text(&out.stdout)
    );

    // A month that is over: closed on A, once for the cluster; B answers 409 and the frozen month.
    let month = last_month();
    let r = admin
        .post_json(
            a.admin,
            &format!("/admin/v1/billing/close?month={month}"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", text(&r.body));
    let closed = r.json();
    let statement = &closed["statement"];
    let chains = statement["audit_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "one chain per node: {closed}");
    let entries: u64 = chains.iter().map(|c| c["seq"].as_u64().unwrap()).sum();
    assert_eq!(statement["audit_head_seq"], entries);
    assert_eq!(statement["audit_head_hash"].as_str().unwrap().len(), 64);
    let public = std::fs::read_to_string(dir.path().join("bill-a/audit/checkpoint.pub")).unwrap();
    assert_eq!(closed["signature"]["public_key"], public.trim());
    let signed = closed["signed_json"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(signed).unwrap(), *statement);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, hex::decode(public.trim()).unwrap())
        .verify(
            format!("lienthong-billing-close-v1\n{signed}").as_bytes(),
            &hex::decode(closed["signature"]["signature"].as_str().unwrap()).unwrap(),
        )
        .expect("the closed month's signature verifies");
    let r = admin
        .post_json(
            b.admin,
            &format!("/admin/v1/billing/close?month={month}"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (409, "month_closed"),
        "{}",
        text(&r.body)
    );
    let r = admin
        .get(b.admin, &format!("/admin/v1/billing/closed?month={month}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json(), closed);
    let r = admin
        .get(b.admin, &format!("/admin/v1/billing/report?month={month}"))
        .await
        .unwrap();
    assert_eq!(r.json()["closed"], true, "{}", text(&r.body));
    let r = admin
        .get(b.admin, &format!("/admin/v1/billing/reconcile?month={month}"))
        .await
        .unwrap();
    assert_eq!(
        (r.json()["ok"].clone(), r.json()["closed_report_matches"].clone()),
        (json!(true), json!(true)),
        "{}",
        text(&r.body)
    );

    // A checkpoint: a seal over both chains, signed now by B, which verification then checks.
    let r = admin.get(b.admin, "/admin/v1/audit/checkpoint").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let seal = r.json();
    assert_eq!(seal["node"], "bill-b");
    assert_eq!(seal["heads"].as_array().unwrap().len(), 2, "{seal}");
    let public_b = std::fs::read_to_string(dir.path().join("bill-b/audit/checkpoint.pub")).unwrap();
    assert_eq!(seal["public_key"], public_b.trim());
    let out = verify(&pg);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let verified = admin.get(a.admin, "/admin/v1/audit/verify").await.unwrap().json();
    assert_eq!(verified["ok"], true, "{verified}");

    // Exported from the database: both nodes' entries, each chain linked and every hash recomputed.
    let export = dir.path().join("export.jsonl");
    let out = lienthong(&[
        "audit",
        "export",
        "--database",
        &pg.url(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every entry in the table (the verify call above is audited too).
    let stored: i64 = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM audit_entries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lines.len() as i64, stored);
    assert!(text(&out.stderr).contains(&format!("exported {} entries", lines.len())));
    let mut heads = std::collections::HashSet::from([lienthong::audit::GENESIS_HASH.to_string()]);
    for line in &lines {
        let entry: lienthong::audit::AuditEntry = serde_json::from_value(line.clone()).unwrap();
        assert_eq!(entry.compute_hash().unwrap(), entry.hash, "entry {line}");
        let prev = line["prev_hash"].as_str().unwrap();
        assert!(
            heads.contains(prev),
            "entry {line} does not continue an exported entry"
        );
        heads.insert(line["hash"].as_str().unwrap().to_string());
    }
    for id in &served {
        assert!(exported.contains(id.as_str()), "request {id} not exported");
    }

    // Group commits are counted in /metrics.
    let metrics = text(&admin.get(a.admin, "/metrics").await.unwrap().body);
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let (commits, committed) = (
        counter("lienthong_audit_commits_total"),
        counter("lienthong_audit_committed_entries_total"),
    );
    assert!(
        commits > 0 && committed >= commits,
        "{commits} commits of {committed} entries"
    );

    // The console shows the cluster's figures.
    let r = admin.get(a.admin, "/admin/console").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let page = text(&r.body);
    assert!(page.contains("id=\"billing-total\">5000<"), "billing panel");
    assert!(page.contains("in 2 chains"), "chain status");
    assert!(
        page.contains("<span class=\"num\">5 / 100</span>"),
        "quota panel counts both nodes' dvc calls"
    );

    // dvc moves to the state budget on B: the calls before stay billed on A too (the change is dated in
    // the shared registry, not only in B's own).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = put_json(
        &admin,
        b.admin,
        "/admin/v1/agencies/dvc/billing-class",
        json!({ "billing_class": "state-budget" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r.body));
    a.wait_for_agency(&certs, "dvc", |x| x["billing_class"] == "state-budget")
        .await;
    let r = admin.get(a.admin, "/admin/v1/billing/report").await.unwrap();
    assert_eq!(r.json(), reports[0], "{}", text(&r.body));
}
