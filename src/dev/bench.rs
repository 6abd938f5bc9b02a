//! Benchmarks (`lienthong bench`): the whole pipeline against a bare hyper + rustls baseline, in one run.
//!
//! Not a pipeline stage: a harness around the binary. It starts two CHILD processes of the current
//! executable, so that each one's memory is its own (`/proc/<pid>/status`):
//!
//! - the broker: `lienthong demo` on a fresh data dir (seeded once, then restarted so the peak RSS
//!   measures serving, not seeding);
//! - the baseline: `lienthong bench --serve-baseline ADDR` — hyper 1 + rustls with the very same
//!   `tls::server_config` (client certificates verified against the same CA and CRL, same
//!   ALPN) and the same hyper connection settings, answering every request with a fixed JSON body
//!   of the size of the broker's canonical answer.
//!
//! Both are driven by the same load generator: `client::MtlsClient` keep-alive connections,
//! one task per connection, a fixed duration, every latency kept (exact percentiles) and every status
//! counted. Per scenario it reports requests/s, p50/p99/p99.9, the ratio broker/baseline, the broker's
//! peak RSS, and the audit entries written (read from `GET /admin/v1/audit/head` before and after),
//! which must equal the requests answered. Nothing here asserts timings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{Alpn, ClientError, Connection, MtlsClient};

mod postgres;
use crate::dev::demo::{DemoOptions, DEMO_AGENCIES};

/// The demo seed: the broker's `demo` seeds `population::generate(n, 2021)`.
const DEMO_SEED: u64 = 2021;

/// `lienthong bench …`
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Synthetic citizens in the broker's store.
    #[arg(long, default_value_t = 100_000)]
    pub citizens: usize,
    /// Measured seconds per scenario, concurrency level and target.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Unmeasured warm-up seconds before each measured run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Concurrency levels (connections, one task each), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    pub concurrency: Vec<usize>,
    /// Only these scenarios (comma-separated names; default all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Offer only `h2` in ALPN (default: only `http/1.1`, what agency clients mostly speak).
    #[arg(long)]
    pub http2: bool,
    /// A few seconds in all: 200 citizens, concurrency 1 and 4, 0.5 s per run (for CI).
    #[arg(long)]
    pub smoke: bool,
    /// Also measure upstream provider mode: the canonical read through a front broker in front of a
    /// provider (`demo --provider`, another lienthong on the same population), the same read asked of the
    /// provider directly, and the baseline; the hop's added p50/p99 in the notes.
    #[arg(long)]
    pub upstream: bool,
    /// Also measure the PostgreSQL backend on a throw-away PostgreSQL: one broker on it vs the embedded
    /// broker vs the baseline (canonical read, vaccination write), and three brokers vs one, with audit
    /// commits per second and entries per commit.
    #[arg(long)]
    pub postgres: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Working folder for certificates, data and child logs (default: a fresh temp folder, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// `RUST_LOG` for the broker child (the broker as shipped logs every answer at `info`).
    #[arg(long, default_value = "info")]
    pub broker_log: String,
    /// Run the serving broker behind this command, split on spaces (for profiling:
    /// `--broker-wrapper "valgrind --tool=callgrind --callgrind-out-file=cg.out"`).
    #[arg(long)]
    pub broker_wrapper: Option<String>,
    /// Seconds to wait for the broker to seed and come up.
    #[arg(long, default_value_t = 3600)]
    pub ready_timeout_secs: u64,
    /// Internal: run the baseline server on this address (used by the harness itself).
    #[arg(long, hide = true)]
    pub serve_baseline: Option<SocketAddr>,
    /// Internal: the baseline's PKI folder.
    #[arg(long, hide = true)]
    pub certs_dir: Option<PathBuf>,
    /// Internal: the baseline's body size in bytes.
    #[arg(long, hide = true, default_value_t = 1024)]
    pub body_bytes: usize,
}

/// The command line entry: run the harness (or, internally, the baseline server); returns the exit code.
pub async fn run_cli(args: BenchArgs) -> i32 {
    if let Some(addr) = args.serve_baseline {
        let Some(certs) = args.certs_dir.clone() else {
            eprintln!("lienthong bench: --serve-baseline needs --certs-dir");
            return 2;
        };
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lienthong bench: cannot listen on {addr}: {e}");
                return 1;
            }
        };
        return match serve_baseline(
            &certs,
            listener,
            args.body_bytes,
            crate::supervisor::shutdown_signal(),
        )
        .await
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lienthong bench: baseline: {e}");
                1
            }
        };
    }
    let opts = BenchOptions::from_args(&args);
    match run(&opts).await {
        Ok(report) => {
            println!("{}", report.to_markdown());
            if let Some(out) = &args.out {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(out, text) {
                    eprintln!("lienthong bench: {}: {e}", out.display());
                    return 1;
                }
            }
            if report.audit_mismatches() > 0 {
                eprintln!("lienthong bench: audit entries written differ from the requests answered");
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("lienthong bench: {e}");
            1
        }
    }
}

/// What to run, after `--smoke` has been applied.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Synthetic citizens.
    pub citizens: usize,
    /// Measured time per run.
    pub duration: Duration,
    /// Warm-up time per run.
    pub warmup: Duration,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Scenario filter (empty: all).
    pub scenarios: Vec<String>,
    /// ALPN offered by the load generator.
    pub alpn: Alpn,
    /// Output folder; `None` for a temp folder removed afterwards.
    pub work_dir: Option<PathBuf>,
    /// `RUST_LOG` for the broker.
    pub broker_log: String,
    /// Command the serving broker runs behind (a profiler), if any.
    pub broker_wrapper: Vec<String>,
    /// Readiness timeout.
    pub ready_timeout: Duration,
    /// Also run the canonical read at a fixed rate of half the broker's measured throughput.
    pub half_load: bool,
    /// Also measure upstream provider mode (front broker → provider vs provider vs baseline).
    pub upstream: bool,
    /// Also measure the PostgreSQL backend (one and three brokers on a throw-away PostgreSQL).
    pub postgres: bool,
}

