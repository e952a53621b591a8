//! Active health checks (`health.check`): they take a failing server out before a client hits
//! it, and bring a recovered server back before `fail_timeout` ends.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn failing_checks_take_a_server_out_before_any_client_hits_it() {
    let h = start(&single(
        "{refused}",
        "retry = { attempts = 1 }\nhealth = { max_fails = 2, fail_timeout = \"30s\", check = { path = \"/ok\", interval = \"100ms\" } }",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reply = get(h.addr, "/ok").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["cause"], "no_healthy_upstream");
    let line = access_line(&h.access, &reply.request_id()).await;
    assert_eq!(
        line["attempts"].as_array().map(Vec::len),
        Some(0),
        "no client request was sent: {line}"
    );
    let lines = error_log_lines("active health check failed");
    assert!(
        lines.iter().any(|l| l.contains("marked down")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_passing_check_brings_a_server_back_before_fail_timeout() {
    let h = start(&single(
        "{faults}",
        "retry = { attempts = 1 }\nhealth = { max_fails = 1, fail_timeout = \"60s\", check = { path = \"/ok\", interval = \"200ms\" } }",
    ))
    .await;
    // One failure marks the only server down for a minute.
    let failed = get(h.addr, "/close").await;
    assert_eq!(failed.json()["cause"], "premature_close");
    let down = get(h.addr, "/ok").await;
    assert_eq!(down.json()["cause"], "no_healthy_upstream");
    // The next check passes and ends the down period early.
    let mut back = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = get(h.addr, "/ok").await;
        if reply.status == StatusCode::OK {
            back = Some(reply);
            break;
        }
    }
    let back = back.expect("server back well before fail_timeout");
    assert_eq!(back.text(), "ok\n");
    assert!(
        h.faults.hits("/ok") >= 2,
        "the checks themselves reached the server"
    );
}
