//! The broker's shared state: one value built at start-up from the config and handed (as an `Arc`) to
//! every connection. Each field is one pipeline stage's long-lived part.

use std::collections::HashSet;
use std::path::PathBuf;

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::policy::Catalogue;
use crate::registry::Registry;
use crate::schema::CitizenSchema;
use crate::store::{CitizenStore, SledStore};
use crate::tls::TlsConfigHandle;

/// Why the broker could not start. The CLI prints it and exits with code 2 (config) or 1 (other).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS material is missing or unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The database could not be opened (locked by another process, corrupt, unwritable).
    #[error("database {path}: {message}")]
    Store {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Another process holds the database's lock (sled allows one process per database).
    #[error(
        "another lienthong is using data dir {0}: stop it first, or give this one another data dir \
         (`--data-dir` for the demo, `storage.data_dir` in the config); to change a running broker use its \
         admin API (`lienthong agency …`, `lienthong citizens import …`)"
    )]
    DataDirLocked(PathBuf),
    /// Something else at start-up, with its source named.
    #[error("{0}")]
    Other(String),
}

/// Everything a request needs, built once.
pub struct Broker {
    /// The configuration it was started with.
    pub config: Config,
    /// Live TLS server config (reloadable).
    pub tls: TlsConfigHandle,
    /// Fingerprints of the certificates allowed on the admin listener.
    pub admin_fingerprints: HashSet<String>,
    /// The agency registry.
    pub registry: Registry,
    /// The canonical citizen record schema, compiled once.
    pub schema: Arc<CitizenSchema>,
    /// The versions of the purpose catalogue; [`Broker::catalogue`] is the one in force now.
    pub catalogues: crate::catalogue::Catalogues,
    /// The clock every dated decision asks (tests move it).
    pub clock: crate::clock::Clock,
    /// The loaded connectors.
    pub connectors: crate::connector::ConnectorSet,
    /// Citizen records.
    pub store: Arc<dyn CitizenStore>,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Where the pipeline appends audit entries: `audit` itself, or the PostgreSQL trail.
    pub audit_sink: Arc<dyn crate::audit::AuditSink>,
    /// The PostgreSQL backend, with `storage.backend = "postgres"` (records and the audit trail there).
    pub postgres: Option<crate::postgres::Backend>,
    /// Quota counters and monthly billing totals.
    pub quota: crate::quota::Quota,
    /// Registered checkpoints and the check-in index.
    pub checkpoints: Arc<dyn crate::checkpoint::CheckpointStore>,
    /// Per-phone-number look-up limiter of the SMS channel.
    pub sms_limiter: crate::admission::PhoneLimiter,
    /// The sled database (one process per database: admin changes go through the running broker).
    pub db: sled::Db,
    /// Prometheus metrics, rendered at `GET /metrics` on the admin listener.
    pub metrics: crate::metrics::Metrics,
    /// Client certificates already read, by their hash.
    pub identities: crate::identity::IdentityCache,
    /// The key every agency-listener answer is signed with, and the published keys.
    pub answer_keys: crate::signed_answer::AnswerKeys,
    /// The EU DCC Document Signer, when `[dcc]` names one.
    pub dcc_signer: Option<crate::dcc::DocumentSigner>,
    /// The Document Signer certificates `POST /v1/dcc/verify` trusts (the broker's own and `dcc.trust_list`).
    pub dcc_trust: crate::dcc::TrustList,
    /// X-Road service codes and what they map to.
    pub xroad_services: crate::xroad_id::ServiceMap,
}

