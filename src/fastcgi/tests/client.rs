//! The client's success paths against a scripted application: streaming both ways, STDERR,
//! keep-alive hand-back, and closing at END_REQUEST.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame};
use http_body_util::{Full, StreamBody};
use tokio::io::{duplex, AsyncReadExt};
use tokio::sync::oneshot;

use super::app::*;
use crate::fastcgi::client::send;
use crate::fastcgi::exchange::{Exchange, StderrLog};
use crate::fastcgi::record::*;

#[tokio::test]
async fn full_response_streams_the_body_and_ends_on_end_request() {
    let (client, server) = duplex(64 * 1024);
    let app = tokio::spawn(async move {
        let mut app = App::new(server);
        let received = app.read_head().await;
        assert!(app.read_stdin().await.is_empty());
        let mut wire = BytesMut::new();
        stdout(
            &mut wire,
            b"Status: 201 Created\r\nContent-Type: text/plain\r\n\r\nhel",
        );
        stdout(&mut wire, b"lo");
        app.write(&wire).await;
        app.write(&answer(b" world")).await;
        received
    });
    let exchange = Exchange::new(4096);
    let response = within(send(client, no_body(), &exchange, None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let (body, end) = drain(response.into_body()).await;
    assert_eq!(body, b"hello world");
    assert!(end.is_ok(), "{end:?}");
    let received = app.await.unwrap();
    assert_eq!(received.flags & FCGI_KEEP_CONN, 0);
    assert_eq!(received.params[0].0, "SCRIPT_FILENAME");
    assert!(exchange.request_written());
    assert!(exchange.bytes_sent() > 0 && exchange.bytes_received() > 0);
    assert_eq!(exchange.app_status(), Some(0));
}

#[tokio::test]
async fn request_body_is_sent_as_stdin_of_content_length() {
    let (client, server) = duplex(4096);
    let app = tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let stdin = app.read_stdin().await;
        app.write(&answer(b"\r\n")).await;
        stdin
    });
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..50u8)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i; 2000]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let exchange = Exchange::new(4096);
    let response = within(send(client, request(body, 100_000), &exchange, None)).await;
    let (_, end) = drain(response.unwrap().into_body()).await;
    assert!(end.is_ok(), "{end:?}");
    let stdin = app.await.unwrap();
    assert_eq!(stdin.len(), 100_000);
    assert!(stdin[..2000].iter().all(|&b| b == 0) && stdin[98_000..].iter().all(|&b| b == 49));
    assert!(exchange.request_written());
}

#[tokio::test]
async fn answer_before_stdin_is_read_still_works() {
    // The worker refuses the upload after PARAMS and never reads STDIN: a tiny pipe means the
    // client is still blocked writing when the answer comes.
    let (client, server) = duplex(1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.write(&answer(b"Status: 413 Payload Too Large\r\n\r\ntoo big"))
            .await;
    });
    let body = Full::new(Bytes::from(vec![b'u'; 1 << 20]));
    let exchange = Exchange::new(4096);
    let response = within(send(client, request(body, 1 << 20), &exchange, None)).await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (body, end) = drain(response.into_body()).await;
    assert_eq!((body.as_slice(), end.is_ok()), (&b"too big"[..], true));
    assert!(!exchange.request_written());
}

#[tokio::test]
async fn worker_writing_output_before_reading_stdin_does_not_deadlock() {
    // Both pipes hold 1 KiB: a client that finished writing STDIN before reading would block
    // forever against a worker that finishes writing STDOUT before reading STDIN.
    let (client, server) = duplex(1024);
    let app = tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stdout(&mut wire, b"Content-Type: text/plain\r\n\r\n");
        stdout(&mut wire, &[b'o'; 32 * 1024]);
        stdout(&mut wire, &[b'o'; 32 * 1024]);
        app.write(&wire).await;
        let stdin = app.read_stdin().await;
        app.write(&answer(b"")).await;
        stdin.len()
    });
    let body = Full::new(Bytes::from(vec![b'i'; 64 * 1024]));
    let exchange = Exchange::new(0);
    let response = within(send(client, request(body, 64 * 1024), &exchange, None)).await;
    let (body, end) = drain(response.unwrap().into_body()).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(body.len(), 64 * 1024);
    assert_eq!(within(app).await.unwrap(), 64 * 1024);
    assert!(exchange.request_written());
}

