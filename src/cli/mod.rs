//! The command line. `main.rs` only parses and calls [`run`]; every command lives here so that the
//! tests can drive it too. Exit codes: 0 success, 1 failure, 2 bad configuration or usage.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use hyper::Method;

use crate::broker::{Broker, StartError};

use crate::config::Config;
use crate::dev::demo::DemoOptions;

mod admin;

use admin::{admin_call, agency_command, billing_command, catalogue_command, import_command};

/// lienthong — the mTLS broker through which agencies share citizen data, per purpose, audited.
#[derive(Debug, Parser)]
#[command(name = "lienthong", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a working broker on embedded defaults: dev certificates, sample data, ports 8443/8444.
    Demo {
        /// Synthetic citizens to seed into an empty store.
        #[arg(long, default_value_t = 10_000)]
        citizens: usize,
        /// Development PKI folder.
        #[arg(long, default_value = "certs/demo")]
        certs_dir: PathBuf,
        /// Data folder.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// Agency listener address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        agency_addr: String,
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:8444")]
        admin_addr: String,
    },
    /// Run the broker from a config file.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "lienthong.toml")]
        config: PathBuf,
    },
    /// Check a config file and exit (0 valid, 2 invalid).
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = "lienthong.toml")]
        config: PathBuf,
    },
    /// Development certificates.
    Certs {
        /// What to do.
        #[command(subcommand)]
        action: CertsCommand,
    },
    /// The audit trail, offline: works on a stopped broker's data dir (the admin API has the same checks
    /// on a running one: `/admin/v1/audit/verify`).
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// The monthly billing report and its reconciliation with the audit trail (through the admin API).
    Billing {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: BillingCommand,
    },
    /// The yearly service catalogue: load a new version, list the versions, diff two (through the
    /// admin API).
    Catalogue {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: CatalogueCommand,
    },
    /// Benchmark the whole pipeline against a bare hyper + rustls baseline (see `BENCHMARKS.md`).
    Bench(crate::dev::bench::BenchArgs),
    /// Load citizens into a running broker through its admin API.
    Citizens {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: CitizensCommand,
    },
    /// EU Digital COVID Certificates, offline.
    Dcc {
        /// What to do.
        #[command(subcommand)]
        action: DccCommand,
    },
    /// Check a saved agency-listener answer against its `x-jws-signature` header and the broker's published
    /// keys (the JWKS from `/.well-known/jwks.json`), offline: exit 0 valid, 1 not, with the reason.
    VerifyResponse(VerifyResponseArgs),
    /// The key that signs every agency-listener answer.
    AnswerKeys {
        /// What to do.
        #[command(subcommand)]
        action: AnswerKeysCommand,
    },
    /// Manage agencies through a running broker's admin API.
    Agency {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: AgencyCommand,
    },
}

/// `lienthong certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make (or complete) a development PKI: CA, server, CRL and one client certificate per name.
    Init {
        /// Folder to write into.
        #[arg(long, default_value = "certs/demo")]
        dir: PathBuf,
        /// Client certificate names (agency codes and `admin`).
        #[arg(long = "client", default_values_t = ["moh".to_string(), "pccovid".into(), "dvc".into(), "admin".into()])]
        clients: Vec<String>,
    },
}

/// `lienthong citizens …`
#[derive(Debug, Subcommand)]
pub enum CitizensCommand {
    /// Import canonical records from a JSON Lines file (one record per line), validated against the
    /// canonical schema; sent in batches, each written all or nothing; refused lines reported by number.
    Import {
        /// The JSON Lines file.
        file: PathBuf,
        /// Lines per batch (each batch must also fit `limits.max_body_bytes`).
        #[arg(long, default_value_t = 500)]
        batch_lines: usize,
    },
}

