//! The hyper service that proxies one request: id, loop check, route, rewrite, send, respond.
//!
//! Its error type is `Infallible`: every failure becomes a response (an `Err` would abort the
//! client connection). The access-log record is created here and travels with the response
//! body, so it is written exactly once, when the body ends, fails, or the client goes away.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::cause::{Cause, CLIENT_CLOSED_REQUEST};
use crate::classify;
use crate::headers::{self, X_REQUEST_ID};
use crate::idle::IdleTimer;
use crate::log::{AccessLog, AccessRecord};
use crate::respond::{self, ErrorContext};
use crate::state::State;
use crate::upstream::body::{BodyAborted, BodyEnd, UpstreamBody};
use crate::upstream::exchange::RequestBody;
use crate::upstream::{BoxError, Outcome, Upstream, UpstreamError};

/// The request id, carried in request extensions so every layer can log it.
#[derive(Clone, Debug, Default)]
pub struct RequestId(pub Arc<str>);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Facts about the client connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// `None` for unix-socket clients.
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    /// The peer's IP address as forwarding headers write it (`unknown` for a unix-socket
    /// client): rendered once per connection, as a header value, so X-Forwarded-For costs a
    /// reference count per request, not a copy.
    pub peer_text: HeaderValue,
}

impl ClientInfo {
    /// A client at `peer` (`None` for a unix-socket client) that reached us at `local`.
    pub fn new(peer: Option<SocketAddr>, local: Option<SocketAddr>, tls: bool) -> ClientInfo {
        let unknown = HeaderValue::from_static("unknown");
        let peer_text = match peer {
            // An IP address's text is always a valid header value.
            Some(peer) => HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(unknown),
            None => unknown,
        };
        ClientInfo {
            peer,
            local,
            tls,
            peer_text,
        }
    }
}

/// What the layers below the proxy need to know about the request they carry, kept in one
/// request extension: one allocation per request (and per retry copy), not one per fact.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request id, so every layer can log it.
    pub id: RequestId,
    pub client: ClientInfo,
    /// The HTTP version the client spoke (the upstream request's own version may differ):
    /// FastCGI reports it as SERVER_PROTOCOL.
    pub client_version: http::Version,
    /// FastCGI: the script the path names, resolved and checked (one `stat`) before the body
    /// was read; the params are built from it rather than resolving the path again. Boxed:
    /// the context lives in every request's future, FastCGI or not.
    pub fastcgi_script: Option<Box<crate::fastcgi::params::Script>>,
    /// Via, X-Forwarded-*/Forwarded and X-Request-Id for an HTTP upstream, written by the
    /// client that sends the request (empty for FastCGI: they are in the map).
    pub added: headers::AddedFields,
    /// The client asked for a protocol switch (WebSocket, `Upgrade` kept on the request): the
    /// attempt needs a connection of its own.
    pub upgrade: bool,
}

impl RequestContext {
    /// Where the upstream response's fields can go: an HTTP/1 client's response is written by
    /// hyper's HTTP/1 server, which also writes fields relayed as bytes; HTTP/2's does not.
    pub fn response_fields(&self) -> crate::upstream::http1::HeadFields {
        if self.client_version >= http::Version::HTTP_2 {
            crate::upstream::http1::HeadFields::Map
        } else {
            crate::upstream::http1::HeadFields::RelayRaw
        }
    }
}

/// The service for one client connection.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ArcSwap<State>>,
    access: AccessLog,
    client: ClientInfo,
    /// Requests open on an HTTP/2 connection, so an idle one can be closed.
    streams: Option<Arc<crate::server::conn::Streams>>,
}

impl Proxy {
    /// A service for a connection from `client`.
    pub fn new(state: Arc<ArcSwap<State>>, access: AccessLog, client: ClientInfo) -> Proxy {
        Proxy {
            state,
            access,
            client,
            streams: None,
        }
    }

    /// Counts this connection's open requests in `streams` (HTTP/2 only: an HTTP/1.1
    /// connection's idleness is hyper's header timer).
    pub fn count_streams(mut self, streams: Arc<crate::server::conn::Streams>) -> Proxy {
        self.streams = Some(streams);
        self
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let state = self.state.load_full();
        let access = self.access.clone();
        let client = self.client.clone();
        let stream = self.streams.as_ref().map(|s| s.open());
        Box::pin(handle(state, access, client, request, stream))
    }
}

