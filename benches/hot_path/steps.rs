//! The pure steps of one request, each through causeway's public API with realistic inputs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use causeway::cause::Cause;
use causeway::classify::{self, ExchangeContext};
use causeway::config::{self, Expose, ForwardedMode, ServerAddr};
use causeway::fastcgi::params::{self, FastCgiSettings, RequestMeta};
use causeway::fastcgi::record::{self, Decoder, Record};
use causeway::fastcgi::{FastCgiError, HeadParser, RecordError};
use causeway::headers::{self, AddTo, AddedFields, ClientHop, X_REQUEST_ID};
use causeway::respond::{self, ErrorContext};
use causeway::route::Table;
use causeway::upstream::{Reuse, Sent, UpstreamError};
use criterion::{BatchSize, Criterion, Throughput};
use futures_util::FutureExt as _;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fixtures::{self, browser_headers, response_headers};

fn route(host: Option<&str>, path: &str, upstream: usize) -> config::Route {
    config::Route {
        host: host.map(str::to_string),
        path: path.to_string(),
        upstream,
    }
}

/// Routing: host + longest prefix over 20 routes is a short scan, hit or miss.
pub fn routing(c: &mut Criterion) {
    let api = Some("api.example.com");
    let www = Some("www.example.com");
    let table = Table::new(&[
        route(api, "/", 0),
        route(api, "/v1/", 1),
        route(api, "/v2/", 2),
        route(api, "/v2/users/", 3),
        route(api, "/admin/", 4),
        route(www, "/", 5),
        route(www, "/static/", 6),
        route(www, "/blog/", 7),
        route(www, "/shop/", 8),
        route(www, "/shop/cart/", 9),
        route(Some("cdn.example.com"), "/", 10),
        route(None, "/healthz", 11),
        route(None, "/api/", 12),
        route(None, "/api/v1/", 13),
        route(None, "/api/v2/", 14),
        route(None, "/assets/", 15),
        route(None, "/images/", 16),
        route(None, "/wp-admin/", 17),
        route(None, "/wp-content/", 18),
        route(None, "/php/", 19),
    ]);
    let mut group = c.benchmark_group("routing");
    let cases = [
        (
            "hit_host_prefix",
            "www.example.com",
            "/shop/cart/items/42",
            Some(9),
        ),
        (
            "hit_host_port_case",
            "API.example.com:8443",
            "/v2/users/7",
            Some(3),
        ),
        ("hit_hostless", "other.example", "/api/v1/orders", Some(13)),
        ("miss", "other.example", "/nothing/here", None),
    ];
    for (name, host, path, expected) in cases {
        assert_eq!(table.lookup(Some(host), path), expected, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| table.lookup(black_box(Some(host)), black_box(path)))
        });
    }
    group.finish();
}

/// The proxy's request-side rewrite, in `proxy::handle`'s order (src/proxy.rs), up to the
/// field lines causeway's HTTP/1.1 client writes for the fields it adds.
fn rewrite_request(headers: &mut HeaderMap, hop: &ClientHop<'_>) -> (String, Vec<u8>) {
    let request_id = headers::request_id(headers, true);
    assert!(
        !headers::has_our_via(headers),
        "no loop in the bench request"
    );
    headers::strip_hop_by_hop(headers, false, false);
    let value = HeaderValue::from_str(&request_id).ok();
    let added = AddedFields::for_hop(
        headers,
        ForwardedMode::Xff,
        hop,
        value.as_ref(),
        AddTo::Lines,
    );
    let mut lines = Vec::with_capacity(256);
    added.write_lines(&mut lines);
    (request_id, lines)
}

/// Times `f` on a fresh copy of `template`; the copy is made and dropped outside the timing.
/// One input at a time: with criterion's batches of inputs kept alive together, the first
/// growth of each map ran into cold memory and a one-field insert measured 2.5 µs instead of
/// 125 ns.
fn batched(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    template: &HeaderMap,
    f: impl Fn(&mut HeaderMap),
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || template.clone(),
            |mut headers| {
                f(&mut headers);
                headers
            },
            BatchSize::PerIteration,
        )
    });
}

