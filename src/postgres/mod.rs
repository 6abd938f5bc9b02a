//! Storage backend: PostgreSQL, shared by every broker of a cluster (`[storage] backend = "postgres"`).
//!
//! What lives in the database with this backend: citizen records ([`citizens`], JSONB, still validated
//! against the schema in the broker), the audit trail ([`audit`]: one hash chain per broker start in a
//! shared append-only table, group-committed) and its signed seals ([`seals`]), the quota counters
//! ([`quota`], exact across brokers), the agency registry ([`registry`], followed by every broker through
//! LISTEN/NOTIFY), checkpoints with their check-in index ([`checkpoints`]), and closed billing months
//! ([`billing`]).
//!
//! The connection URL may carry a password: it is never logged or answered. Every message that names the
//! database names it through [`redact_url`].

pub mod audit;
pub mod billing;
pub mod checkpoints;
pub mod citizens;
pub mod import;
pub mod migrate;
pub mod quota;
pub mod registry;
pub mod seals;

pub use crate::config::postgres::{redact_url, PostgresConfig};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// A connection pool to the cluster's database, and what the broker last saw of it.
pub struct Postgres {
    pool: Pool,
    /// How to open a connection outside the pool (the registry's `LISTEN`).
    connect: Connect,
    health: Arc<Health>,
    /// The URL as it may be shown.
    pub redacted_url: String,
}

/// Whether the database answered the last time anyone asked (requests and a probe once a second).
#[derive(Default)]
pub struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    /// Note a failure; the cause is logged once per change, never with the password.
    pub fn failed(&self, cause: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.as_deref() != Some(cause) {
            tracing::error!(%cause, "PostgreSQL failed");
        }
        *failure = Some(cause.to_string());
    }

    /// Note a success.
    pub fn ok(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.take().is_some() {
            tracing::info!("PostgreSQL answers again");
        }
    }

    /// The last failure, while it lasts.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How often the health probe asks the database.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl Postgres {
    /// Build the pool (no connection is made yet) and start the health probe. Call within a tokio
    /// runtime.
    pub fn open(config: &PostgresConfig) -> Result<Arc<Self>, String> {
        let connect = Connect::new(config)?;
        let pool = connect.pool(config.pool_size)?;
        let postgres = Arc::new(Self {
            pool,
            connect,
            health: Arc::default(),
            redacted_url: redact_url(&config.url),
        });
        let weak = Arc::downgrade(&postgres);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(postgres) = weak.upgrade() else { return };
                postgres.probe().await;
            }
        });
        Ok(postgres)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// 503 `store_unavailable` for a failed query on `store` (`citizens`, `quota`, …): the cause is kept
    /// for `/healthz` and logged with the redacted URL, never answered.
    pub fn unavailable(&self, store: &'static str, cause: impl std::fmt::Display) -> crate::error::ApiError {
        let cause = cause.to_string();
        self.health.failed(&cause);
        crate::store::unavailable(store, format!("{}: {cause}", self.redacted_url))
    }

    /// What requests and the probe last saw.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Ask the database for `SELECT 1` and note the outcome.
    pub async fn probe(&self) {
        let asked = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.simple_query("SELECT 1").await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PROBE_EVERY, asked).await {
            Ok(Ok(_)) => self.health.ok(),
            Ok(Err(cause)) => self.health.failed(&cause),
            Err(_) => self.health.failed("no answer within a second"),
        }
    }

    /// Run the migrations (start-up and `lienthong db migrate`).
    pub async fn migrate(&self) -> Result<migrate::Migrated, migrate::MigrateError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| migrate::MigrateError::Database(format!("{}: {e}", self.redacted_url)))?;
        migrate::migrate(&mut client).await
    }
}

/// Everything a broker keeps in PostgreSQL: the pool, the citizen store, this start's audit chain.
pub struct Backend {
    /// The pool and its health.
    pub postgres: Arc<Postgres>,
    /// Citizen records.
    pub citizens: Arc<citizens::PgCitizenStore>,
    /// The audit writer of this start's chain.
    pub audit: Arc<audit::PgAuditSink>,
    /// Quota counters, exact across brokers.
    pub quota: Arc<quota::PgQuota>,
    /// The agency registry every broker follows.
    pub registry: Arc<registry::PgRegistry>,
    /// Checkpoints and the check-in index.
    pub checkpoints: Arc<checkpoints::PgCheckpoints>,
    /// This broker's name in the audit trail and on the seals it signs.
    pub node: String,
    /// Where this broker's signing key (`checkpoint.key`) is: seals and closed billing months.
    pub key_dir: std::path::PathBuf,
}

