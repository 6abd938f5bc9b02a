//! The PostgreSQL scenario of `lienthong bench --postgres`: a throw-away PostgreSQL (Debian's binaries,
//! `initdb` + `pg_ctl` in the work folder, as `nobody` when run as root: PostgreSQL refuses root), seeded
//! with the same population as the embedded broker (`lienthong db seed`), and three brokers
//! (`lienthong serve`, `storage.backend = "postgres"`) sharing it, as child processes.
//!
//! Measured at each concurrency: the canonical read on the bare baseline, the embedded broker and one
//! PostgreSQL broker; the vaccination write on the embedded broker and one PostgreSQL broker; then both on
//! three PostgreSQL brokers, the generator's connections spread over them round-robin. Each PostgreSQL
//! run notes the audit commits per second and entries per commit, from the brokers' own `/metrics`
//! (`lienthong_audit_commits_total`, `lienthong_audit_committed_entries_total`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::args::{Kind, Scenario};
use super::children::{free_addr, wait_ready, Child};
use super::load::{load, Clients, LoadResult, Plan};
use super::measure::{audit_count, measured, stage_means, stage_totals, Harness};
use super::report::RunResult;
use crate::client::MtlsClient;

/// The brokers of the three-node runs.
const NODES: usize = 3;

/// A PostgreSQL server program: on the PATH, or where Debian keeps it (`/usr/lib/postgresql/<v>/bin`,
/// the newest version).
fn postgres_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    debian.sort();
    on_path.or_else(|| debian.pop().map(|(_, p)| p))
}

/// A throw-away PostgreSQL on 127.0.0.1 (trust authentication, user `lienthong`); stopped when dropped.
struct ThrowawayPostgres {
    dir: PathBuf,
    pg_ctl: PathBuf,
    as_nobody: bool,
    port: u16,
}