/// Why reading the client's request body failed: always the client's doing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than max_request_body ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("client sent no request body data for {idle:?} (request_body_timeout)")]
    Timeout { idle: Duration },
    #[error("client closed the connection while sending the request body")]
    Aborted,
    /// Broken framing (a bad chunk size line, say): the connection is still there and the
    /// client gets the 400 it earned, logged as such.
    #[error("malformed request body: {detail}")]
    Malformed { detail: String },
}

impl ClientBodyError {
    /// Names a failed read of hyper's incoming body. hyper reports broken chunked framing as
    /// an io error of kind `InvalidInput`/`InvalidData`; anything else (EOF, reset, an h2
    /// RST_STREAM) means the client went away.
    fn from_incoming(err: &hyper::Error) -> ClientBodyError {
        match classify::find_source::<std::io::Error>(err) {
            Some(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) =>
            {
                ClientBodyError::Malformed {
                    detail: io.to_string(),
                }
            }
            _ => ClientBodyError::Aborted,
        }
    }
}

/// Proxies one request end to end.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn handle(
    state: Arc<State>,
    access: AccessLog,
    client: ClientInfo,
    request: Request<Incoming>,
    stream: Option<crate::server::conn::OpenStream>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
    // Not an `async fn`: those keep their arguments twice in their state (rustc moves
    // them into locals). And one future, not a wrapper around an inner one: the service
    // boxes it per request, and every nested future is one more copy of its state.
    async move {
        let started_tally = crate::metrics::RequestTally::start();
        let tally = &started_tally;
        let mut response = 'answer: {
            let started = Instant::now();
            let server_config = &state.config.server;
            let peer_ip = client.peer.map(|p| p.ip());
            let trusted = headers::is_trusted(peer_ip, &server_config.trusted_proxies);
            let request_id = headers::request_id(request.headers(), server_config.trust_request_id);
            let host = effective_host(&request);
            // Built only when it will be written: `access_log = "off"` costs nothing per request.
            // Boxed: with the log off, the request's future and body carry 8 bytes for it, not
            // the record's ~370 (moved several times per request).
            let record = access.is_enabled().then(|| {
                Box::new(AccessRecord {
                    referer: header_string(&request, header::REFERER),
                    user_agent: header_string(&request, header::USER_AGENT),
                    ..AccessRecord::arriving(
                        request_id.clone(),
                        client.peer.map_or_else(
                            || "unix".to_string(),
                            |p| {
                                let mut text = String::with_capacity(21);
                                let _ = crate::config::write_socket_addr(&p, &mut text);
                                text
                            },
                        ),
                        request.method().to_string(),
                        host.clone().unwrap_or_default(),
                        request
                            .uri()
                            .path_and_query()
                            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
                        version_name(request.version()),
                    )
                })
            });
            let mut guard = LogGuard {
                record,
                access: access.clone(),
                started,
                bytes_in: None,
            };
            let present = headers::RequestFields::of(request.headers());
            let accept = present
                .accept
                .then(|| request.headers().get(header::ACCEPT).cloned())
                .flatten();
            // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (an absolute-form target may stand in for
            // it). Two Hosts, or none, would let causeway and the upstream disagree on the authority.
            let hosts = present.hosts;
            let absolute = request.uri().authority().is_some();
            if hosts > 1 || (hosts == 0 && !absolute && request.version() == http::Version::HTTP_11)
            {
                let detail = if hosts > 1 {
                    "more than one Host header (RFC 9112 §3.2)"
                } else {
                    "HTTP/1.1 request without a Host header (RFC 9112 §3.2)"
                };
                break 'answer guard.finish_local(StatusCode::BAD_REQUEST, detail, &request_id);
            }

            // Loop (our own pseudonym already in Via), then the route: either refusal is
            // answered here with its cause, before any upstream is involved.
            let routed = if present.via && headers::has_our_via(request.headers()) {
                Err(UpstreamError::new(
                    Cause::LoopDetected,
                    "request already passed through causeway (Via names us): a proxy loop",
                ))
            } else {
                state
                    .routes
                    .lookup(host.as_deref(), request.uri().path())
                    .ok_or_else(|| {
                        UpstreamError::new(
                            Cause::NoRoute,
                            format!(
                                "no route matches host \"{}\" and path \"{}\"",
                                host.as_deref().unwrap_or(""),
                                request.uri().path()
                            ),
                        )
                    })
            };
            let index = match routed {
                Ok(index) => index,
                Err(error) => {
                    break 'answer guard.finish_error(
                        &state,
                        error,
                        None,
                        0,
                        accept.as_ref(),
                        &request_id,
                    )
                }
            };
            let upstream = state.upstreams[index].clone();
            tally.route(&upstream.name);
            if let Some(r) = guard.record.as_mut() {
                r.upstream = Some(upstream.name.to_string());
            }

            // Declared body too large: refuse before reading any of it.
            let max_body = server_config.max_request_body;
            if let Some(length) = present
                .content_length
                .then(|| content_length(&request))
                .flatten()
            {
                if length > max_body {
                    let error =
                        classify::client_body_error(&ClientBodyError::TooLarge { limit: max_body });
                    break 'answer guard.finish_error(
                        &state,
                        error,
                        Some(&upstream),
                        0,
                        accept.as_ref(),
                        &request_id,
                    );
                }
            }

            // FastCGI: a path that names no runnable script is answered here, without a worker.
            let fastcgi_script = match &upstream.fastcgi {
                Some(settings) => {
                    match crate::upstream::fastcgi::check_script(settings, request.uri().path()) {
                        Ok(script) => Some(Box::new(script)),
                        Err(e) => {
                            break 'answer guard.finish_local(
                                e.status(),
                                &e.to_string(),
                                &request_id,
                            );
                        }
                    }
                }
                None => None,
            };

            let is_upgrade = present.upgrade;
            let client_version = request.version();
            let (mut parts, incoming) = request.into_parts();
            let client_upgrade = if is_upgrade {
                Some(hyper::upgrade::on(Request::from_parts(parts.clone(), ())))
            } else {
                None
            };
            // From the body, not the headers: an HTTP/2 body may have neither Content-Length nor
            // Transfer-Encoding, and is empty only when the stream ended with the headers.
            let bodyless = incoming.is_end_stream();
            let bytes_in = Arc::new(AtomicU64::new(0));
            tally.bytes_in(&bytes_in);
            guard.bytes_in = Some(bytes_in.clone());
            let client_body = ClientBody::new(
                incoming,
                max_body,
                server_config.request_body_timeout,
                bytes_in.clone(),
            );
            // FastCGI needs CONTENT_LENGTH up front (PHP reads no more than it): a body of unknown
            // length is spooled, up to `fastcgi.max_spool_body`, else 411 like nginx's
            // `fastcgi_request_buffering` limit.
            let spool_limit = upstream
                .config
                .fastcgi
                .as_ref()
                .filter(|_| !bodyless && !present.content_length)
                .map(|f| f.max_spool_body as usize);
            let buffer_limit = spool_limit.unwrap_or(upstream.config.retry.max_replay_body);
            let buffer_whole = spool_limit.is_some()
                || replayable_length(
                    present.content_length.then_some(&parts.headers),
                    client_body.hint_exact(),
                    buffer_limit,
                )
                .is_some();
            let body = match buffer_whole.then_some(()) {
                Some(_) => match http_body_util::Limited::new(client_body, buffer_limit)
                    .collect()
                    .await
                {
                    Ok(collected) => {
                        let bytes = collected.to_bytes();
                        if spool_limit.is_some() {
                            parts.headers.remove(header::TRANSFER_ENCODING);
                            parts
                                .headers
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                        }
                        RequestBody::full(bytes)
                    }
                    Err(e)
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some() =>
                    {
                        break 'answer guard.finish_local(
                    StatusCode::LENGTH_REQUIRED,
                    "a request body of unknown length larger than fastcgi.max_spool_body needs a Content-Length",
                    &request_id,
                );
                    }
                    Err(e) => {
                        let error = match classify::find_source::<ClientBodyError>(e.as_ref()) {
                            Some(client_error) => classify::client_body_error(client_error),
                            None => classify::client_body_error(&ClientBodyError::Aborted),
                        };
                        let context = FailureContext {
                            state: &state,
                            tally,
                            upstream: &upstream,
                            attempts: 0,
                            accept: accept.as_ref(),
                            request_id: &request_id,
                        };
                        break 'answer guard.answer_failure(error, &context);
                    }
                },
                None if bodyless => RequestBody::empty(),
                None => RequestBody::streaming(BoxBody::new(client_body)),
            };

            // Rewrite the head for the upstream hop.
            headers::strip_hop_by_hop(
                &mut parts.headers,
                is_upgrade,
                upstream.config.protocol.is_http2(),
            );
            // Built once, shared with the response's copy.
            let request_id_value = HeaderValue::from_str(&request_id).ok();
            let fastcgi = upstream.config.protocol == crate::config::Protocol::FastCgi;
            if fastcgi {
                // Its params are built from the map: room first for the added fields.
                parts.headers.reserve(6);
            }
            let added = headers::AddedFields::for_hop(
                &mut parts.headers,
                server_config.forwarded,
                &headers::ClientHop {
                    peer: peer_ip,
                    peer_text: &client.peer_text,
                    proto: if client.tls { "https" } else { "http" },
                    host: host.as_deref(),
                    trusted,
                },
                request_id_value.as_ref(),
                if fastcgi {
                    headers::AddTo::Map
                } else {
                    headers::AddTo::Lines
                },
            );
            // The authority causeway routed on is the one the upstream sees: an absolute-form target
            // (or HTTP/2 `:authority`) replaces Host (RFC 9112 §3.2.2), so the two cannot split.
            // (Host is gone only if it never came or `Connection` named it.)
            let host_missing =
                hosts == 0 || (present.connection && !parts.headers.contains_key(header::HOST));
            if absolute || host_missing {
                if let Some(host) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                    parts.headers.insert(header::HOST, host);
                }
            }
            parts.uri = upstream_uri(std::mem::take(&mut parts.uri), &upstream, host.as_deref());
            parts.version = if upstream.config.protocol.is_http2() {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            parts.extensions = http::Extensions::new();
            let context = RequestContext {
                id: RequestId(Arc::from(request_id.as_str())),
                client: client.clone(),
                client_version,
                fastcgi_script,
                added,
                upgrade: is_upgrade,
            };
            let upstream_request = Request::from_parts(parts, body);

            let outcome: Outcome = upstream.send(upstream_request, &context).await;
            if let Some(r) = guard.record.as_mut() {
                r.attempts = outcome.attempts.clone();
                r.server = outcome.server.as_ref().map(|s| s.to_string());
                r.connect = outcome.timings.connect;
                r.header = outcome.timings.header;
            }
            let attempts = outcome.attempts.len();
            let answered_by = outcome.server.clone();
            let mut response = match outcome.result {
                Ok(response) => response,
                Err(error) => {
                    let context = FailureContext {
                        state: &state,
                        tally,
                        upstream: &upstream,
                        attempts,
                        accept: accept.as_ref(),
                        request_id: &request_id,
                    };
                    break 'answer guard.answer_failure(error, &context);
                }
            };

            let upstream_status = response.status();
            if upstream_status == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade, request_id.clone()));
                }
            }
            let (mut parts, body) = response.into_parts();
            // hyper frames the response for the client's connection, not the upstream's.
            parts.version = client_version;
            headers::strip_hop_by_hop(
                &mut parts.headers,
                upstream_status == StatusCode::SWITCHING_PROTOCOLS,
                false,
            );
            if let Some(value) = request_id_value {
                parts.headers.insert(&X_REQUEST_ID, value);
            }
            let end = body.end_handle();
            let stderr = parts.extensions.remove::<crate::fastcgi::StderrLog>();
            // Always present, even with the access log off: a mid-body failure still gets its WARN
            // line and its failure count when the body ends.
            let logged = Some(LogOnEnd {
                record: guard.take_for_body(upstream_status.as_u16()),
                access,
                started,
                end: Some(end),
                stderr,
                bytes_in,
                who: Who {
                    request_id,
                    upstream: Some(upstream.name.clone()),
                    server: answered_by,
                },
            });
            Response::from_parts(parts, ProxyBody::upstream(body, logged))
        };
        let in_flight = started_tally.responded(response.status());
        response.body_mut().in_flight = Some(in_flight);
        // Open until the response body is over (or dropped with this future).
        response.body_mut().stream = stream;
        Ok(response)
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections (WebSocket).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    request_id: String,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::warn!(request_id = %request_id, error = %e, "protocol upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(request_id = %request_id, error = %e, "upgraded connection ended");
    }
}