impl BenchOptions {
    /// From the command line.
    pub fn from_args(a: &BenchArgs) -> Self {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
        let mut opts = Self {
            citizens: a.citizens,
            duration: secs(a.duration_secs),
            warmup: secs(a.warmup_secs),
            concurrency: a.concurrency.iter().copied().filter(|&c| c > 0).collect(),
            scenarios: a.scenarios.clone(),
            alpn: if a.http2 { Alpn::Http2 } else { Alpn::Http1 },
            work_dir: a.work_dir.clone(),
            broker_log: a.broker_log.clone(),
            broker_wrapper: a
                .broker_wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            ready_timeout: Duration::from_secs(a.ready_timeout_secs),
            half_load: true,
            upstream: a.upstream,
            postgres: a.postgres,
        };
        if a.smoke {
            opts.citizens = 200;
            opts.duration = Duration::from_millis(500);
            opts.warmup = Duration::from_millis(100);
            opts.concurrency = vec![1, 4];
            opts.half_load = false;
        }
        if opts.concurrency.is_empty() {
            opts.concurrency = vec![1];
        }
        opts
    }
}

/// One scenario: who calls what, and whether every request opens a new connection.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name in the report and for `--scenarios`.
    pub name: &'static str,
    /// The demo agency whose certificate is presented.
    pub agency: &'static str,
    /// The request made.
    pub kind: Kind,
    /// A new TCP connection and full mTLS handshake (no resumption) per request.
    pub new_connection: bool,
}

/// The requests the scenarios make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /v1/citizens/{id}?purpose=public-service-prefill`.
    CanonicalRead,
    /// `POST /connectors/pccovid/v1/qr-status` with a CCCD QR payload.
    PcCovidQr,
    /// `POST /connectors/dvc/v1/TraCuuThongTinCongDan`, SOAP 1.1.
    DvcSoap,
    /// `POST /v1/citizens/{id}/vaccinations?purpose=vaccination-sync`, a unique source id each time.
    VaccinationWrite,
    /// `POST /connectors/moh/v1/Immunization`, a FHIR R4 Immunization with a unique identifier.
    FhirWrite,
    /// What a front broker asks its provider for a `CanonicalRead`: `GET /v1/citizens/{id}` under
    /// `population-proxy` with the fields `public-service-prefill` releases (agency `front`).
    ProviderRead,
}

/// The scenario table. A scenario whose route answers 404 on the broker is skipped with a note.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "canonical-read",
        agency: "dvc",
        kind: Kind::CanonicalRead,
        new_connection: false,
    },
    Scenario {
        name: "pccovid-qr",
        agency: "pccovid",
        kind: Kind::PcCovidQr,
        new_connection: false,
    },
    Scenario {
        name: "dvc-soap",
        agency: "dvc",
        kind: Kind::DvcSoap,
        new_connection: false,
    },
    Scenario {
        name: "vaccination-write",
        agency: "moh",
        kind: Kind::VaccinationWrite,
        new_connection: false,
    },
    Scenario {
        name: "fhir-write",
        agency: "moh",
        kind: Kind::FhirWrite,
        new_connection: false,
    },
    Scenario {
        name: "handshake-read",
        agency: "dvc",
        kind: Kind::CanonicalRead,
        new_connection: true,
    },
];

/// A synthetic citizen the load generator may name.
#[derive(Debug, Clone)]
pub struct Person {
    /// The 12-digit ID.
    pub id: String,
    /// Full name.
    pub name: String,
    /// Birth date `dd/mm/yyyy`.
    pub birth_dmy: String,
    /// The CCCD QR payload, when the person has a card.
    pub qr: Option<String>,
}

/// A spread of citizens over the whole population (every k-th of `population::generate(n, 2021)`).
pub struct Sample {
    people: Vec<Person>,
    with_qr: Vec<usize>,
}

impl Sample {
    /// Up to `max` people spread evenly over the first `citizens` of the demo population.
    pub fn build(citizens: usize, max: usize) -> Self {
        let step = citizens.div_ceil(max.max(1)).max(1);
        let mut people = Vec::new();
        for record in crate::dev::population::generate(citizens, DEMO_SEED).step_by(step) {
            let text = |k: &str| {
                record
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let birth = text("birth_date");
            let birth_dmy = chrono::NaiveDate::parse_from_str(&birth, "%Y-%m-%d")
                .map(|d| d.format("%d/%m/%Y").to_string())
                .unwrap_or_default();
            people.push(Person {
                id: text("citizen_id"),
                name: text("full_name"),
                birth_dmy,
                qr: crate::dev::population::qr_payload(&record),
            });
        }
        let with_qr = (0..people.len()).filter(|&i| people[i].qr.is_some()).collect();
        Self { people, with_qr }
    }

    /// How many people.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    fn pick(&self, n: u64) -> Option<&Person> {
        let len = self.people.len() as u64;
        (len > 0).then(|| &self.people[(spread(n) % len) as usize])
    }

    fn pick_with_qr(&self, n: u64) -> Option<&Person> {
        let len = self.with_qr.len() as u64;
        (len > 0).then(|| &self.people[self.with_qr[(spread(n) % len) as usize]])
    }
}

/// A cheap bijective scramble so that consecutive requests name unrelated citizens.
fn spread(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// How long the load generator waits for one answer before counting an error and reconnecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Unique across the whole run: source ids of writes.
static WRITE_SEQ: AtomicU64 = AtomicU64::new(0);

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Content type of `body`.
    pub content_type: Option<&'static str>,
    /// Body.
    pub body: Bytes,
}

