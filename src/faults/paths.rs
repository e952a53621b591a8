//! The fault paths: which misbehaviour each request path asks for, and doing it.
//! `serve` drives one connection (plain TCP, unix or TLS alike): read a head, count the hit,
//! run the fault, then keep the connection, close it with FIN, reset it, or hold it open.
//! Byte-level reading and writing lives in `http`; listeners and shutdown live in `mod.rs`.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use super::http::{Body, Conn, Framing, HeadError, Request, Transport};
use super::Stats;

/// How long a connection may wait for its next request head unless `/keepalive` says otherwise.
/// Long on purpose, so a proxy's pool never meets a close it did not ask for.
pub(super) const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// Size of the `/huge-header` header value.
const HUGE_HEADER: usize = 128 * 1024;
/// Largest accepted `?size=` for `/ok` (64 GiB).
const MAX_SIZE: u64 = 64 << 30;
/// Largest accepted `?ms=`, `?chunks=` and `?timeout=` values.
const MAX_MS: u64 = 3_600_000;
const MAX_CHUNKS: u64 = 1_000_000;
const MAX_KEEPALIVE_SECS: u64 = 3600;

/// Every path with what it does; printed by `describe()` and in the 404 body.
pub(super) const PATHS: &[(&str, &str)] = &[
    (
        "/ok[?size=N]",
        "200 \"ok\\n\", or N bytes (a..z repeated) streamed",
    ),
    (
        "/echo[?trailers=1]",
        "200 echoing the request body; X-Echo-Method, X-Echo-Path",
    ),
    (
        "/headers",
        "200 whose body is the request head exactly as received",
    ),
    ("/close", "read the request, close (FIN) before any byte"),
    ("/reset", "read the request, close with RST before any byte"),
    ("/partial-head", "half a response head, then close"),
    ("/garbage", "non-HTTP bytes (an SSH banner), then close"),
    (
        "/huge-header",
        "a response head with one 128 KiB header, then close",
    ),
    ("/hang", "read the request, never answer"),
    ("/slow-head[?ms=N]", "answer 200 after N ms (default 2000)"),
    (
        "/truncate",
        "Content-Length: 1000, 100 bytes, then close (FIN)",
    ),
    (
        "/reset-body",
        "Content-Length: 100000, 1000 bytes, then RST",
    ),
    (
        "/stall-body",
        "Content-Length: 1000, 100 bytes, then silence",
    ),
    (
        "/slow-body[?ms=N&chunks=K]",
        "chunked, K chunks (5) each after N ms (200)",
    ),
    ("/status/NNN", "that status with body \"status NNN\\n\""),
    (
        "/keepalive[?timeout=S]",
        "200, Keep-Alive: timeout=S (5), close after S s idle",
    ),
    (
        "/no-read",
        "read the head only, never read the body nor answer",
    ),
    (
        "/reset-read",
        "read the head only, then RST without reading the body",
    ),
];

/// One fault, parsed from a request target; each variant is a row of [`PATHS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// `/ok`: `ok\n`, or `size` pattern bytes.
    Ok { size: Option<u64> },
    /// `/echo`: the request body back, optionally with a trailer.
    Echo { trailers: bool },
    /// `/headers`: the request head back as the body.
    Headers,
    /// `/close`: FIN before any byte.
    Close,
    /// `/reset`: RST before any byte.
    Reset,
    /// `/partial-head`: half a head, then FIN.
    PartialHead,
    /// `/garbage`: an SSH banner and binary bytes, then FIN.
    Garbage,
    /// `/huge-header`: a complete head with a 128 KiB header, then FIN.
    HugeHeader,
    /// `/hang`: no answer at all.
    Hang,
    /// `/slow-head`: `ok\n` after `delay`.
    SlowHead { delay: Duration },
    /// `/truncate`: 100 of 1000 announced body bytes, then FIN.
    Truncate,
    /// `/reset-body`: 1000 of 100000 announced body bytes, then RST.
    ResetBody,
    /// `/stall-body`: 100 of 1000 announced body bytes, then silence.
    StallBody,
    /// `/slow-body`: `chunks` chunks, each after `delay`.
    SlowBody { delay: Duration, chunks: u64 },
    /// `/status/NNN`: that status.
    Status(u16),
    /// `/keepalive`: `ok\n`, then close after `timeout` idle. Like a Node server's
    /// `keepAliveTimeout`, the timeout then holds for the rest of that connection.
    KeepAlive { timeout: Duration },
    /// `/no-read`: the body is left unread, no answer.
    NoRead,
    /// `/reset-read`: RST with the body unread.
    ResetRead,
    /// Answer, then drop the connection when the next request arrives on it.
    DropNext,
    /// A parameter that does not parse: 400 with this message.
    BadParameter(String),
    /// No such path: 404.
    Unknown,
}

