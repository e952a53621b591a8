//! One client connection: pick the HTTP version, serve it with hyper, drain it on shutdown,
//! and account for the requests hyper ends on its own.
//!
//! The version comes from ALPN under TLS, else from the first bytes (the HTTP/2 preface means
//! prior-knowledge h2c). Those bytes are read here and replayed to hyper, so hyper sees the
//! whole first read at once: its 8 KiB read buffer is not grown for a 24-byte sniff, which is
//! what keeps an idle keep-alive connection small.
//!
//! hyper ends some HTTP/1.1 requests itself: a head not finished within
//! `request_header_timeout` (it closes silently) and a head too large or malformed (it writes
//! 431 or 400). Each becomes one access-log line here; the timed-out one also gets the 408
//! that DESIGN.md promises, when the client had started a request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cause::Cause;
use crate::config::Server as ServerConfig;
use crate::log::{AccessLog, AccessRecord};
use crate::proxy::{ClientInfo, Proxy};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long writing the 408 to a client that stopped sending may take.
const TIMEOUT_ANSWER_LIMIT: Duration = Duration::from_secs(1);

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// hyper's per-connection settings from `[server]`, built once per listener.
pub struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// `request_header_timeout`: also bounds the wait for the first bytes.
    header_timeout: Duration,
}

impl Http {
    pub fn new(config: &ServerConfig) -> Http {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.request_header_timeout)
            // The read buffer bounds the request head: a larger head gets 431 from hyper.
            .max_buf_size(config.max_request_header.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(config.max_request_header.min(u32::MAX as usize) as u32)
            // Bounds a rapid-reset style flood: streams a client may have open at once.
            .max_concurrent_streams(256)
            .max_pending_accept_reset_streams(64)
            .max_local_error_reset_streams(256);
        Http {
            h1,
            h2,
            header_timeout: config.request_header_timeout,
        }
    }
}

/// What a connection needs besides its socket.
pub struct Serve {
    pub proxy: Proxy,
    /// Cancelled on shutdown: finish the requests in flight, take no more.
    pub drain: CancellationToken,
    pub access: AccessLog,
    pub client: ClientInfo,
}

/// Serves one connection to its end. `alpn` is the version TLS negotiated, if any.
pub async fn serve<I>(http: &Http, io: I, alpn: Option<Protocol>, serve: Serve)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, io) = match alpn {
        Some(protocol) => (protocol, Replay::new(Bytes::new(), io)),
        None => match tokio::select! {
            sniffed = tokio::time::timeout(http.header_timeout, sniff(io)) => sniffed,
            // Shutting down: a connection that has not asked for anything is just closed.
            _ = serve.drain.cancelled() => return,
        } {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return, // closed before sending anything
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client connection failed before a request");
                return;
            }
            Err(_) => {
                tracing::debug!("client sent no request within request_header_timeout: closed");
                return;
            }
        },
    };
    match protocol {
        // Boxed: an HTTP/2 connection future is large, and every idle HTTP/1.1 connection
        // would otherwise carry its size.
        Protocol::Http2 => Box::pin(serve_h2(http, io, serve)).await,
        Protocol::Http1 => serve_h1(http, io, serve).await,
    }
}

/// Serves an HTTP/2 connection until it ends, is drained, or sits idle too long.
async fn serve_h2<I>(http: &Http, io: Replay<I>, serve: Serve)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let proxy = serve.proxy.count_streams(streams.clone());
    let mut conn = http.h2.serve_connection(TokioIo::new(io), proxy);
    // Closed (GOAWAY) on shutdown, or after `request_header_timeout` without an open request,
    // like an idle HTTP/1.1 connection: idle ones must not pile up against `max_connections`.
    let result = tokio::select! {
        result = &mut conn => result,
        _ = serve.drain.cancelled() => {
            Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
        _ = streams.idle_for(http.header_timeout) => {
            tracing::debug!("HTTP/2 client connection idle for request_header_timeout: closed");
            Pin::new(&mut conn).graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// Serves an HTTP/1.1 connection until it ends or is drained, and accounts for the request
/// hyper ended on its own, if any.
async fn serve_h1<I>(http: &Http, io: Replay<I>, serve: Serve)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serve {
        proxy,
        drain,
        access,
        client,
    } = serve;
    let mut conn = http
        .h1
        .serve_connection(TokioIo::new(io), proxy)
        .with_upgrades();
    let result = tokio::select! {
        result = &mut conn => result,
        _ = drain.cancelled() => {
            Pin::new(&mut conn).graceful_shutdown();
            (&mut conn).await
        }
    };
    let Err(error) = result else {
        return;
    };
    let Some(ended) = ended_by_hyper(&error) else {
        tracing::debug!(error = %error, "client connection ended with an error");
        return;
    };
    let parts = conn.into_parts();
    let partial = parts.as_ref().map_or(&[][..], |p| &p.read_buf[..]);
    if ended == HyperEnded::HeadTimeout && partial.is_empty() {
        // An idle keep-alive connection: closed quietly, nothing was asked.
        return;
    }
    let mut record = unfinished_request(&client, partial, ended);
    if ended == HyperEnded::HeadTimeout {
        record.total = http.header_timeout;
        if let Some(parts) = parts {
            // Boxed: rare, and its future would otherwise sit in every connection's.
            record.bytes_out = Box::pin(answer_timeout(parts.io.into_inner(), &record)).await;
        }
    }
    log_unfinished(&access, record);
}

/// The requests open on one HTTP/2 connection, to tell when it has been idle long enough.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

impl Streams {
    /// Counts one request as open until the returned guard is dropped.
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        OpenStream(self.clone())
    }

    /// Resolves once no request has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so no change between the two is missed.
            changed.as_mut().enable();
            if self.open.load(Ordering::Relaxed) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                _ = changed => {}
            }
        }
    }
}

