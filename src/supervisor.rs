//! Stage: server (supervision). Keeps the broker serving across a failed database, without a restart.
//!
//! sled keeps the first I/O error it meets (a full disk, a file system gone read-only) for the life of
//! the open database — its "global error" — and fails every later write with it; the citizen store,
//! registry, quota counters and checkpoints share that one database. So the supervisor:
//!
//! 1. watches the serving broker's database for that error ([`Broker::store_failure`]);
//! 2. keeps answering meanwhile (writes get 503 `store_unavailable` with `Retry-After`, `/healthz` too)
//!    and probes the data dir — write, fsync, remove a file — with back-off;
//! 3. once a probe succeeds: stops accepting (the listeners stay bound, new connections wait in the
//!    backlog), lets in-flight requests finish, drops every handle on the old broker and joins the audit
//!    writer thread (sled releases its file lock only when the last handle is gone);
//! 4. reopens with [`Broker::open`] on the same config — sled recovers its log, the audit index is
//!    rebuilt from the trail where it lacks anything, and the start-up check of the store against the audit trail runs again —
//!    and serves again on the same listeners. A failed reopen is retried with back-off; a store that
//!    lost acknowledged writes stops the broker, as it would refuse a restart.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::audit::AuditLog;
use crate::broker::Broker;
use crate::config::Config;
use crate::server::Accepting;

/// Bytes the recovery probe writes: room for a couple of sled log segments (512 KiB each), so that a
/// database reopened on a disk with a few bytes free does not fail again at once.
const RECOVERY_PROBE_BYTES: usize = 1 << 20;

/// How often the serving broker's database is checked for its sticky error (one atomic load).
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Back-off between probes, and between reopen attempts: from `BACKOFF_FIRST`, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(5);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A reopened database that fails again soon (a disk that is not really fixed) is reopened no sooner than
/// this long after it opened, doubling up to `COOLDOWN_MAX` while it keeps happening: no churn of drains
/// and reopens.
const COOLDOWN_FIRST: Duration = Duration::from_secs(1);
const COOLDOWN_MAX: Duration = Duration::from_secs(60);

/// The broker currently serving, for whoever shares the process (the test harness). Empty while the
/// database is being reopened. It holds no strong handle, so it never keeps an old database open.
#[derive(Clone, Default)]
pub struct BrokerSlot(Arc<Mutex<Weak<Broker>>>);

impl BrokerSlot {
    /// A slot naming `broker` (the supervisor keeps it up to date).
    pub fn new(broker: &Arc<Broker>) -> Self {
        let slot = Self::default();
        slot.set(broker);
        slot
    }

    /// The broker serving now; `None` while the supervisor reopens the database or after shutdown.
    pub fn current(&self) -> Option<Arc<Broker>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).upgrade()
    }

    fn set(&self, broker: &Arc<Broker>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(broker);
    }
}

/// Serve on both listeners until `shutdown` resolves, reopening the database live after it fails (see
/// the module doc). `slot`, if given, always names the broker serving.
pub async fn supervise(
    broker: Arc<Broker>,
    agency: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
    slot: Option<BrokerSlot>,
) -> std::io::Result<()> {
    broker
        .prepare_storage()
        .await
        .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))?;
    check_store_against_audit(&broker)
        .await
        .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))?;
    let (agency, admin) = (Arc::new(agency), Arc::new(admin));
    let slot = slot.unwrap_or_default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut broker = broker;
    // No wait before the first reopen; see COOLDOWN_FIRST for the later ones.
    let mut cooldown = Duration::ZERO;
    loop {
        slot.set(&broker);
        broker.metrics.set_store_available(true);
        let serving_since = Instant::now();
        let accepting = Accepting::start(&broker, &agency, &admin);
        let grace = Duration::from_millis(broker.config.limits.shutdown_grace_ms);
        let writable_again = tokio::select! {
            () = &mut shutdown => false,
            () = degraded_until_writable(&broker, serving_since + cooldown) => true,
        };
        if !writable_again {
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            accepting.stop(grace).await;
            on_shutdown(&broker).await;
            broker.close().await;
            close_for_good(broker, grace).await;
            tracing::info!("stopped");
            return Ok(());
        }
        // The next database, if it fails within `cooldown` of opening, waits that long before a reopen;
        // the wait doubles while databases keep failing within a minute.
        cooldown = if serving_since.elapsed() < COOLDOWN_MAX {
            (cooldown * 2).clamp(COOLDOWN_FIRST, COOLDOWN_MAX)
        } else {
            COOLDOWN_FIRST
        };
        let started = Instant::now();
        tracing::warn!("data dir writable again: draining requests, then reopening the database");
        accepting.stop(grace).await;
        // A last signed checkpoint of the trail as it stands (the trail has its own files; it may work).
        on_shutdown(&broker).await;
        let Some(carried) = release(broker, &mut shutdown).await else {
            return Ok(());
        };
        broker = match reopen(carried, &mut shutdown).await? {
            Some(reopened) => reopened,
            None => return Ok(()),
        };
        broker.metrics.count_store_reopen();
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "database reopened; serving again"
        );
    }
}

