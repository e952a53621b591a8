//! Prometheus metrics (DESIGN.md section 7): one registry for the whole process.
//!
//! Counters and histograms live in [`global()`] and are counted where things happen: a request
//! by a [`RequestTally`] that `proxy` carries from its arrival to the end of its response body
//! (whether or not an access log is written), a failed attempt beside its WARN line in `retry`,
//! the header time when an attempt succeeds. Labels are names (upstream, server, cause), never
//! indexes into a config, so a SIGHUP reload just keeps counting. What describes the current
//! state (server up, idle and active connections) is read from the [`State`] at scrape time.
//! Label sets hold `Arc<str>`, `u16` and [`Cause`]: counting allocates nothing on the success
//! path beyond a reference count.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::cause::{Cause, CLIENT_CLOSED_REQUEST};
use crate::config::ServerAddr;
use crate::state::State;

/// The media type of what [`Metrics::render`] writes. Prometheus asks for it and parses it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of `causeway_upstream_header_seconds`, from a fast API to a slow PHP page.
const HEADER_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `route` label: the upstream a request was routed to, or `none`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route(pub Option<Arc<str>>);

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_deref().unwrap_or("none"))
    }
}

impl EncodeLabelValue for Cause {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

/// `causeway_requests_total{route,status}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Route,
    pub status: u16,
}

/// Labels of the per-route byte counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

/// Labels of per-upstream series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

/// Labels of per-server series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
}

/// `causeway_upstream_failures_total{upstream,server,cause}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub upstream: Arc<str>,
    pub server: Arc<str>,
    pub cause: Cause,
}

type HistogramFamily = Family<UpstreamLabels, Histogram, fn() -> Histogram>;

/// Every process-wide series, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    in_flight: Gauge,
    failures: Family<FailureLabels, Counter>,
    header_seconds: HistogramFamily,
    retries: Family<UpstreamLabels, Counter>,
    races_absorbed: Family<UpstreamLabels, Counter>,
}

/// How many series of each kind a thread keeps handles to; more (a config with hundreds of
/// routes) are counted through the family's lookup, as before.
const HOT_HANDLES_MAX: usize = 64;

thread_local! {
    static HOT_HANDLES: RefCell<HotHandles> = const { RefCell::new(HotHandles::new()) };
}

/// This thread's handles to the series every proxied request touches. A family lookup
/// (`Family::get_or_create`) takes the family's shared lock and hashes the label set; with
/// a handle, counting is one atomic add. A handle shares its series with the family, so
/// `/metrics` sees every count. Keyed by the label's `Arc<str>` address, which the entry
/// keeps alive (and so unique): a reloaded route with the same name is a new entry.
struct HotHandles {
    requests: Vec<((usize, u16), Route, Counter)>,
    response_bytes: Vec<(usize, Route, Counter)>,
    header_seconds: Vec<(usize, Arc<str>, Histogram)>,
}

impl HotHandles {
    const fn new() -> HotHandles {
        HotHandles {
            requests: Vec::new(),
            response_bytes: Vec::new(),
            header_seconds: Vec::new(),
        }
    }

    /// Counts one request of `route` answered with `status`.
    fn count_request(&mut self, metrics: &Metrics, route: &Route, status: u16) {
        let fetch = || {
            let labels = RequestLabels {
                route: route.clone(),
                status,
            };
            (
                route.clone(),
                metrics.requests.get_or_create(&labels).clone(),
            )
        };
        let key = (route_key(route), status);
        with_handle(&mut self.requests, key, fetch, |c| {
            c.inc();
        });
    }

    /// Counts `bytes` of response body sent for `route`.
    fn count_response_bytes(&mut self, metrics: &Metrics, route: &Route, bytes: u64) {
        let fetch = || {
            let labels = RouteLabels {
                route: route.clone(),
            };
            (
                route.clone(),
                metrics.response_bytes.get_or_create(&labels).clone(),
            )
        };
        with_handle(&mut self.response_bytes, route_key(route), fetch, |c| {
            c.inc_by(bytes);
        });
    }

    /// Records one header time of `upstream`.
    fn observe_header(&mut self, metrics: &Metrics, upstream: &Arc<str>, seconds: f64) {
        let fetch = || {
            let labels = UpstreamLabels {
                upstream: upstream.clone(),
            };
            (
                upstream.clone(),
                metrics.header_seconds.get_or_create(&labels).clone(),
            )
        };
        let key = upstream.as_ptr() as usize;
        with_handle(&mut self.header_seconds, key, fetch, |h| h.observe(seconds));
    }
}

