//! One upstream group: pick a server, get a connection, exchange one request.
//!
//! [`Upstream::send`] is the whole upstream side of a request: balance over healthy servers,
//! check a connection out of the pool (or `connect` a fresh one), and `exchange` the request.
//! Every failure comes back as one [`UpstreamError`] whose cause was decided where the failure
//! happened (by `classify`); nothing above this module inspects raw errors.

pub mod body;
pub mod connect;
pub mod exchange;
pub mod fastcgi;
pub mod health;
pub mod http1;
pub mod pool;
pub mod retry;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;

use crate::cause::Cause;
use crate::config::{self, ServerAddr};
use crate::proxy::RequestContext;
use crate::resolve::Resolver;

pub use body::UpstreamBody;
use connect::Connector;
use health::ServerHealth;
use pool::Pool;

/// Boxed error for the `source` chain of an [`UpstreamError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How much of the request reached the upstream: retry safety depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sent {
    /// Nothing was written: a retry is safe for any method.
    Nothing,
    /// The head (and maybe part of the body) was written.
    Head,
    /// The whole request was written.
    All,
}

/// Whether the connection an attempt used was fresh or came from the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    Fresh,
    /// A pooled connection that sat idle this long before the attempt.
    Pooled {
        idle: Duration,
    },
}

impl Reuse {
    /// Whether the connection had served a request before.
    pub fn is_reused(self) -> bool {
        matches!(self, Reuse::Pooled { .. })
    }

    /// Idle time in milliseconds for the access log (0 for a fresh connection).
    pub fn idle_ms(self) -> u64 {
        match self {
            Reuse::Fresh => 0,
            Reuse::Pooled { idle } => idle.as_millis() as u64,
        }
    }
}

/// Extra facts some causes carry into `Proxy-Status` (RFC 9209 parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStatusParams {
    /// `rcode` for `dns_error`.
    pub rcode: Option<String>,
    /// `alert-id` for `tls_alert_received`.
    pub alert_id: Option<u8>,
    /// `received-status` when the upstream sent a status before failing.
    pub received_status: Option<u16>,
    /// Part of a response head arrived before the close: `http_response_incomplete`.
    pub partial_head: bool,
}

/// One failed attempt: what went wrong, where, and on which connection.
#[derive(Debug, thiserror::Error)]
#[error("{cause}: {detail}")]
pub struct UpstreamError {
    pub cause: Cause,
    /// The server the attempt went to; `None` before one was picked.
    pub server: Option<ServerAddr>,
    pub reuse: Reuse,
    pub sent: Sent,
    /// One sentence for operators: "connect to 127.0.0.1:3000 refused".
    pub detail: String,
    /// A fix hint shown with `expose = "detail"` and in `diagnose`.
    pub hint: Option<String>,
    pub params: ProxyStatusParams,
    /// Seconds until a server may be back, for `Retry-After` on 503.
    pub retry_after: Option<u64>,
    #[source]
    pub source: Option<BoxError>,
}

impl UpstreamError {
    /// An error with the given cause and detail; the rest filled in by builder methods.
    pub fn new(cause: Cause, detail: impl Into<String>) -> UpstreamError {
        UpstreamError {
            cause,
            server: None,
            reuse: Reuse::Fresh,
            sent: Sent::Nothing,
            detail: detail.into(),
            hint: None,
            params: ProxyStatusParams::default(),
            retry_after: None,
            source: None,
        }
    }

    /// Sets the server the attempt went to.
    pub fn at(mut self, server: &ServerAddr) -> UpstreamError {
        self.server = Some(server.clone());
        self
    }

    /// Keeps the raw error as the source.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> UpstreamError {
        self.source = Some(source.into());
        self
    }

    /// Adds a fix hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> UpstreamError {
        self.hint = Some(hint.into());
        self
    }

    /// The RFC 9209 error type for this failure: the table's, except a premature close after
    /// part of a head, which is `http_response_incomplete`.
    pub fn proxy_status_error(&self) -> Option<&'static str> {
        if self.cause == Cause::PrematureClose && self.params.partial_head {
            return Some("http_response_incomplete");
        }
        self.cause.info().proxy_status
    }
}

