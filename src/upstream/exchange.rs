//! One request/response exchange on an upstream connection: HTTP/1.1 with causeway's own
//! client (`http1`) when the request body is empty or buffered, else hyper (streamed uploads,
//! upgrades, HTTP/2).
//!
//! hyper reports *that* an exchange failed but not *where*: on its path this module records the
//! two facts that decide the cause — whether the whole request was written (`Progress`) and
//! whether any response byte arrived ([`IoStats`]) — and runs the `write` and `header` timeouts
//! as a watchdog beside the exchange, so a slow body never trips the header timeout and vice
//! versa. causeway's own client knows both facts as it goes and runs the same timeouts itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{sleep, sleep_until, Instant};

use super::body::UpstreamBody;
use super::connect::{fmt_duration, Counted, IoStats, Stream};
use super::http1::{
    HeadFields, Http1Body, Http1Conn, Http1Error, Limits as Http1Limits, ResponseHead, Written,
};
use super::pool::Permit;
use super::{BoxError, Reuse, Sent, Server, UpstreamError};
use crate::cause::Cause;
use crate::classify;
use crate::config::{self, Protocol};
use crate::headers::AddedFields;
use crate::proxy::ClientBodyError;

/// The request body as it goes upstream: empty, buffered (replayable), or streamed from the
/// client. Records how far hyper got in sending it.
pub struct RequestBody {
    kind: BodyKind,
    /// Created when hyper is about to send the body: causeway's own client does not need it.
    progress: Option<Arc<Progress>>,
}

enum BodyKind {
    Empty,
    Full(Option<Bytes>),
    Streaming(BoxBody<Bytes, BoxError>),
}

