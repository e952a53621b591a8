//! causeway's own HTTP/1.1 client exchange, run inside the request's task.
//!
//! hyper's HTTP/1 client runs each upstream connection as a task of its own and hands every
//! request to it through a channel, and every response body back through another: two task
//! switches and four channel operations per request. For the common exchange, a request whose
//! body is empty or buffered, this module writes the head and body and reads the response head
//! itself, in the task that serves the client (as nginx and Pingora do), and [`Http1Body`]
//! decodes the response body (length, chunked or close-delimited) as the client side asks for
//! it: 18 % fewer instructions per proxied request (BENCHMARKS.md, "Instructions per
//! request"). Requests that stream a body from the client, upgrades and HTTP/2 stay with hyper.
//!
//! It also knows where an exchange failed without guessing: the bytes written and read are
//! counted by the transport, and every failure is reported with the phase it happened in.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::sleep;

use super::connect::{Counted, IoStats, Stream, EARLY_ANSWER_WAIT};
use super::exchange::{KeepAlive, RequestBody};
use crate::headers::AddedFields;

/// The most header fields a response head may carry (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// The size of one read from the upstream.
const READ_SIZE: usize = 8 * 1024;
/// Bodies up to this size are written with the head in one `write`.
const INLINE_BODY: usize = 16 * 1024;
/// The longest chunk-size line (size, extensions, CRLF) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An upstream HTTP/1.1 connection between exchanges: the transport and any bytes read ahead.
pub struct Http1Conn {
    io: Counted<Stream>,
    buf: BytesMut,
}

