//! Every error kind the loader reports, with its exact line, column and message.

use super::*;

#[test]
fn syntax_errors_are_all_reported_and_stop_there() {
    assert_eq!(
        check("[server\nlisten = [\"127.0.0.1:8080\"]\nx = = 2\n[[routes]]\npath = \"nope\"\n"),
        [
            "1:8: unclosed table, expected `]`",
            "3:5: extra `=`, expected nothing",
            "3:7: unexpected key or value, expected newline, `#`",
        ]
    );
}

#[test]
fn duplicate_keys_and_tables_are_named() {
    assert_eq!(
        check("[server]\nlisten = [\"127.0.0.1:1\"]\nlisten = [\"127.0.0.1:2\"]\n"),
        ["3:1: duplicate key `listen`"]
    );
    assert_eq!(
        check("[server]\nmax_connections = 5\n[server]\nforwarded = \"none\"\n"),
        ["3:2: duplicate key `server`"]
    );
}

#[test]
fn unknown_keys_are_reported_at_the_key_at_every_depth() {
    let errors = check(&format!(
        "sever = 1\n{BASE}bogus = 2\n[upstreams.app.pool]\nidle = \"4s\"\n[admin]\nlisten = \"127.0.0.1:9901\"\nport = 1\n"
    ));
    assert_eq!(
        errors,
        [
            "1:1: unknown field `sever`, expected one of `server`, `admin`, `log`, `errors`, \
             `resolver`, `upstreams`, `routes`",
            // After [[routes]], a key belongs to the route.
            "8:1: routes: unknown field `bogus`, expected one of `path`, `host`, `upstream`",
            "10:1: upstreams.app.pool: unknown field `idle`, expected one of \
             `max_idle_per_server`, `idle_timeout`, `honor_keep_alive`",
            "13:1: admin: unknown field `port`, expected `listen`",
        ]
    );
    // Inside an inline table, pointing at the key itself.
    assert!(
        one_error("[upstreams.x]\nservers = [\"h:1\"]\nretry = { attempts = 1, tries = 2 }\n")
            .starts_with("9:25: upstreams.x.retry: unknown field `tries`")
    );
}

#[test]
fn wrong_types_and_missing_required_keys() {
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\"]\nretry = { attempts = \"two\" }\n"),
        "9:22: upstreams.x.retry.attempts: invalid type: string \"two\", expected u32"
    );
    assert_eq!(
        one_error("[server]\nlisten = \"127.0.0.1:8080\"\n"),
        "8:10: server.listen: invalid type: string \"127.0.0.1:8080\", expected a sequence"
    );
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\", 2]\n"),
        "8:19: upstreams.x.servers: invalid type: integer `2`, expected a string"
    );
    assert_eq!(
        one_error("[[routes]]\nupstream = \"app\"\n"),
        "7:1: routes: missing field `path`"
    );
    assert_eq!(
        one_error("[server]\ntls = { cert = \"c.pem\" }\n"),
        "8:7: server.tls: missing field `key`"
    );
}

#[test]
fn bad_durations_sizes_and_zero_timeouts() {
    assert_eq!(
        one_error("[server]\nshutdown_timeout = \"30\"\n"),
        "8:20: server.shutdown_timeout: invalid duration \"30\": a number needs a unit (ms, s, m \
         or h), e.g. \"30s\""
    );
    assert_eq!(
        one_error("[server]\nmax_request_body = \"100 MB\"\n"),
        "8:20: server.max_request_body: invalid size \"100 MB\": expected a whole number with an \
         optional unit B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. \
         \"64KiB\""
    );
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\"]\ntimeouts = { header = \"0s\" }\n"),
        "9:23: upstreams.x.timeouts.header: must be longer than 0, or every request would time out"
    );
    assert_eq!(
        one_error(
            "[upstreams.x]\nservers = [\"h:1\"]\nprotocol = \"fastcgi\"\n\
             fastcgi = { root = \"/srv\", max_spool_body = \"1k\" }\n"
        )
        .split(": ")
        .take(3)
        .collect::<Vec<_>>(),
        [
            "10:45",
            "upstreams.x.fastcgi.max_spool_body",
            "invalid size \"1k\""
        ]
    );
}

