//! One HTTP/1.1 connection of the faults server, by hand: read and parse a request head, read or
//! skip its body, write bytes exactly as a fault wants them, close with FIN or RST.
//! There is no hyper here on purpose: a fault must be able to stop mid-head, send garbage or
//! reset, which a correct server library will not do. Which fault runs is decided in `paths`;
//! this file only moves bytes, within fixed limits (head size, line size, idle time).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

/// Largest request head accepted; a larger one gets 431 and a close (DESIGN.md §3 default).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line of a chunked request body (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// How long one read or write may wait while a request is under way, so a peer that went
/// silent cannot hold a task for ever.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful close waits for the peer to stop sending, and how much it reads.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX: usize = 1024 * 1024;
/// Largest body piece handed out by [`Conn::body_chunk`].
const MAX_PIECE: usize = 64 * 1024;

/// A byte stream the faults server can answer on, and abort.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Closes at once, with an RST where the transport has one.
    fn abort(self);
}

impl Transport for TcpStream {
    fn abort(self) {
        // SO_LINGER 0: close() sends RST and discards unsent data, instead of a FIN.
        if let Err(e) = self.set_zero_linger() {
            tracing::debug!(error = %e, "faults: set_zero_linger failed; closing with fin");
        }
    }
}

impl Transport for UnixStream {
    /// Unix stream sockets have no RST: the peer sees EOF. (If it still had data in flight to
    /// us, Linux makes its next read fail with ECONNRESET, which is what `/reset-read` relies on.)
    fn abort(self) {}
}

impl Transport for TlsStream<TcpStream> {
    fn abort(self) {
        // No close_notify: the TCP socket under the session is reset directly.
        self.into_inner().0.abort();
    }
}

/// How a request body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: neither Content-Length nor Transfer-Encoding.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head. Only what the faults need is kept.
#[derive(Debug)]
pub(super) struct Request {
    /// The method token, e.g. `GET`.
    pub(super) method: String,
    /// The request target as sent (origin form: path and query).
    pub(super) target: String,
    /// The head exactly as received: request line, header lines and the blank line.
    pub(super) head: Bytes,
    /// How the body is framed.
    pub(super) framing: Framing,
    /// Whether the client allows another request on this connection.
    pub(super) keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body (RFC 9110 §10.1.1).
    pub(super) expect_continue: bool,
}