impl Broker {
    /// Open everything the config names. Fails fast, naming the file or key at fault.
    pub fn open(config: Config) -> Result<Self, StartError> {
        let metrics = crate::metrics::Metrics::new();
        let tls = TlsConfigHandle::new(config.tls.clone(), metrics.tls_chains.clone())?;
        let schema = Arc::new(
            CitizenSchema::load(config.catalogue.schema.as_deref())
                .map_err(|e| StartError::Other(format!("schema: {e}")))?,
        );
        let catalogue = Catalogue::load(config.catalogue.purposes.as_deref(), &schema)
            .map_err(|e| StartError::Other(format!("purpose catalogue: {e}")))?;
        let catalogue_origin = config.catalogue.purposes.as_deref().map_or_else(
            || "schemas/purposes.toml (embedded)".to_string(),
            |p| p.display().to_string(),
        );
        let admin_fingerprints = config
            .tls
            .admin_certs
            .iter()
            .map(|p| crate::identity::fingerprint_of_pem_file(p))
            .collect::<Result<HashSet<_>, _>>()?;
        let connectors = crate::connector::ConnectorSet::load(
            config.catalogue.connectors_dir.as_deref(),
            &schema,
            &catalogue,
        )
        .map_err(|e| StartError::Other(format!("connector {e}")))?;
        let xroad_services = crate::xroad_id::ServiceMap::load(&config.xroad, &catalogue, &connectors)?;
        let data_dir = &config.storage.data_dir;
        let store_err = |message: String| StartError::Store {
            path: data_dir.clone(),
            message,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| store_err(e.to_string()))?;
        // Before sled or the trail touch anything: a read-only data dir is refused up front, clearly.
        crate::store::probe_data_dir(data_dir, crate::store::START_PROBE_BYTES)
            .map_err(|e| store_err(crate::store::describe_probe_error(&e)))?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(config.storage.cache_mb.saturating_mul(1 << 20))
            .open()
            .map_err(|e| match is_lock_error(&e) {
                true => StartError::DataDirLocked(data_dir.clone()),
                false => store_err(describe_sled_error(e)),
            })?;
        let registry = Registry::open(&db).map_err(|e| store_err(describe_sled_error(e)))?;
        let postgres = match config.storage.backend {
            crate::config::StorageBackend::Sled => None,
            crate::config::StorageBackend::Postgres => Some(
                crate::postgres::Backend::open(&config, metrics.audit_commits.clone())
                    .map_err(|e| StartError::Other(format!("storage.postgres: {e}")))?,
            ),
        };
        // Citizen records: an upstream provider ([store] backend), else the storage backend's own.
        let store: Arc<dyn CitizenStore> = match (&config.store.backend, &config.store.upstream, &postgres) {
            (crate::config::StoreBackend::Upstream, Some(upstream), _) => Arc::new(
                crate::upstream::UpstreamStore::open(upstream, schema.clone(), metrics.upstream.clone())
                    .map_err(|e| StartError::Other(format!("store.upstream: {e}")))?,
            ),
            (_, _, Some(backend)) => backend.citizens.clone(),
            _ => Arc::new(SledStore::open(&db).map_err(|e| store_err(describe_sled_error(e)))?),
        };
        let quota = crate::quota::Quota::open(&db).map_err(|e| store_err(describe_sled_error(e)))?;
        let checkpoints: Arc<dyn crate::checkpoint::CheckpointStore> = match &postgres {
            Some(backend) => backend.checkpoints.clone(),
            None => Arc::new(
                crate::checkpoint::Checkpoints::open(&db).map_err(|e| store_err(describe_sled_error(e)))?,
            ),
        };
        let catalogues = crate::catalogue::Catalogues::open(
            &db,
            crate::catalogue::CatalogueVersion::new(catalogue, &catalogue_origin),
            &schema,
        )
        .map_err(|e| StartError::Other(format!("purpose catalogue: {e}")))?;
        for agency in registry.list() {
            catalogues.set_grants(&agency.code, &agency.granted_purposes);
        }
        let clock = crate::clock::Clock::default();
        let audit_options = crate::audit::AuditOptions {
            checkpoint_every: config.audit.checkpoint_every,
            clock: clock.clone(),
            key_dir: Some(config.audit.key_dir(data_dir)),
            witness: Some(config.audit.witness(data_dir)),
            commit_delay: std::time::Duration::from_micros(config.audit.commit_delay_us),
            ..Default::default()
        };
        let audit = AuditLog::open_with(&data_dir.join("audit"), db.clone(), audit_options)
            .map_err(|e| store_err(format!("audit trail: {e}")))?;
        let audit_sink: Arc<dyn crate::audit::AuditSink> = match &postgres {
            Some(backend) => backend.audit.clone(),
            None => audit.clone(),
        };
        let answer_keys = crate::signed_answer::AnswerKeys::open(&config.audit.key_dir(data_dir), data_dir)
            .map_err(|e| store_err(format!("answer-signing key: {e}")))?;
        let (dcc_signer, dcc_trust) = open_dcc(&config.dcc).map_err(StartError::Other)?;
        Ok(Self {
            config,
            tls,
            admin_fingerprints,
            registry,
            schema,
            catalogues,
            clock,
            connectors,
            store,
            audit,
            audit_sink,
            postgres,
            checkpoints,
            quota,
            sms_limiter: Default::default(),
            db,
            metrics,
            identities: Default::default(),
            answer_keys,
            dcc_signer,
            dcc_trust,
            xroad_services,
        })
    }

    /// The catalogue version in force now. A request takes it once, at its start, and keeps it.
    pub fn catalogue(&self) -> Arc<crate::catalogue::CatalogueVersion> {
        self.catalogues.at(self.clock.now())
    }

    /// The database's sticky I/O error, if it has one: sled keeps its first I/O error (a full disk, a
    /// read-only file system) for the life of the open database and fails every later write with it. The
    /// supervisor (`supervisor`) then reopens the database once the data dir is writable again;
    /// until then `/healthz` answers 503 `store_unavailable`.
    pub fn store_failure(&self) -> Option<String> {
        // `context` and `global_error` are public but hidden in sled 0.34 (pinned in Cargo.lock); they
        // read the one atomic that every sled write checks.
        self.db.context.global_error().err().map(|e| e.to_string())
    }

