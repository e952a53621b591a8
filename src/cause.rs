//! The causes of DESIGN.md section 4: one stable name per way a proxied request can fail.
//!
//! This file is the contract in code. Each [`Cause`] has exactly one row in [`Cause::info`]:
//! its snake_case name, the phase it happens in, the status the client gets and the RFC 9209
//! `Proxy-Status` error type. Deciding *which* cause applies is `classify`'s job, not this file's.

use std::fmt;

use http::StatusCode;

/// Why one attempt (or the whole request) failed. The snake_case name is a public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    DnsError,
    DnsTimeout,
    ConnectRefused,
    ConnectTimeout,
    ConnectUnreachable,
    SocketNotFound,
    SocketPermissionDenied,
    SocketBacklogFull,
    ConnectFailed,
    TlsHandshakeFailed,
    TlsAlertReceived,
    TlsCertificateInvalid,
    WriteFailed,
    WriteTimeout,
    StaleConnection,
    UpstreamReset,
    PrematureClose,
    InvalidResponse,
    HeaderTooLarge,
    HeaderTimeout,
    FastcgiProtocolError,
    FastcgiOverloaded,
    BodyTruncated,
    BodyTimeout,
    NoHealthyUpstream,
    UpstreamBusy,
    NoRoute,
    LoopDetected,
    ClientClosed,
    ClientTimeout,
    RequestTooLarge,
}

/// Where in the life of a request a cause happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Resolving, connecting, TLS handshake: nothing was sent upstream yet.
    Connect,
    /// Sending the request head and body upstream.
    Request,
    /// Waiting for and reading the response head.
    ResponseHead,
    /// Relaying the response body; the client already has the status line.
    ResponseBody,
    /// Choosing a server of the upstream group.
    Pick,
    /// Matching the request to a route.
    Routing,
    /// Any phase: the client side, not the upstream.
    Any,
}

/// One row of the cause table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CauseInfo {
    /// The stable snake_case name used in logs, JSON bodies, metrics and Proxy-Status details.
    pub name: &'static str,
    pub phase: Phase,
    /// The status the client gets. For body-phase causes this is the status of the table, but
    /// the client already received the upstream's status line and the connection is aborted.
    pub status: StatusCode,
    /// RFC 9209 error type, or `None` for client-side causes that never get a Proxy-Status.
    pub proxy_status: Option<&'static str>,
}

impl Cause {
    /// Every cause, in DESIGN.md order. Used by tests and by the demo to be exhaustive.
    pub const ALL: [Cause; 31] = [
        Cause::DnsError,
        Cause::DnsTimeout,
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::ConnectUnreachable,
        Cause::SocketNotFound,
        Cause::SocketPermissionDenied,
        Cause::SocketBacklogFull,
        Cause::ConnectFailed,
        Cause::TlsHandshakeFailed,
        Cause::TlsAlertReceived,
        Cause::TlsCertificateInvalid,
        Cause::WriteFailed,
        Cause::WriteTimeout,
        Cause::StaleConnection,
        Cause::UpstreamReset,
        Cause::PrematureClose,
        Cause::InvalidResponse,
        Cause::HeaderTooLarge,
        Cause::HeaderTimeout,
        Cause::FastcgiProtocolError,
        Cause::FastcgiOverloaded,
        Cause::BodyTruncated,
        Cause::BodyTimeout,
        Cause::NoHealthyUpstream,
        Cause::UpstreamBusy,
        Cause::NoRoute,
        Cause::LoopDetected,
        Cause::ClientClosed,
        Cause::ClientTimeout,
        Cause::RequestTooLarge,
    ];

