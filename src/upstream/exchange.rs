//! One request/response exchange on an upstream connection (HTTP/1.1 or HTTP/2 via hyper).
//!
//! hyper reports *that* an exchange failed but not *where*: this module records the two facts
//! that decide the cause — whether the whole request was written ([`Progress`]) and whether any
//! response byte arrived ([`IoStats`]) — and runs the `write` and `header` timeouts as a watchdog
//! beside the exchange, so a slow body never trips the header timeout and vice versa.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{sleep, sleep_until, Instant};

use super::body::UpstreamBody;
use super::connect::{fmt_duration, Counted, IoStats, Stream};
use super::pool::Permit;
use super::{BoxError, Reuse, Sent, Server, UpstreamError};
use crate::cause::Cause;
use crate::classify;
use crate::config::{self, Protocol};

/// The request body as it goes upstream: empty, buffered (replayable), or streamed from the
/// client. Records how far hyper got in sending it.
pub struct RequestBody {
    kind: BodyKind,
    progress: Arc<Progress>,
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
        let done = matches!(kind, BodyKind::Empty);
        RequestBody {
            kind,
            progress: Arc::new(Progress::new(done)),
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

    fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
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
        this.progress.touch();
        let polled = match &mut this.kind {
            BodyKind::Empty => Poll::Ready(None),
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Streaming(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Pending => this
                .progress
                .waiting_on_client
                .store(true, Ordering::Relaxed),
            Poll::Ready(None) => this.progress.finish(),
            Poll::Ready(Some(_)) => {
                this.progress
                    .waiting_on_client
                    .store(false, Ordering::Relaxed);
                // hyper stops polling once `is_end_stream()` says so: the last frame is the
                // end, and the header timeout starts now, not the write timeout.
                if this.is_end_stream() {
                    this.progress.finish();
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

/// Request senders for the two HTTP versions.
pub enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
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
    /// Whether hyper still considers the connection usable.
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        }
    }
}

/// Runs the HTTP handshake on a new transport and spawns its connection task.
pub async fn handshake(
    stream: Counted<Stream>,
    protocol: Protocol,
    max_response_header: usize,
    upgrades: bool,
) -> Result<Conn, hyper::Error> {
    let stats = stream.stats();
    let io = TokioIo::new(stream);
    let sender = if protocol.is_http2() {
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
        let (sender, conn) = http1::Builder::new()
            .max_header_size(max_response_header)
            .handshake(io)
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
        Sender::H1(sender)
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

/// Whether the request asks for a protocol upgrade (WebSocket): it needs its own connection.
pub fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(header::UPGRADE)
}

/// A failed exchange, with the request handed back when hyper never wrote it.
pub struct Failed {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

/// Sends `request` on `conn` and waits for the response head under the `write` and `header`
/// timeouts. On success the body is wrapped so that mid-body failures are classified too and
/// the connection returns to the pool when the body ends cleanly.
pub async fn send(
    mut conn: Conn,
    request: Request<RequestBody>,
    config: &config::Upstream,
    server: Arc<Server>,
    permit: Permit,
) -> Result<Response<UpstreamBody>, Failed> {
    let progress = request.body().progress();
    let read_before = conn.stats.read.load(Ordering::Relaxed);
    let written_before = conn.stats.written.load(Ordering::Relaxed);
    let reuse = conn.reuse;
    let method = request.method().clone();
    let is_head = method == http::Method::HEAD;

    let exchange = async {
        match &mut conn.sender {
            Sender::H1(sender) => {
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(request)));
                }
                sender.try_send_request(request).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })
            }
            Sender::H2(sender) => {
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
            let mut error = classify::exchange_error(error, &context, sent, read);
            error.reuse = reuse;
            error.sent = sent;
            return Err(Failed { error, unsent });
        }
        Err(mut error) => {
            error.reuse = reuse;
            error.sent = sent;
            return Err(Failed {
                error,
                unsent: None,
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
                    return UpstreamError::new(
                        Cause::WriteTimeout,
                        format!(
                            "upstream stopped reading the request body for {} (timeouts.write)",
                            fmt_duration(timeouts.write)
                        ),
                    )
                    .with_hint("the backend is not reading the upload: is it stuck, or does it reject the request without reading it?");
                }
                tokio::select! {
                    _ = sleep_until(deadline) => {}
                    _ = progress.ended.notified() => {}
                }
            }
            Some(finished) => {
                let deadline = finished + timeouts.header;
                if Instant::now() >= deadline {
                    return UpstreamError::new(
                        Cause::HeaderTimeout,
                        format!(
                            "no complete response head within {} of sending the request (timeouts.header)",
                            fmt_duration(timeouts.header)
                        ),
                    )
                    .with_hint("the backend is slow to answer: raise timeouts.header for this route, or find what it waits on");
                }
                sleep_until(deadline).await;
            }
        }
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
        let mut reusable = version != http::Version::HTTP_10;
        for value in headers.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case("keep-alive")
                    && version == http::Version::HTTP_10
                {
                    reusable = true;
                }
            }
        }
        let mut timeout = None;
        let mut max = None;
        for value in headers.get_all(&crate::headers::KEEP_ALIVE) {
            for param in value.to_str().unwrap_or("").split(',') {
                let Some((name, number)) = param.split_once('=') else {
                    continue;
                };
                let number = number.trim().trim_matches('"');
                let name = name.trim();
                if name.eq_ignore_ascii_case("timeout") {
                    timeout = number.parse::<u64>().ok().map(Duration::from_secs);
                } else if name.eq_ignore_ascii_case("max") {
                    max = number.parse::<u32>().ok();
                }
            }
        }
        KeepAlive {
            reusable,
            timeout,
            max,
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