/// Header rewriting: what a 12-field browser request and an 8-field response cost to clean.
pub fn headers(c: &mut Criterion) {
    let request = browser_headers();
    let mut with_id = browser_headers();
    with_id.insert(&X_REQUEST_ID, HeaderValue::from_static("req-7f3a9c"));
    let peer_text = HeaderValue::from_static("203.0.113.7");
    let hop = ClientHop {
        peer: Some("203.0.113.7".parse().expect("literal address")),
        peer_text: &peer_text,
        proto: "http",
        host: Some(fixtures::HOST),
        trusted: false,
    };
    let peer = hop.peer;
    let trusted_proxies = [config::parse_ip_net("10.0.0.0/8").expect("literal network")];
    let mut group = c.benchmark_group("headers");
    batched(&mut group, "strip_hop_by_hop", &request, |h| {
        headers::strip_hop_by_hop(h, false, false)
    });
    group.bench_function("has_our_via", |b| {
        b.iter(|| headers::has_our_via(black_box(&request)))
    });
    group.bench_function("is_trusted", |b| {
        b.iter(|| headers::is_trusted(black_box(peer), &trusted_proxies))
    });
    group.bench_function("request_id_new", |b| {
        b.iter(|| headers::request_id(black_box(&request), true))
    });
    group.bench_function("request_id_kept", |b| {
        b.iter(|| headers::request_id(black_box(&with_id), true))
    });
    batched(&mut group, "added_fields_xff", &request, |h| {
        black_box(AddedFields::for_hop(
            h,
            ForwardedMode::Xff,
            &hop,
            None,
            AddTo::Lines,
        ));
    });
    batched(&mut group, "added_fields_both", &request, |h| {
        black_box(AddedFields::for_hop(
            h,
            ForwardedMode::Both,
            &hop,
            None,
            AddTo::Lines,
        ));
    });
    batched(&mut group, "request_rewrite", &request, |h| {
        black_box(rewrite_request(h, &hop));
    });
    let response = response_headers();
    batched(&mut group, "response_rewrite", &response, |h| {
        headers::strip_hop_by_hop(h, false, false);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("req-7f3a9c"));
    });
    group.finish();
}

fn tcp_server() -> ServerAddr {
    ServerAddr::Ip("127.0.0.1:3000".parse().expect("literal address"))
}

/// A request sender whose connection task is gone, as a pooled connection the upstream closed:
/// `ready()` on it fails with hyper's own "connection closed" error, the one `exchange`
/// classifies first (src/upstream/exchange.rs, `sender.ready()`).
fn dead_sender(
    rt: &tokio::runtime::Runtime,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    rt.block_on(async {
        let (io, _peer) = tokio::io::duplex(64);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("in-memory handshake");
        drop(conn);
        sender
    })
}

/// A real response-body error from hyper: the upstream promised 1024 bytes and closed after 7.
fn truncated_body_error(rt: &tokio::runtime::Runtime) -> hyper::Error {
    rt.block_on(async {
        let (io, mut peer) = tokio::io::duplex(4096);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("in-memory handshake");
        tokio::spawn(conn);
        let upstream = async move {
            let mut head = [0u8; 1024];
            let _ = peer.read(&mut head).await;
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\npartial";
            peer.write_all(reply).await.expect("in-memory write");
        };
        let request = http::Request::get("/").body(Empty::<Bytes>::new());
        let (response, ()) = tokio::join!(
            sender.send_request(request.expect("a static request")),
            upstream
        );
        let body = response.expect("the head arrives").into_body();
        body.collect().await.expect_err("the body is cut short")
    })
}

