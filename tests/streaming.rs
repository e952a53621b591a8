//! Bodies stream through the real `causeway` binary: a 1 GiB response and a 1 GiB upload pass
//! while the process's peak RSS (VmHWM) stays under 64 MiB, so nothing buffers a whole body.
//! The upstream is `causeway::faults` in this test process; the client counts bytes as they
//! arrive and never keeps them.

#[path = "common/process.rs"]
mod process;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway::faults::{self, FaultsOptions};
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use process::{config_head, Causeway, TempDir};
use tokio::net::TcpStream;

const GIB: u64 = 1 << 30;
/// The bound from issue 2: a streaming proxy needs buffers, not bodies.
const PEAK_RSS_LIMIT: u64 = 64 << 20;
/// A whole transfer must finish within this (a debug build moves well over 100 MiB/s).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// Both tests measure one process each; run them one at a time so they do not compete for
/// the two cores and the figures stay comparable.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A binary proxying everything to `upstream`, accepting request bodies up to 2 GiB.
fn start_proxy(dir: &TempDir, upstream: std::net::SocketAddr) -> Causeway {
    let config = format!(
        "{}[upstreams.u]\nservers = [\"{upstream}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"u\"\n",
        config_head(dir, "max_request_body = \"2GiB\"")
    );
    Causeway::start(dir, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_response_streams_through_in_under_64_mib() {
    let _serial = SERIAL.lock().await;
    let upstream = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let dir = TempDir::new("stream-down");
    let proxy = start_proxy(&dir, upstream.http);
    let rss_at_start = proxy.rss();

    let started = Instant::now();
    let stream = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the causeway binary");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("client handshake with causeway");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(format!("/ok?size={GIB}"))
        .header("host", "stream.test")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("response head within 10 s")
        .expect("response head from causeway");
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id on the response")
        .to_string();
    let mut body = response.into_body();
    let mut received: u64 = 0;
    let counted = tokio::time::timeout(TRANSFER_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body failed after {received} bytes: {e}"))?;
            if let Some(data) = frame.data_ref() {
                // faults sends byte i = b'a' + i % 26: check both ends of every piece, so a
                // lost or repeated piece is noticed without keeping any of it.
                if let (Some(first), Some(last)) = (data.first(), data.last()) {
                    let at = |offset: u64| b'a' + (offset % 26) as u8;
                    assert_eq!(*first, at(received), "byte {received}");
                    let end = received + data.len() as u64 - 1;
                    assert_eq!(*last, at(end), "byte {end}");
                }
                received += data.len() as u64;
            }
        }
        Ok::<u64, String>(received)
    })
    .await
    .expect("the 1 GiB body arrives within the transfer timeout");
    let elapsed = started.elapsed();
    assert_eq!(counted, Ok(GIB), "exactly 1 GiB with a clean end");

    let line = proxy.access_line(&request_id).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["complete"], true, "{line}");
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["bytes_out"], GIB, "{line}");

    let peak = proxy.peak_rss();
    eprintln!(
        "streaming: 1 GiB download through causeway in {:.1} s ({:.0} MiB/s); causeway RSS at start {:.1} MiB, peak (VmHWM) {:.1} MiB",
        elapsed.as_secs_f64(),
        1024.0 / elapsed.as_secs_f64(),
        rss_at_start as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
    );
    assert!(
        peak < PEAK_RSS_LIMIT,
        "causeway peak RSS {peak} bytes is not under 64 MiB while relaying a 1 GiB response"
    );
}

/// A request body of `left` bytes of a fixed pattern, produced as it is sent.
struct Generated {
    left: u64,
    piece: Bytes,
}

impl Generated {
    fn new(size: u64) -> Generated {
        let piece: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        Generated {
            left: size,
            piece: Bytes::from(piece),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.piece.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.piece.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_through_in_under_64_mib() {
    let _serial = SERIAL.lock().await;
    let upstream = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let dir = TempDir::new("stream-up");
    let proxy = start_proxy(&dir, upstream.http);
    let rss_at_start = proxy.rss();

    let started = Instant::now();
    let stream = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to the causeway binary");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("client handshake with causeway");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Content-Length framing: hyper takes it from the exact size hint and the header.
    let request = Request::post("/ok")
        .header("host", "stream.test")
        .header("content-length", GIB.to_string())
        .body(Generated::new(GIB))
        .expect("request");
    let response = tokio::time::timeout(TRANSFER_TIMEOUT, sender.send_request(request))
        .await
        .expect("the 1 GiB upload is answered within the transfer timeout")
        .expect("response from causeway to the 1 GiB upload");
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id on the response")
        .to_string();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("response body within 10 s")
        .expect("complete response body")
        .to_bytes();
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "body: {body:?}");
    assert_eq!(
        &body[..],
        b"ok\n",
        "faults read the whole body, then answered"
    );
    assert_eq!(upstream.hits("/ok"), 1, "one request reached the upstream");

    let line = proxy.access_line(&request_id).await;
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["bytes_in"], GIB, "the whole upload was read: {line}");

    let peak = proxy.peak_rss();
    eprintln!(
        "streaming: 1 GiB upload through causeway in {:.1} s ({:.0} MiB/s); causeway RSS at start {:.1} MiB, peak (VmHWM) {:.1} MiB",
        elapsed.as_secs_f64(),
        1024.0 / elapsed.as_secs_f64(),
        rss_at_start as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
    );
    assert!(
        peak < PEAK_RSS_LIMIT,
        "causeway peak RSS {peak} bytes is not under 64 MiB while relaying a 1 GiB upload"
    );
}
