//! Quota counters in PostgreSQL: exact across brokers. A metered call locks its counter rows
//! (`SELECT … FOR UPDATE`, in one order everywhere, so brokers queue rather than deadlock), checks them
//! with the same rule as the embedded counters (`quota::decide`) and increments them in the same
//! transaction, so N brokers together never serve more than a plan allows. A purpose without limits is
//! not counted here at all (nothing to enforce, no round trip).
//!
//! The month's served and refused totals (billing) are counted in `quota_totals` by the audit writer, in
//! the transaction that commits the calls' entries (`postgres::audit`): the totals cannot disagree with
//! the trail, and one update per batch rather than one commit per answer holds the totals' row.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Postgres;
use crate::error::ApiError;
use crate::quota::{
    current_windows, decide, window_name, MeterFuture, MonthTotals, OutcomeFuture, Plan, QuotaCounters,
};

/// The `quota_use` and `quota_totals` tables.
pub struct PgQuota {
    postgres: Arc<Postgres>,
}

impl PgQuota {
    /// The counters on `postgres`.
    pub fn new(postgres: Arc<Postgres>) -> Self {
        Self { postgres }
    }

    /// 503 `store_unavailable`; the cause is logged and kept for `/healthz`.
    fn failed(&self, cause: impl std::fmt::Display) -> ApiError {
        self.postgres.unavailable("quota", cause)
    }
}

impl PgQuota {
    /// Calls counted in the windows containing `now` for one agency and purpose, by every broker.
    pub async fn usage(
        &self,
        agency: &str,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<&'static str, u64>, ApiError> {
        let windows = current_windows(now);
        let names: Vec<&str> = windows.iter().map(|(w, _, _)| window_name(*w)).collect();
        let labels: Vec<&str> = windows.iter().map(|(_, label, _)| label.as_str()).collect();
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        let rows = client
            .query(
                "SELECT win, used FROM quota_use WHERE agency = $1 AND purpose = $2 \
                   AND (win, label) IN (SELECT * FROM unnest($3::text[], $4::text[]))",
                &[&agency, &purpose, &names, &labels],
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(names
            .iter()
            .map(|name| {
                let used = rows
                    .iter()
                    .find(|r| r.get::<_, &str>(0) == *name)
                    .map_or(0, |r| u64::try_from(r.get::<_, i64>(1)).unwrap_or(0));
                (*name, used)
            })
            .collect())
    }
}

impl PgQuota {
    /// Served and refused totals of a month, per (agency, purpose), counted by every broker.
    pub async fn month_totals(
        &self,
        month: &str,
    ) -> Result<BTreeMap<(String, String), MonthTotals>, ApiError> {
        let client = self.postgres.pool().get().await.map_err(|e| self.failed(e))?;
        let rows = client
            .query(
                "SELECT agency, purpose, kind, calls FROM quota_totals WHERE month = $1",
                &[&month],
            )
            .await
            .map_err(|e| self.failed(e))?;
        let mut out: BTreeMap<(String, String), MonthTotals> = BTreeMap::new();
        for row in rows {
            let calls = u64::try_from(row.get::<_, i64>(3)).unwrap_or(0);
            let totals = out.entry((row.get(0), row.get(1))).or_default();
            match row.get::<_, &str>(2) {
                "served" => totals.served = calls,
                "refused" => totals.refused = calls,
                _ => {}
            }
        }
        Ok(out)
    }
}

impl QuotaCounters for PgQuota {
    fn meter<'a>(
        &'a self,
        agency: &'a str,
        plan: &'a Plan,
        purpose: &'a str,
        now: DateTime<Utc>,
    ) -> MeterFuture<'a> {
        Box::pin(async move {
            let limits = plan.for_purpose(purpose);
            let windows = current_windows(now);
            if limits == crate::quota::Limits::default() {
                return decide(&limits, purpose, now, &windows, [0; 3]);
            }
            // Rows in one order (by window name) in every transaction.
            let mut keys: Vec<(&str, &str)> = windows
                .iter()
                .map(|(window, label, _)| (window_name(*window), label.as_str()))
                .collect();
            keys.sort_unstable();
            let names: Vec<&str> = keys.iter().map(|k| k.0).collect();
            let labels: Vec<&str> = keys.iter().map(|k| k.1).collect();
            let fail = |e: &dyn std::fmt::Display| (self.failed(e), None);
            let mut client = self.postgres.pool().get().await.map_err(|e| fail(&e))?;
            let tx = client.transaction().await.map_err(|e| fail(&e))?;
            tx.execute(
                "INSERT INTO quota_use (agency, purpose, win, label) \
                 SELECT $1, $2, w, l FROM unnest($3::text[], $4::text[]) AS t (w, l) \
                 ON CONFLICT DO NOTHING",
                &[&agency, &purpose, &names, &labels],
            )
            .await
            .map_err(|e| fail(&e))?;
            let rows = tx
                .query(
                    "SELECT win, used FROM quota_use \
                     WHERE agency = $1 AND purpose = $2 \
                       AND (win, label) IN (SELECT * FROM unnest($3::text[], $4::text[])) \
                     ORDER BY win FOR UPDATE",
                    &[&agency, &purpose, &names, &labels],
                )
                .await
                .map_err(|e| fail(&e))?;
            let mut used = [0u64; 3];
            for (slot, (window, _, _)) in used.iter_mut().zip(&windows) {
                let row = rows.iter().find(|r| r.get::<_, &str>(0) == window_name(*window));
                *slot = row.map_or(0, |r| u64::try_from(r.get::<_, i64>(1)).unwrap_or(u64::MAX));
            }
            // Over a limit: the transaction is dropped (rolled back), nothing counted.
            let rate = decide(&limits, purpose, now, &windows, used)?;
            tx.execute(
                "UPDATE quota_use SET used = used + 1 \
                 WHERE agency = $1 AND purpose = $2 \
                   AND (win, label) IN (SELECT * FROM unnest($3::text[], $4::text[]))",
                &[&agency, &purpose, &names, &labels],
            )
            .await
            .map_err(|e| fail(&e))?;
            tx.commit().await.map_err(|e| fail(&e))?;
            Ok(rate)
        })
    }

    /// Nothing to do here: the audit writer counts the call with its entry (module docs).
    fn record_outcome<'a>(
        &'a self,
        _agency: &'a str,
        _purpose: &'a str,
        _kind: &'a str,
        _at: DateTime<Utc>,
    ) -> OutcomeFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}
