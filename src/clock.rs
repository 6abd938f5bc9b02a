//! The broker's notion of "now" for decisions that depend on the calendar (when a hidden access becomes
//! visible to the citizen). The system clock plus an offset that only tests move, so a test can step
//! past a date instead of waiting for it. Audit entry times always come from the system clock.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// System time, shifted by an offset (zero outside tests).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, as the broker decides by it.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Move the broker's "now" forward by `by` (test seam).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}
