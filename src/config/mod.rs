//! The validated configuration: types that cannot hold a wrong state.
//!
//! `raw.rs` mirrors the TOML file one to one (unknown keys rejected, spans kept) and
//! `recover.rs` reads it without stopping at the first error; `validate.rs` (with `upstream.rs`
//! and the value parsers of `units.rs`) turns it into a [`Config`] while collecting *every*
//! error as `file:line:col: message`, so `causeway check` can print them all at once. Loading
//! binds nothing, so `run`, `check`, reload and `diagnose` share it.

mod raw;
mod recover;
#[cfg(test)]
mod tests;
mod units;
mod upstream;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

use crate::cause::Cause;

pub use units::{parse_duration, parse_ip_net, parse_listen_addr, parse_server_addr, parse_size};

/// A whole causeway configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages and reload).
    pub source: PathBuf,
    pub server: Server,
    pub admin: Option<Admin>,
    pub log: Log,
    pub errors: Errors,
    pub resolver: Resolver,
    /// Upstream groups in file order; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// Routes in file order; `route` picks the longest matching prefix.
    pub routes: Vec<Route>,
}

/// `[server]`: the client-facing side.
#[derive(Clone, Debug)]
pub struct Server {
    pub listen: Vec<ListenAddr>,
    pub tls: Option<ServerTls>,
    /// Time a client has to send a complete request head; 408 after it.
    pub request_header_timeout: Duration,
    /// Idle gap allowed while a client sends a request body; 408 after it.
    pub request_body_timeout: Duration,
    pub max_request_header: usize,
    pub max_request_body: u64,
    pub shutdown_timeout: Duration,
    /// Peers whose incoming X-Forwarded-For / Forwarded / X-Request-Id values are trusted.
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded: ForwardedMode,
    /// Keep a sane incoming X-Request-Id (default true); false always generates one.
    pub trust_request_id: bool,
    /// Most client connections held at once per listener; beyond it new ones are closed.
    pub max_connections: usize,
    /// Worker threads serving connections, each with its own event loop and upstream
    /// connections (nginx's `worker_processes`). Already resolved: `0` in the file means one
    /// per CPU the process may run on.
    pub workers: usize,
}

/// A listen address: TCP or a unix socket path (`unix:/run/causeway.sock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Certificate and key for the HTTPS listener (PEM files).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An IP network for `trusted_proxies` (`10.0.0.0/8`, `::1`, `127.0.0.1/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Which forwarding headers causeway adds to requests it sends upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedMode {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` (default).
    Xff,
    /// RFC 7239 `Forwarded`.
    Rfc7239,
    Both,
    None,
}

/// `[admin]`: the metrics and status listener, off unless configured.
#[derive(Clone, Debug)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct Log {
    /// A tracing filter directive (`info`, `causeway=debug`).
    pub level: String,
    pub format: LogFormat,
    pub access_log: AccessLogTarget,
    pub access_format: AccessFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    Off,
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    Combined,
}

/// `[errors]`: what a client may learn about a failure.
#[derive(Clone, Debug)]
pub struct Errors {
    pub expose: Expose,
    pub proxy_status: bool,
    /// Custom error pages by status, already read from disk.
    pub pages: BTreeMap<u16, String>,
}

/// How much of a failure the client sees (DESIGN.md section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expose {
    /// Status line and request id only: for public edges.
    None,
    /// Status, cause and request id (default).
    Cause,
    /// Also the server address, the detail message and a fix hint.
    Detail,
}

/// `[resolver]`: DNS for upstream host names.
#[derive(Clone, Debug)]
pub struct Resolver {
    /// Empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Read /etc/hosts first (default true).
    pub hosts_file: bool,
}

/// `[upstreams.NAME]`: one group of interchangeable servers.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<ServerAddr>,
    pub protocol: Protocol,
    pub balance: Balance,
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub pool: Pool,
    pub health: Health,
    pub tls: UpstreamTls,
    /// Connections per server at most; excess requests wait up to `queue_timeout`.
    pub max_conns: Option<usize>,
    pub queue_timeout: Duration,
    /// Largest response head accepted from this upstream.
    pub max_response_header: usize,
    /// Present exactly when `protocol` is FastCGI.
    pub fastcgi: Option<FastCgi>,
}

