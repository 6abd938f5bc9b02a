//! The agency registry shared by a cluster's brokers. The `agencies` table is the source of truth; an admin
//! change on any broker is written there (with a new value of the `agencies_version` sequence) and
//! announced with `NOTIFY lienthong_registry` in the same transaction. Every broker `LISTEN`s and, on a
//! notification — or, as a backstop against a missed one (a dropped connection), when a once-a-second
//! check finds a newer version — reloads the table into its local registry, whose in-memory snapshot
//! every request reads. A suspend on one broker is refused on every broker within a second.
//!
//! A TLS reload (a new CRL) on one broker is announced on the same channel ([`TLS_RELOAD`]): every broker
//! reloads its own TLS files, which the operator has updated on each.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Postgres;
use crate::error::{ApiError, ErrorCode};
use crate::registry::{Agency, BillingClass, ClassChange, SharedRegistry};
use crate::store::StoreFuture;

/// What the follower changes in the broker it runs for: the local copy of the registry, and the TLS files.
pub trait Follower: Send + Sync + 'static {
    /// Make the local registry (and the purpose grants kept per agency) what the shared one holds.
    fn replace_agencies(&self, agencies: Vec<Agency>) -> StoreFuture<'_, ()>;
    /// Reload the TLS files (a new CRL), as another broker announced; the error says why the old stay.
    fn reload_tls(&self) -> Result<(), String>;
}

/// The `NOTIFY` channel of registry changes.
const CHANNEL: &str = "lienthong_registry";

/// The notification payload that asks every broker to reload its TLS files (not an agency code: `*` is
/// not allowed in one).
pub const TLS_RELOAD: &str = "*tls-reload";

/// How often the version is checked whatever the notifications say.
pub const VERSION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The `agencies` table.
pub struct PgRegistry {
    postgres: Arc<Postgres>,
}

impl PgRegistry {
    /// The registry on `postgres`.
    pub fn new(postgres: Arc<Postgres>) -> Self {
        Self { postgres }
    }

    fn failed(&self, cause: impl std::fmt::Display) -> ApiError {
        self.postgres.unavailable("registry", cause)
    }

    /// The registry's version: the last change's sequence value (0 when empty).
    pub async fn version(&self) -> Result<i64, ApiError> {
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM agencies", &[])
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row.get(0))
    }

    /// Every agency and the version they make up, read in one snapshot.
    pub async fn load(&self) -> Result<(i64, Vec<Agency>), ApiError> {
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        let rows = client
            .query("SELECT version, agency FROM agencies ORDER BY code", &[])
            .await
            .map_err(|e| self.failed(e))?;
        let mut version = 0;
        let mut agencies = Vec::with_capacity(rows.len());
        for row in rows {
            version = version.max(row.get::<_, i64>(0));
            agencies.push(serde_json::from_value(row.get(1)).map_err(|e| self.failed(e))?);
        }
        Ok((version, agencies))
    }

    /// Follow the shared registry into `broker`'s local one until the broker is gone: reload on each
    /// notification and whenever the version moved. The first load happens before this returns.
    pub async fn follow<F: Follower>(self: Arc<Self>, broker: &Arc<F>) -> Result<(), ApiError> {
        let first = match self.load().await {
            Ok((version, agencies)) => broker.replace_agencies(agencies).await.map(|()| version),
            Err(e) => Err(e),
        };
        // Followed even if the first load failed: the follower catches up once the database answers.
        let loaded = *first.as_ref().unwrap_or(&-1);
        let broker: Arc<dyn Follower> = broker.clone();
        tokio::spawn(self.follow_from(loaded, Arc::downgrade(&broker)));
        first.map(|_| ())
    }

    async fn follow_from(self: Arc<Self>, mut loaded: i64, broker: Weak<dyn Follower>) {
        let (notify, mut notified) = tokio::sync::mpsc::unbounded_channel();
        let mut listener: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            if listener.as_ref().is_none_or(|l| l.is_finished()) {
                listener = match self.postgres.listen(CHANNEL, notify.clone()).await {
                    Ok(l) => Some(l),
                    Err(cause) => {
                        tracing::debug!(%cause, "registry LISTEN failed; checking the version instead");
                        None
                    }
                };
            }
            let payload = tokio::select! {
                payload = notified.recv() => payload,
                () = tokio::time::sleep(VERSION_CHECK_EVERY) => None,
            };
            let Some(broker) = broker.upgrade() else {
                if let Some(l) = listener {
                    l.abort();
                }
                return;
            };
            if payload.as_deref() == Some(TLS_RELOAD) {
                match broker.reload_tls() {
                    Ok(()) => tracing::info!("TLS reloaded: announced by another broker"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload announced by another broker failed; the old config stays")
                    }
                }
                continue;
            }
            match self.version().await {
                Ok(version) if version == loaded => continue,
                Ok(_) => {}
                Err(_) => continue,
            }
            match self.load().await {
                Ok((version, agencies)) => match broker.replace_agencies(agencies).await {
                    Ok(()) => {
                        tracing::debug!(version, "registry reloaded from PostgreSQL");
                        loaded = version;
                    }
                    Err(e) => tracing::error!(error = %e.message, "the local registry copy failed"),
                },
                Err(_) => continue,
            }
        }
    }
}

