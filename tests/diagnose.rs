//! `causeway diagnose` (DESIGN.md section 2), the real binary against `causeway::faults` running
//! in this test process: each broken server gets its cause and fix hint, the exit status says
//! whether every server passed, and `--json` carries a status per step.

#[path = "common/php.rs"]
mod php;
#[path = "common/process.rs"]
mod process;

use causeway::faults::{self, Faults, FaultsOptions};
use process::{run_to_end, TempDir};

/// One upstream per kind of server: fine, refused, missing socket, plain HTTP behind
/// `https`, a self-signed certificate, a full TCP backlog.
fn config(faults: &Faults) -> String {
    let tls = faults.tls.as_ref().expect("faults has a TLS listener");
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]

[upstreams.fine]
servers = ["{http}"]
health = {{ check = {{ path = "/ok" }} }}

[upstreams.refused]
servers = ["{refused}"]

[upstreams.nosocket]
servers = ["unix:{missing}"]

[upstreams.plain]
servers = ["{http}"]
protocol = "https"

[upstreams.selfsigned]
servers = ["{tls}"]
protocol = "https"
tls = {{ server_name = "self-signed.localhost", ca = "{ca}" }}

[upstreams.backlog]
servers = ["{backlog}"]
timeouts = {{ connect = "500ms" }}

[[routes]]
path = "/"
upstream = "fine"
"#,
        http = faults.http,
        refused = faults.refused,
        missing = faults.missing_socket.display(),
        tls = tls.addr,
        ca = tls.ca_file.display(),
        backlog = faults.backlog_full,
    )
}

/// Starts faults, writes the config, runs `causeway diagnose ARGS -c FILE` on a blocking
/// thread (the faults server keeps serving on this runtime meanwhile).
async fn diagnose(args: &[&str]) -> (i32, String, String, Faults) {
    let faults = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let dir = TempDir::new("diagnose");
    let path = dir.join("causeway.toml");
    std::fs::write(&path, config(&faults)).expect("write the config");
    let mut argv: Vec<String> = vec!["diagnose".into(), "-c".into(), path.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let result = run_to_end(&argv);
        drop(dir);
        result
    })
    .await
    .expect("diagnose ran");
    (status.code().unwrap_or(-1), stdout, stderr, faults)
}

/// The part of the checklist about one upstream.
fn block<'a>(output: &'a str, upstream: &str) -> &'a str {
    let start = output
        .find(&format!("\nupstream {upstream} ("))
        .unwrap_or_else(|| panic!("no upstream {upstream} in:\n{output}"));
    let rest = &output[start + 1..];
    let end = rest[1..]
        .find("\nupstream ")
        .or_else(|| rest[1..].find("\n\n"))
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

