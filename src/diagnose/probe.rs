//! The steps for one server: resolve → connect → TLS → one request, each timed, stopping at
//! the first failure. Each step is the proxy's own (`Connector`'s public steps, `exchange`,
//! `classify`); this file only times them, adds facts, and writes the checklist lines.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::{facts, Failure, ServerReport, Step, StepName, StepStatus};
use crate::cause::Cause;
use crate::classify;
use crate::config::{Protocol, ServerAddr};
use crate::fastcgi::record::{self, Decoder, Record};
use crate::fastcgi::{FastCgiError, Phase};
use crate::upstream::connect::{fmt_duration, Counted, Stream};
use crate::upstream::exchange::{self, RequestBody};
use crate::upstream::pool::Permit;
use crate::upstream::{Server, Upstream, UpstreamError};

/// The FastCGI variables asked for with GET_VALUES (FastCGI 1.0 §4.1).
const FASTCGI_VALUES: [&str; 3] = ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"];

/// The checklist being written for one server.
struct Checklist {
    server: String,
    steps: Vec<Step>,
    failure: Option<Failure>,
}

impl Checklist {
    fn ok(&mut self, name: StepName, elapsed: Duration, summary: String, facts: Vec<String>) {
        self.steps.push(Step {
            name,
            status: StepStatus::Ok,
            elapsed: Some(elapsed),
            summary,
            facts,
        });
    }

    fn skipped(&mut self, name: StepName, summary: String) {
        self.steps.push(Step {
            name,
            status: StepStatus::Skipped,
            elapsed: None,
            summary,
            facts: Vec::new(),
        });
    }

    /// Records the failed step from the classified error, then marks the rest not run.
    fn failed(
        mut self,
        name: StepName,
        elapsed: Duration,
        error: UpstreamError,
        facts: Vec<String>,
    ) -> ServerReport {
        self.steps.push(Step {
            name,
            status: StepStatus::Failed,
            elapsed: Some(elapsed),
            summary: error.detail.clone(),
            facts,
        });
        self.failure = Some(Failure {
            step: name,
            cause: Some(error.cause),
            detail: error.detail,
            hint: error.hint,
        });
        self.finish()
    }

    fn finish(mut self) -> ServerReport {
        let order = [
            StepName::Resolve,
            StepName::Connect,
            StepName::Tls,
            StepName::Request,
        ];
        for name in order.into_iter().skip(self.steps.len()) {
            self.steps.push(Step {
                name,
                status: StepStatus::NotRun,
                elapsed: None,
                summary: String::new(),
                facts: Vec::new(),
            });
        }
        ServerReport {
            server: self.server,
            steps: self.steps,
            failure: self.failure,
        }
    }
}

/// Runs `step` and measures it.
async fn timed<T>(step: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let result = step.await;
    (result, started.elapsed())
}

