//! Passive health, like nginx's `max_fails` / `fail_timeout`.
//!
//! Upstream-side failures (never client causes, never an upstream's own 4xx/5xx answer) are
//! counted in a `fail_timeout` window; `max_fails` of them mark the server down for
//! `fail_timeout`. `balance` skips down servers; when all are down the answer is 503
//! `no_healthy_upstream` with `Retry-After` from [`ServerHealth::down_until`]. Optional active
//! checks (`health.check`) probe each server on a timer and feed the same state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Request;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::exchange::{RequestBody, Sender};
use super::{Reuse, Sent, Server, Upstream, UpstreamError};
use crate::cause::Cause;
use crate::config::{HealthCheck, Protocol};

/// Health bookkeeping for one server.
#[derive(Debug)]
pub struct ServerHealth {
    max_fails: u32,
    fail_timeout: Duration,
    state: Mutex<HealthState>,
    /// Whether `state` holds anything (failures in the window, a down period). While it does
    /// not, the per-request calls (`is_up`, `record_success`) read this flag and leave the
    /// lock alone: every worker would otherwise write the lock's cache line on every request.
    troubled: AtomicBool,
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

/// What a recorded outcome did to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// This failure marked the server down.
    WentDown,
    /// This success ended a down period (early, by an active check, or after it).
    CameBack,
}

impl ServerHealth {
    /// `max_fails = 0` disables marking down, as in nginx.
    pub fn new(max_fails: u32, fail_timeout: Duration) -> ServerHealth {
        ServerHealth {
            max_fails,
            fail_timeout,
            state: Mutex::new(HealthState::default()),
            troubled: AtomicBool::new(false),
        }
    }

    /// Whether the server may be picked now. `now` is asked only for a server with recent
    /// failures: a healthy one costs no clock read.
    pub fn is_up(&self, now: impl FnOnce() -> Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return true;
        }
        self.state
            .lock()
            .map(|s| s.down_until.is_none_or(|until| now() >= until))
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
        // Every counted failure leaves something in the state (a count or a down period).
        self.troubled.store(true, Ordering::Release);
        state.last_cause = Some(cause);
        state.last_failure = Some(SystemTime::now());
        if self.max_fails > 0 && state.down_until.is_some_and(|until| until <= now) {
            // The server was being tried again after its down period (nginx does the same):
            // one failure is enough to take it out for another fail_timeout.
            state.down_until = Some(now + self.fail_timeout);
            state.window_start = Some(now);
            state.fails = self.max_fails;
            return Transition::WentDown;
        }
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

    /// A successful exchange resets the failure count and ends a down period.
    pub fn record_success(&self) -> Transition {
        if !self.troubled.load(Ordering::Acquire) {
            return Transition::Unchanged;
        }
        let Ok(mut state) = self.state.lock() else {
            return Transition::Unchanged;
        };
        state.fails = 0;
        state.window_start = None;
        self.troubled.store(false, Ordering::Release);
        match state.down_until.take() {
            Some(_) => Transition::CameBack,
            None => Transition::Unchanged,
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> HealthState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Runs `health.check` against every server of `upstream` every `interval` until `stop`: a
/// passing check brings a down server back early, a failing one counts like a failed request
/// (so `max_fails` failed checks take a server out before a client hits it).
pub fn spawn_active_checks(upstream: &Arc<Upstream>, stop: CancellationToken) {
    let Some(check) = upstream.config.health.check.clone() else {
        return;
    };
    for server in &upstream.servers {
        let upstream = upstream.clone();
        let server = server.clone();
        let check = check.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(check.interval) => {}
                }
                let result = tokio::select! {
                    _ = stop.cancelled() => break,
                    result = probe(&upstream, &server, &check) => result,
                };
                report(&upstream, &server, result);
            }
        });
    }
}

