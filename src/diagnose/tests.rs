use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::facts::{mode_string, Certificate, Identity};
use super::probe::get_values_for_test;
use super::*;
use crate::fastcgi::record;

fn report(failure: Option<Failure>) -> Report {
    let step = |name, status, summary: &str| Step {
        name,
        status,
        elapsed: (status == StepStatus::Ok || status == StepStatus::Failed)
            .then_some(Duration::from_micros(300)),
        summary: summary.to_string(),
        facts: Vec::new(),
    };
    let failed = failure.is_some();
    let steps = vec![
        step(
            StepName::Resolve,
            StepStatus::Skipped,
            "127.0.0.1 is an IP address: no DNS lookup",
        ),
        if failed {
            step(
                StepName::Connect,
                StepStatus::Failed,
                "connect to 127.0.0.1:9 refused (ECONNREFUSED): nothing listens there",
            )
        } else {
            step(StepName::Connect, StepStatus::Ok, "TCP connection")
        },
        step(
            StepName::Tls,
            if failed {
                StepStatus::NotRun
            } else {
                StepStatus::Skipped
            },
            "",
        ),
        step(
            StepName::Request,
            if failed {
                StepStatus::NotRun
            } else {
                StepStatus::Ok
            },
            "GET / → 200 OK",
        ),
    ];
    Report {
        config: "test.toml".to_string(),
        upstreams: vec![UpstreamReport {
            name: "app".to_string(),
            protocol: "http",
            servers: vec![ServerReport {
                server: "127.0.0.1:9".to_string(),
                steps,
                failure,
            }],
        }],
    }
}

fn refused() -> Failure {
    Failure {
        step: StepName::Connect,
        cause: Some(Cause::ConnectRefused),
        detail: "connect to 127.0.0.1:9 refused".to_string(),
        hint: Some("is the backend running and listening on 127.0.0.1:9? check `ss -ltnp`".into()),
    }
}

#[test]
fn checklist_names_the_cause_and_the_fix_of_the_failing_step() {
    let text = render_text(&report(Some(refused())), false);
    assert!(
        text.contains("127.0.0.1:9  FAILED: connect_refused"),
        "{text}"
    );
    assert!(text.contains("    ✗ connect"), "{text}");
    assert!(text.contains("    · tls"), "{text}");
    assert!(
        text.contains(
            "    cause: connect_refused (the proxy answers 502, Proxy-Status error=connection_refused)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "    fix:   is the backend running and listening on 127.0.0.1:9? check `ss -ltnp`"
        ),
        "{text}"
    );
    assert!(text.contains("0 of 1 servers ok, 1 failing"), "{text}");
    assert!(!text.contains('\x1b'), "no colours unless asked: {text:?}");
}

#[test]
fn colours_only_when_asked() {
    let text = render_text(&report(None), true);
    assert!(text.contains("\x1b[32m✓\x1b[0m"), "{text:?}");
    assert!(text.contains("all 1 servers ok"), "{text}");
}