/// Probes one server of `upstream`.
pub(super) async fn server(upstream: &Upstream, server: &Arc<Server>) -> ServerReport {
    let config = &upstream.config;
    let connector = &upstream.connector;
    let addr = &server.addr;
    let mut list = Checklist {
        server: addr.to_string(),
        steps: Vec::new(),
        failure: None,
    };
    // One deadline for resolve + connect + TLS, as the proxy's `Connector::open` has.
    let deadline = Instant::now() + config.timeouts.connect;

    // 1. resolve
    let addrs: Vec<SocketAddr> = match addr {
        ServerAddr::Ip(socket) => {
            list.skipped(
                StepName::Resolve,
                format!("{} is an IP address: no DNS lookup", socket.ip()),
            );
            vec![*socket]
        }
        ServerAddr::Unix(_) => {
            list.skipped(StepName::Resolve, "unix socket: no DNS lookup".to_string());
            Vec::new()
        }
        ServerAddr::Name { host, port } => {
            match timed(connector.resolve(host, *port, deadline)).await {
                (Ok(addrs), elapsed) => {
                    let list_text: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    list.ok(
                        StepName::Resolve,
                        elapsed,
                        format!("{host} → {}", list_text.join(", ")),
                        Vec::new(),
                    );
                    addrs
                }
                (Err(error), elapsed) => {
                    return list.failed(StepName::Resolve, elapsed, error, Vec::new())
                }
            }
        }
    };

    // 2. connect
    let plain = match addr {
        ServerAddr::Unix(path) => {
            let socket_facts = facts::unix_socket(path);
            match timed(connector.connect_unix(path, addr, deadline)).await {
                (Ok(stream), elapsed) => {
                    list.ok(
                        StepName::Connect,
                        elapsed,
                        format!("connected to unix socket {}", path.display()),
                        socket_facts,
                    );
                    stream
                }
                (Err(error), elapsed) => {
                    return list.failed(StepName::Connect, elapsed, error, socket_facts)
                }
            }
        }
        ServerAddr::Ip(_) | ServerAddr::Name { .. } => {
            match timed(connector.connect_tcp(&addrs, addr, deadline)).await {
                (Ok(stream), elapsed) => {
                    let peer = match &stream {
                        Stream::Tcp(tcp) => tcp.peer_addr().map(|a| a.to_string()).ok(),
                        _ => None,
                    };
                    list.ok(
                        StepName::Connect,
                        elapsed,
                        format!(
                            "TCP connection to {} established",
                            peer.unwrap_or_else(|| addr.to_string())
                        ),
                        Vec::new(),
                    );
                    stream
                }
                (Err(error), elapsed) => {
                    return list.failed(StepName::Connect, elapsed, error, Vec::new());
                }
            }
        }
    };

    // 3. TLS
    let stream = if config.protocol.uses_tls() {
        let name = connector.tls_name(addr);
        let mut tls_facts = Vec::new();
        if !config.tls.verify {
            tls_facts.push(
                "tls.insecure_skip_verify = true: the certificate is NOT verified".to_string(),
            );
        }
        match timed(connector.tls(plain, addr, deadline)).await {
            (Ok(stream), elapsed) => {
                let summary = match &stream {
                    Stream::Tls(tls) => {
                        let (summary, chain) = facts::tls_session(tls.get_ref().1, &name);
                        tls_facts.extend(chain);
                        summary
                    }
                    _ => format!("handshake with \"{name}\" done"),
                };
                list.ok(StepName::Tls, elapsed, summary, tls_facts);
                stream
            }
            (Err(error), elapsed) => {
                if error.cause == Cause::TlsCertificateInvalid {
                    // Show what the server presented: a second handshake that only looks.
                    let until = Instant::now() + config.timeouts.connect;
                    match facts::presented_chain(connector, addr, &addrs, &name, until).await {
                        Ok(chain) => tls_facts.extend(chain),
                        Err(e) => tls_facts.push(format!("could not inspect the chain: {e}")),
                    }
                }
                return list.failed(StepName::Tls, elapsed, error, tls_facts);
            }
        }
    } else {
        let why = match config.protocol {
            Protocol::FastCgi => "protocol \"fastcgi\": no TLS",
            Protocol::Http2 => "protocol \"http2\": no TLS",
            _ => "protocol \"http\": no TLS",
        };
        list.skipped(StepName::Tls, why.to_string());
        plain
    };

    // 4. one request
    let io = Counted::new(stream);
    let (result, elapsed) = if config.protocol == Protocol::FastCgi {
        timed(fastcgi_get_values(io, addr, config.timeouts.header)).await
    } else {
        timed(http_request(upstream, server, io)).await
    };
    match result {
        Ok(Answer::Fine(summary)) => {
            list.ok(StepName::Request, elapsed, summary, Vec::new());
            list.finish()
        }
        Ok(Answer::Unexpected { summary, detail }) => {
            list.steps.push(Step {
                name: StepName::Request,
                status: StepStatus::Failed,
                elapsed: Some(elapsed),
                summary,
                facts: Vec::new(),
            });
            list.failure = Some(Failure {
                step: StepName::Request,
                cause: None,
                detail,
                hint: Some(
                    "the server is reachable but unhealthy by its own check: see its logs, or \
                     fix health.check (path, expect_status)"
                        .to_string(),
                ),
            });
            list.finish()
        }
        Err(error) => list.failed(StepName::Request, elapsed, error, Vec::new()),
    }
}

/// What the request step got back when the upstream answered.
enum Answer {
    Fine(String),
    /// An HTTP answer other than `health.check.expect_status`.
    Unexpected {
        summary: String,
        detail: String,
    },
}