/// How a complete response may be sent: whether the connection stays open after it, and
/// whether it carries a body (not for HEAD, RFC 9110 §9.3.2: same head, no content).
#[derive(Clone, Copy, Debug)]
struct Reply {
    keep_alive: bool,
    body: bool,
}

impl Reply {
    /// For an answer to a request that could not be read: close afterwards.
    const CLOSE: Reply = Reply {
        keep_alive: false,
        body: true,
    };

    fn to(req: &Request) -> Reply {
        Reply {
            keep_alive: req.keep_alive,
            body: req.method != "HEAD",
        }
    }
}

/// What to do with the connection once a fault has run.
enum After {
    /// The response is complete and framed: read the next request if the client allows it.
    Next,
    /// Close with FIN.
    Close,
    /// Close with RST.
    Reset,
    /// Keep the socket open and silent until the peer closes it.
    Hold,
    /// Keep the socket open without reading a byte (so uploads stall), for at most a minute.
    HoldUnread,
}

impl Fault {
    /// The fault a request asks for.
    pub(super) fn parse(req: &Request) -> Fault {
        let number = |name: &str, default: u64, max: u64| match req.query(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(Fault::BadParameter(format!(
                    "{name} must be a number up to {max}"
                ))),
            },
        };
        let result = match req.path() {
            "/ok" => match req.query("size") {
                None => Ok(Fault::Ok { size: None }),
                Some(_) => number("size", 0, MAX_SIZE).map(|n| Fault::Ok { size: Some(n) }),
            },
            "/echo" => Ok(Fault::Echo {
                trailers: req.query("trailers").is_some_and(|v| v != "0"),
            }),
            "/headers" => Ok(Fault::Headers),
            "/close" => Ok(Fault::Close),
            "/reset" => Ok(Fault::Reset),
            "/partial-head" => Ok(Fault::PartialHead),
            "/garbage" => Ok(Fault::Garbage),
            "/huge-header" => Ok(Fault::HugeHeader),
            "/hang" => Ok(Fault::Hang),
            "/slow-head" => number("ms", 2000, MAX_MS).map(|ms| Fault::SlowHead {
                delay: Duration::from_millis(ms),
            }),
            "/truncate" => Ok(Fault::Truncate),
            "/reset-body" => Ok(Fault::ResetBody),
            "/stall-body" => Ok(Fault::StallBody),
            "/slow-body" => number("ms", 200, MAX_MS).and_then(|ms| {
                let chunks = number("chunks", 5, MAX_CHUNKS)?;
                let delay = Duration::from_millis(ms);
                Ok(Fault::SlowBody { delay, chunks })
            }),
            "/keepalive" => number("timeout", 5, MAX_KEEPALIVE_SECS).map(|s| Fault::KeepAlive {
                timeout: Duration::from_secs(s),
            }),
            "/no-read" => Ok(Fault::NoRead),
            "/reset-read" => Ok(Fault::ResetRead),
            "/drop-next" => Ok(Fault::DropNext),
            path => match path.strip_prefix("/status/").map(str::parse::<u16>) {
                Some(Ok(code)) if (200..=599).contains(&code) => Ok(Fault::Status(code)),
                Some(_) => Err(Fault::BadParameter(
                    "status must be a number from 200 to 599".to_string(),
                )),
                None => Ok(Fault::Unknown),
            },
        };
        result.unwrap_or_else(|bad| bad)
    }

    /// Whether the request body is read before the fault runs. `/echo` streams it itself;
    /// `/no-read` and `/reset-read` exist to leave it unread.
    fn reads_body_first(&self) -> bool {
        !matches!(self, Fault::Echo { .. } | Fault::NoRead | Fault::ResetRead)
    }
}