/// The authority the client asked for: the absolute-form URI's, else `Host`.
fn effective_host<B>(request: &Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_ascii_lowercase());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_ascii_lowercase())
}

/// The URI as the upstream should see it: origin-form for HTTP/1.1, absolute for HTTP/2.
fn upstream_uri(uri: Uri, upstream: &Upstream, host: Option<&str>) -> Uri {
    if !upstream.config.protocol.is_http2() && uri.authority().is_none() {
        return uri; // already origin-form: nothing to re-parse
    }
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    if !upstream.config.protocol.is_http2() {
        return path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }
    let scheme = if upstream.config.protocol.uses_tls() {
        "https"
    } else {
        "http"
    };
    let authority = host.unwrap_or("localhost");
    format!("{scheme}://{authority}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

fn content_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A body small and known enough to buffer, so the request can be retried. `headers` is `None`
/// when the request carries no Content-Length (no lookup needed).
fn replayable_length(
    headers: Option<&http::HeaderMap>,
    exact: Option<u64>,
    max: usize,
) -> Option<u64> {
    let length = headers
        .and_then(|headers| headers.get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(exact)?;
    (length > 0 && length <= max as u64).then_some(length)
}

fn header_string<B>(request: &Request<B>, name: header::HeaderName) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn empty_response(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::new(), None));
    *response.status_mut() = status;
    response
}

/// What answering a failed upstream exchange needs to know about the request.
struct FailureContext<'a> {
    state: &'a State,
    tally: &'a crate::metrics::RequestTally,
    upstream: &'a Arc<Upstream>,
    attempts: usize,
    accept: Option<&'a HeaderValue>,
    request_id: &'a str,
}

