//! Forwarding through causeway to a real backend on loopback: methods and bodies, chunked
//! uploads, trailers, the headers added and removed on the way, WebSocket upgrades, unix
//! sockets on both sides, and HTTP/1.1 and HTTP/2 clients.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// The request head as the upstream received it (faults' `/headers`), lower-cased.
async fn upstream_head<B>(h: &Harness, request: Request<B>) -> String
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let reply = send(h.addr, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text().to_ascii_lowercase()
}

#[tokio::test]
async fn post_and_put_bodies_reach_the_upstream_and_come_back() {
    let h = start(&single("{faults}", "")).await;
    for method in ["POST", "PUT"] {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reply = with_body(h.addr, method, "/echo", body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(reply.header("x-echo-method").as_deref(), Some(method));
        assert_eq!(
            reply.body.as_deref().ok(),
            Some(&body[..]),
            "{method} body intact"
        );
    }
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.text(), "ok\n");
}

#[tokio::test]
async fn chunked_upload_is_streamed_through() {
    let h = start(&single("{faults}", "")).await;
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..50)
        .map(|i| {
            Ok(http_body::Frame::data(Bytes::from(vec![
                b'a' + (i % 26)
                    as u8;
                10_000
            ])))
        })
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let stream = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::post("/echo")
        .header("host", "test.local")
        .body(body)
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(echoed.len(), 500_000);
    assert_eq!(echoed[10_000], b'b');
}

#[tokio::test]
async fn response_trailers_are_relayed() {
    let h = start(&single("{faults}", "")).await;
    let stream = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::post("/echo?trailers=1")
        .header("host", "test.local")
        // hyper sends trailers to HTTP/1.1 clients that say they accept them.
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    assert_eq!(trailers["x-trailer"], "done");
    assert_eq!(collected.to_bytes(), "hello");
}

