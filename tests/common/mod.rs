//! Shared test harness: a `faults` upstream and a proxy in-process, a raw HTTP client, and
//! readers for the access log and the error log.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use causeway::config::AccessFormat;
use causeway::faults::{self, Faults, FaultsOptions};
use causeway::log::AccessLog;
use causeway::server::{self, Running};
use causeway::state::State;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A proxy in front of a faults server, both on loopback.
pub struct Harness {
    pub faults: Faults,
    pub proxy: Running,
    pub addr: SocketAddr,
    pub access: AccessLog,
}

/// Starts faults, then a proxy from `config`, where `{faults}`, `{tls}`, `{refused}`,
/// `{unix}`, `{missing}`, `{backlog}`, `{backlog_unix}` and `{ca}` are replaced by the faults
/// server's targets.
pub async fn start(config: &str) -> Harness {
    init_logs();
    let faults = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let text = fill(config, &faults);
    let proxy = start_proxy(&text).await;
    let addr = proxy.tcp_addr().expect("proxy listens on TCP");
    let access = proxy.access.clone();
    Harness {
        faults,
        proxy,
        addr,
        access,
    }
}

/// Starts only a proxy (for tests with their own scripted upstreams).
pub async fn start_proxy(config: &str) -> Running {
    init_logs();
    let text = if config.contains("[server]") {
        config.to_string()
    } else {
        format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{config}")
    };
    let config = causeway::config::parse(&text, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config is valid:\n{e}\n---\n{text}"));
    let state = State::build(config).expect("state builds");
    server::start(state, AccessLog::memory(AccessFormat::Json))
        .await
        .expect("proxy starts")
}

/// Replaces the `{...}` placeholders with the faults targets.
pub fn fill(config: &str, faults: &Faults) -> String {
    let tls = faults.tls.as_ref().expect("faults has a TLS listener");
    config
        .replace("{faults}", &faults.http.to_string())
        .replace("{tls}", &tls.addr.to_string())
        .replace("{ca}", &tls.ca_file.display().to_string())
        .replace("{refused}", &faults.refused.to_string())
        .replace("{unix}", &format!("unix:{}", faults.unix.display()))
        .replace(
            "{missing}",
            &format!("unix:{}", faults.missing_socket.display()),
        )
        .replace("{backlog}", &faults.backlog_full.to_string())
        .replace(
            "{backlog_unix}",
            &format!("unix:{}", faults.backlog_full_unix.display()),
        )
}

/// One config with a single upstream `u` at `server` and extra upstream keys.
pub fn single(server: &str, extra: &str) -> String {
    format!(
        "[upstreams.u]\nservers = [\"{server}\"]\n{extra}\n[[routes]]\npath = \"/\"\nupstream = \"u\"\n"
    )
}

/// What the client saw.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `Err` when the body did not end cleanly (connection aborted mid-body).
    pub body: Result<Bytes, String>,
}

impl Reply {
    /// The body as text (panics if it was incomplete).
    pub fn text(&self) -> String {
        match &self.body {
            Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Err(e) => panic!("body incomplete: {e}"),
        }
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text())
            .unwrap_or_else(|e| panic!("json body: {e}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("x-request-id on every response")
    }
}

/// Sends one request on a new HTTP/1.1 connection; any body (a stream goes chunked).
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("client handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await.expect("response head");
    let (parts, body) = response.into_parts();
    let body = match tokio::time::timeout(Duration::from_secs(20), body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("body timed out in the test client".to_string()),
    };
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A GET asking for a JSON error body.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = Request::get(path)
        .header("host", "test.local")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(addr, request).await
}

/// A request with a method and body.
pub async fn with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local")
        .header("accept", "application/json")
        .body(Full::new(body.into()))
        .expect("request");
    send(addr, request).await
}

/// The access-log line of `request_id`, waiting briefly for it to be written.
pub async fn access_line(access: &AccessLog, request_id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let lines: Vec<String> = access
            .lines()
            .into_iter()
            .filter(|l| l.contains(request_id))
            .collect();
        if let Some(line) = lines.first() {
            assert_eq!(
                lines.len(),
                1,
                "exactly one access-log line per request: {lines:?}"
            );
            return serde_json::from_str(line).expect("access log line is JSON");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no access-log line for {request_id}; have: {:#?}",
        access.lines()
    );
}

/// Error-log output captured from tracing.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

struct BufferWriter;

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = log_buffer().lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Routes tracing output into the buffer (once per test binary).
pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_writer(|| BufferWriter)
            .with_ansi(false)
            .with_env_filter("info")
            .try_init();
    });
}

/// Error-log lines that mention `needle`.
pub fn error_log_lines(needle: &str) -> Vec<String> {
    let logs = log_buffer().lock().map(|l| l.clone()).unwrap_or_default();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Asserts that a WARN line naming `cause` was logged for `request_id`.
pub fn assert_warned(request_id: &str, cause: &str) {
    let lines = error_log_lines(request_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains(&format!("cause={cause}"))),
        "no WARN line with cause={cause} for {request_id}: {lines:#?}"
    );
}
