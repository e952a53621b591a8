//! `causeway demo`: every failure class end to end, in one process, in a few seconds.
//!
//! Starts `faults` and a DNS stub on loopback, then a proxy whose routes (one virtual host per
//! row) point at each broken target, sends one request per failure, and prints what the client
//! got (status, Proxy-Status) beside what the operator gets (the access log's cause and the
//! error log's sentence). Needs no config, no files and no network.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{self, AccessFormat};
use crate::faults::{self, Faults, FaultsOptions};
use crate::log::AccessLog;
use crate::resolve::stub::DnsStub;
use crate::server::{self, Running};
use crate::state::State;

/// How a row's request is sent.
#[derive(Clone, Copy)]
enum How {
    Get,
    /// A POST with a body of this many bytes.
    Post(usize),
    /// GET with our own `Via`: a loop.
    Looped,
    /// Head and 10 body bytes of 100, then silence: a slow client.
    SlowClient,
    /// Gives up after 300 ms: the client leaves.
    Abandon,
    /// Declares a 200 MB body, over `max_request_body`.
    Oversized,
}

/// One demonstrated failure.
struct Row {
    /// Virtual host and upstream name.
    name: &'static str,
    /// `servers` entry, with faults placeholders.
    server: &'static str,
    /// Extra upstream keys.
    extra: &'static str,
    path: &'static str,
    send: How,
    /// A request to send first (and not show), e.g. to mark a server down.
    before: Option<(&'static str, How)>,
}

fn rows() -> Vec<Row> {
    let row = |name, server, extra, path, send| Row {
        name,
        server,
        extra,
        path,
        send,
        before: None,
    };
    let mut rows = vec![
        row("ok", "{faults}", "", "/ok", How::Get),
        row("refused", "{refused}", "", "/ok", How::Get),
        row("backlog", "{backlog}", "timeouts = { connect = \"300ms\" }", "/ok", How::Get),
        row("nosocket", "{missing}", "", "/ok", How::Get),
        row("busyfpm", "{backlog_unix}", "", "/ok", How::Get),
        row("nxdomain", "nxdomain.test:80", "", "/ok", How::Get),
        row("dnsslow", "timeout.test:80", "", "/ok", How::Get),
        row("nottls", "{faults}", "protocol = \"https\"\ntls = { server_name = \"localhost\", ca = \"{ca}\" }", "/ok", How::Get),
        row("expired", "{tls}", "protocol = \"https\"\ntls = { server_name = \"expired.localhost\", ca = \"{ca}\" }", "/ok", How::Get),
        row("selfsigned", "{tls}", "protocol = \"https\"\ntls = { server_name = \"self-signed.localhost\", ca = \"{ca}\" }", "/ok", How::Get),
        row("wrongname", "{tls}", "protocol = \"https\"\ntls = { server_name = \"wrong-name.localhost\", ca = \"{ca}\" }", "/ok", How::Get),
        row("alert", "{tls}", "protocol = \"https\"\ntls = { server_name = \"alert.localhost\", ca = \"{ca}\" }", "/ok", How::Get),
        row("resetread", "{faults}", "retry = { max_replay_body = \"1KiB\" }", "/reset-read", How::Post(8 << 20)),
        row("noread", "{faults}", "timeouts = { write = \"300ms\" }\nretry = { max_replay_body = \"1KiB\" }", "/no-read", How::Post(8 << 20)),
        row("reset", "{faults}", "", "/reset", How::Get),
        row("close", "{faults}", "", "/close", How::Get),
        row("partial", "{faults}", "", "/partial-head", How::Get),
        row("garbage", "{faults}", "", "/garbage", How::Get),
        row("huge", "{faults}", "", "/huge-header", How::Get),
        row("hang", "{faults}", "timeouts = { header = \"300ms\" }", "/hang", How::Get),
        row("truncate", "{faults}", "", "/truncate", How::Get),
        row("resetbody", "{faults}", "", "/reset-body", How::Get),
        row("stall", "{faults}", "timeouts = { read = \"300ms\" }", "/stall-body", How::Get),
        row("relayed", "{faults}", "", "/status/502", How::Get),
        row("busy", "{faults}", "max_conns = 1\nqueue_timeout = \"200ms\"", "/ok", How::Get),
        row("unrouted", "{faults}", "", "/ok", How::Get),
        row("loop", "{faults}", "", "/ok", How::Looped),
        row("big", "{faults}", "", "/echo", How::Oversized),
        row("slowclient", "{faults}", "", "/echo", How::SlowClient),
        row("gone", "{faults}", "", "/hang", How::Abandon),
    ];
    rows.push(Row {
        name: "race",
        server: "{faults}",
        extra: "",
        path: "/ok",
        send: How::Get,
        before: Some(("/drop-next", How::Get)),
    });
    rows.push(Row {
        name: "racepost",
        server: "{faults}",
        extra: "retry = { max_replay_body = \"1KiB\" }",
        path: "/ok",
        send: How::Post(4096),
        before: Some(("/drop-next", How::Get)),
    });
    rows.push(Row {
        name: "down",
        server: "{refused}",
        extra: "retry = { attempts = 1 }\nhealth = { max_fails = 1, fail_timeout = \"30s\" }",
        path: "/ok",
        send: How::Get,
        before: Some(("/ok", How::Get)),
    });
    rows
}

/// Runs the demo and prints the table.
pub fn run() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = capture_error_log();
    match runtime.block_on(demo(logs)) {
        Ok(table) => {
            let _ = std::io::stdout().write_all(table.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn demo(logs: Arc<Mutex<Vec<u8>>>) -> Result<String, BoxError> {
    let faults = faults::start(FaultsOptions::loopback()).await?;
    let dns = DnsStub::start().await?;
    let rows = rows();
    let config = demo_config(&rows, &faults, dns.addr)?;
    let proxy = server::start(State::build(config)?, AccessLog::memory(AccessFormat::Json)).await?;
    let addr = proxy
        .tcp_addr()
        .ok_or("the demo proxy has no TCP listener")?;
    let mut table = Vec::new();
    for row in &rows {
        if let Some((path, send)) = row.before {
            let _ = request(addr, row.name, path, send).await;
        }
        let host = row.name;
        let (status, proxy_status, complete) = if row.name == "busy" {
            // Hold the only connection with a slow request, then ask again.
            let slow =
                tokio::spawn(
                    async move { request(addr, host, "/slow-head?ms=800", How::Get).await },
                );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let shown = request(addr, host, row.path, row.send).await;
            let _ = slow.await;
            shown
        } else {
            request(addr, host, row.path, row.send).await
        };
        table.push(describe(row, status, proxy_status, complete, &proxy, &logs).await);
    }
    let rendered = render(&table, addr, &faults);
    proxy.shutdown(Duration::from_secs(1)).await;
    faults.shutdown().await;
    Ok(rendered)
}

fn demo_config(rows: &[Row], faults: &Faults, dns: SocketAddr) -> Result<config::Config, BoxError> {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_request_body = \"64MiB\"\nrequest_body_timeout = \"300ms\"\n\
         [errors]\nexpose = \"detail\"\n[resolver]\nnameservers = [\"{dns}\"]\ntimeout = \"300ms\"\n"
    );
    for row in rows {
        if row.name == "unrouted" {
            continue;
        }
        let retry = if row.extra.contains("retry") {
            ""
        } else {
            "retry = { attempts = 1 }\n"
        };
        let _ = write!(
            text,
            "[upstreams.{name}]\nservers = [\"{server}\"]\n{extra}\n{retry}[[routes]]\nhost = \"{name}.demo\"\npath = \"/\"\nupstream = \"{name}\"\n",
            name = row.name,
            server = row.server,
            extra = row.extra,
        );
    }
    let tls = faults.tls.as_ref().ok_or("faults has no TLS listener")?;
    let text = text
        .replace("{faults}", &faults.http.to_string())
        .replace("{tls}", &tls.addr.to_string())
        .replace("{ca}", &tls.ca_file.display().to_string())
        .replace("{refused}", &faults.refused.to_string())
        .replace(
            "{missing}",
            &format!("unix:{}", faults.missing_socket.display()),
        )
        .replace("{backlog}", &faults.backlog_full.to_string())
        .replace(
            "{backlog_unix}",
            &format!("unix:{}", faults.backlog_full_unix.display()),
        );
    config::parse(&text, Path::new("demo.toml")).map_err(|e| format!("demo config: {e}").into())
}

/// Sends one request as a client would; returns status, Proxy-Status and whether the body
/// ended cleanly. A failure to get any response is status 0.
async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    send: How,
) -> (u16, Option<String>, bool) {
    match send {
        How::SlowClient => {
            let head = format!("POST {path} HTTP/1.1\r\nHost: {host}.demo\r\nContent-Length: 100\r\n\r\n0123456789");
            return raw(addr, &head).await;
        }
        How::Oversized => {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}.demo\r\nContent-Length: 200000000\r\n\r\n"
            );
            return raw(addr, &head).await;
        }
        _ => {}
    }
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .uri(path)
            .header("host", format!("{host}.demo"))
            .header("accept", "application/json");
        let body = match send {
            How::Post(size) => {
                builder = builder.method("POST");
                Bytes::from(vec![b'x'; size])
            }
            How::Looped => {
                builder = builder.header("via", "1.1 causeway");
                Bytes::new()
            }
            _ => Bytes::new(),
        };
        let response = sender
            .send_request(builder.body(Full::new(body)).ok()?)
            .await
            .ok()?;
        let status = response.status().as_u16();
        let proxy_status = response
            .headers()
            .get("proxy-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let complete = response.into_body().collect().await.is_ok();
        Some((status, proxy_status, complete))
    };
    if let How::Abandon = send {
        let _ = tokio::time::timeout(Duration::from_millis(300), attempt).await;
        return (499, None, false);
    }
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Some(result)) => result,
        _ => (0, None, false),
    }
}

