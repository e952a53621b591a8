//! Each fault path checked with a raw-socket client against a real faults server on loopback,
//! with short real timeouts; then start-up, shutdown and `describe()`. The client helpers are
//! in `testing.rs`; connect-target tests in `targets.rs`, TLS tests in `tls.rs`.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout, Instant};

use super::testing::{assert_silent, exchange, faults, more, read_response, read_until_end, STEP};
use super::Faults;

async fn connect(f: &Faults) -> TcpStream {
    TcpStream::connect(f.http).await.expect("connect to faults")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: faults\r\n\r\n")
}

/// Splits raw response bytes into the head (as text) and what follows it.
fn split_head(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |i| i + 4);
    (
        String::from_utf8_lossy(&bytes[..end]).into_owned(),
        &bytes[end..],
    )
}

/// The body of `/truncate` and friends: byte i is `a + i % 26`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::test]
async fn ok_answers_three_requests_on_one_connection() {
    let f = faults().await;
    let mut s = connect(&f).await;
    for _ in 0..3 {
        let r = exchange(&mut s, &get("/ok")).await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("content-length"), Some("3"));
    }
    assert_eq!(f.connections_accepted(), 1);
    assert_eq!(f.hits("/ok"), 3);
}

#[tokio::test]
async fn ok_with_size_streams_that_many_pattern_bytes() {
    let f = faults().await;
    let r = exchange(&mut connect(&f).await, &get("/ok?size=300000")).await;
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body == pattern(300_000), "body is the a..z pattern");
}

#[tokio::test]
async fn pipelined_requests_with_bodies_are_framed_correctly() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let requests = "POST /ok HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
                    POST /status/201 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
                    GET /ok HTTP/1.1\r\n\r\n";
    s.write_all(requests.as_bytes())
        .await
        .expect("requests written");
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            read_response(&mut s, &mut buf)
                .await
                .expect("response")
                .status,
        );
    }
    assert_eq!(statuses, [200, 201, 200]);
}

#[tokio::test]
async fn head_request_gets_a_head_without_body_on_a_kept_connection() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let requests = "HEAD /ok?size=100 HTTP/1.1\r\n\r\n\
                    GET /status/418 HTTP/1.1\r\nConnection: close\r\n\r\n";
    s.write_all(requests.as_bytes())
        .await
        .expect("requests written");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "{end:?}");
    let (first, rest) = split_head(&bytes);
    let (second, body) = split_head(rest);
    assert!(first.contains("Content-Length: 100\r\n"), "{first}");
    assert!(second.starts_with("HTTP/1.1 418 "), "{second}");
    assert_eq!(body, b"status 418\n");
}

#[tokio::test]
async fn echo_returns_body_method_and_path() {
    let f = faults().await;
    let req = "PUT /echo?x=1 HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world";
    let r = exchange(&mut connect(&f).await, req).await;
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("x-echo-method"), Some("PUT"));
    assert_eq!(r.header("x-echo-path"), Some("/echo?x=1"));
    assert_eq!(r.header("content-length"), Some("11"));
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_read() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let head = "POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("head sent");
    let mut buf = Vec::new();
    let interim = read_response(&mut s, &mut buf)
        .await
        .expect("interim response");
    assert_eq!(interim.status, 100);
    s.write_all(b"hi").await.expect("body sent");
    assert_eq!(
        read_response(&mut s, &mut buf).await.expect("final").body,
        b"hi"
    );
}

#[tokio::test]
async fn echo_of_chunked_request_is_chunked() {
    let f = faults().await;
    let req = "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = exchange(&mut connect(&f).await, req).await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello world");
}

#[tokio::test]
async fn echo_with_trailers_sends_the_announced_trailer() {
    let f = faults().await;
    let req = "POST /echo?trailers=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    let r = exchange(&mut connect(&f).await, req).await;
    assert_eq!(r.header("trailer"), Some("X-Trailer"));
    assert_eq!(
        (r.body.as_slice(), r.trailers.as_str()),
        (&b"hi"[..], "X-Trailer: done")
    );
}

#[tokio::test]
async fn headers_returns_the_request_head_as_received() {
    let f = faults().await;
    let req = "GET /headers HTTP/1.1\r\nHost: a\r\nX-Odd-Case:  v \r\n\r\n";
    let r = exchange(&mut connect(&f).await, req).await;
    assert_eq!(String::from_utf8_lossy(&r.body), req);
}

#[tokio::test]
async fn close_ends_with_fin_before_any_byte() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(b"POST /close HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(bytes.is_empty() && end.is_ok(), "{bytes:?} {end:?}");
}

#[tokio::test]
async fn reset_ends_with_rst_before_any_byte() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/reset").as_bytes()).await.expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(bytes.is_empty(), "{bytes:?}");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}

/// Sends `path` and expects exactly `expected` followed by a clean EOF.
async fn assert_bytes_then_fin(path: &str, expected: &[u8]) {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get(path).as_bytes()).await.expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(expected)
    );
}

