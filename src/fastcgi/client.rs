//! One FastCGI request over an already connected stream: BEGIN_REQUEST + PARAMS, the request
//! body as STDIN, and the CGI response from STDOUT as an `http::Response<FastCgiBody>`.
//!
//! Design choices. One poll-driven state machine (`Conn`) both writes and reads, so a worker
//! that answers before reading the whole body (an early 413, a fatal error) is seen at once, and
//! a worker that writes output before reading input never deadlocks; the body keeps sending
//! STDIN after the head has been returned. No task is spawned, so the stream only makes
//! progress while the head future or the body is polled. The body ends cleanly only on
//! END_REQUEST: EOF before it is [`FastCgiError::Truncated`]. Each poll reads ahead up to
//! [`READ_AHEAD`] bytes, so END_REQUEST, which PHP-FPM sends right after the last output, is
//! usually seen and the stream dropped before the consumer has sent the body on (PHP-FPM pins
//! a worker until we close, ecosystem.md §1.4). With `keep_conn` the stream is handed back
//! through a oneshot instead. Stats and STDERR go to an [`Exchange`] the caller creates, so
//! they survive a timeout that drops this future. Not here: connecting, pooling, timeouts (the
//! caller wraps those) and multiplexing (every request is id 1).

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::cgi::{CgiError, HeadParser};
use super::exchange::Exchange;
use super::params::Params;
use super::record::{self, Decoder, Record, RecordError};

/// The request id of every request: PHP-FPM does not multiplex (FCGI_MPXS_CONNS=0).
pub const REQUEST_ID: u16 = 1;
/// How much STDOUT a poll buffers ahead of the consumer, to reach END_REQUEST early.
pub const READ_AHEAD: usize = 128 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// A boxed error from the client's request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where an I/O error struck; the proxy's cause depends on it (write_failed, upstream_reset,
/// body_truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sending BEGIN_REQUEST, PARAMS or STDIN.
    WritingRequest,
    /// Before the CGI head was complete.
    ReadingHead,
    /// After the head was returned.
    ReadingBody,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::WritingRequest => "writing the request",
            Phase::ReadingHead => "reading the response head",
            Phase::ReadingBody => "reading the response body",
        })
    }
}

/// Why a FastCGI exchange failed, keeping what the classifier needs.
#[derive(Debug, thiserror::Error)]
pub enum FastCgiError {
    /// The stream failed; `source` is the original error (reset, broken pipe ...).
    #[error("{source} while {phase} ({bytes_received} bytes received)")]
    Io {
        /// What the exchange was doing.
        phase: Phase,
        /// The error from the stream.
        source: io::Error,
        /// Bytes read from the stream before the error.
        bytes_received: u64,
    },
    /// EOF before a complete CGI head (0 bytes: the worker died or closed at once).
    #[error("connection closed before a complete response head ({bytes_received} bytes received)")]
    ClosedBeforeHead {
        /// Bytes read from the stream before EOF.
        bytes_received: u64,
    },
    /// END_REQUEST (status complete) arrived before the CGI head was complete.
    #[error("request ended (app status {app_status}) before a complete CGI head ({stdout_bytes} bytes of STDOUT)")]
    EndedBeforeHead {
        /// The application's exit status from END_REQUEST.
        app_status: u32,
        /// STDOUT bytes received, none of which formed a head.
        stdout_bytes: u64,
    },
    /// Malformed or unexpected records, including "not FastCGI at all".
    #[error(transparent)]
    Record(RecordError),
    /// STDOUT did not start with a valid CGI head.
    #[error(transparent)]
    Cgi(CgiError),
    /// No blank line ended the CGI head within the limit.
    #[error("CGI response head is larger than {limit} bytes")]
    HeadTooLarge {
        /// The configured maximum head size.
        limit: usize,
    },
    /// END_REQUEST refused the request: CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE or unknown.
    #[error("application rejected the request: {} (protocol status {protocol_status})", protocol_status_name(*.protocol_status))]
    Rejected {
        /// The raw protocolStatus byte.
        protocol_status: u8,
    },
    /// EOF after the head but before END_REQUEST: the body is incomplete.
    #[error("connection closed before END_REQUEST: response body truncated")]
    Truncated,
    /// The client's request body failed (usually: the client went away).
    #[error("request body failed: {0}")]
    ClientBody(BoxError),
    /// The request body did not match the CONTENT_LENGTH sent in PARAMS.
    #[error("request body of {received} bytes does not match CONTENT_LENGTH {expected}")]
    BodyLength {
        /// CONTENT_LENGTH as sent.
        expected: u64,
        /// Bytes the body yielded before the mismatch showed.
        received: u64,
    },
}