/// Writes the access log for a request that never got a relayed body: on an explicit finish,
/// or on drop if the client went away while we waited.
struct LogGuard {
    record: Option<Box<AccessRecord>>,
    access: AccessLog,
    started: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
}

impl LogGuard {
    fn finish_error(
        &mut self,
        state: &State,
        error: UpstreamError,
        upstream: Option<&Arc<Upstream>>,
        attempts: usize,
        accept: Option<&HeaderValue>,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let context = ErrorContext {
            request_id,
            upstream: upstream.map(|u| &*u.name),
            attempts,
            errors: &state.config.errors,
            accept,
        };
        if attempts == 0 {
            // Failures decided before any upstream attempt (routing, client limits, all
            // servers down): one line for the operator, at INFO because nothing is broken
            // upstream. Failed attempts were already logged at WARN by `retry`.
            tracing::info!(
                cause = %error.cause,
                upstream = upstream.map(|u| &*u.name).unwrap_or(""),
                request_id = %request_id,
                "{}",
                error.detail
            );
        }
        let response = respond::error_response(&error, &context);
        let mut record = self.record.take();
        if let Some(r) = record.as_mut() {
            r.status = response.status().as_u16();
            r.cause = Some(error.cause);
            if r.server.is_none() {
                r.server = error.server.as_ref().map(|s| s.to_string());
            }
            r.complete = true;
        }
        let (parts, body) = response.into_parts();
        let logged = record.map(|record| LogOnEnd {
            record: Some(record),
            access: self.access.clone(),
            started: self.started,
            end: None,
            stderr: None,
            bytes_in: self.bytes_in.clone().unwrap_or_default(),
            who: Who::default(),
        });
        Response::from_parts(parts, ProxyBody::full(body, logged))
    }

