//! causeway patch: header field lines an HTTP/1 server writes verbatim.

use bytes::Bytes;

/// Header field lines written as they are, after the fields of the `HeaderMap`, when a
/// server responds via HTTP/1.
///
/// A proxy relaying an HTTP/1 response to an HTTP/1 client need not parse every field into a
/// `HeaderMap` only to have them written back: the fields it does not look at can travel as
/// the bytes it received. The `HeaderMap` then holds only what the proxy (and hyper) must
/// see: framing, `Connection`, `Date`, and what it rewrites.
///
/// Ignored by HTTP/2, so a response for an HTTP/2 client must carry every field in its
/// `HeaderMap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFields(Bytes);

impl RawFields {
    /// Wraps field lines that are already valid: zero or more complete `name: value\r\n`
    /// lines, each name a token and each value free of CR, LF and other control bytes, as an
    /// HTTP/1 parser accepted them. Nothing is checked: an invalid line would be sent as is.
    pub fn from_valid_lines(lines: Bytes) -> RawFields {
        RawFields(lines)
    }

    /// The field lines, each ending with CRLF.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
