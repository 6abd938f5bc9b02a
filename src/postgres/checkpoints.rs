//! Checkpoints and the check-in index in PostgreSQL, shared by a cluster: a checkpoint registered on one
//! broker is scanned at through any, and contact tracing sees every broker's check-ins.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Postgres;
use crate::checkpoint::{checkpoint_exists, key_time, Checkpoint, CheckpointStore};
use crate::error::ApiError;
use crate::store::StoreFuture;

/// The `checkpoints` and `checkins` tables.
pub struct PgCheckpoints {
    postgres: Arc<Postgres>,
}

impl PgCheckpoints {
    /// The checkpoints on `postgres`.
    pub fn new(postgres: Arc<Postgres>) -> Self {
        Self { postgres }
    }

    fn failed(&self, cause: impl std::fmt::Display) -> ApiError {
        self.postgres.unavailable("checkpoints", cause)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, ApiError> {
        self.postgres.pool().get().await.map_err(|e| self.failed(e))
    }

    async fn query_checkpoints(&self, sql: &str, key: &str) -> Result<Vec<Checkpoint>, ApiError> {
        let rows = self
            .client()
            .await?
            .query(sql, &[&key])
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|r| serde_json::from_value(r.get(0)).map_err(|e| self.failed(e)))
            .collect()
    }
}

impl CheckpointStore for PgCheckpoints {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Checkpoint>> {
        Box::pin(async move {
            let found = self
                .query_checkpoints("SELECT checkpoint FROM checkpoints WHERE id = $1", id)
                .await?;
            Ok(found.into_iter().next())
        })
    }

    fn for_agency<'a>(&'a self, agency: &'a str) -> StoreFuture<'a, Vec<Checkpoint>> {
        Box::pin(self.query_checkpoints(
            "SELECT checkpoint FROM checkpoints WHERE agency = $1 ORDER BY id",
            agency,
        ))
    }

    fn insert<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_value(checkpoint).map_err(|e| self.failed(e))?;
            let inserted = self
                .client()
                .await?
                .execute(
                    "INSERT INTO checkpoints (id, agency, checkpoint) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&checkpoint.id, &checkpoint.agency, &value],
                )
                .await
                .map_err(|e| self.failed(e))?;
            match inserted {
                0 => Err(checkpoint_exists(&checkpoint.id)),
                _ => Ok(()),
            }
        })
    }

    fn index<'a>(
        &'a self,
        checkpoint: &'a str,
        time: DateTime<Utc>,
        citizen: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    "INSERT INTO checkins (checkpoint, time, citizen_id) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                    &[&checkpoint, &key_time(time), &citizen],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn checkins<'a>(
        &'a self,
        checkpoint: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<(String, String)>> {
        Box::pin(async move {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT citizen_id, time FROM checkins \
                     WHERE checkpoint = $1 AND time >= $2 AND time < $3 ORDER BY time, citizen_id",
                    &[&checkpoint, &key_time(from), &key_time(to)],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}
