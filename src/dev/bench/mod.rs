//! Benchmarks (`lienthong bench`): the whole pipeline against a bare hyper + rustls baseline, in one run.
//!
//! Not a pipeline stage: a harness around the binary. It starts two CHILD processes of the current
//! executable, so that each one's memory is its own (`/proc/<pid>/status`):
//!
//! - the broker: `lienthong demo` on a fresh data dir (seeded once, then restarted so the peak RSS
//!   measures serving, not seeding);
//! - the baseline: `lienthong bench --serve-baseline ADDR` — hyper 1 + rustls with the very same
//!   CA, CRL, versions and ALPN (`tls::server_config`), but stock rustls client verification (every chain
//!   and CRL signature on every handshake; the broker remembers verified chains), and the same hyper
//!   connection settings, answering every request with a fixed JSON body of the size of the broker's
//!   canonical answer.
//!
//! Both are driven by the same load generator: `client::MtlsClient` keep-alive connections,
//! one task per connection, a fixed duration, every latency kept (exact percentiles) and every status
//! counted. Per scenario it reports requests/s, p50/p99/p99.9, the ratio broker/baseline, the broker's
//! peak RSS, and the audit entries written (read from `GET /admin/v1/audit/head` before and after),
//! which must equal the requests answered. Nothing here asserts timings.
//!
//! The rooms: `args` (options, scenario table), `workloads` (what each scenario sends), `baseline` (the
//! bare server), `children` (child processes), `load` (the load generator), `measure` (one measured run
//! and what is read around it), `upstream` (provider mode), `cluster` (brokers on PostgreSQL), `report`
//! (tables, JSON); this file runs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::client::Alpn;
use crate::dev::demo::DEMO_AGENCIES;

mod args;
mod baseline;
mod children;
mod cluster;
mod load;
mod measure;
mod report;
mod upstream;
mod workloads;

pub use args::{BenchArgs, BenchOptions, Kind, Scenario, SCENARIOS};
pub use baseline::{baseline_body, serve_baseline};
pub use report::{Report, RunResult};
pub use workloads::{prepare, Person, PreparedRequest, Sample};

use children::{free_addr, wait_ready, Child};
use cluster::ClusterRun;
use load::{Clients, Plan};
use measure::{Harness, Target};
use upstream::UpstreamRun;

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
        &opts.broker_wrapper,
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
        sample: &sample,
        baseline: Target {
            name: "baseline",
            addr: baseline_addr,
            child: &baseline,
            admin: None,
        },
        broker: Target {
            name: "broker",
            addr: agency,
            child: &broker,
            admin: Some(admin_addr),
        },
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
            let plan = Plan {
                addr: agency,
                scenario,
                concurrency: conc,
                duration: opts.duration,
                rate: None,
            };
            let label = format!("{} c={conc}", scenario.name);
            let [base, mut broker_run] = harness
                .baseline_then_broker(&clients, plan, &label, &mut run_no)
                .await?;
            if scenario.name == "canonical-read" && conc == max_conc {
                broker_canonical_max = Some(broker_run.rps);
            }
            broker_run.ratio = Some(base.rps).filter(|b| *b > 0.0).map(|b| broker_run.rps / b);
            runs.extend([base, broker_run]);
        }
    }
    // p99 added latency at half load: the canonical read paced at half the broker's measured throughput.
    if let (true, Some(max)) = (opts.half_load, broker_canonical_max) {
        let rate = max / 2.0;
        let clients = Clients::load(&certs, "dvc", opts.alpn)?;
        let mut scenario = SCENARIOS[0];
        scenario.name = "canonical-read@half-load";
        let plan = Plan {
            addr: agency,
            scenario,
            concurrency: max_conc,
            duration: opts.duration,
            rate: Some(rate),
        };
        let pair = harness
            .baseline_then_broker(&clients, plan, scenario.name, &mut run_no)
            .await?;
        runs.extend(pair);
    }
    if opts.upstream {
        let upstream = UpstreamRun {
            certs: &certs,
            work: &work.path,
        };
        upstream.run(&harness, &mut runs, &mut notes, &mut run_no).await?;
    }
    if opts.postgres {
        let cluster = ClusterRun {
            certs: &certs,
            work: &work.path,
        };
        cluster.run(&harness, &mut runs, &mut notes, &mut run_no).await?;
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
