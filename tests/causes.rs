//! One test per cause of DESIGN.md section 4 that can be produced on one machine, each through
//! the real failure: status, JSON body `cause`, `Proxy-Status` error type, the access-log
//! line's `cause` (and `complete` for body-phase causes), and a WARN line in the error log.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

/// Asserts everything the client and the operator see for a head-phase failure.
async fn assert_failure(h: &Harness, reply: &Reply, status: u16, cause: &str, proxy_error: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "status for {cause}: {:?}",
        reply.body
    );
    let body = reply.json();
    assert_eq!(body["cause"], cause, "body: {body}");
    assert_eq!(body["status"], status);
    let proxy_status = reply.header("proxy-status").expect("Proxy-Status header");
    assert!(
        proxy_status.starts_with(&format!("causeway; error={proxy_error};")),
        "Proxy-Status for {cause}: {proxy_status}"
    );
    assert!(
        proxy_status.contains(&format!("details=\"{cause}")),
        "{proxy_status}"
    );
    let id = reply.request_id();
    let line = access_line(&h.access, &id).await;
    assert_eq!(line["cause"], cause, "access log: {line}");
    assert_eq!(line["status"], status);
    assert!(
        line["upstream_status"].is_null(),
        "generated, not relayed: {line}"
    );
    assert_warned(&id, cause);
}

#[tokio::test]
async fn refused_port_is_connect_refused() {
    let h = start(&single("{refused}", "retry = { attempts = 1 }")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 502, "connect_refused", "connection_refused").await;
}

#[tokio::test]
async fn missing_unix_socket_is_socket_not_found() {
    let h = start(&single("{missing}", "")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 502, "socket_not_found", "connection_refused").await;
}

#[tokio::test]
async fn full_unix_backlog_is_socket_backlog_full() {
    let h = start(&single("{backlog_unix}", "retry = { attempts = 1 }")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(
        &h,
        &reply,
        503,
        "socket_backlog_full",
        "connection_limit_reached",
    )
    .await;
    assert!(
        reply.header("retry-after").is_some(),
        "503 carries Retry-After"
    );
}

#[tokio::test]
async fn full_tcp_backlog_is_connect_timeout() {
    let h = start(&single(
        "{backlog}",
        "timeouts = { connect = \"300ms\" }\nretry = { attempts = 1 }",
    ))
    .await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 504, "connect_timeout", "connection_timeout").await;
}

#[tokio::test]
async fn close_before_any_byte_is_premature_close() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/close").await;
    assert_failure(&h, &reply, 502, "premature_close", "connection_terminated").await;
}

#[tokio::test]
async fn half_a_head_is_premature_close_with_incomplete_response() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/partial-head").await;
    assert_failure(
        &h,
        &reply,
        502,
        "premature_close",
        "http_response_incomplete",
    )
    .await;
}

#[tokio::test]
async fn reset_before_head_is_upstream_reset() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/reset").await;
    assert_failure(&h, &reply, 502, "upstream_reset", "connection_terminated").await;
}

#[tokio::test]
async fn non_http_bytes_are_invalid_response() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/garbage").await;
    assert_failure(&h, &reply, 502, "invalid_response", "http_protocol_error").await;
}

#[tokio::test]
async fn oversized_head_is_header_too_large() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/huge-header").await;
    assert_failure(
        &h,
        &reply,
        502,
        "header_too_large",
        "http_response_header_section_size",
    )
    .await;
}

#[tokio::test]
async fn silent_upstream_is_header_timeout() {
    let h = start(&single("{faults}", "timeouts = { header = \"300ms\" }")).await;
    let reply = get(h.addr, "/hang").await;
    assert_failure(&h, &reply, 504, "header_timeout", "http_response_timeout").await;
}

