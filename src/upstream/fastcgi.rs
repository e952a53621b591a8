//! One attempt against a FastCGI server (PHP-FPM): connect, build the CGI params, exchange.
//!
//! The codec and the exchange live in `crate::fastcgi`; this file adds what belongs to the
//! upstream side: the connect step (shared with HTTP), the `write` and `header` timeouts as a
//! watchdog that names its phase, and classification of `FastCgiError` through `classify`.
//! One connection per request by default (`fastcgi.keep_conn = false`, like nginx) because a
//! kept connection pins a PHP-FPM worker; the socket is closed as soon as END_REQUEST arrives.
//! With `keep_conn` (which requires `max_conns`), the transport returns to the pool after a
//! clean END_REQUEST, and the warmest one is reused first.

use std::sync::Arc;

use http::{header, Request, Response};
use tokio::time::{sleep_until, Instant};

use super::body::{ReturnToPool, UpstreamBody};
use super::connect::fmt_duration;
use super::exchange::{Failed, KeepAlive, RequestBody};
use super::pool::Permit;
use super::{Reuse, Sent, Server, Timings, Upstream, UpstreamError};
use crate::cause::Cause;
use crate::classify;
use crate::config;
use crate::fastcgi::params::Script;
use crate::fastcgi::{self, Exchange, FastCgiRequest, FastCgiSettings, ScriptPathError};
use crate::proxy::RequestContext;

/// Most STDERR kept per request, for the error and access logs.
const STDERR_LIMIT: usize = 4096;

/// The codec's settings from `fastcgi = { ... }`.
pub fn settings(config: &config::FastCgi) -> FastCgiSettings {
    FastCgiSettings {
        root: config.root.clone(),
        index: config.index.clone(),
        try_files: config.try_files,
        front_controller: config.front_controller,
        params: config.params.clone(),
    }
}

/// Decides before any upstream contact whether the path names a runnable script: a refused or
/// missing script is answered by causeway itself (400/404), so `/uploads/evil.jpg/x.php`
/// never reaches PHP-FPM and a typo costs no worker.
pub fn check_script(settings: &FastCgiSettings, path: &str) -> Result<Script, ScriptPathError> {
    fastcgi::params::resolve_script(path, settings, fastcgi::params::script_exists)
}

