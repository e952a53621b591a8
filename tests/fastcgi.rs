//! causeway in front of a real PHP-FPM (`protocol = "fastcgi"`), issue 5: scripts run with the
//! right CGI environment, bodies arrive intact, paths that could run the wrong file never reach
//! PHP, PHP's own answers (404, 500) pass through with `cause` null, and every PHP-FPM failure
//! (slow script, killed worker, stopped master, full backlog) gets its cause, its status, a WARN
//! line and the access-log cause.
//!
//! Needs `php-fpm8.2` (`apt-get install -y php8.2-fpm`); without it every test fails saying so.

mod common;
#[path = "common/php.rs"]
mod php;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway::log::AccessLog;
use causeway::server::Running;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use php::{PhpFpm, Pool};
use tokio::net::TcpStream;

/// A proxy in front of one PHP-FPM pool.
struct Php {
    fpm: PhpFpm,
    _proxy: Running,
    addr: SocketAddr,
    access: AccessLog,
}

/// The `[upstreams.php]` + route config for `server`, with `fastcgi_extra` appended inside the
/// `fastcgi = { ... }` table and `extra` lines added to the upstream.
fn config(server: &str, root: &std::path::Path, fastcgi_extra: &str, extra: &str) -> String {
    format!(
        "[upstreams.php]\nservers = [\"{server}\"]\nprotocol = \"fastcgi\"\n\
         fastcgi = {{ root = \"{}\", index = \"index.php\"{fastcgi_extra} }}\n{extra}\n\
         [[routes]]\npath = \"/\"\nupstream = \"php\"\n",
        root.display()
    )
}

/// Starts PHP-FPM with `pool`, then a proxy to it.
async fn start_php(pool: Pool, fastcgi_extra: &str, extra: &str) -> Php {
    start_php_with(pool, "", fastcgi_extra, extra).await
}

/// Like [`start_php`] with extra top-level sections (`[errors]` ...) before the upstream.
async fn start_php_with(pool: Pool, head: &str, fastcgi_extra: &str, extra: &str) -> Php {
    let fpm = PhpFpm::start(pool);
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{head}\n{}",
        config(&fpm.server(), &fpm.www, fastcgi_extra, extra)
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.tcp_addr().expect("proxy listens on TCP");
    let access = proxy.access.clone();
    Php {
        fpm,
        _proxy: proxy,
        addr,
        access,
    }
}

/// Asserts a clean relayed answer: status, and an access-log line with `cause` null and the
/// same `upstream_status`. Returns the line.
async fn assert_relayed(access: &AccessLog, reply: &Reply, status: u16) -> serde_json::Value {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "status; body: {:?}",
        reply.body
    );
    assert!(reply.body.is_ok(), "complete body: {:?}", reply.body);
    let line = access_line(access, &reply.request_id()).await;
    assert!(line["cause"].is_null(), "no cause: {line}");
    assert_eq!(line["status"], status, "{line}");
    assert_eq!(line["upstream_status"], status, "relayed: {line}");
    assert_eq!(line["complete"], true, "{line}");
    line
}

/// Asserts what the client and the operator see for a failure causeway generated: status,
/// JSON `cause`, Proxy-Status naming it, the access-log cause (upstream_status null) and a
/// WARN line. Returns the access-log line.
async fn assert_failure(
    access: &AccessLog,
    reply: &Reply,
    status: u16,
    cause: &str,
) -> serde_json::Value {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "status for {cause}: {:?}",
        reply.body
    );
    let body = reply.json();
    assert_eq!(body["cause"], cause, "body: {body}");
    assert_eq!(body["status"], status, "body: {body}");
    let proxy_status = reply.header("proxy-status").expect("Proxy-Status header");
    assert!(
        proxy_status.contains(&format!("details=\"{cause}")),
        "Proxy-Status for {cause}: {proxy_status}"
    );
    let id = reply.request_id();
    let line = access_line(access, &id).await;
    assert_eq!(line["cause"], cause, "access log: {line}");
    assert_eq!(line["status"], status, "{line}");
    assert!(
        line["upstream_status"].is_null(),
        "generated, not relayed: {line}"
    );
    assert_warned(&id, cause);
    line
}

