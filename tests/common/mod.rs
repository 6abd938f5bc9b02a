//! Shared test harness: a real broker on ephemeral ports, rcgen-made certificates in a temp folder, and
//! real mTLS clients. Every test gets its own broker and data directory (no global server).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lienthong::broker::Broker;
use lienthong::client::{Alpn, MtlsClient, Response};
use lienthong::config::Config;
use lienthong::dev::certs::{CertAuthority, IssuedCert, Validity};
use lienthong::dev::demo::DemoOptions;
use lienthong::supervisor::BrokerSlot;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The sample citizen the tests read (Nguyễn Văn An, see `dev::population::SAMPLE_CITIZENS`).
pub const AN: &str = "001090000001";

/// Citizens seeded into every test broker.
pub const TEST_CITIZENS: usize = 200;

/// A running broker and everything needed to talk to it.
pub struct TestBroker {
    pub agency: SocketAddr,
    pub admin: SocketAddr,
    /// The broker serving now (the supervisor replaces it when it reopens a failed database).
    slot: BrokerSlot,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// A fresh broker with the demo agencies registered and a small synthetic population.
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir).await
    }

    /// Start (or restart) on an existing folder: same certificates, same data.
    pub async fn start_in(dir: Arc<tempfile::TempDir>) -> Self {
        Self::try_start_in(dir).await.expect("broker starts")
    }

    /// A fresh broker whose config `tweak` adjusts first (limits, timeouts).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::try_start_in_with(dir, tweak).await.expect("broker starts")
    }

    async fn try_start_in(dir: Arc<tempfile::TempDir>) -> Result<Self, lienthong::broker::StartError> {
        Self::try_start_in_with(dir, |_| {}).await
    }

    /// Start on an existing folder with an adjusted config; the start-up error is handed back.
    pub async fn try_start_in_with(
        dir: Arc<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self, lienthong::broker::StartError> {
        let opts = options(dir.path());
        let broker = lienthong::dev::demo::prepare_with(&opts, |config: &mut Config| {
            // Suites that fire hundreds of concurrent calls from one agency (quota) test other limits;
            // tests/hostile.rs sets the per-agency cap it tests explicitly.
            config.limits.max_concurrent_per_agency = 1024;
            tweak(config);
        })
        .await?;
        let agency_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agency = agency_listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let slot = BrokerSlot::new(&broker);
        let task = tokio::spawn({
            let slot = slot.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                lienthong::supervisor::supervise(
                    broker,
                    agency_listener,
                    admin_listener,
                    shutdown,
                    Some(slot),
                )
                .await
                .expect("serve");
            }
        });
        Ok(Self {
            agency,
            admin,
            slot,
            dir,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Graceful stop; waits until the store is flushed and the database released.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.dir.clone()
    }

    /// Stop and start again on the same data and certificates.
    pub async fn restart(self) -> Self {
        let dir = self.stop().await;
        // sled releases its file lock when the last handle drops; connection tasks may hold one briefly.
        let mut last = None;
        for _ in 0..100 {
            match Self::try_start_in(dir.clone()).await {
                Ok(b) => return b,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("broker did not restart: {last:?}");
    }

    /// The broker serving now. Panics while the database is being reopened: poll over HTTP first.
    pub fn broker(&self) -> Arc<Broker> {
        self.slot
            .current()
            .expect("a broker is serving (not in the middle of a reopen)")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The development CA, to issue more certificates.
    pub fn ca(&self) -> CertAuthority {
        let d = self.certs_dir();
        CertAuthority::from_pem(
            &std::fs::read_to_string(d.join("ca.pem")).unwrap(),
            &std::fs::read_to_string(d.join("ca.key")).unwrap(),
        )
        .unwrap()
    }

    /// A client presenting the named demo certificate (`moh`, `pccovid`, `dvc`, `admin`).
    pub fn client(&self, name: &str) -> MtlsClient {
        let d = self.certs_dir();
        MtlsClient::from_files(
            &d.join("ca.pem"),
            &d.join(format!("{name}.pem")),
            &d.join(format!("{name}.key")),
            Alpn::Both,
        )
        .unwrap()
    }

    /// A client presenting an arbitrary issued certificate.
    pub fn client_with(&self, cert: &IssuedCert, alpn: Alpn) -> MtlsClient {
        let ca = std::fs::read(self.certs_dir().join("ca.pem")).unwrap();
        MtlsClient::from_pem(
            &ca,
            Some((cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())),
            alpn,
        )
        .unwrap()
    }

    /// Issue a fresh client certificate from the broker's CA.
    pub fn issue(&self, cn: &str, validity: Validity) -> IssuedCert {
        self.ca().issue_client(cn, "test agency", validity).unwrap()
    }

    /// Issue a fresh client certificate and bind it to `agency` through the admin API.
    pub async fn issue_bound(&self, agency: &str, cn: &str) -> IssuedCert {
        let cert = self.issue(cn, Validity::days(30));
        let r = self
            .admin_post(
                &format!("/admin/v1/agencies/{agency}/certificates"),
                serde_json::json!({ "certificate_pem": cert.cert_pem }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        cert
    }

    /// Publish a CRL revoking `serials` and make the broker take it.
    pub async fn revoke(&self, serials: &[Vec<u8>]) {
        let crl = self.ca().crl(serials, 2).unwrap();
        std::fs::write(self.certs_dir().join("crl.pem"), crl).unwrap();
        let r = self
            .admin_post("/admin/v1/tls/reload", serde_json::json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub async fn get(&self, who: &str, path: &str) -> Response {
        self.client(who).get(self.agency, path).await.unwrap()
    }

    pub async fn post(&self, who: &str, path: &str, body: serde_json::Value) -> Response {
        self.client(who)
            .post_json(self.agency, path, &body)
            .await
            .unwrap()
    }

    pub async fn post_raw(
        &self,
        who: &str,
        path: &str,
        content_type: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Response {
        self.client(who)
            .request(self.agency, hyper::Method::POST, path, Some(content_type), body)
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        self.client("admin").get(self.admin, path).await.unwrap()
    }

    /// The operations of the latest admin entries in the audit trail (`admin:suspend`, …).
    pub async fn admin_operations(&self) -> Vec<String> {
        let trail = self
            .admin_get("/admin/v1/audit/entries?agency=admin&limit=100")
            .await
            .json();
        trail["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["operation"].as_str().map(str::to_string))
            .collect()
    }

    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> Response {
        self.client("admin")
            .post_json(self.admin, path, &body)
            .await
            .unwrap()
    }

    /// The CLI's arguments for reaching this broker's admin API with the admin certificate.
    pub fn cli_admin_args(&self) -> Vec<String> {
        let d = self.certs_dir();
        let path = |name: &str| d.join(name).to_string_lossy().into_owned();
        vec![
            "--admin-addr".into(),
            self.admin.to_string(),
            "--cacert".into(),
            path("ca.pem"),
            "--cert".into(),
            path("admin.pem"),
            "--key".into(),
            path("admin.key"),
        ]
    }

    /// Run the `lienthong` binary with `args` (in this broker's directory) and wait for it.
    pub async fn run_cli(&self, args: Vec<String>) -> std::process::Output {
        let cwd = self.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_lienthong"))
                .args(&args)
                .current_dir(cwd)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// `PUT` a JSON body on the admin API.
    pub async fn admin_put(&self, path: &str, body: impl Into<String>) -> Response {
        self.client("admin")
            .request(
                self.admin,
                hyper::Method::PUT,
                path,
                Some("application/json"),
                body.into(),
            )
            .await
            .unwrap()
    }

    /// Set an agency's quota plan to `limits` (purpose id or `*` → limits) through the admin API.
    pub async fn set_plan(&self, agency: &str, limits: serde_json::Value) {
        let r = self
            .admin_put(
                &format!("/admin/v1/agencies/{agency}/plan"),
                serde_json::json!({ "limits": limits }).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn options(dir: &Path) -> DemoOptions {
    DemoOptions {
        certs_dir: dir.join("certs"),
        data_dir: dir.join("data"),
        citizens: TEST_CITIZENS,
        agency_addr: "127.0.0.1:0".into(),
        admin_addr: "127.0.0.1:0".into(),
        cache_mb: None,
    }
}

/// The shared real-data folder (`../shared/realdata` beside the repo).
pub fn realdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/realdata")
        .join(rel)
}

/// A client holding `who`'s certificate from the dev PKI folder `certs`.
pub fn client_for(certs: &Path, who: &str) -> MtlsClient {
    MtlsClient::from_files(
        &certs.join("ca.pem"),
        &certs.join(format!("{who}.pem")),
        &certs.join(format!("{who}.key")),
        Alpn::Both,
    )
    .unwrap()
}

/// A free port on loopback (bound and released; for child brokers that need fixed addresses).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `lienthong demo` as a child process on the given ports, with its own certificates and data under `dir`
/// (for crash tests: it can be SIGKILLed).
pub fn demo_child(dir: &Path, agency: u16, admin: u16) -> std::process::Child {
    demo_child_with(dir, agency, admin, &[])
}

/// [`demo_child`] with more `demo` arguments (e.g. `--provider`).
pub fn demo_child_with(dir: &Path, agency: u16, admin: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_lienthong"))
        .arg("demo")
        .args(extra)
        .args(["--citizens", "300", "--certs-dir"])
        .arg(dir.join("certs"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--agency-addr",
            &format!("127.0.0.1:{agency}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A `lienthong demo` child process for crash tests, once its certificates exist and it answers
/// `/healthz`. [`ChildBroker::kill`] SIGKILLs it; [`ChildBroker::restart`] starts it again on the same
/// ports and data.
pub struct ChildBroker {
    child: std::process::Child,
    /// Its agency listener.
    pub agency: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    dir: PathBuf,
    ports: (u16, u16),
    extra: Vec<&'static str>,
}

impl ChildBroker {
    /// Start `lienthong demo` with its certificates and data under `dir` and wait until it serves.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[]).await
    }

    /// [`ChildBroker::start`] with more `demo` arguments (e.g. `--provider`).
    pub async fn start_with(dir: &Path, extra: &[&'static str]) -> Self {
        let ports = (free_port(), free_port());
        let mut broker = Self {
            child: demo_child_with(dir, ports.0, ports.1, extra),
            agency: format!("127.0.0.1:{}", ports.0).parse().unwrap(),
            admin: format!("127.0.0.1:{}", ports.1).parse().unwrap(),
            dir: dir.to_path_buf(),
            ports,
            extra: extra.to_vec(),
        };
        broker.wait_ready().await;
        broker
    }

    /// SIGKILL the child and reap it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Start the child again on what the last one left, and wait until it serves.
    pub async fn restart(&mut self) {
        self.child = demo_child_with(&self.dir, self.ports.0, self.ports.1, &self.extra);
        self.wait_ready().await;
    }

    /// A maker of clients holding an agency's demo certificate, e.g. `clients("dvc")`.
    pub fn clients(&self) -> impl Fn(&str) -> MtlsClient + Clone {
        let certs = self.dir.join("certs");
        move |who: &str| client_for(&certs, who)
    }

    async fn wait_ready(&mut self) {
        let certs = self.dir.join("certs");
        // The certificates appear once the child has made them.
        for _ in 0..300 {
            if certs.join("moh.key").is_file() && certs.join("dvc.key").is_file() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let probe = self.clients()("dvc");
        for _ in 0..300 {
            if probe
                .get(self.agency, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("broker did not come up");
    }
}

/// A PostgreSQL server program (`initdb`, `pg_ctl`, `postgres`): on the PATH, or where Debian keeps it.
/// A missing one fails the test naming it — tests never skip: `scripts/install-deps.sh` installs Debian's
/// `postgresql`.
pub fn postgres_tool(name: &str) -> PathBuf {
    lienthong::dev::throwaway_pg::tool(name).unwrap_or_else(|e| panic!("{e}"))
}
