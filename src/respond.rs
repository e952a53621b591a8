//! What the client sees when causeway answers for a failure (DESIGN.md section 5).
//!
//! Status from the cause table, `Retry-After` on 503, an RFC 9209 `Proxy-Status` field, the
//! request id, and a body negotiated between JSON, HTML and plain text. `errors.expose` decides
//! how much leaks: `none` shows only the status line and request id; `cause` adds the cause;
//! `detail` adds the server, the detail sentence and a fix hint.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::config::{self, Expose};
use crate::headers::X_REQUEST_ID;
use crate::upstream::UpstreamError;

/// The facts about the request an error page may show.
pub struct ErrorContext<'a> {
    pub request_id: &'a str,
    pub upstream: Option<&'a str>,
    pub attempts: usize,
    pub errors: &'a config::Errors,
    /// The client's `Accept` header, for content negotiation.
    pub accept: Option<&'a HeaderValue>,
}

/// Which body format the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Html,
    Text,
}

/// Builds the full error response for `err`. The caller wraps the body in its body type.
pub fn error_response(err: &UpstreamError, context: &ErrorContext<'_>) -> Response<Bytes> {
    let info = err.cause.info();
    let status = info.status;
    let expose = context.errors.expose;
    let format = negotiate(context.accept);
    let body = match context.errors.pages.get(&status.as_u16()) {
        Some(page) => render_page(page, err, context),
        None => render_body(format, err, context),
    };
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let content_type = match (context.errors.pages.contains_key(&status.as_u16()), format) {
        (true, _) | (false, Format::Html) => "text/html; charset=utf-8",
        (false, Format::Json) => "application/json",
        (false, Format::Text) => "text/plain; charset=utf-8",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(context.request_id) {
        headers.insert(&X_REQUEST_ID, id);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let seconds = err.retry_after.unwrap_or(1).max(1);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if context.errors.proxy_status && expose != Expose::None {
        if let Some(value) = proxy_status(err, expose) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert("proxy-status", value);
            }
        }
    }
    response
}

/// Serializes the RFC 9209 `Proxy-Status` member for `err` as a structured field (RFC 8941):
/// `causeway; error=connection_refused; next-hop="127.0.0.1:3000"; details="..."`.
/// `None` for client-side causes, which have no proxy error type.
pub fn proxy_status(err: &UpstreamError, expose: Expose) -> Option<String> {
    let error_type = err.proxy_status_error()?;
    let mut out = String::with_capacity(96);
    out.push_str("causeway; error=");
    out.push_str(error_type);
    if expose == Expose::Detail {
        if let Some(server) = &err.server {
            out.push_str("; next-hop=");
            push_sf_string(&mut out, &server.to_string());
        }
    }
    if let Some(rcode) = &err.params.rcode {
        out.push_str("; rcode=");
        push_sf_string(&mut out, rcode);
    }
    if let Some(alert) = err.params.alert_id {
        let _ = write!(out, "; alert-id={alert}");
    }
    if let Some(received) = err.params.received_status {
        let _ = write!(out, "; received-status={received}");
    }
    out.push_str("; details=");
    let details = match expose {
        Expose::Detail => format!("{}: {}", err.cause, err.detail),
        _ => err.cause.name().to_string(),
    };
    push_sf_string(&mut out, &details);
    Some(out)
}

/// Appends `value` as an RFC 8941 sf-string: printable ASCII only, `"` and `\` escaped; any
/// other character becomes `?` rather than making the header invalid.
pub fn push_sf_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Picks JSON, HTML or text from `Accept`, by quality then by order of preference.
pub fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Format::Text;
    };
    let mut best = (Format::Text, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match media.as_str() {
            "application/json" | "application/problem+json" => Format::Json,
            "text/html" | "application/xhtml+xml" => Format::Html,
            "text/plain" => Format::Text,
            _ => continue,
        };
        if q > best.1 {
            best = (format, q);
        }
    }
    best.0
}