/// A GET with extra headers.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(path)
        .header("host", "test.local")
        .header("accept", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(
        addr,
        builder.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

/// `data` as a body of unknown length (hyper sends it chunked), in pieces of `piece` bytes.
fn chunked(
    data: &[u8],
    piece: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(piece)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(chunks))
}

/// Bytes 0..=255 over and over, scrambled a little, so a shifted or re-encoded byte shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The harness itself, without causeway's proxy: the codec client straight to PHP-FPM.

#[tokio::test]
async fn harness_php_fpm_answers_the_codec_client_directly() {
    use causeway::fastcgi::{self, Exchange, FastCgiRequest, Params};
    let fpm = PhpFpm::start(Pool::default());
    let io = tokio::net::UnixStream::connect(fpm.socket())
        .await
        .expect("connect to PHP-FPM");
    let mut params = Params::default();
    let script = fpm.www.join("hello.php");
    params.push("SCRIPT_FILENAME", script.display().to_string());
    params.push("SCRIPT_NAME", "/hello.php");
    params.push("REQUEST_METHOD", "GET");
    params.push("QUERY_STRING", "");
    params.push("REQUEST_URI", "/hello.php");
    let request = FastCgiRequest {
        params,
        body: http_body_util::Empty::<Bytes>::new(),
        content_length: 0,
        max_head: 64 * 1024,
    };
    let exchange = Exchange::new(4096);
    let response = fastcgi::send(io, request, &exchange, None)
        .await
        .unwrap_or_else(|e| panic!("FastCGI exchange with PHP-FPM: {e}\n{}", fpm.logs()));
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body ends with END_REQUEST")
        .to_bytes();
    assert_eq!(&body[..], b"hello from php");
    assert_eq!(exchange.app_status(), Some(0), "END_REQUEST arrived");
}

// ---------------------------------------------------------------------------------------------
// 1. Scripts run, bodies arrive intact, the CGI environment is right.

#[tokio::test]
async fn hello_php_is_served() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let reply = get(p.addr, "/hello.php").await;
    assert_eq!(reply.text(), "hello from php");
    let line = assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(line["upstream"], "php");
    assert_eq!(line["server"], p.fpm.server(), "{line}");
    assert!(line["connect_ms"].is_number(), "{line}");
    assert!(line["header_ms"].is_number(), "{line}");
    // Percent-encoded script names are decoded once.
    assert_eq!(get(p.addr, "/h%65llo.php").await.text(), "hello from php");
    // A directory runs `index`.
    let reply = get(p.addr, "/?x=1").await;
    assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(reply.text(), "front controller: /?x=1");
}

#[tokio::test]
async fn one_mebibyte_post_comes_back_byte_identical() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let body = pattern(1024 * 1024);
    let request = Request::post("/echo.php")
        .header("host", "test.local")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let reply = send(p.addr, request).await;
    let line = assert_relayed(&p.access, &reply, 200).await;
    let echoed = reply.body.as_ref().expect("complete body");
    assert_eq!(echoed.len(), body.len(), "echoed length");
    assert!(echoed[..] == body[..], "echoed bytes differ");
    assert_eq!(line["bytes_in"], body.len(), "{line}");
    assert_eq!(line["bytes_out"], body.len(), "{line}");
}

#[tokio::test]
async fn chunked_post_of_unknown_length_is_spooled_and_echoed() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let body = pattern(300 * 1024 + 7);
    let request = Request::post("/echo.php")
        .header("host", "test.local")
        .header("content-type", "application/octet-stream")
        .body(chunked(&body, 64 * 1024 + 3))
        .expect("request");
    let reply = send(p.addr, request).await;
    let line = assert_relayed(&p.access, &reply, 200).await;
    let echoed = reply.body.as_ref().expect("complete body");
    assert_eq!(echoed.len(), body.len(), "echoed length");
    assert!(echoed[..] == body[..], "echoed bytes differ");
    assert_eq!(line["bytes_in"], body.len(), "{line}");

    // What PHP saw: a CONTENT_LENGTH, and no Transfer-Encoding.
    let request = Request::post("/info.php")
        .header("host", "test.local")
        .header("content-type", "application/octet-stream")
        .body(chunked(&body[..1000], 300))
        .expect("request");
    let reply = send(p.addr, request).await;
    assert_relayed(&p.access, &reply, 200).await;
    let info = reply.json();
    assert_eq!(info["CONTENT_LENGTH"], "1000", "{info}");
    assert!(info["HTTP_TRANSFER_ENCODING"].is_null(), "{info}");
}