impl RequestBody {
    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody::with_kind(BodyKind::Empty)
    }

    /// A buffered body that can be sent again on a retry.
    pub fn full(bytes: Bytes) -> RequestBody {
        if bytes.is_empty() {
            return RequestBody::empty();
        }
        RequestBody::with_kind(BodyKind::Full(Some(bytes)))
    }

    /// A body streamed from the client; it cannot be replayed once polled.
    pub fn streaming(body: BoxBody<Bytes, BoxError>) -> RequestBody {
        RequestBody::with_kind(BodyKind::Streaming(body))
    }

    fn with_kind(kind: BodyKind) -> RequestBody {
        RequestBody {
            kind,
            progress: None,
        }
    }

    /// A copy for another attempt, if this body can be replayed.
    pub fn replay(&self) -> Option<RequestBody> {
        match &self.kind {
            BodyKind::Empty => Some(RequestBody::empty()),
            BodyKind::Full(Some(bytes)) => Some(RequestBody::full(bytes.clone())),
            BodyKind::Full(None) | BodyKind::Streaming(_) => None,
        }
    }

    /// Whether this body may be sent again after a failed attempt.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, BodyKind::Empty | BodyKind::Full(_))
    }

    /// The whole body when it is in memory and not yet handed to hyper: what causeway's own
    /// HTTP/1.1 client writes (without consuming it, so it can be sent again).
    pub fn buffered(&self) -> Option<&[u8]> {
        match &self.kind {
            BodyKind::Empty => Some(&[]),
            BodyKind::Full(Some(bytes)) => Some(bytes),
            BodyKind::Full(None) | BodyKind::Streaming(_) => None,
        }
    }

    fn progress(&mut self) -> Arc<Progress> {
        let done = matches!(self.kind, BodyKind::Empty);
        self.progress
            .get_or_insert_with(|| Arc::new(Progress::new(done)))
            .clone()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Only hyper polls this body (the rare path): one Arc clone per frame is fine.
        let progress = this.progress();
        progress.touch();
        let polled = match &mut this.kind {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Streaming(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Pending => progress.waiting_on_client.store(true, Ordering::Relaxed),
            Poll::Ready(None) => progress.finish(),
            Poll::Ready(Some(_)) => {
                progress.waiting_on_client.store(false, Ordering::Relaxed);
                // hyper stops polling once `is_end_stream()` says so: the last frame is the
                // end, and the header timeout starts now, not the write timeout.
                if this.is_end_stream() {
                    progress.finish();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Empty => true,
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Empty => SizeHint::with_exact(0),
            BodyKind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            BodyKind::Streaming(body) => body.size_hint(),
        }
    }
}

/// How far hyper got in sending a request body, for the `write` and `header` timeouts.
struct Progress {
    base: Instant,
    /// Microseconds since `base` of the last time hyper asked for more body.
    last_activity: AtomicU64,
    /// Microseconds since `base` when the body ended; `u64::MAX` while it has not.
    finished_at: AtomicU64,
    /// hyper is waiting for the *client* to send more: slowness that is not the upstream's.
    waiting_on_client: AtomicBool,
    /// Wakes the watchdog when the body ends, so the header timeout starts then.
    ended: tokio::sync::Notify,
}

impl Progress {
    fn new(done: bool) -> Progress {
        Progress {
            base: Instant::now(),
            last_activity: AtomicU64::new(0),
            finished_at: AtomicU64::new(if done { 0 } else { u64::MAX }),
            waiting_on_client: AtomicBool::new(false),
            ended: tokio::sync::Notify::new(),
        }
    }

    fn now_micros(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn touch(&self) {
        self.last_activity
            .store(self.now_micros(), Ordering::Relaxed);
    }

    fn finish(&self) {
        let now = self.now_micros();
        if self
            .finished_at
            .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // notify_one keeps a permit if the watchdog is not waiting yet: no lost wake-up.
            self.ended.notify_one();
        }
    }

    fn finished_at(&self) -> Option<Instant> {
        match self.finished_at.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(self.base + Duration::from_micros(micros)),
        }
    }

    fn last_activity(&self) -> Instant {
        self.base + Duration::from_micros(self.last_activity.load(Ordering::Relaxed))
    }
}

/// How requests reach an upstream connection.
pub enum Sender {
    /// causeway's own HTTP/1.1 client (`upstream::http1`), run in the request's task.
    Inline(Http1Conn),
    /// hyper's HTTP/1.1 client: streamed uploads, upgrades and health checks.
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
    /// The transport is inside a response body being relayed; it comes back as `Inline` when
    /// that body ends cleanly (see `body::UpstreamBody`).
    Lent,
}

/// A hyper sender borrowed for one exchange.
enum HyperSender<'a> {
    H1(&'a mut http1::SendRequest<RequestBody>),
    H2(&'a mut http2::SendRequest<RequestBody>),
}

/// An upstream connection ready for a request, fresh or from the pool.
pub struct Conn {
    pub sender: Sender,
    pub stats: Arc<IoStats>,
    pub reuse: Reuse,
    /// Requests already served on this connection.
    pub uses: u32,
    /// When the upstream's `Keep-Alive: timeout` (minus a margin) says to stop reusing it.
    pub expires: Option<Instant>,
    /// The upstream's `Keep-Alive: max`: requests it will serve on this connection.
    pub max_uses: Option<u32>,
}

impl Conn {
    /// Whether the connection can take a request: hyper has not seen it close, or (for
    /// causeway's own client) the upstream has neither closed it nor sent anything unasked.
    pub fn is_usable(&mut self) -> bool {
        match &mut self.sender {
            Sender::Inline(conn) => conn.is_idle_and_open(),
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
            Sender::Lent => false,
        }
    }

    /// Whether the connection may still be usable, without probing it: what hyper saw for its
    /// connections; for causeway's own client, a body that just ended cleanly says enough
    /// (the probe runs at checkout).
    pub fn may_be_open(&self) -> bool {
        match &self.sender {
            Sender::Inline(_) => true,
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
            Sender::Lent => false,
        }
    }

    /// The same connection driven by hyper's HTTP/1.1 client, for what causeway's own does
    /// not do (a streamed upload, a health check).
    pub async fn into_hyper(self, max_response_header: usize) -> Result<Conn, UpstreamError> {
        let Sender::Inline(inline) = self.sender else {
            return Ok(self);
        };
        let Some(io) = inline.into_io() else {
            return Err(UpstreamError::new(
                Cause::InvalidResponse,
                "upstream sent bytes on an idle connection",
            ));
        };
        let sender = spawn_http1(io, max_response_header, false)
            .await
            .map_err(|e| UpstreamError::new(Cause::InvalidResponse, e.to_string()))?;
        Ok(Conn { sender, ..self })
    }
}

/// Hands an HTTP/1.1 transport to hyper and spawns its connection task.
async fn spawn_http1(
    mut stream: Counted<Stream>,
    max_response_header: usize,
    upgrades: bool,
) -> Result<Sender, hyper::Error> {
    if !upgrades {
        // An answer sent before the whole request was written is relayed (see
        // `Counted::hold_write_errors`).
        stream.hold_write_errors();
    }
    let (sender, conn) = http1::Builder::new()
        .max_header_size(max_response_header)
        .handshake(TokioIo::new(stream))
        .await?;
    if upgrades {
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::spawn(async move {
            // Errors reach the request future too; this is only the connection's end.
            let _ = conn.await;
        });
    }
    Ok(Sender::H1(sender))
}

/// Sets up HTTP on a new transport: causeway's own HTTP/1.1 client, hyper's for an upgrade,
/// or an HTTP/2 handshake and connection task.
pub async fn handshake(
    stream: Counted<Stream>,
    protocol: Protocol,
    max_response_header: usize,
    upgrades: bool,
) -> Result<Conn, hyper::Error> {
    let stats = stream.stats();
    let sender = if !protocol.is_http2() && !upgrades {
        Sender::Inline(Http1Conn::new(stream))
    } else if protocol.is_http2() {
        let io = TokioIo::new(stream);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(max_response_header.min(u32::MAX as usize) as u32)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        Sender::H2(sender)
    } else {
        spawn_http1(stream, max_response_header, upgrades).await?
    };
    Ok(Conn {
        sender,
        stats,
        reuse: Reuse::Fresh,
        uses: 0,
        expires: None,
        max_uses: None,
    })
}

/// A failed exchange, with the request for another attempt when there can be one: handed
/// back unwritten, borrowed by causeway's own client, or a copy of a replayable one.
pub struct Failed {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
}

/// A copy of the request for another attempt, if its body can be replayed: hyper's client
/// consumes the request it sends.
fn replay_of(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let body = request.body().replay()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Sends `request` on `conn` and waits for the response head under the `write` and `header`
/// timeouts. On success the body is wrapped so that mid-body failures are classified too and
/// the connection returns to the pool when the body ends cleanly.
pub fn send<'a>(
    conn: Conn,
    request: Request<RequestBody>,
    added: &'a AddedFields,
    config: &'a config::Upstream,
    server: Arc<Server>,
    permit: Permit,
    fields: HeadFields,
) -> impl Future<Output = Result<Response<UpstreamBody>, Failed>> + Send + 'a {
    // Not an `async fn`: each path's future is returned as is, and hyper's (the rare path:
    // streamed uploads, HTTP/2, upgrades) is boxed so it does not size every request's future.
    let inline = matches!(conn.sender, Sender::Inline(_)) && request.body().buffered().is_some();
    if inline {
        Either::Left(send_inline(
            conn, request, added, config, server, permit, fields,
        ))
    } else {
        Either::Right(Box::pin(send_hyper(
            conn, request, added, config, server, permit,
        )))
    }
}

/// [`send`] through hyper's client.
async fn send_hyper(
    conn: Conn,
    mut request: Request<RequestBody>,
    added: &AddedFields,
    config: &config::Upstream,
    server: Arc<Server>,
    permit: Permit,
) -> Result<Response<UpstreamBody>, Failed> {
    let mut conn = match conn.into_hyper(config.max_response_header).await {
        Ok(conn) => conn,
        Err(error) => {
            return Err(Failed {
                error,
                request: Some(request),
            })
        }
    };
    // hyper consumes the request: keep a copy in case it fails after writing it. The copy is
    // taken before the added fields go into the map, so a retry adds them once again, not twice.
    let replay = replay_of(&request);
    added.insert_into(request.headers_mut());
    let progress = request.body_mut().progress();
    let read_before = conn.stats.read.load(Ordering::Relaxed);
    let written_before = conn.stats.written.load(Ordering::Relaxed);
    let reuse = conn.reuse;
    let method = request.method().clone();
    let is_head = method == http::Method::HEAD;

    let hyper = match &mut conn.sender {
        Sender::H1(sender) => HyperSender::H1(sender),
        Sender::H2(sender) => HyperSender::H2(sender),
        // `into_hyper` above leaves only hyper's senders.
        Sender::Inline(_) | Sender::Lent => {
            let error =
                UpstreamError::new(Cause::ConnectFailed, "internal: not a hyper connection");
            return Err(Failed {
                error,
                request: Some(request),
            });
        }
    };
    let exchange = async {
        match hyper {
            HyperSender::H1(sender) => {
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(request)));
                }
                sender.try_send_request(request).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })
            }
            HyperSender::H2(sender) => {
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(request)));
                }
                sender.try_send_request(request).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })
            }
        }
    };
    let outcome = tokio::select! {
        biased;
        result = exchange => Ok(result),
        stalled = watchdog(&progress, config.timeouts) => Err(stalled),
    };
    let sent = sent_so_far(&conn.stats, written_before, &progress);
    let read = conn.stats.read.load(Ordering::Relaxed) - read_before;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err((error, unsent))) => {
            let sent = if unsent.is_some() {
                Sent::Nothing
            } else {
                sent
            };
            // Built only on failure: a named or unix server's address would be cloned for
            // nothing on every successful exchange.
            let context = classify::ExchangeContext {
                reuse,
                server: server.addr.clone(),
                method,
            };
            let mut error = match conn.stats.write_failed.get() {
                // hyper reports what it saw last (often the read that found the connection
                // gone); the write failed first, and that is the cause.
                Some(&kind) if classify::find_source::<ClientBodyError>(&error).is_none() => {
                    let write = Http1Error::Write(kind.into());
                    classify::http1_error(write, &context, sent, read)
                }
                _ => classify::exchange_error(error, &context, sent, read),
            };
            error.reuse = reuse;
            error.sent = sent;
            return Err(Failed {
                error,
                request: unsent.or(replay),
            });
        }
        Err(mut error) => {
            error.reuse = reuse;
            error.sent = sent;
            return Err(Failed {
                error,
                request: replay,
            });
        }
    };

    let keep_alive = KeepAlive::from_response(response.headers(), response.version());
    conn.uses += 1;
    conn.reuse = Reuse::Fresh;
    let (parts, incoming) = response.into_parts();
    let status = parts.status;
    let reusable = keep_alive.reusable
        && status != http::StatusCode::SWITCHING_PROTOCOLS
        && conn.max_uses.is_none_or(|max| conn.uses < max);
    let body = UpstreamBody::new(
        incoming,
        config.timeouts.read,
        super::body::ReturnToPool {
            conn: reusable.then_some(conn),
            fastcgi: None,
            keep_alive,
            server,
        },
        permit,
        is_head
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED,
    );
    Ok(Response::from_parts(parts, body))
}

