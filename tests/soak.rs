//! Chaos soak against the real `causeway` binary (issue 8), so its memory and open file
//! descriptors can be read from /proc/PID. `causeway::faults` runs in this test process as the
//! upstream; the binary routes by Host to one upstream per fault class (so each can have its
//! own short timeout) and writes its access log as JSON to a file.
//!
//! `chaos_soak_...`: many concurrent clients (keep-alive connections, sometimes a new one) send
//! GET and POST requests, each for a fault picked by a seeded xorshift generator. Every answer
//! is checked against the fault it asked for (status, JSON `cause`, `Proxy-Status`, a complete
//! and correct body for the good paths, a client-visible abort for the body faults), and at the
//! end every request must have exactly one access-log line (found by `x-request-id`) saying the
//! same. VmRSS and the open fds of causeway are read after a warm-up round and at the end, each
//! after a quiet period: they must be flat.
//!
//! Knobs (environment): `SOAK_REQUESTS` (default 2000), `SOAK_SECONDS` (time limit of the main
//! round, default 90: the round stops sending when it is reached), `SOAK_CLIENTS` (32),
//! `SOAK_WARMUP` (1000), `SOAK_SEED` (fixed default, printed, so a failure can be replayed),
//! `SOAK_ONLY` (a comma-separated list of faults, e.g. `truncate,resetbody`, to hammer a few).
//! `scripts/soak` runs the big local round in a release build.
//!
//! Two operations under load, each with its own binary: SIGHUP reloads (a route added, a
//! timeout changed) while clients keep sending, and SIGTERM with 100 requests in flight.

#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway::faults::{self, Faults, FaultsOptions};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use process::{config_head, write_atomically, Causeway, TempDir};
use serde_json::Value;
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
/// Longest wait for a response head, and again for its body, before the test calls it a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Open fds causeway may hold above its post-warm-up baseline once the load is over.
const FD_SLACK: usize = 10;
/// VmRSS growth allowed between the post-warm-up baseline and the end.
const RSS_SLACK: u64 = 8 * MIB;
/// Mismatches shown in a failure message.
const SHOWN: usize = 20;

// ---------------------------------------------------------------------------------------------
// Settings and the random generator
// ---------------------------------------------------------------------------------------------

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a whole number: {e}")),
        Err(_) => default,
    }
}

#[derive(Clone, Debug)]
struct Settings {
    requests: usize,
    seconds: u64,
    clients: usize,
    warmup: usize,
    seed: u64,
    /// The faults to pick from, with their weights: [`MIX`], or its part named in `SOAK_ONLY`.
    mix: Vec<(Fault, u64)>,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            requests: env_number("SOAK_REQUESTS", 2000) as usize,
            seconds: env_number("SOAK_SECONDS", 90),
            clients: env_number("SOAK_CLIENTS", 32).max(1) as usize,
            warmup: env_number("SOAK_WARMUP", 1000) as usize,
            seed: env_number("SOAK_SEED", 0x5EED_CA05_E3A7),
            mix: only(std::env::var("SOAK_ONLY").ok().as_deref()),
        }
    }
}

/// `SOAK_ONLY=truncate,resetbody` keeps those faults of [`MIX`] (names as in [`Fault`],
/// case-insensitive, `Status(502)` as `status502`), to hammer one kind of failure.
fn only(names: Option<&str>) -> Vec<(Fault, u64)> {
    let Some(names) = names.filter(|n| !n.trim().is_empty()) else {
        return MIX.to_vec();
    };
    let key = |f: &Fault| {
        format!("{f:?}")
            .to_ascii_lowercase()
            .replace(['(', ')'], "")
    };
    let wanted: Vec<String> = names
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase().replace(['-', '_', '/'], ""))
        .collect();
    let mix: Vec<(Fault, u64)> = MIX
        .iter()
        .filter(|(f, _)| wanted.contains(&key(f)))
        .copied()
        .collect();
    let known: Vec<String> = MIX.iter().map(|(f, _)| key(f)).collect();
    assert!(
        mix.len() == wanted.len(),
        "SOAK_ONLY={names:?} names a fault that is not one of {known:?}"
    );
    mix
}

/// xorshift64* (Vigna), seeded through SplitMix64 so that nearby seeds give unrelated streams.
/// Not for anything but picking faults and sizes reproducibly.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Faults, what each should give, and the config routing them
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    Ok,
    OkSized,
    Echo,
    SlowBody,
    Status(u16),
    Close,
    Reset,
    PartialHead,
    Garbage,
    HugeHeader,
    Hang,
    Truncate,
    ResetBody,
    StallBody,
    /// `/drop-next`, then a request on the same upstream (GET or POST): the keep-alive race.
    DropNext,
    Refused,
    MissingSocket,
    BacklogTcp,
    BacklogUnix,
    NoRoute,
}

/// Relative weights. The slow ones (300 ms each: /hang, /stall-body, the TCP backlog) are rare
/// so that the round is not mostly waiting. /hang and /stall-body also keep their connection
/// open in the faults server until it shuts down (even after causeway closed its end), and it
/// serves at most 4096 at once: at these weights that allows well over 100,000 requests.
const MIX: &[(Fault, u64)] = &[
    (Fault::Ok, 8),
    (Fault::OkSized, 8),
    (Fault::Echo, 6),
    (Fault::SlowBody, 2),
    (Fault::Status(502), 2),
    (Fault::Status(503), 2),
    (Fault::Status(404), 2),
    (Fault::Close, 3),
    (Fault::Reset, 3),
    (Fault::PartialHead, 3),
    (Fault::Garbage, 3),
    (Fault::HugeHeader, 2),
    (Fault::Hang, 1),
    (Fault::Truncate, 3),
    (Fault::ResetBody, 3),
    (Fault::StallBody, 1),
    (Fault::DropNext, 4),
    (Fault::Refused, 3),
    (Fault::MissingSocket, 3),
    (Fault::BacklogTcp, 1),
    (Fault::BacklogUnix, 3),
    (Fault::NoRoute, 1),
];