/// `lienthong audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain and the signed checkpoints: exit 0 with the count and head hash, or exit 1
    /// naming the first broken or missing entry.
    Verify {
        /// The broker's data dir (the trail is in its `audit/` folder).
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// A witness kept outside the data dir (`audit.witness`, or saved `GET /admin/v1/audit/checkpoint`
        /// answers, one per line): fail if the trail is shorter than, or diverges from, what it saw.
        #[arg(long)]
        witness: Option<PathBuf>,
    },
    /// Write entries as JSON Lines (for an archive or a SIEM), `--from` inclusive, `--to` exclusive.
    Export {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// RFC 3339 start time.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end time.
        #[arg(long)]
        to: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Ask a running broker to sign its head now and print it as one witness line (JSON) on standard
    /// output: append it to a file kept off the broker host, for `audit verify --witness`.
    Checkpoint {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Sign the `base.json` of a trail pruned before bases were signed, so it verifies again. Check the
    /// base against the archive that ends where it begins first: this vouches for it. Stopped broker.
    SignBase {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// The folder of the signing key (default: the data dir's sibling `<name>-keys`).
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
    /// Retention: move whole segments older than `--before` into an archive file and delete them; what is
    /// left still verifies (the archive carries the hash it continues from). Run on a stopped broker.
    Prune {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// RFC 3339 cut-off: entries before it may go.
        #[arg(
            long,
            required_unless_present = "older_than_days",
            conflicts_with = "older_than_days"
        )]
        before: Option<String>,
        /// Retention by age: entries older than this many days may go (e.g. from a cron job).
        #[arg(long)]
        older_than_days: Option<u32>,
        /// Archive file to write (JSON Lines).
        #[arg(long)]
        archive: PathBuf,
        /// The folder of the signing key (`audit.key_dir`; default: the data dir's sibling `<name>-keys`):
        /// the base left by the prune is signed.
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
}

/// `lienthong dcc …`
#[derive(Debug, Subcommand)]
pub enum DccCommand {
    /// Verify an `HC1:` string against a trust list of Document Signer certificates: exit 0 valid (the
    /// DCC JSON is printed), 1 invalid with the reason (bad_prefix, base45, zlib, cose_structure,
    /// unknown_kid, bad_signature, expired, schema_violation), 2 usage.
    Verify {
        /// The `HC1:` string (or give --file).
        #[arg(required_unless_present = "file")]
        hc1: Option<String>,
        /// A file holding the `HC1:` string.
        #[arg(long, conflicts_with = "hc1")]
        file: Option<PathBuf>,
        /// Trusted Document Signer certificates (PEM files), e.g. certs/demo/dcc-dsc.pem.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// Check at this RFC 3339 instant instead of now.
        #[arg(long)]
        at: Option<String>,
    },
}

/// `lienthong verify-response …`
#[derive(Debug, Args)]
pub struct VerifyResponseArgs {
    /// The answer body exactly as received.
    #[arg(long)]
    pub body: PathBuf,
    /// The `x-jws-signature` header value (or give --signature-file).
    #[arg(long, required_unless_present = "signature_file")]
    pub signature: Option<String>,
    /// A file holding the `x-jws-signature` header value.
    #[arg(long, conflicts_with = "signature")]
    pub signature_file: Option<PathBuf>,
    /// The broker's published keys (saved from `GET /.well-known/jwks.json`).
    #[arg(long)]
    pub jwks: PathBuf,
    /// The `x-request-id` the answer came with: it must be the one signed.
    #[arg(long)]
    pub request_id: Option<String>,
    /// The agency expected in the signature.
    #[arg(long)]
    pub agency: Option<String>,
    /// The purpose expected in the signature.
    #[arg(long)]
    pub purpose: Option<String>,
}

/// `lienthong answer-keys …`
#[derive(Debug, Subcommand)]
pub enum AnswerKeysCommand {
    /// Make a new answer-signing key; the old public key stays published so earlier answers still verify.
    /// Run on a stopped broker (it takes effect at the next start).
    Rotate {
        /// The broker's data dir (the keys are in its `answer-keys/` folder).
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
    },
    /// Print the published keys (JWKS), current first.
    Show {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
    },
}

/// `lienthong billing …`
#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Per agency and purpose: calls served, refused for quota, unit price, amount, exemption.
    Report {
        /// The month, `YYYY-MM` (default: this month).
        #[arg(long)]
        month: Option<String>,
        /// `csv` or `json`.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Recompute the month from the audit trail; exit 1 if the counters differ.
    Reconcile {
        /// The month, `YYYY-MM` (default: this month).
        #[arg(long)]
        month: Option<String>,
    },
    /// Freeze a month that is over: its report, signed with the broker's audit key together with the
    /// audit chain head it was computed from, exported as CSV or JSON.
    Close {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
        /// `csv` or `json`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Write the export here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `lienthong catalogue …`
#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Load a new version from a file with a `[release]` table (`version`, `effective`); it is checked
    /// fully first and refused with FILE:LINE, the running version kept.
    Load {
        /// The catalogue file (TOML).
        file: PathBuf,
    },
    /// Every version, past, in force and scheduled.
    Versions,
    /// What changed between two versions (default `--to`: the one in force).
    Diff {
        /// The earlier version.
        #[arg(long)]
        from: String,
        /// The later version.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Where the admin API is and which certificate to present.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:8444", global = true)]
    pub admin_addr: SocketAddr,
    /// CA bundle to trust.
    #[arg(long, default_value = "certs/demo/ca.pem", global = true)]
    pub cacert: PathBuf,
    /// Admin client certificate.
    #[arg(long, default_value = "certs/demo/admin.pem", global = true)]
    pub cert: PathBuf,
    /// Admin client key.
    #[arg(long, default_value = "certs/demo/admin.key", global = true)]
    pub key: PathBuf,
}

/// `lienthong agency …`
#[derive(Debug, Subcommand)]
pub enum AgencyCommand {
    /// List agencies.
    List,
    /// Show one agency.
    Show {
        /// Agency code.
        code: String,
    },
    /// Register an agency.
    Add {
        /// Agency code (a-z, 0-9, '-').
        code: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// `billed` or `state-budget`.
        #[arg(long, default_value = "billed")]
        billing_class: String,
        /// A PEM certificate to bind right away.
        #[arg(long)]
        cert_file: Option<PathBuf>,
    },
    /// Bind a certificate (file or fingerprint) to an agency.
    Bind {
        /// Agency code.
        code: String,
        /// A PEM certificate file.
        #[arg(long, conflicts_with = "fingerprint")]
        cert_file: Option<PathBuf>,
        /// A SHA-256 fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Unbind a certificate fingerprint from an agency.
    Unbind {
        /// Agency code.
        code: String,
        /// The SHA-256 fingerprint.
        fingerprint: String,
    },
    /// Suspend an agency (its requests get 403 `agency_suspended`).
    Suspend {
        /// Agency code.
        code: String,
    },
    /// Resume a suspended agency.
    Resume {
        /// Agency code.
        code: String,
    },
    /// Set the quota plan for one purpose (or `*`, every purpose); leave a limit out for no limit.
    Plan {
        /// Agency code.
        code: String,
        /// Purpose id, or `*`.
        #[arg(long, default_value = "*")]
        purpose: String,
        /// Calls per minute.
        #[arg(long)]
        per_minute: Option<u64>,
        /// Calls per day.
        #[arg(long)]
        per_day: Option<u64>,
        /// Calls per month.
        #[arg(long)]
        per_month: Option<u64>,
    },
    /// Grant a purpose to an agency (audited, effective on its next request, kept across restarts).
    Grant {
        /// Agency code.
        code: String,
        /// Purpose id from the catalogue (`GET /v1/catalogue`, `schemas/purposes.toml`).
        purpose: String,
    },
    /// Revoke a purpose granted with `grant` (grants written in the catalogue file stay).
    Revoke {
        /// Agency code.
        code: String,
        /// Purpose id.
        purpose: String,
    },
    /// Set the billing class: `billed` or `state-budget`.
    BillingClass {
        /// Agency code.
        code: String,
        /// `billed` or `state-budget`.
        class: String,
    },
    /// Quota use in the current windows, per purpose.
    Usage {
        /// Agency code.
        code: String,
    },
    /// Bind the agency's X-Road member or subsystem (the only X-Road client its requests may name), or
    /// clear it with `--clear`.
    Xroad {
        /// Agency code.
        code: String,
        /// `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`, e.g. `VN/GOV/000.00.00.H26/dvc`.
        #[arg(required_unless_present = "clear")]
        client: Option<String>,
        /// Remove the agency's X-Road identity.
        #[arg(long, conflicts_with = "client")]
        clear: bool,
    },
}

/// Set up logging: `RUST_LOG` filter (default `info`), text or JSON, to stderr through a writer thread, so
/// that no request waits on a `write` to the terminal or log file (one line per request was a quarter
/// of the broker's throughput when written inline; BENCHMARKS.md). Keep the guard until exit: dropping
/// it writes what is queued. Lines beyond the queue (128k) are dropped and counted rather than
/// slowing requests down; the audit trail, not the log, is the record of every request.
pub fn init_logging(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // Colour codes only for a person at a terminal: journald, files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// Run a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let _log_writer = init_logging(cli.log_json);
    let result = match cli.command {
        Command::Demo {
            citizens,
            certs_dir,
            data_dir,
            agency_addr,
            admin_addr,
        } => {
            let opts = DemoOptions {
                certs_dir,
                data_dir,
                citizens,
                agency_addr,
                admin_addr,
            };
            run_demo(opts).await
        }
        Command::Serve { config } => match Config::load(&config) {
            Ok(config) => match Broker::open(config) {
                Ok(broker) => run_broker(Arc::new(broker), None).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        },
        // The TLS material is checked as start-up would: certificates, key, every CRL's signature.
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(loaded) => crate::tls::build(&loaded.tls)
                .map(|_| println!("{}: ok", config.display()))
                .map_err(|e| {
                    StartError::Config(crate::config::ConfigError {
                        file: config.display().to_string(),
                        key: "tls".into(),
                        message: e.to_string(),
                    })
                }),
            Err(e) => Err(e.into()),
        },
        Command::Certs {
            action: CertsCommand::Init { dir, clients },
        } => {
            let clients: Vec<(&str, &str)> = clients.iter().map(|c| (c.as_str(), c.as_str())).collect();
            match crate::dev::certs::init_dir(&dir, &clients) {
                Ok(created) => {
                    for p in &created {
                        println!("created {}", p.display());
                    }
                    if created.is_empty() {
                        println!("{}: complete, nothing to do", dir.display());
                    }
                    Ok(())
                }
                Err(e) => Err(StartError::Other(e.to_string())),
            }
        }
        Command::Agency { admin, action } => return agency_command(admin, action).await,
        Command::Citizens {
            admin,
            action: CitizensCommand::Import { file, batch_lines },
        } => return import_command(admin, &file, batch_lines).await,
        Command::Billing { admin, action } => return billing_command(admin, action).await,
        Command::Catalogue { admin, action } => return catalogue_command(admin, action).await,
        Command::Bench(args) => return crate::dev::bench::run_cli(args).await,
        Command::Audit { action } => return audit_command(action).await,
        Command::Dcc { action } => return dcc_command(action),
        Command::VerifyResponse(args) => return verify_response_command(args),
        Command::AnswerKeys { action } => return answer_keys_command(action),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lienthong: {e}");
            match e {
                StartError::Config(_) => 2,
                _ => 1,
            }
        }
    }
}

async fn run_demo(opts: DemoOptions) -> Result<(), StartError> {
    let broker = crate::dev::demo::prepare(&opts).await?;
    let lines = crate::dev::demo::curl_lines(&opts.certs_dir, &opts.agency_addr, &opts.admin_addr);
    run_broker(broker, Some(lines)).await
}

/// Bind both listeners and serve until SIGINT or SIGTERM.
pub async fn run_broker(broker: Arc<Broker>, banner: Option<String>) -> Result<(), StartError> {
    let addrs = broker.config.listen_addrs().map_err(|(key, message)| {
        StartError::Config(crate::config::ConfigError {
            file: "<config>".into(),
            key: key.into(),
            message,
        })
    })?;
    // `flags` names what changes the address: the demo's flag and the config key.
    let bind = |addr: SocketAddr, flags: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    format!(" (another process, perhaps another lienthong, listens there; choose another with {flags})")
                }
                _ => String::new(),
            };
            StartError::Other(format!("cannot listen on {addr}: {e}{hint}"))
        })
    };
    let agency = bind(
        addrs.agency,
        "--agency-addr, or agency_listener.addr in the config",
    )
    .await?;
    let admin = bind(addrs.admin, "--admin-addr, or admin_listener.addr in the config").await?;
    tracing::info!(agency = %addrs.agency, admin = %addrs.admin, "listening");
    // A closed or full stdout (a pipe nobody reads any more) must not stop a broker: no `println!`.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", startup_summary(&broker, addrs.agency, addrs.admin));
    if let Some(banner) = banner {
        let _ = writeln!(stdout, "{banner}");
    }
    let _ = stdout.flush();
    drop(stdout);
    let slot = crate::supervisor::BrokerSlot::new(&broker);
    let reloads = tokio::spawn(reload_tls_on_sighup(slot.clone()));
    let served = crate::supervisor::supervise(
        broker,
        agency,
        admin,
        crate::supervisor::shutdown_signal(),
        Some(slot),
    )
    .await
    .map_err(|e| StartError::Other(e.to_string()));
    reloads.abort();
    served
}