/// An upstream server: `HOST:PORT`, `[V6]:PORT` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// A literal IP address: no DNS involved.
    Ip(SocketAddr),
    /// A host name resolved at connect time.
    Name {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

impl ServerAddr {
    /// Whether this is a unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, ServerAddr::Unix(_))
    }

    /// The host part used for SNI and the Host header default.
    pub fn host(&self) -> Option<String> {
        match self {
            ServerAddr::Ip(addr) => Some(addr.ip().to_string()),
            ServerAddr::Name { host, .. } => Some(host.clone()),
            ServerAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(addr) => write_socket_addr(addr, f),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Writes `addr` exactly as its `Display` does, IPv4 without the formatting machinery: std's
/// `Ipv4Addr` display supports padding and costs ~2,000 instructions, and the access log
/// writes two or three addresses per request (measured: a tenth of a logged request's cost).
pub fn write_socket_addr(addr: &SocketAddr, out: &mut impl fmt::Write) -> fmt::Result {
    let SocketAddr::V4(v4) = addr else {
        return write!(out, "{addr}");
    };
    let mut text = [0u8; 21]; // "255.255.255.255:65535"
    let mut len = 0;
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        len += copy_into(&mut text[len..], decimal(u64::from(octet), &mut [0; 20]));
    }
    text[len] = b':';
    len += 1;
    len += copy_into(
        &mut text[len..],
        decimal(u64::from(v4.port()), &mut [0; 20]),
    );
    out.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
}

fn copy_into(out: &mut [u8], bytes: &[u8]) -> usize {
    out[..bytes.len()].copy_from_slice(bytes);
    bytes.len()
}

/// The decimal digits of `n`, written at the end of `scratch`: numbers on the hot path
/// (addresses, ports, lengths) without the formatting machinery.
pub fn decimal(mut n: u64, scratch: &mut [u8; 20]) -> &[u8] {
    let mut at = scratch.len();
    loop {
        at -= 1;
        scratch[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &scratch[at..];
        }
    }
}

/// How causeway talks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// HTTP/2 with prior knowledge over cleartext.
    Http2,
    Https,
    /// HTTP/2 over TLS.
    Https2,
    FastCgi,
}

impl Protocol {
    /// Whether connecting involves a TLS handshake.
    pub fn uses_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Https2)
    }

    /// Whether requests go out as HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Https2)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
}

/// Per-phase timeouts (DESIGN.md section 1): each names what was slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// DNS + TCP/unix connect + TLS handshake.
    pub connect: Duration,
    /// Idle gap while sending the request body.
    pub write: Duration,
    /// From request sent to complete response head.
    pub header: Duration,
    /// Idle gap between response body chunks.
    pub read: Duration,
    pub total: Option<Duration>,
}

/// `retry = { attempts, on, budget, methods, max_replay_body }`.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Total tries including the first (1 = no retries).
    pub attempts: u32,
    pub on: Vec<Cause>,
    /// Extra attempts allowed as a ratio of first attempts (0.2 = 20 %).
    pub budget: f64,
    /// Methods that may be retried after the request was sent.
    pub methods: Vec<Method>,
    /// Request bodies up to this size are kept so they can be sent again.
    pub max_replay_body: usize,
}

/// `pool = { max_idle_per_server, idle_timeout }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
    /// Expire idle connections by the upstream's `Keep-Alive: timeout=N` (minus 1 s) and
    /// `max=M`. On by default; off only to reproduce the keep-alive race.
    pub honor_keep_alive: bool,
}

/// `health = { max_fails, fail_timeout, check }`.
#[derive(Clone, Debug)]
pub struct Health {
    /// Failures within `fail_timeout` that mark a server down (0 = never).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub check: Option<HealthCheck>,
}

/// Active health check: `check = { path, interval, expect_status }`.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub expect_status: u16,
}

/// `tls = { server_name, ca, verify }` for `https` upstreams.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    /// SNI and the name checked in the certificate; default: the server's host.
    pub server_name: Option<String>,
    /// Extra PEM CA file trusted besides the built-in roots.
    pub ca: Option<PathBuf>,
    /// `insecure_skip_verify = true` sets this to false (logged loudly).
    pub verify: bool,
}

/// `fastcgi = { root, index, try_files, keep_conn, params, front_controller }`.
#[derive(Clone, Debug)]
pub struct FastCgi {
    pub root: PathBuf,
    pub index: String,
    pub try_files: bool,
    pub keep_conn: bool,
    /// WordPress-style fallback: a missing script runs `index` instead of answering 404.
    pub front_controller: bool,
    pub params: Vec<(String, String)>,
    /// Chunked request bodies up to this size are spooled to learn CONTENT_LENGTH; 411 above.
    pub max_spool_body: u64,
}

/// `[[routes]]`: host (optional) + path prefix → upstream.
#[derive(Clone, Debug)]
pub struct Route {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
}

/// One configuration error, located in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// All the errors found in one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a config file. Binds nothing.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    parse(&text, path)
}

/// Validates config text as if it came from `path` (relative file names resolve against the
/// path's directory). Tests and `demo` build configs this way.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    validate::validate(text, path)
}