fn pick(mix: &[(Fault, u64)], rng: &mut Rng) -> Fault {
    let total: u64 = mix.iter().map(|(_, w)| w).sum();
    let mut n = rng.below(total);
    for (fault, weight) in mix {
        if n < *weight {
            return *fault;
        }
        n -= weight;
    }
    unreachable!("the weights add up to the total")
}

/// Host → upstream: the routes of [`soak_config`]. `None`: no route (no_route).
fn upstream_of(host: &str) -> Option<&'static str> {
    Some(match host {
        "ok.soak" => "ok",
        "broken.soak" => "broken",
        "hang.soak" => "hang",
        "stall.soak" => "stall",
        "race.soak" => "race",
        "refused.soak" => "refused",
        "missing.soak" => "missing",
        "backlog.soak" => "backlog",
        "backlog-unix.soak" => "backlog_unix",
        _ => return None,
    })
}

/// One upstream per fault class, each with the timeout its fault needs, retries off where a
/// retry would only repeat the fault, and passive health off (`max_fails = 0`): the faults are
/// on purpose, and a server marked down would turn every answer into no_healthy_upstream.
fn soak_config(dir: &TempDir, f: &Faults) -> String {
    let unix = |p: &std::path::Path| format!("unix:{}", p.display());
    let upstreams: [(&str, String, &str); 9] = [
        // Pools drain 1 s after the load stops, so the quiet-period fd count is the bare one.
        ("ok", f.http.to_string(), "pool = { idle_timeout = \"1s\" }"),
        ("broken", f.http.to_string(), "retry = { attempts = 1 }"),
        // `write` is set (default 30 s) so that a header timeout that waits for the write
        // timeout first shows up as a 2 s answer (see `max_ms`), not as a client-side hang.
        (
            "hang",
            f.http.to_string(),
            "timeouts = { header = \"300ms\", write = \"2s\" }\nretry = { attempts = 1 }",
        ),
        (
            "stall",
            f.http.to_string(),
            "timeouts = { read = \"300ms\" }\nretry = { attempts = 1 }",
        ),
        // The stale-connection retry spends no attempt and no budget; the budget is raised
        // anyway so a burst of races never turns into a refused retry.
        (
            "race",
            f.http.to_string(),
            "pool = { idle_timeout = \"1s\" }\nretry = { attempts = 2, budget = 10.0 }",
        ),
        ("refused", f.refused.to_string(), "retry = { attempts = 1 }"),
        (
            "missing",
            unix(&f.missing_socket),
            "retry = { attempts = 1 }",
        ),
        (
            "backlog",
            f.backlog_full.to_string(),
            "timeouts = { connect = \"300ms\" }\nretry = { attempts = 1 }",
        ),
        (
            "backlog_unix",
            unix(&f.backlog_full_unix),
            "retry = { attempts = 1 }",
        ),
    ];
    let mut text = config_head(dir, "shutdown_timeout = \"5s\"");
    for (name, server, extra) in &upstreams {
        text.push_str(&format!(
            "[upstreams.{name}]\nservers = [\"{server}\"]\nhealth = {{ max_fails = 0 }}\n{extra}\n\n"
        ));
    }
    for host in [
        "ok.soak",
        "broken.soak",
        "hang.soak",
        "stall.soak",
        "race.soak",
        "refused.soak",
        "missing.soak",
        "backlog.soak",
        "backlog-unix.soak",
    ] {
        let upstream = upstream_of(host).expect("every soak host has an upstream");
        text.push_str(&format!(
            "[[routes]]\nhost = \"{host}\"\npath = \"/\"\nupstream = \"{upstream}\"\n\n"
        ));
    }
    text
}

/// What a complete body must be.
#[derive(Clone, Debug)]
enum Want {
    Exact(Bytes),
    /// `/ok?size=N`: N bytes of a..z repeated.
    Pattern(usize),
}

