//! Stage: store, upstream provider mode (`[store] backend = "upstream"`). The citizen store is a
//! population database the broker does not own, reached over HTTPS with mTLS: the broker presents its own
//! client certificate and trusts only the provider's CA. Registry, quota and audit stay local.
//!
//! [`UpstreamStore`] implements the [`CitizenStore`] seam with what a remote system can do: read the named
//! top-level fields of one citizen ([`CitizenStore::get_fields`]: only what the request releases is asked),
//! and append one entry to a history list idempotently on its `source_record_id`
//! ([`CitizenStore::append_history`]). How those become the provider's requests is a provider file
//! ([`provider`]). Whatever the provider answers outside what was asked is dropped (and counted); the
//! rest is checked against the canonical schema before anything is released.
//!
//! Failure behaviour: per-call timeout, bounded retries (reads, and writes — idempotent by
//! `source_record_id`), a circuit breaker ([`breaker`]); 503 `upstream_unavailable` (with `Retry-After`),
//! 504 `upstream_timeout`, 502 `upstream_error`. The provider's own error text is logged, never answered.
//! A write is acknowledged only after the provider acknowledged it.

pub mod breaker;
pub mod client;
pub mod provider;

pub use crate::config::upstream::UpstreamConfig;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::UpstreamMetrics;
use crate::schema::CitizenSchema;
use crate::store::{Change, CitizenStore, StoreFuture, UpdateOutcome, Validate};

use breaker::{Breaker, Circuit};
use client::{Answer, Failure, ProviderClient};
use provider::{Fill, Provider};

tokio::task_local! {
    /// The W3C `traceparent` of the request being answered, passed on to the provider.
    static TRACEPARENT: Option<String>;
}

/// Run `f` (a request's front door) with `traceparent` as the trace every upstream call continues.
pub async fn with_trace<F: std::future::Future>(traceparent: Option<String>, f: F) -> F::Output {
    TRACEPARENT.scope(traceparent, f).await
}

/// A valid W3C `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`, not all zeros), or `None`.
pub fn parse_traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    ok.then(|| parts.join("-"))
}

/// A new trace (a request that came without one).
pub fn new_traceparent() -> String {
    format!("00-{}-{}-01", random_hex(16), random_hex(8))
}

/// The same trace, with the broker's own span as the parent of the provider's.
fn child_traceparent(parent: &str) -> String {
    let mut parts: Vec<String> = parent.split('-').map(str::to_string).collect();
    if parts.len() == 4 {
        parts[2] = random_hex(8);
    }
    parts.join("-")
}

fn random_hex(bytes: usize) -> String {
    loop {
        let s: String = (0..bytes).map(|_| format!("{:02x}", fastrand::u8(..))).collect();
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

/// The citizen store of a provider system, reached over HTTPS with mTLS.
pub struct UpstreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Provider,
    client: ProviderClient,
    breaker: Breaker,
    retries: u32,
    metrics: UpstreamMetrics,
    /// The stored top-level fields (what a whole-record read asks for).
    stored_fields: Vec<String>,
    /// The canonical schema: a provider's answer is a partial record ([`CitizenSchema::validate_partial`]).
    schema: Arc<CitizenSchema>,
    reachable: AtomicBool,
}

impl UpstreamStore {
    /// Connect to the provider the config names (lazily: nothing is dialled until the first call) and
    /// start probing its health path.
    pub fn open(
        config: &UpstreamConfig,
        schema: Arc<CitizenSchema>,
        metrics: UpstreamMetrics,
    ) -> Result<Self, String> {
        let provider = Provider::load(&config.provider, &schema).map_err(|e| format!("provider file {e}"))?;
        let client = ProviderClient::new(config)?;
        let stored_fields = schema
            .field_paths()
            .iter()
            .filter(|p| !p.contains(['.', '[']) && !schema.derived_fields().contains(*p))
            .cloned()
            .collect();
        let inner = Arc::new(Inner {
            provider,
            client,
            breaker: Breaker::new(
                config.breaker_failures,
                Duration::from_millis(config.breaker_open_ms),
            ),
            retries: config.retries,
            metrics,
            stored_fields,
            schema,
            reachable: AtomicBool::new(true),
        });
        inner.metrics.set_reachable(true);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(
                Arc::downgrade(&inner),
                Duration::from_millis(config.probe_interval_ms),
            ));
        }
        tracing::info!(provider = %inner.provider.name, url = %config.url, "citizen store: upstream provider");
        Ok(Self { inner })
    }

    /// The provider's name (its file's `name`).
    pub fn provider(&self) -> &str {
        &self.inner.provider.name
    }
}

