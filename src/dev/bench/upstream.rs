//! Upstream provider mode (`--upstream`): a front broker in front of a provider, both child processes.

use std::net::SocketAddr;
use std::path::Path;

use super::args::{Kind, Scenario};
use super::children::{free_addr, wait_ready, Child};
use super::load::{Clients, Plan};
use super::measure::{measured, Harness, Target};
use super::report::RunResult;

/// The upstream scenario: a provider (`demo --provider`, seeding the same population) and a front broker
/// in upstream mode in front of it (`demo --front-of`), as child processes; the canonical read through
/// both, the provider's own read asked directly, and the baseline, at each concurrency.
pub(super) struct UpstreamRun<'a> {
    pub(super) certs: &'a Path,
    pub(super) work: &'a Path,
}

impl UpstreamRun<'_> {
    pub(super) async fn run(
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
                    harness.baseline.addr,
                    &dvc,
                    read(Kind::CanonicalRead, "dvc"),
                    harness.baseline.child,
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
                let on = Target {
                    name: target,
                    addr,
                    child,
                    admin: None,
                };
                measured_here.push(measured(harness, clients, &[on], plan, *run_no).await?);
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