/// `GET health.check.path` (or `/`) through the proxy's own exchange, with its timeouts.
async fn http_request(
    upstream: &Upstream,
    server: &Arc<Server>,
    io: Counted<Stream>,
) -> Result<Answer, UpstreamError> {
    let config = &upstream.config;
    let check = config.health.check.as_ref();
    let path = check.map_or("/", |c| c.path.as_str());
    let handshake = exchange::handshake(io, config.protocol, config.max_response_header, false);
    let conn = match timeout(config.timeouts.header, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(classify::handshake_error(&e, &server.addr)),
        Err(_) => {
            return Err(UpstreamError::new(
                Cause::HeaderTimeout,
                format!(
                    "HTTP/2 handshake with {} not done within {} (timeouts.header)",
                    server.addr,
                    fmt_duration(config.timeouts.header)
                ),
            ))
        }
    };
    let host = upstream.connector.tls_name(&server.addr);
    let uri = if config.protocol.is_http2() {
        let scheme = if config.protocol.uses_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}{path}")
    } else {
        path.to_string()
    };
    let mut request = Request::new(RequestBody::empty());
    *request.uri_mut() = uri.parse().map_err(|e| {
        UpstreamError::new(
            Cause::InvalidResponse,
            format!("cannot build the request for {uri}: {e}"),
        )
    })?;
    if config.protocol.is_http2() {
        *request.version_mut() = http::Version::HTTP_2;
    } else if let Ok(value) = HeaderValue::from_str(&host) {
        request.headers_mut().insert(header::HOST, value);
    }
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("causeway-diagnose"),
    );
    let response = exchange::send(
        conn,
        request,
        &crate::headers::AddedFields::default(),
        config,
        server.clone(),
        Permit::unlimited(),
        crate::upstream::http1::HeadFields::Map,
    )
    .await
    .map_err(|failed| failed.error.at(&server.addr))?;
    let status = response.status();
    let reason = status.canonical_reason().unwrap_or("");
    let summary = format!("GET {path} → {} {reason}", status.as_u16());
    match check {
        Some(check) if status.as_u16() != check.expect_status => Ok(Answer::Unexpected {
            summary: format!("{summary} (health.check expects {})", check.expect_status),
            detail: format!(
                "{} answered {} to GET {path}; health.check expects {}",
                server.addr,
                status.as_u16(),
                check.expect_status
            ),
        }),
        _ => Ok(Answer::Fine(summary)),
    }
}

/// Sends a FastCGI GET_VALUES management record and waits for GET_VALUES_RESULT: proof that
/// a FastCGI application (PHP-FPM) answers, without running any script.
async fn fastcgi_get_values<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    server: &ServerAddr,
    within: Duration,
) -> Result<Answer, UpstreamError> {
    let exchange = async {
        let mut out = BytesMut::new();
        record::get_values(&mut out, &FASTCGI_VALUES).map_err(FastCgiError::Record)?;
        let io_error = |phase, source, bytes_received| FastCgiError::Io {
            phase,
            source,
            bytes_received,
        };
        io.write_all(&out)
            .await
            .map_err(|e| io_error(Phase::WritingRequest, e, 0))?;
        let mut decoder = Decoder::new(1);
        let mut buf = BytesMut::with_capacity(1024);
        let mut received = 0u64;
        loop {
            while let Some(record) = decoder.decode(&mut buf)? {
                match record {
                    Record::GetValuesResult(pairs) => return Ok(Some(pairs)),
                    // A FastCGI application that does not implement management records.
                    Record::UnknownType(_) => return Ok(None),
                    _ => {}
                }
            }
            let n = io
                .read_buf(&mut buf)
                .await
                .map_err(|e| io_error(Phase::ReadingHead, e, received))?;
            if n == 0 {
                return Err(FastCgiError::ClosedBeforeHead {
                    bytes_received: received,
                });
            }
            received += n as u64;
        }
    };
    match timeout_at(Instant::now() + within, exchange).await {
        Ok(Ok(Some(pairs))) => {
            let values: Vec<String> = pairs
                .iter()
                .map(|(name, value)| format!("{}={}", text(name), text(value)))
                .collect();
            Ok(Answer::Fine(format!(
                "FastCGI GET_VALUES answered: {}",
                if values.is_empty() {
                    "(no values)".to_string()
                } else {
                    values.join(", ")
                }
            )))
        }
        Ok(Ok(None)) => Ok(Answer::Fine(
            "FastCGI answered GET_VALUES with UNKNOWN_TYPE: a FastCGI application without \
             management records"
                .to_string(),
        )),
        Ok(Err(FastCgiError::ClosedBeforeHead { bytes_received })) => Err(UpstreamError::new(
            Cause::PrematureClose,
            format!(
                "{server} closed the connection without answering a FastCGI GET_VALUES record \
                 ({bytes_received} bytes received)"
            ),
        )
        .with_hint(
            "is this a FastCGI server? PHP-FPM answers GET_VALUES; check the backend's log",
        )),
        Ok(Err(e)) => Err(classify::fastcgi_error(&e, server).with_source(e)),
        Err(_) => Err(UpstreamError::new(
            Cause::HeaderTimeout,
            format!(
                "no answer to a FastCGI GET_VALUES record within {} (timeouts.header)",
                fmt_duration(within)
            ),
        )
        .with_hint("the FastCGI server accepted the connection but does not answer: are all its workers busy?")),
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
pub(super) async fn get_values_for_test<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    within: Duration,
) -> Result<String, UpstreamError> {
    let server = ServerAddr::Unix("/test.sock".into());
    match fastcgi_get_values(io, &server, within).await? {
        Answer::Fine(summary) => Ok(summary),
        Answer::Unexpected { summary, .. } => Ok(summary),
    }
}