#[tokio::test]
async fn slow_body_does_not_trip_the_header_timeout() {
    // Header timeout 300 ms, body chunks every 200 ms for 1 s: only `read` applies mid-body.
    let h = start(&single(
        "{faults}",
        "timeouts = { header = \"300ms\", read = \"1s\" }",
    ))
    .await;
    let reply = get(h.addr, "/slow-body?ms=200&chunks=5").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_ok(), "complete body: {:?}", reply.body);
    let line = access_line(&h.access, &reply.request_id()).await;
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["complete"], true);
}

#[tokio::test]
async fn slow_head_within_the_header_timeout_is_fine() {
    let h = start(&single(
        "{faults}",
        "timeouts = { header = \"2s\", read = \"100ms\" }",
    ))
    .await;
    let reply = get(h.addr, "/slow-head?ms=400").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "read timeout does not apply before the head"
    );
}

#[tokio::test]
async fn truncated_body_aborts_the_client_and_logs_body_truncated() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/truncate").await;
    assert_eq!(reply.status, StatusCode::OK, "the head was already relayed");
    assert!(
        reply.body.is_err(),
        "client must see an incomplete body: {:?}",
        reply.body
    );
    let id = reply.request_id();
    let line = access_line(&h.access, &id).await;
    assert_eq!(line["cause"], "body_truncated", "{line}");
    assert_eq!(line["complete"], false);
    assert_eq!(line["upstream_status"], 200);
    assert_warned(&id, "body_truncated");
}

#[tokio::test]
async fn reset_mid_body_is_body_truncated() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/reset-body").await;
    assert!(
        reply.body.is_err(),
        "incomplete: {:?}",
        reply.body.as_ref().map(|b| b.len())
    );
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(line["cause"], "body_truncated", "{line}");
    assert_eq!(line["complete"], false);
}

#[tokio::test]
async fn stalled_body_is_body_timeout() {
    let h = start(&single("{faults}", "timeouts = { read = \"300ms\" }")).await;
    let reply = get(h.addr, "/stall-body").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_err(), "incomplete: {:?}", reply.body);
    let id = reply.request_id();
    let line = access_line(&h.access, &id).await;
    assert_eq!(line["cause"], "body_timeout", "{line}");
    assert_eq!(line["complete"], false);
    assert_warned(&id, "body_timeout");
}

#[tokio::test]
async fn upstream_that_stops_reading_is_write_timeout() {
    let h = start(&single(
        "{faults}",
        "timeouts = { write = \"300ms\", header = \"10s\" }\nretry = { attempts = 1, max_replay_body = \"1KiB\" }",
    ))
    .await;
    // Larger than every socket buffer on the way, so the upload must stall.
    let body = vec![b'x'; 32 * 1024 * 1024];
    let reply = with_body(h.addr, "POST", "/no-read", body).await;
    assert_failure(&h, &reply, 504, "write_timeout", "connection_write_timeout").await;
}

#[tokio::test]
async fn reset_while_uploading_is_write_failed() {
    let h = start(&single(
        "{faults}",
        "retry = { attempts = 1, max_replay_body = \"1KiB\" }",
    ))
    .await;
    let body = vec![b'x'; 32 * 1024 * 1024];
    let reply = with_body(h.addr, "POST", "/reset-read", body).await;
    assert_failure(&h, &reply, 502, "write_failed", "connection_terminated").await;
}

#[tokio::test]
async fn relayed_502_is_not_ours() {
    let h = start(&single("{faults}", "")).await;
    let reply = get(h.addr, "/status/502").await;
    assert_eq!(reply.status.as_u16(), 502);
    assert!(
        reply.header("proxy-status").is_none(),
        "a relayed 502 is the upstream's"
    );
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(line["upstream_status"], 502);
    assert!(line["cause"].is_null(), "{line}");
}

#[tokio::test]
async fn no_matching_route_is_no_route() {
    let h = start(
        "[upstreams.u]\nservers = [\"{faults}\"]\n[[routes]]\npath = \"/api/\"\nupstream = \"u\"\n",
    )
    .await;
    let reply = get(h.addr, "/elsewhere").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["cause"], "no_route");
    assert!(reply
        .header("proxy-status")
        .is_some_and(|v| v.contains("error=destination_not_found")));
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(line["cause"], "no_route");
}

