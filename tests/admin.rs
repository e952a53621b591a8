//! The admin listener (DESIGN.md section 7): `/metrics` counts failures by cause and parses as
//! Prometheus exposition, counters survive a reload, `/upstreams` shows passive health, and
//! the real binary serves it beside the proxy and stops it with the proxy.
//!
//! Every test uses its own upstream names: the metrics registry is one per process.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use causeway::state::State;
use common::*;
use prometheus_parse::{LineInfo, Scrape, Value};

/// The admin address of a harness whose config has `[admin]`.
fn admin(h: &Harness) -> SocketAddr {
    h.proxy.admin.expect("[admin] is configured")
}

/// `GET /metrics`, checked line by line with the parser, then parsed.
async fn scrape(admin: SocketAddr) -> Scrape {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = reply.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        let parsed = LineInfo::parse(line);
        assert!(
            matches!(
                parsed,
                LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Sample { .. }
            ),
            "not exposition format: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("metrics parse")
}

/// Scrapes until `ready` holds (bounded: 5 s). A response's access-log line, and so its count,
/// is written when the proxy sees its body end, a moment after the client has read it.
async fn scrape_until(admin: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = scrape(admin).await;
        if ready(&metrics) || Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

fn metrics_config() -> &'static str {
    r#"[admin]
listen = "127.0.0.1:0"

[upstreams.m_refused]
servers = ["{refused}"]
retry = { attempts = 1 }
health = { max_fails = 0 }

[upstreams.m_slow]
servers = ["{faults}"]
retry = { attempts = 1 }
timeouts = { header = "200ms" }
health = { max_fails = 0 }

[[routes]]
path = "/hang"
upstream = "m_slow"

[[routes]]
path = "/status/"
upstream = "m_slow"

[[routes]]
path = "/"
upstream = "m_refused"
"#
}

#[tokio::test]
async fn metrics_count_failures_by_cause_and_parse_as_exposition_format() {
    let h = start(metrics_config()).await;
    for _ in 0..3 {
        assert_eq!(get(h.addr, "/ok").await.status.as_u16(), 502);
    }
    for _ in 0..2 {
        assert_eq!(get(h.addr, "/hang").await.status.as_u16(), 504);
    }
    assert_eq!(get(h.addr, "/status/200").await.status.as_u16(), 200);

    let refused = h.faults.refused.to_string();
    let slow = h.faults.http.to_string();
    let metrics = scrape_until(admin(&h), |m| {
        let idle = [("upstream", "m_slow"), ("server", slow.as_str())];
        sample(
            m,
            "causeway_requests_total",
            &[("route", "m_slow"), ("status", "200")],
        )
        .is_some()
            && sample(m, "causeway_upstream_idle_connections", &idle) == Some(1.0)
    })
    .await;
    let failures = "causeway_upstream_failures_total";
    assert_eq!(
        sample(
            &metrics,
            failures,
            &[
                ("upstream", "m_refused"),
                ("server", &refused),
                ("cause", "connect_refused")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            failures,
            &[
                ("upstream", "m_slow"),
                ("server", &slow),
                ("cause", "header_timeout")
            ]
        ),
        Some(2.0)
    );
    let requests = "causeway_requests_total";
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[("route", "m_refused"), ("status", "502")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[("route", "m_slow"), ("status", "504")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[("route", "m_slow"), ("status", "200")]
        ),
        Some(1.0)
    );
    // One successful attempt observed in the header-time histogram (its +Inf bucket).
    assert_eq!(
        sample(
            &metrics,
            "causeway_upstream_header_seconds",
            &[("upstream", "m_slow")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "causeway_upstream_header_seconds_count",
            &[("upstream", "m_slow")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "causeway_upstream_server_up",
            &[("upstream", "m_refused"), ("server", &refused)]
        ),
        Some(1.0),
        "max_fails = 0 never marks a server down"
    );
    assert_eq!(
        sample(
            &metrics,
            "causeway_upstream_idle_connections",
            &[("upstream", "m_slow"), ("server", &slow)]
        ),
        Some(1.0),
        "the /status/200 connection went back to the pool"
    );
    assert!(
        sample(
            &metrics,
            "causeway_response_bytes_total",
            &[("route", "m_refused")]
        )
        .is_some_and(|bytes| bytes > 0.0),
        "error pages count as bytes sent"
    );
    assert!(sample(&metrics, "causeway_requests_in_flight", &[]).is_some());
}

#[tokio::test]
async fn counters_survive_a_reload_and_keep_counting() {
    let config = r#"[admin]
listen = "127.0.0.1:0"

[upstreams.r_refused]
servers = ["{refused}"]
retry = { attempts = 1 }
health = { max_fails = 0 }

[[routes]]
path = "/"
upstream = "r_refused"
"#;
    let h = start(config).await;
    for _ in 0..2 {
        assert_eq!(get(h.addr, "/ok").await.status.as_u16(), 502);
    }
    // The same upstream after a reload (a new State, new Upstream objects) with a new timeout.
    let reloaded = fill(config, &h.faults).replace(
        "retry = { attempts = 1 }",
        "retry = { attempts = 1 }\ntimeouts = { connect = \"2s\" }",
    );
    let text = format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{reloaded}");
    let parsed = causeway::config::parse(&text, Path::new("reload.toml")).expect("valid");
    h.proxy.swap(State::build(parsed).expect("state builds"));
    assert_eq!(get(h.addr, "/ok").await.status.as_u16(), 502);

    let metrics = scrape(admin(&h)).await;
    let refused = h.faults.refused.to_string();
    assert_eq!(
        sample(
            &metrics,
            "causeway_upstream_failures_total",
            &[
                ("upstream", "r_refused"),
                ("server", &refused),
                ("cause", "connect_refused")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "causeway_requests_total",
            &[("route", "r_refused"), ("status", "502")]
        ),
        Some(3.0)
    );
}

/// `/upstreams` as JSON: the first server of upstream `name`.
async fn upstream_server(admin: SocketAddr, name: &str) -> serde_json::Value {
    let reply = get(admin, "/upstreams").await;
    assert_eq!(reply.status.as_u16(), 200);
    let json = reply.json();
    json["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("upstream {name} in {json}"))["servers"][0]
        .clone()
}

#[tokio::test]
async fn upstreams_shows_a_server_down_after_max_fails_and_up_after_fail_timeout() {
    let h = start(
        r#"[admin]
listen = "127.0.0.1:0"

[upstreams.h_down]
servers = ["{refused}"]
retry = { attempts = 1 }
health = { max_fails = 2, fail_timeout = "1s" }

[[routes]]
path = "/"
upstream = "h_down"
"#,
    )
    .await;
    let before = upstream_server(admin(&h), "h_down").await;
    assert_eq!(before["up"], true, "{before}");
    assert_eq!(before["consecutive_failures"], 0);
    assert!(before["last_cause"].is_null() && before["last_failure"].is_null());

    for _ in 0..2 {
        assert_eq!(get(h.addr, "/ok").await.status.as_u16(), 502);
    }
    let marked_down = Instant::now();
    let down = upstream_server(admin(&h), "h_down").await;
    assert_eq!(down["server"], h.faults.refused.to_string());
    assert_eq!(down["up"], false, "{down}");
    assert_eq!(down["consecutive_failures"], 2, "{down}");
    assert_eq!(down["last_cause"], "connect_refused", "{down}");
    let when = down["last_failure"].as_str().expect("a failure time");
    assert!(
        when.len() == 24 && when.ends_with('Z') && when.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {when}"
    );
    assert!(
        down["down_for_ms"].as_u64().is_some_and(|ms| ms <= 1000),
        "{down}"
    );
    assert_eq!(down["active"], 0);
    assert_eq!(down["idle"], 0);
    // While down, the proxy does not even try it.
    assert_eq!(get(h.addr, "/ok").await.status.as_u16(), 503);

    let up = loop {
        let server = upstream_server(admin(&h), "h_down").await;
        if server["up"] == true {
            break server;
        }
        assert!(
            marked_down.elapsed() < Duration::from_secs(5),
            "still down 5 s after a 1 s fail_timeout: {server}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        marked_down.elapsed() >= Duration::from_millis(900),
        "up only after fail_timeout"
    );
    assert!(up["down_for_ms"].is_null(), "{up}");
    assert_eq!(up["last_cause"], "connect_refused", "history is kept: {up}");
}

#[tokio::test]
async fn requests_are_counted_with_the_access_log_off() {
    use causeway::config::{AccessFormat, AccessLogTarget};
    init_logs();
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults starts");
    let text = fill(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = \"off\"\n[upstreams.off_app]\nservers = [\"{faults}\", \"{refused}\"]\nretry = { attempts = 1 }\n[[routes]]\npath = \"/\"\nupstream = \"off_app\"\n",
        &faults,
    );
    let config = causeway::config::parse(&text, Path::new("off.toml")).expect("valid");
    let access =
        causeway::log::AccessLog::open(&AccessLogTarget::Off, AccessFormat::Json).expect("log off");
    let proxy = causeway::server::start(State::build(config).expect("state"), access)
        .await
        .expect("proxy starts");
    let addr = proxy.tcp_addr().expect("tcp");
    // Round robin over a good and a refused server: one 200 and one 502.
    let mut statuses = vec![
        get(addr, "/ok").await.status.as_u16(),
        get(addr, "/ok").await.status.as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    let admin = proxy.admin.expect("admin");
    let ok = [("route", "off_app"), ("status", "200")];
    let failed = [("route", "off_app"), ("status", "502")];
    let metrics = scrape_until(admin, |m| {
        sample(m, "causeway_requests_total", &ok).is_some()
    })
    .await;
    assert_eq!(sample(&metrics, "causeway_requests_total", &ok), Some(1.0));
    assert_eq!(
        sample(&metrics, "causeway_requests_total", &failed),
        Some(1.0)
    );
    assert!(sample(
        &metrics,
        "causeway_response_bytes_total",
        &[("route", "off_app")]
    )
    .is_some_and(|b| b > 0.0));
}

#[tokio::test]
async fn healthz_answers_ok_and_admin_is_off_unless_configured() {
    let h = start("[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\nservers = [\"{faults}\"]\n[[routes]]\npath = \"/\"\nupstream = \"u\"\n").await;
    let reply = get(admin(&h), "/healthz").await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.text(), "ok\n");
    assert_eq!(get(admin(&h), "/nope").await.status.as_u16(), 404);

    let without = start(&single("{faults}", "")).await;
    assert!(without.proxy.admin.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_admin_beside_the_proxy_and_stops_it_with_the_proxy() {
    use process::{config_head, Causeway, TempDir};
    let faults = causeway::faults::start(causeway::faults::FaultsOptions::loopback())
        .await
        .expect("faults starts");
    let dir = TempDir::new("admin");
    let config = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.b_app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"b_app\"\n",
        config_head(&dir, ""),
        faults.http
    );
    let mut causeway = Causeway::start(&dir, &config);
    causeway
        .wait_for_log("admin listening", 1, Duration::from_secs(5))
        .await;
    let stderr = causeway.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("admin listening"))
        .expect("admin line");
    let addr: SocketAddr = line
        .split("listen=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    assert_eq!(get(causeway.addr, "/ok").await.status.as_u16(), 200);
    let route = [("route", "b_app"), ("status", "200")];
    let metrics = scrape_until(addr, |m| {
        sample(m, "causeway_requests_total", &route).is_some()
    })
    .await;
    assert_eq!(
        sample(
            &metrics,
            "causeway_requests_total",
            &[("route", "b_app"), ("status", "200")]
        ),
        Some(1.0)
    );
    causeway.signal("TERM");
    let status = causeway
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the admin listener is closed with the proxy"
    );
}