/// What the client must see.
#[derive(Clone, Debug)]
enum Expect {
    /// A complete response relayed from the upstream.
    Full { status: u16, body: Want },
    /// An error page causeway generated.
    Generated {
        status: u16,
        cause: &'static str,
        proxy_error: &'static str,
    },
    /// 200 relayed, then the body aborted.
    Cut { cause: &'static str },
    /// `/ok` on the race upstream: 200 `ok\n` (a GET meeting a dropped pooled connection is
    /// retried on a fresh one), or for a POST that met one, 502 `stale_connection`.
    Race,
}

/// One request to send.
struct Planned {
    fault: Fault,
    method: &'static str,
    host: &'static str,
    path: String,
    body: Bytes,
    expect: Expect,
}

/// The request(s) for `fault`: one, or two for the keep-alive race.
fn plan(fault: Fault, rng: &mut Rng) -> Vec<Planned> {
    // Half GET, half POST with a small body (small enough to be buffered and replayable).
    let (method, body) = if rng.one_in(2) {
        ("GET", Bytes::new())
    } else {
        let n = rng.below(4097) as usize;
        ("POST", Bytes::from(rng.bytes(n)))
    };
    let generated = |status, cause, proxy_error| Expect::Generated {
        status,
        cause,
        proxy_error,
    };
    let full = |status, body: &'static [u8]| Expect::Full {
        status,
        body: Want::Exact(Bytes::from_static(body)),
    };
    let (host, path, expect): (&'static str, String, Expect) = match fault {
        Fault::Ok => ("ok.soak", "/ok".into(), full(200, b"ok\n")),
        Fault::OkSized => {
            let size = rng.below(MIB + 1) as usize;
            let expect = Expect::Full {
                status: 200,
                body: Want::Pattern(size),
            };
            ("ok.soak", format!("/ok?size={size}"), expect)
        }
        Fault::Echo => {
            // Up to 256 KiB: above max_replay_body (64 KiB) the body is streamed, not buffered.
            let n = rng.below(256 * 1024 + 1) as usize;
            let body = Bytes::from(rng.bytes(n));
            let expect = Expect::Full {
                status: 200,
                body: Want::Exact(body.clone()),
            };
            return vec![Planned {
                fault,
                method: "POST",
                host: "ok.soak",
                path: "/echo".into(),
                body,
                expect,
            }];
        }
        Fault::SlowBody => (
            "ok.soak",
            "/slow-body?ms=20&chunks=3".into(),
            full(200, b"chunk 0\nchunk 1\nchunk 2\n"),
        ),
        Fault::Status(code) => (
            "ok.soak",
            format!("/status/{code}"),
            Expect::Full {
                status: code,
                body: Want::Exact(Bytes::from(format!("status {code}\n"))),
            },
        ),
        Fault::Close => (
            "broken.soak",
            "/close".into(),
            generated(502, "premature_close", "connection_terminated"),
        ),
        Fault::Reset => (
            "broken.soak",
            "/reset".into(),
            generated(502, "upstream_reset", "connection_terminated"),
        ),
        Fault::PartialHead => (
            "broken.soak",
            "/partial-head".into(),
            generated(502, "premature_close", "http_response_incomplete"),
        ),
        Fault::Garbage => (
            "broken.soak",
            "/garbage".into(),
            generated(502, "invalid_response", "http_protocol_error"),
        ),
        Fault::HugeHeader => (
            "broken.soak",
            "/huge-header".into(),
            generated(502, "header_too_large", "http_response_header_section_size"),
        ),
        Fault::Hang => (
            "hang.soak",
            "/hang".into(),
            generated(504, "header_timeout", "http_response_timeout"),
        ),
        Fault::Truncate => (
            "broken.soak",
            "/truncate".into(),
            Expect::Cut {
                cause: "body_truncated",
            },
        ),
        Fault::ResetBody => (
            "broken.soak",
            "/reset-body".into(),
            Expect::Cut {
                cause: "body_truncated",
            },
        ),
        Fault::StallBody => (
            "stall.soak",
            "/stall-body".into(),
            Expect::Cut {
                cause: "body_timeout",
            },
        ),
        Fault::DropNext => {
            let first = Planned {
                fault,
                method: "GET",
                host: "race.soak",
                path: "/drop-next".into(),
                body: Bytes::new(),
                expect: Expect::Race,
            };
            let second = Planned {
                fault,
                method,
                host: "race.soak",
                path: "/ok".into(),
                body,
                expect: Expect::Race,
            };
            return vec![first, second];
        }
        Fault::Refused => (
            "refused.soak",
            "/ok".into(),
            generated(502, "connect_refused", "connection_refused"),
        ),
        Fault::MissingSocket => (
            "missing.soak",
            "/ok".into(),
            generated(502, "socket_not_found", "connection_refused"),
        ),
        Fault::BacklogTcp => (
            "backlog.soak",
            "/ok".into(),
            generated(504, "connect_timeout", "connection_timeout"),
        ),
        Fault::BacklogUnix => (
            "backlog-unix.soak",
            "/ok".into(),
            generated(503, "socket_backlog_full", "connection_limit_reached"),
        ),
        Fault::NoRoute => {
            // GET only: causeway answers before reading a body, which is not what this tests.
            return vec![Planned {
                fault,
                method: "GET",
                host: "nowhere.soak",
                path: "/ok".into(),
                body: Bytes::new(),
                expect: generated(404, "no_route", "destination_not_found"),
            }];
        }
    };
    vec![Planned {
        fault,
        method,
        host,
        path,
        body,
        expect,
    }]
}

/// The `/ok?size=N` body pattern: byte i is `b'a' + i % 26`.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..MIB as usize + 26)
            .map(|i| b'a' + (i % 26) as u8)
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

type Sender = SendRequest<Full<Bytes>>;

/// What the client saw.
struct Reply {
    status: u16,
    headers: HeaderMap,
    /// `Err` when the body did not end cleanly.
    body: Result<Bytes, String>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("client handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `request` on the kept connection `conn` (a new one when there is none, it is closed
/// or `fresh` asks for one). The connection is dropped after an aborted body or an error.
async fn exchange(
    addr: SocketAddr,
    conn: &mut Option<Sender>,
    fresh: bool,
    request: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    if fresh || conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = Some(connect(addr).await?);
    }
    let mut sender = conn.take().expect("a connection was just made");
    let ready = tokio::time::timeout(REQUEST_TIMEOUT, sender.ready()).await;
    if !matches!(ready, Ok(Ok(()))) {
        // Closed by the proxy between two requests, as HTTP/1.1 allows: use a new one.
        sender = connect(addr).await?;
    }
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("no response head: {e}")),
        Err(_) => return Err(format!("no response head within {REQUEST_TIMEOUT:?}")),
    };
    let (parts, body) = response.into_parts();
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("body not done within {REQUEST_TIMEOUT:?}")),
    };
    if body.is_ok() {
        *conn = Some(sender);
    }
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

fn request(method: &str, host: &str, path: &str, id: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("accept", "application/json")
        .header("x-request-id", id)
        .body(Full::new(body))
        .expect("a valid request")
}

// ---------------------------------------------------------------------------------------------
// Checking answers and access-log lines
// ---------------------------------------------------------------------------------------------

