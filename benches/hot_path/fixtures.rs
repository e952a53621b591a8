//! What the benches feed causeway: a browser's request headers, a backend's response headers,
//! and for the success path a hyper backend and a keep-alive hyper client on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The host every request asks for; the route tables send it to the backend.
pub const HOST: &str = "www.example.com";

/// The request target of the typical request.
pub const TARGET: &str = "/shop/cart?item=42&qty=1";

/// The backend's answer: 1 KiB, as in BENCHMARKS.md.
pub static BODY: [u8; 1024] = [b'x'; 1024];

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

/// What Firefox sends for a page on a keep-alive connection: 12 fields.
pub fn browser_headers() -> HeaderMap {
    map(&[
        ("host", HOST),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://www.example.com/shop/"),
        (
            "cookie",
            "session=3f1c9a0e7b5d4c2a; theme=dark; _ga=GA1.1.123456789.1700000000",
        ),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
    ])
}

/// What a typical backend answers with (nginx-like), hop-by-hop fields included.
pub fn response_headers() -> HeaderMap {
    map(&[
        ("server", "nginx/1.24.0"),
        ("date", "Mon, 04 May 2026 10:00:00 GMT"),
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "1024"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("cache-control", "private, max-age=0"),
        ("etag", "\"6630b5c8-400\""),
    ])
}

/// A current-thread runtime: the client, causeway and the backend share one thread, so a
/// request's figure is the CPU it costs all three, with no cross-core wake-ups in it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the benches")
}

/// Starts a keep-alive HTTP/1.1 backend on loopback that answers every request with [`BODY`].
/// Call inside the runtime; it serves while the runtime runs.
pub async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bench backend on loopback");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut response = Response::new(Full::new(Bytes::from_static(&BODY)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(response)
                });
                // A connection ends when the bench drops its client: nothing to report.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One keep-alive HTTP/1.1 client connection, as a browser would hold to a proxy.
pub struct Client {
    sender: SendRequest<Empty<Bytes>>,
    headers: HeaderMap,
}

impl Client {
    /// Connects to `addr`; call inside the runtime.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect the bench client on loopback");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake of the bench client");
        tokio::spawn(async move {
            // Ends when the client is dropped or the server closes: the next request says so.
            let _ = conn.await;
        });
        Client {
            sender,
            headers: browser_headers(),
        }
    }

    /// Sends the browser's GET and reads the whole answer; returns the body length.
    pub async fn get(&mut self) -> usize {
        let mut request = Request::get(TARGET)
            .body(Empty::new())
            .expect("a static request");
        *request.headers_mut() = self.headers.clone();
        self.sender
            .ready()
            .await
            .expect("the keep-alive connection stays usable");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("the request gets a response");
        assert!(
            response.status().is_success(),
            "bench request failed: {}",
            response.status()
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the whole body arrives")
            .to_bytes();
        assert_eq!(body.len(), BODY.len(), "bench response body is complete");
        body.len()
    }
}