/// Runs `count` on the handle kept in `handles` under `key`; on a miss, on the one `fetch`
/// gets from its family (with the label it keeps alive), kept for next time up to
/// `HOT_HANDLES_MAX`.
fn with_handle<K: PartialEq, L, H>(
    handles: &mut Vec<(K, L, H)>,
    key: K,
    fetch: impl FnOnce() -> (L, H),
    count: impl FnOnce(&H),
) {
    if let Some((.., handle)) = handles.iter().find(|(k, ..)| *k == key) {
        count(handle);
        return;
    }
    let (label, handle) = fetch();
    count(&handle);
    if handles.len() < HOT_HANDLES_MAX {
        handles.push((key, label, handle));
    }
}

/// A route's identity for [`HotHandles`]: its name's address (0 for no route).
fn route_key(route: &Route) -> usize {
    route.0.as_ref().map_or(0, |name| name.as_ptr() as usize)
}

/// The metrics of this process, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every family registered and no series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "causeway_requests",
            "Requests answered, by route (the upstream, or none) and the status the client got",
            requests.clone(),
        );
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "causeway_request_bytes",
            "Request body bytes received from clients",
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "causeway_response_bytes",
            "Response body bytes sent to clients",
            response_bytes.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "causeway_requests_in_flight",
            "Requests received whose response has not ended yet",
            in_flight.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "causeway_upstream_failures",
            "Failed upstream attempts, by cause (DESIGN.md section 4)",
            failures.clone(),
        );
        let header_seconds: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(HEADER_BUCKETS));
        registry.register(
            "causeway_upstream_header_seconds",
            "Seconds from the request sent to the complete response head, successful attempts",
            header_seconds.clone(),
        );
        let retries = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "causeway_retries",
            "Attempts sent again after a failed one (keep-alive races included)",
            retries.clone(),
        );
        let races_absorbed = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "causeway_keepalive_races_absorbed",
            "Requests sent again on a fresh connection after a reused one was closed under them",
            races_absorbed.clone(),
        );
        Metrics {
            registry,
            requests,
            request_bytes,
            response_bytes,
            in_flight,
            failures,
            header_seconds,
            retries,
            races_absorbed,
        }
    }

    /// Counts one answered request and the bytes of its bodies.
    fn request_done(&self, route: Route, status: u16, bytes_in: u64, bytes_out: u64) {
        let cached = self.with_hot_handles(|hot| {
            hot.count_request(self, &route, status);
            if bytes_out > 0 {
                hot.count_response_bytes(self, &route, bytes_out);
            }
        });
        if cached.is_none() {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    status,
                })
                .inc();
            if bytes_out > 0 {
                self.response_bytes
                    .get_or_create(&RouteLabels {
                        route: route.clone(),
                    })
                    .inc_by(bytes_out);
            }
        }
        if bytes_in > 0 {
            self.request_bytes
                .get_or_create(&RouteLabels { route })
                .inc_by(bytes_in);
        }
    }

    /// Runs `count` with this thread's [`HotHandles`], if this is the process's registry and
    /// the handles are free (they always are: nothing in `count` comes back here).
    fn with_hot_handles<R>(&self, count: impl FnOnce(&mut HotHandles) -> R) -> Option<R> {
        if !std::ptr::eq(self, global()) {
            return None;
        }
        HOT_HANDLES.with(|hot| hot.try_borrow_mut().ok().map(|mut hot| count(&mut hot)))
    }

    /// One failed attempt against `server` (any phase, the body phase included).
    pub fn attempt_failed(&self, upstream: &Arc<str>, server: &str, cause: Cause) {
        self.failures
            .get_or_create(&FailureLabels {
                upstream: upstream.clone(),
                server: Arc::from(server),
                cause,
            })
            .inc();
    }

    /// Like [`Metrics::attempt_failed`], with the server as its config address.
    pub fn server_failed(&self, upstream: &Arc<str>, server: &ServerAddr, cause: Cause) {
        self.attempt_failed(upstream, &server.to_string(), cause);
    }

    /// A successful attempt's time from request sent to response head.
    pub fn header_received(&self, upstream: &Arc<str>, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let cached = self.with_hot_handles(|hot| hot.observe_header(self, upstream, seconds));
        if cached.is_none() {
            self.header_seconds
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.clone(),
                })
                .observe(seconds);
        }
    }

    /// An attempt is being sent again; `race` when it is the keep-alive race being absorbed.
    pub fn retried(&self, upstream: &Arc<str>, race: bool) {
        let labels = UpstreamLabels {
            upstream: upstream.clone(),
        };
        self.retries.get_or_create(&labels).inc();
        if race {
            self.races_absorbed.get_or_create(&labels).inc();
        }
    }

    /// The whole exposition: the process-wide series, then those read from `state` (server up,
    /// idle and active connections), then the OpenMetrics `# EOF`.
    pub fn render(&self, state: &State) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an encoder error would be a bug in a label.
        let encoded = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &state_registry(state)))
            .and_then(|()| text::encode_eof(&mut out));
        if let Err(e) = encoded {
            let _ = writeln!(out, "# causeway: encoding failed: {e}");
        }
        out
    }
}