/// One attempt as the access log lists it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub server: ServerAddr,
    pub cause: Option<Cause>,
    pub reuse: Reuse,
    pub elapsed: Duration,
}

/// What a successful exchange returns besides the response.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub connect: Option<Duration>,
    pub header: Option<Duration>,
}

/// A request ready to go upstream: head already rewritten by `headers`.
pub type UpstreamRequest = Request<exchange::RequestBody>;

/// The result of [`Upstream::send`]: the response (or the last error) and every attempt.
pub struct Outcome {
    pub result: Result<Response<UpstreamBody>, UpstreamError>,
    pub attempts: Vec<Attempt>,
    pub timings: Timings,
    /// The server that answered (or failed last).
    pub server: Option<ServerAddr>,
}

/// One server of a group with its pool and health state.
#[derive(Debug)]
pub struct Server {
    pub addr: ServerAddr,
    pub pool: Pool,
    pub health: ServerHealth,
    /// Requests in flight, for `least_conn`.
    pub active: AtomicUsize,
}

/// One upstream group, built from `[upstreams.NAME]`.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub config: config::Upstream,
    pub servers: Vec<Arc<Server>>,
    pub(crate) connector: Connector,
    /// FastCGI's script mapping, built once from `config.fastcgi` (it is read per request).
    pub fastcgi: Option<crate::fastcgi::FastCgiSettings>,
    next: AtomicUsize,
    budget: retry::Budget,
    /// Keep-alive races absorbed: stale pooled connections whose request was sent again on a
    /// fresh one (for metrics; the log has each one).
    pub races_absorbed: std::sync::atomic::AtomicU64,
    /// Retries sent after a failed attempt (stale retries included).
    pub retries: std::sync::atomic::AtomicU64,
}