#[tokio::test]
async fn large_post_to_a_script_that_never_reads_it_is_answered() {
    // PHP reads (and drops) an unread body at the end of the request; the answer may come
    // before the upload is done, and both directions must finish.
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let body = pattern(2 * 1024 * 1024);
    let reply = with_body(p.addr, "POST", "/hello.php", body.clone()).await;
    assert_eq!(reply.text(), "hello from php");
    assert_relayed(&p.access, &reply, 200).await;
    let reply = with_body(p.addr, "POST", "/fatal.php", body).await;
    assert_relayed(&p.access, &reply, 500).await;
}

#[tokio::test]
async fn head_request_gets_the_head_only() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let request = Request::head("/hello.php")
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(p.addr, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body.as_ref().map(|b| b.len()),
        Ok(0),
        "{:?}",
        reply.body
    );
    let line = access_line(&p.access, &reply.request_id()).await;
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");
    // The connection to PHP-FPM was not left in a bad state: the next request works.
    assert_eq!(get(p.addr, "/hello.php").await.text(), "hello from php");
}

#[tokio::test]
async fn chunked_post_over_max_spool_body_is_411_without_php() {
    let p = start_php(
        Pool::default(),
        ", try_files = true, max_spool_body = \"64KiB\"",
        "",
    )
    .await;
    let request = Request::post("/echo.php")
        .header("host", "test.local")
        .body(chunked(&pattern(100 * 1024), 16 * 1024))
        .expect("request");
    let reply = send(p.addr, request).await;
    assert_eq!(
        reply.status,
        StatusCode::LENGTH_REQUIRED,
        "{:?}",
        reply.body
    );
    let line = access_line(&p.access, &reply.request_id()).await;
    assert_eq!(line["status"], 411, "{line}");
    assert!(line["upstream_status"].is_null(), "PHP never asked: {line}");
    // With a Content-Length the same body goes through.
    let reply = with_body(p.addr, "POST", "/echo.php", pattern(100 * 1024)).await;
    assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(reply.body.as_ref().map(|b| b.len()), Ok(100 * 1024));
}

#[tokio::test]
async fn cgi_environment_reaches_php() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let reply = get_with(
        p.addr,
        "/info.php/extra/path?a=1&b=two%20words",
        &[
            ("x-custom", "custom value"),
            ("cookie", "c1=v1; c2=v2"),
            ("proxy", "http://evil.example:8080"),
        ],
    )
    .await;
    assert_relayed(&p.access, &reply, 200).await;
    let info = reply.json();
    let www = p.fpm.www.display().to_string();
    assert_eq!(info["SCRIPT_FILENAME"], format!("{www}/info.php"), "{info}");
    assert_eq!(info["SCRIPT_NAME"], "/info.php", "{info}");
    assert_eq!(info["PATH_INFO"], "/extra/path", "{info}");
    assert_eq!(info["QUERY_STRING"], "a=1&b=two%20words", "{info}");
    assert_eq!(info["REQUEST_METHOD"], "GET", "{info}");
    assert_eq!(
        info["REQUEST_URI"], "/info.php/extra/path?a=1&b=two%20words",
        "{info}"
    );
    assert_eq!(info["HTTP_HOST"], "test.local", "{info}");
    assert_eq!(info["HTTP_X_CUSTOM"], "custom value", "{info}");
    assert_eq!(info["HTTP_COOKIE"], "c1=v1; c2=v2", "{info}");
    assert_eq!(info["REMOTE_ADDR"], "127.0.0.1", "{info}");
    assert_eq!(info["SERVER_PROTOCOL"], "HTTP/1.1", "{info}");
    assert!(info["HTTPS"].is_null(), "plain HTTP client: {info}");
    assert!(
        info["HTTP_PROXY"].is_null(),
        "a client Proxy header must never become HTTP_PROXY (httpoxy): {info}"
    );
    assert_eq!(
        info["HTTP_X_REQUEST_ID"],
        reply.request_id(),
        "the request id reaches PHP: {info}"
    );
    assert_eq!(info["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{info}");
    assert_eq!(info["HTTP_X_FORWARDED_PROTO"], "http", "{info}");
    assert_eq!(info["HTTP_VIA"], "1.1 causeway", "{info}");
    assert_eq!(info["_GET"]["a"], "1", "{info}");
    assert_eq!(info["_GET"]["b"], "two words", "{info}");
    assert_eq!(info["_COOKIE"]["c1"], "v1", "{info}");
    assert_eq!(info["_COOKIE"]["c2"], "v2", "{info}");

    // A POST: CONTENT_TYPE and CONTENT_LENGTH.
    let request = Request::post("/info.php?x=y")
        .header("host", "test.local")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"field=value")))
        .expect("request");
    let reply = send(p.addr, request).await;
    assert_relayed(&p.access, &reply, 200).await;
    let info = reply.json();
    assert_eq!(info["REQUEST_METHOD"], "POST", "{info}");
    assert_eq!(
        info["CONTENT_TYPE"], "application/x-www-form-urlencoded",
        "{info}"
    );
    assert_eq!(info["CONTENT_LENGTH"], "11", "{info}");
    assert!(info["PATH_INFO"].is_null(), "no path info: {info}");
    assert_eq!(info["QUERY_STRING"], "x=y", "{info}");
}

