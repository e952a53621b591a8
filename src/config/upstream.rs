//! Validation of one `[upstreams.NAME]` table into an [`Upstream`].
//!
//! Part of `validate`: errors go to the same [`Ctx`], keyed `upstreams.NAME.…`. Checks that
//! depend on the protocol (TLS settings, the FastCGI table) are skipped when the protocol itself
//! is invalid, so one typo does not produce a cascade of errors.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::raw::{RawFastCgi, RawHealth, RawRetry, RawTimeouts, RawUpstream, RawUpstreamTls, Text};
use super::units::{self, is_host_name};
use super::validate::Ctx;
use super::{
    Balance, FastCgi, Health, HealthCheck, Pool, Protocol, Retry, ServerAddr, Timeouts, Upstream,
    UpstreamTls,
};
use crate::cause::{Cause, Phase};

/// The methods `retry.methods` accepts: RFC 9110's, case-sensitive as on the wire.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Builds one upstream group, recording every error in `ctx`.
pub(super) fn upstream(ctx: &mut Ctx<'_>, name: &Text, raw: &Spanned<RawUpstream>) -> Upstream {
    let key = upstream_key(name.get_ref());
    if !valid_name(name.get_ref()) {
        ctx.error(
            name.span(),
            format!(
                "{key}: invalid upstream name \"{}\": use letters, digits, \"_\", \"-\" and \".\" \
                 only (it appears in logs, metrics and Proxy-Status)",
                name.get_ref()
            ),
        );
    }
    let raw = raw.get_ref();
    let servers = servers(ctx, name, raw, &key);
    let protocol = ctx.choice(
        &raw.protocol,
        &format!("{key}.protocol"),
        &[
            ("http", Protocol::Http),
            ("http2", Protocol::Http2),
            ("https", Protocol::Https),
            ("https2", Protocol::Https2),
            ("fastcgi", Protocol::FastCgi),
        ],
    );
    let balance = ctx.choice(
        &raw.balance,
        &format!("{key}.balance"),
        &[
            ("round_robin", Balance::RoundRobin),
            ("least_conn", Balance::LeastConn),
        ],
    );
    let tls = match (&raw.tls, protocol) {
        (Some(tls), Some(protocol)) if !protocol.uses_tls() => {
            ctx.error(
                tls.span(),
                format!(
                    "{key}.tls: protocol \"{}\" does not use TLS; set protocol = \"https\" or \
                     remove tls",
                    raw.protocol.get_ref()
                ),
            );
            None
        }
        (Some(tls), _) => Some(upstream_tls(ctx, tls, &key)),
        (None, _) => None,
    };
    let fastcgi = match (&raw.fastcgi, protocol) {
        (Some(fastcgi), Some(protocol)) if protocol != Protocol::FastCgi => {
            ctx.error(
                fastcgi.span(),
                format!(
                    "{key}.fastcgi: only for protocol = \"fastcgi\" (this upstream is \"{}\")",
                    raw.protocol.get_ref()
                ),
            );
            None
        }
        (Some(fastcgi), _) => fastcgi_table(ctx, fastcgi, &key),
        (None, Some(Protocol::FastCgi)) => {
            ctx.error(
                raw.protocol.span(),
                format!(
                    "{key}: protocol \"fastcgi\" needs a document root: add \
                     fastcgi = {{ root = \"/var/www/html\" }}"
                ),
            );
            None
        }
        (None, _) => None,
    };
    let max_conns = raw.max_conns.as_ref().map(|max| {
        if *max.get_ref() == 0 {
            ctx.error(
                max.span(),
                format!("{key}.max_conns: must be at least 1 (leave it out for no limit)"),
            );
        }
        *max.get_ref()
    });
    if let (Some(table), Some(settings), None) = (&raw.fastcgi, &fastcgi, max_conns) {
        if settings.keep_conn {
            ctx.error(
                table.span(),
                format!(
                    "{key}.fastcgi.keep_conn: a kept connection pins a PHP-FPM worker; set {key}.max_conns (at most pm.max_children) so excess requests queue in causeway"
                ),
            );
        }
    }
    Upstream {
        name: name.get_ref().clone(),
        servers,
        protocol: protocol.unwrap_or(Protocol::Http),
        balance: balance.unwrap_or(Balance::RoundRobin),
        timeouts: timeouts(ctx, &raw.timeouts, &key),
        retry: retry(ctx, &raw.retry, &key),
        pool: Pool {
            max_idle_per_server: raw.pool.max_idle_per_server,
            idle_timeout: ctx.duration(&raw.pool.idle_timeout, &format!("{key}.pool.idle_timeout")),
            honor_keep_alive: raw.pool.honor_keep_alive,
        },
        health: health(ctx, &raw.health, &key),
        tls: tls.unwrap_or(UpstreamTls {
            server_name: None,
            ca: None,
            verify: true,
        }),
        max_conns,
        queue_timeout: ctx.duration(&raw.queue_timeout, &format!("{key}.queue_timeout")),
        max_response_header: ctx.size_usize(
            &raw.max_response_header,
            &format!("{key}.max_response_header"),
        ),
        fastcgi,
    }
}