#[test]
fn bad_addresses() {
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\", \"localhost\"]\n"),
        "8:19: upstreams.x.servers: invalid server address \"localhost\": missing port: write \
         HOST:PORT, e.g. \"localhost:80\""
    );
    assert_eq!(
        one_error("[server]\nlisten = [\"localhost:8080\"]\n"),
        "8:11: server.listen: invalid listen address \"localhost:8080\": expected an IP address, \
         e.g. \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\" (host names are not resolved \
         for listening)"
    );
    assert_eq!(
        one_error("[admin]\nlisten = \"unix:/run/admin.sock\"\n"),
        "8:10: admin.listen: invalid listen address \"unix:/run/admin.sock\": must be IP:PORT, \
         e.g. \"127.0.0.1:9901\""
    );
    assert_eq!(
        one_error("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
        "8:20: server.trusted_proxies: invalid network \"10.0.0.0/33\": prefix length must be 0 \
         to 32"
    );
    assert_eq!(
        one_error("[resolver]\nnameservers = [\"dns.google\"]\n"),
        "8:16: resolver.nameservers: invalid nameserver \"dns.google\": expected an IP address \
         with an optional port, e.g. \"127.0.0.1:5353\" or \"1.1.1.1\""
    );
    assert_eq!(
        one_error("[server]\nlisten = []\n"),
        "8:10: server.listen: empty; give at least one address, e.g. [\"127.0.0.1:8080\"]"
    );
}

#[test]
fn routes_are_checked() {
    assert_eq!(
        one_error("[[routes]]\npath = \"/api/\"\nupstream = \"ap\"\n"),
        "9:12: routes.upstream: no upstream named \"ap\"; defined upstreams: app"
    );
    assert_eq!(
        check("[[routes]]\npath = \"/\"\nupstream = \"app\"\n"),
        ["3:12: routes.upstream: no upstream named \"app\"; no upstreams are defined"]
    );
    assert_eq!(
        one_error("[[routes]]\npath = \"api\"\nupstream = \"app\"\n"),
        "8:8: routes.path: \"api\" must start with \"/\", e.g. \"/api\""
    );
    assert_eq!(
        one_error("[[routes]]\npath = \"/\"\nupstream = \"app\"\n"),
        "8:8: routes: duplicate route: path \"/\" for any host is already routed at line 5:8"
    );
    // Host is compared lower-cased and without its port.
    assert_eq!(
        one_error(
            "[[routes]]\nhost = \"Example.com\"\npath = \"/\"\nupstream = \"app\"\n\
             [[routes]]\nhost = \"example.COM:8443\"\npath = \"/\"\nupstream = \"app\"\n"
        ),
        "13:8: routes: duplicate route: path \"/\" for host \"example.com\" is already routed at \
         line 9:8"
    );
    assert_eq!(
        one_error("[[routes]]\nhost = \"*.example.com\"\npath = \"/\"\nupstream = \"app\"\n"),
        "8:8: routes.host: invalid host \"*.example.com\": wildcards are not supported; add one \
         route per host"
    );
}