/// How much of the request reached the socket.
fn sent_so_far(stats: &IoStats, written_before: u64, progress: &Progress) -> Sent {
    if stats.written.load(Ordering::Relaxed) == written_before {
        Sent::Nothing
    } else if progress.finished_at().is_some() {
        Sent::All
    } else {
        Sent::Head
    }
}

/// Waits until the exchange has stalled in the write or header phase and names which.
async fn watchdog(progress: &Progress, timeouts: config::Timeouts) -> UpstreamError {
    loop {
        match progress.finished_at() {
            None => {
                if progress.waiting_on_client.load(Ordering::Relaxed) {
                    // The client is slow to send its body: the server's body timeout judges
                    // that, never the upstream's write timeout.
                    tokio::select! {
                        _ = sleep(timeouts.write) => {}
                        _ = progress.ended.notified() => {}
                    }
                    continue;
                }
                let deadline = progress.last_activity() + timeouts.write;
                if Instant::now() >= deadline {
                    return write_timeout(timeouts);
                }
                tokio::select! {
                    _ = sleep_until(deadline) => {}
                    _ = progress.ended.notified() => {}
                }
            }
            Some(finished) => {
                let deadline = finished + timeouts.header;
                if Instant::now() >= deadline {
                    return header_timeout(timeouts);
                }
                sleep_until(deadline).await;
            }
        }
    }
}

