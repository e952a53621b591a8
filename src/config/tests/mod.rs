//! Config loading end to end: defaults, the example file, files on disk, and the acceptance
//! case of several errors in one run. Each error kind with its line:col is in `errors.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

mod errors;

/// A valid upstream and route; tests append to it (it ends on line 6).
pub(super) const BASE: &str = r#"[upstreams.app]
servers = ["127.0.0.1:3000"]

[[routes]]
path = "/"
upstream = "app"
"#;

const FILE: &str = "/etc/causeway/causeway.toml";

/// Every error as `line:col: message`, or an empty list when the config is valid.
pub(super) fn check(text: &str) -> Vec<String> {
    check_at(text, Path::new(FILE))
}

pub(super) fn check_at(text: &str, path: &Path) -> Vec<String> {
    match parse(text, path) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect(),
    }
}

/// `BASE` plus `extra`, expected to give exactly one error.
pub(super) fn one_error(extra: &str) -> String {
    let errors = check(&format!("{BASE}{extra}"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

pub(super) fn valid(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("config should be valid:\n{e}"),
    }
}

/// A fresh directory under the system temp dir, for tests that need real files; removed with
/// its files when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "causeway-config-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    TempDir(dir)
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = valid(BASE);
    assert_eq!(config.source, Path::new(FILE));
    let s = &config.server;
    assert_eq!(
        s.listen,
        [ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))]
    );
    assert!(s.tls.is_none());
    assert_eq!(s.request_header_timeout, Duration::from_secs(10));
    assert_eq!(s.request_body_timeout, Duration::from_secs(60));
    assert_eq!(s.max_request_header, 64 * 1024);
    assert_eq!(s.max_request_body, 100 * 1024 * 1024);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(s.forwarded, ForwardedMode::Xff);
    assert!(s.trust_request_id);
    assert_eq!(s.max_connections, 10_000);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s.workers, cpus, "workers = 0 (the default) is one per CPU");
    assert!(config.admin.is_none());
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.access_log, AccessLogTarget::Stdout);
    assert_eq!(config.log.access_format, AccessFormat::Json);
    assert_eq!(config.errors.expose, Expose::Cause);
    assert!(config.errors.proxy_status);
    assert!(config.errors.pages.is_empty());
    assert!(config.resolver.nameservers.is_empty());
    assert_eq!(config.resolver.timeout, Duration::from_secs(2));
    assert!(config.resolver.hosts_file);

    let up = &config.upstreams[0];
    assert_eq!(up.name, "app");
    assert_eq!(
        up.servers,
        [ServerAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 3000)))]
    );
    assert_eq!(up.protocol, Protocol::Http);
    assert_eq!(up.balance, Balance::RoundRobin);
    let secs = Duration::from_secs;
    assert_eq!(
        up.timeouts,
        Timeouts {
            connect: secs(3),
            write: secs(30),
            header: secs(30),
            read: secs(30),
            total: None
        }
    );
    assert_eq!(up.retry.attempts, 2);
    assert_eq!(
        up.retry.on,
        [
            Cause::ConnectRefused,
            Cause::ConnectTimeout,
            Cause::StaleConnection
        ]
    );
    assert_eq!(up.retry.budget, 0.2);
    assert_eq!(
        up.retry.methods,
        [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE
        ]
    );
    assert_eq!(up.retry.max_replay_body, 64 * 1024);
    assert_eq!(
        up.pool,
        Pool {
            max_idle_per_server: 64,
            idle_timeout: secs(4),
            honor_keep_alive: true,
        }
    );
    assert_eq!(up.health.max_fails, 3);
    assert_eq!(up.health.fail_timeout, secs(10));
    assert!(up.health.check.is_none());
    assert!(up.tls.verify);
    assert!(up.tls.server_name.is_none() && up.tls.ca.is_none());
    assert_eq!(up.max_conns, None);
    assert_eq!(up.queue_timeout, secs(1));
    assert_eq!(up.max_response_header, 64 * 1024);
    assert!(up.fastcgi.is_none());

    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].path, "/");
    assert_eq!(config.routes[0].host, None);
    assert_eq!(config.routes[0].upstream, 0);
}

#[test]
fn fastcgi_and_check_defaults() {
    let config = valid(
        r#"[upstreams.php]
servers = ["unix:/run/php.sock"]
protocol = "fastcgi"
fastcgi = { root = "/srv/www" }
health = { check = { path = "/ping" } }
"#,
    );
    let up = &config.upstreams[0];
    let fastcgi = up.fastcgi.as_ref().expect("fastcgi table");
    assert_eq!(fastcgi.root, Path::new("/srv/www"));
    assert_eq!(fastcgi.index, "index.php");
    assert!(fastcgi.try_files);
    assert!(!fastcgi.keep_conn);
    assert!(!fastcgi.front_controller);
    assert!(fastcgi.params.is_empty());
    assert_eq!(fastcgi.max_spool_body, 10 * 1024 * 1024);
    let check = up.health.check.as_ref().expect("check");
    assert_eq!(check.path, "/ping");
    assert_eq!(check.interval, Duration::from_secs(5));
    assert_eq!(check.expect_status, 200);
    assert!(config.routes.is_empty());
}