/// SIGHUP re-reads the CA bundle, CRLs and server certificate, as `POST /admin/v1/tls/reload` does (that
/// one is also recorded in the audit trail); systemd's `ExecReload=` sends it. A failed reload keeps
/// the old config in force and says why.
async fn reload_tls_on_sighup(slot: crate::supervisor::BrokerSlot) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match slot.current() {
                Some(broker) => match broker.tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS reloaded (CA bundle, CRLs, server certificate)"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; the old config stays in force")
                    }
                },
                None => tracing::warn!("SIGHUP: the database is being reopened; send it again in a moment"),
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// What the operator needs to know once the broker listens (as Caddy and X-Road print it): where it
/// listens, the console, what is registered and loaded, where the data lives, and what to do next when
/// the registry or the store is empty.
pub fn startup_summary(broker: &Broker, agency_addr: SocketAddr, admin_addr: SocketAddr) -> String {
    let agencies = broker.registry.list();
    let active = agencies
        .iter()
        .filter(|a| a.status == crate::registry::AgencyStatus::Active)
        .count();
    let codes: Vec<&str> = agencies.iter().map(|a| a.code.as_str()).collect();
    let citizens = broker.store.count();
    let purposes = broker.catalogue().all().len();
    let connectors: Vec<&str> = broker.connectors.all().iter().map(|c| c.name.as_str()).collect();
    let data_dir = broker.config.storage.data_dir.display();
    let named = |names: &[&str]| match names {
        [] => String::new(),
        names => format!(": {}", names.join(", ")),
    };
    let purpose_source = match &broker.config.catalogue.purposes {
        Some(path) => path.display().to_string(),
        None => "the catalogue embedded in the binary".into(),
    };
    let rows = [
        (
            "agency API",
            format!(
                "https://{agency_addr}  (mTLS: client certificates chained to {})",
                broker.config.tls.ca_bundle.display()
            ),
        ),
        (
            "admin API",
            format!("https://{admin_addr}  (certificates in tls.admin_certs)"),
        ),
        ("console", format!("https://{admin_addr}/admin/console")),
        (
            "agencies",
            format!("{} registered, {active} active{}", agencies.len(), named(&codes)),
        ),
        ("citizens", citizens.to_string()),
        ("purposes", format!("{purposes} ({purpose_source})")),
        (
            "connectors",
            format!("{}{}", connectors.len(), named(&connectors)),
        ),
        (
            "storage",
            format!(
                "sled in {data_dir}/db (cache {} MiB), audit trail in {data_dir}/audit",
                broker.config.storage.cache_mb
            ),
        ),
    ];
    let mut out = format!("lienthong {} is serving\n", env!("CARGO_PKG_VERSION"));
    for (label, value) in rows {
        out.push_str(&format!("  {label:<11} {value}\n"));
    }
    if agencies.is_empty() {
        out.push_str("  next: no agency is registered, so every agency request gets 403 unknown_agency;\n");
        out.push_str("    register one: lienthong agency add CODE --name NAME --cert-file CODE.pem\n");
        out.push_str("    (README, \"the operator's path\")\n");
    }
    if citizens == 0 {
        out.push_str("  next: the store holds no citizens; load them through the admin API:\n");
        out.push_str("    lienthong citizens import citizens.jsonl\n");
    }
    out
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("--{name} {v:?}: not an RFC 3339 time ({e})"))
        })
        .transpose()
}

