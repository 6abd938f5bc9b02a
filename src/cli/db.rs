//! `lienthong db …`, `lienthong audit verify --database` and `audit export --database`: the PostgreSQL database of a cluster,
//! reached directly (no broker needs to run).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::postgres::{redact_url, PostgresConfig};

/// How to reach the database.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Connection URL, e.g. `postgres://lienthong@127.0.0.1:5432/lienthong`.
    #[arg(long)]
    pub database: Option<String>,
    /// PEM CA bundle: connect with TLS, verifying the server against it.
    #[arg(long, requires = "database")]
    pub database_ca: Option<PathBuf>,
}

/// `lienthong db …`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Bring the schema up to date (brokers also do this at start-up); exit 1 if the database is newer
    /// than this broker.
    Migrate {
        /// How to reach the database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Copy a stopped embedded broker's data dir (registry, citizen records, checkpoints and check-ins, the
    /// audit trail with its chain intact) into the database, migrating it first. Quota counters are not
    /// copied.
    Import {
        /// The embedded broker's data dir (its broker stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// The node name the imported chain gets: a broker started with this `storage.postgres.node_name`
        /// continues it.
        #[arg(long, default_value = "imported")]
        node_name: String,
        /// How to reach the database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Development: seed synthetic citizens (the demo's population) into an empty database, migrating it
    /// first (`scripts/cluster-demo.sh` uses it).
    Seed {
        /// How to reach the database.
        #[command(flatten)]
        database: DatabaseArgs,
        /// How many citizens.
        #[arg(long, default_value_t = 10_000)]
        citizens: usize,
    },
}

/// Run a `db` command; the exit code.
pub async fn db_command(action: DbCommand) -> i32 {
    match action {
        DbCommand::Migrate { database } => {
            let postgres = match open(database) {
                Ok(p) => p,
                Err(message) => return fail(2, message),
            };
            match postgres.migrate().await {
                Ok(m) if m.from == m.to => {
                    println!("{}: schema version {} is current", postgres.redacted_url, m.to);
                    0
                }
                Ok(m) => {
                    println!(
                        "{}: schema migrated from version {} to {}",
                        postgres.redacted_url, m.from, m.to
                    );
                    0
                }
                Err(e) => fail(1, format!("{}: {e}", postgres.redacted_url)),
            }
        }
        DbCommand::Import {
            data_dir,
            node_name,
            database,
        } => {
            let postgres = match open(database) {
                Ok(p) => p,
                Err(message) => return fail(2, message),
            };
            match crate::postgres::import::import(&postgres, &data_dir, &node_name).await {
                Ok(i) => {
                    println!(
                        "{}: imported {} agencies, {} citizens, {} checkpoints with {} check-ins, {} audit entries \
                         (chain of node {node_name:?}) from {}",
                        postgres.redacted_url,
                        i.agencies,
                        i.citizens,
                        i.checkpoints.0,
                        i.checkpoints.1,
                        i.audit_entries,
                        data_dir.display()
                    );
                    0
                }
                Err(e) => fail(1, format!("{}: {e}", postgres.redacted_url)),
            }
        }
        DbCommand::Seed { database, citizens } => {
            let postgres = match open(database) {
                Ok(p) => p,
                Err(message) => return fail(2, message),
            };
            match seed(&postgres, citizens).await {
                Ok(0) => {
                    println!(
                        "{}: citizens already there; nothing seeded",
                        postgres.redacted_url
                    );
                    0
                }
                Ok(n) => {
                    println!("{}: seeded {n} synthetic citizens", postgres.redacted_url);
                    0
                }
                Err(e) => fail(1, format!("{}: {e}", postgres.redacted_url)),
            }
        }
    }
}

/// Seed `count` synthetic citizens, schema-checked, into an empty `citizens` table; how many.
async fn seed(postgres: &std::sync::Arc<crate::postgres::Postgres>, count: usize) -> Result<usize, String> {
    use crate::store::CitizenStore;
    postgres.migrate().await.map_err(|e| e.to_string())?;
    let store = crate::postgres::citizens::PgCitizenStore::new(postgres.clone());
    if store.recount().await.map_err(|e| e.message)? > 0 {
        return Ok(0);
    }
    let schema = crate::schema::CitizenSchema::load(None).map_err(|e| e.to_string())?;
    let mut batch = Vec::with_capacity(10_000);
    for record in crate::dev::population::generate(count, 2021) {
        schema
            .validate(&record)
            .map_err(|e| format!("synthetic record invalid: {e:?}"))?;
        let id = record["citizen_id"].as_str().unwrap_or_default().to_string();
        batch.push((id, record));
        if batch.len() == 10_000 {
            store
                .put_many(std::mem::take(&mut batch))
                .await
                .map_err(|e| e.message)?;
        }
    }
    store.put_many(batch).await.map_err(|e| e.message)?;
    Ok(count)
}

/// `lienthong audit verify --database URL`: exit 0 with every chain's head, or 1 naming the first break.
pub async fn verify_command(database: DatabaseArgs) -> i32 {
    let postgres = match open(database) {
        Ok(p) => p,
        Err(message) => return fail(2, message),
    };
    let client = match postgres.pool().get().await {
        Ok(c) => c,
        Err(e) => return fail(1, format!("{}: {e}", postgres.redacted_url)),
    };
    let verified = match crate::postgres::audit::verify(&client).await {
        Ok(report) => crate::postgres::seals::verify_seals(&client)
            .await
            .map(|seals| (report, seals)),
        Err(broken) => Err(broken),
    };
    match verified {
        Ok((report, (seals, keys))) => {
            println!(
                "ok: {} chains, {} entries, {seals} seals",
                report.chains.len(),
                report.entries()
            );
            for key in keys {
                println!("  seals signed by public key {key}");
            }
            for (chain, node, entries, head) in &report.chains {
                println!("  chain {chain} node {node}: {entries} entries, head {head}");
            }
            0
        }
        Err(broken) => fail(1, format!("audit chain broken: {broken}")),
    }
}

/// `lienthong audit export --database URL`: every broker's entries, `from` inclusive, `to` exclusive; how
/// many were written.
pub async fn export(
    database: DatabaseArgs,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    out: &mut dyn std::io::Write,
) -> Result<u64, String> {
    let postgres = open(database)?;
    let client = postgres
        .pool()
        .get()
        .await
        .map_err(|e| format!("{}: {e}", postgres.redacted_url))?;
    crate::postgres::audit::export(&client, from, to, out)
        .await
        .map_err(|e| format!("{}: {e}", postgres.redacted_url))
}

fn open(args: DatabaseArgs) -> Result<std::sync::Arc<crate::postgres::Postgres>, String> {
    let config = PostgresConfig {
        url: args.database.unwrap_or_default(),
        ca_bundle: args.database_ca,
        ..Default::default()
    };
    config.validate().map_err(|(key, message)| {
        format!("--database{}: {message}", if key == "url" { "" } else { "-ca" })
    })?;
    crate::postgres::Postgres::open(&config).map_err(|e| format!("{}: {e}", redact_url(&config.url)))
}

fn fail(code: i32, message: String) -> i32 {
    eprintln!("lienthong: {message}");
    code
}