#[tokio::test]
async fn stderr_is_captured_before_the_head_and_after_the_body() {
    let (client, server) = duplex(64 * 1024);
    let (go_on, wait) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stderr(&mut wire, b"PHP message: PHP Warning:  early\n");
        stdout(&mut wire, b"Content-Type: text/html\r\n\r\n<p>");
        app.write(&wire).await;
        wait.await.ok();
        let mut wire = BytesMut::new();
        stderr(&mut wire, b"PHP message: PHP Notice:  late\n");
        wire.extend_from_slice(&answer(b"</p>"));
        app.write(&wire).await;
    });
    let exchange = Exchange::new(4096);
    let response = within(send(client, no_body(), &exchange, None))
        .await
        .unwrap();
    let in_extensions = response.extensions().get::<StderrLog>().unwrap().clone();
    assert_eq!(in_extensions.text(), "PHP message: PHP Warning:  early");
    go_on.send(()).unwrap();
    let (body, end) = drain(response.into_body()).await;
    assert_eq!((body.as_slice(), end.is_ok()), (&b"<p></p>"[..], true));
    let expected = "PHP message: PHP Warning:  early\nPHP message: PHP Notice:  late";
    assert_eq!(exchange.stderr().text(), expected);
    assert_eq!(in_extensions.text(), expected, "the same shared log");
}

#[test]
fn stderr_log_is_bounded_with_a_marker() {
    let log = StderrLog::new(10);
    assert!(log.is_empty());
    log.push(b"0123456");
    log.push(b"789abcdef");
    assert_eq!(log.text(), "0123456789 [stderr truncated: 6 bytes dropped]");
}

#[tokio::test]
async fn keep_conn_hands_the_stream_back_for_the_next_request() {
    let (client, server) = duplex(64 * 1024);
    let app = tokio::spawn(async move {
        let mut app = App::new(server);
        let mut flags = Vec::new();
        for answer_text in [&b"\r\nfirst"[..], b"\r\nsecond"] {
            flags.push(app.read_head().await.flags);
            app.read_stdin().await;
            app.write(&answer(answer_text)).await;
        }
        flags
    });
    let (reuse, reused) = oneshot::channel();
    let response = within(send(client, no_body(), &Exchange::new(0), Some(reuse))).await;
    let (body, end) = drain(response.unwrap().into_body()).await;
    assert_eq!((body.as_slice(), end.is_ok()), (&b"first"[..], true));
    let stream = within(reused).await.expect("clean end returns the stream");
    let response = within(send(stream, no_body(), &Exchange::new(0), None)).await;
    let (body, _) = drain(response.unwrap().into_body()).await;
    assert_eq!(body, b"second");
    let flags = app.await.unwrap();
    assert_eq!(flags, vec![FCGI_KEEP_CONN, 0]);
}

#[tokio::test]
async fn stream_is_closed_at_end_request_before_the_body_is_read() {
    // PHP-FPM pins the worker until we close: the close must not wait for a slow client.
    let (client, server) = duplex(64 * 1024);
    let app = tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.read_stdin().await;
        app.write(&answer(b"Content-Type: text/plain\r\n\r\nunread body"))
            .await;
        let mut rest = Vec::new();
        app.io.read_to_end(&mut rest).await.map(|_| rest.len())
    });
    let response = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap();
    assert_eq!(
        within(app).await.unwrap().unwrap(),
        0,
        "EOF, nothing more sent"
    );
    let body = response.into_body();
    assert_eq!(body.size_hint().exact(), Some(11));
    let (data, end) = drain(body).await;
    assert_eq!((data.as_slice(), end.is_ok()), (&b"unread body"[..], true));
}