/// causeway's own answers carry the current date (RFC 9110 §6.6.1), also once the second
/// has changed: hyper's cached date is refreshed where it is written (a causeway patch).
#[tokio::test]
async fn our_own_answers_carry_the_current_date() {
    let h = start(
        "[upstreams.u]\nservers = [\"{faults}\"]\n[[routes]]\npath = \"/api/\"\nupstream = \"u\"\n",
    )
    .await;
    let date_of = |reply: &Reply| {
        let text = reply.header("date").expect("a Date header").to_string();
        httpdate::parse_http_date(&text).expect("an HTTP date")
    };
    let first = date_of(&get(h.addr, "/elsewhere").await);
    let skew = std::time::SystemTime::now()
        .duration_since(first)
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(3), "{skew:?} behind");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = date_of(&get(h.addr, "/elsewhere").await);
    assert!(
        second > first,
        "the date moved on: {first:?} then {second:?}"
    );
}

#[tokio::test]
async fn our_own_via_is_loop_detected() {
    let h = start(&single("{faults}", "")).await;
    let request = http::Request::get("/ok")
        .header("host", "test.local")
        .header("accept", "application/json")
        .header("via", "1.1 causeway")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let reply = send(h.addr, request).await;
    assert_eq!(reply.status.as_u16(), 508);
    assert_eq!(reply.json()["cause"], "loop_detected");
    assert_eq!(
        h.faults.hits("/ok"),
        0,
        "a looped request is never forwarded"
    );
}

#[tokio::test]
async fn declared_oversized_body_is_request_too_large() {
    let h = start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_request_body = \"1KiB\"\n{}",
        single("{faults}", "")
    ))
    .await;
    let reply = with_body(h.addr, "POST", "/echo", vec![b'x'; 4096]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["cause"], "request_too_large");
    assert!(
        reply.header("proxy-status").is_none(),
        "client causes have no Proxy-Status"
    );
    assert_eq!(h.faults.hits("/echo"), 0);
}

#[tokio::test]
async fn every_server_down_is_no_healthy_upstream_with_retry_after() {
    let h = start(&single(
        "{refused}",
        "retry = { attempts = 1 }\nhealth = { max_fails = 1, fail_timeout = \"30s\" }",
    ))
    .await;
    let first = get(h.addr, "/ok").await;
    assert_eq!(first.json()["cause"], "connect_refused");
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["cause"], "no_healthy_upstream");
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("numeric Retry-After");
    assert!(
        (29..=30).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(line["cause"], "no_healthy_upstream");
}

#[tokio::test]
async fn connection_limit_wait_is_upstream_busy() {
    let h = start(&single(
        "{faults}",
        "max_conns = 1\nqueue_timeout = \"200ms\"\nretry = { attempts = 1 }",
    ))
    .await;
    let addr = h.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow-head?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let reply = get(h.addr, "/ok").await;
    let waited = started.elapsed();
    assert_failure(&h, &reply, 503, "upstream_busy", "connection_limit_reached").await;
    assert!(
        waited < Duration::from_millis(1200),
        "gave up after the queue timeout, not the slow request"
    );
    let first = slow.await.expect("slow request task");
    assert_eq!(first.status, StatusCode::OK);
}