impl From<RecordError> for FastCgiError {
    fn from(error: RecordError) -> Self {
        FastCgiError::Record(error)
    }
}

impl From<CgiError> for FastCgiError {
    /// A head over the limit is its own cause (`header_too_large`), so it is lifted out.
    fn from(error: CgiError) -> Self {
        match error {
            CgiError::HeadTooLarge { limit } => FastCgiError::HeadTooLarge { limit },
            other => FastCgiError::Cgi(other),
        }
    }
}

/// The spec's name for an END_REQUEST protocolStatus.
pub fn protocol_status_name(status: u8) -> &'static str {
    match status {
        record::FCGI_REQUEST_COMPLETE => "FCGI_REQUEST_COMPLETE",
        record::FCGI_CANT_MPX_CONN => "FCGI_CANT_MPX_CONN",
        record::FCGI_OVERLOADED => "FCGI_OVERLOADED",
        record::FCGI_UNKNOWN_ROLE => "FCGI_UNKNOWN_ROLE",
        _ => "unknown protocol status",
    }
}

/// One request to send.
#[derive(Debug)]
pub struct FastCgiRequest<B> {
    /// The CGI environment, from [`super::params::build`].
    pub params: Params,
    /// The request body, streamed as STDIN.
    pub body: B,
    /// Bytes of `body` to send; must equal the CONTENT_LENGTH in `params` (0 for none).
    pub content_length: u64,
    /// Largest accepted CGI head, blank line included.
    pub max_head: usize,
}

/// Sends `request` on `io` and returns once the CGI head is complete. The body streams the
/// rest of STDOUT. With `reuse`, BEGIN_REQUEST sets FCGI_KEEP_CONN and, after a clean
/// END_REQUEST with the whole request written, `io` is sent back through it; otherwise `io` is
/// dropped (closed) as soon as the request ends. Progress and STDERR go to `exchange`.
pub async fn send<IO, B>(
    io: IO,
    request: FastCgiRequest<B>,
    exchange: &Exchange,
    reuse: Option<oneshot::Sender<IO>>,
) -> Result<Response<FastCgiBody>, FastCgiError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut parser = HeadParser::new(request.max_head);
    let mut conn = Conn::new(io, request, exchange.clone(), reuse)?;
    let head = loop {
        match poll_fn(|cx| conn.poll_chunk(cx)).await {
            Some(Ok(data)) => {
                if let Some(head) = parser.feed(&data)? {
                    break head;
                }
            }
            Some(Err(error)) => return Err(error),
            None => {
                return Err(FastCgiError::EndedBeforeHead {
                    app_status: exchange.app_status().unwrap_or(0),
                    stdout_bytes: parser.buffered() as u64,
                })
            }
        }
    };
    conn.head_done = true;
    if !head.body_start.is_empty() {
        conn.queued += head.body_start.len();
        conn.queue.push_front(head.body_start);
    }
    let mut response = Response::new(FastCgiBody {
        driver: Mutex::new(Box::new(conn)),
    });
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response.extensions_mut().insert(exchange.stderr().clone());
    Ok(response)
}

/// The rest of STDOUT. Ends cleanly only on END_REQUEST; any other end is an error, so hyper
/// aborts the client connection rather than pretend the body is complete.
pub struct FastCgiBody {
    // A Mutex only to make the body `Sync` (for `BoxBody`); polling uses `get_mut`, no lock.
    driver: Mutex<Box<dyn Driver>>,
}

impl fmt::Debug for FastCgiBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastCgiBody").finish_non_exhaustive()
    }
}