#[tokio::test]
async fn partial_head_sends_half_a_head_then_fin() {
    assert_bytes_then_fin("/partial-head", b"HTTP/1.1 200 OK\r\nContent-Type: te").await;
}

#[tokio::test]
async fn garbage_sends_an_ssh_banner_then_fin() {
    let expected = b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01\x14\x0a\x14\xde\xad\xbe\xef\xff\xfe";
    assert_bytes_then_fin("/garbage", expected).await;
}

#[tokio::test]
async fn huge_header_sends_a_128_kib_header_then_fin() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/huge-header").as_bytes())
        .await
        .expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "{end:?}");
    let text = String::from_utf8_lossy(&bytes);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Huge: "))
        .unwrap_or("");
    assert_eq!(value.len(), 128 * 1024);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"));
}

#[tokio::test]
async fn hang_never_answers_and_keeps_the_socket_open() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/hang").as_bytes()).await.expect("sent");
    assert_silent(&mut s, Duration::from_millis(400)).await;
    assert_eq!(f.hits("/hang"), 1);
}

#[tokio::test]
async fn slow_head_answers_after_the_delay_and_keeps_the_connection() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let started = Instant::now();
    let r = exchange(&mut s, &get("/slow-head?ms=300")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(exchange(&mut s, &get("/ok")).await.status, 200);
}

#[tokio::test]
async fn truncate_sends_100_of_1000_bytes_then_fin() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/truncate").as_bytes())
        .await
        .expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "{end:?}");
    let (head, body) = split_head(&bytes);
    assert!(head.contains("Content-Length: 1000\r\n"), "{head}");
    assert_eq!(body, pattern(100));
}

#[tokio::test]
async fn reset_body_sends_1000_bytes_then_rst() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/reset-body").as_bytes())
        .await
        .expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    let (head, body) = split_head(&bytes);
    assert!(head.contains("Content-Length: 100000\r\n"), "{head}");
    assert_eq!(body, pattern(1000));
}

#[tokio::test]
async fn stall_body_sends_100_bytes_then_silence() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/stall-body").as_bytes())
        .await
        .expect("sent");
    let mut buf = Vec::new();
    while !buf.ends_with(&pattern(100)) {
        more(&mut s, &mut buf).await.expect("head and 100 bytes");
    }
    assert!(String::from_utf8_lossy(&buf).contains("Content-Length: 1000\r\n"));
    assert_silent(&mut s, Duration::from_millis(400)).await;
}

#[tokio::test]
async fn slow_body_sends_chunks_apart_then_ends() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let started = Instant::now();
    let r = exchange(&mut s, &get("/slow-body?ms=100&chunks=3")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.body, b"chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(
        exchange(&mut s, &get("/ok")).await.status,
        200,
        "connection kept"
    );
}

#[tokio::test]
async fn status_path_sends_that_status_with_a_telltale_body() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let r = exchange(&mut s, &get("/status/502")).await;
    assert!(
        r.head.starts_with("HTTP/1.1 502 Bad Gateway\n"),
        "{}",
        r.head
    );
    assert_eq!(r.body, b"status 502\n");
    let r = exchange(&mut s, &get("/status/204")).await;
    assert_eq!((r.status, r.header("content-length")), (204, None));
    assert_eq!(exchange(&mut s, &get("/status/503")).await.status, 503);
    assert_eq!((f.hits("/status/502"), f.hits("/status/503")), (1, 1));
}

