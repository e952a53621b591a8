//! The success path: what a request that goes well pays for being classifiable had it failed.
//!
//! `bookkeeping` builds the exact objects a successful GET creates only so that a failure could
//! be named (listed below with where the code creates them) and sets them against the same
//! steps without them. `upstream_hop` and `end_to_end` then run whole requests over loopback,
//! through causeway and without it, so the bookkeeping can be read against a request's cost.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use causeway::config::{AccessFormat, AccessLogTarget};
use causeway::log::AccessLog;
use causeway::proxy::{ClientInfo, RequestContext, RequestId};
use causeway::state::State;
use causeway::upstream::body::BodyEnd;
use causeway::upstream::connect::{Counted, IoStats};
use causeway::upstream::exchange::RequestBody;
use criterion::Criterion;
use futures_util::FutureExt as _;
use http::Request;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::fixtures::{self, Client, TARGET};

/// A request head as causeway writes it upstream (about 600 bytes), and the backend's reply.
const HEAD_LEN: usize = 600;
const REPLY_LEN: usize = 1024 + 120;

/// One write of the request head and one read of the reply, as hyper does them on a pooled
/// connection. `stats` are read before and after, as `exchange::send` does to learn what was
/// sent and whether any response byte arrived.
fn exchange_io<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    stats: Option<&IoStats>,
    reply: &mut [u8],
) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let mut cx = Context::from_waker(Waker::noop());
    let before = stats.map(|s| (s.read.load(Relaxed), s.written.load(Relaxed)));
    let head = [b'h'; HEAD_LEN];
    let written = match Pin::new(&mut *io).poll_write(&mut cx, &head) {
        Poll::Ready(Ok(n)) => n,
        other => panic!("an in-memory sink takes the head at once: {other:?}"),
    };
    let mut buf = ReadBuf::new(reply);
    match Pin::new(&mut *io).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(())) => {}
        other => panic!("an in-memory source reads at once: {other:?}"),
    }
    if let (Some(s), Some((read, sent))) = (stats, before) {
        black_box((s.read.load(Relaxed) - read, s.written.load(Relaxed) - sent));
    }
    written + buf.filled().len()
}

/// The in-memory transport: endless reply bytes in, request bytes to nowhere.
fn transport() -> tokio::io::Join<tokio::io::Repeat, tokio::io::Sink> {
    tokio::io::join(tokio::io::repeat(b'r'), tokio::io::sink())
}

/// What `UpstreamBody` and the access-log guard do with the shared end of a relayed body:
/// create it, lock it once at the clean end (src/upstream/body.rs, `finish`) and once when
/// the log is written (src/proxy.rs, `LogOnEnd::write`).
fn body_end() -> bool {
    let end = Arc::new(Mutex::new(BodyEnd::default()));
    let handle = end.clone();
    if let Ok(mut end) = end.lock() {
        end.complete = true;
    }
    let taken = handle.lock().map(|mut e| e.failure.take().is_none());
    taken.unwrap_or(false)
}

/// The objects a successful GET creates only for classification:
/// - `RequestBody::empty()`: an `Arc<Progress>` with a `Notify` (src/upstream/exchange.rs,
///   `with_kind`), so the watchdog can tell the write phase from the header phase;
/// - the `Counted` byte counters on every read and write, and their loads before and after
///   the exchange (src/upstream/connect.rs, src/upstream/exchange.rs `send`);
/// - the `Arc<Mutex<BodyEnd>>` of [`body_end`].
fn with_bookkeeping(
    io: &mut Counted<impl AsyncRead + AsyncWrite + Unpin>,
    reply: &mut [u8],
) -> usize {
    let body = RequestBody::empty();
    let stats = io.stats();
    let n = exchange_io(io, Some(&stats), reply);
    black_box(body_end());
    black_box(&body);
    n
}

/// The same steps with none of it: hyper's own empty body and the bare transport.
fn without_bookkeeping(io: &mut (impl AsyncRead + AsyncWrite + Unpin), reply: &mut [u8]) -> usize {
    let body = Empty::<Bytes>::new();
    let n = exchange_io(io, None, reply);
    black_box(&body);
    n
}

/// Classification bookkeeping of one successful request, alone: with vs without, and per object.
pub fn bookkeeping(c: &mut Criterion) {
    let mut reply = vec![0u8; REPLY_LEN];
    let mut counted = Counted::new(transport());
    let mut bare = transport();
    let mut group = c.benchmark_group("success_bookkeeping");
    group.bench_function("all_with", |b| {
        b.iter(|| with_bookkeeping(&mut counted, &mut reply))
    });
    group.bench_function("all_without", |b| {
        b.iter(|| without_bookkeeping(&mut bare, &mut reply))
    });
    group.bench_function("io_counted", |b| {
        b.iter(|| {
            let stats = counted.stats();
            exchange_io(&mut counted, Some(&stats), &mut reply)
        })
    });
    group.bench_function("io_bare", |b| {
        b.iter(|| exchange_io(&mut bare, None, &mut reply))
    });
    group.bench_function("request_body_empty", |b| b.iter(RequestBody::empty));
    // A small replayable upload: `Progress` also reads the clock at each frame and at the end.
    let payload = Bytes::from_static(b"{\"item\":42,\"qty\":1}");
    group.bench_function("request_body_full_polled", |b| {
        b.iter(|| {
            let mut body = RequestBody::full(payload.clone());
            body.frame().now_or_never().flatten().map(|f| f.is_ok())
        })
    });
    group.bench_function("hyper_full_polled", |b| {
        b.iter(|| {
            let mut body = Full::new(payload.clone());
            body.frame().now_or_never().flatten().map(|f| f.is_ok())
        })
    });
    group.bench_function("body_end", |b| b.iter(body_end));
    group.finish();
}