    /// The contract in one `match`: a variant without a row does not compile.
    pub const fn info(self) -> CauseInfo {
        use Phase::*;
        const BAD_GATEWAY: StatusCode = StatusCode::BAD_GATEWAY;
        const GATEWAY_TIMEOUT: StatusCode = StatusCode::GATEWAY_TIMEOUT;
        const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
        let (name, phase, status, proxy_status) = match self {
            Cause::DnsError => ("dns_error", Connect, BAD_GATEWAY, Some("dns_error")),
            Cause::DnsTimeout => ("dns_timeout", Connect, GATEWAY_TIMEOUT, Some("dns_timeout")),
            Cause::ConnectRefused => (
                "connect_refused",
                Connect,
                BAD_GATEWAY,
                Some("connection_refused"),
            ),
            Cause::ConnectTimeout => (
                "connect_timeout",
                Connect,
                GATEWAY_TIMEOUT,
                Some("connection_timeout"),
            ),
            Cause::ConnectUnreachable => (
                "connect_unreachable",
                Connect,
                BAD_GATEWAY,
                Some("destination_ip_unroutable"),
            ),
            Cause::SocketNotFound => (
                "socket_not_found",
                Connect,
                BAD_GATEWAY,
                Some("connection_refused"),
            ),
            Cause::SocketPermissionDenied => (
                "socket_permission_denied",
                Connect,
                BAD_GATEWAY,
                Some("proxy_configuration_error"),
            ),
            Cause::SocketBacklogFull => (
                "socket_backlog_full",
                Connect,
                UNAVAILABLE,
                Some("connection_limit_reached"),
            ),
            Cause::ConnectFailed => (
                "connect_failed",
                Connect,
                BAD_GATEWAY,
                Some("destination_unavailable"),
            ),
            Cause::TlsHandshakeFailed => (
                "tls_handshake_failed",
                Connect,
                BAD_GATEWAY,
                Some("tls_protocol_error"),
            ),
            Cause::TlsAlertReceived => (
                "tls_alert_received",
                Connect,
                BAD_GATEWAY,
                Some("tls_alert_received"),
            ),
            Cause::TlsCertificateInvalid => (
                "tls_certificate_invalid",
                Connect,
                BAD_GATEWAY,
                Some("tls_certificate_error"),
            ),
            Cause::WriteFailed => (
                "write_failed",
                Request,
                BAD_GATEWAY,
                Some("connection_terminated"),
            ),
            Cause::WriteTimeout => (
                "write_timeout",
                Request,
                GATEWAY_TIMEOUT,
                Some("connection_write_timeout"),
            ),
            Cause::StaleConnection => (
                "stale_connection",
                ResponseHead,
                BAD_GATEWAY,
                Some("connection_terminated"),
            ),
            Cause::UpstreamReset => (
                "upstream_reset",
                ResponseHead,
                BAD_GATEWAY,
                Some("connection_terminated"),
            ),
            // `http_response_incomplete` instead when part of a head arrived: see
            // `UpstreamError::proxy_status_error`.
            Cause::PrematureClose => (
                "premature_close",
                ResponseHead,
                BAD_GATEWAY,
                Some("connection_terminated"),
            ),
            Cause::InvalidResponse => (
                "invalid_response",
                ResponseHead,
                BAD_GATEWAY,
                Some("http_protocol_error"),
            ),
            Cause::HeaderTooLarge => (
                "header_too_large",
                ResponseHead,
                BAD_GATEWAY,
                Some("http_response_header_section_size"),
            ),
            Cause::HeaderTimeout => (
                "header_timeout",
                ResponseHead,
                GATEWAY_TIMEOUT,
                Some("http_response_timeout"),
            ),
            Cause::FastcgiProtocolError => (
                "fastcgi_protocol_error",
                ResponseHead,
                BAD_GATEWAY,
                Some("http_protocol_error"),
            ),
            Cause::FastcgiOverloaded => (
                "fastcgi_overloaded",
                ResponseHead,
                UNAVAILABLE,
                Some("connection_limit_reached"),
            ),
            Cause::BodyTruncated => (
                "body_truncated",
                ResponseBody,
                BAD_GATEWAY,
                Some("http_response_incomplete"),
            ),
            Cause::BodyTimeout => (
                "body_timeout",
                ResponseBody,
                GATEWAY_TIMEOUT,
                Some("connection_read_timeout"),
            ),
            Cause::NoHealthyUpstream => (
                "no_healthy_upstream",
                Pick,
                UNAVAILABLE,
                Some("destination_unavailable"),
            ),
            Cause::UpstreamBusy => (
                "upstream_busy",
                Pick,
                UNAVAILABLE,
                Some("connection_limit_reached"),
            ),
            Cause::NoRoute => (
                "no_route",
                Routing,
                StatusCode::NOT_FOUND,
                Some("destination_not_found"),
            ),
            Cause::LoopDetected => (
                "loop_detected",
                Routing,
                StatusCode::LOOP_DETECTED,
                Some("proxy_loop_detected"),
            ),
            // 499 is nginx's code for "client closed request": logged, never sent.
            Cause::ClientClosed => ("client_closed", Any, CLIENT_CLOSED_REQUEST, None),
            Cause::ClientTimeout => ("client_timeout", Request, StatusCode::REQUEST_TIMEOUT, None),
            // 431 for an oversized head is decided where the head is measured; 413 is the row.
            Cause::RequestTooLarge => (
                "request_too_large",
                Request,
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
            ),
        };
        CauseInfo {
            name,
            phase,
            status,
            proxy_status,
        }
    }

