//! The response body on its way from upstream to client.
//!
//! Wraps the upstream body (causeway's own HTTP/1.1 decoder, hyper's `Incoming`, or FastCGI
//! STDOUT) with the `read` idle timeout, turns a mid-body failure into
//! `body_truncated` / `body_timeout` (recorded for the access log, then returned as an error so
//! hyper aborts the client connection instead of ending the body cleanly), and hands the
//! connection back to the pool only when the body ended cleanly.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::connect::fmt_duration;
use super::connect::{Counted, Stream};
use super::exchange::{Conn, KeepAlive, Sender};
use super::http1::Http1Body;
use super::pool::Permit;
use super::{Server, UpstreamError};
use crate::cause::Cause;
use crate::classify;
use crate::fastcgi::FastCgiBody;
use crate::idle::IdleTimer;
use tokio::sync::oneshot;

/// Margin subtracted from an upstream's `Keep-Alive: timeout`, as Node's own HTTP agent does
/// (nodejs/node PR #59315): reuse must end before the server's close is even possible.
pub const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// What to do with the connection once the body has ended cleanly.
pub struct ReturnToPool {
    /// `None` when the response said the connection cannot be reused.
    pub conn: Option<Conn>,
    /// A FastCGI transport coming back after END_REQUEST (`fastcgi.keep_conn`).
    pub fastcgi: Option<oneshot::Receiver<Counted<Stream>>>,
    pub keep_alive: KeepAlive,
    pub server: Arc<Server>,
}

/// How a relayed body ended, shared with the access log.
#[derive(Debug, Default)]
pub struct BodyEnd {
    /// `None` while running or after a clean end; the cause after a failure.
    pub failure: Option<UpstreamError>,
    pub complete: bool,
}

/// Where the relayed bytes come from.
enum Source {
    /// Decoded by causeway's own HTTP/1.1 client, in this task.
    Http1(Http1Body),
    /// From hyper's client connection task (HTTP/2, or HTTP/1.1 after a streamed upload).
    Http(Incoming),
    FastCgi(FastCgiBody),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Http1(body) => body.is_end_stream(),
            Source::Http(body) => body.is_end_stream(),
            Source::FastCgi(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Http1(body) => body.size_hint(),
            Source::Http(body) => body.size_hint(),
            Source::FastCgi(body) => body.size_hint(),
        }
    }

    /// The next frame, with a failure already classified.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self {
            Source::Http1(body) => body
                .poll_frame(cx)
                .map_err(|e| classify::http1_body_error(&e)),
            Source::Http(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| classify::body_error(&e)),
            Source::FastCgi(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| classify::fastcgi_body_error(&e)),
        }
    }
}

/// A response body relayed from upstream.
///
/// Boxed: the response carrying it is moved a dozen times on its way to hyper (out of each
/// future that returns it, into the server's dispatcher), and moving ~400 bytes each time
/// cost more than one allocation (`scripts/callgrind-diff`).
pub struct UpstreamBody(Box<Relay>);

/// The state of a relayed body.
struct Relay {
    incoming: Source,
    read_timeout: Duration,
    idle: IdleTimer,
    pool: Option<ReturnToPool>,
    _permit: Permit,
    end: Arc<Mutex<BodyEnd>>,
    done: bool,
}

impl UpstreamBody {
    /// Wraps `incoming`; `bodyless` is true for responses that carry no body (HEAD, 204, 304).
    pub fn new(
        incoming: Incoming,
        read_timeout: Duration,
        pool: ReturnToPool,
        permit: Permit,
        bodyless: bool,
    ) -> UpstreamBody {
        UpstreamBody::with_source(Source::Http(incoming), read_timeout, pool, permit, bodyless)
    }

    /// Wraps a body read by causeway's own HTTP/1.1 client; its framing says when it is empty.
    pub fn http1(
        body: Http1Body,
        read_timeout: Duration,
        pool: ReturnToPool,
        permit: Permit,
    ) -> UpstreamBody {
        UpstreamBody::with_source(Source::Http1(body), read_timeout, pool, permit, false)
    }

    /// Wraps a FastCGI STDOUT stream: it ends cleanly only on END_REQUEST.
    pub fn fastcgi(
        body: FastCgiBody,
        read_timeout: Duration,
        pool: ReturnToPool,
        permit: Permit,
    ) -> UpstreamBody {
        UpstreamBody::with_source(Source::FastCgi(body), read_timeout, pool, permit, false)
    }

    fn with_source(
        incoming: Source,
        read_timeout: Duration,
        pool: ReturnToPool,
        permit: Permit,
        bodyless: bool,
    ) -> UpstreamBody {
        let mut body = Box::new(Relay {
            incoming,
            read_timeout,
            idle: IdleTimer::new(read_timeout),
            pool: Some(pool),
            _permit: permit,
            end: Arc::new(Mutex::new(BodyEnd::default())),
            done: false,
        });
        if bodyless || body.incoming.is_end_stream() {
            body.finish();
        }
        UpstreamBody(body)
    }

    /// A handle the access log reads once the body is over.
    pub fn end_handle(&self) -> Arc<Mutex<BodyEnd>> {
        self.0.end.clone()
    }
}

impl Relay {
    fn finish(&mut self) {
        self.done = true;
        if let Ok(mut end) = self.end.lock() {
            end.complete = true;
        }
        if let Some(ReturnToPool {
            conn,
            fastcgi,
            keep_alive,
            server,
        }) = self.pool.take()
        {
            if let Some(mut conn) = conn {
                if let (Sender::Lent, Source::Http1(body)) = (&conn.sender, &mut self.incoming) {
                    // The transport comes back from the body; `None` leaves `Lent`, which
                    // the pool refuses.
                    if let Some(transport) = body.take_conn() {
                        conn.sender = Sender::Inline(transport);
                    }
                }
                server.pool.checkin(conn, keep_alive);
            }
            // The codec hands the transport over before it reports the end of the body, so it
            // is back in the pool before this request's `max_conns` slot is released.
            if let Some(mut returned) = fastcgi {
                if let Ok(io) = returned.try_recv() {
                    server.pool.checkin_raw(io);
                }
            }
        }
    }
}

/// The error type the relayed body yields to the server after recording the real cause.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed: {0}")]
pub struct BodyAborted(pub &'static str);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let this = &mut *self.get_mut().0;
        if this.done {
            return Poll::Ready(None);
        }
        match this.incoming.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // No per-frame lock: `ProxyBody` counts the bytes the client gets.
                this.idle.progress();
                if this.incoming.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(this.record_failure(error)))),
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                let error = UpstreamError::new(
                    Cause::BodyTimeout,
                    format!(
                        "upstream sent no body data for {} mid-response (timeouts.read)",
                        fmt_duration(this.read_timeout)
                    ),
                )
                .with_hint("the backend stalled while streaming its response: raise timeouts.read if it is slow on purpose");
                Poll::Ready(Some(Err(this.record_failure(error))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.0.done {
            SizeHint::with_exact(0)
        } else {
            self.0.incoming.size_hint()
        }
    }
}

impl Relay {
    fn record_failure(&mut self, error: UpstreamError) -> BodyAborted {
        self.done = true;
        self.pool = None;
        let name = error.cause.name();
        if let Ok(mut end) = self.end.lock() {
            end.failure = Some(error);
            end.complete = false;
        }
        BodyAborted(name)
    }
}