#[tokio::test]
async fn keepalive_closes_the_connection_after_the_idle_timeout() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let r = exchange(&mut s, &get("/keepalive?timeout=1")).await;
    assert_eq!(r.header("keep-alive"), Some("timeout=1"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let idle_since = Instant::now();
    let (bytes, end) = read_until_end(&mut s).await;
    let idle = idle_since.elapsed();
    assert!(bytes.is_empty() && end.is_ok(), "{bytes:?} {end:?}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(2),
        "{idle:?}"
    );
}

#[tokio::test]
async fn no_read_stalls_a_small_upload_without_answering() {
    let f = faults().await;
    // With the client's send buffer small, what stalls the upload is the faults server's
    // receive buffer: ~60 KiB fit (128 KiB would pass with Linux's default 128 KiB).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(16 * 1024).expect("SO_SNDBUF");
    let mut s = socket.connect(f.http).await.expect("connect to faults");
    let body = vec![b'u'; 128 * 1024];
    let head = format!(
        "POST /no-read HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head sent");
    let upload = timeout(Duration::from_millis(500), s.write_all(&body)).await;
    assert!(
        upload.is_err(),
        "a 128 KiB upload must stall, got {upload:?}"
    );
    assert_silent(&mut s, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn reset_read_resets_without_reading_the_body() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let head = "POST /reset-read HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("head sent");
    // The body may or may not get out before the RST; either way the read sees the reset.
    let _ = s.write_all(&[b'u'; 64 * 1024]).await;
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(bytes.is_empty(), "{bytes:?}");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn unknown_path_is_404_listing_the_paths() {
    let f = faults().await;
    let r = exchange(&mut connect(&f).await, &get("/nope?x")).await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 404);
    assert!(
        body.starts_with("no such fault: /nope\n") && body.contains("/stall-body"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_parameter_is_400() {
    let f = faults().await;
    let mut s = connect(&f).await;
    assert_eq!(
        exchange(&mut s, &get("/slow-head?ms=soon")).await.status,
        400
    );
    assert_eq!(exchange(&mut s, &get("/status/99")).await.status, 400);
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_close() {
    let f = faults().await;
    let mut s = connect(&f).await;
    let head = format!(
        "GET /ok HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    s.write_all(head.as_bytes()).await.expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "{end:?}");
    assert!(
        bytes.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn non_http_request_gets_400_and_close() {
    let f = faults().await;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"GET / SPDY/3\r\n\r\n",
    ] {
        let mut s = connect(&f).await;
        s.write_all(junk).await.expect("sent");
        let (bytes, end) = read_until_end(&mut s).await;
        assert!(end.is_ok(), "{end:?}");
        assert!(
            bytes.starts_with(b"HTTP/1.1 400 "),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_eq!(
        exchange(&mut connect(&f).await, &get("/ok")).await.status,
        200,
        "still serving"
    );
}

/// Valid requests that mutations start from: bodies of both framings, trailers, pipelining.
const SEEDS: &[&str] = &[
    "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /status/201 HTTP/1.1\r\n\r\n",
    "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "POST /echo?trailers=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    "PUT /headers HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    "HEAD /ok?size=10 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
];

#[tokio::test]
async fn mutated_requests_never_panic_a_connection() {
    // The connection is served in this task, not spawned: a panic fails the test.
    let stats = super::Stats::default();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below as u64) as usize
    };
    for round in 0..400 {
        let mut input = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
        for _ in 0..1 + random(4) {
            let at = random(input.len() + 1);
            match random(5) {
                0 => input.insert(at, b"\r\n:; 0aZ\x00\xff"[random(10)]),
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => input.truncate(at),
                3 if at < input.len() => input[at] ^= 1 << random(8),
                _ => input
                    .splice(at..at, b"\r\nContent-Length: 9".iter().copied())
                    .for_each(drop),
            }
        }
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        client.write_all(&input).await.expect("input fits the pipe");
        drop(client);
        let _ = timeout(
            Duration::from_millis(300),
            super::paths::serve(server, &stats),
        )
        .await;
    }
    let served: u64 = stats
        .hits
        .lock()
        .map(|hits| hits.values().sum())
        .unwrap_or(0);
    assert!(
        served > 50,
        "many mutations still reach a fault, got {served}"
    );
}

#[tokio::test]
async fn unix_listener_serves_the_same_paths() {
    let f = faults().await;
    let mut s = UnixStream::connect(&f.unix)
        .await
        .expect("connect to the unix listener");
    assert_eq!(
        exchange(&mut s, &get("/status/503")).await.body,
        b"status 503\n"
    );
    assert_eq!(exchange(&mut s, &get("/ok")).await.status, 200);
    s.write_all(get("/truncate").as_bytes())
        .await
        .expect("sent");
    let (bytes, end) = read_until_end(&mut s).await;
    assert!(end.is_ok() && bytes.ends_with(&pattern(100)), "{end:?}");
}

#[tokio::test]
async fn shutdown_closes_held_connections_and_removes_files() {
    let f = faults().await;
    let mut s = connect(&f).await;
    s.write_all(get("/hang").as_bytes()).await.expect("sent");
    // Wait until the request is read: closing a socket with unread data would send an RST.
    while f.hits("/hang") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ca_file = f.tls.as_ref().map(|t| t.ca_file.clone()).expect("tls on");
    let (unix, dir) = (f.unix.clone(), ca_file.parent().map(|d| d.to_path_buf()));
    assert!(ca_file.exists() && unix.exists());
    timeout(STEP, f.shutdown())
        .await
        .expect("shutdown finishes");
    let (_, end) = read_until_end(&mut s).await;
    assert!(end.is_ok(), "held connection closed: {end:?}");
    assert!(!ca_file.exists() && !unix.exists());
    assert!(
        dir.is_some_and(|d| !d.exists()),
        "the created directory is removed"
    );
}

#[tokio::test]
async fn drop_stops_serving_and_removes_files() {
    let f = faults().await;
    let (addr, unix) = (f.http, f.unix.clone());
    drop(f);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!unix.exists());
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn describe_names_every_target_and_path() {
    let f = faults().await;
    let text = f.describe();
    for needle in [
        f.http.to_string(),
        f.refused.to_string(),
        f.backlog_full.to_string(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from:\n{text}");
    }
    for (path, _) in super::paths::PATHS {
        assert!(text.contains(path), "{path} missing");
    }
    assert!(text.contains(&f.backlog_full_unix.display().to_string()));
    assert!(text.contains("expired.localhost"));
}

#[test]
fn server_and_start_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<F: Send>(_: F) {}
    send_sync::<Faults>();
    send(super::start(super::FaultsOptions::loopback()));
    send(super::run(super::FaultsOptions::loopback()));
}
