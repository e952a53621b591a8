//! The only place where raw errors (io, hyper, rustls, DNS, elapsed timers) become a [`Cause`].
//!
//! One small function per place a raw error appears; each reads error kinds, typed variants and
//! `source()` chains, never message text. Each returns a complete [`UpstreamError`] with a
//! detail sentence an operator can act on ("connect to 127.0.0.1:3000 refused"). Timeouts are
//! not classified here: the code that owns a timer knows which phase it guards.

use std::error::Error as StdError;
use std::io;

use http::Method;

use crate::cause::Cause;
use crate::config::ServerAddr;
use crate::fastcgi::FastCgiError;
use crate::proxy::ClientBodyError;
use crate::resolve::ResolveError;
use crate::upstream::http1::{BodyError as Http1BodyError, Http1Error};
use crate::upstream::{Reuse, Sent, UpstreamError};

/// Names the cause of a failed `connect()` to `server`.
pub fn connect_error(err: io::Error, server: &ServerAddr) -> UpstreamError {
    use io::ErrorKind::*;
    let errno = err.raw_os_error();
    let (cause, detail, hint): (Cause, String, Option<String>) = match (err.kind(), server) {
        (ConnectionRefused, ServerAddr::Unix(path)) => (
            Cause::ConnectRefused,
            format!("connect to {server} refused: the socket file exists but nothing accepts on it"),
            Some(format!(
                "a stale socket: the backend that created {} has stopped; restart it",
                path.display()
            )),
        ),
        (ConnectionRefused, _) => (
            Cause::ConnectRefused,
            format!("connect to {server} refused (ECONNREFUSED): nothing listens there"),
            Some(format!(
                "is the backend running and listening on {server}? check `ss -ltnp`"
            )),
        ),
        (NotFound, ServerAddr::Unix(path)) => (
            Cause::SocketNotFound,
            format!("unix socket {} does not exist (ENOENT)", path.display()),
            Some(format!(
                "is the backend (e.g. PHP-FPM) running? does its `listen =` match {}?",
                path.display()
            )),
        ),
        (PermissionDenied, ServerAddr::Unix(path)) => (
            Cause::SocketPermissionDenied,
            format!("permission denied connecting to unix socket {} (EACCES)", path.display()),
            Some("compare the socket's owner and mode with causeway's user: PHP-FPM's `listen.owner` / `listen.mode`".to_string()),
        ),
        (WouldBlock, ServerAddr::Unix(path)) => (
            Cause::SocketBacklogFull,
            format!(
                "unix socket {} has a full listen queue (EAGAIN): every worker is busy",
                path.display()
            ),
            Some("raise the backend's workers (PHP-FPM `pm.max_children`) or its `listen.backlog`, or set max_conns so excess requests queue in causeway".to_string()),
        ),
        (HostUnreachable | NetworkUnreachable, _) => (
            Cause::ConnectUnreachable,
            format!("no route to {server} ({})", errno_label(errno, "EHOSTUNREACH")),
            Some("check the address and the routing/firewall between causeway and the backend".to_string()),
        ),
        (TimedOut, _) => (
            Cause::ConnectTimeout,
            format!("connect to {server} timed out in the kernel (ETIMEDOUT)"),
            Some("the server's accept backlog is full or a firewall drops SYNs".to_string()),
        ),
        (_, _) => (
            Cause::ConnectFailed,
            format!(
                "connect to {server} failed: {} ({err})",
                errno_label(errno, "unknown errno")
            ),
            None,
        ),
    };
    let mut error = UpstreamError::new(cause, detail).with_source(err);
    error.hint = hint;
    error
}

