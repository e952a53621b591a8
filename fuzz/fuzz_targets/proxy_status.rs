//! `Proxy-Status` serialization with hostile strings in every field that can carry one (the
//! detail sentence quotes upstream bytes; rcode, host names and unix paths come from outside):
//! the value must be a valid header value of printable ASCII, parse as an RFC 8941 item with
//! parameters, and every sf-string must unescape to its input with non-printable characters
//! replaced by `?`.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use causeway::cause::Cause;
use causeway::config::{Expose, ServerAddr};
use causeway::respond::proxy_status;
use causeway::upstream::UpstreamError;
use http::HeaderValue;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// What an sf-string of `value` must unescape to.
fn sanitized(value: &str) -> String {
    value
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// A bare item of RFC 8941 §3.3 as far as Proxy-Status uses them.
#[derive(Debug, PartialEq)]
enum Item {
    Token(String),
    Integer(i64),
    String(String),
}

/// A strict parser for `sf-item *( ";" *SP key "=" bare-item )` (RFC 8941 §3.1.2, §4.2).
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn token(&mut self) -> String {
        let start = self.at;
        assert!(
            matches!(self.peek(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'*')),
            "token start at {start}"
        );
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b);
            if !tchar {
                break;
            }
            self.at += 1;
        }
        String::from_utf8(self.bytes[start..self.at].to_vec()).expect("ASCII")
    }

    fn key(&mut self) -> String {
        let start = self.at;
        assert!(
            matches!(self.peek(), Some(b'a'..=b'z' | b'*')),
            "key start at {start}"
        );
        while let Some(b) = self.peek() {
            if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b)) {
                break;
            }
            self.at += 1;
        }
        String::from_utf8(self.bytes[start..self.at].to_vec()).expect("ASCII")
    }

    fn string(&mut self) -> String {
        assert_eq!(self.peek(), Some(b'"'));
        self.at += 1;
        let mut out = String::new();
        loop {
            let b = self.peek().expect("unterminated sf-string");
            self.at += 1;
            match b {
                b'"' => return out,
                b'\\' => {
                    let escaped = self.peek().expect("dangling escape");
                    assert!(escaped == b'"' || escaped == b'\\', "bad escape {escaped}");
                    self.at += 1;
                    out.push(char::from(escaped));
                }
                0x20..=0x7e => out.push(char::from(b)),
                _ => panic!("byte {b:#x} inside an sf-string"),
            }
        }
    }

    fn bare_item(&mut self) -> Item {
        match self.peek() {
            Some(b'"') => Item::String(self.string()),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                self.at += 1;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.at]).expect("ASCII");
                assert!(text.trim_start_matches('-').len() <= 15, "integer too long");
                Item::Integer(text.parse().expect("integer"))
            }
            _ => Item::Token(self.token()),
        }
    }
}

/// Parses a Proxy-Status member: the proxy name token and its parameters in order.
fn parse(value: &str) -> (String, Vec<(String, Item)>) {
    let mut p = Parser {
        bytes: value.as_bytes(),
        at: 0,
    };
    let name = p.token();
    let mut params = Vec::new();
    while p.peek() == Some(b';') {
        p.at += 1;
        while p.peek() == Some(b' ') {
            p.at += 1;
        }
        let key = p.key();
        assert_eq!(p.peek(), Some(b'='), "parameter {key} without a value");
        p.at += 1;
        params.push((key, p.bare_item()));
    }
    assert_eq!(
        p.at,
        value.len(),
        "trailing bytes after parameters in {value:?}"
    );
    (name, params)
}

fn server(u: &mut Unstructured<'_>) -> Result<Option<ServerAddr>> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => None,
        1 => Some(ServerAddr::Ip(std::net::SocketAddr::new(
            std::net::IpAddr::from(u.arbitrary::<[u8; 16]>()?),
            u.arbitrary()?,
        ))),
        2 => Some(ServerAddr::Name {
            host: u.arbitrary()?,
            port: u.arbitrary()?,
        }),
        _ => {
            let bytes: &[u8] = u.arbitrary()?;
            Some(ServerAddr::Unix(PathBuf::from(OsStr::from_bytes(bytes))))
        }
    })
}

fn check(u: &mut Unstructured<'_>) -> Result<()> {
    let cause = *u.choose(&Cause::ALL)?;
    let expose = *u.choose(&[Expose::None, Expose::Cause, Expose::Detail])?;
    let detail: String = u.arbitrary()?;
    let mut err = UpstreamError::new(cause, detail.clone());
    err.server = server(u)?;
    err.params.rcode = u.arbitrary()?;
    err.params.alert_id = u.arbitrary()?;
    err.params.received_status = u.arbitrary()?;
    err.params.partial_head = u.arbitrary()?;

    let Some(value) = proxy_status(&err, expose) else {
        assert!(
            err.proxy_status_error().is_none(),
            "{cause}: a proxy error type but no Proxy-Status"
        );
        return Ok(());
    };
    assert!(
        value.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "non-printable byte in {value:?}"
    );
    assert!(
        HeaderValue::from_str(&value).is_ok(),
        "invalid header value {value:?}"
    );

    let (name, params) = parse(&value);
    assert_eq!(name, "causeway");
    let mut expected = vec![(
        "error".to_string(),
        Item::Token(err.proxy_status_error().expect("has a type").to_string()),
    )];
    if expose == Expose::Detail {
        if let Some(server) = &err.server {
            expected.push((
                "next-hop".into(),
                Item::String(sanitized(&server.to_string())),
            ));
        }
    }
    if let Some(rcode) = &err.params.rcode {
        expected.push(("rcode".into(), Item::String(sanitized(rcode))));
    }
    if let Some(alert) = err.params.alert_id {
        expected.push(("alert-id".into(), Item::Integer(i64::from(alert))));
    }
    if let Some(received) = err.params.received_status {
        expected.push(("received-status".into(), Item::Integer(i64::from(received))));
    }
    let details = match expose {
        Expose::Detail => format!("{cause}: {detail}"),
        _ => cause.name().to_string(),
    };
    expected.push(("details".into(), Item::String(sanitized(&details))));
    assert_eq!(params, expected, "{value}");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});
