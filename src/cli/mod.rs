//! The command line. `main.rs` only parses and calls [`run`]; every command lives here so that the
//! tests can drive it too. Exit codes: 0 success, 1 failure, 2 bad configuration or usage.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::broker::{Broker, StartError};

use crate::config::Config;
use crate::dev::demo::DemoOptions;

mod admin;
mod args;
mod db;
mod log;
mod offline;

pub use log::LogGuard;

use admin::{agency_command, billing_command, catalogue_command, import_command};
pub use args::*;
use offline::{answer_keys_command, audit_command, dcc_command, verify_response_command};

/// Set up logging: `RUST_LOG` filter (default `info`), text or JSON, to stderr through an in-memory buffer
/// flushed by its own thread every 20 ms ([`log`]), so that no request waits on a `write` to the terminal
/// or log file and none wakes a thread per line. Keep the guard until exit: dropping it writes what is
/// buffered. Lines beyond the buffer (8 MiB) are dropped and counted rather than slowing requests down;
/// the audit trail, not the log, is the record of every request.
pub fn init_logging(json: bool) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = log::buffered_stderr();
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
            cache_mb,
            upstream,
            provider,
            front_of,
            provider_addr,
            provider_admin_addr,
        } => {
            let opts = DemoOptions {
                certs_dir,
                data_dir,
                citizens,
                agency_addr,
                admin_addr,
                cache_mb,
            };
            if upstream {
                run_upstream_demo(opts, provider_addr, provider_admin_addr).await
            } else if let Some(provider_addr) = front_of {
                run_front(DemoOptions { citizens: 0, ..opts }, &provider_addr).await
            } else if provider {
                match crate::dev::upstream_demo::prepare_provider(&opts).await {
                    Ok(broker) => {
                        run_broker(
                            broker,
                            Some(format!("provider listening on {}", opts.agency_addr)),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            } else {
                run_demo(opts).await
            }
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
        Command::Db { action } => return db::db_command(action).await,
        Command::Audit {
            action: AuditCommand::Verify { database, .. },
        } if database.database.is_some() => return db::verify_command(database).await,
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

/// `demo --upstream`: the provider as a child process (`demo --provider`), then this process as the front
/// broker in front of it. The child is stopped when the front broker stops.
async fn run_upstream_demo(
    opts: DemoOptions,
    provider_addr: String,
    provider_admin_addr: String,
) -> Result<(), StartError> {
    use crate::dev::upstream_demo;
    let exe = std::env::current_exe().map_err(|e| StartError::Other(e.to_string()))?;
    let mut provider = std::process::Command::new(exe)
        .arg("demo")
        .arg("--provider")
        .args(["--citizens", &opts.citizens.to_string(), "--certs-dir"])
        .arg(&opts.certs_dir)
        .arg("--data-dir")
        .arg(opts.data_dir.join("provider"))
        .args([
            "--agency-addr",
            &provider_addr,
            "--admin-addr",
            &provider_admin_addr,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| StartError::Other(format!("starting the provider: {e}")))?;
    // The provider makes the dev PKI (the front broker's certificate included) before it listens.
    let front_key = opts
        .certs_dir
        .join(format!("{}.key", upstream_demo::FRONT_AGENCY));
    let ready = async {
        for _ in 0..600 {
            if front_key.is_file() && tokio::net::TcpStream::connect(&provider_addr).await.is_ok() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    if !ready.await {
        let _ = provider.kill();
        return Err(StartError::Other(format!(
            "the provider did not come up on {provider_addr}"
        )));
    }
    let front = DemoOptions {
        data_dir: opts.data_dir.join("front"),
        citizens: 0,
        ..opts.clone()
    };
    let served = run_front(front, &provider_addr).await;
    let _ = provider.kill();
    let _ = provider.wait();
    served
}

/// The demo broker as a front in upstream provider mode, in front of the provider (`demo --provider`)
/// listening at `provider_addr`, with the dev PKI in `opts.certs_dir`.
async fn run_front(opts: DemoOptions, provider_addr: &str) -> Result<(), StartError> {
    use crate::dev::upstream_demo;
    let store = upstream_demo::front_store(&opts.certs_dir, provider_addr, "lienthong-rest.toml");
    let broker =
        crate::dev::demo::prepare_with(&opts, |config| upstream_demo::use_upstream(config, store)).await?;
    let lines = upstream_demo::curl_lines(
        &opts.certs_dir,
        &opts.agency_addr,
        provider_addr,
        &opts.admin_addr,
    );
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
        (
            "citizens",
            match &broker.config.store.upstream {
                // The provider holds them; the broker cannot count them.
                Some(u) if broker.store.is_remote() => format!("at the upstream provider {} (mTLS)", u.url),
                _ => citizens.to_string(),
            },
        ),
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
    if citizens == 0 && !broker.store.is_remote() {
        out.push_str("  next: the store holds no citizens; load them through the admin API:\n");
        out.push_str("    lienthong citizens import citizens.jsonl\n");
    }
    out
}