/// What the access log's `attempts` must look like.
#[derive(Clone, Copy, Debug)]
enum Attempts {
    /// None: decided before any upstream attempt (no_route).
    Zero,
    /// Exactly one, with this cause.
    One(Option<&'static str>),
    /// One clean attempt, or a reused connection found dropped (`stale_connection`, reused)
    /// and then a clean attempt on a fresh connection: the race absorbed.
    Absorbable,
    /// One attempt, `stale_connection` on a reused connection: a sent POST is not retried.
    StaleNotRetried,
}

/// What the access-log line of a request must say.
#[derive(Clone, Debug)]
struct LogExpect {
    status: u16,
    cause: Option<&'static str>,
    upstream_status: Option<u16>,
    complete: bool,
    attempts: Attempts,
    /// For the 300 ms timeouts: the longest `total_ms` that is still "300 ms" under load.
    max_ms: Option<u64>,
}

/// A request sent, for the access-log check at the end.
struct Record {
    id: String,
    fault: Fault,
    method: &'static str,
    host: &'static str,
    path: String,
    /// `None` when the client got no answer (already a mismatch): presence is still checked.
    log: Option<LogExpect>,
    /// What the client saw that did not match, if anything.
    problem: Option<String>,
}

impl Record {
    fn label(&self) -> String {
        format!(
            "{} {} {}{} ({:?})",
            self.id, self.method, self.host, self.path, self.fault
        )
    }
}

/// The faults that end on one of the 300 ms timeouts (header, read, connect) must end near
/// it: within 1 s, generous for a loaded debug build, and well below any other timeout.
fn timed(fault: Fault) -> Option<u64> {
    matches!(fault, Fault::Hang | Fault::StallBody | Fault::BacklogTcp).then_some(1000)
}

/// Checks what the client saw against the plan; returns the problems and what the access log
/// must then say.
fn check_reply(p: &Planned, id: &str, reply: &Reply) -> (Vec<String>, LogExpect) {
    let mut problems = Vec::new();
    let body_text = |reply: &Reply| match &reply.body {
        Ok(b) if b.len() <= 300 => format!("{:?}", String::from_utf8_lossy(b)),
        Ok(b) => format!("{} bytes", b.len()),
        Err(e) => format!("body error: {e}"),
    };
    if reply.header("x-request-id").as_deref() != Some(id) {
        problems.push(format!(
            "x-request-id is {:?}, sent {id}",
            reply.header("x-request-id")
        ));
    }
    let check_full = |problems: &mut Vec<String>, status: u16, want: &Want| {
        if reply.status != status {
            problems.push(format!(
                "status {} (want {status}): {}",
                reply.status,
                body_text(reply)
            ));
            return;
        }
        if let Some(ps) = reply.header("proxy-status") {
            problems.push(format!("relayed answer has a Proxy-Status: {ps}"));
        }
        match (&reply.body, want) {
            (Err(e), _) => problems.push(format!("body incomplete: {e}")),
            (Ok(got), Want::Exact(want)) if got != want => problems.push(format!(
                "body differs: {} bytes (want {}): {}",
                got.len(),
                want.len(),
                body_text(reply)
            )),
            (Ok(got), Want::Pattern(size)) if got[..] != pattern()[..*size] => {
                let first_bad = got
                    .iter()
                    .zip(pattern())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(*size));
                problems.push(format!(
                    "pattern body: {} bytes (want {size}), first difference at byte {first_bad}",
                    got.len()
                ));
            }
            _ => {}
        }
    };
    let check_generated =
        |problems: &mut Vec<String>, status: u16, cause: &str, proxy_error: &str| {
            if reply.status != status {
                problems.push(format!(
                    "status {} (want {status} {cause}): {}",
                    reply.status,
                    body_text(reply)
                ));
                return;
            }
            let json = match &reply.body {
                Ok(b) => serde_json::from_slice::<Value>(b).ok(),
                Err(_) => None,
            };
            match json {
                Some(json) => {
                    if json["cause"] != cause || json["status"] != status {
                        problems.push(format!("JSON body says {json}, want {status} {cause}"));
                    }
                    if json["request_id"] != id {
                        problems.push(format!("JSON body request_id: {json}"));
                    }
                }
                None => problems.push(format!("not a JSON error body: {}", body_text(reply))),
            }
            match reply.header("proxy-status") {
                Some(ps)
                    if ps.starts_with(&format!("causeway; error={proxy_error};"))
                        && ps.contains(&format!("details=\"{cause}")) => {}
                other => problems.push(format!(
                    "Proxy-Status {other:?}, want error={proxy_error} details=\"{cause}...\""
                )),
            }
            if status == 503 && reply.header("retry-after").is_none() {
                problems.push("503 without Retry-After".to_string());
            }
        };
    let log = match &p.expect {
        Expect::Full { status, body } => {
            check_full(&mut problems, *status, body);
            LogExpect {
                status: *status,
                cause: None,
                upstream_status: Some(*status),
                complete: true,
                attempts: Attempts::One(None),
                max_ms: None,
            }
        }
        Expect::Generated {
            status,
            cause,
            proxy_error,
        } => {
            check_generated(&mut problems, *status, cause, proxy_error);
            LogExpect {
                status: *status,
                cause: Some(cause),
                upstream_status: None,
                complete: true,
                attempts: if p.fault == Fault::NoRoute {
                    Attempts::Zero
                } else {
                    Attempts::One(Some(cause))
                },
                max_ms: timed(p.fault),
            }
        }
        Expect::Cut { cause } => {
            if reply.status != 200 {
                problems.push(format!(
                    "status {} (want 200, then a cut body): {}",
                    reply.status,
                    body_text(reply)
                ));
            } else if let Ok(b) = &reply.body {
                problems.push(format!(
                    "body ended cleanly ({} bytes): the client cannot tell it is incomplete",
                    b.len()
                ));
            }
            LogExpect {
                status: 200,
                cause: Some(cause),
                upstream_status: Some(200),
                complete: false,
                attempts: Attempts::One(None),
                max_ms: timed(p.fault),
            }
        }
        Expect::Race if p.method == "POST" && reply.status == 502 => {
            check_generated(
                &mut problems,
                502,
                "stale_connection",
                "connection_terminated",
            );
            LogExpect {
                status: 502,
                cause: Some("stale_connection"),
                upstream_status: None,
                complete: true,
                attempts: Attempts::StaleNotRetried,
                max_ms: None,
            }
        }
        Expect::Race => {
            let want = Want::Exact(Bytes::from_static(b"ok\n"));
            check_full(&mut problems, 200, &want);
            LogExpect {
                status: 200,
                cause: None,
                upstream_status: Some(200),
                complete: true,
                // A sent POST is never retried, so a POST that got 200 had one clean attempt.
                attempts: if p.method == "GET" {
                    Attempts::Absorbable
                } else {
                    Attempts::One(None)
                },
                max_ms: None,
            }
        }
    };
    (problems, log)
}

