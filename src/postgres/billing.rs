//! Closed billing months in PostgreSQL: a month is closed once for the whole cluster (`billing_closed`,
//! append-only like the trail), whichever broker closes it; every broker answers the same frozen month.
//! The month is stored as the JSON `billing` makes of it (this module does not read it).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Postgres;
use crate::error::ApiError;

/// The closed month, if any broker closed it.
pub async fn closed<T: DeserializeOwned>(postgres: &Postgres, month: &str) -> Result<Option<T>, ApiError> {
    let failed = |e: &dyn std::fmt::Display| postgres.unavailable("billing", e);
    let client = postgres.pool().get().await.map_err(|e| failed(&e))?;
    let row = client
        .query_opt("SELECT closed FROM billing_closed WHERE month = $1", &[&month])
        .await
        .map_err(|e| failed(&e))?;
    row.map(|r| serde_json::from_value(r.get(0)).map_err(|e| failed(&e)))
        .transpose()
}

/// Store a closed month, committed before this returns; `false` when another close got there first.
pub async fn store_closed(
    postgres: &Postgres,
    month: &str,
    closed: &impl Serialize,
) -> Result<bool, ApiError> {
    let failed = |e: &dyn std::fmt::Display| postgres.unavailable("billing", e);
    let value = serde_json::to_value(closed).map_err(ApiError::internal)?;
    let client = postgres.pool().get().await.map_err(|e| failed(&e))?;
    let stored = client
        .execute(
            "INSERT INTO billing_closed (month, closed) VALUES ($1, $2) ON CONFLICT (month) DO NOTHING",
            &[&month, &value],
        )
        .await
        .map_err(|e| failed(&e))?;
    Ok(stored == 1)
}