fn dcc_command(action: DccCommand) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    let DccCommand::Verify { hc1, file, trust, at } = action;
    let hc1 = match (hc1, file) {
        (Some(text), _) => text,
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return fail(2, format!("{}: {e}", path.display())),
        },
        (None, None) => return fail(2, "give the HC1: string or --file".into()),
    };
    let at = match parse_time("at", at.as_deref()) {
        Ok(at) => at.unwrap_or_else(chrono::Utc::now),
        Err(e) => return fail(2, e),
    };
    let mut trust_list = crate::dcc::TrustList::default();
    for path in &trust {
        if let Err(e) = trust_list.add_pem_file(path) {
            return fail(2, e);
        }
    }
    match crate::dcc::verify(&hc1, &trust_list, at) {
        Ok(verified) => {
            println!(
                "valid: signed by kid {}, expires {}",
                verified.kid,
                verified.expires.as_deref().unwrap_or("never")
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&verified.dcc).unwrap_or_default()
            );
            0
        }
        Err(refusal) => fail(1, format!("invalid ({}): {refusal}", refusal.code())),
    }
}

fn verify_response_command(args: VerifyResponseArgs) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let body = match read(&args.body) {
        Ok(b) => b,
        Err(e) => return fail(2, e),
    };
    let signature = match (args.signature, &args.signature_file) {
        (Some(s), _) => s,
        (None, Some(path)) => match read(path) {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(e) => return fail(2, e),
        },
        (None, None) => return fail(2, "give --signature or --signature-file".into()),
    };
    let jwks: serde_json::Value = match read(&args.jwks).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(2, format!("{}: not JSON ({e})", args.jwks.display())),
        Err(e) => return fail(2, e),
    };
    let signed = match crate::signed_answer::verify(&signature, &body, &jwks) {
        Ok(signed) => signed,
        Err(reason) => return fail(1, format!("invalid: {reason}")),
    };
    for (what, expected) in [
        ("request_id", &args.request_id),
        ("agency", &args.agency),
        ("purpose", &args.purpose),
    ] {
        if let Some(expected) = expected {
            if signed[what] != expected.as_str() {
                return fail(
                    1,
                    format!(
                        "invalid: the signature is for {what} {}, not {expected:?}",
                        signed[what]
                    ),
                );
            }
        }
    }
    println!(
        "valid: signed by key {} at {} for request {}, agency {}, purpose {}",
        signed["kid"].as_str().unwrap_or("?"),
        signed["time"].as_str().unwrap_or("?"),
        signed["request_id"].as_str().unwrap_or("?"),
        signed["agency"].as_str().unwrap_or("-"),
        signed["purpose"].as_str().unwrap_or("-"),
    );
    0
}