#[test]
fn retry_settings_are_checked() {
    let up = "[upstreams.x]\nservers = [\"h:1\"]\n";
    let err = one_error(&format!("{up}retry = {{ on = [\"conect_refused\"] }}\n"));
    assert!(
        err.starts_with(
            "9:17: upstreams.x.retry.on: unknown cause \"conect_refused\"; valid causes: \
             dns_error, dns_timeout, connect_refused,"
        ),
        "{err}"
    );
    assert!(err.ends_with("no_healthy_upstream, upstream_busy"), "{err}");
    assert_eq!(
        one_error(&format!("{up}retry = {{ on = [\"body_truncated\"] }}\n")),
        "9:17: upstreams.x.retry.on: \"body_truncated\" cannot be retried: the response is \
         already on its way"
    );
    assert_eq!(
        one_error(&format!("{up}retry = {{ on = [\"client_closed\"] }}\n")),
        "9:17: upstreams.x.retry.on: \"client_closed\" cannot be retried: it is not an upstream \
         failure"
    );
    assert_eq!(
        one_error(&format!(
            "{up}retry = {{ methods = [\"GET\", \"FETCH\"] }}\n"
        )),
        "9:29: upstreams.x.retry.methods: unknown method \"FETCH\"; expected one of: GET, HEAD, \
         POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
    );
    assert_eq!(
        one_error(&format!("{up}retry = {{ methods = [\"get\"] }}\n")),
        "9:22: upstreams.x.retry.methods: unknown method \"get\" (methods are case-sensitive: \
         \"GET\"); expected one of: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
    );
    assert_eq!(
        one_error(&format!("{up}retry = {{ attempts = 0 }}\n")),
        "9:22: upstreams.x.retry.attempts: must be at least 1; it counts the first try, so 1 \
         means no retries"
    );
    assert_eq!(
        one_error(&format!("{up}retry = {{ budget = 10.5 }}\n")),
        "9:20: upstreams.x.retry.budget: 10.5 is outside 0 to 10; it is the ratio of retries to \
         first attempts, e.g. 0.2 for 20 %"
    );
    assert_eq!(
        one_error(&format!("{up}retry = {{ budget = -0.1 }}\n")),
        "9:20: upstreams.x.retry.budget: -0.1 is outside 0 to 10; it is the ratio of retries to \
         first attempts, e.g. 0.2 for 20 %"
    );
    let config = valid(&format!(
        "{BASE}{up}retry = {{ attempts = 1, budget = 10, on = [\"header_timeout\"], methods = [\"POST\"] }}\n"
    ));
    let retry = &config.upstreams[1].retry;
    assert_eq!(
        (
            retry.attempts,
            retry.budget,
            retry.on.as_slice(),
            retry.methods.as_slice()
        ),
        (1, 10.0, &[Cause::HeaderTimeout][..], &[Method::POST][..])
    );
}

#[test]
fn upstream_limits_are_checked() {
    let up = "[upstreams.x]\nservers = [\"h:1\"]\n";
    assert_eq!(
        one_error(&format!("{up}max_conns = 0\n")),
        "9:13: upstreams.x.max_conns: must be at least 1 (leave it out for no limit)"
    );
    assert_eq!(
        one_error(&format!(
            "{up}timeouts = {{ header = \"30s\", total = \"10s\" }}\n"
        )),
        "9:38: upstreams.x.timeouts: header (30s) is longer than total (10s), so total would \
         always fire first and hide which phase was slow"
    );
    // An invalid total is reported once, not also compared with header.
    assert_eq!(
        one_error(&format!("{up}timeouts = {{ total = \"10\" }}\n")),
        "9:22: upstreams.x.timeouts.total: invalid duration \"10\": a number needs a unit (ms, \
         s, m or h), e.g. \"10s\""
    );
    assert_eq!(
        one_error(&format!(
            "{up}timeouts = {{ connect = \"5s\", header = \"3s\", total = \"4s\" }}\n"
        )),
        "9:53: upstreams.x.timeouts: connect (5s) is longer than total (4s), so total would \
         always fire first and hide which phase was slow"
    );
    assert_eq!(
        one_error("[upstreams.x]\nservers = []\n"),
        "8:11: upstreams.x.servers: empty; list at least one, e.g. [\"127.0.0.1:3000\"]"
    );
    assert_eq!(
        one_error("[upstreams.x]\nprotocol = \"http\"\n"),
        "7:12: upstreams.x: no servers; add servers = [\"127.0.0.1:3000\"]"
    );
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\", \"H:1\"]\n"),
        "8:19: upstreams.x.servers: \"h:1\" is listed twice"
    );
    assert_eq!(
        one_error("[upstreams.\"my app\"]\nservers = [\"h:1\"]\n"),
        "7:12: upstreams.\"my app\": invalid upstream name \"my app\": use letters, digits, \
         \"_\", \"-\" and \".\" only (it appears in logs, metrics and Proxy-Status)"
    );
    assert_eq!(
        check(&format!(
            "{BASE}{up}health = {{ check = {{ path = \"healthz\", expect_status = 600 }} }}\n"
        )),
        [
            "9:29: upstreams.x.health.check.path: \"healthz\" must start with \"/\"",
            "9:56: upstreams.x.health.check.expect_status: 600 is not an HTTP status (100 to 599)",
        ]
    );
}