/// Names the cause of a failed DNS lookup of `host`.
pub fn dns_error(err: ResolveError, host: &str) -> UpstreamError {
    if err.is_timeout() {
        let detail = err.to_string();
        return UpstreamError::new(Cause::DnsTimeout, detail)
            .with_hint("the resolver did not answer: check [resolver] nameservers and that they are reachable")
            .with_source(err);
    }
    let rcode = err.rcode().map(str::to_string);
    let hint = match rcode.as_deref() {
        Some("NXDOMAIN") => {
            format!("\"{host}\" does not exist in DNS: check the name in `servers`")
        }
        Some("NOERROR") => format!("\"{host}\" exists but has no A/AAAA record"),
        Some(code) => {
            format!("the nameserver answered {code} for \"{host}\": check the nameserver")
        }
        None => "causeway could not reach a nameserver: check [resolver] nameservers".to_string(),
    };
    let mut error = UpstreamError::new(Cause::DnsError, err.to_string())
        .with_hint(hint)
        .with_source(err);
    error.params.rcode = rcode;
    error
}

/// Names the cause of a failed TLS handshake with `name`. tokio-rustls reports rustls errors
/// inside an `io::Error`; transport errors during the handshake are plain io errors.
pub fn tls_error(err: io::Error, name: &str) -> UpstreamError {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    let mut error = match tls {
        Some(tls) => tls_cause(&tls, name),
        None => match err.kind() {
            io::ErrorKind::UnexpectedEof => UpstreamError::new(
                Cause::TlsHandshakeFailed,
                format!("upstream closed the connection during the TLS handshake with \"{name}\""),
            )
            .with_hint("the port may not speak TLS, or rejected our TLS version or SNI"),
            io::ErrorKind::ConnectionReset => UpstreamError::new(
                Cause::TlsHandshakeFailed,
                format!("upstream reset the connection during the TLS handshake with \"{name}\""),
            ),
            _ => UpstreamError::new(
                Cause::TlsHandshakeFailed,
                format!("TLS handshake with \"{name}\" failed: {err}"),
            ),
        },
    };
    error.source = Some(Box::new(err));
    error
}

/// Maps one rustls error: certificate problems with the precise reason, alerts with their id,
/// plaintext where TLS was expected.
pub fn tls_cause(err: &rustls::Error, name: &str) -> UpstreamError {
    match err {
        rustls::Error::InvalidCertificate(cert) => {
            let (reason, hint) = certificate_reason(cert);
            UpstreamError::new(
                Cause::TlsCertificateInvalid,
                format!("upstream certificate for \"{name}\" {reason}"),
            )
            .with_hint(hint)
        }
        rustls::Error::AlertReceived(alert) => {
            let mut error = UpstreamError::new(
                Cause::TlsAlertReceived,
                format!("upstream sent TLS alert {alert:?} during the handshake with \"{name}\""),
            )
            .with_hint("the upstream refused our handshake: check tls.server_name (SNI), TLS versions and client-certificate requirements");
            error.params.alert_id = Some(u8::from(*alert));
            error
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        | rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge) => {
            UpstreamError::new(
                Cause::TlsHandshakeFailed,
                format!("upstream is not speaking TLS: \"{name}\" answered the TLS hello with non-TLS bytes"),
            )
            .with_hint("this port speaks plain HTTP: protocol = \"http\"?")
        }
        other => UpstreamError::new(
            Cause::TlsHandshakeFailed,
            format!("TLS handshake with \"{name}\" failed: {other}"),
        ),
    }
}