fn answer_keys_command(action: AnswerKeysCommand) -> i32 {
    let result = match action {
        AnswerKeysCommand::Rotate { data_dir } => crate::signed_answer::AnswerKeys::rotate(&data_dir)
            .map(|kid| format!("new answer-signing key {kid}; the broker uses it from its next start")),
        AnswerKeysCommand::Show { data_dir } => crate::signed_answer::AnswerKeys::open(&data_dir)
            .map(|keys| serde_json::to_string_pretty(keys.jwks()).unwrap_or_default()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("lienthong: {e}");
            1
        }
    }
}

async fn audit_command(action: AuditCommand) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    match action {
        AuditCommand::Checkpoint { admin } => {
            match admin_call(&admin, Method::GET, "/admin/v1/audit/checkpoint", None).await {
                Ok(resp) => {
                    println!("{}", resp.json());
                    0
                }
                Err(code) => code,
            }
        }
        AuditCommand::SignBase { data_dir, key_dir } => {
            let key_dir = key_dir.unwrap_or_else(|| crate::audit::default_key_dir(&data_dir));
            match crate::audit::sign_base(&data_dir.join("audit"), &key_dir) {
                Ok((seq, prev_hash)) => {
                    println!("signed base.json: the trail starts at seq {seq} after {prev_hash}");
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
        AuditCommand::Verify { data_dir, witness } => {
            let dir = data_dir.join("audit");
            if !dir.is_dir() {
                return fail(2, format!("{}: no audit trail here", dir.display()));
            }
            let heartbeat = crate::progress::Heartbeat::start("verifying the audit trail");
            let (verified, witnessed) = match &witness {
                Some(path) => match crate::audit::check_witness(&dir, path) {
                    Ok((r, n)) => (
                        Ok(r),
                        format!(", {n} witnessed checkpoints match {}", path.display()),
                    ),
                    Err(f) => (Err(f), String::new()),
                },
                None => (crate::audit::verify_dir(&dir), String::new()),
            };
            drop(heartbeat);
            match verified {
                Ok(r) => {
                    // `count` is the seq of the last entry; after a prune fewer entries remain.
                    println!(
                        "ok: {} entries (seq {}..={}), {} signed checkpoints{witnessed}, head {}{}",
                        (r.count + 1).saturating_sub(r.first_seq),
                        r.first_seq,
                        r.count,
                        r.checkpoints,
                        r.head_hash,
                        if r.torn_tail {
                            " (a torn, unacknowledged last line will be cut on next start)"
                        } else {
                            ""
                        }
                    );
                    0
                }
                Err(f) => fail(1, format!("audit chain broken: {f}")),
            }
        }
        AuditCommand::Export {
            data_dir,
            from,
            to,
            out,
        } => {
            let (from, to) = match (
                parse_time("from", from.as_deref()),
                parse_time("to", to.as_deref()),
            ) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => return fail(2, e),
            };
            let writer: Box<dyn std::io::Write> = match &out {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => return fail(1, format!("{}: {e}", path.display())),
                },
                None => Box::new(std::io::stdout().lock()),
            };
            let progress = crate::progress::Progress::start("exporting audit entries", None);
            let mut writer = crate::progress::CountingLines::new(writer, progress);
            let exported = crate::audit::export(&data_dir.join("audit"), from, to, &mut writer);
            let mut writer = writer.finish();
            match exported {
                Ok(n) => {
                    let _ = writer.flush();
                    eprintln!("exported {n} entries");
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
        AuditCommand::Prune {
            data_dir,
            before,
            older_than_days,
            archive,
            key_dir,
        } => {
            let before = match (before, older_than_days) {
                (_, Some(days)) => chrono::Utc::now() - chrono::Duration::days(i64::from(days)),
                (before, None) => match parse_time("before", before.as_deref()) {
                    Ok(Some(t)) => t,
                    Ok(None) => return fail(2, "give --before or --older-than-days".into()),
                    Err(e) => return fail(2, e),
                },
            };
            let key_dir = key_dir.unwrap_or_else(|| crate::audit::default_key_dir(&data_dir));
            match crate::audit::archive_and_prune(&data_dir.join("audit"), &key_dir, before, &archive) {
                Ok(n) => {
                    println!("archived {n} entries to {}", archive.display());
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
    }
}
