//! The report: one row per measured run, the whole run's figures, as Markdown tables and JSON.

use std::collections::BTreeMap;

use serde::Serialize;

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
            s.push_str("| scenario | conc | target |");
            for stage in &stages {
                s.push_str(&format!(" {stage} |"));
            }
            s.push_str("\n|---|---:|---|");
            s.push_str(&"---:|".repeat(stages.len()));
            s.push('\n');
            for r in self.runs.iter().filter(|r| !r.stage_ms.is_empty()) {
                s.push_str(&format!("| {} | {} | {} |", r.scenario, r.concurrency, r.target));
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