/// Resolves once the broker's database has failed and, after `not_before`, a probe write to the data dir
/// has succeeded. Meanwhile the broker keeps answering (503 `store_unavailable` for what needs the store).
async fn degraded_until_writable(broker: &Broker, not_before: Instant) {
    let cause = loop {
        if let Some(cause) = broker.store_failure() {
            break cause;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    };
    let data_dir = broker.config.storage.data_dir.clone();
    broker.metrics.set_store_available(false);
    tracing::warn!(
        %cause,
        data_dir = %data_dir.display(),
        "the database failed: answering 503 store_unavailable; probing the data dir until it is writable again"
    );
    let mut delay = BACKOFF_FIRST;
    let mut last_error = None;
    loop {
        tokio::time::sleep(delay.max(not_before.saturating_duration_since(Instant::now()))).await;
        let dir = data_dir.clone();
        let probed =
            tokio::task::spawn_blocking(move || crate::store::probe_data_dir(&dir, RECOVERY_PROBE_BYTES))
                .await;
        let error = match probed {
            Ok(Ok(())) => return,
            Ok(Err(e)) => crate::store::describe_probe_error(&e),
            Err(e) => e.to_string(),
        };
        // Say it once per distinct cause, not every few seconds.
        if last_error.as_ref() != Some(&error) {
            tracing::warn!(%error, data_dir = %data_dir.display(), "data dir still not writable");
        } else {
            tracing::debug!(%error, "data dir still not writable");
        }
        last_error = Some(error);
        delay = (delay * 2).min(PROBE_BACKOFF_MAX);
    }
}

/// What a reopen keeps from the old broker: everything not backed by the database. Metrics keep
/// counting, the SMS limiter keeps its windows, and a TLS config reloaded at run time stays in force.
struct Carried {
    config: Config,
    tls: crate::tls::TlsConfigHandle,
    metrics: crate::metrics::Metrics,
    sms_limiter: crate::admission::PhoneLimiter,
}

/// Wait until nothing else holds the old broker (connections past the grace period finish), then drop it,
/// every database handle with it, and join the audit writer thread. `None` if shutdown came first.
async fn release<S>(mut broker: Arc<Broker>, shutdown: &mut Pin<&mut S>) -> Option<Carried>
where
    S: Future<Output = ()>,
{
    let waiting_since = Instant::now();
    let mut warned = false;
    let broker = loop {
        match Arc::try_unwrap(broker) {
            Ok(broker) => break broker,
            Err(shared) => broker = shared,
        }
        if !warned && waiting_since.elapsed() > Duration::from_secs(5) {
            tracing::warn!(
                holders = Arc::strong_count(&broker) - 1,
                "waiting for requests past the grace period to let go of the old database"
            );
            warned = true;
        }
        if !sleep_or_shutdown(Duration::from_millis(20), shutdown).await {
            return None;
        }
    };
    // Dropping sled handles flushes (and fails, on a failed database) and joining a thread blocks.
    let carried = tokio::task::spawn_blocking(move || {
        let (carried, audit) = take_apart(broker);
        if audit.close().is_err() {
            tracing::warn!("the audit trail is still shared; its writer stops when the last handle goes");
        }
        carried
    })
    .await;
    match carried {
        Ok(carried) => Some(carried),
        Err(e) => {
            tracing::error!(error = %e, "releasing the old database failed");
            None
        }
    }
}

/// At shutdown: wait (up to `grace`) for the last other holder of the broker to let go, then drop the
/// database and join the audit threads, so that a restart — or whatever reads the data dir next — finds
/// every file closed and flushed.
async fn close_for_good(mut broker: Arc<Broker>, grace: Duration) {
    let deadline = Instant::now() + grace;
    let broker = loop {
        match Arc::try_unwrap(broker) {
            Ok(broker) => break broker,
            Err(shared) if Instant::now() < deadline => {
                broker = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                tracing::warn!("requests still hold the broker; its files close when they finish");
                return;
            }
        }
    };
    let closed = tokio::task::spawn_blocking(move || {
        let (_carried, audit) = take_apart(broker);
        if audit.close().is_err() {
            tracing::warn!("the audit trail is still shared; its writer stops when the last handle goes");
        }
    })
    .await;
    if let Err(e) = closed {
        tracing::error!(error = %e, "closing the database failed");
    }
}

/// Keep what survives a reopen; every other field (the sled handles) is dropped on return.
fn take_apart(broker: Broker) -> (Carried, Arc<AuditLog>) {
    let Broker {
        config,
        tls,
        metrics,
        sms_limiter,
        audit,
        ..
    } = broker;
    (
        Carried {
            config,
            tls,
            metrics,
            sms_limiter,
        },
        audit,
    )
}

/// Open the database again on the same config, with back-off, until it works. `Ok(None)` if shutdown came
/// first; an error if the reopened store lost acknowledged writes (a restart would refuse it too).
async fn reopen<S>(carried: Carried, shutdown: &mut Pin<&mut S>) -> std::io::Result<Option<Arc<Broker>>>
where
    S: Future<Output = ()>,
{
    let mut delay = BACKOFF_FIRST;
    loop {
        let config = carried.config.clone();
        let error = match tokio::task::spawn_blocking(move || Broker::open(config)).await {
            Ok(Ok(mut broker)) => {
                if let Err(message) = check_store_against_audit(&broker).await {
                    tracing::error!(%message, "the reopened database is not what the audit trail acknowledges; stopping");
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
                }
                if let Err(message) = broker.migrate_storage().await {
                    message
                } else {
                    broker.tls = carried.tls;
                    broker.metrics = carried.metrics;
                    broker.sms_limiter = carried.sms_limiter;
                    let broker = Arc::new(broker);
                    if let Err(message) = broker.follow_shared_registry().await {
                        // Its local copy serves meanwhile; the follower catches up once the database answers.
                        tracing::warn!(%message, "the shared registry is not loaded yet");
                    }
                    return Ok(Some(broker));
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "reopening the database failed; connections wait in the listen backlog"
        );
        if !sleep_or_shutdown(delay, shutdown).await {
            return Ok(None);
        }
        delay = (delay * 2).min(REOPEN_BACKOFF_MAX);
    }
}

/// Sleep for `delay`; `false` if shutdown came first.
async fn sleep_or_shutdown<S>(delay: Duration, shutdown: &mut Pin<&mut S>) -> bool
where
    S: Future<Output = ()>,
{
    tokio::select! {
        () = shutdown.as_mut() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Run both listeners until `shutdown` resolves, then stop accepting, let in-flight requests finish
/// (up to `limits.shutdown_grace_ms`), and flush the stores. A database that fails on the way (a full
/// disk) is reopened live by the supervisor once the data dir is writable again (this module).
pub async fn serve(
    broker: Arc<Broker>,
    agency: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    supervise(broker, agency, admin, shutdown, None).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Work to do once the last request has been answered: a final signed audit checkpoint.
async fn on_shutdown(broker: &Broker) {
    if let Err(e) = broker.audit.checkpoint().await {
        tracing::error!(error = %e, "final audit checkpoint failed");
    }
}

/// How far back [`check_store_against_audit`] looks, in audit entries.
const STORE_CHECK_ENTRIES: usize = 10_000;

/// The history lists a `201` write appends exactly one entry to.
const HISTORIES: [&str; 4] = ["vaccinations", "test_results", "recoveries", "checkins"];

/// Refuse to serve a citizen store that has lost acknowledged writes. sled checksums its log, but on
/// recovery it cannot tell a corrupted record from a torn tail and silently rolls back to the last
/// good one (or to nothing). The audit trail is written to its own fdatasync'd, hash-chained files
/// *after* the store write succeeded, so every recent `201` entry naming a history list is a write the
/// store must still hold: a store with fewer entries in that list is corrupt or rolled back.
pub async fn check_store_against_audit(broker: &Broker) -> Result<(), String> {
    // The other direction: the store outlived entries of the trail (a tail cut below what the store saw).
    let high_water = crate::canonical::audit_high_water(&broker.db)?;
    let head = broker.audit.head().0;
    if head < high_water {
        return Err(format!(
            "audit trail {}: ends at seq {head}, but the store saw it reach seq {high_water} before a later \
             write: entries were cut from its end. Refusing to start; restore the trail from a backup and run \
             `lienthong audit verify --witness …`.",
            broker.config.storage.data_dir.join("audit").display()
        ));
    }
    // A provider system keeps its own books; the broker does not own its records.
    if broker.store.is_remote() {
        return Ok(());
    }
    let filter = crate::audit::AuditFilter {
        status: Some(201),
        ..Default::default()
    };
    let entries = broker
        .audit
        .search(&filter, None, STORE_CHECK_ENTRIES)
        .await
        .map_err(|e| format!("audit trail: {e}"))?;
    let mut expected: HashMap<(String, &'static str), usize> = HashMap::new();
    for entry in &entries {
        let Some(citizen) = &entry.record.citizen_id else {
            continue;
        };
        if let Some(list) = HISTORIES
            .iter()
            .find(|h| entry.record.fields.iter().any(|f| f == *h))
        {
            *expected.entry((citizen.clone(), list)).or_insert(0) += 1;
        }
    }
    for ((citizen, list), written) in expected {
        let record = broker
            .store
            .get(&citizen)
            .await
            .map_err(|e| format!("citizen store: {}", e.message))?;
        let held = record
            .as_ref()
            .and_then(|r| r.get(list))
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if held < written {
            return Err(format!(
                "database {}: corrupt or rolled back, refusing to start: the audit trail acknowledges {written} writes \
                 to {list} of citizen {}, the store holds {held}. Restore the data directory from a backup; \
                 `lienthong audit export` lists what was acknowledged.",
                broker.config.storage.data_dir.display(),
                crate::exchange::mask_citizen_ids(&citizen)
            ));
        }
    }
    Ok(())
}
