//! Citizen records in PostgreSQL: one JSONB row per citizen, behind the same [`CitizenStore`] seam as the
//! embedded store. The broker still validates every record against the schema before it writes.
//!
//! An update is one transaction that locks the row (`SELECT … FOR UPDATE`), so writers on different
//! brokers queue on the row and each applies its change to the version the previous one committed; the
//! commit (`synchronous_commit = on`) comes before the answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::Postgres;
use crate::error::{ApiError, ErrorCode};
use crate::store::{Change, CitizenStore, StoreFuture, UpdateOutcome};

/// Rows written per `INSERT` when seeding or importing.
const PUT_CHUNK: usize = 1_000;

/// The `citizens` table.
pub struct PgCitizenStore {
    postgres: Arc<Postgres>,
    /// The row count as last counted (at start-up and after each `put_many`); [`CitizenStore::count`] is
    /// synchronous and only used to decide whether to seed.
    counted: AtomicUsize,
}

impl PgCitizenStore {
    /// The store on `postgres`; call [`Self::recount`] once the schema is migrated.
    pub fn new(postgres: Arc<Postgres>) -> Self {
        Self {
            postgres,
            counted: AtomicUsize::new(0),
        }
    }

    /// Count the rows again.
    pub async fn recount(&self) -> Result<usize, ApiError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM citizens", &[])
            .await
            .map_err(|e| self.failed(e))?;
        let n = usize::try_from(row.get::<_, i64>(0)).unwrap_or(usize::MAX);
        self.counted.store(n, Ordering::Relaxed);
        Ok(n)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, ApiError> {
        self.postgres.pool().get().await.map_err(|e| self.failed(e))
    }

    /// 503 `store_unavailable`; the cause is logged (once per change) and kept for `/healthz`.
    fn failed(&self, cause: impl std::fmt::Display) -> ApiError {
        self.postgres.unavailable("citizens", cause)
    }
}

impl CitizenStore for PgCitizenStore {
    fn get<'a>(&'a self, citizen_id: &'a str) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT record FROM citizens WHERE citizen_id = $1",
                    &[&citizen_id],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(row.map(|r| r.get::<_, Value>(0)))
        })
    }

    fn get_fields<'a>(&'a self, citizen_id: &'a str, keep: &'a [&'a str]) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Only the fields asked for leave the database.
            let row = client
                .query_opt(
                    "SELECT coalesce((SELECT jsonb_object_agg(key, value) FROM jsonb_each(record) \
                                      WHERE key = ANY($2)), '{}'::jsonb) \
                     FROM citizens WHERE citizen_id = $1",
                    &[&citizen_id, &keep],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(row.map(|r| r.get::<_, Value>(0)))
        })
    }

    fn update<'a>(
        &'a self,
        citizen_id: &'a str,
        mut change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            let row = tx
                .query_opt(
                    "SELECT record FROM citizens WHERE citizen_id = $1 FOR UPDATE",
                    &[&citizen_id],
                )
                .await
                .map_err(|e| self.failed(e))?;
            let Some(row) = row else {
                return Err(ApiError::new(
                    ErrorCode::CitizenNotFound,
                    "no citizen with that ID",
                ));
            };
            let mut record: Value = row.get(0);
            // A refusal drops the transaction: it rolls back and nothing is written.
            let outcome = change(&mut record)?;
            if let UpdateOutcome::Unchanged(_) = outcome {
                return Ok(outcome);
            }
            tx.execute(
                "UPDATE citizens SET record = $2, updated_at = now() WHERE citizen_id = $1",
                &[&citizen_id, &record],
            )
            .await
            .map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(outcome)
        })
    }

    fn put_many<'a>(&'a self, records: Vec<(String, Value)>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            for chunk in records.chunks(PUT_CHUNK) {
                let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
                let values: Vec<&Value> = chunk.iter().map(|(_, record)| record).collect();
                tx.execute(
                    "INSERT INTO citizens (citizen_id, record) \
                     SELECT * FROM unnest($1::text[], $2::jsonb[]) \
                     ON CONFLICT (citizen_id) DO UPDATE SET record = excluded.record, updated_at = now()",
                    &[&ids, &values],
                )
                .await
                .map_err(|e| self.failed(e))?;
            }
            tx.commit().await.map_err(|e| self.failed(e))?;
            self.recount().await?;
            Ok(())
        })
    }

    fn count(&self) -> usize {
        self.counted.load(Ordering::Relaxed)
    }
}