/// `upstreams.NAME`, quoting a name that is not a bare TOML key.
fn upstream_key(name: &str) -> String {
    if valid_name(name) && !name.contains('.') {
        format!("upstreams.{name}")
    } else {
        format!("upstreams.\"{name}\"")
    }
}

/// Upstream names end up in metric labels, log fields and Proxy-Status: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn servers(ctx: &mut Ctx<'_>, name: &Text, raw: &RawUpstream, key: &str) -> Vec<ServerAddr> {
    let Some(list) = &raw.servers else {
        ctx.error(
            name.span(),
            format!("{key}: no servers; add servers = [\"127.0.0.1:3000\"]"),
        );
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        ctx.error(
            list.span(),
            format!("{key}.servers: empty; list at least one, e.g. [\"127.0.0.1:3000\"]"),
        );
    }
    let mut seen = HashSet::new();
    let mut servers = Vec::new();
    for text in list.get_ref() {
        let Some(addr) = ctx.parse(text, &format!("{key}.servers"), units::parse_server_addr)
        else {
            continue;
        };
        if !seen.insert(addr.clone()) {
            ctx.error(
                text.span(),
                format!("{key}.servers: \"{addr}\" is listed twice"),
            );
        }
        servers.push(addr);
    }
    servers
}

fn timeouts(ctx: &mut Ctx<'_>, raw: &RawTimeouts, key: &str) -> Timeouts {
    let connect = ctx.try_timeout(&raw.connect, &format!("{key}.timeouts.connect"));
    let header = ctx.try_timeout(&raw.header, &format!("{key}.timeouts.header"));
    let total = raw.total.as_ref().map(|total| {
        let parsed = ctx.try_timeout(total, &format!("{key}.timeouts.total"));
        for (phase, value, text) in [
            ("header", header, &raw.header),
            ("connect", connect, &raw.connect),
        ] {
            if let (Some(value), Some(parsed)) = (value, parsed) {
                if value > parsed {
                    ctx.error(
                        total.span(),
                        format!(
                            "{key}.timeouts: {phase} ({}) is longer than total ({}), so total \
                             would always fire first and hide which phase was slow",
                            text.get_ref(),
                            total.get_ref()
                        ),
                    );
                }
            }
        }
        parsed.unwrap_or(Duration::from_secs(1))
    });
    let fallback = Duration::from_secs(1);
    Timeouts {
        connect: connect.unwrap_or(fallback),
        write: ctx.timeout(&raw.write, &format!("{key}.timeouts.write")),
        header: header.unwrap_or(fallback),
        read: ctx.timeout(&raw.read, &format!("{key}.timeouts.read")),
        total,
    }
}

fn retry(ctx: &mut Ctx<'_>, raw: &RawRetry, key: &str) -> Retry {
    let attempts = *raw.attempts.get_ref();
    if attempts == 0 {
        ctx.error(
            raw.attempts.span(),
            format!(
                "{key}.retry.attempts: must be at least 1; it counts the first try, so 1 means \
                 no retries"
            ),
        );
    }
    let on = raw
        .on
        .iter()
        .filter_map(|name| retry_cause(ctx, name, key))
        .collect();
    let budget = *raw.budget.get_ref();
    if !(0.0..=10.0).contains(&budget) {
        ctx.error(
            raw.budget.span(),
            format!(
                "{key}.retry.budget: {budget} is outside 0 to 10; it is the ratio of retries to \
                 first attempts, e.g. 0.2 for 20 %"
            ),
        );
    }
    let methods = raw
        .methods
        .iter()
        .filter_map(|method| {
            let name = method.get_ref().as_str();
            if METHODS.contains(&name) {
                Method::from_bytes(name.as_bytes()).ok()
            } else {
                let hint = if METHODS.contains(&name.to_ascii_uppercase().as_str()) {
                    format!(
                        " (methods are case-sensitive: \"{}\")",
                        name.to_ascii_uppercase()
                    )
                } else {
                    String::new()
                };
                ctx.error(
                    method.span(),
                    format!(
                        "{key}.retry.methods: unknown method \"{name}\"{hint}; expected one of: {}",
                        METHODS.join(", ")
                    ),
                );
                None
            }
        })
        .collect();
    Retry {
        attempts,
        on,
        budget,
        methods,
        max_replay_body: ctx.size_usize(
            &raw.max_replay_body,
            &format!("{key}.retry.max_replay_body"),
        ),
    }
}