/// Sends `request` to `server` over FastCGI.
pub async fn attempt(
    upstream: &Upstream,
    server: &Arc<Server>,
    request: Request<RequestBody>,
    timings: &mut Timings,
    permit: Permit,
    context: &RequestContext,
) -> Result<(Response<UpstreamBody>, Reuse), Failed> {
    let config = &upstream.config;
    let request_id = &context.id;
    let (Some(fastcgi_config), Some(settings)) = (&config.fastcgi, &upstream.fastcgi) else {
        let error = UpstreamError::new(Cause::FastcgiProtocolError, "fastcgi settings missing")
            .at(&server.addr);
        return Err(Failed {
            error,
            request: Some(request),
        });
    };
    let params = match build_params(&request, settings, context) {
        Ok(params) => params,
        Err(e) => {
            // `check_script` already passed in `proxy`; only a race with the file system
            // gets here. Not the upstream's fault, and nothing was sent.
            let error = UpstreamError::new(
                Cause::FastcgiProtocolError,
                format!("cannot build FastCGI params: {e}"),
            )
            .at(&server.addr);
            return Err(Failed {
                error,
                request: Some(request),
            });
        }
    };
    let keep_conn = fastcgi_config.keep_conn;
    let pooled = if keep_conn {
        server.pool.checkout_raw()
    } else {
        None
    };
    let (io, reuse) = match pooled {
        Some((io, idle)) => (io, Reuse::Pooled { idle }),
        None => {
            let started = Instant::now();
            let deadline = started + config.timeouts.connect;
            match upstream.connector.open(&server.addr, deadline).await {
                Ok(io) => {
                    timings.connect = Some(started.elapsed());
                    (io, Reuse::Fresh)
                }
                Err(error) => {
                    let error = error.at(&server.addr);
                    return Err(Failed {
                        error,
                        request: Some(request),
                    });
                }
            }
        }
    };
    let (give_back, returned) = if keep_conn {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };

    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let exchange = Exchange::new(STDERR_LIMIT);
    // Only the body is sent (the params carry the rest); the head is kept, not copied, and
    // goes again with a copy of the body if this attempt fails after writing.
    let (head, body) = request.into_parts();
    let replay = body.replay().map(|body| Request::from_parts(head, body));
    let fastcgi_request = FastCgiRequest {
        params,
        body,
        content_length,
        max_head: config.max_response_header,
    };
    let sent_at = Instant::now();
    let outcome = tokio::select! {
        biased;
        result = fastcgi::send(io, fastcgi_request, &exchange, give_back) => Ok(result),
        stalled = watchdog(&exchange, config.timeouts) => Err(stalled),
    };
    let sent = if exchange.request_written() {
        Sent::All
    } else if exchange.bytes_sent() > 0 {
        Sent::Head
    } else {
        Sent::Nothing
    };
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let mut error = classify::fastcgi_error(&e, &server.addr).with_source(e);
            if reuse.is_reused()
                && exchange.bytes_received() == 0
                && error.cause.counts_against_server()
            {
                // A kept connection PHP-FPM closed while it sat idle (a worker recycled by
                // pm.max_requests, or a restart): the keep-alive race, not a failure.
                error = UpstreamError::new(
                    Cause::StaleConnection,
                    format!(
                        "reused FastCGI connection to {} (idle {} ms) was closed before any response byte",
                        server.addr,
                        reuse.idle_ms()
                    ),
                )
                .with_hint("PHP-FPM closed a kept connection (pm.max_requests, a reload): retried on a fresh one when safe");
            }
            error.reuse = reuse;
            error.sent = sent;
            log_stderr(&exchange, upstream, server, &error, request_id);
            return Err(Failed {
                error: error.at(&server.addr),
                request: replay,
            });
        }
        Err(mut error) => {
            error.sent = sent;
            log_stderr(&exchange, upstream, server, &error, request_id);
            return Err(Failed {
                error: error.at(&server.addr),
                request: replay,
            });
        }
    };
    timings.header = Some(sent_at.elapsed());
    // The response carries the STDERR log already (`fastcgi::send` attaches it).
    let (parts, body) = response.into_parts();
    let body = UpstreamBody::fastcgi(
        body,
        config.timeouts.read,
        ReturnToPool {
            conn: None,
            fastcgi: returned,
            keep_alive: KeepAlive {
                reusable: false,
                timeout: None,
                max: None,
            },
            server: server.clone(),
        },
        permit,
    );
    Ok((Response::from_parts(parts, body), reuse))
}

/// The CGI environment for `request` (already rewritten for the upstream hop).
fn build_params(
    request: &Request<RequestBody>,
    settings: &FastCgiSettings,
    context: &RequestContext,
) -> Result<fastcgi::Params, String> {
    let client = &context.client;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let authority: http::uri::Authority = host
        .parse()
        .or_else(|_| "localhost".parse())
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let target = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let meta = fastcgi::RequestMeta {
        method: request.method(),
        target,
        version: context.client_version,
        headers: request.headers(),
        authority: &authority,
        client: client.peer,
        server: client.local,
        https: client.tls,
        content_length,
    };
    match &context.fastcgi_script {
        Some(script) => Ok(fastcgi::params::build_for_script(&meta, settings, script)),
        None => fastcgi::params::build(&meta, settings).map_err(|e| e.to_string()),
    }
}

/// Waits until the exchange stalls in the write phase (upstream not reading STDIN) or the
/// header phase (no complete CGI head after the request was written), and names which.
///
/// One timer, moved only when it fires: the exchange records when it last wrote and when the
/// request ended, so the watchdog sleeps until the earliest moment either timeout could be
/// due and checks then (a 20 ms polling tick before cost a timer and a wake-up of the event
/// loop per request).
async fn watchdog(exchange: &Exchange, timeouts: config::Timeouts) -> UpstreamError {
    let started = Instant::now();
    loop {
        let now = Instant::now();
        let wake = match stall(exchange, started, now, timeouts) {
            Ok(wake) => wake,
            Err(error) => return error,
        };
        sleep_until(wake).await;
    }
}