/// One check: a fresh connection (never a pooled one) and `GET path`, or for FastCGI
/// upstreams the connect alone.
async fn probe(
    upstream: &Upstream,
    server: &Server,
    check: &HealthCheck,
) -> Result<(), UpstreamError> {
    if upstream.config.protocol == Protocol::FastCgi {
        let deadline = Instant::now() + upstream.config.timeouts.connect;
        return upstream
            .connector
            .open(&server.addr, deadline)
            .await
            .map(drop);
    }
    let mut conn = upstream
        .connector
        .connect(&server.addr, false)
        .await?
        .into_hyper(upstream.config.max_response_header)
        .await?;
    let host = server
        .addr
        .host()
        .unwrap_or_else(|| "localhost".to_string());
    let request = Request::get(check.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "causeway-health-check")
        .body(RequestBody::empty())
        .map_err(|e| {
            UpstreamError::new(
                Cause::InvalidResponse,
                format!("bad health check path: {e}"),
            )
        })?;
    let sent = async {
        match &mut conn.sender {
            Sender::H1(sender) => Some(sender.send_request(request).await),
            Sender::H2(sender) => Some(sender.send_request(request).await),
            // `into_hyper` above leaves only hyper's senders.
            Sender::Inline(_) | Sender::Lent => None,
        }
    };
    let response = match tokio::time::timeout(upstream.config.timeouts.header, sent).await {
        Ok(Some(Ok(response))) => response,
        Ok(None) => {
            return Err(UpstreamError::new(
                Cause::ConnectFailed,
                "internal: health check connection is not hyper's",
            ))
        }
        Ok(Some(Err(e))) => {
            let context = crate::classify::ExchangeContext {
                reuse: Reuse::Fresh,
                server: server.addr.clone(),
                method: http::Method::GET,
            };
            return Err(crate::classify::exchange_error(e, &context, Sent::All, 0));
        }
        Err(_) => {
            return Err(UpstreamError::new(
                Cause::HeaderTimeout,
                format!(
                    "health check {} got no response head within timeouts.header",
                    check.path
                ),
            ))
        }
    };
    if response.status().as_u16() == check.expect_status {
        Ok(())
    } else {
        // A wrong status is not an upstream *failure* cause; count it as the server refusing
        // service, which is what the check is for.
        Err(UpstreamError::new(
            Cause::InvalidResponse,
            format!(
                "health check GET {} answered {} (expected {})",
                check.path,
                response.status().as_u16(),
                check.expect_status
            ),
        ))
    }
}

fn report(upstream: &Upstream, server: &Server, result: Result<(), UpstreamError>) {
    match result {
        Ok(()) => {
            if server.health.record_success() == Transition::CameBack {
                tracing::info!(upstream = %upstream.name, server = %server.addr, "server back up: active health check passed");
            }
        }
        Err(error) => {
            tracing::debug!(upstream = %upstream.name, server = %server.addr, cause = %error.cause, "health check failed: {}", error.detail);
            if server.health.record_failure(error.cause) == Transition::WentDown {
                tracing::warn!(
                    upstream = %upstream.name,
                    server = %server.addr,
                    cause = %error.cause,
                    "server marked down for {}s: active health check failed: {}",
                    upstream.config.health.fail_timeout.as_secs(),
                    error.detail
                );
            }
        }
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
        assert!(health.is_up(Instant::now));
        assert_eq!(
            health.record_failure(Cause::ConnectRefused),
            Transition::WentDown
        );
        assert!(!health.is_up(Instant::now));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(health.is_up(Instant::now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_retry_after_fail_timeout_marks_down_again_at_once() {
        let health = ServerHealth::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            health.record_failure(Cause::ConnectRefused);
        }
        assert!(!health.is_up(Instant::now));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(health.is_up(Instant::now), "tried again after fail_timeout");
        assert_eq!(
            health.record_failure(Cause::ConnectRefused),
            Transition::WentDown
        );
        assert!(!health.is_up(Instant::now));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(health.record_success(), Transition::CameBack);
        assert_eq!(
            health.record_failure(Cause::ConnectRefused),
            Transition::Unchanged,
            "a full window again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn client_causes_do_not_count() {
        let health = ServerHealth::new(1, Duration::from_secs(10));
        assert_eq!(
            health.record_failure(Cause::ClientClosed),
            Transition::Unchanged
        );
        assert!(health.is_up(Instant::now));
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
        assert!(health.is_up(Instant::now));
    }
}