/// Sends `request` over a new HTTP/2 (prior knowledge) connection.
async fn send_h2<B>(addr: SocketAddr, request: Request<B>) -> (StatusCode, Bytes)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await.expect("h2 response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn http2_post_without_content_length_reaches_php() {
    // h2 has no chunked encoding: a body may come with no Content-Length, delimited by
    // END_STREAM. causeway must spool it like a chunked one, never drop it.
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let body = pattern(10_000);
    let request = Request::post("http://php.test/echo.php")
        .header("content-type", "application/octet-stream")
        .body(chunked(&body, 4096))
        .expect("request");
    let (status, echoed) = send_h2(p.addr, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed.len(), body.len(), "echoed length over h2");
    assert!(echoed[..] == body[..], "echoed bytes differ");
}

#[tokio::test]
async fn server_protocol_is_the_clients() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let request = Request::get("http://php.test/info.php")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let (status, body) = send_h2(p.addr, request).await;
    assert_eq!(status, StatusCode::OK);
    let info: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(info["HTTP_HOST"], "php.test", "h2 :authority: {info}");
    assert_eq!(
        info["SERVER_PROTOCOL"], "HTTP/2.0",
        "SERVER_PROTOCOL names the client's protocol, as nginx's $server_protocol: {info}"
    );
    let request = Request::get("/info.php")
        .version(http::Version::HTTP_10)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let info = send(p.addr, request).await.json();
    assert_eq!(info["SERVER_PROTOCOL"], "HTTP/1.0", "{info}");
}

#[tokio::test]
async fn configured_params_reach_php() {
    let p = start_php(
        Pool::default(),
        ", try_files = true, params = { APP_ENV = \"test\" }",
        "",
    )
    .await;
    let reply = get(p.addr, "/info.php").await;
    assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(reply.json()["APP_ENV"], "test");
}

#[tokio::test]
async fn php_redirect_is_passed_through() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let reply = get(p.addr, "/redirect.php").await;
    assert_relayed(&p.access, &reply, 302).await;
    assert_eq!(reply.header("location").as_deref(), Some("/elsewhere"));
}

#[tokio::test]
async fn front_controller_runs_index_php_for_pretty_urls() {
    let p = start_php(
        Pool::default(),
        ", try_files = true, front_controller = true",
        "",
    )
    .await;
    let reply = get(p.addr, "/blog/2026/hello-world?page=2").await;
    assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(
        reply.text(),
        "front controller: /blog/2026/hello-world?page=2"
    );
    // An existing script still runs itself.
    let reply = get(p.addr, "/hello.php").await;
    assert_eq!(reply.text(), "hello from php");
}