/// The top-level fields `public-service-prefill` releases: what a front broker asks its provider for.
const PREFILL_FIELDS: &str =
    "citizen_id,old_id_number,full_name,birth_date,gender,permanent_address,current_address,id_card_issue_date";

const DVC_TEMPLATE: &str = include_str!("../../connectors/examples/dvc-tra-cuu.xml");
const FHIR_TEMPLATE: &str = include_str!("../../connectors/examples/moh-immunization.json");

/// The `n`-th request of a scenario.
pub fn prepare(kind: Kind, sample: &Sample, n: u64, run_tag: &str) -> Option<PreparedRequest> {
    let get = |path: String| PreparedRequest {
        method: Method::GET,
        path,
        content_type: None,
        body: Bytes::new(),
    };
    let post = |path: &str, ct: &'static str, body: String| PreparedRequest {
        method: Method::POST,
        path: path.to_string(),
        content_type: Some(ct),
        body: Bytes::from(body),
    };
    Some(match kind {
        Kind::CanonicalRead => {
            let p = sample.pick(n)?;
            get(format!("/v1/citizens/{}?purpose=public-service-prefill", p.id))
        }
        Kind::ProviderRead => {
            let p = sample.pick(n)?;
            get(format!(
                "/v1/citizens/{}?purpose=population-proxy&fields={PREFILL_FIELDS}",
                p.id
            ))
        }
        Kind::PcCovidQr => {
            let p = sample.pick_with_qr(n)?;
            let body = json!({ "maYeuCau": format!("BENCH-{run_tag}-{n}"), "maQR": p.qr });
            post(
                "/connectors/pccovid/v1/qr-status",
                "application/json",
                body.to_string(),
            )
        }
        Kind::DvcSoap => {
            let p = sample.pick(n)?;
            let body = DVC_TEMPLATE
                .replace("001090000001", &p.id)
                .replace("Nguyễn Văn An", &p.name)
                .replace("20/05/1990", &p.birth_dmy)
                .replace("DVC-20261123-0000123", &format!("BENCH-{run_tag}-{n}"));
            post("/connectors/dvc/v1/TraCuuThongTinCongDan", "text/xml", body)
        }
        Kind::VaccinationWrite => {
            let p = sample.pick(n)?;
            let seq = WRITE_SEQ.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
                "date": "2021-08-01", "lot": "FK1234", "site": "Trạm Y tế (benchmark)",
                "source_record_id": format!("bench-{run_tag}-{seq}"),
            });
            post(
                &format!("/v1/citizens/{}/vaccinations?purpose=vaccination-sync", p.id),
                "application/json",
                body.to_string(),
            )
        }
        Kind::FhirWrite => {
            let p = sample.pick(n)?;
            let seq = WRITE_SEQ.fetch_add(1, Ordering::Relaxed);
            let mut doc: Value = serde_json::from_str(FHIR_TEMPLATE).ok()?;
            doc["id"] = json!(format!("bench-imm-{seq}"));
            doc["identifier"][0]["value"] = json!(format!("bench-fhir-{run_tag}-{seq}"));
            doc["patient"]["identifier"]["value"] = json!(p.id);
            doc["patient"]["display"] = json!(p.name);
            post(
                "/connectors/moh/v1/Immunization",
                "application/fhir+json",
                doc.to_string(),
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------------
// The baseline server
// ---------------------------------------------------------------------------------------------------

/// A fixed JSON body of exactly `size` bytes (at least the bytes of the smallest such JSON).
pub fn baseline_body(size: usize) -> Bytes {
    let head = r#"{"purpose":"public-service-prefill","citizen":{"pad":""#;
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size);
    s.push_str(head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    Bytes::from(s)
}

/// The baseline: hyper 1 + rustls with the broker's own TLS config (same CA, CRL, versions, ALPN) and
/// the broker's hyper settings, answering every request (body read in full) with `body_bytes` of JSON.
/// Runs until `shutdown` resolves.
pub async fn serve_baseline(
    certs_dir: &Path,
    listener: TcpListener,
    body_bytes: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let config = crate::dev::demo::demo_config(&DemoOptions {
        certs_dir: certs_dir.to_path_buf(),
        ..DemoOptions::default()
    });
    let tls = crate::tls::server_config(&config.tls).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let body = baseline_body(body_bytes);
    let builder = Arc::new(crate::server::http_builder(&config.limits));
    let accept = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut resp = Response::new(Full::new(body));
                        let h = resp.headers_mut();
                        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        h.insert(
                            HeaderName::from_static("x-request-id"),
                            HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------

/// A child process of the harness; killed when dropped (also on error paths).
struct Child {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    /// Run the current executable with `args`, behind `wrapper` (e.g. `valgrind --tool=callgrind`) if any.
    fn spawn(
        name: &'static str,
        wrapper: &[String],
        args: &[String],
        log: PathBuf,
        rust_log: &str,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = tokio::process::Command::new(program);
                c.args(rest).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        let child = command
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the {name}: {e}"))?;
        Ok(Self { name, child, log })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak and current resident set in KiB (`VmHWM`, `VmRSS`).
    fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// User and system CPU seconds the process has used so far (`/proc/PID/stat`, in the kernel's fixed
    /// 100 ticks per second).
    fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // The command name may hold spaces; the fields after it start with the state (field 3).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let tick = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        Some((tick(14)? + tick(15)?) as f64 / 100.0)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the {} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            )),
            _ => None,
        }
    }

    /// SIGTERM (graceful: the broker flushes and writes its checkpoint), then SIGKILL after a grace time.
    async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// A port that was free a moment ago (bind port 0, read it back, release it).
fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("picking a free port: {e}"))
}

async fn wait_ready(
    child: &mut Child,
    client: &MtlsClient,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = child.exited() {
            return Err(e);
        }
        if let Ok(r) = client.get(addr, "/healthz").await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {} did not come up on {addr} in {timeout:?}",
                child.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------------

/// How the load generator connects: keep-alive through [`MtlsClient`], or a full handshake per request.
#[derive(Clone)]
struct Clients {
    keep_alive: MtlsClient,
    /// Resumption disabled, so that every connection is a full mTLS handshake.
    fresh: tokio_rustls::TlsConnector,
}

impl Clients {
    fn load(certs: &Path, agency: &str, alpn: Alpn) -> Result<Self, String> {
        let read = |name: &str| std::fs::read(certs.join(name)).map_err(|e| format!("{name}: {e}"));
        let ca = read("ca.pem")?;
        let cert = read(&format!("{agency}.pem"))?;
        let key = read(&format!("{agency}.key"))?;
        let keep_alive = MtlsClient::from_pem(&ca, Some((&cert, &key)), alpn).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| e.to_string())?;
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = match alpn {
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Ok(Self {
            keep_alive,
            fresh: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(&self, addr: SocketAddr, fresh: bool) -> Result<Connection, ClientError> {
        if !fresh {
            return self.keep_alive.connect(addr).await;
        }
        let tcp = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").map_err(|e| ClientError::Credentials(e.to_string()))?;
        let tls = self
            .fresh
            .connect(name, tcp)
            .await
            .map_err(ClientError::Handshake)?;
        Connection::over_tls(tls).await
    }
}

/// What one load run measured.
#[derive(Debug, Default, Clone)]
struct LoadResult {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.latencies_us.extend(other.latencies_us);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One load run: `concurrency` tasks, each with its own connection, until `duration` is over; in-flight
/// requests are let finish (they are answered, hence audited, and so counted). With `rate`, requests are
/// paced to that total rate and latency counts from the scheduled send time (no coordinated omission).
/// What one load run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    addr: SocketAddr,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
}

async fn load(clients: &Clients, sample: &Arc<Sample>, plan: Plan, run_tag: &str) -> LoadResult {
    let Plan {
        addr,
        scenario,
        concurrency,
        duration,
        rate,
    } = plan;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let clients = clients.clone();
        let sample = sample.clone();
        let tag = format!("{run_tag}-{task}");
        let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(0.001)));
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            let mut conn: Option<Connection> = None;
            let mut n: u64 = (task as u64) << 40;
            let mut next = start
                + interval
                    .map(|i| i.mul_f64(task as f64 / concurrency as f64))
                    .unwrap_or_default();
            loop {
                if interval.is_some() {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                } else if Instant::now() >= deadline {
                    break;
                }
                let Some(req) = prepare(scenario.kind, &sample, n, &tag) else {
                    out.first_error = Some("no citizen in the sample fits this scenario".into());
                    break;
                };
                n += 1;
                let t0 = if interval.is_some() { next } else { Instant::now() };
                if let Some(i) = interval {
                    next += i;
                }
                let exchange = async {
                    if scenario.new_connection || conn.is_none() {
                        conn = Some(clients.connect(addr, scenario.new_connection).await?);
                    }
                    match conn.as_mut() {
                        Some(c) => c.send(req.method, &req.path, req.content_type, req.body).await,
                        None => Err(ClientError::Credentials("no connection".into())),
                    }
                };
                // A stuck server must not hang the harness: the request counts as an error instead.
                let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                };
                match result {
                    Ok(resp) => {
                        let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        out.latencies_us.push(us);
                        *out.statuses.entry(resp.status).or_default() += 1;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                        conn = None;
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if scenario.new_connection {
                    conn = None;
                }
            }
            out
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("load task: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

// ---------------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------------

/// One measured run of one scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Scenario name (`canonical-read@half-load` for the paced run).
    pub scenario: String,
    /// `baseline` or `broker`.
    pub target: String,
    /// Connections (one task each).
    pub concurrency: usize,
    /// Paced total rate (req/s), when paced.
    pub rate: Option<f64>,
    /// Requests answered.
    pub answered: u64,
    /// Answers with a 2xx status.
    pub ok_2xx: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection or protocol errors).
    pub errors: u64,
    /// The first such error.
    pub first_error: Option<String>,
    /// Answered requests per second.
    pub rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Broker rps / baseline rps, on broker rows.
    pub ratio: Option<f64>,
    /// CPU time (user + system) the target process used during the run, per answer, microseconds: what
    /// a request costs the server, whatever else the machine is doing (the load generator's own cost is
    /// not in it).
    pub cpu_us_per_answer: Option<f64>,
    /// Peak resident set of the target process so far, KiB.
    pub vm_hwm_kib: Option<u64>,
    /// Resident set after the run, KiB.
    pub vm_rss_kib: Option<u64>,
    /// Audit entries written during the run (broker only).
    pub audit_entries: Option<u64>,
    /// Mean milliseconds per request in each pipeline stage during the run, from the broker's own
    /// `/metrics` (broker only; `tls` is per handshake).
    pub stage_ms: BTreeMap<String, f64>,
}

impl RunResult {
    /// For broker rows: the audit entries written equal the requests answered, and every answer is 2xx
    /// (the scenarios only make valid requests).
    pub fn audit_ok(&self) -> Option<bool> {
        self.audit_entries
            .map(|a| a == self.answered && self.ok_2xx == self.answered)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Citizens in the broker's store.
    pub citizens: usize,
    /// Measured seconds per run.
    pub duration_secs: f64,
    /// ALPN offered.
    pub http: String,
    /// Size of the broker's canonical answer (and so of the baseline's body), bytes.
    pub body_bytes: usize,
    /// Seconds the broker took to seed the population and come up.
    pub seed_secs: f64,
    /// Broker resident set once up, before any load, KiB.
    pub broker_idle_rss_kib: Option<u64>,
    /// Baseline resident set once up, KiB.
    pub baseline_idle_rss_kib: Option<u64>,
    /// Broker peak resident set at the end, KiB.
    pub broker_peak_rss_kib: Option<u64>,
    /// Baseline peak resident set at the end, KiB.
    pub baseline_peak_rss_kib: Option<u64>,
    /// `uptime` load averages when the run started.
    pub load_average: String,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Scenarios skipped, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// Broker runs whose audit count does not match.
    pub fn audit_mismatches(&self) -> usize {
        self.runs.iter().filter(|r| r.audit_ok() == Some(false)).count()
    }

    /// The report as Markdown tables (pasted as is into `BENCHMARKS.md`).
    pub fn to_markdown(&self) -> String {
        let kib = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let mut s = String::new();
        s.push_str(&format!(
            "citizens {} · {} s per run · {} · canonical answer {} B · seeding {:.1} s · load avg at start {}\n\n",
            self.citizens, self.duration_secs, self.http, self.body_bytes, self.seed_secs, self.load_average
        ));
        s.push_str(&format!(
            "RSS MiB: broker idle {} peak {} · baseline idle {} peak {}\n\n",
            kib(self.broker_idle_rss_kib),
            kib(self.broker_peak_rss_kib),
            kib(self.baseline_idle_rss_kib),
            kib(self.baseline_peak_rss_kib)
        ));
        s.push_str("| scenario | conc | target | req/s | p50 ms | p99 ms | p99.9 ms | broker/baseline | CPU µs/answer | peak RSS MiB | answered | 2xx | audit entries | errors |\n");
        s.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.runs {
            let audit = match (r.audit_entries, r.audit_ok()) {
                (Some(a), Some(true)) => format!("{a} ✓"),
                (Some(a), _) => format!("{a} ✗"),
                (None, _) => "-".into(),
            };
            s.push_str(&format!(
                "| {} | {}{} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.concurrency,
                r.rate.map_or(String::new(), |x| format!(" @{x:.0}/s")),
                r.target,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                r.cpu_us_per_answer.map_or("-".into(), |x| format!("{x:.0}")),
                kib(r.vm_hwm_kib),
                r.answered,
                r.ok_2xx,
                audit,
                r.errors,
            ));
        }
        let stages: std::collections::BTreeSet<&String> =
            self.runs.iter().flat_map(|r| r.stage_ms.keys()).collect();
        if !stages.is_empty() {
            s.push_str(
                "\nWhere the broker's time went: mean ms per request in each stage (its own `/metrics`):\n\n",
            );
            s.push_str("| scenario | conc |");
            for stage in &stages {
                s.push_str(&format!(" {stage} |"));
            }
            s.push_str("\n|---|---:|");
            s.push_str(&"---:|".repeat(stages.len()));
            s.push('\n');
            for r in self.runs.iter().filter(|r| !r.stage_ms.is_empty()) {
                s.push_str(&format!("| {} | {} |", r.scenario, r.concurrency));
                for stage in &stages {
                    match r.stage_ms.get(*stage) {
                        Some(ms) => s.push_str(&format!(" {ms:.3} |")),
                        None => s.push_str(" - |"),
                    }
                }
                s.push('\n');
            }
        }
        for n in &self.notes {
            s.push_str(&format!("\n- {n}"));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------------

/// The work folder: removed at the end when it is a temp one.
struct WorkDir {
    path: PathBuf,
    temporary: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The broker's stage histograms (`lienthong_stage_duration_seconds`): per stage, `(sum s, count)`.
async fn stage_totals(admin: &MtlsClient, addr: SocketAddr) -> Result<BTreeMap<String, (f64, u64)>, String> {
    let r = admin
        .get(addr, "/metrics")
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    let mut totals: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for line in r.text().lines() {
        let Some(rest) = line.strip_prefix("lienthong_stage_duration_seconds_") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once("{stage=\"") else {
            continue;
        };
        let Some((stage, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let slot = totals.entry(stage.to_string()).or_default();
        match kind {
            "sum" => slot.0 = value.parse().unwrap_or(0.0),
            "count" => slot.1 = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(totals)
}

/// Mean milliseconds per observation of each stage between two [`stage_totals`] readings.
fn stage_means(
    before: &BTreeMap<String, (f64, u64)>,
    after: &BTreeMap<String, (f64, u64)>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(stage, (sum, count))| {
            let (sum0, count0) = before.get(stage).copied().unwrap_or_default();
            let n = count.saturating_sub(count0);
            (n > 0).then(|| (stage.clone(), (sum - sum0) / n as f64 * 1000.0))
        })
        .collect()
}

async fn audit_count(admin: &MtlsClient, addr: SocketAddr) -> Result<u64, String> {
    let r = admin
        .get(addr, "/admin/v1/audit/head")
        .await
        .map_err(|e| format!("audit head: {e}"))?;
    r.json()["count"]
        .as_u64()
        .ok_or_else(|| format!("audit head answered {}: {}", r.status, r.text()))
}

/// Run the benchmark: start both children, drive every scenario at every concurrency level, stop them.
pub async fn run(opts: &BenchOptions) -> Result<Report, String> {
    let work = match &opts.work_dir {
        Some(p) => WorkDir {
            path: p.clone(),
            temporary: false,
        },
        None => WorkDir {
            path: std::env::temp_dir().join(format!("lienthong-bench-{}", uuid::Uuid::new_v4())),
            temporary: true,
        },
    };
    let certs = work.path.join("certs");
    let data = work.path.join("data");
    std::fs::create_dir_all(&work.path).map_err(|e| format!("{}: {e}", work.path.display()))?;
    let mut names: Vec<(&str, &str)> = DEMO_AGENCIES.iter().map(|(c, n, _)| (*c, *n)).collect();
    names.push(("admin", "lienthong operators"));
    names.push((crate::dev::upstream_demo::FRONT_AGENCY, "lienthong front broker"));
    crate::dev::certs::init_dir(&certs, &names).map_err(|e| e.to_string())?;
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();

    let sample_size = opts.citizens.clamp(1, 50_000);
    let citizens = opts.citizens;
    let sampling = tokio::task::spawn_blocking(move || Sample::build(citizens, sample_size));

    let agency = free_addr()?;
    let admin_addr = free_addr()?;
    let demo_args = vec![
        "demo".to_string(),
        "--citizens".into(),
        opts.citizens.to_string(),
        "--certs-dir".into(),
        certs.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--agency-addr".into(),
        agency.to_string(),
        "--admin-addr".into(),
        admin_addr.to_string(),
    ];
    let dvc = Clients::load(&certs, "dvc", opts.alpn)?;
    let admin = Clients::load(&certs, "admin", Alpn::Both)?.keep_alive;

    // Seed once, stop, then serve on the seeded store: the serving peak RSS then excludes seeding.
    eprintln!("bench: seeding {} citizens…", opts.citizens);
    let t = Instant::now();
    let mut seeder = Child::spawn(
        "broker (seeding)",
        &[],
        &demo_args,
        work.path.join("broker-seed.log"),
        "warn",
    )?;
    wait_ready(&mut seeder, &dvc.keep_alive, agency, opts.ready_timeout).await?;
    let seed_secs = t.elapsed().as_secs_f64();
    seeder.stop().await;

    let mut broker = Child::spawn(
        "broker",
        &opts.broker_wrapper,
        &demo_args,
        work.path.join("broker.log"),
        &opts.broker_log,
    )?;
    wait_ready(&mut broker, &dvc.keep_alive, agency, opts.ready_timeout).await?;
    let sample = Arc::new(sampling.await.map_err(|e| format!("sampling: {e}"))?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker_idle = broker.memory();

    // The baseline answers with the size of a real canonical answer.
    let mut sizes = Vec::new();
    if let Ok(mut conn) = dvc.connect(agency, false).await {
        for n in 0..50u64 {
            if let Some(req) = prepare(Kind::CanonicalRead, &sample, n, "size") {
                if let Ok(r) = conn.send(req.method, &req.path, None, req.body).await {
                    if r.status == 200 {
                        sizes.push(r.body.len());
                    }
                }
            }
        }
    }
    if sizes.is_empty() {
        return Err("the broker answered no canonical read with 200".into());
    }
    let body_bytes = sizes.iter().sum::<usize>() / sizes.len();
    let baseline_addr = free_addr()?;
    let baseline_args = vec![
        "bench".to_string(),
        "--serve-baseline".into(),
        baseline_addr.to_string(),
        "--certs-dir".into(),
        certs.display().to_string(),
        "--body-bytes".into(),
        body_bytes.to_string(),
    ];
    let mut baseline = Child::spawn(
        "baseline",
        &[],
        &baseline_args,
        work.path.join("baseline.log"),
        "warn",
    )?;
    wait_ready(
        &mut baseline,
        &dvc.keep_alive,
        baseline_addr,
        Duration::from_secs(60),
    )
    .await?;
    let baseline_idle = baseline.memory();

    let harness = Harness {
        opts,
        admin: &admin,
        admin_addr,
        sample: &sample,
    };
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    let mut run_no = 0u64;
    let max_conc = opts.concurrency.iter().copied().max().unwrap_or(1);
    let mut broker_canonical_max: Option<f64> = None;
    for scenario in SCENARIOS {
        if !opts.scenarios.is_empty() && !opts.scenarios.iter().any(|s| s == scenario.name) {
            continue;
        }
        let clients = Clients::load(&certs, scenario.agency, opts.alpn)?;
        // Skip a scenario whose route the broker does not have (yet).
        if let Some(req) = prepare(scenario.kind, &sample, 0, "probe") {
            let probe = clients
                .keep_alive
                .request(agency, req.method, &req.path, req.content_type, req.body)
                .await
                .map_err(|e| format!("{}: probe: {e}", scenario.name))?;
            if probe.status == 404 && probe.error_code().as_deref() == Some("not_found") {
                notes.push(format!(
                    "{}: skipped, the broker has no route for it (404)",
                    scenario.name
                ));
                continue;
            }
            if !(200..300).contains(&probe.status) {
                notes.push(format!(
                    "{}: probe answered {} {}",
                    scenario.name,
                    probe.status,
                    probe.text().chars().take(200).collect::<String>()
                ));
            }
        }
        for &conc in &opts.concurrency {
            let mut base_rps = None;
            for (target, addr) in [("baseline", baseline_addr), ("broker", agency)] {
                run_no += 1;
                eprintln!("bench: {} c={conc} {target}…", scenario.name);
                let child = if target == "broker" { &broker } else { &baseline };
                let res = measured(
                    &harness,
                    &clients,
                    child,
                    target,
                    Plan {
                        addr,
                        scenario,
                        concurrency: conc,
                        duration: opts.duration,
                        rate: None,
                    },
                    run_no,
                )
                .await?;
                if target == "baseline" {
                    base_rps = Some(res.rps);
                } else if scenario.name == "canonical-read" && conc == max_conc {
                    broker_canonical_max = Some(res.rps);
                }
                let mut res = res;
                if target == "broker" {
                    res.ratio = base_rps.filter(|b| *b > 0.0).map(|b| res.rps / b);
                }
                runs.push(res);
            }
        }
    }
    // p99 added latency at half load: the canonical read paced at half the broker's measured throughput.
    if let (true, Some(max)) = (opts.half_load, broker_canonical_max) {
        let rate = max / 2.0;
        let clients = Clients::load(&certs, "dvc", opts.alpn)?;
        let mut scenario = SCENARIOS[0];
        scenario.name = "canonical-read@half-load";
        for (target, addr) in [("baseline", baseline_addr), ("broker", agency)] {
            run_no += 1;
            eprintln!("bench: {} {target}…", scenario.name);
            let child = if target == "broker" { &broker } else { &baseline };
            let res = measured(
                &harness,
                &clients,
                child,
                target,
                Plan {
                    addr,
                    scenario,
                    concurrency: max_conc,
                    duration: opts.duration,
                    rate: Some(rate),
                },
                run_no,
            )
            .await?;
            runs.push(res);
        }
    }
    if opts.upstream {
        let upstream = UpstreamRun {
            certs: &certs,
            work: &work.path,
            baseline_addr,
            baseline: &baseline,
        };
        upstream.run(&harness, &mut runs, &mut notes, &mut run_no).await?;
    }
    if opts.postgres {
        let postgres = postgres::PostgresRun {
            certs: &certs,
            work: &work.path,
            baseline_addr,
            baseline: &baseline,
            embedded_addr: agency,
            embedded: &broker,
        };
        postgres.run(&harness, &mut runs, &mut notes, &mut run_no).await?;
    }
    let broker_peak = broker.memory();
    let baseline_peak = baseline.memory();
    broker.stop().await;
    baseline.stop().await;
    Ok(Report {
        citizens: opts.citizens,
        duration_secs: opts.duration.as_secs_f64(),
        http: match opts.alpn {
            Alpn::Http2 => "HTTP/2".into(),
            _ => "HTTP/1.1".into(),
        },
        body_bytes,
        seed_secs,
        broker_idle_rss_kib: broker_idle.map(|m| m.1),
        baseline_idle_rss_kib: baseline_idle.map(|m| m.1),
        broker_peak_rss_kib: broker_peak.map(|m| m.0),
        baseline_peak_rss_kib: baseline_peak.map(|m| m.0),
        load_average,
        runs,
        notes,
    })
}

/// The upstream scenario: a provider (`demo --provider`, seeding the same population) and a front broker
/// in upstream mode in front of it (`demo --front-of`), as child processes; the canonical read through
/// both, the provider's own read asked directly, and the baseline, at each concurrency.
struct UpstreamRun<'a> {
    certs: &'a Path,
    work: &'a Path,
    baseline_addr: SocketAddr,
    baseline: &'a Child,
}

impl UpstreamRun<'_> {
    async fn run(
        &self,
        harness: &Harness<'_>,
        runs: &mut Vec<RunResult>,
        notes: &mut Vec<String>,
        run_no: &mut u64,
    ) -> Result<(), String> {
        let opts = harness.opts;
        let demo = |role: &str, agency: SocketAddr, admin: SocketAddr, extra: &[String]| {
            let mut args = vec!["demo".to_string()];
            args.extend_from_slice(extra);
            args.extend([
                "--certs-dir".into(),
                self.certs.display().to_string(),
                "--data-dir".into(),
                self.work.join(role).display().to_string(),
                "--agency-addr".into(),
                agency.to_string(),
                "--admin-addr".into(),
                admin.to_string(),
            ]);
            args
        };
        let (provider_addr, front_addr) = (free_addr()?, free_addr()?);
        let dvc = Clients::load(self.certs, "dvc", opts.alpn)?;
        eprintln!("bench: upstream: the provider seeds {} citizens…", opts.citizens);
        let provider_args = demo(
            "provider",
            provider_addr,
            free_addr()?,
            &[
                "--provider".into(),
                "--citizens".into(),
                opts.citizens.to_string(),
            ],
        );
        let log = |name: &str| self.work.join(format!("{name}.log"));
        let mut provider = Child::spawn("provider", &[], &provider_args, log("provider"), &opts.broker_log)?;
        wait_ready(&mut provider, &dvc.keep_alive, provider_addr, opts.ready_timeout).await?;
        let front_args = demo(
            "front",
            front_addr,
            free_addr()?,
            &["--front-of".into(), provider_addr.to_string()],
        );
        let mut front = Child::spawn("front broker", &[], &front_args, log("front"), &opts.broker_log)?;
        wait_ready(&mut front, &dvc.keep_alive, front_addr, opts.ready_timeout).await?;
        let as_front = Clients::load(self.certs, crate::dev::upstream_demo::FRONT_AGENCY, opts.alpn)?;
        let read = |kind: Kind, agency: &'static str| Scenario {
            name: "upstream-read",
            agency,
            kind,
            new_connection: false,
        };
        for &conc in &opts.concurrency {
            let mut measured_here: Vec<RunResult> = Vec::new();
            for (target, addr, clients, scenario, child) in [
                (
                    "baseline",
                    self.baseline_addr,
                    &dvc,
                    read(Kind::CanonicalRead, "dvc"),
                    self.baseline,
                ),
                (
                    "provider",
                    provider_addr,
                    &as_front,
                    read(Kind::ProviderRead, "front"),
                    &provider,
                ),
                (
                    "front→provider",
                    front_addr,
                    &dvc,
                    read(Kind::CanonicalRead, "dvc"),
                    &front,
                ),
            ] {
                *run_no += 1;
                eprintln!("bench: upstream-read c={conc} {target}…");
                let plan = Plan {
                    addr,
                    scenario,
                    concurrency: conc,
                    duration: opts.duration,
                    rate: None,
                };
                measured_here.push(measured(harness, clients, child, target, plan, *run_no).await?);
            }
            if let [_, direct, through] = measured_here.as_slice() {
                notes.push(format!(
                    "upstream hop at concurrency {conc}: +{:.2} ms p50, +{:.2} ms p99; front→provider {:.0} req/s \
                     = {:.2} × the provider asked directly",
                    through.p50_ms - direct.p50_ms,
                    through.p99_ms - direct.p99_ms,
                    through.rps,
                    through.rps / direct.rps.max(1e-9)
                ));
            }
            runs.extend(measured_here);
        }
        front.stop().await;
        provider.stop().await;
        Ok(())
    }
}

/// What every measured run shares.
struct Harness<'a> {
    opts: &'a BenchOptions,
    admin: &'a MtlsClient,
    admin_addr: SocketAddr,
    sample: &'a Arc<Sample>,
}

/// Warm up, then one measured run, with the audit count read around it (broker only).
async fn measured(
    h: &Harness<'_>,
    clients: &Clients,
    child: &Child,
    target: &str,
    plan: Plan,
    run_no: u64,
) -> Result<RunResult, String> {
    let (opts, admin, admin_addr, sample) = (h.opts, h.admin, h.admin_addr, h.sample);
    let is_broker = target == "broker";
    if !opts.warmup.is_zero() {
        load(
            clients,
            sample,
            Plan {
                duration: opts.warmup,
                ..plan
            },
            &format!("w{run_no}"),
        )
        .await;
    }
    let before = if is_broker {
        Some((
            stage_totals(admin, admin_addr).await?,
            audit_count(admin, admin_addr).await?,
        ))
    } else {
        None
    };
    let cpu_before = child.cpu_secs();
    let res = load(
        clients,
        sample,
        Plan {
            duration: opts.duration,
            ..plan
        },
        &format!("r{run_no}"),
    )
    .await;
    let cpu_used = child
        .cpu_secs()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    // The `before` read is itself audited (admin requests are), after its count was taken.
    let (audit_entries, stage_ms) = match before {
        Some((stages, b)) => (
            Some(audit_count(admin, admin_addr).await?.saturating_sub(b + 1)),
            stage_means(&stages, &stage_totals(admin, admin_addr).await?),
        ),
        None => (None, BTreeMap::new()),
    };
    Ok(RunResult {
        audit_entries,
        stage_ms,
        ..RunResult::of_load(&plan, target, res, cpu_used, child.memory())
    })
}

impl RunResult {
    /// The figures of one load run of `plan` on `target`, with the CPU seconds the target used and its
    /// memory after (no audit count, no stages).
    fn of_load(
        plan: &Plan,
        target: &str,
        mut res: LoadResult,
        cpu_used: Option<f64>,
        memory: Option<(u64, u64)>,
    ) -> Self {
        res.latencies_us.sort_unstable();
        let answered = res.latencies_us.len() as u64;
        let ok_2xx = res
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let secs = res.elapsed.as_secs_f64().max(1e-9);
        Self {
            scenario: plan.scenario.name.to_string(),
            target: target.to_string(),
            concurrency: plan.concurrency,
            rate: plan.rate,
            answered,
            ok_2xx,
            statuses: res.statuses,
            errors: res.errors,
            first_error: res.first_error,
            rps: answered as f64 / secs,
            p50_ms: percentile(&res.latencies_us, 0.50),
            p99_ms: percentile(&res.latencies_us, 0.99),
            p999_ms: percentile(&res.latencies_us, 0.999),
            max_ms: res.latencies_us.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
            ratio: None,
            cpu_us_per_answer: cpu_used.map(|s| s * 1e6 / answered.max(1) as f64),
            vm_hwm_kib: memory.map(|m| m.0),
            vm_rss_kib: memory.map(|m| m.1),
            audit_entries: None,
            stage_ms: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn baseline_body_has_the_exact_size_and_is_json() {
        for size in [0, 10, 60, 61, 1000, 4096] {
            let b = baseline_body(size);
            let min = baseline_body(0).len();
            assert_eq!(b.len(), size.max(min));
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert!(v["citizen"].is_object());
        }
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let v: Vec<u32> = (1..=1000).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&[7000], 0.999), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn requests_name_sampled_citizens_and_writes_are_unique() {
        let sample = Sample::build(300, 50);
        assert!(sample.len() >= 50 && sample.len() <= 60, "{}", sample.len());
        let read = prepare(Kind::CanonicalRead, &sample, 3, "t").unwrap();
        assert!(read.path.starts_with("/v1/citizens/") && read.path.ends_with("public-service-prefill"));
        let soap = prepare(Kind::DvcSoap, &sample, 3, "t").unwrap();
        let text = String::from_utf8(soap.body.to_vec()).unwrap();
        assert!(!text.contains("001090000001") || read.path.contains("001090000001"));
        let qr = prepare(Kind::PcCovidQr, &sample, 3, "t").unwrap();
        let v: Value = serde_json::from_slice(&qr.body).unwrap();
        assert_eq!(v["maQR"].as_str().unwrap().split('|').count(), 7);
        let a = prepare(Kind::VaccinationWrite, &sample, 1, "t").unwrap();
        let b = prepare(Kind::VaccinationWrite, &sample, 1, "t").unwrap();
        assert_ne!(a.body, b.body, "every write has its own source id");
        let f = prepare(Kind::FhirWrite, &sample, 1, "t").unwrap();
        let v: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(v["resourceType"], "Immunization");
    }

    #[test]
    fn smoke_options_are_small() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: BenchArgs,
        }
        let t = T::try_parse_from(["x", "--smoke", "--concurrency", "1,16,64"]).unwrap();
        let o = BenchOptions::from_args(&t.a);
        assert_eq!((o.citizens, o.concurrency.clone()), (200, vec![1, 4]));
        let t = T::try_parse_from(["x", "--concurrency", "2,0,8"]).unwrap();
        assert_eq!(BenchOptions::from_args(&t.a).concurrency, vec![2, 8]);
    }
}