#[test]
fn unknown_enum_values_list_the_valid_ones() {
    let up = "[upstreams.x]\nservers = [\"h:1\"]\n";
    assert_eq!(
        one_error(&format!("{up}protocol = \"grpc\"\n")),
        "9:12: upstreams.x.protocol: unknown value \"grpc\"; expected one of: http, http2, https, \
         https2, fastcgi"
    );
    assert_eq!(
        one_error(&format!("{up}balance = \"random\"\n")),
        "9:11: upstreams.x.balance: unknown value \"random\"; expected one of: round_robin, \
         least_conn"
    );
    assert_eq!(
        one_error("[errors]\nexpose = \"all\"\n"),
        "8:10: errors.expose: unknown value \"all\"; expected one of: detail, cause, none"
    );
    assert_eq!(
        one_error("[log]\nformat = \"logfmt\"\n"),
        "8:10: log.format: unknown value \"logfmt\"; expected one of: text, json"
    );
    assert_eq!(
        one_error("[log]\naccess_format = \"common\"\n"),
        "8:17: log.access_format: unknown value \"common\"; expected one of: json, combined"
    );
    assert_eq!(
        one_error("[server]\nforwarded = \"x-forwarded-for\"\n"),
        "8:13: server.forwarded: unknown value \"x-forwarded-for\"; expected one of: xff, \
         rfc7239, both, none"
    );
    assert_eq!(
        one_error("[log]\nlevel = \"verbose\"\n"),
        "8:9: log.level: unknown level \"verbose\"; expected one of: error, warn, info, debug, \
         trace, off, or directives like \"info,causeway=debug\""
    );
    let config = valid(&format!(
        "{BASE}[log]\nlevel = \"info,causeway=debug\"\nformat = \"json\"\naccess_log = \"off\"\n\
         access_format = \"combined\"\n[errors]\nexpose = \"none\"\nproxy_status = false\n\
         [server]\nforwarded = \"both\"\ntrust_request_id = false\n"
    ));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.access_log, AccessLogTarget::Off);
    assert_eq!(config.log.access_format, AccessFormat::Combined);
    assert_eq!(config.errors.expose, Expose::None);
    assert!(!config.errors.proxy_status);
    assert_eq!(config.server.forwarded, ForwardedMode::Both);
    assert!(!config.server.trust_request_id);
}

#[test]
fn a_bad_protocol_does_not_cascade_into_tls_or_fastcgi_errors() {
    assert_eq!(
        one_error("[upstreams.x]\nservers = [\"h:1\"]\nprotocol = \"fcgi\"\nfastcgi = { root = \"/srv\" }\n")
            .split(';')
            .next(),
        Some("9:12: upstreams.x.protocol: unknown value \"fcgi\"")
    );
}

