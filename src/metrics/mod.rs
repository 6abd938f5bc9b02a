//! Stage: operations (every stage reports here). Prometheus metrics for `GET /metrics` on the admin
//! listener: requests by agency, purpose, connector and status; latency per pipeline stage; quota
//! rejections; the audit chain's head sequence; open connections; handshake failures by reason.
//!
//! Label values come only from bounded sets (registered agency codes, catalogue purposes, connector
//! names, status codes, fixed reasons) so an agency cannot blow up the series count with made-up input.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::exchange::Side;

/// The media type of [`Metrics::render`] (OpenMetrics text, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A pipeline stage whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The TLS handshake (successful ones).
    Tls,
    /// Reading the body and decoding the request (canonical JSON or a connector's format).
    Decode,
    /// Purpose and field policy checks.
    Policy,
    /// The citizen store (read or write).
    Store,
    /// Appending to the audit trail until durable.
    AuditFlush,
    /// Turning the answer into the response.
    Encode,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tls => "tls",
            Stage::Decode => "decode",
            Stage::Policy => "policy",
            Stage::Store => "store",
            Stage::AuditFlush => "audit_flush",
            Stage::Encode => "encode",
        }
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::Agency => "agency",
        Side::Admin => "admin",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    side: &'static str,
    agency: String,
    purpose: String,
    connector: String,
    status: u16,
}

/// [`RequestLabels`] borrowed from the request: the same fields in the same order, so it hashes the same
/// (a `String` hashes as its `str`) and finds a counter without building the three `String`s.
#[derive(Hash)]
struct RequestKey<'a> {
    side: &'static str,
    agency: &'a str,
    purpose: &'a str,
    connector: &'a str,
    status: u16,
}

impl hashbrown::Equivalent<RequestLabels> for RequestKey<'_> {
    fn equivalent(&self, labels: &RequestLabels) -> bool {
        self.side == labels.side
            && self.status == labels.status
            && self.agency == labels.agency
            && self.purpose == labels.purpose
            && self.connector == labels.connector
    }
}