impl Backend {
    /// Build the pool and start the audit writer, its commits counted in `audit_commits` (nothing is asked
    /// of the database yet). Within a tokio runtime.
    pub fn open(
        config: &crate::config::Config,
        audit_commits: crate::metrics::AuditCommitMetrics,
    ) -> Result<Self, String> {
        let settings = &config.storage.postgres;
        let postgres = Postgres::open(settings)?;
        let node = if settings.node_name.is_empty() {
            config.agency_listener.addr.clone()
        } else {
            settings.node_name.clone()
        };
        let key_dir = config.audit.key_dir(&config.storage.data_dir);
        seals::start_sealer(
            &postgres,
            key_dir.clone(),
            node.clone(),
            Duration::from_millis(settings.seal_every_ms),
        );
        Ok(Self {
            citizens: Arc::new(citizens::PgCitizenStore::new(postgres.clone())),
            audit: Arc::new(audit::PgAuditSink::start(
                postgres.clone(),
                node.clone(),
                audit_commits,
            )),
            quota: Arc::new(quota::PgQuota::new(postgres.clone())),
            registry: Arc::new(registry::PgRegistry::new(postgres.clone())),
            checkpoints: Arc::new(checkpoints::PgCheckpoints::new(postgres.clone())),
            postgres,
            node,
            key_dir,
        })
    }

    /// Migrate the schema and count the records; before the broker serves.
    pub async fn prepare(&self) -> Result<(), String> {
        let migrated = self
            .postgres
            .migrate()
            .await
            .map_err(|e| format!("{}: {e}", self.postgres.redacted_url))?;
        let citizens = self.citizens.recount().await.map_err(|e| {
            format!(
                "{}: counting citizen records: {}",
                self.postgres.redacted_url, e.message
            )
        })?;
        tracing::info!(
            database = %self.postgres.redacted_url,
            schema_version = migrated.to,
            citizens,
            "PostgreSQL backend ready"
        );
        Ok(())
    }
}

/// The parsed connection settings and the TLS connector (verified against `ca_bundle` when it is set).
#[derive(Clone)]
struct Connect {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    timeout: Duration,
}

impl Connect {
    fn new(settings: &PostgresConfig) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| format!("{}: {e}", redact_url(&settings.url)))?;
        let timeout = Duration::from_millis(settings.connect_timeout_ms);
        config.connect_timeout(timeout);
        let tls = match &settings.ca_bundle {
            Some(ca_bundle) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls_connector(ca_bundle)?)
            }
            None => None,
        };
        Ok(Self { config, tls, timeout })
    }

    fn pool(&self, size: usize) -> Result<Pool, String> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let config = self.config.clone();
        let manager = match &self.tls {
            Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .build()
            .map_err(|e| e.to_string())
    }
}

impl Postgres {
    /// A connection of its own (not pooled) that `LISTEN`s on `channel`: each notification is passed on
    /// to `notified`. The task ends (and the connection closes) when the connection fails or `notified`
    /// is closed.
    pub async fn listen(
        &self,
        channel: &str,
        notified: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        match &self.connect.tls {
            Some(tls) => listen_on(&self.connect.config, tls.clone(), channel, notified).await,
            None => listen_on(&self.connect.config, tokio_postgres::NoTls, channel, notified).await,
        }
    }
}

async fn listen_on<T>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    notified: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<tokio::task::JoinHandle<()>, String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let mut messages = Box::pin(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if notified.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    // The connection must be driven for the LISTEN to be answered.
    let listen = format!("LISTEN {channel}");
    let listened = tokio::select! {
        r = client.batch_execute(&listen) => r.map_err(|e| e.to_string()),
        () = &mut messages => Err("the connection closed".to_string()),
    };
    listened?;
    Ok(tokio::spawn(async move {
        messages.await;
        drop(client);
    }))
}

fn tls_connector(ca_bundle: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let describe =
        |e: &dyn std::fmt::Display| format!("storage.postgres.ca_bundle {}: {e}", ca_bundle.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::read_certs(ca_bundle).map_err(|e| describe(&e))? {
        roots.add(cert).map_err(|e| describe(&e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| describe(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redact_url("postgres://broker:s3cret@db.example:5432/lienthong"),
            "postgres://broker:***@db.example:5432/lienthong"
        );
        assert_eq!(
            redact_url("postgresql://broker@db/lienthong?password=s3cret&sslmode=require"),
            "postgresql://broker@db/lienthong?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("host=db user=broker password=s3cret dbname=lienthong"),
            "host=db user=broker password=*** dbname=lienthong"
        );
        assert_eq!(redact_url("postgres://broker@db/x"), "postgres://broker@db/x");
    }
}
