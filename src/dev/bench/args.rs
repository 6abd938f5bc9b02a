//! What to run: the command line (`lienthong bench …`), the options it resolves to, and the scenario table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::Alpn;

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
    /// Also measure cluster mode: three brokers on one throw-away PostgreSQL (Debian's binaries), one
    /// node alone and all three, against the embedded broker and the baseline; audit commits per second
    /// and entries per commit in the notes.
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
    /// Run the broker behind this command, split on spaces, both when it seeds and when it serves (for
    /// profiling: `--broker-wrapper "valgrind --tool=callgrind --callgrind-out-file=cg.out"`; or another
    /// build of lienthong, which then reads only data it wrote itself).
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
    /// Also measure cluster mode (brokers on PostgreSQL vs the embedded broker vs baseline).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