#[test]
fn example_toml_is_valid_and_says_what_the_design_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let config = match load(&path) {
        Ok(config) => config,
        Err(e) => panic!("config/example.toml:\n{e}"),
    };
    assert_eq!(
        config.server.listen,
        [ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))]
    );
    assert_eq!(
        config.admin.map(|a| a.listen),
        Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
    );
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["node", "php"]);
    assert_eq!(config.upstreams[0].servers.len(), 2);
    assert_eq!(config.upstreams[1].protocol, Protocol::FastCgi);
    assert_eq!(
        config.upstreams[1].servers,
        [ServerAddr::Unix("/run/php/php8.2-fpm.sock".into())]
    );
    assert_eq!(
        config.upstreams[1].fastcgi.as_ref().map(|f| f.root.clone()),
        Some(PathBuf::from("/var/www/html"))
    );
    let routes: Vec<(&str, usize)> = config
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.upstream))
        .collect();
    assert_eq!(routes, [("/api/", 0), ("/", 1)]);
}

#[test]
fn example_toml_mentions_every_key() {
    let example = include_str!("../../../config/example.toml");
    let keys = [
        "listen",
        "tls",
        "cert",
        "key",
        "request_header_timeout",
        "request_body_timeout",
        "max_request_header",
        "max_request_body",
        "shutdown_timeout",
        "max_connections",
        "workers",
        "trusted_proxies",
        "forwarded",
        "trust_request_id",
        "level",
        "format",
        "access_log",
        "access_format",
        "expose",
        "proxy_status",
        "pages",
        "nameservers",
        "timeout",
        "hosts_file",
        "servers",
        "protocol",
        "balance",
        "timeouts",
        "connect",
        "write",
        "header",
        "read",
        "total",
        "retry",
        "attempts",
        "on",
        "budget",
        "methods",
        "max_replay_body",
        "pool",
        "max_idle_per_server",
        "idle_timeout",
        "health",
        "max_fails",
        "fail_timeout",
        "check",
        "path",
        "interval",
        "expect_status",
        "server_name",
        "ca",
        "verify",
        "insecure_skip_verify",
        "max_conns",
        "queue_timeout",
        "max_response_header",
        "fastcgi",
        "root",
        "index",
        "try_files",
        "keep_conn",
        "front_controller",
        "params",
        "max_spool_body",
        "host",
        "upstream",
    ];
    for key in keys {
        assert!(
            example.contains(&format!("{key} =")),
            "config/example.toml does not show `{key} =`"
        );
    }
}

/// The acceptance case: three different kinds of mistake, all reported in one run.
#[test]
fn unknown_key_bad_duration_and_missing_upstream_are_reported_together() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]
request_header_timout = "10s"

[upstreams.node]
servers = ["127.0.0.1:3000"]
timeouts = { connect = "3 seconds" }

[[routes]]
path = "/"
upstream = "nod"
"#;
    let errors = match parse(text, Path::new("causeway.toml")) {
        Ok(_) => panic!("three errors expected"),
        Err(errors) => errors,
    };
    assert_eq!(
        errors.to_string(),
        "causeway.toml:3:1: server: unknown field `request_header_timout`, expected one of \
         `listen`, `tls`, `request_header_timeout`, `request_body_timeout`, `max_request_header`, \
         `max_request_body`, `shutdown_timeout`, `trusted_proxies`, `forwarded`, \
         `trust_request_id`, `max_connections`, `workers`\n\
         causeway.toml:7:24: upstreams.node.timeouts.connect: invalid duration \"3 seconds\": \
         expected a number followed by ms, s, m or h, e.g. \"250ms\"\n\
         causeway.toml:11:12: routes.upstream: no upstream named \"nod\"; defined upstreams: node"
    );
}