impl Http1Conn {
    /// Wraps a freshly opened transport.
    pub fn new(io: Counted<Stream>) -> Http1Conn {
        Http1Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The transport's byte counters.
    pub fn stats(&self) -> Arc<IoStats> {
        self.io.stats()
    }

    /// The transport, for hyper (a streamed upload or a health check); `None` when bytes were
    /// read ahead that hyper would never see.
    pub fn into_io(self) -> Option<Counted<Stream>> {
        self.buf.is_empty().then_some(self.io)
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent bytes nobody asked for. Never waits; a read is tried only when the event loop saw
    /// the socket become readable, so a quiet connection costs no system call.
    pub fn is_idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        // Pending: nothing to read, the connection is idle. Ready: EOF, an error, or a byte
        // that cannot belong to any response; none of those can take a request.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// Why an exchange failed, with the phase it failed in: `classify` turns it into a cause.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    #[error("the upstream stopped reading the request")]
    WriteTimeout,
    #[error("reading the response head failed: {0}")]
    Read(#[source] io::Error),
    #[error("the connection closed before a complete response head")]
    Closed,
    #[error("no complete response head in time")]
    HeaderTimeout,
    #[error("the response head is larger than max_response_header")]
    HeadTooLarge,
    #[error("invalid response head: {0}")]
    Invalid(String),
}

/// A failed body read after the head was relayed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body failed: {0}")]
    Read(#[source] io::Error),
    #[error("the connection closed {remaining}")]
    Closed { remaining: &'static str },
    #[error("invalid chunked encoding: {0}")]
    InvalidChunk(&'static str),
}

impl BodyError {
    /// Whether the upstream reset the connection (rather than closing it or sending garbage).
    pub fn is_reset(&self) -> bool {
        matches!(self, BodyError::Read(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }
}

/// How far the request got when the exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Nothing,
    Part,
    All,
}

/// The timeouts and limits of one exchange, and where its response's fields go.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// No write progress for this long is `write_timeout`.
    pub write: Duration,
    /// From the end of the request to the end of the response head.
    pub header: Duration,
    /// The largest response head accepted.
    pub max_head: usize,
    pub fields: HeadFields,
}

/// A failed exchange: the error and how much of the request was written before it.
#[derive(Debug)]
pub struct ExchangeFailed {
    pub error: Http1Error,
    pub written: Written,
}

/// Writes `request` (whose body must be empty or buffered) and reads the response head.
/// The request is only borrowed, so it can be sent again on another connection.
pub async fn exchange(
    conn: &mut Http1Conn,
    request: &Request<RequestBody>,
    added: &AddedFields,
    limits: Limits,
) -> Result<ResponseHead, ExchangeFailed> {
    let body = request.body().buffered().unwrap_or_default();
    let mut head = Vec::with_capacity(512 + body.len().min(INLINE_BODY));
    encode_head(request, added, body.len(), &mut head);
    let is_head = request.method() == Method::HEAD;
    if let Err(failed) = write_request(&mut conn.io, &mut head, body, limits.write).await {
        return early_answer(conn, limits, is_head).await.ok_or(failed);
    }
    // The header timeout starts now: the request is written.
    match within(limits.header, read_head(conn, limits, is_head)).await {
        Some(Ok(head)) => Ok(head),
        Some(Err(error)) => Err(ExchangeFailed {
            error,
            written: Written::All,
        }),
        None => Err(ExchangeFailed {
            error: Http1Error::HeaderTimeout,
            written: Written::All,
        }),
    }
}

/// The answer an upstream sent before it had read the whole request, if one is there once
/// writing failed: a backend may refuse an upload with 413 (or 401, or a redirect) as soon as
/// it has the head, then close or stop reading. That answer is the upstream's, so it is
/// relayed, as nginx and hyper do, not replaced by a `write_failed` 502. The connection is
/// never reused after it: the request was cut short.
async fn early_answer(conn: &mut Http1Conn, limits: Limits, is_head: bool) -> Option<ResponseHead> {
    // An answer sent before the failure is already in the socket's receive queue (Linux keeps
    // it readable ahead of a reset); the wait only covers the event loop noticing it.
    let mut head = within(EARLY_ANSWER_WAIT, read_head(conn, limits, is_head))
        .await?
        .ok()?;
    head.keep_alive.reusable = false;
    Some(head)
}

/// The request line and header fields, as hyper's client writes them (lower-case names),
/// with the framing of the buffered body: `Content-Length` when it has bytes, none when it
/// has none unless the client sent one, never `Transfer-Encoding`.
fn encode_head(
    request: &Request<RequestBody>,
    added: &AddedFields,
    body_len: usize,
    out: &mut Vec<u8>,
) {
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == header::TRANSFER_ENCODING || (body_len > 0 && name == header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added.write_lines(out);
    if body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(crate::config::decimal(body_len as u64, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head and the body; a small body goes in the head's buffer, one `write`.
/// `timeout` bounds each wait for the upstream to take more bytes.
async fn write_request(
    io: &mut Counted<Stream>,
    head: &mut Vec<u8>,
    body: &[u8],
    timeout: Duration,
) -> Result<(), ExchangeFailed> {
    let rest: &[u8] = if body.len() <= INLINE_BODY {
        head.extend_from_slice(body);
        &[]
    } else {
        body
    };
    let mut written = Written::Nothing;
    for part in [head.as_slice(), rest] {
        let mut part = part;
        while !part.is_empty() {
            match within(timeout, io.write(part)).await {
                Some(Ok(0)) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(write_failed(Http1Error::Write(error), written));
                }
                Some(Ok(n)) => {
                    part = &part[n..];
                    written = Written::Part;
                }
                Some(Err(error)) => return Err(write_failed(Http1Error::Write(error), written)),
                None => return Err(write_failed(Http1Error::WriteTimeout, written)),
            }
        }
    }
    // TLS buffers records until flushed.
    match within(timeout, io.flush()).await {
        Some(Ok(())) => Ok(()),
        Some(Err(error)) => Err(write_failed(Http1Error::Write(error), written)),
        None => Err(write_failed(Http1Error::WriteTimeout, written)),
    }
}

fn write_failed(error: Http1Error, written: Written) -> ExchangeFailed {
    ExchangeFailed { error, written }
}

/// Runs `future` for at most `limit` from its first poll; `None` if the time ran out. The
/// timer (and the clock read) happens only if the future does not finish on its first poll:
/// a healthy upstream takes most writes at once, and those should not register a timer.
async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(None);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if timer.is_none() {
            timer.set(Some(sleep(limit)));
        }
        match timer.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the connection cannot be reused.
    UntilClose,
}

impl Framing {
    /// Whether the connection can carry another exchange once this body is read.
    pub fn is_delimited(self) -> bool {
        self != Framing::UntilClose
    }
}

/// Reads until one complete final (non-1xx) response head is buffered, and parses it.
async fn read_head(
    conn: &mut Http1Conn,
    limits: Limits,
    is_head: bool,
) -> Result<ResponseHead, Http1Error> {
    let max_head = limits.max_head;
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) = parse_head(&mut conn.buf, max_head, is_head, limits.fields)? {
                if head.response.status().is_informational() {
                    // 100 Continue, 102, 103 Early Hints: not the answer; read on.
                    continue;
                }
                return Ok(head);
            }
            if conn.buf.len() >= max_head {
                return Err(Http1Error::HeadTooLarge);
            }
        }
        if read_more(&mut conn.io, &mut conn.buf)
            .await
            .map_err(Http1Error::Read)?
            == 0
        {
            return Err(Http1Error::Closed);
        }
    }
}

/// One read into `buf`; the number of bytes read (0 at EOF).
fn read_more<'a>(
    io: &'a mut Counted<Stream>,
    buf: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| poll_read_more(io, buf, cx))
}

fn poll_read_more(
    io: &mut Counted<Stream>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// A parsed response head with what its fields say about the body and the connection.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    pub keep_alive: KeepAlive,
}

/// The fields that frame the body or govern reuse, read in the same pass that copies the
/// fields into the header map (no second lookup per field afterwards).
#[derive(Default)]
struct FramingFields {
    content_length: Option<u64>,
    /// Whether a `Transfer-Encoding` was present, and whether its last coding is chunked.
    transfer_encoding: Option<bool>,
    /// `Connection` names fields besides `close` and `keep-alive`.
    connection_names_fields: bool,
}

/// Parses a response head at the start of `buf`; `None` when it is not complete yet. On
/// success the head's bytes are split off `buf` (header values point into them, no copy).
/// `Connection` and `Keep-Alive` are read, not kept: they describe this hop only, and the
/// proxy would strip them anyway (unless `Connection` names other fields; then both stay so
/// the strip can see which).
fn parse_head(
    buf: &mut BytesMut,
    max_head: usize,
    is_head: bool,
    fields: HeadFields,
) -> Result<Option<ResponseHead>, Http1Error> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::HeadTooLarge),
        Err(error) => return Err(Http1Error::Invalid(error.to_string())),
    };
    if head_len > max_head {
        return Err(Http1Error::HeadTooLarge);
    }
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| Http1Error::Invalid(format!("status code {code}")))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = parsed.reason.unwrap_or("");
    let custom_reason = !reason.is_empty() && Some(reason) != status.canonical_reason();
    let reason = custom_reason.then(|| Bytes::copy_from_slice(reason.as_bytes()));

    // Header values become slices of the head's bytes: offsets first, then one freeze.
    let base = buf.as_ptr() as usize;
    let mut framing_fields = FramingFields::default();
    let mut keep_alive = KeepAlive::default_for(version);
    let mut spans = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name_start = field.name.as_ptr() as usize - base;
        let value_start = field.value.as_ptr() as usize - base;
        let value = value_start..value_start + field.value.len();
        let read = crate::headers::response_field_causeway_reads(field.name.as_bytes());
        let name = match (read, fields) {
            (Some(name), _) => FieldName::Read(name),
            (None, HeadFields::RelayRaw) => {
                FieldName::Raw(name_start..name_start + field.name.len())
            }
            (None, HeadFields::Map) => FieldName::Read(invalid_name(
                HeaderName::from_bytes(field.name.as_bytes()),
                field.name,
            )?),
        };
        let mut hop = false;
        if let FieldName::Read(name) = &name {
            if name == header::CONTENT_LENGTH {
                framing_fields.read_content_length(field.value)?;
            } else if name == header::TRANSFER_ENCODING {
                framing_fields.transfer_encoding = Some(last_coding_is_chunked(field.value));
            } else if name == header::CONNECTION {
                framing_fields.connection_names_fields |=
                    keep_alive.read_connection(field.value, version);
                hop = true;
            } else if name == crate::headers::KEEP_ALIVE {
                keep_alive.read_keep_alive(field.value);
                hop = true;
            }
        }
        spans.push((name, value, hop));
    }
    let head = buf.split_to(head_len).freeze();
    // Sized for every field, though fewer may go in: growing it on the proxy's insert of
    // X-Request-Id would cost more than the spare slots.
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut raw: Option<BytesMut> = None;
    let keep_hop = framing_fields.connection_names_fields;
    for (name, value_span, hop) in spans {
        if hop && !keep_hop {
            continue;
        }
        let name = match name {
            FieldName::Read(name) => name,
            // `Connection` names fields the proxy must strip: they all go to the map, where
            // the strip can find them.
            FieldName::Raw(span) if keep_hop => {
                let name = &head[span];
                invalid_name(HeaderName::from_bytes(name), String::from_utf8_lossy(name))?
            }
            FieldName::Raw(span) => {
                // The line as received, from the name to the value's end (the colon and the
                // spaces between are valid as they are), with CRLF whatever the line ended with.
                let raw = raw.get_or_insert_with(|| BytesMut::with_capacity(head_len));
                if value_span.is_empty() {
                    raw.extend_from_slice(&head[span]);
                    raw.extend_from_slice(b":");
                } else {
                    raw.extend_from_slice(&head[span.start..value_span.end]);
                }
                raw.extend_from_slice(b"\r\n");
                continue;
            }
        };
        // SAFETY: httparse accepted these bytes as a field value, and its set (HTAB, SP to
        // `~`, 0x80 to 0xFF) is exactly the bytes a `HeaderValue` may hold (no CTL, no DEL):
        // checking again would scan every value twice, as hyper's own client avoids too.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(value_span)) };
        headers.append(name, value);
    }

    let framing = framing(status, &framing_fields, is_head)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            response.extensions_mut().insert(reason);
        }
    }
    if let Some(raw) = raw {
        // httparse accepted each line: a token name, a value without CR, LF or other controls.
        let raw = hyper::ext::RawFields::from_valid_lines(raw.freeze());
        response.extensions_mut().insert(raw);
    }
    Ok(Some(ResponseHead {
        response,
        framing,
        keep_alive,
    }))
}

