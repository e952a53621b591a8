//! Raw TOML → [`Config`], collecting every error as `file:line:col: message`.
//!
//! Each check records its error and carries on with a harmless stand-in value, so one run of
//! `causeway check` lists every mistake; the config is returned only when there were none.
//! Files named in the config (TLS certificates, CA, error pages) must exist; relative names
//! resolve against the config file's directory. `fastcgi.root` is *not* checked: it is PHP-FPM's
//! view of the file system (often another container), and `causeway check` lints it apart.
//! Upstream groups are built in `upstream.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

use super::raw::{self, RawConfig, RawRoute, Text};
use super::recover::{self, RawError};
use super::units::{self, is_host_name};
use super::{
    upstream, AccessFormat, AccessLogTarget, Admin, Config, ConfigError, ConfigErrors, Errors,
    Expose, ForwardedMode, ListenAddr, Log, LogFormat, Resolver, Route, Server, ServerTls,
    Upstream,
};

/// Validates config text as if read from `path`.
pub(super) fn validate(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let (raw, errors) = recover::parse(text);
    let mut ctx = Ctx::new(text, path, errors);
    let config = raw.map(|raw| build(&mut ctx, raw, path));
    match config {
        Some(config) if ctx.errors.is_empty() => Ok(config),
        _ => Err(ctx.finish(path)),
    }
}

fn build(ctx: &mut Ctx<'_>, raw: RawConfig, path: &Path) -> Config {
    let server = server(ctx, &raw.server);
    let admin = raw.admin.map(|admin| Admin {
        listen: ctx.tcp_listen(&admin.listen, "admin.listen"),
    });
    let log = log(ctx, &raw.log);
    let errors = errors(ctx, &raw.errors);
    let resolver = resolver(ctx, &raw.resolver);
    let mut upstreams: Vec<_> = raw.upstreams.iter().collect();
    upstreams.sort_by_key(|(name, _)| name.span().start);
    let upstreams: Vec<Upstream> = upstreams
        .into_iter()
        .map(|(name, up)| upstream::upstream(ctx, name, up))
        .collect();
    let routes = routes(ctx, &raw.routes, &upstreams);
    Config {
        source: path.to_path_buf(),
        server,
        admin,
        log,
        errors,
        resolver,
        upstreams,
        routes,
    }
}

fn server(ctx: &mut Ctx<'_>, raw: &raw::RawServer) -> Server {
    if raw.listen.get_ref().is_empty() {
        ctx.error(
            raw.listen.span(),
            "server.listen: empty; give at least one address, e.g. [\"127.0.0.1:8080\"]",
        );
    }
    let listen = raw
        .listen
        .get_ref()
        .iter()
        .filter_map(|addr| ctx.parse(addr, "server.listen", units::parse_listen_addr))
        .collect();
    let tls = raw.tls.as_ref().map(|tls| ServerTls {
        cert: ctx.existing_file(&tls.cert, "server.tls.cert"),
        key: ctx.existing_file(&tls.key, "server.tls.key"),
    });
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .filter_map(|net| ctx.parse(net, "server.trusted_proxies", units::parse_ip_net))
        .collect();
    let forwarded = ctx.choice(
        &raw.forwarded,
        "server.forwarded",
        &[
            ("xff", ForwardedMode::Xff),
            ("rfc7239", ForwardedMode::Rfc7239),
            ("both", ForwardedMode::Both),
            ("none", ForwardedMode::None),
        ],
    );
    if *raw.max_connections.get_ref() == 0 {
        ctx.error(
            raw.max_connections.span(),
            "server.max_connections: must be at least 1",
        );
    }
    let workers = match *raw.workers.get_ref() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > MAX_WORKERS => {
            ctx.error(
                raw.workers.span(),
                format!("server.workers: {n} is more than {MAX_WORKERS}; use 0 for one per CPU"),
            );
            1
        }
        n => n,
    };
    Server {
        listen,
        tls,
        request_header_timeout: ctx
            .timeout(&raw.request_header_timeout, "server.request_header_timeout"),
        request_body_timeout: ctx.timeout(&raw.request_body_timeout, "server.request_body_timeout"),
        max_request_header: ctx.size_usize(&raw.max_request_header, "server.max_request_header"),
        max_request_body: ctx.size(&raw.max_request_body, "server.max_request_body"),
        shutdown_timeout: ctx.duration(&raw.shutdown_timeout, "server.shutdown_timeout"),
        trusted_proxies,
        forwarded: forwarded.unwrap_or(ForwardedMode::Xff),
        trust_request_id: raw.trust_request_id,
        max_connections: *raw.max_connections.get_ref(),
        workers,
    }
}