    /// The stable snake_case name (`connect_refused`).
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Looks a cause up by its contract name, as written in `retry.on`.
    pub fn from_name(name: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether this failure says something about the upstream server's health.
    ///
    /// Client-side and routing causes never count against a server (DESIGN.md section 4:
    /// "never counted against the upstream"); neither does `upstream_busy`, which is our own
    /// queue being full, nor `stale_connection`, which is the keep-alive race and not a fault.
    pub const fn counts_against_server(self) -> bool {
        !matches!(
            self,
            Cause::ClientClosed
                | Cause::ClientTimeout
                | Cause::RequestTooLarge
                | Cause::NoRoute
                | Cause::LoopDetected
                | Cause::NoHealthyUpstream
                | Cause::UpstreamBusy
                | Cause::StaleConnection
        )
    }

    /// Whether the failure happened before any request byte reached the upstream, which makes
    /// a retry safe for every method.
    pub const fn nothing_sent(self) -> bool {
        matches!(self.info().phase, Phase::Connect | Phase::Pick)
    }
}

/// nginx's non-standard 499 "client closed request", used only in logs.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_cause_has_a_unique_snake_case_name() {
        let names: HashSet<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Cause::ALL.len());
        for name in names {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
        }
    }

    #[test]
    fn names_round_trip() {
        for cause in Cause::ALL {
            assert_eq!(Cause::from_name(cause.name()), Some(cause));
        }
        assert_eq!(Cause::from_name("connection_refused"), None);
    }

    #[test]
    fn table_matches_design_for_statuses_that_differ_between_proxies() {
        // DESIGN.md section 4, "choices where peers differ".
        assert_eq!(
            Cause::ConnectTimeout.info().status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(Cause::ConnectRefused.info().status, StatusCode::BAD_GATEWAY);
        assert_eq!(Cause::UpstreamReset.info().status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            Cause::SocketBacklogFull.info().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Cause::SocketNotFound.info().proxy_status,
            Some("connection_refused")
        );
        assert_eq!(Cause::LoopDetected.info().status.as_u16(), 508);
        assert_eq!(Cause::ClientClosed.info().status.as_u16(), 499);
    }

    #[test]
    fn client_causes_never_count_against_a_server() {
        assert!(!Cause::ClientClosed.counts_against_server());
        assert!(!Cause::ClientTimeout.counts_against_server());
        assert!(Cause::ConnectRefused.counts_against_server());
        assert!(Cause::HeaderTimeout.counts_against_server());
    }

    #[test]
    fn only_client_causes_lack_a_proxy_status_type() {
        for cause in Cause::ALL {
            let client_side = matches!(
                cause,
                Cause::ClientClosed | Cause::ClientTimeout | Cause::RequestTooLarge
            );
            assert_eq!(cause.info().proxy_status.is_none(), client_side, "{cause}");
        }
    }
}