/// Writes `head` on a raw connection and reads the status of the answer: for clients hyper's
/// own client would not imitate (slow, or lying about their body).
async fn raw(addr: SocketAddr, head: &str) -> (u16, Option<String>, bool) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, None, false);
    };
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (0, None, false);
    }
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    let n = match read {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    let text = String::from_utf8_lossy(&buf[..n]);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, None, true)
}

struct Line {
    request: String,
    status: String,
    cause: String,
    proxy_error: String,
    log: String,
}

async fn describe(
    row: &Row,
    status: u16,
    proxy_status: Option<String>,
    complete: bool,
    proxy: &Running,
    logs: &Arc<Mutex<Vec<u8>>>,
) -> Line {
    // The access-log line of this row's last request (its host is unique).
    let host = format!("\"host\":\"{}.demo\",\"path\":\"{}\"", row.name, row.path);
    let mut access = None;
    for _ in 0..50 {
        access = proxy
            .access
            .lines()
            .into_iter()
            .rev()
            .find(|l| l.contains(&host));
        if access.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let access: serde_json::Value = access
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
    let cause = access["cause"].as_str().unwrap_or("-").to_string();
    let request_id = access["request_id"].as_str().unwrap_or("").to_string();
    let attempts = access["attempts"].as_array().map_or(0, Vec::len);
    let warn = warn_sentence(logs, &request_id);
    let log = match (warn, cause.as_str()) {
        (Some(sentence), _) if attempts > 1 && cause == "-" => {
            format!("absorbed after {attempts} attempts: {sentence}")
        }
        (Some(sentence), _) => sentence,
        (None, "client_closed") => "client went away: logged 499, upstream not blamed".to_string(),
        (None, "-") => format!("upstream answered {}", access["upstream_status"]),
        (None, _) => access["cause"].to_string(),
    };
    let proxy_error = proxy_status
        .as_deref()
        .and_then(|v| v.split(';').find_map(|p| p.trim().strip_prefix("error=")))
        .unwrap_or("-")
        .to_string();
    let status = match (status, complete) {
        (0, _) => "none".to_string(),
        (code, false) if cause != "client_closed" && code != 499 => format!("{code} (cut)"),
        (code, _) => code.to_string(),
    };
    let method = match row.send {
        How::Post(_) | How::SlowClient | How::Oversized => "POST",
        _ => "GET",
    };
    Line {
        request: format!("{method} {}.demo{}", row.name, row.path),
        status,
        cause,
        proxy_error,
        log,
    }
}

/// The first WARN sentence logged for `request_id`, without the structured fields.
fn warn_sentence(logs: &Arc<Mutex<Vec<u8>>>, request_id: &str) -> Option<String> {
    if request_id.is_empty() {
        return None;
    }
    let text = logs
        .lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .ok()?;
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(request_id)).collect();
    let line = mine
        .iter()
        .rev()
        .find(|l| l.contains(" WARN "))
        .or_else(|| mine.iter().rev().find(|l| l.contains(" INFO ")))?;
    let level = if line.contains(" WARN ") {
        "WARN"
    } else {
        "INFO"
    };
    let message = line.split_once(level).map_or(*line, |(_, m)| m.trim());
    Some(
        message
            .split(" cause=")
            .next()
            .unwrap_or(message)
            .to_string(),
    )
}