/// A cause in `retry.on`: it must exist and be a failure a new attempt could fix.
fn retry_cause(ctx: &mut Ctx<'_>, name: &Text, key: &str) -> Option<Cause> {
    // Client-side causes are the ones without a Proxy-Status type (cause.rs).
    let retryable = |cause: &Cause| {
        let info = cause.info();
        info.proxy_status.is_some()
            && matches!(
                info.phase,
                Phase::Connect | Phase::Request | Phase::ResponseHead | Phase::Pick
            )
    };
    let why = match Cause::from_name(name.get_ref()) {
        Some(cause) if retryable(&cause) => return Some(cause),
        Some(cause) if cause.info().phase == Phase::ResponseBody => {
            format!("\"{cause}\" cannot be retried: the response is already on its way")
        }
        Some(cause) => format!("\"{cause}\" cannot be retried: it is not an upstream failure"),
        None => {
            let valid: Vec<&str> = Cause::ALL
                .iter()
                .filter(|c| retryable(c))
                .map(|c| c.name())
                .collect();
            format!(
                "unknown cause \"{}\"; valid causes: {}",
                name.get_ref(),
                valid.join(", ")
            )
        }
    };
    ctx.error(name.span(), format!("{key}.retry.on: {why}"));
    None
}

fn health(ctx: &mut Ctx<'_>, raw: &RawHealth, key: &str) -> Health {
    let check = raw.check.as_ref().map(|check| {
        let path = check.path.get_ref();
        if !path.starts_with('/') {
            ctx.error(
                check.path.span(),
                format!("{key}.health.check.path: \"{path}\" must start with \"/\""),
            );
        }
        let status = *check.expect_status.get_ref();
        if !(100..=599).contains(&status) {
            ctx.error(
                check.expect_status.span(),
                format!(
                    "{key}.health.check.expect_status: {status} is not an HTTP status (100 to 599)"
                ),
            );
        }
        HealthCheck {
            path: path.clone(),
            interval: ctx.timeout(&check.interval, &format!("{key}.health.check.interval")),
            expect_status: status,
        }
    });
    Health {
        max_fails: raw.max_fails,
        fail_timeout: ctx.duration(&raw.fail_timeout, &format!("{key}.health.fail_timeout")),
        check,
    }
}

fn upstream_tls(ctx: &mut Ctx<'_>, raw: &Spanned<RawUpstreamTls>, key: &str) -> UpstreamTls {
    let raw = raw.get_ref();
    let server_name = raw.server_name.as_ref().and_then(|name| {
        let text = name.get_ref();
        if is_host_name(text) || text.parse::<std::net::IpAddr>().is_ok() {
            Some(text.to_ascii_lowercase())
        } else {
            ctx.error(
                name.span(),
                format!(
                    "{key}.tls.server_name: \"{text}\" is not a host name or IP address (no port \
                     or scheme), e.g. \"api.internal\""
                ),
            );
            None
        }
    });
    let ca = raw
        .ca
        .as_ref()
        .map(|ca| ctx.existing_file(ca, &format!("{key}.tls.ca")));
    let insecure = raw.insecure_skip_verify;
    if let (true, Some(verify)) = (insecure, &raw.verify) {
        if *verify.get_ref() {
            ctx.error(
                verify.span(),
                format!(
                    "{key}.tls: verify = true contradicts insecure_skip_verify = true; keep one"
                ),
            );
        }
    }
    let verify = !insecure && raw.verify.as_ref().is_none_or(|v| *v.get_ref());
    UpstreamTls {
        server_name,
        ca,
        verify,
    }
}

fn fastcgi_table(ctx: &mut Ctx<'_>, raw: &Spanned<RawFastCgi>, key: &str) -> Option<FastCgi> {
    let span = raw.span();
    let raw = raw.get_ref();
    let root = match &raw.root {
        None => {
            ctx.error(
                span,
                format!(
                    "{key}.fastcgi: missing root, the document root as PHP-FPM sees it, e.g. \
                     root = \"/var/www/html\""
                ),
            );
            PathBuf::new()
        }
        Some(root) => {
            // Not resolved against the config's directory, and not checked for existence:
            // SCRIPT_FILENAME is read by PHP-FPM, possibly in another container.
            if !root.get_ref().starts_with('/') {
                ctx.error(
                    root.span(),
                    format!(
                        "{key}.fastcgi.root: \"{}\" must be an absolute path, as PHP-FPM sees it",
                        root.get_ref()
                    ),
                );
            }
            PathBuf::from(root.get_ref())
        }
    };
    let index = raw.index.get_ref();
    if index.is_empty() || index.contains('/') {
        ctx.error(
            raw.index.span(),
            format!("{key}.fastcgi.index: \"{index}\" must be a file name, e.g. \"index.php\""),
        );
    }
    let mut params: Vec<(&Text, &String)> = raw.params.iter().collect();
    params.sort_by_key(|(name, _)| name.span().start);
    let params = params
        .into_iter()
        .map(|(name, value)| (name.get_ref().clone(), value.clone()))
        .collect();
    Some(FastCgi {
        root,
        index: index.clone(),
        try_files: raw.try_files,
        keep_conn: raw.keep_conn,
        front_controller: raw.front_controller,
        params,
        max_spool_body: ctx.size(
            &raw.max_spool_body,
            &format!("{key}.fastcgi.max_spool_body"),
        ),
    })
}
