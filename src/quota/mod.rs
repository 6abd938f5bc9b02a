//! Stage: quota. Per agency and purpose, an agency's plan limits calls per minute (burst), per day and per
//! month (volume). A request is metered when it reaches the store; over any limit it gets 429
//! `quota_exceeded` with `Retry-After` (seconds to the end of the exceeded window) and the
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers a served request also carries.
//!
//! Counting is exact under concurrency: one process owns the database, and the read-check-increment of the
//! three windows happens under one lock, so N concurrent calls against a limit L serve exactly min(N, L).
//! While the broker runs, the counters in memory are the authority; a background thread writes the
//! changed ones to sled (tree `quota`) every [`PERSIST_EVERY`], and closing writes the rest, so they survive
//! restarts. No request waits for sled: its writes can stall behind its own I/O buffers, and a stalled
//! tokio worker stalls every connection on it. A crash loses at most the last interval's counts — no
//! worse than sled's own flush interval — and the billing totals are recomputed from the audit trail by
//! `billing reconcile`. Day and month windows follow the calendar in
//! Vietnam (UTC+7); the minute window is the UTC minute.
//!
//! The same tree keeps, per month, the calls served and the calls refused for quota — the basis of the
//! monthly billing report, which `billing reconcile` recomputes from the audit trail.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{mpsc, Arc, Mutex, Weak};

use crate::exchange::RateInfo;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// Limits for one purpose (or `*`, any purpose). A missing limit is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Calls per minute (burst).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    /// Calls per calendar day (Vietnam time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    /// Calls per calendar month (Vietnam time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u64>,
}

/// An agency's plan: limits per purpose id, with `*` for every purpose not named. No plan = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Purpose id (or `*`) → limits.
    #[serde(default)]
    pub limits: BTreeMap<String, Limits>,
}

impl Plan {
    /// Read a plan from the registry's JSON (`null` = no plan).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ApiError> {
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(value.clone())
            .map_err(|e| ApiError::new(ErrorCode::InvalidPlan, e.to_string()))
    }

    /// The limits that apply to `purpose`.
    pub fn for_purpose(&self, purpose: &str) -> Limits {
        self.limits
            .get(purpose)
            .or_else(|| self.limits.get("*"))
            .copied()
            .unwrap_or_default()
    }
}

/// The windows counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The UTC minute.
    Minute,
    /// The calendar day in Vietnam.
    Day,
    /// The calendar month in Vietnam.
    Month,
}

pub(crate) use crate::clock::vietnam;

/// In declaration order: [`Calendar`] indexes its windows by discriminant.
const WINDOWS: [Window; 3] = [Window::Minute, Window::Day, Window::Month];

impl Window {
    fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    fn limit(self, limits: &Limits) -> Option<u64> {
        match self {
            Window::Minute => limits.per_minute,
            Window::Day => limits.per_day,
            Window::Month => limits.per_month,
        }
    }

    /// The window containing `now`: its label and its end.
    fn bounds(self, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        match self {
            Window::Minute => {
                let start = now
                    .with_second(0)
                    .and_then(|t| t.with_nanosecond(0))
                    .unwrap_or(now);
                (
                    start.format("%Y-%m-%dT%H:%M").to_string(),
                    start + Duration::minutes(1),
                )
            }
            Window::Day => {
                let local = now.with_timezone(&vietnam()).date_naive();
                let end = local.succ_opt().unwrap_or(local);
                (local.format("%Y-%m-%d").to_string(), midnight_vn(end))
            }
            Window::Month => {
                let local = now.with_timezone(&vietnam()).date_naive();
                let (y, m) = if local.month() == 12 {
                    (local.year() + 1, 1)
                } else {
                    (local.year(), local.month() + 1)
                };
                let end = NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(local);
                (local.format("%Y-%m").to_string(), midnight_vn(end))
            }
        }
    }
}

fn midnight_vn(day: NaiveDate) -> DateTime<Utc> {
    vietnam()
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
        .single()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The month label (`2026-11`) of a time, in Vietnam.
pub fn month_of(t: DateTime<Utc>) -> String {
    Window::Month.bounds(t).0
}

/// The UTC range `[start, end)` of a month label `YYYY-MM`: 400 `invalid_month` otherwise.
pub fn month_range(month: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| month.len() == 7)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidMonth,
                format!("{month:?} is not a month (YYYY-MM)"),
            )
        })?;
    let start = midnight_vn(first);
    let (_, end) = Window::Month.bounds(start);
    Ok((start, end))
}