/// Classifier: naming a failure costs its detail and hint strings, and only on failure.
pub fn classifier(c: &mut Criterion) {
    let tcp = tcp_server();
    let unix = ServerAddr::Unix(PathBuf::from("/run/php/php8.2-fpm.sock"));
    let rt = fixtures::runtime();
    let mut dead = dead_sender(&rt);
    let mut closed_error = || match dead.ready().now_or_never() {
        Some(Err(e)) => e,
        _ => panic!("a sender without its connection fails at once"),
    };
    let body_error = truncated_body_error(&rt);
    let mut group = c.benchmark_group("classifier");
    group.bench_function("connect_error_refused_tcp", |b| {
        b.iter(|| classify::connect_error(io::Error::from_raw_os_error(111), black_box(&tcp)))
    });
    group.bench_function("connect_error_refused_unix", |b| {
        b.iter(|| classify::connect_error(io::Error::from_raw_os_error(111), black_box(&unix)))
    });
    for (name, reuse, expected) in [
        (
            "exchange_error_closed_fresh",
            Reuse::Fresh,
            Cause::PrematureClose,
        ),
        (
            "exchange_error_closed_reused",
            Reuse::Pooled {
                idle: std::time::Duration::from_secs(4),
            },
            Cause::StaleConnection,
        ),
    ] {
        let context = ExchangeContext {
            reuse,
            server: tcp.clone(),
            method: Method::GET,
        };
        let sample = classify::exchange_error(closed_error(), &context, Sent::Nothing, 0);
        assert_eq!(sample.cause, expected, "{name}: {}", sample.detail);
        // The error is consumed, so each iteration gets a fresh one, made outside the timing.
        group.bench_function(name, |b| {
            b.iter_batched(
                &mut closed_error,
                |e| classify::exchange_error(e, &context, Sent::Nothing, 0),
                BatchSize::PerIteration,
            )
        });
    }
    assert_eq!(
        classify::body_error(&body_error).cause,
        Cause::BodyTruncated
    );
    group.bench_function("body_error_truncated", |b| {
        b.iter(|| classify::body_error(black_box(&body_error)))
    });
    let died = FastCgiError::ClosedBeforeHead { bytes_received: 0 };
    group.bench_function("fastcgi_error_worker_died", |b| {
        b.iter(|| classify::fastcgi_error(black_box(&died), &unix))
    });
    let http_port = FastCgiError::Record(RecordError::BadVersion(b'H'));
    group.bench_function("fastcgi_error_speaks_http", |b| {
        b.iter(|| classify::fastcgi_error(black_box(&http_port), &unix))
    });
    let unknown_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    group.bench_function("tls_cause_unknown_ca", |b| {
        b.iter(|| classify::tls_cause(black_box(&unknown_ca), "api.internal"))
    });
    group.finish();
}

/// Proxy-Status and error pages: serialization cost per exposure level and body format.
pub fn proxy_status(c: &mut Criterion) {
    let refused =
        classify::connect_error(io::Error::from_raw_os_error(111), &tcp_server()).at(&tcp_server());
    let timeout = UpstreamError::new(
        Cause::HeaderTimeout,
        "no complete response head within 30s of sending the request (timeouts.header)",
    )
    .at(&tcp_server());
    let mut dns = UpstreamError::new(Cause::DnsError, "api.internal: NXDOMAIN");
    dns.params.rcode = Some("NXDOMAIN".to_string());
    let mut group = c.benchmark_group("proxy_status");
    for (name, error, expose) in [
        ("refused_cause", &refused, Expose::Cause),
        ("refused_detail", &refused, Expose::Detail),
        ("header_timeout_cause", &timeout, Expose::Cause),
        ("dns_rcode_detail", &dns, Expose::Detail),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| respond::proxy_status(black_box(error), expose))
        });
    }
    let errors = |expose| config::Errors {
        expose,
        proxy_status: true,
        pages: BTreeMap::new(),
    };
    let (cause, detail, none) = (
        errors(Expose::Cause),
        errors(Expose::Detail),
        errors(Expose::None),
    );
    let json = HeaderValue::from_static("application/json");
    let html = browser_headers()
        .get(http::header::ACCEPT)
        .cloned()
        .expect("the browser sends Accept");
    for (name, errors, accept) in [
        ("error_response_json_cause", &cause, Some(&json)),
        ("error_response_html_detail", &detail, Some(&html)),
        ("error_response_text_none", &none, None),
    ] {
        let context = ErrorContext {
            request_id: "0196a4c2-7f3a-7c1e-9b2d-5e8f0a1b2c3d",
            upstream: Some("backend"),
            attempts: 2,
            errors,
            accept,
        };
        group.bench_function(name, |b| {
            b.iter(|| respond::error_response(black_box(&refused), &context))
        });
    }
    group.finish();
}