/// Probe the provider's health path every `every` while the store lives: `/healthz` and the
/// `lienthong_upstream_reachable` gauge follow it, and an open circuit closes as soon as it answers.
async fn probe(store: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = store.upgrade() else { return };
        let started = Instant::now();
        let path = inner.provider.health_path.clone();
        let outcome = inner
            .client
            .call(hyper::Method::GET, &path, "application/json", None, None)
            .await;
        inner.metrics.observe_call("health", started.elapsed());
        match outcome {
            Ok(a) if a.status == 200 => {
                if inner.breaker.circuit() == Circuit::Open {
                    inner.breaker.success();
                    inner.metrics.set_circuit_state(Circuit::Closed.gauge());
                    tracing::info!(provider = %inner.provider.name, "upstream provider answers again: circuit closed");
                }
                inner.set_reachable(true);
            }
            Ok(a) => {
                tracing::warn!(provider = %inner.provider.name, status = a.status, "upstream health probe answered");
                inner.set_reachable(false);
            }
            Err(f) => {
                // A certificate problem is named every time: it will not fix itself.
                if matches!(f, Failure::Tls(_)) {
                    tracing::error!(provider = %inner.provider.name, cause = %f, "upstream provider refused: TLS");
                }
                inner.set_reachable(false);
            }
        }
    }
}

impl Inner {
    fn set_reachable(&self, reachable: bool) {
        let was = self.reachable.swap(reachable, Ordering::Relaxed);
        self.metrics.set_reachable(reachable);
        if was && !reachable {
            tracing::warn!(provider = %self.provider.name, "upstream provider unreachable");
        } else if !was && reachable {
            tracing::info!(provider = %self.provider.name, "upstream provider reachable again");
        }
    }