    /// Bring an external database up to date before serving: with PostgreSQL, run the migrations (a
    /// database newer than this broker is refused, naming both versions).
    pub async fn prepare_storage(self: &Arc<Self>) -> Result<(), String> {
        self.migrate_storage().await?;
        self.follow_shared_registry().await
    }

    /// With PostgreSQL: run the migrations and count the records.
    pub async fn migrate_storage(&self) -> Result<(), String> {
        match &self.postgres {
            Some(backend) => backend.prepare().await,
            None => Ok(()),
        }
    }

    /// With PostgreSQL: admin changes go to the shared registry first from now on, and this broker
    /// follows it (loaded once before this returns, then on every change).
    pub async fn follow_shared_registry(self: &Arc<Self>) -> Result<(), String> {
        let Some(backend) = &self.postgres else {
            return Ok(());
        };
        self.registry.share_through(backend.registry.clone());
        backend.registry.clone().follow(self).await.map_err(|e| {
            format!(
                "{}: loading the registry: {}",
                backend.postgres.redacted_url, e.message
            )
        })
    }

    /// Calls counted in the current windows for one agency and purpose: in PostgreSQL (every broker's) or
    /// the embedded counters.
    pub async fn quota_usage(
        &self,
        agency: &str,
        purpose: &str,
    ) -> Result<std::collections::BTreeMap<&'static str, u64>, crate::error::ApiError> {
        match &self.postgres {
            Some(backend) => backend.quota.usage(agency, purpose, self.clock.now()).await,
            None => self.quota.usage(agency, purpose),
        }
    }

    /// Where the pipeline meters quotas: the counters in PostgreSQL (exact across brokers) or the
    /// embedded ones.
    pub fn quota_counters(&self) -> &dyn crate::quota::QuotaCounters {
        match &self.postgres {
            Some(backend) => &*backend.quota,
            None => &self.quota,
        }
    }

    /// The external dependency that is down and why, for `/healthz`: `postgres` while the database does
    /// not answer.
    pub fn dependency_failure(&self) -> Option<(&'static str, String)> {
        let backend = self.postgres.as_ref()?;
        backend
            .postgres
            .health()
            .failure()
            .map(|cause| ("postgres", cause))
    }

    /// Flush what is buffered; called on graceful shutdown after the last request.
    pub async fn close(&self) {
        if let Err(e) = self.quota.persist() {
            tracing::error!(error = %e.message, "writing the quota counters on shutdown failed");
        }
        if let Err(e) = crate::store::durable_flush(&self.db).await {
            tracing::error!(error = %e, "flushing the database on shutdown failed");
        }
    }
}

/// sled reports a held lock as an `Other` I/O error "could not acquire lock on … WouldBlock".
fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// The Document Signer (if configured) and the verifier's trust list: the signer's own DSC first.
fn open_dcc(
    config: &crate::config::DccConfig,
) -> Result<(Option<crate::dcc::DocumentSigner>, crate::dcc::TrustList), String> {
    let signer = match (&config.dsc_cert, &config.dsc_key) {
        (Some(cert), Some(key)) => {
            Some(crate::dcc::DocumentSigner::load(cert, key).map_err(|e| format!("dcc.dsc_cert: {e}"))?)
        }
        _ => None,
    };
    let mut trust = crate::dcc::TrustList::default();
    if let Some(signer) = &signer {
        trust
            .add_der(signer.certificate_der())
            .map_err(|e| format!("dcc.dsc_cert: {e}"))?;
    }
    for path in &config.trust_list {
        trust
            .add_pem_file(path)
            .map_err(|e| format!("dcc.trust_list: {e}"))?;
    }
    Ok((signer, trust))
}

fn describe_sled_error(e: sled::Error) -> String {
    match e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            "locked by another process (is a broker already running on this data dir? sled allows one \
             process per database; use the admin API or stop the broker)"
                .into()
        }
        sled::Error::Corruption { .. } => format!("corrupt database, refusing to start: {e}"),
        other => other.to_string(),
    }
}

/// A cluster broker follows the shared registry into its own (`postgres::registry`).
impl crate::postgres::registry::Follower for Broker {
    fn replace_agencies(&self, agencies: Vec<crate::registry::Agency>) -> crate::store::StoreFuture<'_, ()> {
        Box::pin(async move {
            for agency in &agencies {
                self.catalogues.set_grants(&agency.code, &agency.granted_purposes);
            }
            self.registry.replace_all(agencies).await
        })
    }

    fn reload_tls(&self) -> Result<(), String> {
        self.tls.reload().map_err(|e| e.to_string())
    }
}
