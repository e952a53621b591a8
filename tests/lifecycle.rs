//! The real `causeway` binary's life cycle (DESIGN.md section 2): SIGTERM drains in-flight
//! requests and exits 0 with the listener closed, SIGHUP swaps the config without failing a
//! request (and keeps the old one when the new one is broken), and `causeway check` reports
//! every error with `file:line:col`. Upstreams are `causeway::faults` in this test process.

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway::faults::{self, Faults, FaultsOptions};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use process::{config_head, run_to_end, write_atomically, Causeway, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_faults() -> Faults {
    faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts")
}

/// A config whose only route sends everything to `upstream`.
fn routed_to(dir: &TempDir, server_extra: &str, upstream: SocketAddr) -> String {
    format!(
        "{}[upstreams.app]\nservers = [\"{upstream}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        config_head(dir, server_extra)
    )
}

/// Opens a keep-alive HTTP/1.1 client connection.
async fn client(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("client handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET on `sender`, with its status and body, or what went wrong (bounded: 10 s).
async fn get_on(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let request = Request::get(path)
            .header("host", "lifecycle.test")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no response: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{status}, body failed: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {path}: no complete response within 10 s"))?
}

/// One GET on a new connection.
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let mut sender = client(addr).await?;
    get_on(&mut sender, path).await
}

/// Asserts `200 ok\n`.
fn assert_ok(result: &Result<(StatusCode, String), String>, what: &str) {
    match result {
        Ok((status, body)) => {
            assert_eq!(*status, StatusCode::OK, "{what}: {body}");
            assert_eq!(body, "ok\n", "{what}");
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Waits (bounded) until `faults` has seen `n` requests for `path`.
async fn wait_for_hits(faults: &Faults, path: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while faults.hits(path) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests for {path} reached the upstream within {within:?}",
            faults.hits(path)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_closes_the_listener_and_exits_0() {
    let upstream = start_faults().await;
    let dir = TempDir::new("sigterm");
    let shutdown_timeout = Duration::from_secs(10);
    let mut proxy = Causeway::start(
        &dir,
        &routed_to(&dir, "shutdown_timeout = \"10s\"", upstream.http),
    );
    let addr = proxy.addr;

    let started = Instant::now();
    let in_flight: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/slow-head?ms=1500").await }))
        .collect();
    // All 20 are at the upstream (so they are in flight, not queued), and 300 ms have passed.
    wait_for_hits(&upstream, "/slow-head", 20, Duration::from_secs(5)).await;
    tokio::time::sleep_until((started + Duration::from_millis(300)).into()).await;
    proxy.signal("TERM");
    let signalled = Instant::now();

    proxy
        .wait_for_log("shutting down", 1, Duration::from_secs(5))
        .await;
    // The listener is closed once shutdown began; give the accept loop a moment to see it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        proxy.wait_exit(Duration::ZERO).await.is_none(),
        "causeway must still be draining the 1.5 s requests; stderr:\n{}",
        proxy.stderr()
    );
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        // No answer to the SYN at all: not accepting either.
        Err(_) => eprintln!("lifecycle: connect after SIGTERM timed out"),
        Ok(Err(e)) => {
            eprintln!("lifecycle: connect after SIGTERM: {e}");
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "a new connection after SIGTERM: {e}"
            )
        }
        Ok(Ok(mut stream)) => {
            // Connected (a backlog entry the kernel still held): it must get no response.
            eprintln!("lifecycle: connect after SIGTERM succeeded; expecting no response");
            let _ = stream
                .write_all(b"GET /ok HTTP/1.1\r\nHost: lifecycle.test\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            if let Ok(Ok(n)) = read {
                assert_eq!(
                    n,
                    0,
                    "a connection made after SIGTERM was answered: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
            }
        }
    }

    for (i, task) in in_flight.into_iter().enumerate() {
        let result = task.await.expect("request task did not panic");
        assert_ok(&result, &format!("in-flight request {i} across SIGTERM"));
    }
    let status = proxy.wait_exit(shutdown_timeout).await.unwrap_or_else(|| {
        panic!(
            "causeway still running {shutdown_timeout:?} after SIGTERM; stderr:\n{}",
            proxy.stderr()
        )
    });
    let took = signalled.elapsed();
    eprintln!(
        "lifecycle: SIGTERM with 20 requests in flight: exit code {:?} {took:?} after the signal",
        status.code()
    );
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("all in-flight requests finished"),
        "drained cleanly, not cut at shutdown_timeout; stderr:\n{}",
        proxy.stderr()
    );
    let logged = proxy
        .access_lines()
        .into_iter()
        .filter(|l| l["path"] == "/slow-head?ms=1500" && l["status"] == 200)
        .filter(|l| l["complete"] == true)
        .count();
    assert_eq!(
        logged, 20,
        "one complete 200 access-log line per in-flight request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_route_without_failing_a_request() {
    let a = start_faults().await;
    let b = start_faults().await;
    let dir = TempDir::new("sighup");
    let proxy = Causeway::start(&dir, &routed_to(&dir, "", a.http));
    let addr = proxy.addr;
    assert_ok(&get(addr, "/ok").await, "before the reload");
    assert_eq!((a.hits("/ok"), b.hits("/ok")), (1, 0), "routed to A");
    // A client connection opened under the old config, kept across the reload.
    let mut kept = client(addr).await.expect("keep-alive client connection");
    assert_ok(&get_on(&mut kept, "/ok").await, "kept connection, before");

    // 200 requests while the config changes: half on new connections, half on one kept one.
    let done = Arc::new(AtomicUsize::new(0));
    let fresh_loop = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..100 {
                match get(addr, "/ok").await {
                    Ok((StatusCode::OK, body)) if body == "ok\n" => {}
                    other => failures.push(format!("new connection, request {i}: {other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };
    let kept_loop = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..100 {
                match get_on(&mut kept, "/ok").await {
                    Ok((StatusCode::OK, body)) if body == "ok\n" => {}
                    other => failures.push(format!("kept connection, request {i}: {other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (failures, kept)
        })
    };

    let deadline = Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the client loops stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    write_atomically(&proxy.config_path, &routed_to(&dir, "", b.http));
    proxy.signal("HUP");
    proxy
        .wait_for_log("configuration reloaded", 1, Duration::from_secs(5))
        .await;
    let done_at_reload = done.load(Ordering::Relaxed);

    let mut failures = fresh_loop
        .await
        .expect("fresh-connection loop did not panic");
    let (kept_failures, mut kept) = kept_loop.await.expect("kept-connection loop did not panic");
    failures.extend(kept_failures);
    let (hits_a, hits_b) = (a.hits("/ok"), b.hits("/ok"));
    eprintln!(
        "lifecycle: SIGHUP after {done_at_reload} of 200 requests: {hits_a} reached A, {hits_b} reached B, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed across the reload: {failures:#?}"
    );
    assert!(
        done_at_reload < 200,
        "the reload happened while the client loops were running"
    );
    assert_eq!(hits_a + hits_b, 202, "every request reached A or B");
    assert!(hits_a >= 52, "requests before the reload went to A");
    assert!(hits_b >= 1, "requests after the reload went to B");

    // After the reload, new requests (on new and on old connections) reach B only.
    assert_ok(&get(addr, "/ok").await, "new connection after the reload");
    assert_ok(
        &get_on(&mut kept, "/ok").await,
        "connection opened before the reload, used after it",
    );
    assert_eq!(a.hits("/ok"), hits_a, "nothing reaches A any more");
    assert_eq!(b.hits("/ok"), hits_b + 2, "both reached B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_serving() {
    let a = start_faults().await;
    let b = start_faults().await;
    let dir = TempDir::new("sighup-broken");
    let proxy = Causeway::start(&dir, &routed_to(&dir, "", a.http));
    let addr = proxy.addr;
    assert_ok(&get(addr, "/ok").await, "before the reload");

    // Routes to B, but with an unknown key: none of it may be applied.
    let broken = routed_to(&dir, "request_header_timout = \"5s\"", b.http);
    write_atomically(&proxy.config_path, &broken);
    proxy.signal("HUP");
    proxy
        .wait_for_log("reload rejected", 1, Duration::from_secs(5))
        .await;
    let stderr = proxy.stderr();
    let rejected = stderr
        .lines()
        .find(|l| l.contains("reload rejected"))
        .expect("the rejection line");
    assert!(
        rejected.contains("request_header_timout"),
        "the rejection names the bad key: {rejected}"
    );
    assert!(
        !stderr.contains("configuration reloaded"),
        "stderr:\n{stderr}"
    );

    for i in 0..5 {
        assert_ok(
            &get(addr, "/ok").await,
            &format!("request {i} after the rejected reload"),
        );
    }
    assert_eq!(a.hits("/ok"), 6, "the old config still routes to A");
    assert_eq!(
        b.hits("/ok"),
        0,
        "nothing of the rejected config was applied"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let (status, stdout, stderr) = run_to_end(&["check", "-c", example]);
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{example}: ok")),
        "a summary on stdout: {stdout}"
    );
}

#[test]
fn check_names_every_error_with_file_line_and_column() {
    let dir = TempDir::new("check");
    let path = dir.join("bad.toml");
    // Line 3: unknown key; line 7: bad duration; line 11: a missing upstream.
    let text = "[server]\n\
                listen = [\"127.0.0.1:0\"]\n\
                request_header_timout = \"10s\"\n\
                \n\
                [upstreams.node]\n\
                servers = [\"127.0.0.1:3000\"]\n\
                timeouts = { connect = \"3 seconds\" }\n\
                \n\
                [[routes]]\n\
                path = \"/\"\n\
                upstream = \"nod\"\n";
    std::fs::write(&path, text).expect("write the bad config");
    let file = path.display().to_string();
    let (status, stdout, stderr) = run_to_end(&["check", "-c", &file]);
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let expected = [
        (format!("{file}:3:1: "), "request_header_timout"),
        (format!("{file}:7:24: "), "3 seconds"),
        (format!("{file}:11:12: "), "nod"),
    ];
    for (location, what) in &expected {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(location.as_str()) && l.contains(what)),
            "stderr has no line starting {location:?} naming {what:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("3 error(s)"),
        "all three, and only three, reported:\n{stderr}"
    );
}

/// The names of the process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_listener_and_keep_their_own_upstream_connections() {
    let faults = start_faults().await;
    let dir = TempDir::new("workers");
    let causeway = Causeway::start(&dir, &routed_to(&dir, "workers = 3\n", faults.http));
    let mut workers: Vec<String> = thread_names(causeway.pid)
        .into_iter()
        .filter(|name| name.starts_with("causeway-w"))
        .collect();
    workers.sort();
    assert_eq!(
        workers,
        ["causeway-w0", "causeway-w1", "causeway-w2"],
        "one thread per configured worker (comm is cut at 15 bytes, so short names)"
    );

    // 24 client connections, 5 sequential requests each: the kernel spreads them over the
    // workers' sockets, and every one is answered.
    let mut clients = Vec::new();
    for _ in 0..24 {
        let addr = causeway.addr;
        clients.push(tokio::spawn(async move {
            let mut sender = client(addr).await?;
            for _ in 0..5 {
                let (status, body) = get_on(&mut sender, "/ok").await?;
                if status != StatusCode::OK || body != "ok\n" {
                    return Err(format!("{status}: {body}"));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for client in clients {
        match client.await {
            Ok(result) => assert_ok(&result.map(|()| (StatusCode::OK, "ok\n".into())), "GET /ok"),
            Err(e) => panic!("client task: {e}"),
        }
    }
    assert_eq!(faults.hits("/ok"), 120);
    // Each worker reuses its own idle upstream connections: at most the 24 concurrent
    // clients' worth were ever opened, far fewer than the 120 requests.
    let opened = faults.connections_accepted();
    assert!(
        (1..=24).contains(&opened),
        "{opened} upstream connections for 120 requests on 24 client connections"
    );
    // Each worker writes its lines once it is idle: the last ones may trail the last response
    // by a moment, never by more than a second.
    let mut lines = causeway.access_lines();
    for _ in 0..100 {
        if lines.len() >= 120 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = causeway.access_lines();
    }
    assert_eq!(lines.len(), 120, "one access-log line per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_connections_that_never_asked_anything() {
    let faults = start_faults().await;
    let dir = TempDir::new("silent-clients");
    // Long enough that waiting for these connections would be plain to see.
    let server = "request_header_timeout = \"20s\"\nshutdown_timeout = \"20s\"\n";
    let mut causeway = Causeway::start(&dir, &routed_to(&dir, server, faults.http));
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(causeway.addr).await.expect("connect"));
    }
    assert_ok(
        &get(causeway.addr, "/ok").await,
        "GET /ok beside the silent clients",
    );
    let stopping = Instant::now();
    causeway.signal("TERM");
    let status = causeway.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 expected, got {status:?}; stderr:\n{}",
        causeway.stderr()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}: it waited for connections that never sent a request",
        stopping.elapsed()
    );
    assert!(
        causeway
            .stderr()
            .contains("all in-flight requests finished"),
        "a clean drain: {}",
        causeway.stderr()
    );
    drop(silent);
}

/// An idle keep-alive client connection holds no I/O buffers (vendor/hyper/CAUSEWAY-PATCH.md):
/// unpatched hyper kept 16 KiB per connection for life, which put 10,000 idle clients at 187
/// MiB. Measured as the growth of causeway's RSS over 900 connections that each carried one
/// request and then stayed silent (kept under the common 1,024 open-files limit): ~5.5 KiB
/// each with the patch, ~14 KiB without it (debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_buffers() {
    const CONNECTIONS: usize = 900;
    let faults = start_faults().await;
    let dir = TempDir::new("idle-memory");
    let server = "workers = 1\nrequest_header_timeout = \"5m\"\n";
    let causeway = Causeway::start(&dir, &routed_to(&dir, server, faults.http));
    // Warm up: the runtime, the upstream pool and the allocator's first arenas.
    for _ in 0..20 {
        let mut stream = one_request(causeway.addr).await;
        let _ = stream.shutdown().await;
    }
    let before = causeway.rss();
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        idle.push(one_request(causeway.addr).await);
    }
    // Let every connection go back to waiting for its next request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = causeway.rss().saturating_sub(before);
    let per_connection = grown / CONNECTIONS as u64;
    assert!(
        per_connection < 10 * 1024,
        "{per_connection} bytes of RSS per idle keep-alive connection ({grown} bytes over \
         {CONNECTIONS}): more than the connection's state, so its buffers were kept"
    );
    // Idle, not dead: every connection still carries a second request.
    for stream in idle.iter_mut().step_by(90) {
        let answer = exchange(stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "second request: {answer}"
        );
    }
    assert_eq!(
        faults.hits("/ok"),
        (20 + CONNECTIONS + CONNECTIONS / 90) as u64
    );
}

/// Opens a connection and completes one keep-alive `GET /ok` on it.
async fn one_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let answer = exchange(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "first request: {answer}"
    );
    stream
}

/// Sends `GET /ok` on `stream` and reads its whole answer (the body is `ok\n`).
async fn exchange(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: causeway.test\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("send GET /ok: {e}"));
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no whole answer within 10 s: {answer:?}"))
            .unwrap_or_else(|e| panic!("read the answer: {e}"));
        assert!(read > 0, "connection closed mid-answer: {answer:?}");
        answer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}