impl Upstream {
    /// Builds the group; fails only when its TLS settings cannot be loaded.
    pub fn new(
        config: &config::Upstream,
        resolver: Resolver,
        workers: usize,
    ) -> Result<Upstream, BoxError> {
        let connector = Connector::new(config, resolver)?;
        let servers = config
            .servers
            .iter()
            .map(|addr| {
                Arc::new(Server {
                    addr: addr.clone(),
                    pool: Pool::new(config.pool, config.max_conns, workers),
                    health: ServerHealth::new(config.health.max_fails, config.health.fail_timeout),
                    active: AtomicUsize::new(0),
                })
            })
            .collect();
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            servers,
            connector,
            fastcgi: config.fastcgi.as_ref().map(fastcgi::settings),
            next: AtomicUsize::new(0),
            budget: retry::Budget::new(config.retry.budget),
            races_absorbed: Default::default(),
            retries: Default::default(),
        })
    }

    /// Picks a healthy server, skipping those in `tried` when another is available.
    /// Allocates nothing: it runs once per request.
    fn pick(&self, tried: &[ServerAddr]) -> Result<Arc<Server>, UpstreamError> {
        // Read once, and only if a server with recent failures needs it.
        let now = std::cell::OnceCell::new();
        let clock = || *now.get_or_init(Instant::now);
        let up = |s: &&Arc<Server>| s.health.is_up(clock);
        let untried = |s: &&Arc<Server>| !tried.contains(&s.addr);
        let healthy = self.servers.iter().filter(up).count();
        if healthy == 0 {
            let retry_after = self
                .servers
                .iter()
                .filter_map(|s| s.health.down_until())
                .min()
                .map(|until| {
                    // Rounded up: a client told "4" when 4.9 s remain would come back early.
                    let left = until.saturating_duration_since(clock());
                    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
                });
            let mut err = UpstreamError::new(
                Cause::NoHealthyUpstream,
                format!(
                    "every server of upstream \"{}\" is marked down after repeated failures",
                    self.name
                ),
            )
            .with_hint("see the earlier WARN lines for why each server was marked down");
            err.retry_after = retry_after;
            return Err(err);
        }
        // Healthy servers not tried yet, else every healthy one (a retry may go back).
        let fresh = if tried.is_empty() {
            healthy
        } else {
            self.servers.iter().filter(up).filter(untried).count()
        };
        let only_fresh = fresh > 0 && fresh < healthy;
        let candidates = || {
            self.servers
                .iter()
                .filter(up)
                .filter(move |s| !only_fresh || untried(s))
        };
        let len = if only_fresh { fresh } else { healthy };
        // One candidate needs no rotation, and the shared counter is not written.
        let start = if len == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        let chosen = match self.config.balance {
            config::Balance::RoundRobin => candidates().nth(start),
            // Fewest active requests; ties go to the first from the rotating start.
            config::Balance::LeastConn => candidates()
                .enumerate()
                .min_by_key(|(i, s)| (s.active.load(Ordering::Relaxed), (i + len - start) % len))
                .map(|(_, s)| s),
        };
        match chosen {
            Some(server) => Ok(server.clone()),
            // Health changed between the passes: take whichever is up now, else the first.
            None => Ok(self
                .servers
                .iter()
                .find(up)
                .unwrap_or(&self.servers[0])
                .clone()),
        }
    }

    /// Sends one request, retrying as `retry` allows, and reports every attempt.
    pub fn send<'a>(
        &'a self,
        request: UpstreamRequest,
        context: &'a RequestContext,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'a {
        // Not an `async fn`: that would wrap the retry loop's future in one more layer.
        retry::send_with_retries(self, request, context)
    }

    /// One attempt against one server: wait for a slot, check a connection out of the pool
    /// (unless `fresh` is asked for) or connect, then exchange. The request comes back inside
    /// the error whenever it was never written.
    #[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
    fn attempt<'a>(
        &'a self,
        server: &'a Arc<Server>,
        request: UpstreamRequest,
        timings: &'a mut Timings,
        fresh: bool,
        context: &'a RequestContext,
    ) -> impl std::future::Future<Output = Result<(Response<UpstreamBody>, Reuse), exchange::Failed>>
           + Send
           + 'a {
        // Not an `async fn`: those keep their arguments twice in their state (rustc moves
        // them into locals), and this future is copied into its caller's.
        async move {
            let permit = match server.pool.acquire(self.config.queue_timeout).await {
                Ok(permit) => permit,
                Err(waited) => {
                    let error = UpstreamError::new(
                    Cause::UpstreamBusy,
                    format!(
                        "all {} connections to {} busy; waited {} ms for one (max_conns, queue_timeout)",
                        self.config.max_conns.unwrap_or(0),
                        server.addr,
                        waited.as_millis()
                    ),
                )
                .at(&server.addr)
                .with_hint("raise max_conns (keep it at or below the backend's worker count) or queue_timeout");
                    return Err(exchange::Failed {
                        error,
                        request: Some(request),
                    });
                }
            };
            let _active = ActiveGuard::new(&server.active);
            // The FastCGI and connect futures are boxed: inline, their state would make every
            // request's future (moved into a box per request by the service) a third larger.
            if self.config.protocol == config::Protocol::FastCgi {
                return Box::pin(fastcgi::attempt(
                    self, server, request, timings, permit, context,
                ))
                .await;
            }
            let is_upgrade = context.upgrade;
            // One clock read for the idle check and, on a pooled connection, the send time.
            let now = Instant::now();
            let pooled = if is_upgrade || fresh {
                None
            } else {
                server.pool.checkout(now)
            };
            let (conn, sent_at) = match pooled {
                Some(conn) => (conn, now),
                None => match Box::pin(self.connector.connect(&server.addr, is_upgrade)).await {
                    Ok(conn) => {
                        let connected = Instant::now();
                        timings.connect = Some(connected - now);
                        (conn, connected)
                    }
                    Err(error) => {
                        let error = error.at(&server.addr);
                        return Err(exchange::Failed {
                            error,
                            request: Some(request),
                        });
                    }
                },
            };
            let reuse = conn.reuse;
            match exchange::send(
                conn,
                request,
                &context.added,
                &self.config,
                server.clone(),
                permit,
                context.response_fields(),
            )
            .await
            {
                Ok(response) => {
                    timings.header = Some(sent_at.elapsed());
                    Ok((response, reuse))
                }
                Err(mut failed) => {
                    failed.error = failed.error.at(&server.addr);
                    Err(failed)
                }
            }
        }
    }

    /// The per-request retry budget.
    pub fn budget(&self) -> &retry::Budget {
        &self.budget
    }
}