#[tokio::test]
async fn client_leaving_mid_request_is_client_closed_and_not_counted() {
    let h = start(&single(
        "{faults}",
        "health = { max_fails = 1, fail_timeout = \"30s\" }",
    ))
    .await;
    let addr = h.addr;
    let request = tokio::spawn(async move { get(addr, "/hang").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    request.abort();
    let _ = request.await;
    // The access log gets a 499 client_closed line.
    let mut line = None;
    for _ in 0..100 {
        if let Some(found) = h
            .access
            .lines()
            .into_iter()
            .find(|l| l.contains("\"/hang\""))
        {
            line = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line: serde_json::Value =
        serde_json::from_str(&line.expect("access-log line for the abandoned request"))
            .expect("json");
    assert_eq!(line["status"], 499);
    assert_eq!(line["cause"], "client_closed");
    // The server was not marked down: the next request still reaches it.
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::OK);
}

fn https(server_name: &str) -> String {
    single(
        "{tls}",
        &format!(
            "protocol = \"https\"\nretry = {{ attempts = 1 }}\ntls = {{ server_name = \"{server_name}\", ca = \"{{ca}}\" }}"
        ),
    )
}

#[tokio::test]
async fn https_to_a_good_certificate_works() {
    let h = start(&https("localhost")).await;
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok\n");
    // The TLS connection goes back to the pool and carries the next request: the idle check
    // at checkout reads through TLS (session tickets included) without calling it closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = get(h.addr, "/ok").await;
    assert_eq!(again.text(), "ok\n");
    let line = access_line(&h.access, &again.request_id()).await;
    assert_eq!(line["attempts"][0]["reused"], true, "{line}");
}

#[tokio::test]
async fn expired_certificate_is_tls_certificate_invalid() {
    let h = start(&https("expired.localhost")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(
        &h,
        &reply,
        502,
        "tls_certificate_invalid",
        "tls_certificate_error",
    )
    .await;
    let lines = error_log_lines(&reply.request_id());
    assert!(lines.iter().any(|l| l.contains("expired")), "{lines:#?}");
}

#[tokio::test]
async fn self_signed_certificate_is_tls_certificate_invalid() {
    let h = start(&https("self-signed.localhost")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(
        &h,
        &reply,
        502,
        "tls_certificate_invalid",
        "tls_certificate_error",
    )
    .await;
    let lines = error_log_lines(&reply.request_id());
    assert!(lines.iter().any(|l| l.contains("unknown CA")), "{lines:#?}");
}

#[tokio::test]
async fn wrong_name_certificate_is_tls_certificate_invalid() {
    let h = start(&https("wrong-name.localhost")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(
        &h,
        &reply,
        502,
        "tls_certificate_invalid",
        "tls_certificate_error",
    )
    .await;
    let lines = error_log_lines(&reply.request_id());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not valid for that name: it covers only other.example")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn handshake_alert_is_tls_alert_received_with_its_id() {
    let h = start(&https("alert.localhost")).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 502, "tls_alert_received", "tls_alert_received").await;
    let proxy_status = reply.header("proxy-status").unwrap_or_default();
    assert!(proxy_status.contains("alert-id="), "{proxy_status}");
}

#[tokio::test]
async fn plain_http_behind_https_is_tls_handshake_failed() {
    let h = start(&single(
        "{faults}",
        "protocol = \"https\"\nretry = { attempts = 1 }\ntls = { server_name = \"localhost\", ca = \"{ca}\" }",
    ))
    .await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(
        &h,
        &reply,
        502,
        "tls_handshake_failed",
        "tls_protocol_error",
    )
    .await;
    let lines = error_log_lines(&reply.request_id());
    assert!(
        lines.iter().any(|l| l.contains("not speaking TLS")),
        "{lines:#?}"
    );
}

async fn dns_harness(host: &str, stub: &causeway::resolve::stub::DnsStub) -> Harness {
    start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[resolver]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\n{}",
        stub.addr,
        single(host, "retry = { attempts = 1 }\ntimeouts = { connect = \"2s\" }")
    ))
    .await
}

#[tokio::test]
async fn unknown_name_is_dns_error_with_rcode() {
    let stub = causeway::resolve::stub::DnsStub::start()
        .await
        .expect("dns stub");
    let h = dns_harness("nxdomain.test:80", &stub).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 502, "dns_error", "dns_error").await;
    let proxy_status = reply.header("proxy-status").unwrap_or_default();
    assert!(
        proxy_status.contains("rcode=\"NXDOMAIN\""),
        "{proxy_status}"
    );
}

#[tokio::test]
async fn silent_nameserver_is_dns_timeout() {
    let stub = causeway::resolve::stub::DnsStub::start()
        .await
        .expect("dns stub");
    let h = dns_harness("timeout.test:80", &stub).await;
    let reply = get(h.addr, "/ok").await;
    assert_failure(&h, &reply, 504, "dns_timeout", "dns_timeout").await;
}

#[tokio::test]
async fn resolved_name_reaches_the_upstream() {
    let stub = causeway::resolve::stub::DnsStub::start()
        .await
        .expect("dns stub");
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults");
    let host = format!("ok.test:{}", faults.http.port());
    let h = dns_harness(&host, &stub).await;
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(faults.hits("/ok"), 1);
}

#[tokio::test]
async fn reused_connection_closed_on_a_get_is_retried_fresh_and_logged_stale() {
    let h = start(&single("{faults}", "retry = { attempts = 1 }")).await;
    assert_eq!(get(h.addr, "/drop-next").await.status, StatusCode::OK);
    let reply = get(h.addr, "/ok").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the race is absorbed: {:?}",
        reply.body
    );
    let id = reply.request_id();
    let line = access_line(&h.access, &id).await;
    let attempts = line["attempts"].as_array().expect("attempts list");
    assert_eq!(attempts.len(), 2, "{line}");
    assert_eq!(attempts[0]["cause"], "stale_connection");
    assert_eq!(attempts[0]["reused"], true);
    assert_eq!(attempts[1]["reused"], false);
    assert!(attempts[1]["cause"].is_null());
    assert!(
        line["cause"].is_null(),
        "the client got a clean answer: {line}"
    );
    assert_warned(&id, "stale_connection");
}

#[tokio::test]
async fn reused_connection_closed_on_a_sent_post_is_stale_connection_not_retried() {
    let h = start(&single(
        "{faults}",
        "retry = { attempts = 2, max_replay_body = \"1KiB\" }",
    ))
    .await;
    assert_eq!(get(h.addr, "/drop-next").await.status, StatusCode::OK);
    // A POST body larger than max_replay_body is streamed, so it cannot be sent again.
    let reply = with_body(h.addr, "POST", "/ok", vec![b'p'; 4096]).await;
    assert_failure(&h, &reply, 502, "stale_connection", "connection_terminated").await;
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(line["attempts"].as_array().map(Vec::len), Some(1), "{line}");
    assert_eq!(line["attempts"][0]["reused"], true);
}

#[tokio::test]
async fn a_fully_sent_post_to_a_silent_upstream_is_header_timeout_not_write_timeout() {
    // The write timeout is shorter: it must stop applying once the whole body was sent.
    let h = start(&single(
        "{faults}",
        "timeouts = { write = \"200ms\", header = \"700ms\" }\nretry = { attempts = 1 }",
    ))
    .await;
    for size in [100, 1 << 20] {
        let started = std::time::Instant::now();
        let reply = with_body(h.addr, "POST", "/hang", vec![b'x'; size]).await;
        assert_failure(&h, &reply, 504, "header_timeout", "http_response_timeout").await;
        assert!(
            started.elapsed() >= Duration::from_millis(650),
            "waited for the header timeout"
        );
    }
}

#[tokio::test]
async fn body_failures_are_logged_even_with_the_access_log_off() {
    init_logs();
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{}",
        single(&faults.http.to_string(), "")
    );
    let config = causeway::config::parse(&text, std::path::Path::new("off.toml")).expect("config");
    let state = causeway::state::State::build(config).expect("state");
    let off = causeway::log::AccessLog::open(
        &causeway::config::AccessLogTarget::Off,
        causeway::config::AccessFormat::Json,
    )
    .expect("off log");
    let proxy = causeway::server::start(state, off).await.expect("proxy");
    let addr = proxy.tcp_addr().expect("tcp");
    let reply = get(addr, "/truncate").await;
    assert!(reply.body.is_err(), "cut body");
    let id = reply.request_id();
    for _ in 0..50 {
        if !error_log_lines(&id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_warned(&id, "body_truncated");
}