/// The precise reason a certificate was refused, with dates and names when rustls gives them,
/// and what to do about it.
fn certificate_reason(cert: &rustls::CertificateError) -> (String, &'static str) {
    use rustls::CertificateError as C;
    const RENEW: &str = "renew the upstream's certificate (and check both clocks)";
    match cert {
        C::Expired => ("has expired".to_string(), RENEW),
        C::ExpiredContext { not_after, .. } => (
            format!("expired on {}", unix_date(not_after.as_secs())),
            RENEW,
        ),
        C::NotValidYet => ("is not valid yet".to_string(), RENEW),
        C::NotValidYetContext { not_before, .. } => (
            format!("is not valid yet: valid from {}", unix_date(not_before.as_secs())),
            RENEW,
        ),
        C::UnknownIssuer => (
            "is issued by an unknown CA (self-signed, or a private CA not in tls.ca)".to_string(),
            "add the upstream's CA to tls.ca (or, for testing only, tls.insecure_skip_verify = true)",
        ),
        C::NotValidForName => (
            "is not valid for that name".to_string(),
            "set tls.server_name to a name the certificate covers",
        ),
        C::NotValidForNameContext { presented, .. } => (
            format!(
                "is not valid for that name: it covers only {}",
                if presented.is_empty() {
                    "no names".to_string()
                } else {
                    // rustls renders names as `DnsName("x")`; operators want `x`.
                    presented
                        .iter()
                        .map(|p| p.trim_start_matches("DnsName(").trim_start_matches("IpAddress(").trim_end_matches(')').trim_matches('"'))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            "set tls.server_name to a name the certificate covers",
        ),
        C::Revoked => ("is revoked".to_string(), "the upstream needs a new certificate"),
        C::BadSignature => (
            "has a bad signature".to_string(),
            "check the upstream's certificate chain",
        ),
        other => (
            format!("is invalid: {other}"),
            "check the upstream's certificate chain",
        ),
    }
}

/// `2001-01-01 00:00:00 UTC` for a UNIX time.
fn unix_date(secs: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("UNIX time {secs}"))
}

/// Names the cause of a failed HTTP handshake (HTTP/2 preface) on a new connection.
pub fn handshake_error(err: &hyper::Error, server: &ServerAddr) -> UpstreamError {
    UpstreamError::new(
        Cause::InvalidResponse,
        format!("HTTP handshake with {server} failed: {err}"),
    )
    .with_hint("does the upstream speak the configured protocol (http2 needs prior-knowledge h2)?")
}

/// What `exchange` knew about the attempt when it failed.
#[derive(Clone, Debug)]
pub struct ExchangeContext {
    pub reuse: Reuse,
    pub server: ServerAddr,
    pub method: Method,
}

/// How an exchange failed before a complete response head, in the terms both HTTP clients
/// report (hyper's, and causeway's own in `upstream::http1`): one decision table for both.
#[derive(Debug)]
pub enum ExchangeFailure {
    /// The connection closed before the request could be sent.
    NotSent,
    HeadTooLarge,
    /// The response head was not valid HTTP; says what was wrong.
    InvalidHead(String),
    /// The connection was reset (or the pipe broke) mid-exchange.
    Reset,
    /// The upstream closed the connection before a complete head.
    Closed,
    /// Writing the request failed otherwise; says how.
    WriteFailed(String),
    /// Any other transport or protocol failure; says what.
    Other(String),
}

/// Names the cause of a failed request/response exchange before a complete response head.
/// `sent` is how much of the request was written; `read` the response bytes received.
pub fn exchange_error(
    err: hyper::Error,
    context: &ExchangeContext,
    sent: Sent,
    read: u64,
) -> UpstreamError {
    if let Some(client) = find_source::<ClientBodyError>(&err) {
        return client_body_error(client);
    }
    let io_kind = find_source::<io::Error>(&err).map(io::Error::kind);
    let failure = if err.is_canceled() || err.is_closed() {
        ExchangeFailure::NotSent
    } else if err.is_parse_too_large() {
        ExchangeFailure::HeadTooLarge
    } else if err.is_parse() || err.is_parse_status() {
        ExchangeFailure::InvalidHead(err.to_string())
    } else if io_kind.is_some_and(is_reset) {
        ExchangeFailure::Reset
    } else if err.is_incomplete_message() || io_kind == Some(io::ErrorKind::UnexpectedEof) {
        ExchangeFailure::Closed
    } else if err.is_body_write_aborted() || err.is_user() {
        ExchangeFailure::WriteFailed(err.to_string())
    } else {
        ExchangeFailure::Other(err.to_string())
    };
    exchange_failure(failure, context, sent, read).with_source(err)
}

/// Names the cause of a failed exchange of causeway's own HTTP/1.1 client.
pub fn http1_error(
    err: Http1Error,
    context: &ExchangeContext,
    sent: Sent,
    read: u64,
) -> UpstreamError {
    let failure = match &err {
        Http1Error::Write(e) | Http1Error::Read(e) if is_reset(e.kind()) => ExchangeFailure::Reset,
        Http1Error::Write(e) => ExchangeFailure::WriteFailed(e.to_string()),
        Http1Error::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => ExchangeFailure::Closed,
        Http1Error::Read(e) => ExchangeFailure::Other(e.to_string()),
        Http1Error::Closed => ExchangeFailure::Closed,
        Http1Error::HeadTooLarge => ExchangeFailure::HeadTooLarge,
        Http1Error::Invalid(what) => ExchangeFailure::InvalidHead(what.clone()),
        // The exchange turns its own timers into causes; these never reach here.
        Http1Error::WriteTimeout | Http1Error::HeaderTimeout => {
            ExchangeFailure::Other(err.to_string())
        }
    };
    exchange_failure(failure, context, sent, read).with_source(err)
}

fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The decision table behind [`exchange_error`] and [`http1_error`].
pub fn exchange_failure(
    failure: ExchangeFailure,
    context: &ExchangeContext,
    sent: Sent,
    read: u64,
) -> UpstreamError {
    let server = &context.server;
    let reused = context.reuse.is_reused();
    let idle = context.reuse.idle_ms();
    // The keep-alive race: a reused connection that died before any response byte.
    let stale = |what: &str| {
        UpstreamError::new(
            Cause::StaleConnection,
            format!(
                "reused connection to {server} (idle {idle} ms) {what} before any response byte: the upstream closed it as it was reused"
            ),
        )
        .with_hint("the upstream's keep-alive timeout is shorter than pool.idle_timeout; lower idle_timeout below the backend's (Node: keepAliveTimeout)")
    };
    let mut error = match failure {
        ExchangeFailure::NotSent => {
            if reused {
                stale("was closed")
            } else {
                UpstreamError::new(
                    Cause::PrematureClose,
                    format!("connection to {server} closed before the request could be sent"),
                )
            }
        }
        ExchangeFailure::HeadTooLarge => UpstreamError::new(
            Cause::HeaderTooLarge,
            format!("response head from {server} is larger than max_response_header"),
        )
        .with_hint(
            "raise max_response_header for this upstream if such large headers are expected",
        ),
        ExchangeFailure::InvalidHead(what) => UpstreamError::new(
            Cause::InvalidResponse,
            format!("{server} sent an invalid HTTP response head: {what}"),
        )
        .with_hint("the upstream is not speaking HTTP/1.1 on this port, or is broken"),
        ExchangeFailure::Reset => {
            if read == 0 && reused {
                stale("was reset")
            } else if sent != Sent::All && read == 0 {
                UpstreamError::new(
                    Cause::WriteFailed,
                    format!("connection to {server} was reset while sending the request"),
                )
                .with_hint("the upstream closed the connection without reading the request: does it reject large uploads?")
            } else {
                UpstreamError::new(
                    Cause::UpstreamReset,
                    format!("{server} reset the connection before a complete response head ({read} bytes received)"),
                )
                .with_hint("the backend crashed or was killed while handling the request: check its logs")
            }
        }
        ExchangeFailure::Closed => {
            if read == 0 && reused {
                stale("was closed")
            } else if read == 0 {
                UpstreamError::new(
                    Cause::PrematureClose,
                    format!("{server} closed the connection without sending any response byte"),
                )
                .with_hint("the backend closed the connection without answering: it crashed, was killed, or hit its own limit; check its logs")
            } else {
                let mut error = UpstreamError::new(
                    Cause::PrematureClose,
                    format!("{server} closed the connection after {read} bytes of an incomplete response head"),
                )
                .with_hint("the backend died while writing its response: check its logs");
                error.params.partial_head = true;
                error
            }
        }
        ExchangeFailure::WriteFailed(how) => UpstreamError::new(
            Cause::WriteFailed,
            format!("sending the request to {server} failed: {how}"),
        ),
        // The socket failed mid-exchange in some other way.
        ExchangeFailure::Other(what) => UpstreamError::new(
            Cause::UpstreamReset,
            format!("exchange with {server} failed: {what}"),
        ),
    };
    error.reuse = context.reuse;
    error.sent = sent;
    error
}

/// Names the cause of an error while relaying the response body (after the head was sent).
pub fn body_error(err: &hyper::Error) -> UpstreamError {
    let reset = matches!(
        find_source::<io::Error>(err).map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    body_failure(reset)
}

/// The same for a body read by causeway's own HTTP/1.1 client.
pub fn http1_body_error(err: &Http1BodyError) -> UpstreamError {
    match err {
        Http1BodyError::InvalidChunk(what) => UpstreamError::new(
            Cause::BodyTruncated,
            format!("upstream sent an invalid chunked body ({what}); the response ends there"),
        )
        .with_hint("the backend (or something between) corrupted its response: check its logs"),
        _ => body_failure(err.is_reset()),
    }
}

fn body_failure(reset: bool) -> UpstreamError {
    let how = if reset {
        "reset the connection"
    } else {
        "closed the connection"
    };
    UpstreamError::new(
        Cause::BodyTruncated,
        format!("upstream {how} before the end of the response body"),
    )
    .with_hint("the backend died mid-response or its Content-Length is wrong: check its logs")
}

/// Why a PHP-FPM worker usually dies without answering; part of every such detail.
const WORKER_DIED: &str = "the worker died: PHP-FPM's request_terminate_timeout, an OOM kill or a crash (see PHP-FPM's log)";

/// Names the cause of a failed FastCGI exchange before a complete CGI head.
pub fn fastcgi_error(err: &FastCgiError, server: &ServerAddr) -> UpstreamError {
    use crate::fastcgi::client::Phase;
    match err {
        FastCgiError::Io { phase: Phase::WritingRequest, source, .. } => UpstreamError::new(
            Cause::WriteFailed,
            format!("sending the FastCGI request to {server} failed: {source}"),
        )
        .with_hint(WORKER_DIED),
        FastCgiError::Io { phase: Phase::ReadingBody, source, .. } => UpstreamError::new(
            Cause::BodyTruncated,
            format!("reading the response body from {server} failed: {source}"),
        ),
        FastCgiError::Io { source, bytes_received, .. } => {
            let reset = source.kind() == io::ErrorKind::ConnectionReset;
            let cause = if reset { Cause::UpstreamReset } else { Cause::PrematureClose };
            let what = if reset { "reset the connection" } else { "failed" };
            UpstreamError::new(
                cause,
                format!("{server} {what} before a complete response head ({bytes_received} bytes received): {WORKER_DIED}"),
            )
            .with_hint("raise request_terminate_timeout or memory limits, or fix the crash in PHP-FPM's log")
        }
        FastCgiError::ClosedBeforeHead { bytes_received } => {
            let mut error = UpstreamError::new(
                Cause::PrematureClose,
                format!("{server} closed the connection before a complete response head ({bytes_received} bytes received): {WORKER_DIED}"),
            )
            .with_hint("raise request_terminate_timeout or memory limits, or fix the crash in PHP-FPM's log");
            error.params.partial_head = *bytes_received > 0;
            error
        }
        FastCgiError::Record(crate::fastcgi::RecordError::BadVersion(72)) => UpstreamError::new(
            Cause::FastcgiProtocolError,
            format!("{server} speaks HTTP, not FastCGI (its first byte was 'H')"),
        )
        .with_hint("this port is an HTTP server: use protocol = \"http\", or point the upstream at PHP-FPM's listen address"),
        FastCgiError::Record(e) => UpstreamError::new(
            Cause::FastcgiProtocolError,
            format!("{server} sent malformed FastCGI records: {e}"),
        ),
        FastCgiError::Cgi(e) => UpstreamError::new(
            Cause::FastcgiProtocolError,
            format!("{server} sent an invalid CGI response head: {e}"),
        ),
        FastCgiError::EndedBeforeHead { .. } => UpstreamError::new(
            Cause::FastcgiProtocolError,
            format!("{server} ended the request without a response head: {err}"),
        ),
        FastCgiError::HeadTooLarge { limit } => UpstreamError::new(
            Cause::HeaderTooLarge,
            format!("CGI response head from {server} is larger than {limit} bytes (max_response_header)"),
        ),
        FastCgiError::Rejected { protocol_status } if *protocol_status == 1 || *protocol_status == 2 => {
            UpstreamError::new(
                Cause::FastcgiOverloaded,
                format!("{server} refused the request: {err}"),
            )
            .with_hint("the FastCGI application is out of a resource; add capacity or set max_conns so requests queue in causeway")
        }
        FastCgiError::Rejected { .. } => UpstreamError::new(
            Cause::FastcgiProtocolError,
            format!("{server} refused the request: {err}"),
        ),
        FastCgiError::Truncated => UpstreamError::new(
            Cause::BodyTruncated,
            format!("{server} closed the connection before END_REQUEST: {WORKER_DIED}"),
        ),
        FastCgiError::ClientBody(source) => match find_source::<ClientBodyError>(source.as_ref()) {
            Some(client) => client_body_error(client),
            None => client_body_error(&ClientBodyError::Aborted),
        },
        FastCgiError::BodyLength { .. } => client_body_error(&ClientBodyError::Aborted),
    }
}

/// Names the cause of a FastCGI failure after the head was relayed.
pub fn fastcgi_body_error(err: &FastCgiError) -> UpstreamError {
    match err {
        FastCgiError::ClientBody(_) | FastCgiError::BodyLength { .. } => {
            client_body_error(&ClientBodyError::Aborted)
        }
        _ => UpstreamError::new(
            Cause::BodyTruncated,
            format!("FastCGI response ended before END_REQUEST ({err}): {WORKER_DIED}"),
        )
        .with_hint(
            "raise request_terminate_timeout or memory limits, or fix the crash in PHP-FPM's log",
        ),
    }
}

/// Maps a client-side body failure: never the upstream's fault.
///
/// A malformed body has no cause of its own in DESIGN.md section 4: it travels as
/// `client_closed` (not retried, not counted against the server) with the original error as
/// its source, and the proxy answers it with a plain 400 logged with no cause.
pub fn client_body_error(err: &ClientBodyError) -> UpstreamError {
    let cause = match err {
        ClientBodyError::TooLarge { .. } => Cause::RequestTooLarge,
        ClientBodyError::Timeout { .. } => Cause::ClientTimeout,
        ClientBodyError::Aborted => Cause::ClientClosed,
        ClientBodyError::Malformed { .. } => {
            return UpstreamError::new(Cause::ClientClosed, err.to_string())
                .with_source(err.clone());
        }
    };
    UpstreamError::new(cause, err.to_string())
}

/// The first error of type `T` in `err`'s source chain (itself included).
pub fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// `EADDRNOTAVAIL (99)`-style label for a raw OS error, so a catch-all still names the errno.
pub fn errno_label(errno: Option<i32>, fallback: &str) -> String {
    let Some(code) = errno else {
        return fallback.to_string();
    };
    // Linux errno values (asm-generic/errno-base.h, errno.h) that connect() can return.
    let name = match code {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return format!("errno {code}"),
    };
    format!("{name} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tcp() -> ServerAddr {
        ServerAddr::Ip("127.0.0.1:3000".parse().expect("literal address"))
    }

    fn unix() -> ServerAddr {
        ServerAddr::Unix(PathBuf::from("/run/php/php8.2-fpm.sock"))
    }

    #[test]
    fn connect_errors_map_to_design_causes() {
        let cases = [
            (
                io::Error::from_raw_os_error(111),
                tcp(),
                Cause::ConnectRefused,
            ),
            (
                io::Error::from_raw_os_error(111),
                unix(),
                Cause::ConnectRefused,
            ),
            (
                io::Error::from_raw_os_error(2),
                unix(),
                Cause::SocketNotFound,
            ),
            (
                io::Error::from_raw_os_error(13),
                unix(),
                Cause::SocketPermissionDenied,
            ),
            (
                io::Error::from_raw_os_error(11),
                unix(),
                Cause::SocketBacklogFull,
            ),
            (
                io::Error::from_raw_os_error(113),
                tcp(),
                Cause::ConnectUnreachable,
            ),
            (
                io::Error::from_raw_os_error(101),
                tcp(),
                Cause::ConnectUnreachable,
            ),
            (
                io::Error::from_raw_os_error(110),
                tcp(),
                Cause::ConnectTimeout,
            ),
            (
                io::Error::from_raw_os_error(99),
                tcp(),
                Cause::ConnectFailed,
            ),
        ];
        for (err, server, expected) in cases {
            let label = format!("{err} on {server}");
            assert_eq!(connect_error(err, &server).cause, expected, "{label}");
        }
    }

    #[test]
    fn catch_all_connect_error_names_the_errno() {
        let error = connect_error(io::Error::from_raw_os_error(99), &tcp());
        assert!(
            error.detail.contains("EADDRNOTAVAIL (99)"),
            "{}",
            error.detail
        );
    }

    #[test]
    fn refused_detail_names_the_server_and_hints_ss() {
        let error = connect_error(io::Error::from_raw_os_error(111), &tcp());
        assert_eq!(
            error.detail,
            "connect to 127.0.0.1:3000 refused (ECONNREFUSED): nothing listens there"
        );
        assert!(error.hint.as_deref().unwrap_or("").contains("ss -ltnp"));
    }

    #[test]
    fn certificate_errors_say_which() {
        let expired = tls_cause(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
            "api.internal",
        );
        assert_eq!(expired.cause, Cause::TlsCertificateInvalid);
        assert!(expired.detail.contains("expired"), "{}", expired.detail);
        let unknown = tls_cause(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            "api.internal",
        );
        assert!(unknown.detail.contains("unknown CA"), "{}", unknown.detail);
        let dated = tls_cause(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                time: rustls::pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(1_000_000_000),
                ),
                not_after: rustls::pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(978_307_200),
                ),
            }),
            "x",
        );
        assert!(
            dated.detail.contains("expired on 2001-01-01 00:00:00 UTC"),
            "{}",
            dated.detail
        );
    }

    #[test]
    fn tls_alert_keeps_its_id() {
        let error = tls_cause(
            &rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
            "x",
        );
        assert_eq!(error.cause, Cause::TlsAlertReceived);
        assert_eq!(error.params.alert_id, Some(40));
    }

    #[test]
    fn plaintext_reply_is_not_speaking_tls() {
        let error = tls_cause(
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            "x",
        );
        assert_eq!(error.cause, Cause::TlsHandshakeFailed);
        assert!(error.detail.contains("not speaking TLS"));
    }

    #[test]
    fn tls_error_unwraps_the_io_error() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet),
        );
        let error = tls_error(io, "x");
        assert_eq!(error.cause, Cause::TlsCertificateInvalid);
        assert!(error.detail.contains("not valid yet"), "{}", error.detail);
    }

    #[test]
    fn client_body_failures_are_client_causes() {
        assert_eq!(
            client_body_error(&ClientBodyError::Aborted).cause,
            Cause::ClientClosed
        );
        assert_eq!(
            client_body_error(&ClientBodyError::TooLarge { limit: 10 }).cause,
            Cause::RequestTooLarge
        );
    }
}