impl Body for FastCgiBody {
    type Data = Bytes;
    type Error = FastCgiError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FastCgiError>>> {
        let driver = self
            .get_mut()
            .driver
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        driver
            .poll_chunk(cx)
            .map(|chunk| chunk.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        let driver = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        driver.finished().is_some_and(|rest| rest == 0)
    }

    fn size_hint(&self) -> SizeHint {
        let driver = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        match driver.finished() {
            Some(rest) => SizeHint::with_exact(rest),
            None => SizeHint::default(),
        }
    }
}

/// The type-erased connection behind a [`FastCgiBody`].
trait Driver: Send {
    /// The next STDOUT chunk, `None` after a clean END_REQUEST, or the error that ended it.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, FastCgiError>>>;
    /// After a clean END_REQUEST: the bytes still queued.
    fn finished(&self) -> Option<u64>;
}

/// How the read side ended.
enum ReadState {
    Open,
    /// END_REQUEST with FCGI_REQUEST_COMPLETE.
    Complete,
    Failed(Failure),
    /// The failure was handed to the consumer.
    Reported,
}

enum Failure {
    Eof,
    Read(io::Error),
    Error(FastCgiError),
}

/// Both directions of one request on `IO`.
struct Conn<IO, B> {
    io: Option<IO>,
    reuse: Option<oneshot::Sender<IO>>,
    exchange: Exchange,
    // Write side: encoded records waiting, then the body, then a flush.
    wbuf: BytesMut,
    body: Option<Pin<Box<B>>>,
    content_length: u64,
    body_left: u64,
    needs_flush: bool,
    request_written: bool,
    write_error: Option<io::Error>,
    // Read side.
    rbuf: BytesMut,
    decoder: Decoder,
    queue: VecDeque<Bytes>,
    queued: usize,
    read: ReadState,
    head_done: bool,
}

impl<IO, B> Conn<IO, B>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn new(
        io: IO,
        request: FastCgiRequest<B>,
        exchange: Exchange,
        reuse: Option<oneshot::Sender<IO>>,
    ) -> Result<Self, FastCgiError> {
        // BEGIN_REQUEST, PARAMS and the end records in one allocation.
        let mut wbuf = BytesMut::with_capacity(request.params.encoded_len_max() + 64);
        let role = record::FCGI_RESPONDER;
        record::begin_request(&mut wbuf, REQUEST_ID, role, reuse.is_some());
        record::encoded_params(&mut wbuf, REQUEST_ID, request.params.encoded()?);
        let mut body = Some(Box::pin(request.body));
        if request.content_length == 0 {
            // PHP-FPM reads at most CONTENT_LENGTH bytes: never poll a body nobody will read.
            body = None;
            record::stdin_end(&mut wbuf, REQUEST_ID);
        }
        Ok(Conn {
            io: Some(io),
            reuse,
            exchange,
            wbuf,
            body,
            content_length: request.content_length,
            body_left: request.content_length,
            needs_flush: false,
            request_written: false,
            write_error: None,
            rbuf: BytesMut::new(),
            decoder: Decoder::new(REQUEST_ID),
            queue: VecDeque::new(),
            queued: 0,
            read: ReadState::Open,
            head_done: false,
        })
    }

