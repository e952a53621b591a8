use http::StatusCode;

use crate::fastcgi::cgi::{CgiError, CgiHead, HeadParser};

const MAX: usize = 1024;

fn parse(stdout: &[u8]) -> Result<Option<CgiHead>, CgiError> {
    HeadParser::new(MAX).feed(stdout)
}

fn head(stdout: &[u8]) -> CgiHead {
    match parse(stdout) {
        Ok(Some(head)) => head,
        other => panic!("expected a complete head, got {other:?}"),
    }
}

#[test]
fn status_header_sets_the_status_and_is_not_forwarded() {
    let head = head(b"Status: 404 Not Found\r\nContent-type: text/html\r\n\r\nFile not found.\n");
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert!(head.headers.get("status").is_none());
    assert_eq!(head.headers["content-type"], "text/html");
    assert_eq!(&head.body_start[..], b"File not found.\n");
}

#[test]
fn location_without_status_is_302() {
    let head = head(b"Location: /login\r\n\r\n");
    assert_eq!(head.status, StatusCode::FOUND);
    assert_eq!(head.headers["location"], "/login");
    let explicit = self::head(b"Location: /new\r\nStatus: 301 Moved Permanently\r\n\r\n");
    assert_eq!(explicit.status, StatusCode::MOVED_PERMANENTLY);
}

#[test]
fn no_status_and_no_location_is_200() {
    let head = head(b"Content-Type: text/plain\n\nhello");
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(&head.body_start[..], b"hello");
}

#[test]
fn lf_only_and_mixed_line_ends_are_accepted() {
    let head = head(b"X-A: 1\nX-B: 2\r\nX-C: 3\n\r\nbody");
    assert_eq!(head.headers.len(), 3);
    assert_eq!(head.headers["x-c"], "3");
    assert_eq!(&head.body_start[..], b"body");
}

#[test]
fn head_split_across_feeds_completes_on_the_blank_line() {
    let stdout = b"Status: 201 Created\r\nX-Id: 7\r\n\r\ncreated";
    let head_len = stdout.len() - b"created".len();
    let mut parser = HeadParser::new(MAX);
    for (at, byte) in stdout[..head_len - 1].iter().enumerate() {
        let early = parser.feed(&[*byte]).unwrap();
        assert!(early.is_none(), "head completed early at byte {at}");
    }
    // The last byte of the blank line arrives together with the start of the body.
    let head = parser.feed(&stdout[head_len - 1..]).unwrap().unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.headers["x-id"], "7");
    assert_eq!(&head.body_start[..], b"created");
}

#[test]
fn head_without_blank_line_over_the_limit_is_too_large() {
    let mut parser = HeadParser::new(16);
    assert!(parser.feed(b"X-Long: 0123").unwrap().is_none());
    let error = parser.feed(b"456789\r\n").unwrap_err();
    assert_eq!(error, CgiError::HeadTooLarge { limit: 16 });
}

#[test]
fn complete_head_over_the_limit_is_too_large() {
    let error = HeadParser::new(10)
        .feed(b"X-Long: 0123456789\r\n\r\n")
        .unwrap_err();
    assert_eq!(error, CgiError::HeadTooLarge { limit: 10 });
    assert_eq!(
        error.to_string(),
        "CGI response head is larger than 10 bytes"
    );
    // A head exactly at the limit is fine, whatever body follows it in the same feed.
    let fits = HeadParser::new(8)
        .feed(b"X: 1\r\n\r\nlong body here")
        .unwrap();
    assert!(fits.is_some());
}

#[test]
fn http_status_line_is_refused_as_nph() {
    let error = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n").unwrap_err();
    assert!(matches!(error, CgiError::NphResponse { .. }));
    assert_eq!(
        error.to_string(),
        "CGI response starts with an HTTP status line (\"HTTP/1.1 200 OK\"); NPH output is not supported"
    );
}

#[test]
fn line_without_colon_is_an_invalid_header() {
    let error = parse(b"Content-Type: text/html\r\nPHP Warning oops\r\n\r\n").unwrap_err();
    assert_eq!(
        error,
        CgiError::InvalidHeader {
            line: "PHP Warning oops".into()
        }
    );
}

#[test]
fn invalid_header_names_and_values_are_refused() {
    for bad in [
        &b"Bad Name: x\r\n\r\n"[..],
        b" folded: x\r\n\r\n",
        b": no name\r\n\r\n",
        b"X-Ctl: a\x01b\r\n\r\n",
    ] {
        let error = parse(bad).unwrap_err();
        assert!(matches!(error, CgiError::InvalidHeader { .. }), "{bad:?}");
    }
    let error = parse(b"X-Ctl: a\x01b\r\n\r\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid CGI header line: \"X-Ctl: a\\x01b\""
    );
}

#[test]
fn invalid_status_values_are_refused() {
    for bad in [
        "abc",
        "40",
        "4044",
        "404Not Found",
        "",
        "100 Continue",
        "1000",
    ] {
        let stdout = format!("Status: {bad}\r\n\r\n");
        let error = parse(stdout.as_bytes()).unwrap_err();
        assert!(
            matches!(error, CgiError::InvalidStatus { .. }),
            "{bad}: {error}"
        );
    }
    let twice = parse(b"Status: 200 OK\r\nStatus: 500 Oops\r\n\r\n").unwrap_err();
    assert!(matches!(twice, CgiError::InvalidStatus { .. }));
    assert_eq!(head(b"Status: 500\r\n\r\n").status, 500);
}

#[test]
fn repeated_headers_are_all_kept() {
    let head = head(b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n");
    let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

#[test]
fn empty_head_is_200_with_no_headers() {
    let head = head(b"\r\nbody");
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.headers.is_empty());
    assert_eq!(&head.body_start[..], b"body");
}

#[test]
fn long_offending_line_is_shortened_in_the_error() {
    let line = vec![b'x'; 500];
    let mut stdout = line.clone();
    stdout.extend_from_slice(b"\n\n");
    let CgiError::InvalidHeader { line } = HeadParser::new(4096).feed(&stdout).unwrap_err() else {
        panic!("expected InvalidHeader");
    };
    assert_eq!(line.len(), 123);
    assert!(line.ends_with("..."));
}