fn render(lines: &[Line], addr: SocketAddr, faults: &Faults) -> String {
    let widths = [
        lines
            .iter()
            .map(|l| l.request.len())
            .max()
            .unwrap_or(0)
            .max(7),
        lines
            .iter()
            .map(|l| l.status.len())
            .max()
            .unwrap_or(0)
            .max(6),
        lines
            .iter()
            .map(|l| l.cause.len())
            .max()
            .unwrap_or(0)
            .max(5),
        lines
            .iter()
            .map(|l| l.proxy_error.len())
            .max()
            .unwrap_or(0)
            .max(18),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "causeway demo: proxy on {addr}, faults on {}, one request per failure\n",
        faults.http
    );
    let _ = writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  log",
        "request",
        "status",
        "cause",
        "Proxy-Status error",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3]
    );
    for line in lines {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            line.request,
            line.status,
            line.cause,
            line.proxy_error,
            line.log,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    out.push_str(
        "\nnot reproducible on one machine as root: connect_unreachable (needs a route-less network),\n\
         socket_permission_denied (root bypasses socket permissions), connect_failed (an unexpected errno);\n\
         their mapping is unit-tested in src/classify.rs.\n",
    );
    out
}

/// Sends INFO and above to a buffer the table reads from.
fn capture_error_log() -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || BufferWriter(writer.clone()))
        .with_ansi(false)
        .with_target(false)
        .with_env_filter("info")
        .try_init();
    buffer
}

struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