/// One open request on an HTTP/2 connection (see [`Streams`]).
#[derive(Debug)]
pub struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// How hyper ended a request it never handed to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HyperEnded {
    /// `request_header_timeout` passed before the head was complete: nothing sent yet.
    HeadTimeout,
    /// The head was over `max_request_header`: hyper sent 431.
    HeadTooLarge,
    /// The head was malformed: hyper sent 400.
    Malformed,
}

fn ended_by_hyper(error: &hyper::Error) -> Option<HyperEnded> {
    if error.is_timeout() {
        Some(HyperEnded::HeadTimeout)
    } else if error.is_parse_too_large() {
        Some(HyperEnded::HeadTooLarge)
    } else if error.is_parse() {
        Some(HyperEnded::Malformed)
    } else {
        None
    }
}

/// Reads the first bytes to tell prior-knowledge HTTP/2 from HTTP/1.x; they are replayed to
/// hyper. `None` when the client closed first.
async fn sniff<I>(mut io: I) -> io::Result<Option<(Protocol, Replay<I>)>>
where
    I: AsyncRead + Unpin,
{
    let mut first = BytesMut::with_capacity(8192);
    loop {
        if io.read_buf(&mut first).await? == 0 {
            return Ok(None);
        }
        let seen = first.len().min(H2_PREFACE.len());
        let protocol = if first[..seen] != H2_PREFACE[..seen] {
            Protocol::Http1
        } else if seen == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            continue; // a prefix of the preface so far: read on
        };
        return Ok(Some((protocol, Replay::new(first.freeze(), io))));
    }
}

/// Writes the 408 to a client whose head timed out, then closes; returns the bytes written.
async fn answer_timeout<I>(io: Replay<I>, record: &AccessRecord) -> u64
where
    I: AsyncWrite + Unpin,
{
    let body = "408 Request Timeout\n";
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nx-request-id: {}\r\n\r\n{body}",
        body.len(),
        record.request_id
    );
    let mut io = io.into_inner();
    let write = async {
        io.write_all(response.as_bytes()).await?;
        io.shutdown().await
    };
    match tokio::time::timeout(TIMEOUT_ANSWER_LIMIT, write).await {
        Ok(Ok(())) => response.len() as u64,
        _ => 0, // the client is not reading either: it gets the close
    }
}

/// The access-log record of a request hyper ended: what can be read of its request line.
fn unfinished_request(client: &ClientInfo, partial: &[u8], ended: HyperEnded) -> AccessRecord {
    let (status, cause) = match ended {
        HyperEnded::HeadTimeout => (408, Some(Cause::ClientTimeout)),
        HyperEnded::HeadTooLarge => (431, Some(Cause::RequestTooLarge)),
        HyperEnded::Malformed => (400, None),
    };
    let line = partial.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line
        .split(|b| *b == b' ')
        .map(|w| String::from_utf8_lossy(w.strip_suffix(b"\r").unwrap_or(w)).into_owned());
    let method = words.next().filter(|m| !m.is_empty());
    let path = words.next().filter(|p| !p.is_empty());
    AccessRecord {
        status,
        cause,
        bytes_in: partial.len() as u64,
        complete: ended != HyperEnded::HeadTimeout,
        ..AccessRecord::arriving(
            crate::headers::new_request_id(),
            client
                .peer
                .map_or_else(|| "unix".to_string(), |p| p.to_string()),
            method.unwrap_or_else(|| "-".into()),
            String::new(),
            path.unwrap_or_else(|| "-".into()),
            "HTTP/1.1",
        )
    }
}