    /// An answer causeway gives itself that is not a failure (a FastCGI path naming no
    /// script): plain text, `cause` null, `upstream_status` null.
    fn finish_local(
        &mut self,
        status: StatusCode,
        detail: &str,
        request_id: &str,
    ) -> Response<ProxyBody> {
        tracing::info!(status = status.as_u16(), request_id = %request_id, "{detail}");
        let text = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut record = self.record.take();
        if let Some(r) = record.as_mut() {
            r.status = status.as_u16();
            r.complete = true;
        }
        let logged = record.map(|record| LogOnEnd {
            record: Some(record),
            access: self.access.clone(),
            started: self.started,
            end: None,
            stderr: None,
            bytes_in: self.bytes_in.clone().unwrap_or_default(),
            who: Who::default(),
        });
        let mut response = Response::new(ProxyBody::full(Bytes::from(text), logged));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(&X_REQUEST_ID, id);
        }
        response
    }

    /// Answers a failure while reading the body or exchanging with the upstream: a client that
    /// left gets its 499 line and no answer worth sending; anything else an error response.
    fn answer_failure(
        &mut self,
        error: UpstreamError,
        c: &FailureContext<'_>,
    ) -> Response<ProxyBody> {
        if let Some(ClientBodyError::Malformed { detail }) =
            classify::find_source::<ClientBodyError>(&error)
        {
            return self.finish_local(StatusCode::BAD_REQUEST, detail, c.request_id);
        }
        if error.cause == Cause::ClientClosed {
            self.client_left(c.state, error.cause);
            c.tally.client_left();
            return empty_response(StatusCode::BAD_REQUEST);
        }
        self.finish_error(
            c.state,
            error,
            Some(c.upstream),
            c.attempts,
            c.accept,
            c.request_id,
        )
    }

    /// The client went away before a response: log 499 now.
    fn client_left(&mut self, _state: &State, cause: Cause) {
        if let Some(mut record) = self.record.take() {
            record.status = CLIENT_CLOSED_REQUEST.as_u16();
            record.cause = Some(cause);
            record.total = self.started.elapsed();
            record.bytes_in = self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed));
            self.access.write(&record);
        }
    }

    fn take_for_body(&mut self, upstream_status: u16) -> Option<Box<AccessRecord>> {
        let mut record = self.record.take()?;
        record.status = upstream_status;
        record.upstream_status = Some(upstream_status);
        Some(record)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Still holding the record: the request future was dropped, so the client left
        // (hyper drops the service future when the connection goes away).
        if let Some(mut record) = self.record.take() {
            record.status = CLIENT_CLOSED_REQUEST.as_u16();
            record.cause = Some(Cause::ClientClosed);
            record.total = self.started.elapsed();
            record.bytes_in = self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed));
            record.complete = false;
            self.access.write(&record);
        }
    }
}

