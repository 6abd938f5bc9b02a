//! Stage: admit. Limits that refuse a request before it costs anything: the requests one agency may have
//! in flight (`limits.max_concurrent_per_agency`, 429 `concurrency_limit`) and the SMS look-ups one phone
//! number may make (429 `sms_rate_limited`). Both are in memory: a restart forgives. And [`authenticate`]:
//! the agency the registry bound to the certificate, active.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ApiError, ErrorCode};
use crate::exchange::Exchange;
use crate::registry::{Agency, AgencyStatus};

/// Look-ups one phone number may make per window.
pub const PER_PHONE_LIMIT: usize = 5;
/// The window of the per-phone limit.
pub const PER_PHONE_WINDOW: Duration = Duration::from_secs(3600);

/// The active agency bound to the peer's certificate (as the registry answered when the request was
/// admitted): 403 `unknown_agency` or `agency_suspended`.
pub fn authenticate(exchange: &mut Exchange, agency: Option<Agency>) -> Result<Agency, ApiError> {
    let Some(agency) = agency else {
        return Err(ApiError::new(
            ErrorCode::UnknownAgency,
            format!(
                "the client certificate (SHA-256 {}) is not bound to any registered agency",
                exchange.peer.fingerprint_sha256
            ),
        ));
    };
    exchange.agency = Some(agency.code.clone());
    if agency.status == AgencyStatus::Suspended {
        return Err(ApiError::new(
            ErrorCode::AgencySuspended,
            format!("agency {} is suspended", agency.code),
        ));
    }
    Ok(agency)
}

/// Requests in flight per agency, with a cap.
pub(crate) struct InFlight {
    /// Requests one agency may have in flight.
    pub(crate) cap: usize,
    /// Keys are agency codes (or certificate fingerprints), hashed with a fast hasher on every request.
    counts: Mutex<HashMap<String, usize, foldhash::fast::RandomState>>,
}

/// One request's slot; released on drop, whatever way the request ends.
pub(crate) struct InFlightSlot {
    owner: Arc<InFlight>,
    key: String,
}

impl InFlight {
    /// At most `cap` requests in flight per agency.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::default(),
        }
    }

    pub(crate) fn try_acquire(self: &Arc<Self>, key: &str) -> Option<InFlightSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(key) {
            Some(n) if *n >= self.cap => return None,
            Some(n) => *n += 1,
            None if self.cap == 0 => return None,
            None => {
                counts.insert(key.to_string(), 1);
            }
        }
        Some(InFlightSlot {
            owner: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Per-phone-number look-up counter (abuse protection), in memory: a restart forgives.
#[derive(Default)]
pub struct PhoneLimiter {
    seen: Mutex<HashMap<String, Vec<Instant>>>,
}

impl PhoneLimiter {
    /// Count one look-up from `phone`; false when it is over [`PER_PHONE_LIMIT`] in the window.
    pub fn allow(&self, phone: &str) -> bool {
        let now = Instant::now();
        let mut seen = match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Keep the map from growing without bound under a flood of distinct numbers.
        if seen.len() > 100_000 {
            seen.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < PER_PHONE_WINDOW));
        }
        let times = seen.entry(phone.to_string()).or_default();
        times.retain(|t| now.duration_since(*t) < PER_PHONE_WINDOW);
        if times.len() >= PER_PHONE_LIMIT {
            return false;
        }
        times.push(now);
        true
    }
}