impl Request {
    /// The path part of the target, without the query.
    pub(super) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of `name` in the query string, if present (`?a=1&b` gives `b` = "").
    pub(super) fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum HeadError {
    /// The peer closed, or stayed idle past the connection's idle timeout: close quietly.
    Closed,
    /// The head is larger than [`MAX_HEAD`]: answer 431.
    TooLarge,
    /// Not an HTTP/1.x request head: answer 400 with this reason.
    Malformed(&'static str),
    /// The socket failed.
    Io(io::Error),
}

/// Where a request body decoder is.
#[derive(Debug)]
pub(super) enum Body {
    /// `n` bytes of a Content-Length body left.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// `n` bytes of the current chunk left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Reading trailer lines after the last chunk; the number is the bytes read so far.
    Trailers(usize),
    /// The body has ended.
    Done,
}

impl Body {
    /// The decoder for a body with this framing.
    pub(super) fn new(framing: Framing) -> Body {
        match framing {
            Framing::Empty => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::ChunkSize,
        }
    }
}

/// One accepted connection: the stream and the bytes read but not yet used.
pub(super) struct Conn<S> {
    stream: S,
    buf: BytesMut,
    /// How long to wait for the next request head; `/keepalive?timeout=S` changes it.
    pub(super) idle: Duration,
}

impl<S: Transport> Conn<S> {
    /// Wraps a freshly accepted stream.
    pub(super) fn new(stream: S, idle: Duration) -> Conn<S> {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            idle,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is EOF.
    async fn fill(&mut self, limit: Duration) -> io::Result<usize> {
        self.buf.reserve(16 * 1024);
        match timeout(limit, self.stream.read_buf(&mut self.buf)).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Reads and parses the next request head, waiting at most `self.idle` for all of it.
    pub(super) async fn read_head(&mut self) -> Result<Request, HeadError> {
        let idle = self.idle;
        match timeout(idle, self.read_head_inner()).await {
            Ok(result) => result,
            Err(_) => Err(HeadError::Closed),
        }
    }

    async fn read_head_inner(&mut self) -> Result<Request, HeadError> {
        let mut scanned = 0;
        loop {
            // RFC 9112 §2.2: ignore empty lines received before the request line.
            let blank = self.buf.iter().take_while(|b| **b == b'\r' || **b == b'\n');
            let skip = blank.count();
            if skip > 0 {
                let _ = self.buf.split_to(skip);
                scanned = 0;
            }
            // A request line starts with a method token. Anything else (a TLS ClientHello
            // starts with 0x16) gets 400 at once, as nginx does, instead of waiting for a CRLF.
            if self.buf.first().is_some_and(|b| !is_tchar(*b)) {
                return Err(HeadError::Malformed("not an HTTP request"));
            }
            if let Some(end) = head_end(&self.buf, scanned) {
                if end > MAX_HEAD {
                    return Err(HeadError::TooLarge);
                }
                return parse_head(self.buf.split_to(end).freeze());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            scanned = self.buf.len();
            match self.fill(self.idle).await {
                Ok(0) => return Err(HeadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }

    /// Reads one line (up to LF) of at most `max` bytes, returned without CR LF.
    async fn read_line(&mut self, max: usize) -> io::Result<Bytes> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(pos + 1).freeze();
                line.truncate(pos);
                if line.last() == Some(&b'\r') {
                    line.truncate(pos - 1);
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(invalid("line too long in chunked body"));
            }
            if self.fill(IO_TIMEOUT).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Takes up to `n` body bytes from the buffer, reading first if it is empty.
    async fn take(&mut self, n: u64) -> io::Result<Bytes> {
        if self.buf.is_empty() && self.fill(IO_TIMEOUT).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = usize::try_from(n).unwrap_or(usize::MAX);
        let len = len.min(self.buf.len()).min(MAX_PIECE);
        Ok(self.buf.split_to(len).freeze())
    }

    /// The next piece of the request body, or `None` at its end. Chunk framing and trailers
    /// are consumed and dropped.
    pub(super) async fn body_chunk(&mut self, body: &mut Body) -> io::Result<Option<Bytes>> {
        loop {
            match *body {
                Body::Done => return Ok(None),
                Body::Length(0) => *body = Body::Done,
                Body::Length(n) => {
                    let piece = self.take(n).await?;
                    *body = Body::Length(n - piece.len() as u64);
                    return Ok(Some(piece));
                }
                Body::ChunkSize => {
                    let line = self.read_line(MAX_CHUNK_LINE).await?;
                    *body = match chunk_size(&line)? {
                        0 => Body::Trailers(0),
                        n => Body::ChunkData(n),
                    };
                }
                Body::ChunkData(0) => *body = Body::ChunkEnd,
                Body::ChunkData(n) => {
                    let piece = self.take(n).await?;
                    *body = Body::ChunkData(n - piece.len() as u64);
                    return Ok(Some(piece));
                }
                Body::ChunkEnd => {
                    if !self.read_line(2).await?.is_empty() {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    *body = Body::ChunkSize;
                }
                Body::Trailers(seen) => {
                    let line = self.read_line(MAX_HEAD).await?;
                    let seen = seen + line.len() + 2;
                    if line.is_empty() {
                        *body = Body::Done;
                    } else if seen > MAX_HEAD {
                        return Err(invalid("request trailers too large"));
                    } else {
                        *body = Body::Trailers(seen);
                    }
                }
            }
        }
    }

    /// Reads and drops a whole request body.
    pub(super) async fn discard_body(&mut self, framing: Framing) -> io::Result<()> {
        let mut body = Body::new(framing);
        while self.body_chunk(&mut body).await?.is_some() {}
        Ok(())
    }

    /// Writes all of `bytes` without flushing (see [`Conn::flush`]).
    pub(super) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match timeout(IO_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Pushes out buffered bytes (TLS keeps records until flushed).
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        match timeout(IO_TIMEOUT, self.stream.flush()).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes all of `bytes` and flushes.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes).await?;
        self.flush().await
    }

    /// Stays silent while the peer keeps the connection, discarding what it sends, and returns
    /// when it closes: a held fault must not pin a socket after the proxy gave up on it.
    pub(super) async fn hold_until_closed(&mut self) {
        let mut scratch = [0u8; 8192];
        loop {
            match self.stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Closes with a FIN (TLS: close_notify, then FIN). Afterwards it reads and drops what the
    /// peer still sends for a moment, because closing a socket with unread data makes Linux
    /// send an RST instead (RFC 1122 §4.2.2.13), which would turn a clean close into a reset.
    pub(super) async fn close(mut self) {
        if timeout(LINGER, self.stream.shutdown()).await.is_err() {
            return;
        }
        let drain = async {
            let mut scratch = vec![0u8; 16 * 1024];
            let mut total = 0;
            while total < LINGER_MAX {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = timeout(LINGER, drain).await;
    }

    /// Closes at once: RST on TCP and TLS, a plain close on unix sockets.
    pub(super) fn abort(self) {
        self.stream.abort();
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The index just past the blank line ending a head in `buf`, scanning from about `from`.
/// Accepts CRLF and bare LF line ends (RFC 9112 §2.2).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => return Some(i + 2),
                Some([b'\r', b'\n', ..]) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Parses a chunk-size line: hex digits, optional `;extensions`.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|b| *b == b';').next().unwrap_or(&[]);
    let digits = trim(digits);
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("bad chunk size"));
    }
    let mut size = 0u64;
    for b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(invalid("bad chunk size")),
        };
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a complete head (ending in a blank line) into a [`Request`].
pub(super) fn parse_head(head: Bytes) -> Result<Request, HeadError> {
    use HeadError::Malformed;
    let mut lines = head.split(|b| *b == b'\n').map(|line| match line {
        [rest @ .., b'\r'] => rest,
        line => line,
    });
    let request_line = lines.next().unwrap_or(&[]);
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(Malformed("bad method"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Malformed("bad request target"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Malformed("not HTTP/1.0 or HTTP/1.1")),
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for line in lines.take_while(|line| !line.is_empty()) {
        if let [b' ' | b'\t', ..] = line {
            // RFC 9112 §5.2: a server must reject obs-fold (or unfold it; rejecting is simpler).
            return Err(Malformed("obsolete line folding"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(Malformed("header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(Malformed("bad header name"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|b| *b == b',') {
                let n = parse_length(trim(item)).ok_or(Malformed("bad content-length"))?;
                if length.is_some_and(|old| old != n) {
                    return Err(Malformed("conflicting content-length"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // RFC 9112 §6.1: chunked must be the final coding; anything else cannot be framed.
            let last = value.split(|b| *b == b',').map(trim).next_back();
            if !last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) || !http11 {
                return Err(Malformed("unsupported transfer-encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Empty,
    };
    // RFC 9112 §6.1: with both Transfer-Encoding and Content-Length, close after answering.
    let keep_alive = !close && (http11 || keep_alive_token) && !(chunked && length.is_some());
    Ok(Request {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        head,
        framing,
        keep_alive,
        expect_continue,
    })
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
impl Transport for tokio::io::DuplexStream {
    /// In-memory pipes have no RST: aborting is dropping.
    fn abort(self) {}
}

#[cfg(test)]
mod tests {
    //! The request-head parser and chunk-size parser on hand-written heads.

    use super::{chunk_size, parse_head, Framing, HeadError, Request};

    fn parse(head: &str) -> Result<Request, HeadError> {
        parse_head(bytes::Bytes::copy_from_slice(head.as_bytes()))
    }

    fn reason(head: &str) -> &'static str {
        match parse(head) {
            Err(HeadError::Malformed(why)) => why,
            other => panic!("expected a malformed head, got {other:?}"),
        }
    }

    #[test]
    fn bare_lf_head_parses_with_its_framing() {
        let req = parse("POST /echo?a=1 HTTP/1.1\nContent-Length: 7\n\n").expect("parses");
        assert_eq!((req.path(), req.query("a")), ("/echo", Some("1")));
        assert_eq!((req.framing, req.keep_alive), (Framing::Length(7), true));
    }

    #[test]
    fn http10_closes_unless_it_asks_for_keep_alive() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").expect("parses").keep_alive);
        let kept = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").expect("parses");
        assert!(kept.keep_alive);
    }

    #[test]
    fn transfer_encoding_wins_over_content_length_and_closes() {
        let head = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let req = parse(head).expect("parses");
        assert_eq!((req.framing, req.keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn malformed_heads_are_rejected_with_a_reason() {
        let cl = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(reason(cl), "conflicting content-length");
        let folded = "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n";
        assert_eq!(reason(folded), "obsolete line folding");
        assert_eq!(
            reason("GET / HTTP/1.1\r\nX Y: a\r\n\r\n"),
            "bad header name"
        );
        assert_eq!(reason("GET / HTTP/2.0\r\n\r\n"), "not HTTP/1.0 or HTTP/1.1");
        assert_eq!(
            reason("GET  / HTTP/1.1\r\n\r\n"),
            "request line is not METHOD TARGET VERSION"
        );
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(reason(gzip), "unsupported transfer-encoding");
        assert_eq!(
            reason("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            "bad content-length"
        );
    }

    #[test]
    fn chunk_size_is_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1aF;name=value").ok(), Some(0x1af));
        assert!(chunk_size(b"").is_err() && chunk_size(b"12345678901234567").is_err());
        assert!(chunk_size(b"0x10").is_err());
    }
}
