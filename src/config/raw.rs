//! The TOML file one to one: every table and key of DESIGN.md section 3, nothing more.
//!
//! Unknown keys are refused (`deny_unknown_fields`), leaves that `validate` may still reject
//! keep their span (`Spanned`), and defaults are named functions so the defaults read like the
//! file. `recover.rs` reads the file into these types; `validate.rs` checks what they mean.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value with its position, for values `validate` parses further.
pub(crate) type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub errors: RawErrors,
    #[serde(default)]
    pub resolver: RawResolver,
    /// Keys keep their span: file order and "defined upstreams" messages come from it.
    #[serde(default)]
    pub upstreams: BTreeMap<Text, Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: Spanned<Vec<Text>>,
    #[serde(default)]
    pub tls: Option<RawServerTls>,
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: Text,
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: Text,
    #[serde(default = "default_max_header")]
    pub max_request_header: Text,
    #[serde(default = "default_max_request_body")]
    pub max_request_body: Text,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Text,
    #[serde(default)]
    pub trusted_proxies: Vec<Text>,
    #[serde(default = "default_forwarded")]
    pub forwarded: Text,
    #[serde(default = "yes")]
    pub trust_request_id: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    #[serde(default = "default_workers")]
    pub workers: Spanned<usize>,
}

/// `[server] tls = { cert, key }`: both are required, so serde reports a missing one.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { cert = \"cert.pem\", key = \"key.pem\" }"
)]
pub(crate) struct RawServerTls {
    pub cert: Text,
    pub key: Text,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: Text,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLog {
    #[serde(default = "default_level")]
    pub level: Text,
    #[serde(default = "default_log_format")]
    pub format: Text,
    #[serde(default = "default_access_log")]
    pub access_log: Text,
    #[serde(default = "default_access_format")]
    pub access_format: Text,
}

/// `[errors]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawErrors {
    #[serde(default = "default_expose")]
    pub expose: Text,
    #[serde(default = "yes")]
    pub proxy_status: bool,
    /// Status code (a TOML key, so a string) → page file.
    #[serde(default)]
    pub pages: BTreeMap<Text, Text>,
}

/// `[resolver]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawResolver {
    #[serde(default)]
    pub nameservers: Vec<Text>,
    #[serde(default = "default_resolver_timeout")]
    pub timeout: Text,
    #[serde(default = "yes")]
    pub hosts_file: bool,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawUpstream {
    /// Optional here so a missing list is reported by `validate` ("has no servers") instead of
    /// dropping the whole upstream and making every route to it look undefined.
    #[serde(default)]
    pub servers: Option<Spanned<Vec<Text>>>,
    #[serde(default = "default_protocol")]
    pub protocol: Text,
    #[serde(default = "default_balance")]
    pub balance: Text,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub tls: Option<Spanned<RawUpstreamTls>>,
    #[serde(default)]
    pub max_conns: Option<Spanned<usize>>,
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Text,
    #[serde(default = "default_max_header")]
    pub max_response_header: Text,
    #[serde(default)]
    pub fastcgi: Option<Spanned<RawFastCgi>>,
}

/// `timeouts = { connect, write, header, read, total }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { connect = \"3s\", header = \"30s\" }"
)]
pub(crate) struct RawTimeouts {
    #[serde(default = "default_connect_timeout")]
    pub connect: Text,
    #[serde(default = "default_io_timeout")]
    pub write: Text,
    #[serde(default = "default_io_timeout")]
    pub header: Text,
    #[serde(default = "default_io_timeout")]
    pub read: Text,
    #[serde(default)]
    pub total: Option<Text>,
}

/// `retry = { attempts, on, budget, methods, max_replay_body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like { attempts = 2 }")]
pub(crate) struct RawRetry {
    #[serde(default = "default_attempts")]
    pub attempts: Spanned<u32>,
    #[serde(default = "default_retry_on")]
    pub on: Vec<Text>,
    #[serde(default = "default_budget")]
    pub budget: Spanned<f64>,
    #[serde(default = "default_retry_methods")]
    pub methods: Vec<Text>,
    #[serde(default = "default_max_replay_body")]
    pub max_replay_body: Text,
}

/// `pool = { max_idle_per_server, idle_timeout }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { idle_timeout = \"4s\" }"
)]
pub(crate) struct RawPool {
    #[serde(default = "default_max_idle_per_server")]
    pub max_idle_per_server: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Text,
    #[serde(default = "default_true")]
    pub honor_keep_alive: bool,
}

/// `health = { max_fails, fail_timeout, check }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table like { max_fails = 3 }")]
pub(crate) struct RawHealth {
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Text,
    #[serde(default)]
    pub check: Option<RawHealthCheck>,
}

/// `check = { path, interval, expect_status }`: a check without a path is meaningless, so serde
/// requires it.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { path = \"/healthz\" }"
)]
pub(crate) struct RawHealthCheck {
    pub path: Text,
    #[serde(default = "default_check_interval")]
    pub interval: Text,
    #[serde(default = "default_expect_status")]
    pub expect_status: Spanned<u16>,
}

