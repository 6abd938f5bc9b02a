//! Cluster mode (`--postgres`): brokers on one PostgreSQL (`storage.backend = "postgres"`), against the
//! embedded broker and the bare baseline in the same run.
//!
//! A throw-away PostgreSQL (`dev::throwaway_pg`) is seeded with the same synthetic population as the
//! demo (`lienthong db seed`), three brokers (`serve`) share it, and the agencies are registered once,
//! through node 0's admin API: every node follows the shared registry. Per concurrency level, the canonical
//! read and the vaccination write are measured on the baseline (reads only), the embedded broker, one node
//! alone, and all three nodes with the connections dealt round-robin. Audit commits and entries per commit
//! are read from every node's `/metrics` (`lienthong_audit_commits_total`,
//! `lienthong_audit_committed_entries_total`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::{Scenario, SCENARIOS};
use super::children::{free_addr, wait_ready, Child};
use super::load::{Clients, Plan};
use super::measure::{measured, Harness, Target};
use super::report::RunResult;
use crate::dev::throwaway_pg::ThrowawayPostgres;

/// How many brokers share the database.
const NODES: usize = 3;

/// The agencies the cluster scenarios use, registered on node 0.
const AGENCIES: [&str; 2] = ["dvc", "moh"];

/// The cluster scenarios: the canonical read and the vaccination write (run only when selected).
const MEASURED: [&str; 2] = ["canonical-read", "vaccination-write"];

pub(super) struct ClusterRun<'a> {
    pub(super) certs: &'a Path,
    pub(super) work: &'a Path,
}