    /// Makes all the progress possible without waiting: writes, reads, decodes. Stops at
    /// `Pending` on both sides (wakers registered), at the end of the request, or once
    /// [`READ_AHEAD`] bytes are queued.
    fn pump(&mut self, cx: &mut Context<'_>) {
        while matches!(self.read, ReadState::Open) {
            self.drive_write(cx);
            if !matches!(self.read, ReadState::Open) {
                break;
            }
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(record)) => {
                    self.on_record(record);
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    self.end(ReadState::Failed(Failure::Error(error.into())));
                    break;
                }
            }
            if self.queued >= READ_AHEAD {
                break;
            }
            let Some(io) = self.io.as_mut() else { break };
            // Read straight into the record buffer's spare room: no zeroed scratch buffer and
            // no copy (a 16 KiB stack buffer cleared per read was a quarter of the cost of a
            // FastCGI request, BENCHMARKS.md).
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => self.end(ReadState::Failed(Failure::Eof)),
                Poll::Ready(Ok(n)) => self.exchange.add_received(n),
                Poll::Ready(Err(error)) => self.end(ReadState::Failed(Failure::Read(error))),
            }
        }
    }

    /// Writes queued records, pulls the body into STDIN records, and flushes at the end. A
    /// write error stops writing but not reading: the response may already be on its way.
    fn drive_write(&mut self, cx: &mut Context<'_>) {
        while !self.request_written && self.write_error.is_none() {
            let Some(io) = self.io.as_mut() else { return };
            let mut io = Pin::new(io);
            if !self.wbuf.is_empty() {
                match io.as_mut().poll_write(cx, &self.wbuf) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(0)) => self.write_failed(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.wbuf.advance(n);
                        self.exchange.add_sent(n);
                        self.needs_flush = true;
                    }
                    Poll::Ready(Err(error)) => self.write_failed(error),
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                match io.poll_flush(cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {
                        self.request_written = true;
                        self.exchange.mark_request_written();
                    }
                    Poll::Ready(Err(error)) => self.write_failed(error),
                }
                continue;
            };
            match body.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    // The client is slow: let what we have reach the worker meanwhile.
                    if self.needs_flush {
                        match io.poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.needs_flush = false,
                            Poll::Ready(Err(error)) => self.write_failed(error),
                            Poll::Pending => {}
                        }
                    }
                    return;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers have no place in CGI: dropped.
                    if let Ok(data) = frame.into_data() {
                        self.queue_stdin(&data);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    self.end(ReadState::Failed(Failure::Error(FastCgiError::ClientBody(
                        error.into(),
                    ))));
                    return;
                }
                Poll::Ready(None) => {
                    let received = self.content_length - self.body_left;
                    self.body_length_error(received);
                    return;
                }
            }
        }
    }

    fn write_failed(&mut self, error: io::Error) {
        self.exchange.mark_write_error(error.kind());
        self.write_error = Some(error);
    }

    /// Encodes one body chunk as STDIN; the empty STDIN record follows the last byte.
    fn queue_stdin(&mut self, data: &[u8]) {
        let len = data.len() as u64;
        if len > self.body_left {
            let received = self.content_length - self.body_left + len;
            self.body_length_error(received);
            return;
        }
        record::stdin(&mut self.wbuf, REQUEST_ID, data);
        self.body_left -= len;
        if self.body_left == 0 {
            self.body = None;
            record::stdin_end(&mut self.wbuf, REQUEST_ID);
        }
    }

    fn body_length_error(&mut self, received: u64) {
        let expected = self.content_length;
        let error = FastCgiError::BodyLength { expected, received };
        self.end(ReadState::Failed(Failure::Error(error)));
    }

    fn on_record(&mut self, record: Record) {
        let unexpected = match record {
            Record::Stdout(data) => {
                self.queued += data.len();
                self.queue.push_back(data);
                return;
            }
            Record::Stderr(data) => {
                self.exchange.stderr().push(&data);
                return;
            }
            Record::StdoutEnd | Record::StderrEnd => return,
            Record::EndRequest {
                app_status,
                protocol_status,
            } => {
                self.exchange.mark_ended(app_status);
                let state = match protocol_status {
                    record::FCGI_REQUEST_COMPLETE => ReadState::Complete,
                    _ => ReadState::Failed(Failure::Error(FastCgiError::Rejected {
                        protocol_status,
                    })),
                };
                self.end(state);
                return;
            }
            Record::GetValuesResult(_) => record::FCGI_GET_VALUES_RESULT,
            Record::UnknownType(_) => record::FCGI_UNKNOWN_TYPE,
            Record::Other { record_type, .. } => record_type,
        };
        let error = FastCgiError::Record(RecordError::UnexpectedRecord(unexpected));
        self.end(ReadState::Failed(Failure::Error(error)));
    }

    /// Ends the request: the stream goes back through `reuse` if it is clean (complete, the
    /// whole request written, nothing unread), else it is dropped, which closes it.
    fn end(&mut self, state: ReadState) {
        let reusable = matches!(state, ReadState::Complete)
            && self.request_written
            && self.rbuf.is_empty()
            && !self.decoder.padding_pending();
        self.read = state;
        self.body = None;
        let io = self.io.take();
        if let (true, Some(io), Some(reuse)) = (reusable, io, self.reuse.take()) {
            // A caller that stopped waiting for the stream lets it drop here, closing it.
            let _unwanted = reuse.send(io);
        }
    }

    /// The error for a failed read side, phrased for the phase the consumer is in.
    fn error(&mut self, failure: Failure) -> FastCgiError {
        let bytes_received = self.exchange.bytes_received();
        let eof_or_read = matches!(failure, Failure::Eof | Failure::Read(_));
        if let (false, true, Some(source)) = (self.head_done, eof_or_read, self.write_error.take())
        {
            // The write failed first; the read failing too is its consequence.
            return FastCgiError::Io {
                phase: Phase::WritingRequest,
                source,
                bytes_received,
            };
        }
        match failure {
            Failure::Eof if self.head_done => FastCgiError::Truncated,
            Failure::Eof => FastCgiError::ClosedBeforeHead { bytes_received },
            Failure::Read(source) => FastCgiError::Io {
                phase: if self.head_done {
                    Phase::ReadingBody
                } else {
                    Phase::ReadingHead
                },
                source,
                bytes_received,
            },
            Failure::Error(error) => error,
        }
    }
}

impl<IO, B> Driver for Conn<IO, B>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, FastCgiError>>> {
        self.pump(cx);
        if let Some(data) = self.queue.pop_front() {
            self.queued -= data.len();
            return Poll::Ready(Some(Ok(data)));
        }
        match std::mem::replace(&mut self.read, ReadState::Reported) {
            ReadState::Open => {
                self.read = ReadState::Open;
                Poll::Pending
            }
            ReadState::Complete => {
                self.read = ReadState::Complete;
                Poll::Ready(None)
            }
            ReadState::Failed(failure) => Poll::Ready(Some(Err(self.error(failure)))),
            ReadState::Reported => Poll::Ready(None),
        }
    }

    fn finished(&self) -> Option<u64> {
        matches!(self.read, ReadState::Complete).then_some(self.queued as u64)
    }
}