#[test]
fn addresses_in_every_form_are_accepted() {
    let config = valid(&format!(
        "{BASE}[server]\nlisten = [\"[::1]:8080\", \"unix:/run/causeway.sock\", \"0.0.0.0:0\"]\n\
         trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
         [resolver]\nnameservers = [\"127.0.0.1:5353\", \"1.1.1.1\"]\n\
         [upstreams.b]\nservers = [\"localhost:80\", \"[::1]:3000\", \"unix:/x\"]\n"
    ));
    assert_eq!(config.server.listen.len(), 3);
    assert_eq!(
        config.server.listen[1],
        ListenAddr::Unix("/run/causeway.sock".into())
    );
    assert_eq!(config.server.trusted_proxies[1].prefix, 128);
    assert_eq!(
        config.resolver.nameservers[1],
        SocketAddr::from(([1, 1, 1, 1], 53))
    );
    assert_eq!(
        config.upstreams[1].servers,
        [
            ServerAddr::Name {
                host: "localhost".into(),
                port: 80
            },
            ServerAddr::Ip("[::1]:3000".parse().expect("literal")),
            ServerAddr::Unix("/x".into()),
        ]
    );
}

#[test]
fn route_host_is_normalised() {
    let config = valid(&format!(
        "{BASE}[[routes]]\nhost = \"API.Example.com:8443\"\npath = \"/\"\nupstream = \"app\"\n\
         [[routes]]\nhost = \"[::1]:8080\"\npath = \"/\"\nupstream = \"app\"\n"
    ));
    assert_eq!(config.routes[1].host.as_deref(), Some("api.example.com"));
    assert_eq!(config.routes[2].host.as_deref(), Some("[::1]"));
}

#[test]
fn upstreams_keep_file_order_and_routes_point_at_them() {
    let config = valid(
        "[upstreams.zeta]\nservers = [\"h:1\"]\n[upstreams.alpha]\nservers = [\"h:2\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"alpha\"\n",
    );
    assert_eq!(config.upstreams[0].name, "zeta");
    assert_eq!(config.routes[0].upstream, 1);
}

#[test]
fn files_resolve_against_the_config_directory_and_must_exist() {
    let dir = temp_dir();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).expect("temp dir is writable");
    };
    write("cert.pem", "CERT");
    write("ca.pem", "CA");
    write("502.html", "<h1>{status} {cause}</h1>");
    let path = dir.join("causeway.toml");
    let text = format!(
        "{BASE}[server]\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\
         [errors]\npages = {{ 502 = \"502.html\", 504 = \"{}/missing.html\", 200 = \"502.html\" }}\n\
         [upstreams.s]\nservers = [\"h:443\"]\nprotocol = \"https\"\ntls = {{ ca = \"ca.pem\" }}\n",
        dir.display()
    );
    let errors = check_at(&text, &path);
    let key = dir.join("key.pem");
    let missing = format!("\"{}/missing.html\"", dir.display());
    // The "200" key comes after the 504 value, whose length depends on the temp dir.
    let col_200 = "pages = { 502 = \"502.html\", 504 = , ".len() + missing.len() + 1;
    assert_eq!(
        errors,
        [
            format!(
                "8:34: server.tls.key: cannot read \"key.pem\" (resolved to {}): No such file or \
                 directory (os error 2)",
                key.display()
            ),
            format!(
                "10:35: errors.pages.504: cannot read {missing}: No such file or directory (os \
                 error 2)"
            ),
            format!(
                "10:{col_200}: errors.pages: \"200\" is not an error status; keys are status codes \
                 from 400 to 599, e.g. 502 = \"errors/502.html\""
            ),
        ]
    );
    write("key.pem", "KEY");
    let text = text.replace(", 504 = ", ", 503 = ").replace(
        &format!("\"{}/missing.html\", 200 = \"502.html\"", dir.display()),
        "\"502.html\"",
    );
    let config = match parse(&text, &path) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    let tls = config.server.tls.expect("server tls");
    assert_eq!(tls.cert, dir.join("cert.pem"));
    assert_eq!(tls.key, dir.join("key.pem"));
    assert_eq!(
        config.errors.pages.get(&502).map(String::as_str),
        Some("<h1>{status} {cause}</h1>")
    );
    assert_eq!(config.errors.pages.len(), 2);
    assert_eq!(config.upstreams[1].tls.ca, Some(dir.join("ca.pem")));
}

#[test]
fn errors_of_every_stage_come_out_together_in_file_order() {
    let text = "[server]\nmax_connections = 0\nlisen = 1\n[upstreams.a]\nservers = [\"h\"]\n\
                retry = { attempts = -1 }\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n";
    let errors = check(text);
    let places: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        places,
        ["2:19", "3:1", "5:12", "6:22", "9:12"],
        "{errors:#?}"
    );
}

#[test]
fn load_reports_an_unreadable_file() {
    let errors = match load(Path::new("/no/such/causeway.toml")) {
        Ok(_) => panic!("no such file"),
        Err(errors) => errors,
    };
    assert_eq!(
        errors.to_string(),
        "/no/such/causeway.toml:1:1: cannot read config file: No such file or directory (os error 2)"
    );
}

#[test]
fn error_pages_must_be_regular_files() {
    let dir = temp_dir();
    let path = dir.join("causeway.toml");
    let text = format!("{BASE}[errors]\npages = {{ 502 = \"/dev/zero\" }}\n");
    let errors = check_at(&text, &path);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("errors.pages.502: cannot read \"/dev/zero\": not a regular file"),
        "{errors:?}"
    );
}

#[test]
fn socket_addresses_are_written_as_display_writes_them() {
    for text in [
        "0.0.0.0:0",
        "127.0.0.1:8080",
        "10.20.30.40:1",
        "255.255.255.255:65535",
        "[::1]:443",
        "[2001:db8::5]:9000",
    ] {
        let addr: SocketAddr = text.parse().expect("test address");
        let mut written = String::new();
        write_socket_addr(&addr, &mut written).expect("writes");
        assert_eq!(written, addr.to_string());
        assert_eq!(ServerAddr::Ip(addr).to_string(), addr.to_string());
    }
}

#[test]
fn decimal_writes_what_display_writes() {
    for n in [0u64, 7, 10, 1024, 65535, u64::MAX] {
        assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
    }
}