/// The watchdog's decision at `now`: the stall, or when to look again.
fn stall(
    exchange: &Exchange,
    started: Instant,
    now: Instant,
    timeouts: config::Timeouts,
) -> Result<Instant, UpstreamError> {
    if let Some(written) = exchange.written_at() {
        let due = written + timeouts.header;
        if now < due {
            return Ok(due);
        }
        return Err(UpstreamError::new(
            Cause::HeaderTimeout,
            format!(
                "no complete response head within {} of sending the request (timeouts.header)",
                fmt_duration(timeouts.header)
            ),
        )
        .with_hint("the script runs longer than timeouts.header: raise it for this route, or find what the script waits on (PHP keeps running after causeway gives up)"));
    }
    let progress = exchange
        .last_sent_at()
        .map_or(started, |at| at.max(started));
    let due = progress + timeouts.write;
    if now < due {
        // Were the request to end right now, its head would be due at `now + header`: no
        // earlier look is needed to keep that timeout exact.
        return Ok(due.min(now + timeouts.header));
    }
    Err(UpstreamError::new(
        Cause::WriteTimeout,
        format!(
            "upstream stopped reading the request body for {} (timeouts.write)",
            fmt_duration(timeouts.write)
        ),
    )
    .with_hint(
        "the PHP script is not reading its input (php://input) and PHP-FPM's buffers are full",
    ))
}

/// STDERR that arrived before a failure, logged like nginx's "FastCGI sent in stderr".
fn log_stderr(
    exchange: &Exchange,
    upstream: &Upstream,
    server: &Server,
    error: &UpstreamError,
    request_id: &crate::proxy::RequestId,
) {
    let stderr = exchange.stderr();
    if stderr.is_empty() {
        return;
    }
    tracing::warn!(
        upstream = %upstream.name,
        server = %server.addr,
        cause = %error.cause,
        request_id = %request_id,
        "FastCGI sent in stderr: {:?}",
        stderr.text()
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::fastcgi::Params;

    fn timeouts(write_ms: u64, header_ms: u64) -> config::Timeouts {
        config::Timeouts {
            connect: Duration::from_secs(1),
            write: Duration::from_millis(write_ms),
            header: Duration::from_millis(header_ms),
            read: Duration::from_secs(1),
            total: None,
        }
    }

    fn request(body_len: usize) -> FastCgiRequest<Full<Bytes>> {
        let mut params = Params::default();
        params.push("SCRIPT_FILENAME", "/srv/app.php");
        params.push("CONTENT_LENGTH", body_len.to_string());
        FastCgiRequest {
            params,
            body: Full::new(Bytes::from(vec![b'x'; body_len])),
            content_length: body_len as u64,
            max_head: 8192,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_stops_reading_is_write_timeout_counted_from_the_last_write() {
        // The worker's end is never read: writing stalls once 1 KiB is buffered.
        let (client, _worker) = tokio::io::duplex(1024);
        let exchange = Exchange::new(0);
        let stalled = tokio::select! {
            _ = fastcgi::send(client, request(64 * 1024), &exchange, None) => {
                panic!("the exchange cannot finish")
            }
            stalled = watchdog(&exchange, timeouts(300, 10_000)) => stalled,
        };
        assert_eq!(stalled.cause, Cause::WriteTimeout, "{}", stalled.detail);
        let last = exchange.last_sent_at().expect("the first KiB was written");
        assert_eq!(Instant::now() - last, Duration::from_millis(300));
        assert!(!exchange.request_written());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_worker_is_header_timeout_counted_from_the_end_of_the_request() {
        let (client, mut worker) = tokio::io::duplex(64 * 1024);
        // Reads the whole request and never answers.
        tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            while worker.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let exchange = Exchange::new(0);
        let stalled = tokio::select! {
            _ = fastcgi::send(client, request(100_000), &exchange, None) => {
                panic!("no answer comes")
            }
            stalled = watchdog(&exchange, timeouts(100, 500)) => stalled,
        };
        assert_eq!(stalled.cause, Cause::HeaderTimeout, "{}", stalled.detail);
        let written = exchange.written_at().expect("the request was written");
        assert_eq!(Instant::now() - written, Duration::from_millis(500));
    }
}