/// The request `proxy::handle` hands to `Upstream::send`: the browser's head after rewriting.
fn rewritten_head() -> http::HeaderMap {
    let mut headers = fixtures::browser_headers();
    headers.remove(http::header::CONNECTION);
    headers.insert(
        http::header::VIA,
        http::HeaderValue::from_static("1.1 causeway"),
    );
    headers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("127.0.0.1"),
    );
    headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
    headers.insert(
        "x-forwarded-host",
        http::HeaderValue::from_static(fixtures::HOST),
    );
    headers.insert(
        "x-request-id",
        http::HeaderValue::from_static("0196a4c2-7f3a-7c1e-9b2d-5e8f0a1b2c3d"),
    );
    headers
}

fn config(backend: SocketAddr) -> causeway::config::Config {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[log]\naccess_log = \"off\"\n\
         [upstreams.backend]\nservers = [\"{backend}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"backend\"\n"
    );
    causeway::config::parse(&text, Path::new("bench.toml"))
        .unwrap_or_else(|e| panic!("bench config is valid:\n{e}"))
}

/// Runs `one` `iters` times inside the runtime and times the loop.
fn timed(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut one: impl AsyncFnMut() -> usize,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(one().await);
        }
        start.elapsed()
    })
}

/// The upstream hop alone: `Upstream::send` (retry, balance, pool, exchange with its
/// bookkeeping, relayed body) against bare hyper on a kept-alive connection with a header timeout.
pub fn upstream_hop(c: &mut Criterion) {
    let rt = fixtures::runtime();
    let backend = rt.block_on(fixtures::backend());
    let state = rt
        .block_on(async { State::build(config(backend)) })
        .expect("bench state builds");
    let upstream = state.upstreams[0].clone();
    let head = rewritten_head();
    let context = RequestContext {
        id: RequestId(Arc::from("0196a4c2-7f3a-7c1e-9b2d-5e8f0a1b2c3d")),
        client: ClientInfo::new(
            Some(([127, 0, 0, 1], 40000).into()),
            Some(([127, 0, 0, 1], 8080).into()),
            false,
        ),
        client_version: http::Version::HTTP_11,
        fastcgi_script: None,
        // The rewritten head above already holds Via, X-Forwarded-* and X-Request-Id.
        added: Default::default(),
        upgrade: false,
    };
    let mut group = c.benchmark_group("upstream_hop");
    group.bench_function("causeway_upstream_send", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, async || {
                let mut request = Request::get(TARGET)
                    .body(RequestBody::empty())
                    .expect("a static request");
                *request.headers_mut() = head.clone();
                let outcome = upstream.send(request, &context).await;
                let response = outcome
                    .result
                    .unwrap_or_else(|e| panic!("backend answers: {e}"));
                let body = response.into_body().collect().await;
                body.expect("the whole body arrives").to_bytes().len()
            })
        })
    });
    let header_timeout = upstream.config.timeouts.header;
    let mut sender = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(backend)
            .await
            .expect("connect to the bench backend");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake with the bench backend");
        tokio::spawn(conn);
        sender
    });
    group.bench_function("hyper_with_header_timeout", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, async || {
                let mut request = Request::get(TARGET)
                    .body(Empty::<Bytes>::new())
                    .expect("a static request");
                *request.headers_mut() = head.clone();
                sender.ready().await.expect("the connection stays usable");
                let sent = tokio::time::timeout(header_timeout, sender.send_request(request));
                let response = sent
                    .await
                    .expect("the head arrives in time")
                    .expect("backend answers");
                let body = response.into_body().collect().await;
                body.expect("the whole body arrives").to_bytes().len()
            })
        })
    });
    group.finish();
    drop(sender);
    drop(state);
}

/// A whole request over loopback: browser client → causeway → backend, against the client
/// talking to the backend directly, with the access log off and as JSON to /dev/null.
pub fn end_to_end(c: &mut Criterion) {
    let rt = fixtures::runtime();
    let backend = rt.block_on(fixtures::backend());
    let start = |target: AccessLogTarget| {
        rt.block_on(async {
            let state = State::build(config(backend)).expect("bench state builds");
            let access = AccessLog::open(&target, AccessFormat::Json).expect("access log opens");
            let running = causeway::server::start(state, access)
                .await
                .expect("the proxy starts on loopback");
            let addr = running.tcp_addr().expect("the proxy listens on TCP");
            (running, addr)
        })
    };
    let (quiet, quiet_addr) = start(AccessLogTarget::Off);
    let (logged, logged_addr) = start(AccessLogTarget::File(PathBuf::from("/dev/null")));
    let mut group = c.benchmark_group("end_to_end");
    for (name, addr) in [
        ("direct_to_backend", backend),
        ("through_causeway", quiet_addr),
        ("through_causeway_json_log", logged_addr),
    ] {
        let mut client = rt.block_on(Client::connect(addr));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| timed(&rt, iters, async || client.get().await))
        });
    }
    group.finish();
    rt.block_on(async {
        quiet.shutdown(Duration::from_millis(200)).await;
        logged.shutdown(Duration::from_millis(200)).await;
    });
}
