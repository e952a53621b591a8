//! Passive health, like nginx's `max_fails` / `fail_timeout`.
//!
//! Upstream-side failures (never client causes, never an upstream's own 4xx/5xx answer) are
//! counted in a `fail_timeout` window; `max_fails` of them mark the server down for
//! `fail_timeout`. `balance` skips down servers; when all are down the answer is 503
//! `no_healthy_upstream` with `Retry-After` from [`ServerHealth::down_until`].

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::cause::Cause;

/// Health bookkeeping for one server.
#[derive(Debug)]
pub struct ServerHealth {
    max_fails: u32,
    fail_timeout: Duration,
    state: Mutex<HealthState>,
}

/// A snapshot for `/upstreams` and logs.
#[derive(Clone, Debug, Default)]
pub struct HealthState {
    /// Failures counted in the current window.
    pub fails: u32,
    window_start: Option<Instant>,
    down_until: Option<Instant>,
    pub last_cause: Option<Cause>,
    pub last_failure: Option<SystemTime>,
}

/// What a recorded failure did to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// This failure marked the server down.
    WentDown,
}

impl ServerHealth {
    /// `max_fails = 0` disables marking down, as in nginx.
    pub fn new(max_fails: u32, fail_timeout: Duration) -> ServerHealth {
        ServerHealth {
            max_fails,
            fail_timeout,
            state: Mutex::new(HealthState::default()),
        }
    }

    /// Whether the server may be picked at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        self.state
            .lock()
            .map(|s| s.down_until.is_none_or(|until| now >= until))
            .unwrap_or(true)
    }

    /// When a down server comes back, if it is down.
    pub fn down_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.state
            .lock()
            .ok()
            .and_then(|s| s.down_until)
            .filter(|until| *until > now)
    }

    /// Counts one failed attempt with an upstream-side cause.
    pub fn record_failure(&self, cause: Cause) -> Transition {
        if !cause.counts_against_server() {
            return Transition::Unchanged;
        }
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return Transition::Unchanged;
        };
        state.last_cause = Some(cause);
        state.last_failure = Some(SystemTime::now());
        let window_over = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.fail_timeout);
        if window_over {
            state.window_start = Some(now);
            state.fails = 0;
        }
        state.fails += 1;
        let already_down = state.down_until.is_some_and(|until| until > now);
        if self.max_fails > 0 && state.fails >= self.max_fails && !already_down {
            state.down_until = Some(now + self.fail_timeout);
            return Transition::WentDown;
        }
        Transition::Unchanged
    }

    /// A successful exchange resets the failure count.
    pub fn record_success(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.fails = 0;
            state.window_start = None;
            state.down_until = None;
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> HealthState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn max_fails_marks_down_for_fail_timeout() {
        let health = ServerHealth::new(2, Duration::from_secs(10));
        assert_eq!(
            health.record_failure(Cause::ConnectRefused),
            Transition::Unchanged
        );
        assert!(health.is_up(Instant::now()));
        assert_eq!(
            health.record_failure(Cause::ConnectRefused),
            Transition::WentDown
        );
        assert!(!health.is_up(Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(health.is_up(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn client_causes_do_not_count() {
        let health = ServerHealth::new(1, Duration::from_secs(10));
        assert_eq!(
            health.record_failure(Cause::ClientClosed),
            Transition::Unchanged
        );
        assert!(health.is_up(Instant::now()));
        assert_eq!(health.snapshot().fails, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_start_a_new_count() {
        let health = ServerHealth::new(2, Duration::from_secs(10));
        health.record_failure(Cause::UpstreamReset);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            health.record_failure(Cause::UpstreamReset),
            Transition::Unchanged
        );
        assert!(health.is_up(Instant::now()));
    }
}