/// Where the fields of a response head go once parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadFields {
    /// All into the response's `HeaderMap`: for a client on HTTP/2, whose encoder reads
    /// nothing else.
    Map,
    /// Into the `HeaderMap` only those causeway or hyper read
    /// ([`crate::headers::response_field_causeway_reads`]); the rest stay the upstream's
    /// bytes ([`hyper::ext::RawFields`]), which hyper's HTTP/1 server writes as they are.
    /// Parsing each into the map only to encode it again cost 2k of a proxied request's
    /// 37k instructions (BENCHMARKS.md).
    RelayRaw,
}

/// A response field's name, parsed or left as the span of the head it occupies.
enum FieldName {
    Read(HeaderName),
    Raw(std::ops::Range<usize>),
}

/// A name httparse accepted but `http` does not (not expected: both take RFC 9110 tokens).
fn invalid_name<E>(
    parsed: Result<HeaderName, E>,
    name: impl std::fmt::Debug,
) -> Result<HeaderName, Http1Error> {
    parsed.map_err(|_| Http1Error::Invalid(format!("invalid header name {name:?}")))
}

impl FramingFields {
    /// One `Content-Length` field: digits only; repeated values (or a list) must agree.
    fn read_content_length(&mut self, value: &[u8]) -> Result<(), Http1Error> {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let parsed = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Http1Error::Invalid("invalid Content-Length".into()))?;
            if self.content_length.is_some_and(|seen| seen != parsed) {
                return Err(Http1Error::Invalid(
                    "conflicting Content-Length values".into(),
                ));
            }
            self.content_length = Some(parsed);
        }
        Ok(())
    }
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// How the body of this response is delimited, from its status and framing fields.
fn framing(
    status: StatusCode,
    fields: &FramingFields,
    is_head: bool,
) -> Result<Framing, Http1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Http1Error::Invalid(
            "101 Switching Protocols to a request that did not ask to upgrade".into(),
        ));
    }
    if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3 rule 3); a response whose
    // last coding is not chunked runs until the close.
    match (fields.transfer_encoding, fields.content_length) {
        (Some(true), _) => Ok(Framing::Chunked),
        (Some(false), _) | (None, None) => Ok(Framing::UntilClose),
        (None, Some(0)) => Ok(Framing::Empty),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// A response body decoded from the upstream connection it arrives on. Once the body has been
/// read to its end, [`Http1Body::take_conn`] hands the connection back for reuse.
pub struct Http1Body {
    conn: Option<Http1Conn>,
    state: BodyState,
}

#[derive(Clone, Copy, Debug)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

impl Http1Body {
    /// The body of a response framed as `framing`, read from `conn`.
    pub fn new(conn: Http1Conn, framing: Framing) -> Http1Body {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunk::Size),
            Framing::UntilClose => BodyState::UntilClose,
        };
        Http1Body {
            conn: Some(conn),
            state,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// The exact length left when it is known.
    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::UntilClose => SizeHint::default(),
        }
    }

    /// The connection, once the body ended cleanly and nothing past it was read; for the pool.
    pub fn take_conn(&mut self) -> Option<Http1Conn> {
        if !self.is_end_stream() {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.buf.is_empty() {
            return None; // bytes past the response: the upstream is confused
        }
        // Idle connections hold no buffer (see vendor/hyper/CAUSEWAY-PATCH.md for why).
        conn.buf = BytesMut::new();
        Some(conn)
    }

    /// The next piece of the body.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if conn.buf.is_empty() && ready!(poll_fill(conn, cx))? == 0 {
                        return Poll::Ready(Some(Err(BodyError::Closed {
                            remaining: "with bytes of its Content-Length missing",
                        })));
                    }
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(take).freeze()))));
                }
                BodyState::UntilClose => {
                    if conn.buf.is_empty() && ready!(poll_fill(conn, cx))? == 0 {
                        self.state = BodyState::Done;
                        // The connection ended the body: it cannot be reused.
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    let all = conn.buf.len();
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(all).freeze()))));
                }
                BodyState::Chunked(chunk) => match step_chunk(&mut conn.buf, chunk)? {
                    Step::Data(data, next) => {
                        self.state = BodyState::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Step::Next(next) => self.state = BodyState::Chunked(next),
                    Step::End(trailers) => {
                        self.state = BodyState::Done;
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Step::NeedMore => {
                        if ready!(poll_fill(conn, cx))? == 0 {
                            return Poll::Ready(Some(Err(BodyError::Closed {
                                remaining: "before the last chunk",
                            })));
                        }
                    }
                },
            }
        }
    }
}