    /// One canonical operation as provider calls: the breaker asked first, then up to `1 + retries`
    /// attempts for failures that may pass (refused, timed out, lost, 5xx). Answers (2xx and the
    /// provider's 4xx) come back as they are; failures become the agency's 502, 503 or 504.
    async fn exchange(
        &self,
        call: &'static str,
        method: hyper::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(Answer, u32), ApiError> {
        let started = Instant::now();
        let traceparent = TRACEPARENT
            .try_with(|t| t.clone())
            .ok()
            .flatten()
            .map(|t| child_traceparent(&t));
        let mut last: Option<ApiError> = None;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(25 << attempt.min(4))).await;
            }
            if let Err(wait) = self.breaker.admit() {
                self.metrics.count_error("circuit_open");
                let mut e = ApiError::new(ErrorCode::UpstreamUnavailable, UNAVAILABLE);
                e.retry_after = Some(wait.as_secs().max(1));
                // The breaker's refusal is the answer: a retry now would be refused too.
                last = Some(
                    last.filter(|l| l.code != ErrorCode::UpstreamUnavailable)
                        .unwrap_or(e),
                );
                break;
            }
            let in_flight = self.metrics.call_in_flight();
            let outcome = self
                .client
                .call(
                    method.clone(),
                    path,
                    &self.provider.content_type,
                    body.clone(),
                    traceparent.as_deref(),
                )
                .await;
            drop(in_flight);
            let failure = match outcome {
                Ok(answer) if answer.status < 500 => {
                    self.breaker.success();
                    self.metrics.set_circuit_state(Circuit::Closed.gauge());
                    self.set_reachable(true);
                    self.metrics.observe_call(call, started.elapsed());
                    return Ok((answer, attempt));
                }
                Ok(answer) => {
                    tracing::warn!(provider = %self.provider.name, status = answer.status, attempt, "upstream provider answered with a server error");
                    self.metrics.count_error("provider_5xx");
                    let code = if matches!(answer.status, 503 | 429) {
                        ErrorCode::UpstreamUnavailable
                    } else if answer.status == 504 {
                        ErrorCode::UpstreamTimeout
                    } else {
                        ErrorCode::UpstreamError
                    };
                    self.set_reachable(true);
                    answer_error(code)
                }
                Err(failure) => {
                    self.metrics.count_error(failure.kind());
                    match &failure {
                        Failure::Tls(_) => {
                            tracing::error!(provider = %self.provider.name, cause = %failure, "upstream provider refused: TLS")
                        }
                        _ => {
                            tracing::warn!(provider = %self.provider.name, cause = %failure, attempt, "upstream call failed")
                        }
                    }
                    if !matches!(failure, Failure::Lost(_)) {
                        self.set_reachable(false);
                    }
                    let retry = !matches!(failure, Failure::Tls(_));
                    let e = answer_error(match failure {
                        Failure::Unavailable(_) => ErrorCode::UpstreamUnavailable,
                        Failure::Timeout => ErrorCode::UpstreamTimeout,
                        Failure::Tls(_) | Failure::Lost(_) => ErrorCode::UpstreamError,
                    });
                    if !retry {
                        self.breaker.failure();
                        self.metrics.set_circuit_state(self.breaker.circuit().gauge());
                        last = Some(e);
                        break;
                    }
                    e
                }
            };
            if self.breaker.failure() {
                tracing::warn!(provider = %self.provider.name, "upstream circuit opened");
            }
            self.metrics.set_circuit_state(self.breaker.circuit().gauge());
            last = Some(failure);
        }
        self.metrics.observe_call(call, started.elapsed());
        Err(last.unwrap_or_else(|| answer_error(ErrorCode::UpstreamError)))
    }

    /// A provider answer that is not a success: the canonical answer the provider file maps it to, or
    /// 502 `upstream_error`. The provider's own text goes to the log only.
    fn refusal(&self, answer: &Answer) -> ApiError {
        let code = self.provider.error_code_of(&answer.body);
        provider::mapped_error(&self.provider, code.as_deref()).unwrap_or_else(|| {
            self.metrics.count_error("bad_answer");
            tracing::warn!(
                provider = %self.provider.name,
                status = answer.status,
                provider_code = code.as_deref().unwrap_or("-"),
                "upstream provider refused the call"
            );
            answer_error(ErrorCode::UpstreamError)
        })
    }

    /// Keep only the asked top-level fields of a provider's record (counting the rest), then check what
    /// is left against the canonical schema: 502 `upstream_error` when it does not hold.
    fn minimise(&self, mut record: Value, keep: &[&str]) -> Result<Value, ApiError> {
        let Some(map) = record.as_object_mut() else {
            return Err(self.bad_answer("the record is not an object"));
        };
        let before = map.len();
        map.retain(|name, _| keep.contains(&name.as_str()));
        let dropped = before - map.len();
        if dropped > 0 {
            self.metrics.count_dropped_fields(dropped);
            tracing::info!(provider = %self.provider.name, dropped, "dropped fields the provider answered unasked");
        }
        if let Err(violation) = self.schema.validate_partial(&record) {
            let at = violation.pointer;
            return Err(self.bad_answer(&format!("breaks the canonical schema at {at:?}")));
        }
        Ok(record)
    }

    fn bad_answer(&self, what: &str) -> ApiError {
        self.metrics.count_error("bad_answer");
        tracing::warn!(provider = %self.provider.name, problem = what, "malformed answer from the upstream provider");
        answer_error(ErrorCode::UpstreamError)
    }

    async fn read(&self, citizen_id: &str, keep: &[&str]) -> Result<Option<Value>, ApiError> {
        let fill = Fill {
            citizen_id,
            fields: keep,
            ..Fill::default()
        };
        let read = &self.provider.read;
        let path = self.provider.path(read, &fill);
        let body = self.provider.body(read, &fill);
        let (answer, _) = self.exchange("read", read.method.clone(), &path, body).await?;
        if !(200..300).contains(&answer.status) {
            return match self.refusal(&answer) {
                e if e.code == ErrorCode::CitizenNotFound => Ok(None),
                e => Err(e),
            };
        }
        let record = self
            .provider
            .record(&answer.body)
            .map_err(|problem| self.bad_answer(&problem))?;
        self.minimise(record, keep).map(Some)
    }

    async fn append(
        &self,
        citizen_id: &str,
        list: &'static str,
        entry: Value,
    ) -> Result<UpdateOutcome, ApiError> {
        let Some(call) = &self.provider.append else {
            tracing::warn!(provider = %self.provider.name, "a write reached a provider that takes none through the broker");
            return Err(answer_error(ErrorCode::UpstreamError));
        };
        let fill = Fill {
            citizen_id,
            list: Some(list),
            entry: Some(&entry),
            ..Fill::default()
        };
        let path = self.provider.path(call, &fill);
        let body = self.provider.body(call, &fill);
        let (answer, attempt) = self.exchange("append", call.method.clone(), &path, body).await?;
        match answer.status {
            // Acknowledged by the provider: only now is the write acknowledged to the agency.
            201 => Ok(UpdateOutcome::Written(entry)),
            // A replay. After a lost acknowledgement (attempt > 0) the first attempt may have been the
            // write itself; the entry is there either way, and it is the one the agency sent.
            200 if attempt > 0 => Ok(UpdateOutcome::Written(entry)),
            200 => Ok(UpdateOutcome::Unchanged(entry)),
            s if (200..300).contains(&s) => Ok(UpdateOutcome::Written(entry)),
            _ => Err(self.refusal(&answer)),
        }
    }
}

