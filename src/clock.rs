//! The broker's clock. Every stage that dates something the bill depends on — the audit entry, the
//! catalogue version in force, a billing-class change, the quota window, whether a month is over — asks
//! this clock, so an operator drill or a test can move the broker's time (set it, step it) instead of
//! waiting for a month or a year to pass. By default it is the system clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

/// `fixed_ms` holds this when the clock follows the system clock.
const REAL_TIME: i64 = i64::MIN;

/// A shared clock: clones see the same time.
#[derive(Clone)]
pub struct Clock {
    /// Milliseconds since the epoch the clock is held at, or [`REAL_TIME`].
    fixed_ms: Arc<AtomicI64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            fixed_ms: Arc::new(AtomicI64::new(REAL_TIME)),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fixed() {
            Some(t) => write!(f, "Clock(held at {t})"),
            None => f.write_str("Clock(system)"),
        }
    }
}

/// Two handles are equal when they share one clock.
impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fixed_ms, &other.fixed_ms)
    }
}

impl Eq for Clock {}

impl Clock {
    fn fixed(&self) -> Option<DateTime<Utc>> {
        match self.fixed_ms.load(Ordering::Acquire) {
            REAL_TIME => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Now, to the millisecond (the precision the audit trail records).
    pub fn now(&self) -> DateTime<Utc> {
        self.fixed().unwrap_or_else(|| {
            let now = Utc::now();
            DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
        })
    }

    /// Hold the clock at `t` until it is set again, stepped or released.
    pub fn set(&self, t: DateTime<Utc>) {
        self.fixed_ms.store(t.timestamp_millis(), Ordering::Release);
    }

    /// Move the clock by `by` from where it is now (held from then on).
    pub fn advance(&self, by: Duration) {
        self.set(self.now() + by);
    }

    /// Follow the system clock again.
    pub fn release(&self) {
        self.fixed_ms.store(REAL_TIME, Ordering::Release);
    }
}

/// Vietnam time (UTC+7), in which calendar days and months (quota windows, bills, catalogue dates) turn.
pub fn vietnam() -> chrono::FixedOffset {
    // UTC+7 has no daylight saving; the constant cannot fail.
    chrono::FixedOffset::east_opt(7 * 3600)
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).unwrap_or_else(|| unreachable!()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_stepped_and_released() {
        let clock = Clock::default();
        let shared = clock.clone();
        let t = DateTime::parse_from_rfc3339("2027-01-01T00:00:00+07:00")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        clock.set(t);
        assert_eq!(shared.now(), t);
        shared.advance(Duration::milliseconds(1));
        assert_eq!(clock.now(), t + Duration::milliseconds(1));
        clock.release();
        assert!(shared.now() > t - Duration::days(36_500));
        assert_eq!(clock, shared);
        assert_ne!(clock, Clock::default());
    }
}