/// A public sentence per status, safe for every exposure level.
fn public_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "No route matches this request.",
        408 => "The request was not received in time.",
        413 => "The request body is too large.",
        431 => "The request headers are too large.",
        502 => "The upstream server failed to answer properly.",
        503 => "The upstream service is unavailable right now; retry later.",
        504 => "The upstream server did not answer in time.",
        508 => "The request looped back to this proxy.",
        _ => "The request could not be completed.",
    }
}

fn render_body(format: Format, err: &UpstreamError, context: &ErrorContext<'_>) -> String {
    let status = err.cause.info().status;
    let expose = context.errors.expose;
    let reason = status.canonical_reason().unwrap_or("Error");
    match format {
        Format::Json => {
            let mut object = serde_json::Map::new();
            object.insert("status".into(), status.as_u16().into());
            if expose >= Expose::Cause {
                object.insert("cause".into(), err.cause.name().into());
            }
            object.insert("message".into(), public_message(status).into());
            if expose >= Expose::Cause {
                if let Some(upstream) = context.upstream {
                    object.insert("upstream".into(), upstream.into());
                }
            }
            object.insert("request_id".into(), context.request_id.into());
            if expose >= Expose::Cause {
                object.insert("attempts".into(), context.attempts.into());
            }
            if expose == Expose::Detail {
                if let Some(server) = &err.server {
                    object.insert("server".into(), server.to_string().into());
                }
                object.insert("detail".into(), err.detail.clone().into());
                if let Some(hint) = &err.hint {
                    object.insert("hint".into(), hint.clone().into());
                }
            }
            let mut text = serde_json::Value::Object(object).to_string();
            text.push('\n');
            text
        }
        Format::Text => {
            let mut text = format!("{} {reason}\n{}\n", status.as_u16(), public_message(status));
            if expose >= Expose::Cause {
                let _ = writeln!(text, "cause: {}", err.cause);
            }
            if expose == Expose::Detail {
                if let Some(server) = &err.server {
                    let _ = writeln!(text, "server: {server}");
                }
                let _ = writeln!(text, "detail: {}", err.detail);
                if let Some(hint) = &err.hint {
                    let _ = writeln!(text, "hint: {hint}");
                }
            }
            let _ = writeln!(text, "request id: {}", context.request_id);
            text
        }
        Format::Html => {
            let mut html = format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n<body>\n<h1>{code} {reason}</h1>\n<p>{message}</p>\n",
                code = status.as_u16(),
                message = public_message(status),
            );
            if expose >= Expose::Cause {
                let _ = writeln!(html, "<p>Cause: <code>{}</code></p>", err.cause);
            }
            if expose == Expose::Detail {
                if let Some(server) = &err.server {
                    let _ = writeln!(
                        html,
                        "<p>Server: <code>{}</code></p>",
                        escape_html(&server.to_string())
                    );
                }
                let _ = writeln!(html, "<p>{}</p>", escape_html(&err.detail));
                if let Some(hint) = &err.hint {
                    let _ = writeln!(html, "<p>Hint: {}</p>", escape_html(hint));
                }
            }
            let _ = writeln!(
                html,
                "<p><small>Request id: <code>{}</code></small></p>\n</body></html>",
                escape_html(context.request_id)
            );
            html
        }
    }
}