/// One request's part in the metrics, from its arrival until [`RequestTally::responded`]; then
/// an [`InFlight`] travels with the response body. Dropped without a response (the client went
/// away first), it counts the request as 499. Holds references only: nothing is allocated.
#[derive(Debug)]
pub struct RequestTally {
    route: OnceLock<Arc<str>>,
    bytes_in: OnceLock<Arc<AtomicU64>>,
    status: OnceLock<u16>,
    answered: bool,
}

impl RequestTally {
    /// A request arrived: it is in flight from now on.
    pub fn start() -> RequestTally {
        global().in_flight.inc();
        RequestTally {
            route: OnceLock::new(),
            bytes_in: OnceLock::new(),
            status: OnceLock::new(),
            answered: false,
        }
    }

    /// The request was routed to `upstream`: the `route` label.
    pub fn route(&self, upstream: &Arc<str>) {
        let _ = self.route.set(upstream.clone());
    }

    /// The counter of request body bytes received from the client.
    pub fn bytes_in(&self, received: &Arc<AtomicU64>) {
        let _ = self.bytes_in.set(received.clone());
    }

    /// The client left before a response: counted as 499 whatever the response says (it is
    /// never sent), as in the access log.
    pub fn client_left(&self) {
        let _ = self.status.set(CLIENT_CLOSED_REQUEST.as_u16());
    }

    /// The response head is ready: the request is counted in flight until its body ends, by
    /// the returned [`InFlight`].
    pub fn responded(mut self, status: http::StatusCode) -> InFlight {
        self.answered = true;
        InFlight {
            route: Route(self.route.take()),
            status: self.status.get().copied().unwrap_or(status.as_u16()),
            bytes_in: self.bytes_in.take(),
            bytes_out: 0,
        }
    }
}

impl Drop for RequestTally {
    fn drop(&mut self) {
        if !self.answered {
            // The request future was dropped: the client went away before any response.
            drop(InFlight {
                route: Route(self.route.take()),
                status: CLIENT_CLOSED_REQUEST.as_u16(),
                bytes_in: self.bytes_in.take(),
                bytes_out: 0,
            });
        }
    }
}

/// A request whose response body is being sent; counted when dropped (body ended, failed, or
/// the client went away).
#[derive(Debug)]
pub struct InFlight {
    route: Route,
    status: u16,
    bytes_in: Option<Arc<AtomicU64>>,
    bytes_out: u64,
}

impl InFlight {
    /// The response body is over after `bytes_out` bytes.
    pub fn end(mut self, bytes_out: u64) {
        self.bytes_out = bytes_out;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let metrics = global();
        metrics.in_flight.dec();
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        let route = std::mem::replace(&mut self.route, Route(None));
        metrics.request_done(route, self.status, bytes_in, self.bytes_out);
    }
}