#[tokio::test]
async fn oversized_php_response_head_is_header_too_large() {
    let p = start_php(
        Pool::default(),
        ", try_files = true",
        "max_response_header = \"16KiB\"\nretry = { attempts = 1 }",
    )
    .await;
    let reply = get(p.addr, "/bighead.php?n=100000").await;
    assert_failure(&p.access, &reply, 502, "header_too_large").await;
    let reply = get(p.addr, "/bighead.php?n=1000").await;
    assert_relayed(&p.access, &reply, 200).await;
    assert_eq!(reply.header("x-big").map(|v| v.len()), Some(1000));
}

// ---------------------------------------------------------------------------------------------
// 2. Missing scripts and hostile paths.

#[tokio::test]
async fn missing_script_is_404_without_contacting_php_fpm() {
    // PHP-FPM runs, but the upstream points at a socket where nothing listens: any contact
    // would be a 502 socket_not_found, so a 404 proves causeway answered alone.
    let fpm = PhpFpm::start(Pool::default());
    let missing = fpm.dir.join("nobody-listens-here.sock");
    let text = config(
        &format!("unix:{}", missing.display()),
        &fpm.www,
        ", try_files = true",
        "retry = { attempts = 1 }",
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.tcp_addr().expect("tcp");
    let reply = get(addr, "/nope.php").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
    let id = reply.request_id();
    let line = access_line(&proxy.access, &id).await;
    assert_eq!(line["status"], 404, "{line}");
    assert!(
        line["cause"].is_null(),
        "a missing script is no failure: {line}"
    );
    assert!(line["upstream_status"].is_null(), "not relayed: {line}");
    assert!(
        !error_log_lines(&id).iter().any(|l| l.contains("WARN")),
        "no WARN for a missing script: {:#?}",
        error_log_lines(&id)
    );
    // Control: an existing script does try to connect, and fails.
    let reply = get(addr, "/hello.php").await;
    assert_failure(&proxy.access, &reply, 502, "socket_not_found").await;
}

#[tokio::test]
async fn missing_script_without_try_files_is_php_fpms_own_404() {
    let p = start_php(Pool::default(), ", try_files = false", "").await;
    let reply = get(p.addr, "/nope.php").await;
    let line = assert_relayed(&p.access, &reply, 404).await;
    assert!(
        reply.text().contains("File not found."),
        "PHP-FPM's own page: {:?}",
        reply.text()
    );
    assert!(
        reply.header("proxy-status").is_none(),
        "PHP-FPM's 404 is not ours"
    );
    let stderr = line["fastcgi_stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("Primary script unknown"),
        "PHP-FPM's stderr in the access log: {line}"
    );
}

#[tokio::test]
async fn traversal_and_newline_paths_are_refused_before_php() {
    for try_files in [true, false] {
        let p = start_php(Pool::default(), &format!(", try_files = {try_files}"), "").await;
        for path in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd.php",
            "/%2E%2E/%2e%2e/etc/passwd.php",
            "/a.php%0a.php",
            "/hello.php%00.php",
            "/..%2fetc/passwd.php",
        ] {
            let reply = get(p.addr, path).await;
            let status = reply.status.as_u16();
            assert!(
                status == 400 || status == 404,
                "{path} (try_files = {try_files}) must give 400 or 404, got {status}: {:?}",
                reply.body
            );
            let body = reply.body.clone().unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&body).contains("root:"),
                "{path} leaked a file"
            );
            let line = access_line(&p.access, &reply.request_id()).await;
            assert!(
                line["upstream_status"].is_null(),
                "{path} must not reach PHP-FPM (try_files = {try_files}): {line}"
            );
        }
    }
}