#[tokio::test]
async fn request_id_via_and_forwarded_for_are_added() {
    let h = start(&single("{faults}", "")).await;
    let request = Request::get("/headers")
        .header("host", "app.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(h.addr, request).await;
    let head = reply.text().to_ascii_lowercase();
    let id = reply.request_id();
    assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    assert!(head.contains("via: 1.1 causeway"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("x-forwarded-host: app.example"), "{head}");
    assert!(
        head.contains("host: app.example"),
        "the client's Host is kept: {head}"
    );
}

/// Via, X-Forwarded-For and X-Request-Id reach the upstream once each, after the client's own
/// Via, on both ways causeway sends a request: its own HTTP/1.1 client (a buffered body) and
/// hyper's (a streamed upload).
#[tokio::test]
async fn the_added_fields_reach_the_upstream_once_on_both_client_paths() {
    let h = start(&single("{faults}", "")).await;
    let buffered = Request::post("/headers")
        .header("host", "t")
        .header("via", "1.0 edge")
        .header("x-request-id", "client-id.1")
        .body(Full::new(Bytes::from_static(b"small")))
        .expect("request");
    let buffered = upstream_head(&h, buffered).await;

    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
        vec![Ok(http_body::Frame::data(Bytes::from_static(b"streamed")))];
    let streamed = Request::post("/headers")
        .header("host", "t")
        .header("via", "1.0 edge")
        .header("x-request-id", "client-id.1")
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .expect("request");
    let streamed = upstream_head(&h, streamed).await;

    for (path, head) in [("buffered", &buffered), ("streamed", &streamed)] {
        for field in ["x-request-id: ", "x-forwarded-for: ", "x-forwarded-proto: "] {
            assert_eq!(head.matches(field).count(), 1, "{path}: {field}in {head}");
        }
        assert!(
            head.contains("x-request-id: client-id.1\r\n"),
            "{path}: {head}"
        );
        assert!(
            head.contains("via: 1.0 edge\r\nvia: 1.1 causeway\r\n")
                || head.contains("via: 1.0 edge, 1.1 causeway\r\n"),
            "{path}: our Via follows the client's: {head}"
        );
    }
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_bad_one_replaced() {
    let h = start(&single("{faults}", "")).await;
    let request = Request::get("/headers")
        .header("host", "t")
        .header("x-request-id", "client-id.42@edge")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(h.addr, request).await;
    assert_eq!(reply.request_id(), "client-id.42@edge");
    assert!(reply.text().contains("client-id.42@edge"));
    let request = Request::get("/headers")
        .header("host", "t")
        .header("x-request-id", "bad id with spaces")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(h.addr, request).await;
    assert_ne!(reply.request_id(), "bad id with spaces");
    assert_eq!(reply.request_id().len(), 36, "a UUID");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let h = start(&single("{faults}", "")).await;
    let request = Request::get("/headers")
        .header("host", "t")
        .header("connection", "keep-alive, X-Secret")
        .header("x-secret", "do-not-forward")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let head = upstream_head(&h, request).await;
    assert!(!head.contains("x-secret"), "{head}");
    assert!(!head.contains("do-not-forward"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("proxy-connection"), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
}

#[tokio::test]
async fn untrusted_forwarded_for_is_replaced_not_appended() {
    let h = start(&single("{faults}", "")).await;
    let request = Request::get("/headers")
        .header("host", "t")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let head = upstream_head(&h, request).await;
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
}

#[tokio::test]
async fn unix_socket_upstream_works() {
    let h = start(&single("{unix}", "")).await;
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok\n");
    let line = access_line(&h.access, &reply.request_id()).await;
    assert!(
        line["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("unix:")),
        "{line}"
    );
}

#[tokio::test]
async fn unix_socket_listener_serves_clients() {
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults");
    let dir = std::env::temp_dir().join(format!("causeway-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("proxy.sock");
    let config = format!(
        "[server]\nlisten = [\"unix:{}\"]\n{}",
        socket.display(),
        single(&faults.http.to_string(), "")
    );
    let _proxy = start_proxy(&config).await;
    let stream = UnixStream::connect(&socket)
        .await
        .expect("connect unix listener");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::get("/headers")
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let head = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-for: unknown"),
        "a unix client has no IP: {head}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, its connection task running.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 prior-knowledge handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn http2_clients_are_served() {
    let h = start(&single("{faults}", "")).await;
    let mut sender = h2_client(h.addr).await;
    // Several streams at once on one connection.
    let mut answers = Vec::new();
    for i in 0..5 {
        let request = Request::post("http://test.local/echo")
            .body(Full::new(Bytes::from(format!("stream {i}"))))
            .expect("request");
        answers.push(sender.send_request(request));
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.await.expect("h2 response");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-request-id"));
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, format!("stream {i}"));
    }
}

#[tokio::test]
async fn http2_client_sees_a_cut_body_as_a_reset_stream() {
    let h = start(&single("{faults}", "")).await;
    let mut sender = h2_client(h.addr).await;
    let request = Request::get("http://test.local/truncate")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("head");
    assert_eq!(response.status(), StatusCode::OK);
    let result = response.into_body().collect().await;
    assert!(result.is_err(), "RST_STREAM, not a clean end");
}

/// A WebSocket echo server on loopback.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() || ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_round_trips() {
    let backend = websocket_echo().await;
    init_logs();
    let proxy = start_proxy(&single(&backend.to_string(), "")).await;
    let addr = proxy.tcp_addr().expect("tcp");
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "causeway"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("a frame");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
    }
    ws.close(None).await.expect("close");
}

/// An HTTP/2-only (prior knowledge) backend that answers with the version it saw.
async fn h2_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let text = format!("{:?} {}", request.version(), request.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2() {
    let backend = h2_backend().await;
    init_logs();
    let proxy = start_proxy(&single(&backend.to_string(), "protocol = \"http2\"")).await;
    let addr = proxy.tcp_addr().expect("tcp");
    for _ in 0..3 {
        let reply = get(addr, "/h2/path").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.text(), "HTTP/2.0 /h2/path");
    }
}

#[tokio::test]
async fn tls_listener_serves_h2_and_http11_by_alpn() {
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults");
    let dir = std::env::temp_dir().join(format!("causeway-tls-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed cert");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n{}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        single(&faults.http.to_string(), "")
    );
    let proxy = start_proxy(&config).await;
    let addr = proxy.tcp_addr().expect("tcp");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("trust our cert");
    for (alpn, expect_h2) in [(b"h2".to_vec(), true), (b"http/1.1".to_vec(), false)] {
        let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        client.alpn_protocols = vec![alpn];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with causeway");
        let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        assert_eq!(negotiated_h2, expect_h2);
        let status = if negotiated_h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            let request = Request::get("https://localhost/ok")
                .body(Full::new(Bytes::new()))
                .expect("request");
            sender
                .send_request(request)
                .await
                .expect("response")
                .status()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            let request = Request::get("/ok")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .expect("request");
            sender
                .send_request(request)
                .await
                .expect("response")
                .status()
        };
        assert_eq!(status, StatusCode::OK);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads from `stream` until `seen` holds a complete request head, and returns it (drained
/// from `seen`); `None` when the client closed first.
async fn next_head(stream: &mut TcpStream, seen: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            seen.drain(..end + 4);
            return Some(head);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A scripted HTTP/1.1 upstream on loopback: answers each request by its path with the bytes
/// below, written in small pieces; counts the connections it accepted.
async fn framing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(head) = next_head(&mut stream, &mut seen).await {
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (answer, close): (&[u8], bool) = match path.as_str() {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                              4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n",
                            false,
                        ),
                        "/hints" => (
                            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
                              HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhints",
                            false,
                        ),
                        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
                        "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
                        "/extra" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE", false),
                        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
                    };
                    for piece in answer.chunks(7) {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn response_framings_are_decoded_and_only_clean_connections_reused() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = framing_upstream().await;
    let h = start(&single(&upstream.to_string(), "")).await;
    let connections = || accepted.load(Ordering::SeqCst);

    let reply = get(h.addr, "/chunked").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Wikipedia in\r\n\r\nchunks.");
    let reply = get(h.addr, "/hints").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a 103 before the answer is skipped"
    );
    assert_eq!(reply.text(), "hints");
    let head = send(
        h.addr,
        Request::head("/head")
            .header("host", "test.local")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length").as_deref(), Some("5"));
    assert_eq!(
        head.body.as_deref().ok(),
        Some(&b""[..]),
        "a HEAD answer has no body"
    );
    assert_eq!(
        connections(),
        1,
        "chunked, 1xx and HEAD answers leave the connection reusable"
    );

    let reply = get(h.addr, "/until-close").await;
    assert_eq!(
        reply.text(),
        "until the end",
        "a body delimited by the close is whole"
    );
    get(h.addr, "/chunked").await;
    assert_eq!(
        connections(),
        2,
        "after a close-delimited body the next request needs a new connection"
    );

    let reply = get(h.addr, "/extra").await;
    assert_eq!(
        reply.text(),
        "ok",
        "bytes past Content-Length are not relayed"
    );
    let reply = get(h.addr, "/chunked").await;
    assert_eq!(reply.text(), "Wikipedia in\r\n\r\nchunks.");
    assert_eq!(
        connections(),
        3,
        "a connection with bytes past the response is not reused"
    );
}

/// An upstream that answers 413 as soon as it has the request head, without reading the
/// body, and closes (an upload limit in the backend, like nginx's `client_max_body_size`).
async fn early_413_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "upload too large for this backend\n";
                let answer = format!(
                    "HTTP/1.1 413 Content Too Large\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                // Closed with the body unread: the kernel answers the rest with a reset.
            });
        }
    });
    addr
}

/// An upstream's answer sent before it read the whole request is its answer: relayed as it
/// is, not blamed on the write that failed after it (nginx and hyper do the same). Checked
/// for a buffered upload (causeway's own client) and a streamed one (hyper's).
#[tokio::test]
async fn an_answer_sent_before_the_upload_ended_is_relayed() {
    let upstream = early_413_upstream().await;
    // Larger than the loopback socket buffers, so the write is still going when the reset
    // comes back.
    let body = vec![b'x'; 8 * 1024 * 1024];
    for replay_limit in ["16MiB", "1KiB"] {
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_request_body = \"64MiB\"\n{}",
            single(
                &upstream.to_string(),
                &format!("retry = {{ attempts = 1, max_replay_body = \"{replay_limit}\" }}"),
            )
        );
        let proxy = start_proxy(&config).await;
        let addr = proxy.tcp_addr().expect("tcp");
        let reply = with_body(addr, "POST", "/upload", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "buffered up to {replay_limit}: {:?}",
            reply.body
        );
        assert_eq!(reply.text(), "upload too large for this backend\n");
        assert!(
            reply.header("proxy-status").is_none(),
            "the upstream's answer"
        );
        let line = access_line(&proxy.access, &reply.request_id()).await;
        assert_eq!(line["status"], 413, "{line}");
        assert_eq!(line["upstream_status"], 413, "{line}");
        assert!(line["cause"].is_null(), "{line}");
    }
}

/// An upstream whose response head carries mixed-case names, repeated fields, an empty value,
/// its own Date and X-Request-Id, and hop-by-hop fields; `/named` also names a field in
/// `Connection`, which makes it hop-by-hop too.
async fn fields_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(head) = next_head(&mut stream, &mut seen).await {
                    let named = head.starts_with("GET /named ");
                    let connection = if named {
                        "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"
                    } else {
                        "Connection: keep-alive\r\n"
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nServer: Fake/1.0\r\nX-Mixed-Case: Value  One\r\n\
                         Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n{connection}Keep-Alive: timeout=5\r\n\
                         X-Request-Id: upstream-id\r\nX-Empty:\r\nSet-Cookie: a=1\r\n\
                         Set-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The response head an HTTP/1.1 client reads from causeway for `path`, as raw text.
async fn raw_response_head(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the answer within 5 s")
        .expect("read");
    let answer = String::from_utf8(answer).expect("ASCII answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
    assert_eq!(body, "ok", "{answer}");
    head.to_string()
}

/// Every end-to-end field of the upstream's head reaches the client exactly once, as sent
/// (an HTTP/1 client gets the names' case too: causeway relays those bytes), while the
/// hop-by-hop ones, the upstream's X-Request-Id and a second Date do not.
#[tokio::test]
async fn response_fields_reach_http1_and_http2_clients_once() {
    let upstream = fields_upstream().await;
    let proxy = start_proxy(&single(&upstream.to_string(), "")).await;
    let addr = proxy.tcp_addr().expect("tcp");

    for path in ["/plain", "/named"] {
        let head = raw_response_head(addr, path).await;
        let lines: Vec<&str> = head.lines().collect();
        let count = |name: &str| {
            lines
                .iter()
                .filter(|l| {
                    l.split_once(':')
                        .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
                })
                .count()
        };
        assert_eq!(lines[0], "HTTP/1.1 200 OK", "{head}");
        if path == "/plain" {
            // Relayed as the upstream's bytes: the names keep their case.
            assert!(lines.contains(&"Server: Fake/1.0"), "{head}");
            assert!(lines.contains(&"X-Mixed-Case: Value  One"), "{head}");
            assert!(lines.contains(&"X-Empty:"), "{head}");
        }
        let lower = head.to_ascii_lowercase();
        let lower_lines: Vec<&str> = lower.lines().map(str::trim_end).collect();
        assert!(lower_lines.contains(&"server: fake/1.0"), "{head}");
        assert!(lower_lines.contains(&"x-mixed-case: value  one"), "{head}");
        assert!(lower_lines.contains(&"x-empty:"), "{head}");
        let cookies: Vec<&&str> = lower_lines
            .iter()
            .filter(|l| l.starts_with("set-cookie"))
            .collect();
        assert_eq!(cookies, [&"set-cookie: a=1", &"set-cookie: b=2"], "{head}");
        assert_eq!(count("date"), 1, "{head}");
        assert!(head.contains("Tue, 01 Dec 2026 00:00:00 GMT"), "{head}");
        assert_eq!(count("content-length"), 1, "{head}");
        assert_eq!(count("x-request-id"), 1, "{head}");
        assert!(!head.contains("upstream-id"), "{head}");
        assert_eq!(count("keep-alive"), 0, "{head}");
        assert_eq!(count("x-hop"), 0, "{path}: named in Connection: {head}");
        assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    }

    // HTTP/2 has no place for relayed bytes: every field travels in the header map.
    let mut sender = h2_client(addr).await;
    let request = Request::get("http://t/plain")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    let headers = response.headers();
    assert_eq!(headers["server"], "Fake/1.0");
    assert_eq!(headers["x-mixed-case"], "Value  One");
    assert_eq!(headers["x-empty"], "");
    assert_eq!(headers["date"], "Tue, 01 Dec 2026 00:00:00 GMT");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_ne!(headers["x-request-id"], "upstream-id");
    assert!(!headers.contains_key("keep-alive"));
}