impl PgRegistry {
    /// Every billing-class change of an agency made on any broker, oldest first.
    pub async fn class_changes(&self, code: &str) -> Result<Vec<ClassChange>, ApiError> {
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        let rows = client
            .query(
                "SELECT change FROM billing_class_changes WHERE agency = $1 ORDER BY id",
                &[&code],
            )
            .await
            .map_err(|e| self.failed(e))?;
        rows.into_iter()
            .map(|row| serde_json::from_value(row.get(0)).map_err(|e| self.failed(e)))
            .collect()
    }

    /// Ask every broker to reload its TLS files (after this one did).
    pub async fn announce_tls_reload(&self) -> Result<(), ApiError> {
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &TLS_RELOAD])
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

impl SharedRegistry for PgRegistry {
    fn publish<'a>(&'a self, agency: &'a Agency, new: bool) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_value(agency).map_err(|e| self.failed(e))?;
            let mut client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            // The class it had, to date a billing-class change for every broker's billing.
            let class_before = if new {
                None
            } else {
                tx.query_opt(
                    "SELECT agency->'billing_class' FROM agencies WHERE code = $1 FOR UPDATE",
                    &[&agency.code],
                )
                .await
                .map_err(|e| self.failed(e))?
                .map(|row| serde_json::from_value::<BillingClass>(row.get(0)).unwrap_or_default())
            };
            let sql = if new {
                "INSERT INTO agencies (code, agency, version) VALUES ($1, $2, nextval('agencies_version')) \
                 ON CONFLICT (code) DO NOTHING"
            } else {
                "INSERT INTO agencies (code, agency, version) VALUES ($1, $2, nextval('agencies_version')) \
                 ON CONFLICT (code) DO UPDATE SET agency = excluded.agency, version = excluded.version"
            };
            let written = tx
                .execute(sql, &[&agency.code, &value])
                .await
                .map_err(|e| self.failed(e))?;
            if written == 0 {
                return Err(ApiError::new(
                    ErrorCode::AgencyExists,
                    format!("agency {} is already registered", agency.code),
                ));
            }
            if let Some(from) = class_before.filter(|from| *from != agency.billing_class) {
                let change = ClassChange {
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    from,
                    to: agency.billing_class,
                };
                let change = serde_json::to_value(&change).map_err(|e| self.failed(e))?;
                tx.execute(
                    "INSERT INTO billing_class_changes (agency, change) VALUES ($1, $2)",
                    &[&agency.code, &change],
                )
                .await
                .map_err(|e| self.failed(e))?;
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &agency.code])
                .await
                .map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(())
        })
    }
}