/// Reads more body bytes into the connection's buffer.
fn poll_fill(conn: &mut Http1Conn, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
    poll_read_more(&mut conn.io, &mut conn.buf, cx).map_err(BodyError::Read)
}

/// What one step of the chunked decoder found.
enum Step {
    Data(Bytes, Chunk),
    Next(Chunk),
    /// The body ended, with its trailer fields if it had any.
    End(Option<HeaderMap>),
    NeedMore,
}

/// Advances the chunked decoder over what `buf` holds (RFC 9112 §7.1).
fn step_chunk(buf: &mut BytesMut, chunk: Chunk) -> Result<Step, BodyError> {
    match chunk {
        Chunk::Size => {
            let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                return Ok(Step::NeedMore);
            };
            let line = &buf[..line_end];
            let digits = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if digits.is_empty() || digits.len() > 15 {
                return Err(BodyError::InvalidChunk("bad chunk size"));
            }
            let mut size: u64 = 0;
            for &d in digits {
                let v = (d as char)
                    .to_digit(16)
                    .ok_or(BodyError::InvalidChunk("bad chunk size"))?;
                size = size * 16 + u64::from(v);
            }
            buf.advance(line_end + 2);
            Ok(Step::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let take = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(take).freeze();
            let left = left - take as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Step::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(BodyError::InvalidChunk("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(field.name.as_bytes()),
                            HeaderValue::from_bytes(field.value),
                        ) {
                            trailers.append(name, value);
                        }
                    }
                    buf.advance(len);
                    Ok(Step::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE * 4 => {
                    Ok(Step::NeedMore)
                }
                Ok(httparse::Status::Partial) => Err(BodyError::InvalidChunk("trailers too large")),
                Err(_) => Err(BodyError::InvalidChunk("invalid trailer fields")),
            }
        }
    }
}