fn log(ctx: &mut Ctx<'_>, raw: &raw::RawLog) -> Log {
    let level = raw.level.get_ref();
    let levels = ["error", "warn", "info", "debug", "trace", "off"];
    if level.contains(['=', ',']) {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
            ctx.error(
                raw.level.span(),
                format!("log.level: invalid filter \"{level}\": {e}"),
            );
        }
    } else if !levels.contains(&level.to_ascii_lowercase().as_str()) {
        ctx.error(
            raw.level.span(),
            format!(
                "log.level: unknown level \"{level}\"; expected one of: {}, or directives like \
                 \"info,causeway=debug\"",
                levels.join(", ")
            ),
        );
    }
    let format = ctx.choice(
        &raw.format,
        "log.format",
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let access_log = match raw.access_log.get_ref().as_str() {
        "stdout" => AccessLogTarget::Stdout,
        "stderr" => AccessLogTarget::Stderr,
        "off" => AccessLogTarget::Off,
        "" => {
            ctx.error(
                raw.access_log.span(),
                "log.access_log: empty; use \"stdout\", \"stderr\", \"off\" or a file path",
            );
            AccessLogTarget::Off
        }
        file => AccessLogTarget::File(ctx.resolve(file)),
    };
    let access_format = ctx.choice(
        &raw.access_format,
        "log.access_format",
        &[
            ("json", AccessFormat::Json),
            ("combined", AccessFormat::Combined),
        ],
    );
    Log {
        level: level.clone(),
        format: format.unwrap_or(LogFormat::Text),
        access_log,
        access_format: access_format.unwrap_or(AccessFormat::Json),
    }
}

fn errors(ctx: &mut Ctx<'_>, raw: &raw::RawErrors) -> Errors {
    let expose = ctx.choice(
        &raw.expose,
        "errors.expose",
        &[
            ("detail", Expose::Detail),
            ("cause", Expose::Cause),
            ("none", Expose::None),
        ],
    );
    let mut pages = BTreeMap::new();
    for (status, file) in &raw.pages {
        let code = status
            .get_ref()
            .parse::<u16>()
            .ok()
            .filter(|code| (400..=599).contains(code));
        let Some(code) = code else {
            ctx.error(
                status.span(),
                format!(
                    "errors.pages: \"{}\" is not an error status; keys are status codes from 400 \
                     to 599, e.g. 502 = \"errors/502.html\"",
                    status.get_ref()
                ),
            );
            continue;
        };
        let key = format!("errors.pages.{code}");
        if let Some(page) = ctx.read_file(file, &key) {
            pages.insert(code, page);
        }
    }
    Errors {
        expose: expose.unwrap_or(Expose::Cause),
        proxy_status: raw.proxy_status,
        pages,
    }
}

fn resolver(ctx: &mut Ctx<'_>, raw: &raw::RawResolver) -> Resolver {
    let nameservers = raw
        .nameservers
        .iter()
        .filter_map(|ns| {
            ctx.parse(ns, "resolver.nameservers", |text| {
                text.parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!(
                            "invalid nameserver \"{text}\": expected an IP address with an \
                             optional port, e.g. \"127.0.0.1:5353\" or \"1.1.1.1\""
                        )
                    })
            })
        })
        .collect();
    Resolver {
        nameservers,
        timeout: ctx.timeout(&raw.timeout, "resolver.timeout"),
        hosts_file: raw.hosts_file,
    }
}