/// PHP's answer to a page: a CGI head, 16 KiB of HTML in three STDOUT records, a notice on
/// STDERR, the end of STDOUT and END_REQUEST, as PHP-FPM writes them.
const CGI_HEAD: &[u8] = b"X-Powered-By: PHP/8.2.7\r\nSet-Cookie: PHPSESSID=9d8c7b6a5f4e3d2c1b0a; path=/\r\nExpires: Thu, 19 Nov 1981 08:52:00 GMT\r\nCache-Control: no-store, no-cache, must-revalidate\r\nPragma: no-cache\r\nContent-type: text/html; charset=UTF-8\r\n\r\n";

fn php_stdout() -> Bytes {
    let page = vec![b'x'; 16 * 1024];
    let mut first = CGI_HEAD.to_vec();
    first.extend_from_slice(&page[..8000]);
    let mut buf = BytesMut::new();
    record::record(&mut buf, record::FCGI_STDOUT, 1, &first);
    record::record(
        &mut buf,
        record::FCGI_STDERR,
        1,
        b"PHP Notice:  Undefined index: qty in /var/www/html/shop/index.php on line 12",
    );
    record::record(&mut buf, record::FCGI_STDOUT, 1, &page[8000..16000]);
    record::record(&mut buf, record::FCGI_STDOUT, 1, &page[16000..]);
    record::record(&mut buf, record::FCGI_STDOUT, 1, &[]);
    record::record(
        &mut buf,
        record::FCGI_END_REQUEST,
        1,
        &[0, 0, 0, 0, 0, 0, 0, 0],
    );
    buf.freeze()
}

/// FastCGI: PARAMS for a typical request, their encoding, and decoding PHP's reply.
pub fn fastcgi(c: &mut Criterion) {
    let headers = browser_headers();
    let authority = Authority::from_static(fixtures::HOST);
    let meta = RequestMeta {
        method: &Method::GET,
        target: "/shop/index.php/cart?item=42&qty=1",
        version: Version::HTTP_11,
        headers: &headers,
        authority: &authority,
        client: Some(SocketAddr::from(([203, 0, 113, 7], 51234))),
        server: Some(SocketAddr::from(([10, 0, 0, 2], 80))),
        https: false,
        content_length: None,
    };
    let settings = FastCgiSettings {
        root: PathBuf::from("/var/www/html"),
        index: "index.php".to_string(),
        try_files: true,
        front_controller: false,
        params: Vec::new(),
    };
    // `build` would stat SCRIPT_FILENAME; `build_with` keeps the file system out of the figure.
    let exists = |_: &std::path::Path| true;
    let built = params::build_with(&meta, &settings, exists).expect("a valid script path");
    let stdout = php_stdout();
    let mut group = c.benchmark_group("fastcgi");
    group.bench_function("params_build", |b| {
        b.iter(|| params::build_with(black_box(&meta), &settings, exists))
    });
    group.bench_function("record_begin_and_params", |b| {
        b.iter(|| {
            let mut buf = BytesMut::new();
            record::begin_request(&mut buf, 1, record::FCGI_RESPONDER, false);
            record::encoded_params(&mut buf, 1, built.encoded().expect("pairs fit"));
            buf
        })
    });
    group.throughput(Throughput::Bytes(stdout.len() as u64));
    group.bench_function("decode_php_reply", |b| {
        b.iter_batched(
            || BytesMut::from(&stdout[..]),
            |mut buf| {
                let mut decoder = Decoder::new(1);
                let mut stdout_bytes = 0;
                loop {
                    match decoder.decode(&mut buf).expect("a well-formed reply") {
                        Some(Record::Stdout(data)) => stdout_bytes += data.len(),
                        Some(Record::EndRequest { .. }) => break,
                        Some(_) => {}
                        None => panic!("the reply is complete"),
                    }
                }
                stdout_bytes
            },
            BatchSize::PerIteration,
        )
    });
    let mut first_record = CGI_HEAD.to_vec();
    first_record.extend_from_slice(&[b'x'; 8000]);
    group.throughput(Throughput::Bytes(first_record.len() as u64));
    group.bench_function("cgi_head", |b| {
        b.iter(|| {
            let mut parser = HeadParser::new(8192);
            parser
                .feed(black_box(&first_record))
                .expect("a valid CGI head")
                .expect("the head is complete")
        })
    });
    group.finish();
}