/// Fills a custom page's `{status}`, `{cause}` and `{request_id}` placeholders. With
/// `expose = "none"` the cause placeholder stays empty.
fn render_page(page: &str, err: &UpstreamError, context: &ErrorContext<'_>) -> String {
    let cause = if context.errors.expose >= Expose::Cause {
        err.cause.name()
    } else {
        ""
    };
    page.replace("{status}", &err.cause.info().status.as_u16().to_string())
        .replace("{cause}", cause)
        .replace("{request_id}", &escape_html(context.request_id))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::Cause;
    use crate::config::ServerAddr;
    use std::collections::BTreeMap;

    fn errors(expose: Expose) -> config::Errors {
        config::Errors {
            expose,
            proxy_status: true,
            pages: BTreeMap::new(),
        }
    }

    fn refused() -> UpstreamError {
        UpstreamError::new(Cause::ConnectRefused, "connect to 127.0.0.1:3000 refused")
            .at(&ServerAddr::Ip("127.0.0.1:3000".parse().expect("literal")))
    }

    #[test]
    fn proxy_status_at_detail_matches_design_example() {
        assert_eq!(
            proxy_status(&refused(), Expose::Detail).as_deref(),
            Some("causeway; error=connection_refused; next-hop=\"127.0.0.1:3000\"; details=\"connect_refused: connect to 127.0.0.1:3000 refused\"")
        );
    }

    #[test]
    fn proxy_status_at_cause_level_has_no_address() {
        let value = proxy_status(&refused(), Expose::Cause).unwrap_or_default();
        assert_eq!(
            value,
            "causeway; error=connection_refused; details=\"connect_refused\""
        );
    }

    #[test]
    fn sf_string_escapes_quotes_backslashes_and_non_ascii() {
        let mut out = String::new();
        push_sf_string(&mut out, "a\"b\\c\u{e9}\n");
        assert_eq!(out, "\"a\\\"b\\\\c??\"");
    }

    #[test]
    fn dns_and_tls_parameters_are_serialized() {
        let mut dns = UpstreamError::new(Cause::DnsError, "no such name");
        dns.params.rcode = Some("NXDOMAIN".into());
        let value = proxy_status(&dns, Expose::Cause).unwrap_or_default();
        assert!(
            value.contains("error=dns_error; rcode=\"NXDOMAIN\""),
            "{value}"
        );
        let mut alert = UpstreamError::new(Cause::TlsAlertReceived, "alert");
        alert.params.alert_id = Some(40);
        let value = proxy_status(&alert, Expose::Cause).unwrap_or_default();
        assert!(value.contains("alert-id=40"), "{value}");
    }

    #[test]
    fn negotiation_prefers_quality_then_order() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(negotiate(Some(&v("application/json"))), Format::Json);
        assert_eq!(
            negotiate(Some(&v("text/html,application/xhtml+xml,*/*;q=0.8"))),
            Format::Html
        );
        assert_eq!(
            negotiate(Some(&v("text/html;q=0.5, application/json"))),
            Format::Json
        );
        assert_eq!(negotiate(Some(&v("*/*"))), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
    }

    #[test]
    fn expose_none_leaks_nothing() {
        let errors = errors(Expose::None);
        let context = ErrorContext {
            request_id: "rid",
            upstream: Some("node"),
            attempts: 1,
            errors: &errors,
            accept: None,
        };
        for format in [Format::Json, Format::Html, Format::Text] {
            let body = render_body(format, &refused(), &context);
            assert!(!body.contains("connect_refused"), "{body}");
            assert!(!body.contains("127.0.0.1"), "{body}");
            assert!(!body.contains("node"), "{body}");
            assert!(body.contains("rid"));
        }
        let response = error_response(&refused(), &context);
        assert!(response.headers().get("proxy-status").is_none());
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn custom_pages_fill_placeholders_and_respect_expose() {
        let mut errors = errors(Expose::Cause);
        errors.pages.insert(
            502,
            "<h1>{status}</h1><p>{cause}</p><p>{request_id}</p>".into(),
        );
        let context = ErrorContext {
            request_id: "r<1>",
            upstream: None,
            attempts: 1,
            errors: &errors,
            accept: None,
        };
        let response = error_response(&refused(), &context);
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            response.body().as_ref(),
            b"<h1>502</h1><p>connect_refused</p><p>r&lt;1&gt;</p>"
        );
        let mut hidden = errors.clone();
        hidden.expose = Expose::None;
        let context = ErrorContext {
            errors: &hidden,
            ..context
        };
        let response = error_response(&refused(), &context);
        assert_eq!(
            response.body().as_ref(),
            b"<h1>502</h1><p></p><p>r&lt;1&gt;</p>"
        );
    }

    #[test]
    fn service_unavailable_carries_retry_after() {
        let errors = errors(Expose::Cause);
        let context = ErrorContext {
            request_id: "rid",
            upstream: None,
            attempts: 0,
            errors: &errors,
            accept: None,
        };
        let mut err = UpstreamError::new(Cause::NoHealthyUpstream, "all down");
        err.retry_after = Some(7);
        let response = error_response(&err, &context);
        assert_eq!(response.headers()["retry-after"], "7");
    }
}