/// Gauges that describe the state right now, built for one scrape.
fn state_registry(state: &State) -> Registry {
    let mut registry = Registry::default();
    let up = Family::<ServerLabels, Gauge>::default();
    let idle = Family::<ServerLabels, Gauge>::default();
    let active = Family::<ServerLabels, Gauge>::default();
    let now = Instant::now();
    for upstream in &state.upstreams {
        for server in &upstream.servers {
            let labels = ServerLabels {
                upstream: upstream.name.clone(),
                server: Arc::from(server.addr.to_string()),
            };
            up.get_or_create(&labels)
                .set(i64::from(server.health.is_up(|| now)));
            idle.get_or_create(&labels)
                .set(gauge_value(server.pool.idle_count()));
            active
                .get_or_create(&labels)
                .set(gauge_value(server.active.load(Ordering::Relaxed)));
        }
    }
    registry.register(
        "causeway_upstream_server_up",
        "1 if the server may be picked, 0 while passive health marks it down",
        up,
    );
    registry.register(
        "causeway_upstream_idle_connections",
        "Idle keep-alive connections in the server's pool",
        idle,
    );
    registry.register(
        "causeway_upstream_active_requests",
        "Requests using a connection to the server right now",
        active,
    );
    registry
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: &str) -> State {
        let config = crate::config::parse(config, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        State::build(config).expect("state builds")
    }

    const CONFIG: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\n\
        [upstreams.app]\nservers = [\"127.0.0.1:1\", \"unix:/run/app.sock\"]\n\
        [[routes]]\npath = \"/\"\nupstream = \"app\"\n";

    #[test]
    fn counts_through_thread_handles_land_in_the_shared_series() {
        let metrics = global();
        let route = Route(Some(Arc::from("hot-handles-test")));
        for _ in 0..3 {
            metrics.request_done(route.clone(), 200, 0, 10);
        }
        metrics.request_done(route.clone(), 502, 0, 0);
        // Another worker thread keeps its own handles to the same series.
        let elsewhere = route.clone();
        std::thread::spawn(move || global().request_done(elsewhere, 200, 0, 5))
            .join()
            .expect("counting thread");
        // A reload builds the route anew: same name, another `Arc`, the same series.
        let reloaded = Route(Some(Arc::from("hot-handles-test")));
        metrics.request_done(reloaded, 200, 0, 0);
        let count = |status| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    status,
                })
                .get()
        };
        assert_eq!(count(200), 5);
        assert_eq!(count(502), 1);
        let bytes = metrics
            .response_bytes
            .get_or_create(&RouteLabels { route })
            .get();
        assert_eq!(bytes, 35);
    }

    #[test]
    fn cause_label_is_its_contract_name_and_route_defaults_to_none() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("app");
        metrics.attempt_failed(&app, "127.0.0.1:1", Cause::ConnectRefused);
        metrics.attempt_failed(&app, "127.0.0.1:1", Cause::ConnectRefused);
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: Route(None),
                status: 404,
            })
            .inc();
        let text = metrics.render(&state(CONFIG));
        assert!(
            text.contains(
                "causeway_upstream_failures_total{upstream=\"app\",server=\"127.0.0.1:1\",cause=\"connect_refused\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("causeway_requests_total{route=\"none\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn state_gauges_name_every_server() {
        let text = Metrics::new().render(&state(CONFIG));
        for server in ["127.0.0.1:1", "unix:/run/app.sock"] {
            assert!(
                text.contains(&format!(
                    "causeway_upstream_server_up{{upstream=\"app\",server=\"{server}\"}} 1"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "causeway_upstream_idle_connections{{upstream=\"app\",server=\"{server}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn header_seconds_is_a_histogram_per_upstream() {
        let metrics = Metrics::new();
        metrics.header_received(&Arc::from("app"), Duration::from_millis(30));
        let text = metrics.render(&state(CONFIG));
        assert!(
            text.contains("# TYPE causeway_upstream_header_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "causeway_upstream_header_seconds_bucket{le=\"0.05\",upstream=\"app\"} 1"
            ) || text.contains(
                "causeway_upstream_header_seconds_bucket{upstream=\"app\",le=\"0.05\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("causeway_upstream_header_seconds_count{upstream=\"app\"} 1"),
            "{text}"
        );
    }

    fn global_count(name: &str, labels: &str) -> Option<String> {
        let text = global().render(&state(CONFIG));
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    #[test]
    fn a_request_counts_when_its_body_ends_with_its_route_and_bytes() {
        let tally = RequestTally::start();
        tally.route(&Arc::from("tally_ok"));
        tally.bytes_in(&Arc::new(AtomicU64::new(7)));
        let in_flight = tally.responded(http::StatusCode::OK);
        let requests = "route=\"tally_ok\",status=\"200\"";
        assert_eq!(global_count("causeway_requests_total", requests), None);
        in_flight.end(10);
        assert_eq!(
            global_count("causeway_requests_total", requests).as_deref(),
            Some("1")
        );
        let route = "route=\"tally_ok\"";
        assert_eq!(
            global_count("causeway_request_bytes_total", route).as_deref(),
            Some("7")
        );
        assert_eq!(
            global_count("causeway_response_bytes_total", route).as_deref(),
            Some("10")
        );
    }

    #[test]
    fn a_request_dropped_before_its_response_counts_as_499() {
        let tally = RequestTally::start();
        tally.route(&Arc::from("tally_gone"));
        drop(tally);
        let gone = RequestTally::start();
        gone.route(&Arc::from("tally_gone"));
        gone.client_left();
        gone.responded(http::StatusCode::BAD_REQUEST).end(0);
        assert_eq!(
            global_count(
                "causeway_requests_total",
                "route=\"tally_gone\",status=\"499\""
            )
            .as_deref(),
            Some("2")
        );
    }

    #[test]
    fn retries_and_races_count_separately() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("app");
        metrics.retried(&app, false);
        metrics.retried(&app, true);
        let text = metrics.render(&state(CONFIG));
        assert!(
            text.contains("causeway_retries_total{upstream=\"app\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("causeway_keepalive_races_absorbed_total{upstream=\"app\"} 1"),
            "{text}"
        );
    }
}
