//! Every way a FastCGI exchange can fail, each checked for the error variant the proxy
//! classifies and for its message.

use std::io;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::app::*;
use crate::fastcgi::client::{send, FastCgiError, Phase};
use crate::fastcgi::exchange::Exchange;
use crate::fastcgi::record::*;

#[tokio::test]
async fn eof_before_end_request_is_truncated() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stdout(&mut wire, b"Content-Type: text/plain\r\n\r\npartial");
        app.write(&wire).await;
        // Dropping the stream here is a worker killed mid-output.
    });
    let exchange = Exchange::new(4096);
    let response = within(send(client, no_body(), &exchange, None))
        .await
        .unwrap();
    let (body, end) = drain(response.into_body()).await;
    assert_eq!(body, b"partial");
    assert!(matches!(end, Err(FastCgiError::Truncated)), "{end:?}");
}

#[tokio::test]
async fn eof_after_the_head_was_returned_is_truncated() {
    let (client, server) = duplex(64 * 1024);
    let (go_on, wait) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stdout(&mut wire, b"Content-Type: text/plain\r\n\r\nfirst ");
        app.write(&wire).await;
        wait.await.ok();
        let mut wire = BytesMut::new();
        stdout(&mut wire, b"second");
        app.write(&wire).await;
    });
    let response = within(send(client, no_body(), &Exchange::new(0), None)).await;
    let mut body = response.unwrap().into_body();
    let first = within(body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "first ");
    go_on.send(()).unwrap();
    let (rest, end) = drain(body).await;
    assert_eq!(rest, b"second");
    assert!(matches!(end, Err(FastCgiError::Truncated)), "{end:?}");
}

#[tokio::test]
async fn eof_before_head_is_closed_before_head() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        App::new(server).read_head().await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, FastCgiError::ClosedBeforeHead { bytes_received: 0 }),
        "{error:?}"
    );

    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stdout(&mut wire, b"Content-Type: text/ht");
        app.write(&wire).await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, FastCgiError::ClosedBeforeHead { bytes_received: 32 }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "connection closed before a complete response head (32 bytes received)"
    );
}

#[tokio::test]
async fn overloaded_end_request_is_rejected() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        end_request(&mut wire, 0, FCGI_OVERLOADED);
        app.write(&wire).await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, FastCgiError::Rejected { protocol_status: 2 }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "application rejected the request: FCGI_OVERLOADED (protocol status 2)"
    );
}

#[tokio::test]
async fn end_request_without_a_head_is_ended_before_head() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.write(&answer(b"X-Only: header")).await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    let expected = FastCgiError::EndedBeforeHead {
        app_status: 0,
        stdout_bytes: 14,
    };
    assert_eq!(error.to_string(), expected.to_string());
}

#[tokio::test]
async fn http_server_on_the_port_is_reported_as_http() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut server = server;
        let mut request = [0u8; 256];
        let _ = server.read(&mut request).await;
        let _ = server.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        FastCgiError::Record(RecordError::BadVersion(72))
    ));
    assert_eq!(
        error.to_string(),
        "this port speaks HTTP, not FastCGI (version byte 72 = 'H')"
    );
}

#[tokio::test]
async fn head_over_the_limit_is_head_too_large() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        let mut wire = BytesMut::new();
        stdout(
            &mut wire,
            format!("X-Big: {}\r\n\r\n", "b".repeat(5000)).as_bytes(),
        );
        app.write(&wire).await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, FastCgiError::HeadTooLarge { limit: 4096 }),
        "{error:?}"
    );
}

#[tokio::test]
async fn invalid_cgi_head_is_a_cgi_error() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.write(&answer(b"HTTP/1.1 200 OK\r\n\r\n")).await;
    });
    let error = within(send(client, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(matches!(error, FastCgiError::Cgi(_)), "{error:?}");
}

#[tokio::test]
async fn write_failure_before_the_head_is_reported_as_writing() {
    let (client, server) = duplex(1024);
    tokio::spawn(async move {
        App::new(server).read_head().await;
    });
    let body = Full::new(Bytes::from(vec![b'u'; 1 << 20]));
    let exchange = Exchange::new(0);
    let error = within(send(client, request(body, 1 << 20), &exchange, None))
        .await
        .unwrap_err();
    let FastCgiError::Io { phase, source, .. } = &error else {
        panic!("expected an Io error, got {error:?}");
    };
    assert_eq!(*phase, Phase::WritingRequest);
    assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(exchange.write_error(), Some(io::ErrorKind::BrokenPipe));
    assert!(!exchange.request_written() && exchange.bytes_sent() > 0);
}

#[tokio::test]
async fn body_shorter_than_content_length_is_an_error() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.read_stdin().await;
    });
    let body = Full::new(Bytes::from_static(b"short"));
    let error = within(send(client, request(body, 10), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "request body of 5 bytes does not match CONTENT_LENGTH 10"
    );
}

#[tokio::test]
async fn failing_client_body_is_a_client_body_error() {
    let (client, server) = duplex(64 * 1024);
    tokio::spawn(async move {
        let mut app = App::new(server);
        app.read_head().await;
        app.read_stdin().await;
    });
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "client went away",
        )),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let error = within(send(client, request(body, 10), &Exchange::new(0), None))
        .await
        .unwrap_err();
    assert!(matches!(error, FastCgiError::ClientBody(_)), "{error:?}");
    assert_eq!(error.to_string(), "request body failed: client went away");
}

#[tokio::test]
async fn reset_mid_body_keeps_the_io_error() {
    let mut wire = BytesMut::new();
    stdout(&mut wire, b"Content-Type: text/plain\r\n\r\nsome");
    let io = ScriptedIo {
        reads: vec![
            Ok(wire.to_vec()),
            Err(io::Error::from(io::ErrorKind::ConnectionReset)),
        ],
    };
    let response = within(send(io, no_body(), &Exchange::new(0), None))
        .await
        .unwrap();
    let (body, end) = drain(response.into_body()).await;
    assert_eq!(body, b"some");
    let Err(FastCgiError::Io {
        phase,
        source,
        bytes_received,
    }) = end
    else {
        panic!("expected an Io error, got {end:?}");
    };
    assert_eq!(phase, Phase::ReadingBody);
    assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(bytes_received, wire.len() as u64);
}

#[tokio::test]
async fn reset_before_the_head_is_an_io_error_while_reading_the_head() {
    let io = ScriptedIo {
        reads: vec![Err(io::Error::from(io::ErrorKind::ConnectionReset))],
    };
    let error = within(send(io, no_body(), &Exchange::new(0), None))
        .await
        .unwrap_err();
    let FastCgiError::Io { phase, source, .. } = &error else {
        panic!("expected an Io error, got {error:?}");
    };
    assert_eq!(
        (*phase, source.kind()),
        (Phase::ReadingHead, io::ErrorKind::ConnectionReset)
    );
}
