//! The admin listener (`[admin] listen`): `GET /metrics`, `/healthz` and `/upstreams`.
//!
//! Off unless configured. It is a plain HTTP/1.1 hyper server on its own TCP listener, started
//! and stopped with the proxy by `server`. It reads the same swappable [`State`] as requests do,
//! so after a reload `/upstreams` shows the new servers, while the counters in `metrics` keep
//! counting by name. It never proxies anything and has no access log.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::state::State;

/// How long an admin client may take to send its request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the admin listener (so a port in use fails start-up, like the proxy's own listeners).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves admin requests on `listener` until `stop` is cancelled. Connection tasks go into
/// `tasks`, and end when `stop` is cancelled too: an admin request is short, and a scraper
/// simply retries.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<State>>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::error!(error = %e, "admin: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |request| {
            let state = state.load_full();
            async move { Ok::<_, Infallible>(handle(&state, &request)) }
        });
        let connection = async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        };
        tasks.spawn(stop.clone().run_until_cancelled_owned(connection));
    }
}

/// Answers one admin request.
pub fn handle(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    route(state, request.method(), request.uri().path())
}

/// The admin routes, apart from hyper so they can be tested without a socket.
pub fn route(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::global().render(state),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/upstreams" => {
            let body = serde_json::to_string_pretty(&upstreams(state))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /upstreams\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.to_string())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The `/upstreams` document.
#[derive(Debug, Serialize)]
pub struct UpstreamsReport {
    pub upstreams: Vec<UpstreamStatus>,
}

/// One upstream group in `/upstreams`.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub protocol: &'static str,
    /// Requests sent again after a failed attempt since this config was loaded.
    pub retries: u64,
    /// Keep-alive races absorbed since this config was loaded.
    pub keepalive_races_absorbed: u64,
    pub servers: Vec<ServerStatus>,
}

/// One server in `/upstreams`.
#[derive(Debug, Serialize)]
pub struct ServerStatus {
    pub server: String,
    /// False while passive health (`max_fails` within `fail_timeout`) marks it down.
    pub up: bool,
    /// Milliseconds until a down server may be picked again; null when up.
    pub down_for_ms: Option<u64>,
    /// Failures since the last success, within the current `fail_timeout` window.
    pub consecutive_failures: u32,
    /// The cause of the last failure (DESIGN.md section 4), null if none yet.
    pub last_cause: Option<&'static str>,
    /// When the last failure happened, RFC 3339 UTC.
    pub last_failure: Option<String>,
    /// Requests using a connection to this server right now.
    pub active: usize,
    /// Idle keep-alive connections in its pool.
    pub idle: usize,
}

/// What `/upstreams` shows for `state`, right now.
pub fn upstreams(state: &State) -> UpstreamsReport {
    let now = Instant::now();
    let upstreams = state
        .upstreams
        .iter()
        .map(|upstream| UpstreamStatus {
            name: upstream.name.to_string(),
            protocol: protocol_name(upstream.config.protocol),
            retries: upstream.retries.load(Ordering::Relaxed),
            keepalive_races_absorbed: upstream.races_absorbed.load(Ordering::Relaxed),
            servers: upstream
                .servers
                .iter()
                .map(|server| {
                    let health = server.health.snapshot();
                    let down_for = server
                        .health
                        .down_until()
                        .map(|until| until.saturating_duration_since(now));
                    ServerStatus {
                        server: server.addr.to_string(),
                        up: server.health.is_up(|| now),
                        down_for_ms: down_for.map(|d| d.as_millis() as u64),
                        consecutive_failures: health.fails,
                        last_cause: health.last_cause.map(|c| c.name()),
                        last_failure: health.last_failure.map(rfc3339),
                        active: server.active.load(Ordering::Relaxed),
                        idle: server.pool.idle_count(),
                    }
                })
                .collect(),
        })
        .collect();
    UpstreamsReport { upstreams }
}

/// The config spelling of a protocol.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Https => "https",
        Protocol::Https2 => "https2",
        Protocol::FastCgi => "fastcgi",
    }
}

/// `2026-11-23T10:34:06.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(time)
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::Cause;
    use http_body_util::BodyExt;

    fn state() -> State {
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
            [upstreams.app]\nservers = [\"127.0.0.1:1\"]\nhealth = { max_fails = 2, fail_timeout = \"10s\" }\n\
            [[routes]]\npath = \"/\"\nupstream = \"app\"\n";
        let config = crate::config::parse(text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        State::build(config).expect("state builds")
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn healthz_is_ok_and_unknown_paths_are_404() {
        let state = state();
        let ok = route(&state, &Method::GET, "/healthz");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(body(ok).await, "ok\n");
        assert_eq!(
            route(&state, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&state, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn upstreams_reports_health_with_rfc3339_times() {
        let state = state();
        let server = &state.upstreams[0].servers[0];
        server.health.record_failure(Cause::ConnectRefused);
        server.health.record_failure(Cause::ConnectRefused);
        let json: serde_json::Value =
            serde_json::from_str(&body(route(&state, &Method::GET, "/upstreams")).await)
                .expect("json");
        let entry = &json["upstreams"][0]["servers"][0];
        assert_eq!(json["upstreams"][0]["name"], "app");
        assert_eq!(entry["server"], "127.0.0.1:1");
        assert_eq!(entry["up"], false);
        assert_eq!(entry["consecutive_failures"], 2);
        assert_eq!(entry["last_cause"], "connect_refused");
        let when = entry["last_failure"].as_str().expect("a time");
        assert!(
            time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{when}"
        );
        assert!(entry["down_for_ms"].as_u64().is_some_and(|ms| ms <= 10_000));
    }
}
