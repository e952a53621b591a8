//! `errors.expose = "none"`: for every cause causeway can produce here, the raw response
//! (status line, headers, body) names no upstream address, port, socket path, cause or detail.
//! The same requests with `expose = "detail"` do carry them, so the check can fail.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (virtual host, server, extra upstream keys, raw request after the Host line's value)
const ROWS: &[(&str, &str, &str, &str)] = &[
    ("refused", "{refused}", "", "GET /ok"),
    (
        "backlog",
        "{backlog}",
        "timeouts = { connect = \"300ms\" }",
        "GET /ok",
    ),
    ("nosocket", "{missing}", "", "GET /ok"),
    ("busyfpm", "{backlog_unix}", "", "GET /ok"),
    (
        "nottls",
        "{faults}",
        "protocol = \"https\"\ntls = { server_name = \"localhost\", ca = \"{ca}\" }",
        "GET /ok",
    ),
    (
        "expired",
        "{tls}",
        "protocol = \"https\"\ntls = { server_name = \"expired.localhost\", ca = \"{ca}\" }",
        "GET /ok",
    ),
    (
        "alert",
        "{tls}",
        "protocol = \"https\"\ntls = { server_name = \"alert.localhost\", ca = \"{ca}\" }",
        "GET /ok",
    ),
    ("reset", "{faults}", "", "GET /reset"),
    ("close", "{faults}", "", "GET /close"),
    ("partial", "{faults}", "", "GET /partial-head"),
    ("garbage", "{faults}", "", "GET /garbage"),
    ("huge", "{faults}", "", "GET /huge-header"),
    (
        "hang",
        "{faults}",
        "timeouts = { header = \"300ms\" }",
        "GET /hang",
    ),
    ("truncate", "{faults}", "", "GET /truncate"),
    (
        "stall",
        "{faults}",
        "timeouts = { read = \"300ms\" }",
        "GET /stall-body",
    ),
    ("loop", "{faults}", "", "GET /ok LOOP"),
    ("unrouted", "", "", "GET /ok"),
    ("big", "{faults}", "", "POST /echo BIG"),
];

fn config(expose: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_request_body = \"1KiB\"\n[errors]\nexpose = \"{expose}\"\n"
    );
    for (name, server, extra, _) in ROWS {
        if server.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "[upstreams.{name}]\nservers = [\"{server}\"]\nretry = {{ attempts = 1 }}\n{extra}\n[[routes]]\nhost = \"{name}.test\"\npath = \"/\"\nupstream = \"{name}\"\n"
        ));
    }
    text
}

/// Sends a raw request and returns every byte of the answer (until close or 3 s of silence).
async fn raw_exchange(addr: SocketAddr, host: &str, request: &str) -> String {
    let mut parts = request.split(' ');
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}.test\r\nAccept: application/json\r\nConnection: close\r\n");
    match parts.next() {
        Some("LOOP") => head.push_str("Via: 1.1 causeway\r\n"),
        Some("BIG") => head.push_str("Content-Length: 100000\r\n"),
        _ => {}
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break, // an aborted body: what arrived so far is what leaked
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Everything about the upstream side a response must not reveal with `expose = "none"`.
fn secrets(h: &Harness) -> Vec<String> {
    let tls = h.faults.tls.as_ref().expect("tls targets");
    let mut secrets = vec![
        h.faults.http.to_string(),
        h.faults.http.port().to_string(),
        h.faults.refused.to_string(),
        h.faults.backlog_full.to_string(),
        tls.addr.to_string(),
        h.faults.missing_socket.display().to_string(),
        h.faults.backlog_full_unix.display().to_string(),
        "proxy-status".to_string(),
        "localhost".to_string(),
    ];
    for cause in causeway::cause::Cause::ALL {
        secrets.push(cause.name().to_string());
    }
    secrets
}

#[tokio::test]
async fn expose_none_leaks_no_cause_address_or_detail_for_any_failure() {
    let h = start(&config("none")).await;
    let secrets = secrets(&h);
    let mut checked = 0;
    for (name, _, _, request) in ROWS {
        let answer = raw_exchange(h.addr, name, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 "),
            "{name}: got an answer: {answer:?}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id:"),
            "{name}: request id kept"
        );
        let lower = answer.to_ascii_lowercase();
        for secret in &secrets {
            assert!(
                !lower.contains(&secret.to_ascii_lowercase()),
                "{name}: response reveals {secret:?}:\n{answer}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, ROWS.len());
}

#[tokio::test]
async fn expose_detail_does_reveal_them_so_the_check_above_can_fail() {
    let h = start(&config("detail")).await;
    let answer = raw_exchange(h.addr, "refused", "GET /ok").await;
    assert!(answer.contains("connect_refused"), "{answer}");
    assert!(answer.contains(&h.faults.refused.to_string()), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("proxy-status:"),
        "{answer}"
    );
    let answer = raw_exchange(h.addr, "nosocket", "GET /ok").await;
    assert!(
        answer.contains(&h.faults.missing_socket.display().to_string()),
        "{answer}"
    );
}