#[tokio::test]
async fn uploaded_image_never_runs_as_php() {
    for try_files in [true, false] {
        let p = start_php(Pool::default(), &format!(", try_files = {try_files}"), "").await;
        for path in [
            "/uploads/evil.jpg/x.php",
            "/uploads/evil.jpg/.php",
            "/uploads/evil.jpg",
        ] {
            let reply = get(p.addr, path).await;
            let body =
                String::from_utf8_lossy(&reply.body.clone().unwrap_or_default()).into_owned();
            assert!(
                !body.contains("pwned"),
                "{path} (try_files = {try_files}) ran the upload as PHP: {} {body:?}",
                reply.status
            );
            assert_ne!(
                reply.status,
                StatusCode::OK,
                "{path} (try_files = {try_files}): {body:?}"
            );
            if try_files {
                assert_eq!(
                    reply.status,
                    StatusCode::NOT_FOUND,
                    "{path}: no such script: {body:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A PHP fatal error is PHP's answer, not a proxy failure; its message is logged.

#[tokio::test]
async fn php_fatal_error_passes_through_as_500_with_stderr_logged() {
    let p = start_php(Pool::default(), ", try_files = true", "").await;
    let reply = get(p.addr, "/fatal.php").await;
    let line = assert_relayed(&p.access, &reply, 500).await;
    assert!(
        reply.header("proxy-status").is_none(),
        "PHP's 500 is not ours"
    );
    let stderr = line["fastcgi_stderr"].as_str().unwrap_or_default();
    // What PHP-FPM really sends on FCGI_STDERR (observed with 8.2):
    // "PHP message: PHP Fatal error:  Uncaught Error: Call to undefined function ...".
    assert!(
        stderr.contains("PHP message: PHP Fatal error")
            && stderr.contains("Call to undefined function causeway_undefined_function()"),
        "access log fastcgi_stderr: {line}"
    );
    let id = reply.request_id();
    let lines = error_log_lines(&id);
    assert!(
        lines.iter().any(|l| l.contains("WARN")
            && l.contains("PHP Fatal error")
            && l.contains("Call to undefined function")),
        "WARN line with PHP's message for {id}: {lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Slow scripts and killed workers.

#[tokio::test]
async fn slow_script_is_header_timeout() {
    let p = start_php(
        Pool::default(),
        ", try_files = true",
        "timeouts = { header = \"1s\" }\nretry = { attempts = 1 }",
    )
    .await;
    let started = Instant::now();
    let reply = get(p.addr, "/sleep.php?s=3").await;
    let took = started.elapsed();
    assert_failure(&p.access, &reply, 504, "header_timeout").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered at timeouts.header, not when PHP finished: {took:?}"
    );
}

#[tokio::test]
async fn request_terminate_timeout_is_a_dead_worker_not_a_timeout() {
    let p = start_php_with(
        Pool {
            terminate_timeout: Some("1s"),
            ..Pool::default()
        },
        "[errors]\nexpose = \"detail\"\n",
        ", try_files = true",
        "timeouts = { header = \"10s\" }\nretry = { attempts = 1 }",
    )
    .await;
    let started = Instant::now();
    let reply = get(p.addr, "/sleep.php?s=8").await;
    let took = started.elapsed();
    assert_eq!(reply.status.as_u16(), 502, "{:?}", reply.body);
    let body = reply.json();
    let cause = body["cause"].as_str().unwrap_or_default().to_string();
    assert!(
        cause == "upstream_reset" || cause == "premature_close",
        "a killed worker is upstream_reset or premature_close: {body}"
    );
    assert!(
        took < Duration::from_secs(5),
        "PHP-FPM killed the worker after about 1 s, not the header timeout: {took:?}"
    );
    assert!(
        p.fpm
            .log_mentions("execution timed out", Duration::from_secs(3)),
        "PHP-FPM says it killed the worker:\n{}",
        p.fpm.logs()
    );
    let line = assert_failure(&p.access, &reply, 502, &cause).await;
    assert_eq!(line["cause"], cause.as_str(), "log and body agree: {line}");
    let detail = format!("{} {}", body["detail"], body["hint"]);
    assert!(
        detail.contains("request_terminate_timeout"),
        "the detail names request_terminate_timeout: {body}"
    );
    let id = reply.request_id();
    let lines = error_log_lines(&id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("request_terminate_timeout")),
        "the WARN line names request_terminate_timeout: {lines:#?}"
    );
}

#[tokio::test]
async fn worker_killed_mid_body_is_body_truncated() {
    let p = start_php(
        Pool {
            terminate_timeout: Some("1s"),
            ..Pool::default()
        },
        ", try_files = true",
        "timeouts = { header = \"10s\", read = \"10s\" }",
    )
    .await;
    let reply = get(p.addr, "/partial.php?s=8").await;
    assert_eq!(reply.status, StatusCode::OK, "the head was already relayed");
    assert!(
        reply.body.is_err(),
        "the client must see an incomplete body: {:?}",
        reply.body
    );
    let id = reply.request_id();
    let line = access_line(&p.access, &id).await;
    assert_eq!(line["cause"], "body_truncated", "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(line["upstream_status"], 200, "{line}");
    assert_warned(&id, "body_truncated");
    assert!(
        p.fpm
            .log_mentions("execution timed out", Duration::from_secs(3)),
        "{}",
        p.fpm.logs()
    );
}

#[tokio::test]
async fn script_silent_mid_body_is_body_timeout() {
    let p = start_php(
        Pool::default(),
        ", try_files = true",
        "timeouts = { header = \"10s\", read = \"500ms\" }",
    )
    .await;
    let reply = get(p.addr, "/partial.php?s=3").await;
    assert_eq!(reply.status, StatusCode::OK, "the head was already relayed");
    assert!(reply.body.is_err(), "incomplete: {:?}", reply.body);
    let id = reply.request_id();
    let line = access_line(&p.access, &id).await;
    assert_eq!(line["cause"], "body_timeout", "{line}");
    assert_eq!(line["complete"], false, "{line}");
    assert_warned(&id, "body_timeout");
}

// ---------------------------------------------------------------------------------------------
// 5. PHP-FPM not running.

#[tokio::test]
async fn stopped_php_fpm_on_unix_socket_is_socket_not_found() {
    let mut p = start_php(Pool::default(), ", try_files = true", "").await;
    assert_eq!(get(p.addr, "/hello.php").await.status, StatusCode::OK);
    p.fpm.stop();
    assert!(
        !p.fpm.socket().exists(),
        "PHP-FPM removes its socket on a clean exit"
    );
    let reply = get(p.addr, "/hello.php").await;
    let line = assert_failure(&p.access, &reply, 502, "socket_not_found").await;
    assert_eq!(line["server"], p.fpm.server(), "{line}");
}

#[tokio::test]
async fn crashed_php_fpm_leaves_a_stale_socket_that_is_connect_refused() {
    let mut p = start_php(Pool::default(), ", try_files = true", "").await;
    assert_eq!(get(p.addr, "/hello.php").await.status, StatusCode::OK);
    p.fpm.kill();
    assert!(
        p.fpm.socket().exists(),
        "a SIGKILLed PHP-FPM leaves its socket file"
    );
    let reply = get(p.addr, "/hello.php").await;
    assert_failure(&p.access, &reply, 502, "connect_refused").await;
}

#[tokio::test]
async fn stopped_php_fpm_on_tcp_is_connect_refused() {
    let mut p = start_php(
        Pool {
            tcp: true,
            ..Pool::default()
        },
        ", try_files = true",
        "",
    )
    .await;
    let reply = get(p.addr, "/hello.php").await;
    assert_eq!(reply.text(), "hello from php", "served over TCP first");
    p.fpm.stop();
    let reply = get(p.addr, "/hello.php").await;
    assert_failure(&p.access, &reply, 502, "connect_refused").await;
}

// ---------------------------------------------------------------------------------------------
// 6. A busy pool: requests queue (in PHP-FPM's backlog, or in causeway with max_conns) and
//    only a full backlog is an error.

/// Fires `n` concurrent GETs of `path` and returns the replies.
async fn concurrent(addr: SocketAddr, path: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move { get(addr, &path).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

async fn assert_all_served(p: &Php, replies: &[Reply]) {
    for reply in replies {
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "every queued request is served: {:?}\n{}",
            reply.body,
            p.fpm.logs()
        );
        assert_eq!(reply.text(), "slept");
        let line = access_line(&p.access, &reply.request_id()).await;
        assert!(line["cause"].is_null(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pool_queues_in_php_fpms_backlog() {
    let p = start_php(
        Pool {
            max_children: 1,
            ..Pool::default()
        },
        ", try_files = true",
        "timeouts = { header = \"10s\" }",
    )
    .await;
    let started = Instant::now();
    let replies = concurrent(p.addr, "/sleep.php?ms=400", 5).await;
    let took = started.elapsed();
    assert_all_served(&p, &replies).await;
    assert!(
        took >= Duration::from_millis(1900),
        "one worker served them one after another: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pool_with_keep_conn_queues_in_causeway() {
    let p = start_php(
        Pool {
            max_children: 1,
            ..Pool::default()
        },
        ", try_files = true, keep_conn = true",
        "timeouts = { header = \"10s\" }\nmax_conns = 1\nqueue_timeout = \"10s\"",
    )
    .await;
    let replies = concurrent(p.addr, "/sleep.php?ms=400", 5).await;
    assert_all_served(&p, &replies).await;
    // Once more after the burst: the kept connection (if any) still serves.
    let reply = get(p.addr, "/hello.php").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

/// An attempt that fails after its request was written goes again on the next server with the
/// whole request: the copy kept for the retry holds the head (target, fields), not only the
/// body. Two servers in round robin: one reads the request and closes (`premature_close`,
/// retried here by configuration), one is PHP-FPM.
#[tokio::test]
async fn a_retried_request_reaches_php_with_its_fields() {
    let fpm = PhpFpm::start(Pool::default());
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closer_addr = closer.local_addr().expect("closer address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = closer.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        }
    });
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\
         [upstreams.php]\nservers = [\"{closer_addr}\", \"{}\"]\nprotocol = \"fastcgi\"\n\
         fastcgi = {{ root = \"{}\", index = \"index.php\", try_files = true }}\n\
         retry = {{ attempts = 2, on = [\"premature_close\"] }}\n\
         [[routes]]\npath = \"/\"\nupstream = \"php\"\n",
        fpm.server(),
        fpm.www.display()
    );
    let proxy = start_proxy(&text).await;
    let addr = proxy.tcp_addr().expect("proxy listens on TCP");
    let mut retried = 0;
    // Round robin: the first attempt of one request in two goes to the closing server.
    for _ in 0..2 {
        let reply = get_with(addr, "/info.php?q=1", &[("x-custom", "kept")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let env: serde_json::Value = serde_json::from_str(&reply.text()).expect("JSON from PHP");
        assert_eq!(env["HTTP_X_CUSTOM"], "kept", "{env}");
        assert_eq!(env["QUERY_STRING"], "q=1", "{env}");
        assert_eq!(env["REQUEST_METHOD"], "GET", "{env}");
        let line = access_line(&proxy.access, &reply.request_id()).await;
        let attempts = line["attempts"].as_array().map_or(0, Vec::len);
        if attempts == 2 {
            assert_eq!(
                line["attempts"][0]["server"],
                closer_addr.to_string(),
                "{line}"
            );
            retried += 1;
        }
    }
    assert_eq!(
        retried, 1,
        "one request of two went first to the closing server"
    );
}

#[tokio::test]
async fn keep_conn_reuses_the_connection() {
    let p = start_php(
        Pool {
            max_children: 1,
            ..Pool::default()
        },
        ", try_files = true, keep_conn = true",
        "timeouts = { header = \"5s\" }\nmax_conns = 1\nqueue_timeout = \"5s\"",
    )
    .await;
    let first = get(p.addr, "/hello.php").await;
    assert_relayed(&p.access, &first, 200).await;
    let second = get(p.addr, "/hello.php").await;
    let line = assert_relayed(&p.access, &second, 200).await;
    assert_eq!(
        line["attempts"][0]["reused"], true,
        "fastcgi.keep_conn = true: the second request reuses the first one's connection: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_php_fpm_backlog_is_socket_backlog_full() {
    // One worker, listen.backlog = 1 (a Linux unix socket then queues 2 connections): of 8
    // concurrent requests, one runs, two wait, the rest find the queue full.
    let p = start_php(
        Pool {
            max_children: 1,
            backlog: 1,
            ..Pool::default()
        },
        ", try_files = true",
        "timeouts = { header = \"10s\" }\nretry = { attempts = 1 }\nhealth = { max_fails = 0 }",
    )
    .await;
    let replies = concurrent(p.addr, "/sleep.php?ms=500", 8).await;
    let mut full = 0;
    for reply in &replies {
        match reply.status.as_u16() {
            200 => assert_eq!(reply.text(), "slept"),
            503 => {
                assert_failure(&p.access, reply, 503, "socket_backlog_full").await;
                assert!(reply.header("retry-after").is_some(), "503 has Retry-After");
                full += 1;
            }
            other => panic!(
                "only 200 or 503 socket_backlog_full, got {other}: {:?}",
                reply.body
            ),
        }
    }
    assert!(
        full >= 1,
        "at least one request found the backlog full: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        full <= 7,
        "the first request at least was served: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}