/// Checks one access-log line against the request and what it must say.
fn check_line(r: &Record, want: &LogExpect, line: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |field: &str, value: Value| {
        if line[field] != value {
            problems.push(format!("{field} is {}, want {value}", line[field]));
        }
    };
    expect("status", want.status.into());
    expect("cause", want.cause.map_or(Value::Null, Value::from));
    expect(
        "upstream_status",
        want.upstream_status.map_or(Value::Null, Value::from),
    );
    expect("complete", want.complete.into());
    expect("method", r.method.into());
    expect("host", r.host.into());
    expect("path", r.path.as_str().into());
    expect(
        "upstream",
        upstream_of(r.host).map_or(Value::Null, Value::from),
    );
    if let Some(max) = want.max_ms {
        if line["total_ms"].as_u64().is_none_or(|ms| ms > max) {
            problems.push(format!(
                "total_ms is {}, want at most {max} for a 300 ms timeout",
                line["total_ms"]
            ));
        }
    }
    let attempts = line["attempts"].as_array().cloned().unwrap_or_default();
    let is = |a: &Value, cause: Option<&str>, reused: Option<bool>| {
        a["cause"] == cause.map_or(Value::Null, Value::from)
            && reused.is_none_or(|reused| a["reused"] == reused)
    };
    let ok = match want.attempts {
        Attempts::Zero => attempts.is_empty(),
        Attempts::One(cause) => attempts.len() == 1 && is(&attempts[0], cause, None),
        Attempts::Absorbable => match attempts.as_slice() {
            [one] => is(one, None, None),
            [stale, fresh] => {
                is(stale, Some("stale_connection"), Some(true)) && is(fresh, None, Some(false))
            }
            _ => false,
        },
        Attempts::StaleNotRetried => {
            attempts.len() == 1 && is(&attempts[0], Some("stale_connection"), Some(true))
        }
    };
    if !ok {
        problems.push(format!(
            "attempts {}, want {:?}",
            line["attempts"], want.attempts
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// A round of load
// ---------------------------------------------------------------------------------------------

/// Shared by the clients of one round.
struct Round {
    addr: SocketAddr,
    label: &'static str,
    total: usize,
    next: AtomicUsize,
    deadline: Instant,
    mix: Vec<(Fault, u64)>,
}

struct RoundResult {
    records: Vec<Record>,
    /// The time limit stopped the round before `total` faults were sent.
    time_limited: bool,
    took: Duration,
}

/// Sends `total` faults (a race is two requests) from `s.clients` concurrent clients, checking
/// every answer; stops early at `deadline`.
async fn run_round(
    addr: SocketAddr,
    s: &Settings,
    label: &'static str,
    total: usize,
    deadline: Instant,
) -> RoundResult {
    let started = Instant::now();
    let round = Arc::new(Round {
        addr,
        label,
        total,
        next: AtomicUsize::new(0),
        deadline,
        mix: s.mix.clone(),
    });
    let clients: Vec<_> = (0..s.clients)
        .map(|i| {
            let round = round.clone();
            let salt = label
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            let seed = s.seed ^ salt << 32 ^ (i as u64).wrapping_mul(0x9E37_79B9);
            tokio::spawn(client(round, Rng::new(seed)))
        })
        .collect();
    let mut records = Vec::new();
    for task in clients {
        records.extend(task.await.expect("a soak client task did not panic"));
    }
    let time_limited = round.next.load(Ordering::Relaxed) < total;
    RoundResult {
        records,
        time_limited,
        took: started.elapsed(),
    }
}

/// One client: takes fault numbers until the round's total or deadline is reached.
async fn client(round: Arc<Round>, mut rng: Rng) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conn: Option<Sender> = None;
    while Instant::now() < round.deadline {
        let n = round.next.fetch_add(1, Ordering::Relaxed);
        if n >= round.total {
            break;
        }
        let fault = pick(&round.mix, &mut rng);
        for (k, p) in plan(fault, &mut rng).into_iter().enumerate() {
            let id = format!("{}-{n}-{k}", round.label);
            let fresh = rng.one_in(8);
            let req = request(p.method, p.host, &p.path, &id, p.body.clone());
            let mut record = Record {
                id,
                fault,
                method: p.method,
                host: p.host,
                path: p.path.clone(),
                log: None,
                problem: None,
            };
            let problems = match exchange(round.addr, &mut conn, fresh, req).await {
                Ok(reply) => {
                    let (problems, log) = check_reply(&p, &record.id, &reply);
                    record.log = Some(log);
                    problems
                }
                Err(e) => vec![e],
            };
            if !problems.is_empty() {
                record.problem = Some(problems.join("; "));
            }
            records.push(record);
        }
    }
    records
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Waits for causeway to go quiet (idle pools expire after 1 s and are swept every 0.5 s),
/// then until its fd count holds still (bounded: 10 s); returns (fds, VmRSS).
async fn settle(proxy: &Causeway) -> (usize, u64) {
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = open_fds(proxy.pid);
    let mut steady = 0;
    while steady < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = open_fds(proxy.pid);
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    (last, proxy.rss())
}

async fn start_faults() -> Faults {
    faults::start(FaultsOptions::loopback())
        .await
        .expect("faults server starts")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Reads the access log until it has `at_least` lines (bounded: 10 s); returns the lines
/// grouped by request id, and the lines that are not JSON or have no id.
async fn access_lines_by_id(
    path: &std::path::Path,
    at_least: usize,
) -> (HashMap<String, Vec<Value>>, Vec<String>, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= at_least || Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    let mut bad = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        count += 1;
        match serde_json::from_str::<Value>(line) {
            Ok(v) => match v["request_id"].as_str() {
                Some(id) => by_id.entry(id.to_string()).or_default().push(v),
                None => bad.push(format!("access-log line without request_id: {line}")),
            },
            Err(e) => bad.push(format!("access-log line is not JSON ({e}): {line}")),
        }
    }
    (by_id, bad, count)
}

fn show(list: &[String]) -> String {
    let mut out: String = list
        .iter()
        .take(SHOWN)
        .map(|m| format!("\n  {m}"))
        .collect();
    if list.len() > SHOWN {
        out.push_str(&format!("\n  ... and {} more", list.len() - SHOWN));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_soak_every_answer_matches_its_fault_once_in_the_log_and_memory_and_fds_stay_flat() {
    let s = Settings::from_env();
    eprintln!(
        "soak: {} requests, {} clients, {} warm-up, time limit {} s, seed {:#x} (SOAK_SEED), {} faults",
        s.requests,
        s.clients,
        s.warmup,
        s.seconds,
        s.seed,
        s.mix.len()
    );
    let upstream = start_faults().await;
    let dir = TempDir::new("soak");
    let proxy = Causeway::start(&dir, &soak_config(&dir, &upstream));
    let addr = proxy.addr;
    let test_started = Instant::now();

    let far = Instant::now() + Duration::from_secs(s.seconds.max(60));
    let warm = run_round(addr, &s, "warm", s.warmup, far).await;
    let (fds_before, rss_before) = settle(&proxy).await;
    eprintln!(
        "soak: warm-up {} requests in {:.1?}; causeway then holds {fds_before} fds, VmRSS {:.1} MiB",
        warm.records.len(),
        warm.took,
        mib(rss_before)
    );

    let deadline = Instant::now() + Duration::from_secs(s.seconds);
    // VmRSS every second under load, so a steady climb (a leak) can be told from a plateau.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, pid) = (sampling.clone(), proxy.pid);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) && samples.len() < 100_000 {
                if let Some(kib) = vm_rss_kib(pid) {
                    samples.push(kib);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    let main = run_round(addr, &s, "soak", s.requests, deadline).await;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.expect("the RSS sampler did not panic");
    let peak_rss = proxy.peak_rss();
    let rss_loaded = proxy.rss();
    let (fds_after, rss_after) = settle(&proxy).await;
    assert!(
        proxy_alive(&proxy),
        "causeway exited during the soak; stderr tail:\n{}",
        tail(&proxy.stderr(), 40)
    );

    // Every request, warm-up included: exactly one access-log line saying what the client saw.
    let records: Vec<&Record> = warm.records.iter().chain(&main.records).collect();
    let (by_id, mut bad_lines, line_count) =
        access_lines_by_id(&proxy.access_path, records.len()).await;
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    // One entry per request whose answer or access-log line did not match its fault.
    let mut mismatches: Vec<(Fault, String)> = Vec::new();
    let (mut client_side, mut log_side) = (0, 0);
    let mut races_absorbed = 0;
    let mut stale_posts = 0;
    for r in &records {
        let lines = by_id.get(&r.id).map(Vec::as_slice).unwrap_or_default();
        let mut problems = Vec::new();
        if let Some(problem) = &r.problem {
            client_side += 1;
            problems.push(problem.clone());
            if r.log.is_none() {
                // No answer at all: what did causeway think it sent?
                match lines {
                    [line] => problems.push(format!("the access log says: {line}")),
                    _ => problems.push("and no single access-log line".to_string()),
                }
            }
        }
        match lines {
            [] => missing.push(r.label()),
            [line] => {
                if let Some(want) = &r.log {
                    let wrong = check_line(r, want, line);
                    if !wrong.is_empty() {
                        log_side += 1;
                        problems.push(format!("access log: {}: {line}", wrong.join("; ")));
                    }
                }
                if line["attempts"].as_array().is_some_and(|a| a.len() == 2) {
                    races_absorbed += 1;
                }
                if line["cause"] == "stale_connection" {
                    stale_posts += 1;
                }
            }
            lines => duplicated.push(format!("{} has {} lines", r.label(), lines.len())),
        }
        if !problems.is_empty() {
            mismatches.push((r.fault, format!("{}: {}", r.label(), problems.join("; "))));
        }
    }
    let ours: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    bad_lines.extend(
        by_id
            .keys()
            .filter(|id| !ours.contains(id.as_str()))
            .map(|id| format!("access-log line for a request never sent: {id}")),
    );

    let stderr = proxy.stderr();
    let alarming: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect();

    let mut by_fault: HashMap<Fault, usize> = HashMap::new();
    for r in &main.records {
        *by_fault.entry(r.fault).or_default() += 1;
    }
    let mut mix: Vec<_> = by_fault.into_iter().collect();
    mix.sort();
    let mut wrong_by_fault: HashMap<Fault, usize> = HashMap::new();
    for (fault, _) in &mismatches {
        *wrong_by_fault.entry(*fault).or_default() += 1;
    }
    let mut wrong_by_fault: Vec<_> = wrong_by_fault.into_iter().collect();
    wrong_by_fault.sort();
    let rate = main.records.len() as f64 / main.took.as_secs_f64();
    eprintln!(
        "soak: main round {} requests in {:.1?} ({rate:.0}/s){}; {} warm-up; {} mismatches ({client_side} seen by the client, {log_side} in the access log) {wrong_by_fault:?}",
        main.records.len(),
        main.took,
        if main.time_limited { ", STOPPED BY THE TIME LIMIT" } else { "" },
        warm.records.len(),
        mismatches.len(),
    );
    eprintln!(
        "soak: access log {line_count} lines for {} requests: {} missing, {} duplicated, {} stray or bad; {races_absorbed} races absorbed, {stale_posts} sent POSTs reported stale_connection",
        records.len(),
        missing.len(),
        duplicated.len(),
        bad_lines.len()
    );
    eprintln!(
        "soak: causeway fds {fds_before} -> {fds_after}; VmRSS {:.1} -> {:.1} MiB (under load {:.1}, peak VmHWM {:.1}); total {:.1?}",
        mib(rss_before),
        mib(rss_after),
        mib(rss_loaded),
        mib(peak_rss),
        test_started.elapsed()
    );
    eprintln!(
        "soak: faults server connections accepted {}; this test process holds {} fds",
        upstream.connections_accepted(),
        open_fds(std::process::id())
    );
    eprintln!(
        "soak: VmRSS under load, MiB, every ~1 s: {}",
        series(&samples)
    );
    eprintln!("soak: mix {mix:?}");

    let mut failures = Vec::new();
    if !mismatches.is_empty() {
        // The first few of each fault, so a rare kind is not hidden behind a common one.
        let mut shown: Vec<String> = Vec::new();
        for (fault, _) in &wrong_by_fault {
            let of_fault = mismatches.iter().filter(|(f, _)| f == fault);
            shown.extend(of_fault.take(3).map(|(_, m)| m.clone()));
        }
        failures.push(format!(
            "{} requests did not match their fault {wrong_by_fault:?} (answer or access-log line):{}",
            mismatches.len(),
            show(&shown)
        ));
    }
    if !missing.is_empty() {
        failures.push(format!(
            "{} requests have no access-log line:{}",
            missing.len(),
            show(&missing)
        ));
    }
    if !duplicated.is_empty() {
        failures.push(format!(
            "{} requests have more than one access-log line:{}",
            duplicated.len(),
            show(&duplicated)
        ));
    }
    if !bad_lines.is_empty() {
        failures.push(format!(
            "{} stray or unreadable access-log lines:{}",
            bad_lines.len(),
            show(&bad_lines)
        ));
    }
    if !alarming.is_empty() {
        failures.push(format!(
            "{} ERROR or panic lines in causeway's stderr:{}",
            alarming.len(),
            show(&alarming)
        ));
    }
    if fds_after > fds_before + FD_SLACK {
        failures.push(format!(
            "causeway's open fds grew from {fds_before} to {fds_after} (allowed +{FD_SLACK}): {:?}",
            fd_targets(proxy.pid)
        ));
    }
    if rss_after > rss_before + RSS_SLACK {
        failures.push(format!(
            "causeway's VmRSS grew from {:.1} MiB to {:.1} MiB (allowed +{:.0} MiB)",
            mib(rss_before),
            mib(rss_after),
            mib(RSS_SLACK)
        ));
    }
    if main.records.is_empty() {
        failures.push("the main round sent nothing".to_string());
    }
    assert!(
        failures.is_empty(),
        "chaos soak failed (seed {:#x}):\n{}",
        s.seed,
        failures.join("\n")
    );
}

/// VmRSS in KiB, or `None` once the process is gone (the sampler must not panic for that).
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// At most 30 evenly spaced samples, in MiB.
fn series(kib: &[u64]) -> String {
    let step = kib.len().div_ceil(30).max(1);
    let shown: Vec<String> = kib
        .iter()
        .step_by(step)
        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
        .collect();
    format!("{} ({} samples)", shown.join(" "), kib.len())
}

fn proxy_alive(proxy: &Causeway) -> bool {
    std::path::Path::new(&format!("/proc/{}/status", proxy.pid)).exists()
        && !std::fs::read_to_string(format!("/proc/{}/status", proxy.pid))
            .unwrap_or_default()
            .contains("State:\tZ")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What causeway's fds point at, counted by kind (for a leak report).
fn fd_targets(pid: u32) -> Vec<(String, usize)> {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let target = std::fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".to_string());
            let kind = target.split(':').next().unwrap_or("?").to_string();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    kinds
}

// ---------------------------------------------------------------------------------------------
// Operations under load
// ---------------------------------------------------------------------------------------------

/// The reload test's config: `/` to faults with `header` as its header timeout, and with
/// `gone_route` a route `/gone/` to the refused port.
fn reload_config(dir: &TempDir, f: &Faults, header: &str, gone_route: bool) -> String {
    let mut text = format!(
        "{}[upstreams.app]\nservers = [\"{}\"]\ntimeouts = {{ header = \"{header}\" }}\npool = {{ idle_timeout = \"1s\" }}\n\n",
        config_head(dir, "shutdown_timeout = \"5s\""),
        f.http
    );
    if gone_route {
        text.push_str(&format!(
            "[upstreams.gone]\nservers = [\"{}\"]\nretry = {{ attempts = 1 }}\nhealth = {{ max_fails = 0 }}\n\n[[routes]]\npath = \"/gone/\"\nupstream = \"gone\"\n\n",
            f.refused
        ));
    }
    text.push_str("[[routes]]\npath = \"/\"\nupstream = \"app\"\n");
    text
}

/// One GET on a kept connection (a new one when `fresh`), for the operations tests.
async fn get(
    addr: SocketAddr,
    conn: &mut Option<Sender>,
    fresh: bool,
    path: &str,
    id: &str,
) -> Result<Reply, String> {
    let req = request("GET", "ops.soak", path, id, Bytes::new());
    exchange(addr, conn, fresh, req).await
}

fn is_ok(reply: &Result<Reply, String>) -> bool {
    matches!(reply, Ok(r) if r.status == 200 && r.body.as_deref() == Ok(&b"ok\n"[..]))
}

fn describe(reply: &Result<Reply, String>) -> String {
    match reply {
        Ok(r) => format!(
            "{} {:?}",
            r.status,
            r.body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        Err(e) => e.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_fail_no_request() {
    const CLIENTS: usize = 8;
    const BEFORE_FIRST: usize = 150;
    const BEFORE_SECOND: usize = 350;
    const AFTER_LAST: usize = 250;
    let upstream = start_faults().await;
    let dir = TempDir::new("soak-sighup");
    let proxy = Causeway::start(&dir, &reload_config(&dir, &upstream, "5s", false));
    let addr = proxy.addr;
    let mut conn = None;
    let before = get(addr, &mut conn, true, "/gone/ok", "hup-gone-before").await;
    assert_eq!(
        before.as_ref().map(|r| r.status),
        Ok(404),
        "before the reload /gone/ goes to faults (its 404): {}",
        describe(&before)
    );
    drop(conn);
    let (fds_before, _) = settle(&proxy).await;

    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(0x4855_5000 + c as u64);
                let mut conn = None;
                let mut failures = Vec::new();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && sent < 5000 {
                    let id = format!("hup-{c}-{sent}");
                    let reply = get(addr, &mut conn, rng.one_in(4), "/ok", &id).await;
                    if !is_ok(&reply) {
                        failures.push(format!("{id}: {}", describe(&reply)));
                    }
                    sent += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failures
            })
        })
        .collect();

    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "the clients stalled at {} requests",
                    done.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Reload 1 adds a route; reload 2 changes a timeout. Both while the clients send.
    wait_for(BEFORE_FIRST).await;
    write_atomically(
        &proxy.config_path,
        &reload_config(&dir, &upstream, "5s", true),
    );
    let first_at = done.load(Ordering::Relaxed);
    proxy.signal("HUP");
    proxy
        .wait_for_log("configuration reloaded", 1, Duration::from_secs(5))
        .await;
    wait_for(BEFORE_SECOND).await;
    write_atomically(
        &proxy.config_path,
        &reload_config(&dir, &upstream, "400ms", true),
    );
    let second_at = done.load(Ordering::Relaxed);
    proxy.signal("HUP");
    proxy
        .wait_for_log("configuration reloaded", 2, Duration::from_secs(5))
        .await;
    let reloaded_at = done.load(Ordering::Relaxed);
    wait_for(reloaded_at + AFTER_LAST).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in clients {
        failures.extend(task.await.expect("a reload client task did not panic"));
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "soak sighup: {total} requests from {CLIENTS} clients; reloads sent after {first_at} and {second_at}, second applied by {reloaded_at}; {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed across the reloads:{}",
        failures.len(),
        show(&failures)
    );
    assert!(total >= 500, "only {total} requests across the reloads");
    assert!(
        proxy.stderr().matches("configuration reloaded").count() == 2
            && !proxy.stderr().contains("reload rejected"),
        "stderr:\n{}",
        tail(&proxy.stderr(), 40)
    );

    // Both changes are in effect: the new route, and the shorter header timeout.
    let mut conn = None;
    let gone = get(addr, &mut conn, true, "/gone/ok", "hup-gone-after").await;
    let gone_json = gone
        .as_ref()
        .ok()
        .and_then(|r| r.body.as_ref().ok())
        .and_then(|b| serde_json::from_slice::<Value>(b).ok());
    assert!(
        matches!(&gone, Ok(r) if r.status == 502)
            && gone_json
                .as_ref()
                .is_some_and(|j| j["cause"] == "connect_refused"),
        "the added route answers connect_refused: {}",
        describe(&gone)
    );
    let slow = get(
        addr,
        &mut conn,
        true,
        "/slow-head?ms=1500",
        "hup-slow-after",
    )
    .await;
    assert_eq!(
        slow.as_ref().map(|r| r.status),
        Ok(504),
        "the new 400ms header timeout applies: {}",
        describe(&slow)
    );
    drop(conn);
    let (fds_after, _) = settle(&proxy).await;
    eprintln!("soak sighup: causeway fds {fds_before} -> {fds_after}");
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "fds grew across the reloads: {fds_before} -> {fds_after}: {:?}",
        fd_targets(proxy.pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_requests_in_flight_completes_them_all_and_exits_0() {
    const IN_FLIGHT: usize = 100;
    let upstream = start_faults().await;
    let dir = TempDir::new("soak-sigterm");
    let config = format!(
        "{}[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        config_head(&dir, "shutdown_timeout = \"10s\""),
        upstream.http
    );
    let mut proxy = Causeway::start(&dir, &config);
    let addr = proxy.addr;
    let completed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let completed = completed.clone();
            tokio::spawn(async move {
                let mut conn = None;
                let id = format!("term-{i}");
                let reply = get(addr, &mut conn, true, "/slow-head?ms=1000", &id).await;
                completed.fetch_add(1, Ordering::Relaxed);
                (id, reply)
            })
        })
        .collect();
    // All 100 are at the upstream, so in flight in causeway, not queued in its backlog.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.hits("/slow-head") < IN_FLIGHT as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {IN_FLIGHT} requests reached the upstream",
            upstream.hits("/slow-head")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done_at_signal = completed.load(Ordering::Relaxed);
    proxy.signal("TERM");
    let signalled = Instant::now();
    let mut failures = Vec::new();
    for task in tasks {
        let (id, reply) = task.await.expect("an in-flight request task did not panic");
        if !is_ok(&reply) {
            failures.push(format!("{id}: {}", describe(&reply)));
        }
    }
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    eprintln!(
        "soak sigterm: {IN_FLIGHT} in flight ({done_at_signal} done at the signal), {} failed, exit {:?} {:.1?} after the signal",
        failures.len(),
        status.and_then(|s| s.code()),
        signalled.elapsed()
    );
    assert_eq!(
        done_at_signal, 0,
        "the signal came after some requests had finished"
    );
    assert!(
        failures.is_empty(),
        "requests in flight at SIGTERM failed:{}",
        show(&failures)
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "causeway still running 15 s after SIGTERM; stderr:\n{}",
            tail(&proxy.stderr(), 40)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{}",
        tail(&proxy.stderr(), 40)
    );
    assert!(
        proxy.stderr().contains("all in-flight requests finished"),
        "drained cleanly; stderr:\n{}",
        tail(&proxy.stderr(), 40)
    );
    let logged = proxy
        .access_lines()
        .into_iter()
        .filter(|l| l["status"] == 200 && l["complete"] == true)
        .filter(|l| {
            l["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("term-"))
        })
        .count();
    assert_eq!(logged, IN_FLIGHT, "one complete 200 access-log line each");
}
