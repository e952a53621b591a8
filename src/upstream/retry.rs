//! Retries: which failed attempts are tried again, where, and how many in total.
//!
//! A failed attempt is retried when all of these hold: its cause is in `retry.on`; nothing was
//! sent, or the method is idempotent (or the request carries `Idempotency-Key`); the body can
//! be replayed; attempts and the retry budget are left. A reused connection that died before
//! any response byte (`stale_connection`, the keep-alive race) gets one extra try on a fresh
//! connection under the same safety rules, without spending an attempt (it says nothing about
//! the server), when `retry.on` lists `stale_connection` (the default does). Retries prefer a server not tried yet.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use super::exchange::{Failed, RequestBody};
use super::health::Transition;
use super::{Attempt, Outcome, Timings, Upstream, UpstreamError};
use crate::cause::Cause;
use crate::proxy::RequestContext;

/// Caps retries at a ratio of first attempts, so a failing upstream is not hit by a storm.
pub struct Budget(TpsBudget);

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Budget")
    }
}

impl Budget {
    /// `ratio` = retries allowed per first attempt over a 10 s window, plus a floor of a few
    /// retries per second so a quiet upstream can still retry.
    pub fn new(ratio: f64) -> Budget {
        Budget(TpsBudget::new(Duration::from_secs(10), 3, ratio as f32))
    }

    fn deposit(&self) {
        self.0.deposit();
    }

    fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

/// Sends the request through `upstream`, retrying as the policy allows.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
pub fn send_with_retries<'a>(
    upstream: &'a Upstream,
    request: Request<RequestBody>,
    context: &'a RequestContext,
) -> impl std::future::Future<Output = Outcome> + Send + 'a {
    // Not an `async fn`: those keep their arguments twice in their state (rustc moves
    // them into locals), and this future is copied into its caller's.
    async move {
        let policy = &upstream.config.retry;
        let idempotent = policy.methods.contains(request.method())
            || request.headers().contains_key("idempotency-key");
        let request_id = &context.id;
        upstream.budget().deposit();

        let mut attempts: Vec<Attempt> = Vec::new();
        let mut timings = Timings::default();
        let mut tried = Vec::new();
        let mut counted_attempts = 0u32;
        let mut stale_retry_used = false;
        let mut force_fresh = false;
        let mut next = Some(request);

        loop {
            let Some(request) = next.take() else {
                // Unreachable by construction: every `continue` below sets `next`.
                let error =
                    UpstreamError::new(Cause::ConnectFailed, "internal: no request to send");
                return Outcome {
                    result: Err(error),
                    attempts,
                    timings,
                    server: None,
                };
            };
            let server = match upstream.pick(&tried) {
                Ok(server) => server,
                Err(error) => {
                    return Outcome {
                        result: Err(error),
                        attempts,
                        timings,
                        server: None,
                    };
                }
            };
            let started = Instant::now();
            let result = upstream
                .attempt(&server, request, &mut timings, force_fresh, context)
                .await;
            force_fresh = false;
            let elapsed = started.elapsed();
            let (error, again) = match result {
                Ok(response) => {
                    if server.health.record_success() == Transition::CameBack {
                        tracing::info!(upstream = %upstream.name, server = %server.addr, "server back up: a request succeeded");
                    }
                    if let Some(header) = timings.header {
                        crate::metrics::global().header_received(&upstream.name, header);
                    }
                    attempts.push(Attempt {
                        server: server.addr.clone(),
                        cause: None,
                        reuse: response.1,
                        elapsed,
                    });
                    return Outcome {
                        result: Ok(response.0),
                        attempts,
                        timings,
                        server: Some(server.addr.clone()),
                    };
                }
                Err(Failed { error, request }) => (error, request),
            };
            attempts.push(Attempt {
                server: server.addr.clone(),
                cause: Some(error.cause),
                reuse: error.reuse,
                elapsed,
            });
            if error.cause.info().proxy_status.is_some() {
                crate::metrics::global().server_failed(&upstream.name, &server.addr, error.cause);
                tracing::warn!(
                    cause = %error.cause,
                    upstream = %upstream.name,
                    server = %server.addr,
                    request_id = %request_id,
                    reused = error.reuse.is_reused(),
                    idle_ms = error.reuse.idle_ms(),
                    "{}",
                    error.detail
                );
            } else {
                // The client's doing (gone, slow, too large): worth a line, not a warning.
                tracing::info!(
                    cause = %error.cause,
                    upstream = %upstream.name,
                    server = %server.addr,
                    request_id = %request_id,
                    "{}",
                    error.detail
                );
            }
            if server.health.record_failure(error.cause) == Transition::WentDown {
                tracing::warn!(
                    upstream = %upstream.name,
                    server = %server.addr,
                    cause = %error.cause,
                    "server marked down for {}s after {} failures (health.max_fails)",
                    upstream.config.health.fail_timeout.as_secs(),
                    upstream.config.health.max_fails
                );
            }

            let safe = error.sent == super::Sent::Nothing || idempotent;
            let stale = error.cause == Cause::StaleConnection;
            let stale_allowed = policy.on.contains(&Cause::StaleConnection);
            if stale && stale_allowed && !stale_retry_used && safe && again.is_some() {
                stale_retry_used = true;
                force_fresh = true;
                upstream.races_absorbed.fetch_add(1, Ordering::Relaxed);
                upstream.retries.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().retried(&upstream.name, true);
                tried.clear(); // the same server is fine: only the connection was bad
                next = again;
                continue;
            }
            counted_attempts += 1;
            let may_retry = counted_attempts < policy.attempts
                && policy.on.contains(&error.cause)
                && safe
                && again.is_some();
            if may_retry && upstream.budget().withdraw() {
                upstream.retries.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().retried(&upstream.name, false);
                tried.push(server.addr.clone());
                next = again;
                continue;
            }
            return Outcome {
                result: Err(error),
                attempts,
                timings,
                server: Some(server.addr.clone()),
            };
        }
    }
}