impl RequestKey<'_> {
    fn to_labels(&self) -> RequestLabels {
        RequestLabels {
            side: self.side,
            agency: self.agency.to_string(),
            purpose: self.purpose.to_string(),
            connector: self.connector.to_string(),
            status: self.status,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SideLabels {
    side: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    side: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QuotaLabels {
    agency: String,
    purpose: String,
}

/// What one answered request is counted under. Unknown values are passed as `-`.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome<'a> {
    /// Which listener.
    pub side: Side,
    /// Registered agency code (or `admin`).
    pub agency: &'a str,
    /// A catalogue purpose id.
    pub purpose: &'a str,
    /// `canonical`, `admin`, or a connector name.
    pub connector: &'a str,
    /// HTTP status answered.
    pub status: u16,
}

fn stage_histogram() -> Histogram {
    // 50 µs … ~3.3 s: fast stages (policy) and slow ones (fdatasync, handshakes) both resolve.
    Histogram::new([
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// The broker's metrics, shared by every connection (all updates are lock-free atomics or a short
/// family lookup).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// The counters of `requests` already seen, found by borrowed labels (one per series, so bounded
    /// like the series themselves).
    request_counters:
        std::sync::RwLock<hashbrown::HashMap<RequestLabels, Counter, foldhash::fast::RandomState>>,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    quota_rejections: Family<QuotaLabels, Counter>,
    audit_head_seq: Gauge<u64, AtomicU64>,
    open_connections: Family<SideLabels, Gauge>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    store_available: Gauge,
    store_reopens: Counter,
    crl_stale: Gauge,
    hidden_accesses: Family<PurposeLabels, Counter>,
    /// The upstream provider's metrics (all zero with the embedded store).
    pub upstream: UpstreamMetrics,
    /// Audit group commits to PostgreSQL (all zero with the embedded trail).
    pub audit_commits: AuditCommitMetrics,
    /// Client certificate chains on the agency listener: checked in full, or remembered.
    pub tls_chains: TlsChainMetrics,
}

/// A new counter, registered under `name` (the `_total` suffix is added on rendering).
fn registered_counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// The agency listener's client chains: how many webpki checked in full (the CA's and the CRLs'
/// signatures) and how many were answered from the memory of chains already verified
/// (`tls::verified_chains`). Resumed sessions are neither. Handles share the registry's series.
#[derive(Debug, Clone, Default)]
pub struct TlsChainMetrics {
    verified: Counter,
    remembered: Counter,
}

impl TlsChainMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            verified: registered_counter(
                registry,
                "tls_client_chains_verified",
                "Agency client certificate chains checked in full by webpki (CA and CRL signatures)",
            ),
            remembered: registered_counter(
                registry,
                "tls_client_chains_remembered",
                "Agency client certificate chains accepted from the memory of chains already verified",
            ),
        }
    }

    /// Count one chain handed to webpki.
    pub fn count_verified(&self) {
        self.verified.inc();
    }

    /// Count one chain accepted from memory.
    pub fn count_remembered(&self) {
        self.remembered.inc();
    }

    /// Chains handed to webpki so far.
    pub fn verified(&self) -> u64 {
        self.verified.get()
    }
}

/// Audit transactions committed to PostgreSQL by this broker and the entries they carried: commits per
/// second and entries per commit (group commit at work). Handles share the registry's series.
#[derive(Debug, Clone, Default)]
pub struct AuditCommitMetrics {
    commits: Counter,
    entries: Counter,
}

impl AuditCommitMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            commits: registered_counter(
                registry,
                "audit_commits",
                "Audit transactions committed to PostgreSQL (each a group of entries)",
            ),
            entries: registered_counter(
                registry,
                "audit_committed_entries",
                "Audit entries committed to PostgreSQL, over all commits",
            ),
        }
    }

    /// Count one committed transaction of `entries` entries.
    pub fn count_commit(&self, entries: usize) {
        self.commits.inc();
        self.entries.inc_by(entries as u64);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PurposeLabels {
    purpose: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamCallLabels {
    call: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamErrorLabels {
    kind: &'static str,
}

/// The upstream provider's metrics (`[store] backend = "upstream"`): call latency, errors by kind, the
/// circuit breaker's state, reachability, fields dropped from its answers. Handles share the registry's
/// series (cloning one is cheap).
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    calls: Family<UpstreamCallLabels, Histogram, fn() -> Histogram>,
    errors: Family<UpstreamErrorLabels, Counter>,
    circuit_state: Gauge,
    reachable: Gauge,
    dropped_fields: Counter,
    in_flight: Gauge,
}

impl UpstreamMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::new_with_constructor(stage_histogram),
            errors: Family::default(),
            circuit_state: Gauge::default(),
            reachable: Gauge::default(),
            dropped_fields: Counter::default(),
            in_flight: Gauge::default(),
        };
        registry.register_with_unit(
            "upstream_call_duration",
            "Latency of calls to the upstream provider, by call (read, append, health), retries included",
            Unit::Seconds,
            metrics.calls.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed calls to the upstream provider by kind (unavailable, timeout, tls, connection_lost, bad_answer, circuit_open)",
            metrics.errors.clone(),
        );
        registry.register(
            "upstream_circuit_state",
            "The upstream provider's circuit breaker: 0 closed, 1 open, 2 half-open",
            metrics.circuit_state.clone(),
        );
        registry.register(
            "upstream_reachable",
            "1 while the upstream provider answered its last call or health probe",
            metrics.reachable.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Calls to the upstream provider in flight: the pooled connections in use (HTTP/1.1) or streams (HTTP/2)",
            metrics.in_flight.clone(),
        );
        registry.register(
            "upstream_dropped_fields",
            "Fields the upstream provider answered that were not asked for: dropped, never released",
            metrics.dropped_fields.clone(),
        );
        metrics
    }

    /// Record one call's latency.
    pub fn observe_call(&self, call: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&UpstreamCallLabels { call })
            .observe(elapsed.as_secs_f64());
    }

    /// Count one failed call.
    pub fn count_error(&self, kind: &'static str) {
        self.errors.get_or_create(&UpstreamErrorLabels { kind }).inc();
    }

    /// The breaker's state (see `upstream::breaker::Circuit::gauge`).
    pub fn set_circuit_state(&self, state: i64) {
        self.circuit_state.set(state);
    }

    /// Whether the provider answered last time.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.set(i64::from(reachable));
    }

    /// One call to the provider in flight until the guard drops.
    pub fn call_in_flight(&self) -> UpstreamCallGuard {
        self.in_flight.inc();
        UpstreamCallGuard {
            gauge: self.in_flight.clone(),
        }
    }

    /// Count fields dropped from an answer.
    pub fn count_dropped_fields(&self, n: usize) {
        self.dropped_fields.inc_by(n as u64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics, all under the `lienthong_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lienthong");
        let requests = Family::<RequestLabels, Counter>::default();
        let stages: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        let quota_rejections = Family::<QuotaLabels, Counter>::default();
        let audit_head_seq = Gauge::<u64, AtomicU64>::default();
        let open_connections = Family::<SideLabels, Gauge>::default();
        let handshake_failures = Family::<HandshakeLabels, Counter>::default();
        let store_available = Gauge::default();
        store_available.set(1);
        let store_reopens = Counter::default();
        let crl_stale = Gauge::default();
        let hidden_accesses = Family::<PurposeLabels, Counter>::default();
        registry.register(
            "hidden_accesses",
            "Accesses served hidden from the citizen's access log until a date (investigations), by purpose",
            hidden_accesses.clone(),
        );
        registry.register(
            "requests",
            "Answered requests by listener, agency, purpose, connector and HTTP status",
            requests.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "Latency of each pipeline stage",
            Unit::Seconds,
            stages.clone(),
        );
        registry.register(
            "quota_rejections",
            "Requests refused with 429 quota_exceeded, by agency and purpose",
            quota_rejections.clone(),
        );
        registry.register(
            "audit_head_seq",
            "Sequence number of the last durable audit entry",
            audit_head_seq.clone(),
        );
        registry.register(
            "open_connections",
            "TLS connections currently open, by listener",
            open_connections.clone(),
        );
        registry.register(
            "handshake_failures",
            "Failed TLS handshakes by listener and reason",
            handshake_failures.clone(),
        );
        registry.register(
            "store_available",
            "1 while the database accepts writes, 0 from its first I/O error until it is reopened",
            store_available.clone(),
        );
        registry.register(
            "store_reopens",
            "Times the database was reopened live after failing (see src/supervisor.rs)",
            store_reopens.clone(),
        );
        registry.register(
            "crl_stale",
            "Configured CRLs past their nextUpdate (still used; publish fresh ones)",
            crl_stale.clone(),
        );
        let upstream = UpstreamMetrics::register(&mut registry);
        let audit_commits = AuditCommitMetrics::register(&mut registry);
        let tls_chains = TlsChainMetrics::register(&mut registry);
        for side in [Side::Agency, Side::Admin] {
            // Present from the start so dashboards see 0, not "no data".
            let _ = open_connections.get_or_create(&SideLabels {
                side: side_label(side),
            });
        }
        Self {
            registry,
            requests,
            request_counters: Default::default(),
            stages,
            quota_rejections,
            audit_head_seq,
            open_connections,
            handshake_failures,
            store_available,
            store_reopens,
            crl_stale,
            hidden_accesses,
            upstream,
            audit_commits,
            tls_chains,
        }
    }

    /// Count one access served hidden from the citizen.
    pub fn count_hidden_access(&self, purpose: &str) {
        self.hidden_accesses
            .get_or_create(&PurposeLabels {
                purpose: purpose.to_string(),
            })
            .inc();
    }

    /// How many CRLs in force are past their `nextUpdate` (set on every scrape).
    pub fn set_stale_crls(&self, stale: usize) {
        self.crl_stale.set(i64::try_from(stale).unwrap_or(i64::MAX));
    }

    /// Whether the database accepts writes (set by the supervisor).
    pub fn set_store_available(&self, available: bool) {
        self.store_available.set(i64::from(available));
    }

    /// Count one live reopen of the database.
    pub fn count_store_reopen(&self) {
        self.store_reopens.inc();
    }

    /// Record how long `stage` took.
    pub fn observe(&self, stage: Stage, elapsed: Duration) {
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Record the time since `started` for `stage`.
    pub fn observe_since(&self, stage: Stage, started: Instant) {
        self.observe(stage, started.elapsed());
    }

    /// Count one answered request.
    pub fn count_request(&self, outcome: RequestOutcome<'_>) {
        let key = RequestKey {
            side: side_label(outcome.side),
            agency: outcome.agency,
            purpose: outcome.purpose,
            connector: outcome.connector,
            status: outcome.status,
        };
        let counters = self.request_counters.read().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = counters.get(&key) {
            counter.inc();
            return;
        }
        drop(counters);
        // A new series: created once in the family, then found by the cache.
        let labels = key.to_labels();
        let counter = self.requests.get_or_create_owned(&labels);
        counter.inc();
        self.request_counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels)
            .or_insert(counter);
    }

    /// Count one request refused for quota.
    pub fn count_quota_rejection(&self, agency: &str, purpose: &str) {
        self.quota_rejections
            .get_or_create(&QuotaLabels {
                agency: agency.to_string(),
                purpose: purpose.to_string(),
            })
            .inc();
    }

    /// Count one failed TLS handshake; `reason` is one of [`handshake_failure_reason`]'s answers.
    pub fn count_handshake_failure(&self, side: Side, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels {
                side: side_label(side),
                reason,
            })
            .inc();
    }

    /// A connection was accepted and its handshake succeeded; the gauge drops when the guard does.
    pub fn connection_opened(&self, side: Side) -> ConnectionGuard {
        let gauge = self.open_connections.get_or_create_owned(&SideLabels {
            side: side_label(side),
        });
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// Open connections on `side` right now.
    pub fn open_connections(&self, side: Side) -> i64 {
        self.open_connections
            .get_or_create(&SideLabels {
                side: side_label(side),
            })
            .get()
    }

    /// The text exposition, with the audit head sequence read at scrape time.
    pub fn render(&self, audit_head_seq: u64) -> String {
        self.audit_head_seq.set(audit_head_seq);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Keeps a call counted in `lienthong_upstream_in_flight` while alive.
#[derive(Debug)]
pub struct UpstreamCallGuard {
    gauge: Gauge,
}

impl Drop for UpstreamCallGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Keeps a connection counted in `lienthong_open_connections` while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A short, fixed reason for a failed TLS handshake, for the `reason` label.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset",
            _ => "io",
        };
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "certificate_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::Revoked => "certificate_revoked",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        TlsError::PeerIncompatible(_) => "incompatible",
        TlsError::AlertReceived(_) => "alert_received",
        TlsError::InappropriateMessage { .. } | TlsError::InappropriateHandshakeMessage { .. } => {
            "protocol_error"
        }
        TlsError::InvalidMessage(_) => "invalid_message",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