/// The upstream stopped taking the request for `timeouts.write`.
fn write_timeout(timeouts: config::Timeouts) -> UpstreamError {
    UpstreamError::new(
        Cause::WriteTimeout,
        format!(
            "upstream stopped reading the request body for {} (timeouts.write)",
            fmt_duration(timeouts.write)
        ),
    )
    .with_hint("the backend is not reading the upload: is it stuck, or does it reject the request without reading it?")
}

/// No complete response head within `timeouts.header` of the end of the request.
fn header_timeout(timeouts: config::Timeouts) -> UpstreamError {
    UpstreamError::new(
        Cause::HeaderTimeout,
        format!(
            "no complete response head within {} of sending the request (timeouts.header)",
            fmt_duration(timeouts.header)
        ),
    )
    .with_hint("the backend is slow to answer: raise timeouts.header for this route, or find what it waits on")
}

/// [`send`] with causeway's own HTTP/1.1 client: the request is written from a borrow (no
/// copy for retries), the head read in this task, and the body decoded as the client reads
/// it. Same timeouts and the same causes as the hyper path.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn send_inline<'a>(
    conn: Conn,
    request: Request<RequestBody>,
    added: &'a AddedFields,
    config: &'a config::Upstream,
    server: Arc<Server>,
    permit: Permit,
    fields: HeadFields,
) -> impl Future<Output = Result<Response<UpstreamBody>, Failed>> + Send + 'a {
    // Not an `async fn`: those keep their arguments twice in their state (rustc moves
    // them into locals), and this future is copied into its caller's.
    async move {
        let Conn {
            sender,
            stats,
            reuse,
            uses,
            expires,
            max_uses,
        } = conn;
        let Sender::Inline(mut transport) = sender else {
            let error =
                UpstreamError::new(Cause::ConnectFailed, "internal: not an inline connection");
            return Err(Failed {
                error,
                request: Some(request),
            });
        };
        let read_before = stats.read.load(Ordering::Relaxed);
        let limits = Http1Limits {
            write: config.timeouts.write,
            header: config.timeouts.header,
            max_head: config.max_response_header,
            fields,
        };
        let head = match super::http1::exchange(&mut transport, &request, added, limits).await {
            Ok(exchanged) => exchanged,
            Err(failed) => {
                let sent = match failed.written {
                    Written::Nothing => Sent::Nothing,
                    Written::Part => Sent::Head,
                    Written::All => Sent::All,
                };
                let read = stats.read.load(Ordering::Relaxed) - read_before;
                let mut error = match failed.error {
                    Http1Error::WriteTimeout => write_timeout(config.timeouts),
                    Http1Error::HeaderTimeout => header_timeout(config.timeouts),
                    other => {
                        let context = classify::ExchangeContext {
                            reuse,
                            server: server.addr.clone(),
                            method: request.method().clone(),
                        };
                        classify::http1_error(other, &context, sent, read)
                    }
                };
                error.reuse = reuse;
                error.sent = sent;
                return Err(Failed {
                    error,
                    request: Some(request),
                });
            }
        };
        let ResponseHead {
            response,
            framing,
            keep_alive,
        } = head;
        let uses = uses + 1;
        let reusable =
            keep_alive.reusable && framing.is_delimited() && max_uses.is_none_or(|max| uses < max);
        // The transport travels with the body; the pool gets it back when the body ends cleanly.
        let conn = reusable.then_some(Conn {
            sender: Sender::Lent,
            stats,
            reuse: Reuse::Fresh,
            uses,
            expires,
            max_uses,
        });
        let body = UpstreamBody::http1(
            Http1Body::new(transport, framing),
            config.timeouts.read,
            super::body::ReturnToPool {
                conn,
                fastcgi: None,
                keep_alive,
                server,
            },
            permit,
        );
        Ok(response.map(|()| body))
    }
}