impl ThrowawayPostgres {
    /// `initdb` and start it in `dir`; `Ok(None)` when PostgreSQL is not installed.
    fn start(dir: &Path) -> Result<Option<Self>, String> {
        let (Some(initdb), Some(pg_ctl)) = (postgres_tool("initdb"), postgres_tool("pg_ctl")) else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let as_nobody = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_nobody {
            run(std::process::Command::new("chown").arg("nobody").arg(dir))?;
        }
        let pg = Self {
            dir: dir.to_path_buf(),
            pg_ctl,
            as_nobody,
            port: free_addr()?.port(),
        };
        let data = pg.dir.join("data");
        run(pg.command(&initdb).arg("-D").arg(&data).args([
            "-U",
            "lienthong",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            pg.port,
            pg.dir.display()
        );
        run(pg
            .command(&pg.pg_ctl)
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-l"])
            .arg(pg.dir.join("server.log"))
            .args(["-o", &options, "start"]))?;
        Ok(Some(pg))
    }

    /// A PostgreSQL program, as `nobody` when this runs as root.
    fn command(&self, program: &Path) -> std::process::Command {
        let mut command = if self.as_nobody {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        command.current_dir(&self.dir).stdin(std::process::Stdio::null());
        command
    }

    fn url(&self) -> String {
        format!("postgres://lienthong@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "stop"])
            .output();
    }
}

/// Run a command to its end; its stderr on failure.
fn run(command: &mut std::process::Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// One broker on the shared database.
struct Node {
    child: Child,
    agency: SocketAddr,
    admin: SocketAddr,
}

/// What the PostgreSQL scenario needs from the main run besides the harness (whose embedded broker and
/// baseline are still running): the certificates and the work folder.
pub(super) struct PostgresRun<'a> {
    pub(super) certs: &'a Path,
    pub(super) work: &'a Path,
}

impl PostgresRun<'_> {
    pub(super) async fn run(
        &self,
        harness: &Harness<'_>,
        runs: &mut Vec<RunResult>,
        notes: &mut Vec<String>,
        run_no: &mut u64,
    ) -> Result<(), String> {
        let opts = harness.opts;
        let Some(pg) = ThrowawayPostgres::start(&self.work.join("postgres"))? else {
            notes.push("postgres: skipped, PostgreSQL is not installed (scripts/install-deps.sh)".into());
            return Ok(());
        };
        eprintln!("bench: postgres: seeding {} citizens…", opts.citizens);
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        run(std::process::Command::new(exe)
            .args([
                "db",
                "seed",
                "--citizens",
                &opts.citizens.to_string(),
                "--database",
                &pg.url(),
            ])
            .stdin(std::process::Stdio::null()))?;
        let dvc = Clients::load(self.certs, "dvc", opts.alpn)?;
        let mut nodes = Vec::with_capacity(NODES);
        for i in 1..=NODES {
            nodes.push(
                self.start_node(
                    i,
                    &pg.url(),
                    &dvc.keep_alive,
                    opts.ready_timeout,
                    &opts.broker_log,
                )
                .await?,
            );
        }
        register(harness.admin, &nodes, self.certs).await?;

        let moh = Clients::load(self.certs, "moh", opts.alpn)?;
        let scenario = |name: &'static str, agency: &'static str, kind: Kind| Scenario {
            name,
            agency,
            kind,
            new_connection: false,
        };
        let read = scenario("postgres-canonical-read", "dvc", Kind::CanonicalRead);
        let write = scenario("postgres-vaccination-write", "moh", Kind::VaccinationWrite);
        let one = Harness {
            admin_addr: nodes[0].admin,
            ..*harness
        };
        for &conc in &opts.concurrency {
            let plan = |addr: SocketAddr, scenario: Scenario| Plan {
                addr,
                scenario,
                concurrency: conc,
                duration: opts.duration,
                rate: None,
            };
            for (scenario, clients) in [(read, &dvc), (write, &moh)] {
                // The baseline (reads only) and the embedded broker…
                let mut targets = vec![("embedded", harness.broker)];
                if scenario.kind == Kind::CanonicalRead {
                    targets.insert(0, ("baseline", harness.baseline));
                }
                for (label, target) in targets {
                    *run_no += 1;
                    eprintln!("bench: {} c={conc} {label}…", scenario.name);
                    let plan = plan(target.addr, scenario);
                    let mut res =
                        measured(harness, clients, target.child, target.name, plan, *run_no).await?;
                    res.target = label.into();
                    runs.push(res);
                }
                // …then one broker on PostgreSQL, and three with the connections spread over them.
                for brokers in [&nodes[..1], &nodes[..]] {
                    *run_no += 1;
                    eprintln!("bench: {} c={conc} postgres ×{}…", scenario.name, brokers.len());
                    let (res, note) =
                        spread(&one, clients, brokers, plan(nodes[0].agency, scenario), *run_no).await?;
                    runs.push(res);
                    notes.push(note);
                }
            }
        }
        for node in nodes {
            node.child.stop().await;
        }
        drop(pg);
        Ok(())
    }

    /// Write node `i`'s config and start it on the shared database.
    async fn start_node(
        &self,
        i: usize,
        url: &str,
        probe: &MtlsClient,
        ready_timeout: Duration,
        rust_log: &str,
    ) -> Result<Node, String> {
        let (agency, admin) = (free_addr()?, free_addr()?);
        let c = self.certs.display();
        let config = self.work.join(format!("postgres-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[agency_listener]
addr = "{agency}"
[admin_listener]
addr = "{admin}"
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
pool_size = 32
node_name = "bench-{i}"
"#,
                data = self.work.join(format!("postgres-{i}")).display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let args = vec![
            "serve".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        let name = ["postgres broker 1", "postgres broker 2", "postgres broker 3"]
            .get(i - 1)
            .copied()
            .unwrap_or("postgres broker");
        let mut child = Child::spawn(
            name,
            &[],
            &args,
            self.work.join(format!("postgres-{i}.log")),
            rust_log,
        )?;
        wait_ready(&mut child, probe, agency, ready_timeout).await?;
        Ok(Node { child, agency, admin })
    }
}

/// Register the scenarios' agencies on the first broker and wait until every broker has them.
async fn register(admin: &MtlsClient, nodes: &[Node], certs: &Path) -> Result<(), String> {
    for code in ["dvc", "moh"] {
        let fingerprint = crate::identity::fingerprint_of_pem_file(&certs.join(format!("{code}.pem")))
            .map_err(|e| format!("{code}.pem: {e}"))?;
        let r = admin
            .post_json(
                nodes[0].admin,
                "/admin/v1/agencies",
                &json!({ "code": code, "name": code, "fingerprints": [fingerprint] }),
            )
            .await
            .map_err(|e| format!("registering {code}: {e}"))?;
        if r.status != 201 && r.status != 409 {
            return Err(format!("registering {code}: {} {}", r.status, r.text()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in nodes {
        loop {
            let r = admin.get(node.admin, "/admin/v1/agencies/moh").await;
            if r.is_ok_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("broker {} never saw the agencies", node.admin));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Audit commits and committed entries so far, summed over `nodes` (their `/metrics`), and when.
async fn commits(admin: &MtlsClient, nodes: &[Node]) -> Result<(u64, u64, Instant), String> {
    let (mut commits, mut entries) = (0, 0);
    for node in nodes {
        let r = admin
            .get(node.admin, "/metrics")
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
                .unwrap_or(0)
        };
        commits += counter("lienthong_audit_commits_total");
        entries += counter("lienthong_audit_committed_entries_total");
    }
    Ok((commits, entries, Instant::now()))
}

/// "scenario c=N target: X commits/s, Y entries per commit" between two [`commits`] readings.
fn commit_note(res: &RunResult, before: (u64, u64, Instant), after: (u64, u64, Instant)) -> String {
    let n = after.0.saturating_sub(before.0);
    let entries = after.1.saturating_sub(before.1);
    let secs = after.2.duration_since(before.2).as_secs_f64().max(1e-9);
    format!(
        "{} c={} {}: {:.0} audit commits/s, {:.1} entries per commit ({n} commits, {entries} entries)",
        res.scenario,
        res.concurrency,
        res.target,
        n as f64 / secs,
        entries as f64 / n.max(1) as f64
    )
}

/// Warm up, then one measured run with the plan's connections spread round-robin over `nodes`: the audit
/// entries (every chain's) counted around it through `h`'s broker (the first node), the audit commits
/// through every node's `/metrics` (noted), the stages too when there is one node.
async fn spread(
    h: &Harness<'_>,
    clients: &Clients,
    nodes: &[Node],
    plan: Plan,
    run_no: u64,
) -> Result<(RunResult, String), String> {
    let per_node = |plan: Plan, i: usize| Plan {
        addr: nodes[i].agency,
        concurrency: plan.concurrency / nodes.len() + usize::from(i < plan.concurrency % nodes.len()),
        ..plan
    };
    let all = |plan: Plan, tag: String| {
        let loads: Vec<_> = (0..nodes.len())
            .map(|i| per_node(plan, i))
            .filter(|p| p.concurrency > 0)
            .map(|p| {
                let (clients, sample, tag) = (clients.clone(), h.sample.clone(), format!("{tag}-{}", p.addr));
                tokio::spawn(async move { load(&clients, &sample, p, &tag).await })
            })
            .collect();
        async move {
            let mut total = LoadResult::default();
            for handle in loads {
                match handle.await {
                    Ok(r) => {
                        // The runs went side by side: the longest is the run's time.
                        total.elapsed = total.elapsed.max(r.elapsed);
                        total.merge(r);
                    }
                    Err(e) => {
                        total.errors += 1;
                        total.first_error.get_or_insert_with(|| format!("load task: {e}"));
                    }
                }
            }
            total
        }
    };
    if !h.opts.warmup.is_zero() {
        all(
            Plan {
                duration: h.opts.warmup,
                ..plan
            },
            format!("w{run_no}"),
        )
        .await;
    }
    let single = nodes.len() == 1;
    let stages_before = if single {
        Some(stage_totals(h.admin, h.admin_addr).await?)
    } else {
        None
    };
    let commits_before = commits(h.admin, nodes).await?;
    let audit_before = audit_count(h.admin, h.admin_addr).await?;
    let cpu_before: Option<f64> = nodes.iter().map(|n| n.child.cpu_secs()).sum();
    let res = all(plan, format!("r{run_no}")).await;
    let cpu_used = nodes
        .iter()
        .map(|n| n.child.cpu_secs())
        .sum::<Option<f64>>()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    // The `before` read is itself audited.
    let audit_entries = audit_count(h.admin, h.admin_addr)
        .await?
        .saturating_sub(audit_before + 1);
    let commits_after = commits(h.admin, nodes).await?;
    let stage_ms = match stages_before {
        Some(before) => stage_means(&before, &stage_totals(h.admin, h.admin_addr).await?),
        None => Default::default(),
    };
    let memory = nodes[0].child.memory().filter(|_| single);
    let result = RunResult {
        target: format!("postgres ×{}", nodes.len()),
        audit_entries: Some(audit_entries),
        stage_ms,
        // CPU over every broker of the run together.
        ..RunResult::of_load(&plan, "", res, cpu_used, memory)
    };
    let note = commit_note(&result, commits_before, commits_after);
    Ok((result, note))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_missing_program_is_none() {
        assert_eq!(super::postgres_tool("no-such-postgres-program"), None);
    }
}
