//! The TOML file one to one: every table and key of DESIGN.md section 3, nothing more.
//!
//! Unknown keys are refused (`deny_unknown_fields`), leaves that `validate` may still reject
//! keep their span (`Spanned`), and defaults are named functions so the defaults read like the
//! file. [`parse`] also turns serde's stop-at-first-error into a list of every error: see there.
//! Nothing here checks meaning; that is `validate`'s job.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};
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

/// An error found while reading the file, located by byte span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawError {
    pub span: Range<usize>,
    pub message: String,
}

/// Reads the TOML text into a [`RawConfig`], collecting every error instead of the first.
///
/// Syntax errors come from toml's recovering parser, all at once; when there are any, the
/// document is not read further (a damaged tree would produce misleading errors) and `None` is
/// returned. Otherwise serde reads the tree; when it fails (an unknown key, a value of the wrong
/// type, a missing required key), the offending key or value is located by the error's span,
/// recorded, removed from the tree, and serde runs again. Each round removes one node, so this
/// ends; the raw config is then complete apart from the removed parts, and `validate` can go on
/// to report meaning errors in the same run.
pub(crate) fn parse(text: &str) -> (Option<RawConfig>, Vec<RawError>) {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let errors = syntax
            .into_iter()
            .map(|e| RawError {
                span: e.span().unwrap_or(0..0),
                message: e.message().trim_end().to_owned(),
            })
            .collect();
        return (None, errors);
    }
    let mut errors = Vec::new();
    loop {
        let error = match RawConfig::deserialize(Deserializer::from(doc.clone())) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let message = error.message().trim_end().to_owned();
        let span = error.span().unwrap_or(0..0);
        match prune_table(doc.get_mut(), &span, "") {
            Some(Pruned::Key { table }) if table.is_empty() => {
                errors.push(RawError { span, message });
            }
            Some(Pruned::Key { table }) | Some(Pruned::Value { key: table }) => {
                errors.push(RawError {
                    span,
                    message: format!("{table}: {message}"),
                });
            }
            None => {
                // Nothing to remove means nothing would change on the next round.
                errors.push(RawError { span, message });
                return (None, errors);
            }
        }
    }
}

/// What [`prune_table`] removed, named by its dotted path for the error message.
enum Pruned {
    /// A key that should not be there, in the table at this path ("" for the top level).
    Key { table: String },
    /// The value at this path.
    Value { key: String },
}

/// Removes the node of `table` that `span` points into: a key itself, else the innermost
/// array element or key/value pair whose value contains it.
fn prune_table(table: &mut DeTable<'_>, span: &Range<usize>, path: &str) -> Option<Pruned> {
    let mut doomed = None;
    for (key, value) in table.iter_mut() {
        let key_path = join(path, key.get_ref().as_ref());
        if contains(&key.span(), span) {
            doomed = Some((key.get_ref().to_string(), path.to_owned(), true));
            break;
        }
        if let Some(found) = prune_value(value, span, &key_path) {
            return Some(found);
        }
        if contains(&value.span(), span) {
            doomed = Some((key.get_ref().to_string(), key_path, false));
            break;
        }
    }
    let (key, where_, is_key) = doomed?;
    table.remove(key.as_str());
    Some(if is_key {
        Pruned::Key { table: where_ }
    } else {
        Pruned::Value { key: where_ }
    })
}

/// Looks for `span` inside a table or array value and removes what it points into there.
fn prune_value(
    value: &mut Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &str,
) -> Option<Pruned> {
    match value.get_mut() {
        DeValue::Table(inner) => prune_table(inner, span, path),
        DeValue::Array(items) => prune_array(items, span, path),
        _ => None,
    }
}

/// Like [`prune_table`] for an array: descends into elements, else drops the element hit.
fn prune_array(items: &mut DeArray<'_>, span: &Range<usize>, path: &str) -> Option<Pruned> {
    let mut doomed = None;
    for (i, item) in items.iter_mut().enumerate() {
        // No index in the path: after an earlier element was pruned it would be wrong, and the
        // line and column already say which element.
        let item_path = path.to_owned();
        if let Some(found) = prune_value(item, span, &item_path) {
            return Some(found);
        }
        if contains(&item.span(), span) {
            doomed = Some((i, item_path));
            break;
        }
    }
    let (index, item_path) = doomed?;
    let kept: DeArray<'_> = std::mem::replace(items, DeArray::new())
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, item)| item)
        .collect();
    *items = kept;
    Some(Pruned::Value { key: item_path })
}

/// `outer` contains `inner` (an empty `inner` at `outer`'s end counts: toml points past the
/// last character for some errors).
fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// `a.b` path for messages; keys that are not bare are quoted, as TOML would need.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}
