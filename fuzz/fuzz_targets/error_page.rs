//! Error pages with hostile strings in the detail, hint, server and request id, and a hostile
//! `Accept`: never a panic, the status from the cause table, JSON that parses and carries the
//! detail verbatim, and HTML whose markup is the template's alone (the same number of `<`, `>`
//! and `"` as a page rendered from harmless strings).
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use causeway::cause::Cause;
use causeway::config::{Errors, Expose, ServerAddr};
use causeway::respond::{error_response, ErrorContext};
use causeway::upstream::UpstreamError;
use http::HeaderValue;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// A custom page using every placeholder.
const PAGE: &str = "<html><body><h1>{status}</h1><p>{cause}</p><p>{request_id}</p></body></html>";

fn markup(body: &str) -> [usize; 3] {
    [b'<', b'>', b'"'].map(|c| body.bytes().filter(|b| *b == c).count())
}

fn check(u: &mut Unstructured<'_>) -> Result<()> {
    let cause = *u.choose(&Cause::ALL)?;
    let expose = *u.choose(&[Expose::None, Expose::Cause, Expose::Detail])?;
    let detail: String = u.arbitrary()?;
    let hint: Option<String> = u.arbitrary()?;
    let request_id: String = u.arbitrary()?;
    let upstream: Option<String> = u.arbitrary()?;
    let server = match u.int_in_range(0..=2u8)? {
        0 => None,
        1 => Some(ServerAddr::Name {
            host: u.arbitrary()?,
            port: u.arbitrary()?,
        }),
        _ => {
            let bytes: &[u8] = u.arbitrary()?;
            Some(ServerAddr::Unix(PathBuf::from(OsStr::from_bytes(bytes))))
        }
    };
    let accept_bytes: Vec<u8> = u.arbitrary()?;
    let accept = HeaderValue::from_bytes(&accept_bytes).ok();
    let with_page: bool = u.arbitrary()?;

    let mut pages = BTreeMap::new();
    if with_page {
        pages.insert(cause.info().status.as_u16(), PAGE.to_string());
    }
    let errors = Errors {
        expose,
        proxy_status: true,
        pages,
    };
    let render = |detail: &str, hint: Option<&str>, server: Option<&ServerAddr>, id: &str| {
        let mut err = UpstreamError::new(cause, detail);
        err.hint = hint.map(str::to_string);
        err.server = server.cloned();
        let context = ErrorContext {
            request_id: id,
            upstream: upstream.as_deref(),
            attempts: 1,
            errors: &errors,
            accept: accept.as_ref(),
        };
        error_response(&err, &context)
    };

    let response = render(&detail, hint.as_deref(), server.as_ref(), &request_id);
    assert_eq!(response.status(), cause.info().status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = String::from_utf8(response.body().to_vec()).expect("bodies are UTF-8");

    let benign_server = server.as_ref().map(|_| ServerAddr::Name {
        host: "h".into(),
        port: 1,
    });
    let body_of = |response: http::Response<bytes::Bytes>| {
        String::from_utf8(response.body().to_vec()).expect("bodies are UTF-8")
    };
    if expose != Expose::Detail {
        // Below `detail`, the detail, hint and server must not change a single byte.
        let twin = render(
            "d",
            hint.as_ref().map(|_| "h"),
            benign_server.as_ref(),
            &request_id,
        );
        assert_eq!(
            body,
            body_of(twin),
            "detail, hint or server leaked at {expose:?}"
        );
    }
    if content_type.starts_with("application/json") {
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body parses");
        assert_eq!(json["status"], cause.info().status.as_u16());
        assert_eq!(json["request_id"], request_id.as_str());
        if expose == Expose::Detail {
            assert_eq!(json["detail"], detail.as_str());
        }
        if expose == Expose::None {
            assert!(json.get("cause").is_none(), "cause leaked at expose none");
            assert!(
                json.get("upstream").is_none(),
                "upstream leaked at expose none"
            );
        }
    } else if content_type.starts_with("text/html") {
        // The same page from harmless strings: any extra markup came from the input.
        let twin = render(
            "d",
            hint.as_ref().map(|_| "h"),
            benign_server.as_ref(),
            "id",
        );
        assert_eq!(
            markup(&body),
            markup(&body_of(twin)),
            "input leaked into the markup:\n{body}"
        );
    }
    if expose == Expose::None {
        assert!(response.headers().get("proxy-status").is_none());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});