fn routes(ctx: &mut Ctx<'_>, raw: &[Spanned<RawRoute>], upstreams: &[Upstream]) -> Vec<Route> {
    let mut routes = Vec::new();
    // (host, path) → the path's span in the first route that has it.
    let mut seen: HashMap<(Option<String>, String), Range<usize>> = HashMap::new();
    for route in raw {
        let route = route.get_ref();
        // No index: line and column say which route.
        let key = "routes";
        let path = route.path.get_ref();
        if !path.starts_with('/') {
            ctx.error(
                route.path.span(),
                format!("{key}.path: \"{path}\" must start with \"/\", e.g. \"/{path}\""),
            );
        }
        // `Err` when the host is invalid (already reported).
        let host = match &route.host {
            Some(raw_host) => route_host(ctx, raw_host, key).map(Some).ok_or(()),
            None => Ok(None),
        };
        let upstream = upstreams
            .iter()
            .position(|up| up.name == *route.upstream.get_ref());
        if upstream.is_none() {
            let defined: Vec<&str> = upstreams.iter().map(|up| up.name.as_str()).collect();
            let defined = if defined.is_empty() {
                "no upstreams are defined".to_owned()
            } else {
                format!("defined upstreams: {}", defined.join(", "))
            };
            ctx.error(
                route.upstream.span(),
                format!(
                    "{key}.upstream: no upstream named \"{}\"; {defined}",
                    route.upstream.get_ref()
                ),
            );
        }
        // A route whose host is invalid is not compared: "any host" would be a false match.
        let Ok(host) = host else { continue };
        let id = (host.clone(), path.clone());
        if let Some(first) = seen.get(&id) {
            let (line, col) = ctx.locate(first.start);
            let host_text = match &host {
                Some(host) => format!("host \"{host}\""),
                None => "any host".to_owned(),
            };
            ctx.error(
                route.path.span(),
                format!(
                    "{key}: duplicate route: path \"{path}\" for {host_text} is already routed \
                     at line {line}:{col}"
                ),
            );
        } else {
            seen.insert(id, route.path.span());
        }
        routes.push(Route {
            host,
            path: path.clone(),
            upstream: upstream.unwrap_or(0),
        });
    }
    routes
}

/// A route's host, lower-cased and without a port (`Example.COM:8080` → `example.com`); IPv6
/// literals keep their brackets, as in a Host header.
fn route_host(ctx: &mut Ctx<'_>, raw: &Text, key: &str) -> Option<String> {
    let text = raw.get_ref().to_ascii_lowercase();
    let host = if text.starts_with('[') {
        match text.split_once(']') {
            Some((v6, _)) if v6[1..].parse::<std::net::Ipv6Addr>().is_ok() => format!("{v6}]"),
            _ => String::new(),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
            _ => text.clone(),
        }
    };
    let valid = host.starts_with('[') || host.parse::<IpAddr>().is_ok() || is_host_name(&host);
    if valid {
        return Some(host.trim_end_matches('.').to_owned());
    }
    let why = if text.contains('*') {
        "wildcards are not supported; add one route per host"
    } else {
        "expected a host name or IP address, e.g. \"example.com\""
    };
    ctx.error(
        raw.span(),
        format!("{key}.host: invalid host \"{}\": {why}", raw.get_ref()),
    );
    None
}