/// The seam for quota counters: the in-memory windows persisted to sled ([`Quota`]) today; a shared
/// counter store (PostgreSQL, for several brokers) can implement it beside them without touching the
/// pipeline.
pub trait QuotaCounters: Send + Sync {
    /// Meter one call at `now` (the broker's clock). `Ok(Some(info))` when the plan limits this purpose,
    /// `Ok(None)` when unlimited, 429 `quota_exceeded` (with `Retry-After` and the rate-limit headers) when
    /// over any limit.
    fn meter<'a>(
        &'a self,
        agency: &'a str,
        plan: &'a Plan,
        purpose: &'a str,
        now: DateTime<Utc>,
    ) -> MeterFuture<'a>;

    /// Count the month's outcome of a metered call: `served` (2xx) or `refused` (429 for quota).
    fn record_outcome<'a>(
        &'a self,
        agency: &'a str,
        purpose: &'a str,
        kind: &'a str,
        at: DateTime<Utc>,
    ) -> OutcomeFuture<'a>;
}

/// The future of [`QuotaCounters::meter`], boxed so the trait stays object-safe.
pub type MeterFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<RateInfo>, (ApiError, Option<RateInfo>)>> + Send + 'a>,
>;

/// The future of [`QuotaCounters::record_outcome`].
pub type OutcomeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>;

impl QuotaCounters for Quota {
    fn meter<'a>(
        &'a self,
        agency: &'a str,
        plan: &'a Plan,
        purpose: &'a str,
        now: DateTime<Utc>,
    ) -> MeterFuture<'a> {
        // In memory, under one lock: no need to leave the thread.
        Box::pin(std::future::ready(self.meter_at(agency, plan, purpose, now)))
    }

    fn record_outcome<'a>(
        &'a self,
        agency: &'a str,
        purpose: &'a str,
        kind: &'a str,
        at: DateTime<Utc>,
    ) -> OutcomeFuture<'a> {
        let mut state = self.inner.state();
        let (month, _) = state.calendar(at).window(Window::Month);
        let key = total_key(kind, month, agency, purpose);
        let counted = state.value(&self.inner.tree, &key).map(|n| state.set(key, n + 1));
        Box::pin(std::future::ready(counted))
    }
}

/// Per-month totals for one agency and purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MonthTotals {
    /// Calls served (2xx after reaching the store).
    pub served: u64,
    /// Calls refused with 429 `quota_exceeded`.
    pub refused: u64,
}

/// How often changed counters are written to sled.
pub const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Counters kept in memory beyond this are dropped once persisted (past windows), and reloaded on use.
const CACHED_COUNTERS: usize = 10_000;

/// The counters.
pub struct Quota {
    inner: Arc<Counters>,
    /// Dropping it stops the persister thread.
    stop: Option<mpsc::Sender<()>>,
    persister: Option<std::thread::JoinHandle<()>>,
}

struct Counters {
    tree: sled::Tree,
    state: Mutex<CounterState>,
    /// One writer to sled at a time, so a later snapshot is never overwritten by an earlier one.
    persisting: Mutex<()>,
}

/// The counters' maps: keys are made by the broker, not by agencies, so a fast hasher will do.
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
struct CounterState {
    values: HashMap<String, u64, FastHash>,
    dirty: HashSet<String, FastHash>,
    /// The windows of the minute metered last: three date formats per request were a visible part of the
    /// metering step.
    calendar: Option<Calendar>,
}

/// The label and end of each window containing one UTC minute.
struct Calendar {
    minute: i64,
    /// As [`current_windows`] gives them, in [`WINDOWS`] order.
    windows: [(Window, String, DateTime<Utc>); 3],
}

impl Calendar {
    fn of(now: DateTime<Utc>) -> Self {
        Self {
            minute: now.timestamp().div_euclid(60),
            windows: current_windows(now),
        }
    }

    fn window(&self, window: Window) -> (&str, DateTime<Utc>) {
        let (_, label, end) = &self.windows[window as usize];
        (label, *end)
    }
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("quota", e)
}