#[test]
fn fastcgi_table_must_match_the_protocol() {
    let up = "[upstreams.x]\nservers = [\"unix:/run/php.sock\"]\n";
    assert_eq!(
        one_error(&format!("{up}fastcgi = {{ root = \"/srv\" }}\n")),
        "9:11: upstreams.x.fastcgi: only for protocol = \"fastcgi\" (this upstream is \"http\")"
    );
    assert_eq!(
        one_error(&format!("{up}protocol = \"fastcgi\"\n")),
        "9:12: upstreams.x: protocol \"fastcgi\" needs a document root: add fastcgi = { root = \
         \"/var/www/html\" }"
    );
    assert_eq!(
        one_error(&format!(
            "{up}protocol = \"fastcgi\"\n[upstreams.x.fastcgi]\nindex = \"app.php\"\n"
        )),
        "10:1: upstreams.x.fastcgi: missing root, the document root as PHP-FPM sees it, e.g. \
         root = \"/var/www/html\""
    );
    assert_eq!(
        one_error(&format!(
            "{up}protocol = \"fastcgi\"\nfastcgi = {{ root = \"www\" }}\n"
        )),
        "10:20: upstreams.x.fastcgi.root: \"www\" must be an absolute path, as PHP-FPM sees it"
    );
    // The root is PHP-FPM's path: it need not exist here.
    let config = valid(&format!(
        "{up}protocol = \"fastcgi\"\nfastcgi = {{ root = \"/no/such/dir\", params = {{ B = \"2\", A = \"1\" }} }}\n"
    ));
    let fastcgi = config.upstreams[0].fastcgi.as_ref().expect("fastcgi");
    assert_eq!(fastcgi.root, Path::new("/no/such/dir"));
    assert_eq!(
        fastcgi.params,
        [
            ("B".to_owned(), "2".to_owned()),
            ("A".to_owned(), "1".to_owned())
        ]
    );
}

#[test]
fn upstream_tls_is_checked() {
    let up = "[upstreams.x]\nservers = [\"h:443\"]\n";
    assert_eq!(
        one_error(&format!("{up}tls = {{ server_name = \"h\" }}\n")),
        "9:7: upstreams.x.tls: protocol \"http\" does not use TLS; set protocol = \"https\" or \
         remove tls"
    );
    assert_eq!(
        one_error(&format!(
            "{up}protocol = \"https\"\ntls = {{ ca = \"ca.pem\" }}\n"
        )),
        "10:14: upstreams.x.tls.ca: cannot read \"ca.pem\" (resolved to /etc/causeway/ca.pem): \
         No such file or directory (os error 2)"
    );
    assert_eq!(
        one_error(&format!(
            "{up}protocol = \"https\"\ntls = {{ server_name = \"https://h\" }}\n"
        )),
        "10:23: upstreams.x.tls.server_name: \"https://h\" is not a host name or IP address (no \
         port or scheme), e.g. \"api.internal\""
    );
    assert_eq!(
        one_error(&format!(
            "{up}protocol = \"https\"\ntls = {{ verify = true, insecure_skip_verify = true }}\n"
        )),
        "10:18: upstreams.x.tls: verify = true contradicts insecure_skip_verify = true; keep one"
    );
    let config = valid(&format!(
        "{up}protocol = \"https2\"\ntls = {{ server_name = \"API.internal\", insecure_skip_verify = true }}\n"
    ));
    let tls = &config.upstreams[0].tls;
    assert!(!tls.verify);
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    let config = valid(&format!(
        "{up}protocol = \"https\"\ntls = {{ verify = false }}\n"
    ));
    assert!(!config.upstreams[0].tls.verify);
}

#[test]
fn workers_are_bounded_and_zero_means_one_per_cpu() {
    assert_eq!(
        check(&format!("[server]\nworkers = 5000\n{BASE}")),
        ["2:11: server.workers: 5000 is more than 1024; use 0 for one per CPU"]
    );
    assert_eq!(
        valid(&format!("[server]\nworkers = 3\n{BASE}"))
            .server
            .workers,
        3
    );
}