/// The one message an agency gets for `upstream_unavailable`.
pub const UNAVAILABLE: &str = "the population database is unavailable; retry later";

fn answer_error(code: ErrorCode) -> ApiError {
    let message = match code {
        ErrorCode::UpstreamUnavailable => UNAVAILABLE,
        ErrorCode::UpstreamTimeout => "the population database did not answer in time; retry later",
        _ => "the population database gave an answer the broker cannot use",
    };
    ApiError::new(code, message)
}

impl CitizenStore for UpstreamStore {
    fn get<'a>(&'a self, citizen_id: &'a str) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let keep: Vec<&str> = self.inner.stored_fields.iter().map(String::as_str).collect();
            self.inner.read(citizen_id, &keep).await
        })
    }

    fn get_fields<'a>(&'a self, citizen_id: &'a str, keep: &'a [&'a str]) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            // Ask for stored fields only, each once (a derived field is computed by the broker).
            let mut asked: Vec<&str> = Vec::with_capacity(keep.len());
            for name in keep {
                if self.inner.stored_fields.iter().any(|f| f == name) && !asked.contains(name) {
                    asked.push(name);
                }
            }
            self.inner.read(citizen_id, &asked).await
        })
    }

    fn update<'a>(
        &'a self,
        _citizen_id: &'a str,
        _change: Change<'a, UpdateOutcome>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        Box::pin(async move {
            Err(ApiError::internal(
                "a closure over the whole record cannot run at an upstream provider; use append_history",
            ))
        })
    }

    fn append_history<'a>(
        &'a self,
        citizen_id: &'a str,
        list: &'static str,
        _id: &'a str,
        entry: Value,
        _validate: Validate<'a>,
    ) -> StoreFuture<'a, UpdateOutcome> {
        // The provider holds the whole record and checks it; the broker has checked the purpose.
        Box::pin(async move { self.inner.append(citizen_id, list, entry).await })
    }

    fn put_many<'a>(&'a self, _records: Vec<(String, Value)>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            Err(ApiError::internal(
                "records are seeded at the upstream provider, not through the broker",
            ))
        })
    }

    /// Unknown: the provider holds the records.
    fn count(&self) -> usize {
        0
    }

    fn health(&self) -> Result<Option<Value>, ApiError> {
        let circuit = self.inner.breaker.circuit();
        let reachable = self.inner.reachable.load(Ordering::Relaxed);
        if !reachable || circuit == Circuit::Open {
            return Err(ApiError::new(ErrorCode::UpstreamUnavailable, UNAVAILABLE));
        }
        Ok(Some(serde_json::json!({
            "provider": self.inner.provider.name,
            "reachable": reachable,
            "circuit": circuit.as_str(),
        })))
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_and_continued() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(t).as_deref(), Some(t));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let child = child_traceparent(t);
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, t);
        assert!(parse_traceparent(&child).is_some());
        assert!(parse_traceparent(&new_traceparent()).is_some());
    }
}
