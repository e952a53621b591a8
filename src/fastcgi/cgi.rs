//! The CGI response head (RFC 3875 §6) that a FastCGI application writes at the start of
//! STDOUT: header lines, a blank line, then the body. [`HeadParser`] is fed STDOUT bytes until
//! the head is complete and turns it into a status and a `HeaderMap`.
//!
//! Lines may end in CRLF or bare LF, mixed. `Status:` sets the status and is not forwarded;
//! `Location:` without `Status:` means 302 (as nginx's `ngx_http_fastcgi_process_header`);
//! otherwise 200. Non-parsed-header output (`HTTP/1.1 200 OK` first) is refused, not guessed at.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, StatusCode};

/// The longest piece of an offending line quoted in an error message.
const QUOTE_MAX: usize = 120;

/// Why STDOUT did not start with a usable CGI head. Every variant is the application's fault
/// (`fastcgi_protocol_error`, or `header_too_large` for [`CgiError::HeadTooLarge`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    /// No blank line within `limit` bytes.
    #[error("CGI response head is larger than {limit} bytes")]
    HeadTooLarge {
        /// The configured maximum head size.
        limit: usize,
    },
    /// A line that is not `Name: value` with a valid name and value.
    #[error("invalid CGI header line: \"{line}\"")]
    InvalidHeader {
        /// The line, escaped and shortened for logs.
        line: String,
    },
    /// A `Status:` value that is not a 3-digit final status, or a second `Status:`.
    #[error("invalid CGI Status header: \"{value}\"")]
    InvalidStatus {
        /// The value, escaped and shortened for logs.
        value: String,
    },
    /// The application wrote an HTTP status line: non-parsed-header output is not supported.
    #[error(
        "CGI response starts with an HTTP status line (\"{line}\"); NPH output is not supported"
    )]
    NphResponse {
        /// The first line, escaped and shortened for logs.
        line: String,
    },
}

/// A complete CGI head and the bytes that followed it in the same STDOUT data.
#[derive(Debug)]
pub struct CgiHead {
    /// From `Status:`, else 302 with `Location:`, else 200.
    pub status: StatusCode,
    /// Every header line except `Status:`, in order; repeated names are kept.
    pub headers: HeaderMap,
    /// The start of the response body (possibly empty).
    pub body_start: Bytes,
}

/// Accumulates STDOUT bytes until the blank line that ends the CGI head.
#[derive(Debug)]
pub struct HeadParser {
    buf: BytesMut,
    max_head: usize,
    /// Everything before this offset has been scanned for line ends.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

impl HeadParser {
    /// A parser that refuses heads (including the blank line) longer than `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        HeadParser {
            buf: BytesMut::new(),
            max_head,
            scanned: 0,
            line_start: 0,
        }
    }

    /// Bytes fed so far and not yet returned as part of a head.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends `data`; returns the head once its blank line has arrived, `Ok(None)` if more is
    /// needed. Scanning is incremental, so feeding one byte at a time stays linear.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<CgiHead>, CgiError> {
        self.buf.extend_from_slice(data);
        let Some(head_len) = self.find_end() else {
            if self.buf.len() > self.max_head {
                return Err(CgiError::HeadTooLarge {
                    limit: self.max_head,
                });
            }
            return Ok(None);
        };
        if head_len > self.max_head {
            return Err(CgiError::HeadTooLarge {
                limit: self.max_head,
            });
        }
        let head = self.buf.split_to(head_len);
        let (status, headers) = parse_head(&head)?;
        Ok(Some(CgiHead {
            status,
            headers,
            body_start: std::mem::take(&mut self.buf).freeze(),
        }))
    }

    /// The length of the head including its blank line, if the blank line has arrived.
    fn find_end(&mut self) -> Option<usize> {
        while self.scanned < self.buf.len() {
            let at = self.scanned;
            self.scanned += 1;
            if self.buf[at] != b'\n' {
                continue;
            }
            let line = &self.buf[self.line_start..at];
            if line.is_empty() || line == b"\r" {
                return Some(at + 1);
            }
            self.line_start = at + 1;
        }
        None
    }
}

/// Parses the head's lines (the last one is the blank line).
fn parse_head(head: &[u8]) -> Result<(StatusCode, HeaderMap), CgiError> {
    // Room for a typical PHP head and the fields causeway adds, without growing the map (hyper
    // also reuses a response's map for the connection's next request).
    let mut headers = HeaderMap::with_capacity(16);
    let mut status = None;
    let lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty());
    for (index, line) in lines.enumerate() {
        if index == 0 && line.starts_with(b"HTTP/") {
            return Err(CgiError::NphResponse { line: quote(line) });
        }
        let invalid = || CgiError::InvalidHeader { line: quote(line) };
        let colon = line.iter().position(|&b| b == b':').ok_or_else(invalid)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| invalid())?;
        let value = line[colon + 1..].trim_ascii();
        if name.as_str() == "status" {
            if status.is_some() {
                return Err(CgiError::InvalidStatus {
                    value: quote(value),
                });
            }
            status = Some(parse_status(value)?);
            continue;
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    let status = match status {
        Some(status) => status,
        None if headers.contains_key(LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok((status, headers))
}

/// `Status: 404 Not Found` → 404. The reason phrase is dropped (HTTP/2 has none). A 1xx status
/// cannot be a CGI script's final answer, so it is refused.
fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let invalid = || CgiError::InvalidStatus {
        value: quote(value),
    };
    let (code, rest) = value.split_at_checked(3).ok_or_else(invalid)?;
    if !code.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ') {
        return Err(invalid());
    }
    let status = StatusCode::from_bytes(code).map_err(|_| invalid())?;
    if status.is_informational() {
        return Err(invalid());
    }
    Ok(status)
}

/// A line made safe and short for a log message.
fn quote(line: &[u8]) -> String {
    let mut quoted = line.escape_ascii().to_string();
    if quoted.len() > QUOTE_MAX {
        // `escape_ascii` output is ASCII, so any index is a char boundary.
        quoted.truncate(QUOTE_MAX);
        quoted.push_str("...");
    }
    quoted
}
