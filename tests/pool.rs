//! The upstream connection pool, end to end through `faults`: connections are reused across
//! requests, never past the upstream's `Keep-Alive: timeout` (minus the margin) nor past
//! `pool.idle_timeout`, and concurrency does not corrupt it. Reuse is read two ways: the
//! connections faults accepted, and each attempt's `reused` / `idle_ms` in the access log.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

/// Asserts a plain `200 ok\n` relayed from the upstream.
fn assert_ok(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {:?}", reply.body);
    assert_eq!(reply.text(), "ok\n", "{what}");
}

/// The first attempt of a request's access-log line.
async fn first_attempt(h: &Harness, reply: &Reply) -> serde_json::Value {
    let line = access_line(&h.access, &reply.request_id()).await;
    let attempts = line["attempts"].as_array().expect("attempts is a list");
    assert_eq!(attempts.len(), 1, "one attempt: {line}");
    attempts[0].clone()
}

#[tokio::test]
async fn a_thousand_sequential_requests_use_at_most_four_connections() {
    let h = start(&single("{faults}", "")).await;
    for i in 0..1000 {
        let reply = get(h.addr, "/ok").await;
        assert_ok(&reply, &format!("request {i}"));
    }
    assert_eq!(h.faults.hits("/ok"), 1000, "every request reached faults");
    let accepted = h.faults.connections_accepted();
    eprintln!("pool: 1000 sequential GETs used {accepted} upstream connection(s)");
    assert!(
        (1..=4).contains(&accepted),
        "1000 sequential requests opened {accepted} upstream connections; the pool should reuse one"
    );
}

#[tokio::test]
async fn a_connection_is_not_reused_once_it_idled_past_keep_alive_timeout_1() {
    let h = start(&single("{faults}", "")).await;
    let first = get(h.addr, "/keepalive?timeout=1").await;
    assert_ok(&first, "first request");
    assert_eq!(first.header("keep-alive"), None, "hop-by-hop, not relayed");
    // faults closes the idle connection at 1 s; the proxy must not even try it at 1.2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = get(h.addr, "/keepalive?timeout=1").await;
    assert_ok(&second, "second request, 1.2 s later");
    assert_eq!(
        h.faults.connections_accepted(),
        2,
        "the second request needs a new connection"
    );
    let attempt = first_attempt(&h, &second).await;
    assert_eq!(attempt["reused"], false, "{attempt}");
    assert!(attempt["cause"].is_null(), "no failed attempt: {attempt}");
}

#[tokio::test]
async fn a_connection_is_reused_well_within_keep_alive_timeout_5() {
    let h = start(&single("{faults}", "")).await;
    let first = get(h.addr, "/keepalive?timeout=5").await;
    assert_ok(&first, "first request");
    assert_eq!(first_attempt(&h, &first).await["reused"], false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = get(h.addr, "/keepalive?timeout=5").await;
    assert_ok(&second, "second request, 200 ms later");
    assert_eq!(
        h.faults.connections_accepted(),
        1,
        "the pooled connection is reused"
    );
    let attempt = first_attempt(&h, &second).await;
    assert_eq!(attempt["reused"], true, "{attempt}");
    let idle_ms = attempt["idle_ms"].as_u64().expect("idle_ms is a number");
    assert!(
        (150..2000).contains(&idle_ms),
        "idle_ms {idle_ms} should be about 200: {attempt}"
    );
}

#[tokio::test]
async fn pool_idle_timeout_300ms_is_never_exceeded() {
    let h = start(&single("{faults}", "pool = { idle_timeout = \"300ms\" }")).await;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let reply = get(h.addr, "/ok").await;
        assert_ok(&reply, &format!("request {i}"));
        let attempt = first_attempt(&h, &reply).await;
        assert_eq!(attempt["reused"], false, "request {i}: {attempt}");
    }
    assert_eq!(
        h.faults.connections_accepted(),
        3,
        "requests 600 ms apart each need a new connection"
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_then_fifty_sequential_reuse_the_pool() {
    let h = start(&single("{faults}", "")).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = h.addr;
        tasks.push(tokio::spawn(
            async move { get(addr, "/slow-head?ms=200").await },
        ));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("concurrent request answered within 10 s")
            .expect("request task did not panic");
        assert_ok(&reply, &format!("concurrent request {i}"));
    }
    assert_eq!(h.faults.hits("/slow-head"), 50);
    let after_concurrent = h.faults.connections_accepted();
    assert!(
        after_concurrent <= 50,
        "50 concurrent requests opened {after_concurrent} connections"
    );

    let mut reused = 0;
    for i in 0..50 {
        let reply = get(h.addr, "/ok").await;
        assert_ok(&reply, &format!("sequential request {i}"));
        if first_attempt(&h, &reply).await["reused"] == true {
            reused += 1;
        }
    }
    let after_sequential = h.faults.connections_accepted();
    eprintln!(
        "pool: 50 concurrent GETs opened {after_concurrent} connection(s); 50 sequential GETs then opened {} more, {reused} reused",
        after_sequential - after_concurrent
    );
    assert!(
        after_sequential - after_concurrent <= 3,
        "sequential requests after the burst should reuse its connections, but {} new ones were opened",
        after_sequential - after_concurrent
    );
    assert!(
        reused >= 47,
        "only {reused} of 50 sequential requests reused a connection"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_dropped_not_reused() {
    // Keep-Alive hints ignored and a long idle timeout: only noticing the close (EOF on the
    // idle socket) keeps the next request off the dead connection.
    let h = start(&single(
        "{faults}",
        "pool = { idle_timeout = \"60s\", honor_keep_alive = false }\nretry = { attempts = 1, on = [] }",
    ))
    .await;
    assert_ok(&get(h.addr, "/keepalive?timeout=1").await, "first");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = get(h.addr, "/ok").await;
    assert_ok(&reply, "after the upstream closed the idle connection");
    let attempt = first_attempt(&h, &reply).await;
    assert_eq!(attempt["reused"], false, "{attempt}");
    assert!(attempt["cause"].is_null(), "{attempt}");
    assert_eq!(h.faults.connections_accepted(), 2);
}

/// An idle upstream connection past `pool.idle_timeout` is closed by the pool's sweeper even
/// when no request comes to notice: the upstream sees the close soon after the timeout, not
/// at its own keep-alive limit. Twice, the second time after the pool was empty a while.
#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout_with_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("upstream address");
    // One response per connection, then the time until the proxy closes it.
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                let answered = tokio::time::Instant::now();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(answered.elapsed());
            });
        }
    });
    let proxy = start_proxy(&single(
        &upstream.to_string(),
        "pool = { idle_timeout = \"1s\" }",
    ))
    .await;
    let addr = proxy.tcp_addr().expect("proxy listens on TCP");
    for round in ["first", "after the pool was empty"] {
        assert_ok(&get(addr, "/").await, round);
        let closed_after = tokio::time::timeout(Duration::from_secs(6), closed.recv())
            .await
            .unwrap_or_else(|_| panic!("{round}: idle connection still open after 6 s"))
            .expect("the upstream task reports");
        assert!(
            closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
            "{round}: closed {closed_after:?} after the response, want about 1 s"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}