/// Counts a request as active on a server while it lives.
struct ActiveGuard<'a>(&'a AtomicUsize);

impl<'a> ActiveGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> ActiveGuard<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A whole body buffered in memory, for replayable requests and error pages.
pub fn full_body(bytes: impl Into<Bytes>) -> exchange::RequestBody {
    exchange::RequestBody::full(bytes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(balance: &str) -> Arc<Upstream> {
        let text = format!(
            "[upstreams.app]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n\
             balance = \"{balance}\"\nhealth = {{ max_fails = 1, fail_timeout = \"10s\" }}\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
        );
        let config = crate::config::parse(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let state = crate::state::State::build(config).expect("state builds");
        state.upstreams[0].clone()
    }

    fn port(server: &Server) -> u16 {
        match &server.addr {
            ServerAddr::Ip(addr) => addr.port(),
            other => panic!("unexpected server {other:?}"),
        }
    }

    fn picks(upstream: &Upstream, tried: &[ServerAddr], n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| port(&upstream.pick(tried).expect("a server")))
            .collect()
    }

    #[test]
    fn round_robin_rotates_over_healthy_servers_and_skips_the_down_one() {
        let upstream = upstream("round_robin");
        let mut seen = picks(&upstream, &[], 6);
        seen.sort_unstable();
        assert_eq!(seen, [1, 1, 2, 2, 3, 3]);
        upstream.servers[1]
            .health
            .record_failure(Cause::ConnectRefused);
        let seen = picks(&upstream, &[], 6);
        assert!(!seen.contains(&2), "a down server is not picked: {seen:?}");
        assert!(seen.contains(&1) && seen.contains(&3), "{seen:?}");
    }

    #[test]
    fn a_retry_goes_to_a_server_not_tried_yet_while_there_is_one() {
        let upstream = upstream("round_robin");
        let tried = [
            upstream.servers[0].addr.clone(),
            upstream.servers[2].addr.clone(),
        ];
        assert_eq!(picks(&upstream, &tried, 4), [2, 2, 2, 2]);
        // Every server tried: any healthy one may be tried again.
        let all: Vec<ServerAddr> = upstream.servers.iter().map(|s| s.addr.clone()).collect();
        assert_eq!(picks(&upstream, &all, 3).len(), 3);
    }

    #[test]
    fn least_conn_picks_the_server_with_fewest_requests_in_flight() {
        let upstream = upstream("least_conn");
        upstream.servers[0].active.store(5, Ordering::Relaxed);
        upstream.servers[1].active.store(1, Ordering::Relaxed);
        upstream.servers[2].active.store(3, Ordering::Relaxed);
        assert_eq!(picks(&upstream, &[], 4), [2, 2, 2, 2]);
        // Ties rotate instead of always landing on the first server.
        for server in &upstream.servers {
            server.active.store(0, Ordering::Relaxed);
        }
        let mut seen = picks(&upstream, &[], 3);
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn every_server_down_is_no_healthy_upstream() {
        let upstream = upstream("round_robin");
        for server in &upstream.servers {
            server.health.record_failure(Cause::ConnectRefused);
        }
        let error = upstream.pick(&[]).expect_err("nothing to pick");
        assert_eq!(error.cause, Cause::NoHealthyUpstream);
        assert!(error.retry_after.is_some());
    }
}