/// Serves one connection until it closes, fails, or is held open (then until shutdown, when
/// the caller drops this future).
pub(super) async fn serve<S: Transport>(stream: S, stats: &Stats) {
    let mut conn = Conn::new(stream, DEFAULT_IDLE);
    let mut drop_next = false;
    loop {
        let req = match conn.read_head().await {
            Ok(req) => req,
            // Idle past the timeout, or gone: drop the socket (a FIN, as Node's keepAliveTimeout).
            Err(HeadError::Closed) => return,
            Err(HeadError::Io(e)) => {
                return tracing::debug!(error = %e, "faults: reading a request head failed");
            }
            Err(HeadError::TooLarge) => {
                let _ = answer(
                    &mut conn,
                    431,
                    b"request head too large\n",
                    Reply::CLOSE,
                    &[],
                )
                .await;
                return conn.close().await;
            }
            Err(HeadError::Malformed(why)) => {
                let body = format!("bad request: {why}\n");
                let _ = answer(&mut conn, 400, body.as_bytes(), Reply::CLOSE, &[]).await;
                return conn.close().await;
            }
        };
        stats.hit(req.path());
        if drop_next {
            // The keep-alive race from the upstream side: a reused connection closed with the
            // request unanswered, as a backend whose keep-alive timer fired just then does.
            return conn.close().await;
        }
        let fault = Fault::parse(&req);
        drop_next = matches!(fault, Fault::DropNext);
        let after = match run(&mut conn, &req, &fault).await {
            Ok(after) => after,
            Err(e) => {
                tracing::debug!(error = %e, path = req.path(), "faults: connection failed");
                return;
            }
        };
        match after {
            After::Next if req.keep_alive => {}
            After::Next | After::Close => return conn.close().await,
            After::Reset => return conn.abort(),
            After::Hold => return conn.hold_until_closed().await,
            // Reading would unblock the upload this fault exists to stall; a bound instead.
            After::HoldUnread => return tokio::time::sleep(Duration::from_secs(60)).await,
        }
    }
}

/// Runs one fault on a connection whose request head has been read.
async fn run<S: Transport>(conn: &mut Conn<S>, req: &Request, fault: &Fault) -> io::Result<After> {
    let reads_body = fault.reads_body_first() || matches!(fault, Fault::Echo { .. });
    if reads_body && req.expect_continue && req.framing != Framing::Empty {
        // Without it, curl waits a second before sending a large upload.
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if fault.reads_body_first() {
        conn.discard_body(req.framing).await?;
    }
    let keep = Reply::to(req);
    match fault {
        Fault::Ok { size: None } => answer(conn, 200, b"ok\n", keep, &[]).await,
        Fault::Ok { size: Some(size) } => ok_sized(conn, *size, keep).await,
        Fault::Echo { trailers } => echo(conn, req, *trailers).await,
        Fault::Headers => answer(conn, 200, &req.head, keep, &[]).await,
        Fault::Close => Ok(After::Close),
        Fault::Reset => Ok(After::Reset),
        Fault::PartialHead => {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: te").await?;
            Ok(After::Close)
        }
        Fault::Garbage => {
            conn.send(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01\x14\x0a\x14\xde\xad\xbe\xef\xff\xfe")
                .await?;
            Ok(After::Close)
        }
        Fault::HugeHeader => {
            let mut head = b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec();
            head.resize(head.len() + HUGE_HEADER, b'h');
            head.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            conn.send(&head).await?;
            Ok(After::Close)
        }
        Fault::Hang => Ok(After::Hold),
        Fault::NoRead => Ok(After::HoldUnread),
        Fault::SlowHead { delay } => {
            tokio::time::sleep(*delay).await;
            answer(conn, 200, b"ok\n", keep, &[]).await
        }
        Fault::Truncate => {
            partial_body(conn, 1000, 100).await?;
            Ok(After::Close)
        }
        Fault::ResetBody => {
            partial_body(conn, 100_000, 1000).await?;
            Ok(After::Reset)
        }
        Fault::StallBody => {
            partial_body(conn, 1000, 100).await?;
            Ok(After::Hold)
        }
        Fault::SlowBody { delay, chunks } => slow_body(conn, *delay, *chunks, keep).await,
        Fault::Status(code) => {
            let body = format!("status {code}\n");
            answer(conn, *code, body.as_bytes(), keep, &[]).await
        }
        Fault::KeepAlive { timeout } => {
            conn.idle = *timeout;
            let value = format!("timeout={}", timeout.as_secs());
            let headers = [("Keep-Alive", value.as_str())];
            answer(conn, 200, b"ok\n", keep, &headers).await
        }
        Fault::ResetRead => Ok(After::Reset),
        Fault::DropNext => answer(conn, 200, b"ok\n", keep, &[]).await,
        Fault::BadParameter(message) => {
            answer(conn, 400, format!("{message}\n").as_bytes(), keep, &[]).await
        }
        Fault::Unknown => {
            let mut body = format!("no such fault: {}\npaths:\n", req.path());
            for (path, what) in PATHS {
                body.push_str(&format!("  {path:<28} {what}\n"));
            }
            answer(conn, 404, body.as_bytes(), keep, &[]).await
        }
    }
}

/// A response head: status line, `headers`, and `Connection: keep-alive` or `close`.
fn head(status: u16, headers: &[(&str, &str)], keep_alive: bool) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    head.push_str(&format!("Connection: {connection}\r\n\r\n"));
    head.into_bytes()
}

/// A complete text/plain response. 204 and 304 get no body (RFC 9110 §15.3.5, §15.4.5), and
/// 204 no Content-Length either; a HEAD answer keeps the length but drops the body.
async fn answer<S: Transport>(
    conn: &mut Conn<S>,
    status: u16,
    body: &[u8],
    reply: Reply,
    extra: &[(&str, &str)],
) -> io::Result<After> {
    let body = if status == 204 || status == 304 {
        &[][..]
    } else {
        body
    };
    let length = body.len().to_string();
    let mut headers = vec![("Content-Type", "text/plain")];
    if status != 204 {
        headers.push(("Content-Length", &length));
    }
    headers.extend_from_slice(extra);
    let mut bytes = head(status, &headers, reply.keep_alive);
    if reply.body {
        bytes.extend_from_slice(body);
    }
    conn.send(&bytes).await?;
    Ok(After::Next)
}

/// The `/ok?size=N` body pattern: byte i is `b'a' + i % 26`. A whole number of alphabets, so
/// every piece starts at `a` and a test can check any byte of the stream.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| (0..26 * 2520).map(|i| b'a' + (i % 26) as u8).collect())
}