/// The error list being built and what is needed to phrase and locate errors.
pub(super) struct Ctx<'a> {
    text: &'a str,
    /// Relative file names in the config resolve against this directory.
    dir: PathBuf,
    errors: Vec<RawError>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, path: &Path, errors: Vec<RawError>) -> Self {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Absolute, so a later change of working directory cannot move the files.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Ctx { text, dir, errors }
    }

    /// Records an error at `span` (byte offsets into the file).
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(RawError {
            span,
            message: message.into(),
        });
    }

    /// Turns the collected errors into `file:line:col` errors in file order.
    fn finish(mut self, path: &Path) -> ConfigErrors {
        self.errors.sort_by_key(|e| e.span.start);
        self.errors.dedup();
        let errors = self
            .errors
            .iter()
            .map(|e| {
                let (line, col) = self.locate(e.span.start);
                ConfigError {
                    file: path.to_path_buf(),
                    line,
                    col,
                    message: e.message.clone(),
                }
            })
            .collect();
        ConfigErrors(errors)
    }

    /// 1-based line and column (in characters, as editors count) of a byte offset.
    pub(super) fn locate(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// Runs a parser from `units` on a value; on failure records `key: message`.
    pub(super) fn parse<T>(
        &mut self,
        value: &Text,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.error(value.span(), format!("{key}: {message}"));
                None
            }
        }
    }

    /// A duration; zero allowed (it means "not at all", e.g. no idle pooling).
    pub(super) fn duration(&mut self, value: &Text, key: &str) -> Duration {
        self.parse(value, key, units::parse_duration)
            .unwrap_or_default()
    }

    /// A duration that is a deadline: zero would fail every request, so it is refused.
    pub(super) fn timeout(&mut self, value: &Text, key: &str) -> Duration {
        self.try_timeout(value, key)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Like [`Ctx::timeout`], but `None` after an error, so comparisons with other timeouts
    /// are skipped instead of made against a stand-in value.
    pub(super) fn try_timeout(&mut self, value: &Text, key: &str) -> Option<Duration> {
        let duration = self.parse(value, key, units::parse_duration)?;
        if duration.is_zero() {
            self.error(
                value.span(),
                format!("{key}: must be longer than 0, or every request would time out"),
            );
            return None;
        }
        Some(duration)
    }

    /// A size in bytes.
    pub(super) fn size(&mut self, value: &Text, key: &str) -> u64 {
        self.parse(value, key, units::parse_size)
            .unwrap_or_default()
    }

    /// A size that must fit in memory as a `usize`.
    pub(super) fn size_usize(&mut self, value: &Text, key: &str) -> usize {
        self.parse(value, key, |text| {
            units::parse_size(text).and_then(|n| {
                usize::try_from(n).map_err(|_| format!("invalid size \"{text}\": too large"))
            })
        })
        .unwrap_or_default()
    }

    /// One of a fixed set of names; an unknown one is reported with the valid ones.
    pub(super) fn choice<T: Copy>(
        &mut self,
        value: &Text,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == value.get_ref())
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            self.error(
                value.span(),
                format!(
                    "{key}: unknown value \"{}\"; expected one of: {}",
                    value.get_ref(),
                    names.join(", ")
                ),
            );
        }
        found
    }

    /// A TCP listen address (the admin listener has no unix form).
    fn tcp_listen(&mut self, value: &Text, key: &str) -> SocketAddr {
        let addr = self.parse(value, key, |text| match units::parse_listen_addr(text)? {
            ListenAddr::Tcp(addr) => Ok(addr),
            ListenAddr::Unix(_) => Err(format!(
                "invalid listen address \"{text}\": must be IP:PORT, e.g. \"127.0.0.1:9901\""
            )),
        });
        addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// `name` resolved against the config file's directory (absolute names stay as they are).
    pub(super) fn resolve(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file that must exist now (certificates, CA bundles): resolved, then checked.
    pub(super) fn existing_file(&mut self, value: &Text, key: &str) -> PathBuf {
        let path = self.resolve(value.get_ref());
        let problem = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => None,
            Ok(_) => Some("not a regular file".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            self.file_error(value, key, &path, &problem);
        }
        path
    }

    /// Reads a text file now (error pages are served from memory).
    fn read_file(&mut self, value: &Text, key: &str) -> Option<String> {
        let path = self.resolve(value.get_ref());
        // Error pages live in memory: a regular file of sane size only (`/dev/zero` or a
        // FIFO would hang the loader).
        const MAX_PAGE: u64 = 1024 * 1024;
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                self.file_error(value, key, &path, "not a regular file");
                return None;
            }
            Ok(meta) if meta.len() > MAX_PAGE => {
                self.file_error(value, key, &path, "larger than 1 MiB");
                return None;
            }
            _ => {}
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                self.file_error(value, key, &path, &e.to_string());
                None
            }
        }
    }

    /// Records that a named file is unusable, showing where a relative name led.
    fn file_error(&mut self, value: &Text, key: &str, path: &Path, problem: &str) {
        let name = value.get_ref();
        let resolved = if Path::new(name).is_absolute() {
            String::new()
        } else {
            format!(" (resolved to {})", path.display())
        };
        self.error(
            value.span(),
            format!("{key}: cannot read \"{name}\"{resolved}: {problem}"),
        );
    }
}
