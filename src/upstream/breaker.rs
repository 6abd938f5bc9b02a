//! A circuit breaker per provider: after `threshold` failures in a row (refused connections, timeouts,
//! 5xx answers) the broker stops calling the provider for `open_for` and answers 503
//! `upstream_unavailable` with `Retry-After` at once, instead of making every agency wait for a timeout.
//! Then one call is let through as a probe (half-open): success closes the circuit, failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, also exported as the `lienthong_upstream_circuit_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go through; counting failures in a row.
    Closed,
    /// Calls are refused until the instant.
    Open,
    /// One probe call is in flight.
    HalfOpen,
}

impl Circuit {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            Circuit::Closed => 0,
            Circuit::Open => 1,
            Circuit::HalfOpen => 2,
        }
    }

    /// The name shown on `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// One provider's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Open after `threshold` failures in a row, for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go out now? `Err` carries how long until the next probe (for `Retry-After`).
    pub fn admit(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            // A probe that never reported (its caller went away) does not hold the circuit forever.
            State::HalfOpen { since } if now < since + self.open_for => Err(since + self.open_for - now),
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    /// The provider answered: close the circuit.
    pub fn success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    /// The provider failed: count it; open the circuit at the threshold, or again after a failed probe.
    /// True when this failure opened it.
    pub fn failure(&self) -> bool {
        let mut state = self.state();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            State::HalfOpen { .. } => self.threshold,
            State::Open { .. } => return false,
        };
        if failures >= self.threshold {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
            true
        } else {
            *state = State::Closed { failures };
            false
        }
    }

    /// The state now.
    pub fn circuit(&self) -> Circuit {
        match *self.state() {
            State::Closed { .. } => Circuit::Closed,
            State::Open { .. } => Circuit::Open,
            State::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_probes_once_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(40));
        assert!(!b.failure());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure() && !b.failure(), "success resets the count");
        assert!(b.failure(), "the third failure in a row opens it");
        assert_eq!(b.circuit(), Circuit::Open);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_ok(), "one probe after open_for");
        assert_eq!(b.circuit(), Circuit::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        assert!(b.failure(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_ok());
        b.success();
        assert_eq!(b.circuit(), Circuit::Closed);
        assert!(b.admit().is_ok());
    }
}