#[test]
fn json_has_a_status_per_step() {
    let value = render_json(&report(Some(refused())));
    assert_eq!(value["ok"], false);
    let server = &value["upstreams"][0]["servers"][0];
    assert_eq!(server["cause"], "connect_refused");
    assert_eq!(server["status"], 502);
    assert_eq!(server["failed_step"], "connect");
    let statuses: Vec<&str> = server["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["skipped", "failed", "not_run", "not_run"]);
}

#[test]
fn socket_modes_read_like_ls() {
    assert_eq!(mode_string(0o140660), "srw-rw----");
    assert_eq!(mode_string(0o140777), "srwxrwxrwx");
}

#[test]
fn access_follows_owner_then_group_then_others() {
    let me = Identity {
        uid: 1000,
        gid: 1000,
        groups: vec![33],
    };
    assert!(me
        .access(1000, 0, 0o600)
        .contains("may connect (write permission as owner)"));
    assert!(me
        .access(0, 33, 0o660)
        .contains("may connect (write permission as group)"));
    let refused = me.access(0, 0, 0o660);
    assert!(
        refused.contains("may NOT connect: no write permission for others (mode 660)"),
        "{refused}"
    );
    let root = Identity {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    assert!(root.access(1, 1, 0).contains("ignores socket modes"));
}

#[test]
fn certificates_show_names_issuer_and_dates() {
    let mut params =
        rcgen::CertificateParams::new(vec!["api.internal".to_string()]).expect("params");
    params.not_before = time::macros::datetime!(2000-01-01 0:00 UTC);
    params.not_after = time::macros::datetime!(2001-01-01 0:00 UTC);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let parsed = Certificate::parse(cert.der()).expect("parses");
    let line = parsed.describe(time::OffsetDateTime::now_utc());
    assert!(line.contains("(names: api.internal)"), "{line}");
    assert!(line.contains("self-signed"), "{line}");
    assert!(
        line.contains("valid 2000-01-01 to 2001-01-01 (EXPIRED"),
        "{line}"
    );
}

/// Reads one GET_VALUES record from `app`'s side and answers with `answer`.
async fn fake_app(mut app: tokio::io::DuplexStream, answer: Vec<u8>) {
    let mut buf = vec![0u8; 256];
    let mut got = 0;
    while got < record::FCGI_HEADER_LEN {
        let n = app.read(&mut buf[got..]).await.expect("read");
        assert!(n > 0, "request expected");
        got += n;
    }
    assert_eq!(buf[1], record::FCGI_GET_VALUES, "a GET_VALUES record");
    app.write_all(&answer).await.expect("write");
}

#[tokio::test]
async fn get_values_result_proves_fastcgi() {
    let (ours, app) = tokio::io::duplex(4096);
    let mut content = BytesMut::new();
    record::put_pair(&mut content, b"FCGI_MAX_CONNS", b"5").expect("pair");
    record::put_pair(&mut content, b"FCGI_MPXS_CONNS", b"0").expect("pair");
    let mut answer = BytesMut::new();
    record::record(
        &mut answer,
        record::FCGI_GET_VALUES_RESULT,
        record::FCGI_NULL_REQUEST_ID,
        &content,
    );
    tokio::spawn(fake_app(app, answer.to_vec()));
    let summary = get_values_for_test(ours, Duration::from_secs(5))
        .await
        .expect("answered");
    assert_eq!(
        summary,
        "FastCGI GET_VALUES answered: FCGI_MAX_CONNS=5, FCGI_MPXS_CONNS=0"
    );
}

#[tokio::test]
async fn http_where_fastcgi_is_expected_is_a_protocol_error() {
    let (ours, app) = tokio::io::duplex(4096);
    tokio::spawn(fake_app(app, b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()));
    let error = get_values_for_test(ours, Duration::from_secs(5))
        .await
        .expect_err("not FastCGI");
    assert_eq!(error.cause, Cause::FastcgiProtocolError);
    assert!(error.detail.contains("speaks HTTP"), "{}", error.detail);
}

#[tokio::test]
async fn silent_fastcgi_server_is_a_header_timeout() {
    let (ours, _app) = tokio::io::duplex(4096);
    let error = get_values_for_test(ours, Duration::from_millis(50))
        .await
        .expect_err("no answer");
    assert_eq!(error.cause, Cause::HeaderTimeout);
}

#[tokio::test]
async fn close_without_answer_is_premature_close() {
    let (ours, app) = tokio::io::duplex(4096);
    tokio::spawn(fake_app(app, Vec::new()));
    let error = get_values_for_test(ours, Duration::from_secs(5))
        .await
        .expect_err("closed");
    assert_eq!(error.cause, Cause::PrematureClose, "{}", error.detail);
    assert!(
        error
            .detail
            .contains("without answering a FastCGI GET_VALUES record"),
        "{}",
        error.detail
    );
}