fn assert_has(block: &str, needle: &str) {
    assert!(block.contains(needle), "missing {needle:?} in:\n{block}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checklist_names_cause_and_fix_for_each_broken_server_and_exits_1() {
    let (code, out, err, faults) = diagnose(&[]).await;
    assert_eq!(code, 1, "some servers fail; stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains('\x1b'), "no colours when stdout is not a TTY");

    let fine = block(&out, "fine");
    assert_has(fine, &format!("{}  ok", faults.http));
    assert_has(fine, "✓ connect");
    assert_has(fine, "✓ request");
    assert_has(fine, "GET /ok → 200 OK");

    let refused = block(&out, "refused");
    assert_has(refused, "FAILED: connect_refused");
    assert_has(refused, "✗ connect");
    assert_has(refused, "· request");
    assert_has(
        refused,
        &format!(
            "fix:   is the backend running and listening on {}? check `ss -ltnp`",
            faults.refused
        ),
    );

    let nosocket = block(&out, "nosocket");
    assert_has(nosocket, "FAILED: socket_not_found");
    assert_has(
        nosocket,
        &format!(
            "does its `listen =` match {}?",
            faults.missing_socket.display()
        ),
    );
    // The sockets next to the missing one are listed: often the right one is among them.
    assert_has(nosocket, "no such socket; sockets in");
    assert_has(nosocket, "faults.sock");

    let plain = block(&out, "plain");
    assert_has(plain, "FAILED: tls_handshake_failed");
    assert_has(plain, "✓ connect");
    assert_has(plain, "✗ tls");
    assert_has(plain, "upstream is not speaking TLS");
    assert_has(
        plain,
        "fix:   this port speaks plain HTTP: protocol = \"http\"?",
    );

    let selfsigned = block(&out, "selfsigned");
    assert_has(selfsigned, "FAILED: tls_certificate_invalid");
    assert_has(selfsigned, "is issued by an unknown CA");
    // The presented certificate, with its dates.
    assert_has(
        selfsigned,
        "certificate 0: CN=self-signed.localhost (names: self-signed.localhost), self-signed, valid ",
    );
    assert_has(selfsigned, "fix:   add the upstream's CA to tls.ca");

    let backlog = block(&out, "backlog");
    assert_has(backlog, "FAILED: connect_timeout");
    assert_has(backlog, "not done within 500ms (timeouts.connect)");
    assert_has(backlog, "backlog is full or a firewall drops SYNs");

    assert_has(&out, "1 of 6 servers ok, 5 failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_has_a_status_per_step() {
    let (code, out, err, _faults) = diagnose(&["--json"]).await;
    assert_eq!(code, 1, "stderr:\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json is JSON: {e}\n{out}"));
    assert_eq!(report["ok"], false);
    let server = |name: &str| -> serde_json::Value {
        let upstream = report["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("upstream {name} in {report}"));
        upstream["servers"][0].clone()
    };
    let statuses = |server: &serde_json::Value| -> Vec<String> {
        server["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| {
                assert!(s["summary"].is_string() && s["facts"].is_array(), "{s}");
                format!(
                    "{}:{}",
                    s["step"].as_str().unwrap_or("?"),
                    s["status"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let cases: [(&str, Option<&str>, [&str; 4]); 6] = [
        (
            "fine",
            None,
            ["resolve:skipped", "connect:ok", "tls:skipped", "request:ok"],
        ),
        (
            "refused",
            Some("connect_refused"),
            [
                "resolve:skipped",
                "connect:failed",
                "tls:not_run",
                "request:not_run",
            ],
        ),
        (
            "nosocket",
            Some("socket_not_found"),
            [
                "resolve:skipped",
                "connect:failed",
                "tls:not_run",
                "request:not_run",
            ],
        ),
        (
            "plain",
            Some("tls_handshake_failed"),
            [
                "resolve:skipped",
                "connect:ok",
                "tls:failed",
                "request:not_run",
            ],
        ),
        (
            "selfsigned",
            Some("tls_certificate_invalid"),
            [
                "resolve:skipped",
                "connect:ok",
                "tls:failed",
                "request:not_run",
            ],
        ),
        (
            "backlog",
            Some("connect_timeout"),
            [
                "resolve:skipped",
                "connect:failed",
                "tls:not_run",
                "request:not_run",
            ],
        ),
    ];
    for (name, cause, steps) in cases {
        let server = server(name);
        assert_eq!(statuses(&server), steps, "{name}: {server}");
        match cause {
            None => {
                assert_eq!(server["ok"], true, "{server}");
                assert!(server["cause"].is_null());
            }
            Some(cause) => {
                assert_eq!(server["ok"], false, "{server}");
                assert_eq!(server["cause"], cause, "{server}");
                assert!(server["hint"].is_string(), "a fix hint: {server}");
                assert!(server["detail"].is_string(), "{server}");
            }
        }
    }
    let ms = &server("backlog")["steps"][1]["ms"];
    assert!(ms.is_number(), "timed: {ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_that_works_exits_0() {
    let (code, out, err, _faults) = diagnose(&["fine"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_has(&out, "upstream fine (http)");
    assert!(
        !out.contains("upstream refused"),
        "only the one asked for:\n{out}"
    );
    assert_has(&out, "all 1 servers ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_upstream_exits_2_naming_the_defined_ones() {
    let (code, out, err, _faults) = diagnose(&["nope"]).await;
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert_has(
        &err,
        "no upstream named \"nope\"; defined upstreams: fine, refused, nosocket, plain, selfsigned, backlog",
    );
}

#[test]
fn invalid_config_exits_2_with_its_errors() {
    let dir = TempDir::new("diagnose-bad");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n").expect("write");
    let path = path.display().to_string();
    let (status, _out, err) = run_to_end(&["diagnose", "-c", &path]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert_has(&err, "bad.toml:3:1:");
    assert_has(&err, "nothing probed");
}

/// Runs `causeway diagnose -c FILE` with `config` written into `dir`.
fn diagnose_config(dir: &TempDir, config: &str) -> (i32, String, String) {
    let path = dir.join("causeway.toml");
    std::fs::write(&path, config).expect("write the config");
    let path = path.display().to_string();
    let (status, out, err) = run_to_end(&["diagnose", "-c", &path]);
    (status.code().unwrap_or(-1), out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_socket_shows_owner_and_mode() {
    let faults = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let Some(socket) = faults.permission_denied_socket.clone() else {
        eprintln!("skipped: running as root, which ignores socket modes (EACCES cannot happen)");
        return;
    };
    let dir = TempDir::new("diagnose-denied");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.denied]\nservers = [\"unix:{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"denied\"\n",
        socket.display()
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || diagnose_config(&dir, &config))
        .await
        .expect("diagnose ran");
    assert_eq!(code, 1, "{out}\n{err}");
    assert_has(&out, "FAILED: socket_permission_denied");
    assert_has(&out, "socket s--------- ");
    assert_has(&out, "may NOT connect: no write permission");
    assert_has(&out, "`listen.owner` / `listen.mode`");
}

#[test]
fn php_fpm_answers_get_values() {
    // Like tests/fastcgi.rs: PHP-FPM is required (CI installs it), never skipped.
    let fpm = php::PhpFpm::start(php::Pool::default());
    let dir = TempDir::new("diagnose-fpm");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.php]\nservers = [\"{}\"]\nprotocol = \"fastcgi\"\nfastcgi = {{ root = \"{}\" }}\n[[routes]]\npath = \"/\"\nupstream = \"php\"\n",
        fpm.server(),
        fpm.www.display()
    );
    let (code, out, err) = diagnose_config(&dir, &config);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_has(&out, "✓ request");
    assert_has(&out, "FastCGI GET_VALUES answered: FCGI_MPXS_CONNS=0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_status_other_than_expected_fails_without_a_cause() {
    let faults = faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts");
    let dir = TempDir::new("diagnose-status");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstreams.sick]\nservers = [\"{}\"]\nhealth = {{ check = {{ path = \"/status/503\" }} }}\n[[routes]]\npath = \"/\"\nupstream = \"sick\"\n",
        faults.http
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || diagnose_config(&dir, &config))
        .await
        .expect("diagnose ran");
    assert_eq!(code, 1, "{out}\n{err}");
    assert_has(&out, "FAILED at request");
    assert_has(&out, "✗ request");
    assert_has(
        &out,
        "GET /status/503 → 503 Service Unavailable (health.check expects 200)",
    );
    assert_has(&out, "cause: none: this is the server's own answer");
}