/// One access-log line, one count in the metrics and an INFO line for a request hyper ended.
fn log_unfinished(access: &AccessLog, record: AccessRecord) {
    let status = http::StatusCode::from_u16(record.status).unwrap_or(http::StatusCode::BAD_REQUEST);
    tracing::info!(
        status = record.status,
        client = %record.client,
        request_id = %record.request_id,
        "request ended before its head was complete: {}",
        match record.status {
            408 => "no complete request head within request_header_timeout",
            431 => "request head larger than max_request_header",
            _ => "malformed request head",
        }
    );
    crate::metrics::RequestTally::start()
        .responded(status)
        .end(record.bytes_out);
    if access.is_enabled() {
        access.write(&record);
    }
}

/// An IO whose first reads return bytes already read from it (the sniffed ones).
pub struct Replay<I> {
    first: Bytes,
    io: I,
}

impl<I> Replay<I> {
    fn new(first: Bytes, io: I) -> Replay<I> {
        Replay { first, io }
    }

    fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.has_remaining() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.advance(n);
            if !this.first.has_remaining() {
                this.first = Bytes::new(); // frees the sniff buffer
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(sent: &[&[u8]]) -> Option<(Protocol, Vec<u8>)> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        for part in sent {
            client.write_all(part).await.expect("duplex write");
        }
        drop(client);
        let (protocol, mut replay) = sniff(server).await.expect("sniff")?;
        let mut replayed = Vec::new();
        replay
            .read_to_end(&mut replayed)
            .await
            .expect("replay read");
        Some((protocol, replayed))
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_every_byte_is_replayed() {
        let preface_and_more = [H2_PREFACE, b"\0\0\0\x04"].concat();
        assert_eq!(
            sniffed(&[&preface_and_more]).await,
            Some((Protocol::Http2, preface_and_more.clone()))
        );
        // Split over several reads.
        assert_eq!(
            sniffed(&[b"PR", b"I * HTTP/2", b".0\r\n\r\nSM\r\n\r\n"]).await,
            Some((Protocol::Http2, H2_PREFACE.to_vec()))
        );
    }

    #[tokio::test]
    async fn anything_else_is_http1_decided_at_the_first_difference() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniffed(&[get]).await, Some((Protocol::Http1, get.to_vec())));
        // PROPFIND shares "PR" with the preface.
        assert_eq!(
            sniffed(&[b"PR", b"OPFIND / HTTP/1.1\r\n"]).await,
            Some((Protocol::Http1, b"PROPFIND / HTTP/1.1\r\n".to_vec()))
        );
        assert_eq!(sniffed(&[]).await, None, "closed before a byte");
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_only_with_no_request_open_for_the_whole_timeout() {
        let streams = Arc::new(Streams::default());
        let timeout = Duration::from_secs(10);
        let open = streams.open();
        let idle = tokio::time::timeout(Duration::from_secs(30), streams.idle_for(timeout));
        tokio::pin!(idle);
        // A request open for 20 s: not idle, however long it takes.
        tokio::select! {
            _ = &mut idle => panic!("idle while a request was open"),
            _ = tokio::time::sleep(Duration::from_secs(20)) => {}
        }
        let closed_at = tokio::time::Instant::now();
        drop(open);
        assert!(idle.await.is_ok(), "idle once the request ended");
        assert_eq!(
            closed_at.elapsed(),
            timeout,
            "counted from the last request's end"
        );
    }

    #[test]
    fn an_unfinished_head_is_logged_with_what_its_request_line_says() {
        let client = ClientInfo::new(Some("127.0.0.1:4000".parse().expect("addr")), None, false);
        let record = unfinished_request(
            &client,
            b"GET /slow HTTP/1.1\r\nHost: a",
            HyperEnded::HeadTimeout,
        );
        assert_eq!(
            (record.method.as_str(), record.path.as_str(), record.status),
            ("GET", "/slow", 408)
        );
        assert_eq!(record.cause, Some(Cause::ClientTimeout));
        assert!(!record.complete);
        let record = unfinished_request(&client, b"GE", HyperEnded::HeadTimeout);
        assert_eq!((record.method.as_str(), record.path.as_str()), ("GE", "-"));
        let record = unfinished_request(&client, b"", HyperEnded::HeadTooLarge);
        assert_eq!((record.method.as_str(), record.status), ("-", 431));
        assert_eq!(record.cause, Some(Cause::RequestTooLarge));
    }
}