fn use_key(agency: &str, purpose: &str, window: Window, label: &str) -> String {
    format!("use\u{0}{agency}\u{0}{purpose}\u{0}{}\u{0}{label}", window.name())
}

/// The three windows containing `now`: window, label, end.
pub fn current_windows(now: DateTime<Utc>) -> [(Window, String, DateTime<Utc>); 3] {
    WINDOWS.map(|window| {
        let (label, end) = window.bounds(now);
        (window, label, end)
    })
}

/// The name of a window as stored (`minute`, `day`, `month`).
pub fn window_name(window: Window) -> &'static str {
    window.name()
}

/// Given what each window has `used` so far (the order of [`current_windows`]), may one more call be
/// served? `Ok` with the tightest window's figures (`None` when unlimited), or 429 `quota_exceeded` with
/// `Retry-After` the end of the longest exceeded window. Every backend meters through this.
pub fn decide(
    limits: &Limits,
    purpose: &str,
    now: DateTime<Utc>,
    windows: &[(Window, String, DateTime<Utc>); 3],
    used: [u64; 3],
) -> Result<Option<RateInfo>, (ApiError, Option<RateInfo>)> {
    let mut tightest: Option<RateInfo> = None;
    let mut exceeded: Option<(Window, u64)> = None;
    for ((window, _, end), used) in windows.iter().zip(used) {
        let window = *window;
        let reset = (*end - now).num_seconds().max(1) as u64;
        if let Some(limit) = window.limit(limits) {
            if used >= limit {
                if exceeded.is_none_or(|(_, r)| reset > r) {
                    exceeded = Some((window, reset));
                }
                tightest = Some(RateInfo {
                    limit,
                    remaining: 0,
                    reset,
                });
                continue;
            }
            let remaining = limit - used - 1;
            if tightest.is_none_or(|t| remaining < t.remaining) {
                tightest = Some(RateInfo {
                    limit,
                    remaining,
                    reset,
                });
            }
        }
    }
    if let Some((window, reset)) = exceeded {
        let mut e = ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "the {} quota of purpose {purpose} is used up; retry in {reset} s",
                window.name()
            ),
        );
        e.retry_after = Some(reset);
        return Err((
            e,
            tightest.map(|t| RateInfo {
                remaining: 0,
                reset,
                ..t
            }),
        ));
    }
    Ok(tightest)
}

/// The key of a month's served or refused counter (`kind` = `served` or `refused`).
pub fn total_key(kind: &str, month: &str, agency: &str, purpose: &str) -> String {
    format!("{kind}\u{0}{month}\u{0}{agency}\u{0}{purpose}")
}

impl CounterState {
    /// The counter's value: from memory, or loaded from sled on first use.
    fn value(&mut self, tree: &sled::Tree, key: &str) -> Result<u64, ApiError> {
        if let Some(v) = self.values.get(key) {
            return Ok(*v);
        }
        let v = match tree.get(key.as_bytes()).map_err(store_error)? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => 0,
        };
        self.values.insert(key.to_string(), v);
        Ok(v)
    }

    fn set(&mut self, key: String, value: u64) {
        if !self.dirty.contains(&key) {
            self.dirty.insert(key.clone());
        }
        self.values.insert(key, value);
    }

    /// The windows containing `now`, formatted once per minute.
    fn calendar(&mut self, now: DateTime<Utc>) -> &Calendar {
        let minute = now.timestamp().div_euclid(60);
        let calendar = self.calendar.take().filter(|c| c.minute == minute);
        self.calendar
            .insert(calendar.unwrap_or_else(|| Calendar::of(now)))
    }
}

impl Counters {
    fn state(&self) -> std::sync::MutexGuard<'_, CounterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the changed counters to sled (not flushed: sled's flush, or the broker's on shutdown, does).
    fn persist(&self) -> Result<(), ApiError> {
        let _one_writer = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        {
            let mut state = self.state();
            if state.dirty.is_empty() {
                return Ok(());
            }
            let dirty = std::mem::take(&mut state.dirty);
            for key in &dirty {
                if let Some(v) = state.values.get(key) {
                    batch.insert(key.as_bytes(), &v.to_be_bytes());
                }
            }
            if state.values.len() > CACHED_COUNTERS {
                // Everything is clean now (dirty was taken above); what is needed again is reloaded.
                state.values.clear();
                for key in dirty {
                    state.dirty.remove(&key);
                }
            }
        }
        self.tree.apply_batch(batch).map_err(store_error)
    }
}