/// The offset of the first CRLF in `buf`, if there is one within `limit` bytes.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, BodyError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) if at <= limit => Ok(Some(at)),
        Some(_) => Err(BodyError::InvalidChunk("chunk-size line too long")),
        None if buf.len() > limit => Err(BodyError::InvalidChunk("chunk-size line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Response<()>, Framing)>, Http1Error> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, 8192, false, HeadFields::Map)
            .map(|h| h.map(|h| (h.response, h.framing)))
    }

    fn complete(text: &str) -> (Response<()>, Framing) {
        match head(text) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => panic!("head incomplete: {text:?}"),
            Err(e) => panic!("head rejected: {e}"),
        }
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing() {
        let (response, framing) = complete(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 1024\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(framing, Framing::Length(1024));
        assert_eq!(response.headers()["server"], "nginx");
        assert_eq!(response.headers().get_all("x-a").iter().count(), 2);
        assert!(response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            complete(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n"
            )
            .1,
            Framing::Chunked
        );
        assert_eq!(
            complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").1,
            Framing::UntilClose
        );
        assert_eq!(complete("HTTP/1.0 200 OK\r\n\r\n").1, Framing::UntilClose);
        assert_eq!(
            complete("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n").1,
            Framing::Empty
        );
        assert_eq!(
            complete("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").1,
            Framing::Empty
        );
        assert_eq!(
            complete("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").1,
            Framing::Length(7)
        );
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]);
        let parsed = parse_head(&mut buf, 8192, true, HeadFields::Map)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            parsed.framing,
            Framing::Empty,
            "a HEAD response has no body"
        );
    }

    /// The fields causeway relays as bytes for an HTTP/1 client, and those it parses.
    fn relayed(head: &str) -> (HeaderMap, String) {
        let mut buf = BytesMut::from(head.as_bytes());
        let parsed = parse_head(&mut buf, 8192, false, HeadFields::RelayRaw)
            .expect("valid")
            .expect("complete");
        let raw = parsed
            .response
            .extensions()
            .get::<hyper::ext::RawFields>()
            .map(|raw| String::from_utf8_lossy(raw.as_bytes()).into_owned())
            .unwrap_or_default();
        (parsed.response.headers().clone(), raw)
    }

    #[test]
    fn fields_causeway_does_not_read_are_relayed_as_received() {
        let (map, raw) = relayed(
            "HTTP/1.1 200 OK\r\nServer: Fake\r\nDATE: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
             Connection: keep-alive\r\nX-A:  one \r\nX-Empty:\r\nx-a: two\r\n\
             Content-Length: 2\r\nX-Request-Id: up\r\n\r\nok",
        );
        assert_eq!(raw, "Server: Fake\r\nX-A:  one\r\nX-Empty:\r\nx-a: two\r\n");
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(map["date"], "Tue, 01 Dec 2026 00:00:00 GMT");
        assert_eq!(map["content-length"], "2");
        assert_eq!(map["x-request-id"], "up");

        // Bare LF line ends (which httparse accepts) leave as CRLF.
        let (_, raw) = relayed("HTTP/1.1 200 OK\nServer: lf\nContent-Length: 0\n\n");
        assert_eq!(raw, "Server: lf\r\n");

        // A field named in Connection is hop-by-hop: every field goes to the map, where the
        // proxy's strip finds it.
        let (map, raw) =
            relayed("HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nServer: Fake\r\n\r\n");
        assert_eq!(raw, "");
        assert_eq!(map["x-hop"], "1");
        assert_eq!(map["server"], "Fake");
        assert!(map.contains_key("connection"));
    }

    #[test]
    fn bad_heads_are_invalid_or_too_large() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(Http1Error::Invalid(_))),
                "{bad:?}: {:?}",
                head(bad).map(|h| h.map(|h| h.1))
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert!(matches!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(Http1Error::HeadTooLarge)
        ));
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, 20, false, HeadFields::Map),
            Err(Http1Error::HeadTooLarge)
        ));
        assert!(matches!(head("HTTP/1.1 200 OK\r\nServer: x\r\n"), Ok(None)));
    }

    #[test]
    fn connection_and_keep_alive_are_read_not_relayed() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=9\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf, 8192, false, HeadFields::Map)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            head.keep_alive,
            KeepAlive {
                reusable: true,
                timeout: Some(Duration::from_secs(5)),
                max: Some(9)
            }
        );
        assert!(!head.response.headers().contains_key("connection"));
        assert!(!head.response.headers().contains_key("keep-alive"));

        // Naming another field makes that one hop-by-hop: both stay for the strip to see.
        let mut buf =
            BytesMut::from(&b"HTTP/1.0 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\r\n"[..]);
        let head = parse_head(&mut buf, 8192, false, HeadFields::Map)
            .expect("valid")
            .expect("complete");
        assert!(!head.keep_alive.reusable);
        assert_eq!(head.response.headers()["connection"], "close, x-hop");
    }

    #[test]
    fn a_custom_reason_phrase_is_kept() {
        let (response, _) = complete("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n");
        let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine Thanks"[..]));
    }

    fn request(method: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Vec<u8> {
        let mut builder = Request::builder().method(method).uri("/a?b=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = if body.is_empty() {
            RequestBody::empty()
        } else {
            RequestBody::full(Bytes::from_static(body))
        };
        let request = builder.body(body).expect("test request");
        let mut out = Vec::new();
        encode_head(
            &request,
            &AddedFields::default(),
            request.body().buffered().map_or(0, <[u8]>::len),
            &mut out,
        );
        out
    }

    #[test]
    fn the_request_head_carries_the_body_length_and_never_chunked() {
        assert_eq!(
            request("GET", &[("host", "app")], b""),
            b"GET /a?b=1 HTTP/1.1\r\nhost: app\r\n\r\n"
        );
        assert_eq!(
            request(
                "POST",
                &[
                    ("host", "app"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "99")
                ],
                b"hello"
            ),
            b"POST /a?b=1 HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            request("POST", &[("content-length", "0")], b""),
            b"POST /a?b=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "an empty body keeps the client's Content-Length: 0"
        );
    }

    #[test]
    fn the_added_fields_follow_the_requests_own_and_precede_the_body_length() {
        let request = Request::builder()
            .method("POST")
            .uri("/a")
            .header("host", "app")
            .header("via", "1.0 edge")
            .body(RequestBody::full(Bytes::from_static(b"hi")))
            .expect("test request");
        let mut headers = request.headers().clone();
        let hop = crate::headers::ClientHop {
            peer: Some([127, 0, 0, 1].into()),
            peer_text: &HeaderValue::from_static("127.0.0.1"),
            proto: "http",
            host: None,
            trusted: false,
        };
        let id = HeaderValue::from_static("id-1");
        let added = AddedFields::for_hop(
            &mut headers,
            crate::config::ForwardedMode::Xff,
            &hop,
            Some(&id),
            crate::headers::AddTo::Lines,
        );
        let mut out = Vec::new();
        encode_head(&request, &added, 2, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /a HTTP/1.1\r\nhost: app\r\nvia: 1.0 edge\r\nvia: 1.1 causeway\r\n\
             x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: id-1\r\n\
             content-length: 2\r\n\r\n"
        );
    }

    /// Decodes `wire` as a chunked body fed in pieces of `step` bytes.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match step_chunk(&mut buf, chunk)? {
                Step::Data(bytes, next) => {
                    data.extend_from_slice(&bytes);
                    chunk = next;
                }
                Step::Next(next) => chunk = next,
                Step::End(trailers) => {
                    assert!(buf.is_empty(), "nothing left past the body");
                    return Ok((data, trailers));
                }
                Step::NeedMore => {
                    if fed == wire.len() {
                        return Err(BodyError::Closed { remaining: "test" });
                    }
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 42\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = dechunk(wire, step).expect("valid chunked body");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-sum"], "42");
        }
        let (data, trailers) = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 4).expect("valid");
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(dechunk(bad, 64), Err(BodyError::InvalidChunk(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            dechunk(b"5\r\nabc", 64),
            Err(BodyError::Closed { .. })
        ));
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(matches!(
            dechunk(&long, 64),
            Err(BodyError::InvalidChunk(_))
        ));
    }
}