/// One broker of the cluster.
struct Node {
    child: Child,
    agency: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl ClusterRun<'_> {
    pub(super) async fn run(
        &self,
        harness: &Harness<'_>,
        runs: &mut Vec<RunResult>,
        notes: &mut Vec<String>,
        run_no: &mut u64,
    ) -> Result<(), String> {
        let opts = harness.opts;
        let pg_dir = self.work.join("postgres");
        let port = free_addr()?.port();
        let pg = tokio::task::spawn_blocking(move || ThrowawayPostgres::start(&pg_dir, port))
            .await
            .map_err(|e| format!("postgres: {e}"))??;
        let url = pg.url();
        eprintln!(
            "bench: cluster: seeding {} citizens into PostgreSQL…",
            opts.citizens
        );
        self.lienthong(
            "db seed",
            &[
                "db",
                "seed",
                "--database",
                &url,
                "--citizens",
                &opts.citizens.to_string(),
            ],
        )
        .await?;

        let dvc = Clients::load(self.certs, "dvc", opts.alpn)?;
        let mut nodes = Vec::with_capacity(NODES);
        for i in 0..NODES {
            let (config, agency, admin) = self.node_config(i, &url)?;
            let args = [
                "serve".to_string(),
                "--config".into(),
                config.display().to_string(),
            ];
            let log = self.work.join(format!("node-{i}.log"));
            let child = Child::spawn("cluster node", &[], &args, log, &opts.broker_log)?;
            nodes.push(Node { child, agency, admin });
        }
        for node in &mut nodes {
            wait_ready(&mut node.child, &dvc.keep_alive, node.agency, opts.ready_timeout).await?;
        }
        let admin_addr = nodes[0].admin.to_string();
        for code in AGENCIES {
            let cert = self.certs.join(format!("{code}.pem")).display().to_string();
            let (ca, admin_cert, admin_key) = (
                self.certs.join("ca.pem").display().to_string(),
                self.certs.join("admin.pem").display().to_string(),
                self.certs.join("admin.key").display().to_string(),
            );
            self.lienthong(
                "agency add",
                &[
                    "agency",
                    "add",
                    code,
                    "--name",
                    code,
                    "--cert-file",
                    &cert,
                    "--admin-addr",
                    &admin_addr,
                    "--cacert",
                    &ca,
                    "--cert",
                    &admin_cert,
                    "--key",
                    &admin_key,
                ],
            )
            .await?;
        }
        // Every node serves the registered agencies within a second (LISTEN/NOTIFY); wait until it does.
        for node in &nodes {
            self.wait_until_served(harness, &dvc, node.agency).await?;
        }

        let admins: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.admin).collect();
        let commits = |at| Commits::read(harness.admin, at);
        for scenario in SCENARIOS
            .into_iter()
            .filter(|s| MEASURED.contains(&s.name) && !s.new_connection)
            .filter(|s| opts.scenarios.is_empty() || opts.scenarios.iter().any(|n| n == s.name))
        {
            let clients = Clients::load(self.certs, scenario.agency, opts.alpn)?;
            let node = |i: usize, name: &'static str| Target {
                name,
                addr: nodes[i].agency,
                child: &nodes[i].child,
                admin: Some(nodes[i].admin),
            };
            let one = [node(0, "postgres×1")];
            let all: Vec<Target> = (0..NODES).map(|i| node(i, "postgres×3")).collect();
            for &concurrency in &opts.concurrency {
                let plan = Plan {
                    addr: nodes[0].agency,
                    scenario: Scenario {
                        name: cluster_name(scenario.name),
                        ..scenario
                    },
                    concurrency,
                    duration: opts.duration,
                    rate: None,
                };
                let mut here: Vec<(RunResult, Option<Commits>)> = Vec::new();
                let mut targets: Vec<&[Target]> = Vec::new();
                let (baseline, embedded) = ([harness.baseline], [harness.broker]);
                if scenario.name == "canonical-read" {
                    targets.push(&baseline);
                }
                targets.extend([&embedded[..], &one[..], &all[..]]);
                for on in targets {
                    *run_no += 1;
                    eprintln!("bench: {} c={concurrency} {}…", plan.scenario.name, on[0].name);
                    let before = commits(&admins).await?;
                    let result = measured(harness, &clients, on, plan, *run_no).await?;
                    let committed = match on[0].name.starts_with("postgres") {
                        true => Some(commits(&admins).await?.since(before)),
                        false => None,
                    };
                    here.push((result, committed));
                }
                let base_rps = here
                    .iter()
                    .find(|(r, _)| r.target == "baseline")
                    .map(|(r, _)| r.rps);
                for (result, commits) in &mut here {
                    if result.target != "baseline" {
                        result.ratio = base_rps.filter(|b| *b > 0.0).map(|b| result.rps / b);
                    }
                    if let Some(c) = commits {
                        notes.push(format!(
                            "{} c={concurrency} {}: {:.0} audit commits/s, {:.1} entries per commit \
                             ({} entries in {} transactions)",
                            plan.scenario.name,
                            result.target,
                            c.transactions as f64 / (opts.warmup + opts.duration).as_secs_f64().max(1e-9),
                            c.entries as f64 / c.transactions.max(1) as f64,
                            c.entries,
                            c.transactions,
                        ));
                    }
                }
                let rps = |target: &str| here.iter().find(|(r, _)| r.target == target).map(|(r, _)| r.rps);
                if let (Some(one), Some(three), Some(embedded)) =
                    (rps("postgres×1"), rps("postgres×3"), rps("broker"))
                {
                    notes.push(format!(
                        "{} c={concurrency}: one node on PostgreSQL = {:.2} × the embedded broker; three nodes = \
                         {:.2} × one",
                        plan.scenario.name,
                        one / embedded.max(1e-9),
                        three / one.max(1e-9)
                    ));
                }
                runs.extend(here.into_iter().map(|(r, _)| r));
            }
        }
        for node in nodes {
            node.child.stop().await;
        }
        drop(pg);
        Ok(())
    }

    /// A node's config: its own listeners and data dir, the shared database.
    fn node_config(
        &self,
        i: usize,
        url: &str,
    ) -> Result<(PathBuf, std::net::SocketAddr, std::net::SocketAddr), String> {
        let (agency, admin) = (free_addr()?, free_addr()?);
        let c = self.certs.display();
        let data = self.work.join(format!("node-{i}"));
        let text = format!(
            "[agency_listener]\naddr = \"{agency}\"\n[admin_listener]\naddr = \"{admin}\"\n\
             [tls]\nca_bundle = \"{c}/ca.pem\"\nserver_cert = \"{c}/server.pem\"\nserver_key = \"{c}/server.key\"\n\
             crls = [\"{c}/crl.pem\"]\nadmin_certs = [\"{c}/admin.pem\"]\n\
             [storage]\ndata_dir = \"{}\"\nbackend = \"postgres\"\n\
             [storage.postgres]\nurl = \"{url}\"\nnode_name = \"node-{i}\"\n",
            data.display()
        );
        let config = self.work.join(format!("node-{i}.toml"));
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        Ok((config, agency, admin))
    }

    /// Run a one-shot `lienthong` command (not a server); its output goes to a log named after it.
    async fn lienthong(&self, what: &str, args: &[&str]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let out = tokio::process::Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Until `addr` answers a canonical read with 200 (the node has the shared registry).
    async fn wait_until_served(
        &self,
        harness: &Harness<'_>,
        dvc: &Clients,
        addr: std::net::SocketAddr,
    ) -> Result<(), String> {
        let read = SCENARIOS[0];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(req) = super::workloads::prepare(read.kind, harness.sample, 0, "probe") {
                let r = dvc
                    .keep_alive
                    .request(addr, req.method, &req.path, req.content_type, req.body)
                    .await;
                if r.as_ref().is_ok_and(|r| r.status == 200) {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!(
                        "cluster node {addr} does not serve agency dvc: {}",
                        r.map(|r| r.text()).unwrap_or_else(|e| e.to_string())
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The report's name of a scenario run on the cluster's comparison.
fn cluster_name(name: &str) -> &'static str {
    match name {
        "vaccination-write" => "cluster-write",
        _ => "cluster-read",
    }
}

/// Audit entries committed to PostgreSQL and the transactions that carried them, between two readings.
#[derive(Debug, Clone, Copy, Default)]
struct Commits {
    entries: u64,
    transactions: u64,
}

impl Commits {
    fn since(self, before: Commits) -> Commits {
        Commits {
            entries: self.entries.saturating_sub(before.entries),
            transactions: self.transactions.saturating_sub(before.transactions),
        }
    }

    /// The brokers' own counts so far, summed over the nodes whose admin listeners are `admins`.
    async fn read(
        admin: &crate::client::MtlsClient,
        admins: &[std::net::SocketAddr],
    ) -> Result<Self, String> {
        let mut total = Self::default();
        for at in admins {
            let r = admin
                .get(*at, "/metrics")
                .await
                .map_err(|e| format!("metrics: {e}"))?;
            let text = r.text();
            let counter = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(name)?
                            .strip_prefix(' ')?
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
                    .ok_or_else(|| format!("{at}/metrics has no {name}"))
            };
            total.transactions += counter("lienthong_audit_commits_total")?;
            total.entries += counter("lienthong_audit_committed_entries_total")?;
        }
        Ok(total)
    }
}