/// Persist every [`PERSIST_EVERY`] until the sender is dropped or the counters are gone.
fn run_persister(counters: Weak<Counters>, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(PERSIST_EVERY) {
        let Some(counters) = counters.upgrade() else {
            return;
        };
        if let Err(e) = counters.persist() {
            tracing::error!(error = %e.message, "quota counters not persisted; retrying");
        }
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.persister.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.inner.persist() {
            tracing::error!(error = %e.message, "quota counters not persisted on close");
        }
    }
}

impl Quota {
    /// Open the `quota` tree and start the thread that persists the counters.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let inner = Arc::new(Counters {
            tree: db.open_tree("quota")?,
            state: Mutex::default(),
            persisting: Mutex::new(()),
        });
        let (stop, stopped) = mpsc::channel();
        let weak = Arc::downgrade(&inner);
        let persister = std::thread::Builder::new()
            .name("quota-persist".into())
            .spawn(move || run_persister(weak, stopped))
            .map_err(sled::Error::Io)?;
        Ok(Self {
            inner,
            stop: Some(stop),
            persister: Some(persister),
        })
    }

    /// Write every changed counter to sled now (before a report reads sled, and on shutdown).
    pub fn persist(&self) -> Result<(), ApiError> {
        self.inner.persist()
    }

    /// [`QuotaCounters::meter`] at a given time (tests use it for window roll-over).
    pub fn meter_at(
        &self,
        agency: &str,
        plan: &Plan,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RateInfo>, (ApiError, Option<RateInfo>)> {
        let limits = plan.for_purpose(purpose);
        let mut state = self.inner.state();
        let windows = state.calendar(now).windows.clone();
        let mut used = [0; 3];
        for (slot, (window, label, _)) in used.iter_mut().zip(&windows) {
            *slot = state
                .value(&self.inner.tree, &use_key(agency, purpose, *window, label))
                .map_err(|e| (e, None))?;
        }
        let tightest = decide(&limits, purpose, now, &windows, used)?;
        let increments = windows
            .iter()
            .zip(used)
            .map(|((window, label, _), n)| (use_key(agency, purpose, *window, label), n + 1));
        for (key, value) in increments {
            state.set(key, value);
        }
        Ok(tightest)
    }

    /// Calls counted in the current windows for one agency and purpose (for the console and the API).
    pub fn usage(&self, agency: &str, purpose: &str) -> Result<BTreeMap<&'static str, u64>, ApiError> {
        let now = Utc::now();
        let mut state = self.inner.state();
        WINDOWS
            .into_iter()
            .map(|w| {
                let key = use_key(agency, purpose, w, &w.bounds(now).0);
                Ok((w.name(), state.value(&self.inner.tree, &key)?))
            })
            .collect()
    }

    /// Served and refused totals of a month, per (agency, purpose).
    pub fn month_totals(&self, month: &str) -> Result<BTreeMap<(String, String), MonthTotals>, ApiError> {
        self.persist()?;
        let mut out: BTreeMap<(String, String), MonthTotals> = BTreeMap::new();
        for kind in ["served", "refused"] {
            let prefix = format!("{kind}\u{0}{month}\u{0}");
            for item in self.inner.tree.scan_prefix(prefix.as_bytes()) {
                let (key, value) = item.map_err(store_error)?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let mut parts = key.split('\u{0}').skip(2);
                let (Some(agency), Some(purpose)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let n = <[u8; 8]>::try_from(value.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let t = out.entry((agency.to_string(), purpose.to_string())).or_default();
                if kind == "served" {
                    t.served = n;
                } else {
                    t.refused = n;
                }
            }
        }
        Ok(out)
    }

    /// Overwrite a month counter (operators repairing after a reconcile, and tamper tests).
    pub fn set_total(
        &self,
        kind: &str,
        month: &str,
        agency: &str,
        purpose: &str,
        value: u64,
    ) -> Result<(), ApiError> {
        self.inner
            .state()
            .set(total_key(kind, month, agency, purpose), value);
        self.persist()
    }
}

#[cfg(test)]
mod tests;