async fn ok_sized<S: Transport>(conn: &mut Conn<S>, size: u64, reply: Reply) -> io::Result<After> {
    let length = size.to_string();
    let headers = [("Content-Type", "text/plain"), ("Content-Length", &length)];
    conn.write(&head(200, &headers, reply.keep_alive)).await?;
    let mut left = if reply.body { size } else { 0 };
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(pattern().len());
        conn.write(&pattern()[..n]).await?;
        left -= n as u64;
    }
    conn.flush().await?;
    Ok(After::Next)
}

/// `/echo`: the body back as it arrives, framed like the request's (Content-Length or
/// chunked); chunked with a trailer when `trailers` is asked for.
async fn echo<S: Transport>(
    conn: &mut Conn<S>,
    req: &Request,
    trailers: bool,
) -> io::Result<After> {
    let chunked = trailers || req.framing == Framing::Chunked;
    let length = match req.framing {
        Framing::Length(n) => n.to_string(),
        _ => "0".to_string(),
    };
    let mut headers = vec![
        ("Content-Type", "application/octet-stream"),
        ("X-Echo-Method", req.method.as_str()),
        ("X-Echo-Path", req.target.as_str()),
    ];
    if chunked {
        headers.push(("Transfer-Encoding", "chunked"));
    } else {
        headers.push(("Content-Length", &length));
    }
    if trailers {
        headers.push(("Trailer", "X-Trailer"));
    }
    conn.send(&head(200, &headers, req.keep_alive)).await?;
    let mut body = Body::new(req.framing);
    let reply = Reply::to(req);
    while let Some(piece) = conn.body_chunk(&mut body).await? {
        if !reply.body {
            continue; // HEAD: the body is read and dropped, the response has none
        } else if chunked {
            conn.write(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            conn.write(&piece).await?;
            conn.write(b"\r\n").await?;
        } else {
            conn.write(&piece).await?;
        }
        conn.flush().await?;
    }
    if !reply.body {
        conn.flush().await?;
    } else if trailers {
        conn.send(b"0\r\nX-Trailer: done\r\n\r\n").await?;
    } else if chunked {
        conn.send(b"0\r\n\r\n").await?;
    }
    Ok(After::Next)
}

/// A head announcing `length` body bytes, then only `sent` of them.
async fn partial_body<S: Transport>(
    conn: &mut Conn<S>,
    length: u64,
    sent: usize,
) -> io::Result<()> {
    let length = length.to_string();
    let headers = [("Content-Type", "text/plain"), ("Content-Length", &length)];
    let mut bytes = head(200, &headers, true);
    bytes.extend_from_slice(&pattern()[..sent]);
    conn.send(&bytes).await
}

async fn slow_body<S: Transport>(
    conn: &mut Conn<S>,
    delay: Duration,
    chunks: u64,
    reply: Reply,
) -> io::Result<After> {
    let headers = [
        ("Content-Type", "text/plain"),
        ("Transfer-Encoding", "chunked"),
    ];
    conn.send(&head(200, &headers, reply.keep_alive)).await?;
    if !reply.body {
        return Ok(After::Next);
    }
    for i in 0..chunks {
        tokio::time::sleep(delay).await;
        let data = format!("chunk {i}\n");
        conn.send(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await?;
    }
    conn.send(b"0\r\n\r\n").await?;
    Ok(After::Next)
}