/// What the upstream's response says about reusing its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    pub reusable: bool,
    /// `Keep-Alive: timeout=N`.
    pub timeout: Option<Duration>,
    /// `Keep-Alive: max=N`.
    pub max: Option<u32>,
}

impl KeepAlive {
    /// Reads `Connection` and `Keep-Alive` (RFC 9112 §9.3; the Keep-Alive header is the
    /// de-facto extension Node and Apache send).
    pub fn from_response(headers: &HeaderMap, version: http::Version) -> KeepAlive {
        let mut keep_alive = KeepAlive::default_for(version);
        for value in headers.get_all(header::CONNECTION) {
            keep_alive.read_connection(value.as_bytes(), version);
        }
        for value in headers.get_all(&crate::headers::KEEP_ALIVE) {
            keep_alive.read_keep_alive(value.as_bytes());
        }
        keep_alive
    }

    /// What a response of this version means before its fields are read: HTTP/1.1
    /// connections persist unless closed, HTTP/1.0 ones only when asked.
    pub fn default_for(version: http::Version) -> KeepAlive {
        KeepAlive {
            reusable: version != http::Version::HTTP_10,
            timeout: None,
            max: None,
        }
    }

    /// Applies one `Connection` field value. Returns whether it names anything besides
    /// `close` and `keep-alive`: header fields that are then hop-by-hop too.
    pub fn read_connection(&mut self, value: &[u8], version: http::Version) -> bool {
        // The two values nearly every upstream sends, without splitting.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.reusable |= version == http::Version::HTTP_10;
            return false;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.reusable = false;
            return false;
        }
        let mut names_fields = false;
        for token in std::str::from_utf8(value).unwrap_or("").split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                self.reusable = false;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                if version == http::Version::HTTP_10 {
                    self.reusable = true;
                }
            } else if !token.is_empty() {
                names_fields = true;
            }
        }
        names_fields
    }

    /// Applies one `Keep-Alive` field value (`timeout=N, max=M`).
    pub fn read_keep_alive(&mut self, value: &[u8]) {
        for param in std::str::from_utf8(value).unwrap_or("").split(',') {
            let Some((name, number)) = param.split_once('=') else {
                continue;
            };
            let number = number.trim().trim_matches('"');
            let name = name.trim();
            if name.eq_ignore_ascii_case("timeout") {
                self.timeout = number.parse::<u64>().ok().map(Duration::from_secs);
            } else if name.eq_ignore_ascii_case("max") {
                self.max = number.parse::<u32>().ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                value.parse().expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn keep_alive_timeout_and_max_are_read() {
        let ka = KeepAlive::from_response(
            &headers(&[
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5, max=100"),
            ]),
            http::Version::HTTP_11,
        );
        assert_eq!(
            ka,
            KeepAlive {
                reusable: true,
                timeout: Some(Duration::from_secs(5)),
                max: Some(100)
            }
        );
    }

    #[test]
    fn connection_close_is_not_reusable() {
        let ka =
            KeepAlive::from_response(&headers(&[("connection", "Close")]), http::Version::HTTP_11);
        assert!(!ka.reusable);
    }

    #[test]
    fn http10_needs_explicit_keep_alive() {
        assert!(!KeepAlive::from_response(&headers(&[]), http::Version::HTTP_10).reusable);
        assert!(
            KeepAlive::from_response(
                &headers(&[("connection", "keep-alive")]),
                http::Version::HTTP_10
            )
            .reusable
        );
    }

    #[tokio::test]
    async fn the_last_frame_of_a_body_finishes_it() {
        let mut body = RequestBody::full(Bytes::from_static(b"abc"));
        let progress = body.progress();
        assert!(progress.finished_at().is_none());
        let frame = body.frame().await;
        assert!(frame.is_some());
        assert!(
            progress.finished_at().is_some(),
            "hyper never polls past is_end_stream(), so the last frame must mark the end"
        );
    }

    #[test]
    fn buffered_bodies_replay_and_streams_do_not() {
        let full = RequestBody::full(Bytes::from_static(b"abc"));
        assert!(full.replay().is_some());
        let stream = RequestBody::streaming(BoxBody::new(
            http_body_util::Empty::new()
                .map_err(|never: std::convert::Infallible| -> BoxError { match never {} }),
        ));
        assert!(stream.replay().is_none());
    }
}