/// Writes the access-log line when the response body is over.
struct LogOnEnd {
    /// `None` when the access log is off.
    record: Option<Box<AccessRecord>>,
    access: AccessLog,
    started: Instant,
    end: Option<Arc<Mutex<BodyEnd>>>,
    /// FastCGI STDERR, complete once the body ended.
    stderr: Option<crate::fastcgi::StderrLog>,
    bytes_in: Arc<AtomicU64>,
    who: Who,
}

/// What the error log names for a relayed body, kept apart from the optional access record.
#[derive(Default)]
struct Who {
    request_id: String,
    upstream: Option<Arc<str>>,
    server: Option<crate::config::ServerAddr>,
}

impl LogOnEnd {
    fn write(mut self, complete: bool, bytes_out: u64) {
        let who = &self.who;
        let upstream = who.upstream.as_deref().unwrap_or("");
        // Formatted only for a failure or a stderr line: a clean response formats nothing.
        let server_name = || {
            who.server
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let mut cause = None;
        if let Some(end) = &self.end {
            if let Ok(mut end) = end.lock() {
                if let Some(failure) = end.failure.take() {
                    let server = server_name();
                    cause = Some(failure.cause);
                    if let Some(name) = &who.upstream {
                        crate::metrics::global().attempt_failed(name, &server, failure.cause);
                    }
                    tracing::warn!(
                        cause = %failure.cause,
                        upstream,
                        server,
                        request_id = %who.request_id,
                        "{}",
                        failure.detail
                    );
                }
            }
        }
        let mut stderr_text = None;
        if let Some(stderr) = self.stderr.as_ref().filter(|s| !s.is_empty()) {
            let text = stderr.text();
            let server = server_name();
            // nginx: `FastCGI sent in stderr: "PHP message: PHP Fatal error: ..."`.
            tracing::warn!(
                upstream,
                server,
                request_id = %who.request_id,
                "FastCGI sent in stderr: {text:?}"
            );
            stderr_text = Some(text);
        }
        let Some(record) = self.record.as_mut() else {
            return;
        };
        record.total = self.started.elapsed();
        record.bytes_out = bytes_out;
        record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        record.complete = complete && cause.is_none();
        if cause.is_some() {
            record.cause = cause;
        }
        if stderr_text.is_some() {
            record.fastcgi_stderr = stderr_text;
        }
        if !complete && record.cause.is_none() {
            record.cause = Some(Cause::ClientClosed);
        }
        self.access.write(record);
    }
}

/// The response body causeway sends: relayed from upstream or generated, and logged at its end.
pub struct ProxyBody {
    inner: Inner,
    log: Option<LogOnEnd>,
    bytes_out: u64,
    /// Counts the request in the metrics when the body is over.
    in_flight: Option<crate::metrics::InFlight>,
    /// Keeps the HTTP/2 connection's request count until the body is over.
    stream: Option<crate::server::conn::OpenStream>,
    /// An upstream body failure held back for one poll, so hyper flushes first.
    failed: Option<BodyAborted>,
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    fn upstream(body: UpstreamBody, log: Option<LogOnEnd>) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream(body),
            log,
            bytes_out: 0,
            in_flight: None,
            stream: None,
            failed: None,
        }
    }

    fn full(bytes: Bytes, log: Option<LogOnEnd>) -> ProxyBody {
        let mut body = ProxyBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            log,
            bytes_out: 0,
            in_flight: None,
            stream: None,
            failed: None,
        };
        if let Inner::Full(Some(bytes)) = &body.inner {
            body.bytes_out = bytes.len() as u64;
        }
        body
    }

    fn log_end(&mut self, complete: bool) {
        if let Some(log) = self.log.take() {
            log.write(complete, self.bytes_out);
        }
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.end(self.bytes_out);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(bytes) => match bytes.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => {
                    this.log_end(true);
                    Poll::Ready(None)
                }
            },
            Inner::Upstream(body) => {
                if let Some(failed) = this.failed.take() {
                    return Poll::Ready(Some(Err(failed)));
                }
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    // hyper drops what it has buffered (the head, the last data) when a body
                    // fails in the same poll: return Pending once so its dispatcher flushes,
                    // then the error. The client then sees a head and a cut body, never nothing.
                    this.log_end(false);
                    if let Poll::Ready(Some(Err(e))) = polled {
                        this.failed = Some(e);
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            this.bytes_out += data.len() as u64;
                        }
                        if Body::is_end_stream(&*this) {
                            this.log_end(true);
                        }
                    }
                    Poll::Ready(None) => this.log_end(true),
                    Poll::Ready(Some(Err(_))) => this.log_end(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before its end: the client stopped reading (or the connection died).
        let complete = self.is_end_stream();
        self.log_end(complete);
    }
}

/// The client's request body with causeway's limits: `max_request_body` (413) and
/// `request_body_timeout` between chunks (408). Counts the bytes for the access log.
pub struct ClientBody {
    incoming: Incoming,
    limit: u64,
    idle: IdleTimer,
    received: Arc<AtomicU64>,
}

impl ClientBody {
    fn new(
        incoming: Incoming,
        limit: u64,
        idle_timeout: Duration,
        received: Arc<AtomicU64>,
    ) -> ClientBody {
        ClientBody {
            incoming,
            limit,
            idle: IdleTimer::new(idle_timeout),
            received,
        }
    }

    fn hint_exact(&self) -> Option<u64> {
        self.incoming.size_hint().exact()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > this.limit {
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError::from_incoming(&e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.idle.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ClientBodyError::Timeout {
                    idle: this.idle.timeout(),
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
