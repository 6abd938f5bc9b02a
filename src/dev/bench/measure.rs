//! One measured run: warm up, drive the load, and read around it what the target spent (CPU, memory)
//! and, on a broker, the audit entries it wrote and its own per-stage timings (`/metrics`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::args::BenchOptions;
use super::children::Child;
use super::load::{load_spread, percentile, Clients, Plan};
use super::report::RunResult;
use super::workloads::Sample;
use crate::client::MtlsClient;

/// A server under load: its name in the report, where it listens, its process, and for a broker its
/// admin listener (where its audit head and stage timings are read).
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) name: &'static str,
    pub(super) addr: SocketAddr,
    pub(super) child: &'a Child,
    pub(super) admin: Option<SocketAddr>,
}

/// What every measured run shares.
pub(super) struct Harness<'a> {
    pub(super) opts: &'a BenchOptions,
    pub(super) admin: &'a MtlsClient,
    pub(super) sample: &'a Arc<Sample>,
    pub(super) baseline: Target<'a>,
    pub(super) broker: Target<'a>,
}

impl Harness<'_> {
    /// The same plan measured on the baseline, then on the broker (`plan.addr` is each one's own);
    /// `label` names the run in the progress lines.
    pub(super) async fn baseline_then_broker(
        &self,
        clients: &Clients,
        plan: Plan,
        label: &str,
        run_no: &mut u64,
    ) -> Result<[RunResult; 2], String> {
        let mut measure = async |target: Target<'_>| {
            *run_no += 1;
            eprintln!("bench: {label} {}…", target.name);
            measured(self, clients, &[target], plan, *run_no).await
        };
        let baseline = measure(self.baseline).await?;
        let broker = measure(self.broker).await?;
        Ok([baseline, broker])
    }
}

/// Warm up, then one measured run on `on` (one server, or the nodes of a cluster, which share the
/// plan's connections), with the audit count and stage timings read around it from the first one's admin
/// listener (brokers only; a cluster's audit head counts every node's chain). `plan.addr` is ignored.
pub(super) async fn measured(
    h: &Harness<'_>,
    clients: &Clients,
    on: &[Target<'_>],
    plan: Plan,
    run_no: u64,
) -> Result<RunResult, String> {
    let (opts, admin, sample) = (h.opts, h.admin, h.sample);
    let Plan {
        scenario,
        concurrency: conc,
        rate,
        ..
    } = plan;
    let first = on.first().ok_or("measured: no target")?;
    let addrs: Vec<SocketAddr> = on.iter().map(|t| t.addr).collect();
    if !opts.warmup.is_zero() {
        let warmup = Plan {
            duration: opts.warmup,
            ..plan
        };
        load_spread(clients, sample, warmup, &addrs, &format!("w{run_no}")).await;
    }
    let before = match first.admin {
        Some(at) => Some((stage_totals(admin, at).await?, audit_count(admin, at).await?)),
        None => None,
    };
    let cpu_secs = || on.iter().map(|t| t.child.cpu_secs()).sum::<Option<f64>>();
    let cpu_before = cpu_secs();
    let measured_plan = Plan {
        duration: opts.duration,
        ..plan
    };
    let mut res = load_spread(clients, sample, measured_plan, &addrs, &format!("r{run_no}")).await;
    let cpu_used = cpu_secs().zip(cpu_before).map(|(after, before)| after - before);
    // The `before` read is itself audited (admin requests are), after its count was taken.
    let (audit_entries, stage_ms) = match (before, first.admin) {
        (Some((stages, b)), Some(at)) => (
            Some(audit_count(admin, at).await?.saturating_sub(b + 1)),
            stage_means(&stages, &stage_totals(admin, at).await?),
        ),
        _ => (None, BTreeMap::new()),
    };
    res.latencies_us.sort_unstable();
    let answered = res.latencies_us.len() as u64;
    let ok_2xx = res
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let mem = first.child.memory();
    let secs = res.elapsed.as_secs_f64().max(1e-9);
    Ok(RunResult {
        scenario: scenario.name.to_string(),
        target: first.name.to_string(),
        concurrency: conc,
        rate,
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
        vm_hwm_kib: mem.map(|m| m.0),
        vm_rss_kib: mem.map(|m| m.1),
        audit_entries,
        stage_ms,
    })
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
