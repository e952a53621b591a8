//! A tiny HTTP/1.1 client for the faults tests: read one framed response (Content-Length or
//! chunked, with trailers), or read until the peer closes and report how it closed.
//! Test-only; shared by `tests.rs`, `targets.rs` and `tls.rs`.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::{start, Faults, FaultsOptions};

/// Longest any single test step may take before the test fails.
pub(super) const STEP: Duration = Duration::from_secs(5);

/// A faults server on fresh loopback ports.
pub(super) async fn faults() -> Faults {
    let _ = rustls::crypto::ring::default_provider().install_default();
    start(FaultsOptions::loopback())
        .await
        .expect("faults server starts")
}

/// A parsed response: status, head text, decoded body and trailer lines.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) head: String,
    pub(super) body: Vec<u8>,
    pub(super) trailers: String,
}

impl Response {
    /// The value of header `name` (case-insensitive), if present.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads more bytes into `buf`; EOF is an error here, because a response was expected.
pub(super) async fn more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = timeout(STEP, s.read(&mut chunk)).await??;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads one line (CRLF) from the front of `buf`, reading more as needed.
async fn line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).take(pos).collect();
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        more(s, buf).await?;
    }
}

/// Reads exactly `n` bytes from the front of `buf`, reading more as needed.
async fn exact<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<Vec<u8>> {
    while buf.len() < n {
        more(s, buf).await?;
    }
    Ok(buf.drain(..n).collect())
}

/// Reads one framed response; bytes after it stay in `buf` for the next one.
pub(super) async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Response> {
    let mut head = String::new();
    loop {
        let l = line(s, buf).await?;
        if l.is_empty() {
            break;
        }
        head.push_str(&l);
        head.push('\n');
    }
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
        trailers: String::new(),
    };
    if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let size = usize::from_str_radix(&line(s, buf).await?, 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            response.body.extend(exact(s, buf, size).await?);
            assert_eq!(line(s, buf).await?, "", "chunk ends with CRLF");
        }
        loop {
            let l = line(s, buf).await?;
            if l.is_empty() {
                break;
            }
            response.trailers.push_str(&l);
        }
    } else {
        let length = response
            .header("content-length")
            .and_then(|v| v.parse().ok());
        response.body = exact(s, buf, length.unwrap_or(0)).await?;
    }
    Ok(response)
}

/// Sends `request` and reads one response.
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &str,
) -> Response {
    s.write_all(request.as_bytes())
        .await
        .expect("request written");
    read_response(s, &mut Vec::new())
        .await
        .expect("a complete response")
}

/// Reads until EOF or an error: the bytes, and how the stream ended (`Ok` for EOF).
pub(super) async fn read_until_end<S: AsyncRead + Unpin>(s: &mut S) -> (Vec<u8>, io::Result<()>) {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match timeout(STEP, s.read(&mut chunk))
            .await
            .expect("stream ends in time")
        {
            Ok(0) => return (all, Ok(())),
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) => return (all, Err(e)),
        }
    }
}

/// Asserts that nothing arrives on `s` for `wait`, and that it is still open.
pub(super) async fn assert_silent<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) {
    let mut byte = [0u8; 1];
    let read = timeout(wait, s.read(&mut byte)).await;
    assert!(read.is_err(), "expected silence, got {read:?}");
}
