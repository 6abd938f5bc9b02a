//! The command line. `main.rs` only parses and calls [`run`]; every command lives here so that the
//! tests can drive it too. Exit codes: 0 success, 1 failure, 2 bad configuration or usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::broker::{Broker, StartError};

use crate::config::Config;
use crate::dev::demo::DemoOptions;

mod admin;
mod log;

pub use log::LogGuard;

use admin::{agency_command, billing_command};

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
    /// Benchmark the whole pipeline against a bare hyper + rustls baseline (see `BENCHMARKS.md`).
    Bench(crate::dev::bench::BenchArgs),
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

/// `lienthong audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain and the signed checkpoints: exit 0 with the count and head hash, or exit 1
    /// naming the first broken or missing entry.
    Verify {
        /// The broker's data dir (the trail is in its `audit/` folder).
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
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
}

/// Set up logging: `RUST_LOG` filter (default `info`), text or JSON, to stderr through an in-memory buffer
/// flushed by its own thread every 20 ms ([`log`]), so that no request waits on a `write` to the terminal
/// or log file and none wakes a thread per line. Keep the guard until exit: dropping it writes what is
/// buffered. Lines beyond the buffer (8 MiB) are dropped and counted rather than slowing requests down;
/// the audit trail, not the log, is the record of every request.
pub fn init_logging(json: bool) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = log::buffered_stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Command::CheckConfig { config } => Config::load(&config)
            .map(|_| println!("{}: ok", config.display()))
            .map_err(Into::into),
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
        Command::Billing { admin, action } => return billing_command(admin, action).await,
        Command::Bench(args) => return crate::dev::bench::run_cli(args).await,
        Command::Audit { action } => return audit_command(action),
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
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))
    };
    let agency = bind(addrs.agency).await?;
    let admin = bind(addrs.admin).await?;
    tracing::info!(agency = %addrs.agency, admin = %addrs.admin, "listening");
    if let Some(banner) = banner {
        println!("{banner}");
    }
    crate::supervisor::serve(broker, agency, admin, crate::supervisor::shutdown_signal())
        .await
        .map_err(|e| StartError::Other(e.to_string()))
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

fn audit_command(action: AuditCommand) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    match action {
        AuditCommand::Verify { data_dir } => {
            let dir = data_dir.join("audit");
            if !dir.is_dir() {
                return fail(2, format!("{}: no audit trail here", dir.display()));
            }
            match crate::audit::verify_dir(&dir) {
                Ok(r) => {
                    println!(
                        "ok: {} entries (seq {}..={}), {} signed checkpoints, head {}{}",
                        r.count,
                        r.first_seq,
                        r.first_seq + r.count.saturating_sub(1),
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
            let mut writer: Box<dyn std::io::Write> = match &out {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => return fail(1, format!("{}: {e}", path.display())),
                },
                None => Box::new(std::io::stdout().lock()),
            };
            match crate::audit::export(&data_dir.join("audit"), from, to, &mut writer) {
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
        } => {
            let before = match (before, older_than_days) {
                (_, Some(days)) => chrono::Utc::now() - chrono::Duration::days(i64::from(days)),
                (before, None) => match parse_time("before", before.as_deref()) {
                    Ok(Some(t)) => t,
                    Ok(None) => return fail(2, "give --before or --older-than-days".into()),
                    Err(e) => return fail(2, e),
                },
            };
            match crate::audit::archive_and_prune(&data_dir.join("audit"), before, &archive) {
                Ok(n) => {
                    println!("archived {n} entries to {}", archive.display());
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
    }
}