/// `tls = { server_name, ca, verify, insecure_skip_verify }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { server_name = \"api.internal\" }"
)]
pub(crate) struct RawUpstreamTls {
    #[serde(default)]
    pub server_name: Option<Text>,
    #[serde(default)]
    pub ca: Option<Text>,
    /// `None` when absent, so `verify = true` beside `insecure_skip_verify = true` can be
    /// reported as the contradiction it is.
    #[serde(default)]
    pub verify: Option<Spanned<bool>>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `fastcgi = { root, index, try_files, keep_conn, front_controller, params, max_spool_body }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { root = \"/var/www/html\" }"
)]
pub(crate) struct RawFastCgi {
    /// Optional here so `validate` can say "fastcgi needs a root" without losing the table.
    #[serde(default)]
    pub root: Option<Text>,
    #[serde(default = "default_index")]
    pub index: Text,
    #[serde(default = "yes")]
    pub try_files: bool,
    #[serde(default)]
    pub keep_conn: bool,
    #[serde(default)]
    pub front_controller: bool,
    #[serde(default)]
    pub params: BTreeMap<Text, String>,
    #[serde(default = "default_max_spool_body")]
    pub max_spool_body: Text,
}

/// `[[routes]]`: a route without a path or an upstream means nothing, so both are required.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { path = \"/\", upstream = \"app\" }"
)]
pub(crate) struct RawRoute {
    pub path: Text,
    #[serde(default)]
    pub host: Option<Text>,
    pub upstream: Text,
}

/// A default value: it has no place in the file, so its span is empty.
fn text(value: &str) -> Text {
    Spanned::new(0..0, value.to_owned())
}

fn yes() -> bool {
    true
}
fn default_listen() -> Spanned<Vec<Text>> {
    Spanned::new(0..0, vec![text("127.0.0.1:8080")])
}
fn default_request_header_timeout() -> Text {
    text("10s")
}
fn default_request_body_timeout() -> Text {
    text("60s")
}
/// Request and response heads alike.
fn default_max_header() -> Text {
    text("64KiB")
}
fn default_max_request_body() -> Text {
    text("100MiB")
}
fn default_shutdown_timeout() -> Text {
    text("30s")
}
fn default_forwarded() -> Text {
    text("xff")
}
fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}
fn default_workers() -> Spanned<usize> {
    Spanned::new(0..0, 0)
}
fn default_admin_listen() -> Text {
    text("127.0.0.1:9901")
}
fn default_level() -> Text {
    text("info")
}
fn default_log_format() -> Text {
    text("text")
}
fn default_access_log() -> Text {
    text("stdout")
}
fn default_access_format() -> Text {
    text("json")
}
fn default_expose() -> Text {
    text("cause")
}
fn default_resolver_timeout() -> Text {
    text("2s")
}
fn default_protocol() -> Text {
    text("http")
}
fn default_balance() -> Text {
    text("round_robin")
}
fn default_queue_timeout() -> Text {
    text("1s")
}
fn default_connect_timeout() -> Text {
    text("3s")
}
/// `write`, `header` and `read`.
fn default_io_timeout() -> Text {
    text("30s")
}
fn default_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
/// Only failures where the upstream cannot have acted on the request.
fn default_retry_on() -> Vec<Text> {
    ["connect_refused", "connect_timeout", "stale_connection"]
        .into_iter()
        .map(text)
        .collect()
}
fn default_budget() -> Spanned<f64> {
    Spanned::new(0..0, 0.2)
}
/// The idempotent methods of RFC 9110 section 9.2.2.
fn default_retry_methods() -> Vec<Text> {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .into_iter()
        .map(text)
        .collect()
}
fn default_max_replay_body() -> Text {
    text("64KiB")
}
fn default_max_idle_per_server() -> usize {
    64
}
/// Below Node's 5 s `keepAliveTimeout`, so causeway closes an idle connection first.
fn default_idle_timeout() -> Text {
    text("4s")
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> Text {
    text("10s")
}
fn default_check_interval() -> Text {
    text("5s")
}
fn default_expect_status() -> Spanned<u16> {
    Spanned::new(0..0, 200)
}
fn default_index() -> Text {
    text("index.php")
}
fn default_max_spool_body() -> Text {
    text("10MiB")
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            tls: None,
            request_header_timeout: default_request_header_timeout(),
            request_body_timeout: default_request_body_timeout(),
            max_request_header: default_max_header(),
            max_request_body: default_max_request_body(),
            shutdown_timeout: default_shutdown_timeout(),
            trusted_proxies: Vec::new(),
            forwarded: default_forwarded(),
            trust_request_id: yes(),
            max_connections: default_max_connections(),
            workers: default_workers(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: default_level(),
            format: default_log_format(),
            access_log: default_access_log(),
            access_format: default_access_format(),
        }
    }
}

impl Default for RawErrors {
    fn default() -> Self {
        RawErrors {
            expose: default_expose(),
            proxy_status: yes(),
            pages: BTreeMap::new(),
        }
    }
}

impl Default for RawResolver {
    fn default() -> Self {
        RawResolver {
            nameservers: Vec::new(),
            timeout: default_resolver_timeout(),
            hosts_file: yes(),
        }
    }
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: default_connect_timeout(),
            write: default_io_timeout(),
            header: default_io_timeout(),
            read: default_io_timeout(),
            total: None,
        }
    }
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            attempts: default_attempts(),
            on: default_retry_on(),
            budget: default_budget(),
            methods: default_retry_methods(),
            max_replay_body: default_max_replay_body(),
        }
    }
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            max_idle_per_server: default_max_idle_per_server(),
            idle_timeout: default_idle_timeout(),
            honor_keep_alive: true,
        }
    }
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            max_fails: default_max_fails(),
            fail_timeout: default_fail_timeout(),
            check: None,
        }
    }
}

fn default_true() -> bool {
    true
}
