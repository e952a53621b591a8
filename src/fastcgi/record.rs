//! The FastCGI 1.0 record layer: encoders for what a web server sends, and a streaming
//! [`Decoder`] for what an application sends back. Pure byte work on `BytesMut`: no IO.
//!
//! Spec: <https://fastcgi-archives.github.io/FastCGI_Specification.html>; constant names and
//! values follow `include/fastcgi.h` of FastCGI-Archives/fcgi2, so they can be grepped against it.
//! The decoder checks the version byte first, which is how "this port speaks HTTP" is reported
//! instead of a confusing "unknown record type" (research/ecosystem.md §1.2).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version there is; anything else on the wire is not FastCGI.
pub const FCGI_VERSION_1: u8 = 1;
/// Every record starts with an 8-byte header.
pub const FCGI_HEADER_LEN: usize = 8;
/// Request id of management records (GET_VALUES and friends).
pub const FCGI_NULL_REQUEST_ID: u16 = 0;
/// Largest content a single record can carry (the length is a `u16`).
pub const FCGI_MAX_CONTENT_LEN: usize = 0xffff;

/// Record type: starts a request (web server → application).
pub const FCGI_BEGIN_REQUEST: u8 = 1;
/// Record type: the web server gives up on a request.
pub const FCGI_ABORT_REQUEST: u8 = 2;
/// Record type: the application finished a request; carries appStatus and protocolStatus.
pub const FCGI_END_REQUEST: u8 = 3;
/// Record type: the CGI environment, as a stream of name-value pairs.
pub const FCGI_PARAMS: u8 = 4;
/// Record type: the request body stream.
pub const FCGI_STDIN: u8 = 5;
/// Record type: the CGI response (head, blank line, body) stream.
pub const FCGI_STDOUT: u8 = 6;
/// Record type: the application's error output stream.
pub const FCGI_STDERR: u8 = 7;
/// Record type: the filter role's extra data stream (never used by causeway).
pub const FCGI_DATA: u8 = 8;
/// Record type: management query for FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS.
pub const FCGI_GET_VALUES: u8 = 9;
/// Record type: the answer to GET_VALUES.
pub const FCGI_GET_VALUES_RESULT: u8 = 10;
/// Record type: the application did not understand a management record type we sent.
pub const FCGI_UNKNOWN_TYPE: u8 = 11;
/// The largest defined record type; anything above is invalid.
pub const FCGI_MAXTYPE: u8 = FCGI_UNKNOWN_TYPE;

/// Role: the application answers an HTTP request (the only role PHP-FPM serves).
pub const FCGI_RESPONDER: u16 = 1;
/// Role: the application decides whether a request is authorised.
pub const FCGI_AUTHORIZER: u16 = 2;
/// Role: the application filters a file (DATA stream).
pub const FCGI_FILTER: u16 = 3;

/// BEGIN_REQUEST flag: the web server, not the application, closes the connection afterwards.
pub const FCGI_KEEP_CONN: u8 = 1;

/// END_REQUEST protocolStatus: normal end.
pub const FCGI_REQUEST_COMPLETE: u8 = 0;
/// END_REQUEST protocolStatus: a second request on a connection that takes one at a time.
pub const FCGI_CANT_MPX_CONN: u8 = 1;
/// END_REQUEST protocolStatus: the application ran out of a resource (workers, DB handles).
pub const FCGI_OVERLOADED: u8 = 2;
/// END_REQUEST protocolStatus: the application does not serve the requested role.
pub const FCGI_UNKNOWN_ROLE: u8 = 3;

/// Content size used when splitting a stream: the largest multiple of 8 that fits a record, so
/// full records need no padding (php-src `main/fastcgi.c` writes 0xfff8-byte chunks too).
const CHUNK: usize = 0xfff8;

/// A malformed or unexpected record, or a value the encoder cannot represent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The first header byte is not 1: the peer is not speaking FastCGI.
    #[error("{}", bad_version_message(*.0))]
    BadVersion(u8),
    /// A record type outside 1..=11.
    #[error("invalid FastCGI record type {0}")]
    InvalidType(u8),
    /// A record for a request id that is neither ours nor the management id 0.
    #[error("FastCGI record type {record_type} for request id {got}, expected {expected}")]
    UnexpectedRequestId {
        /// The record's type byte.
        record_type: u8,
        /// The id we sent in BEGIN_REQUEST (or 0 for management records).
        expected: u16,
        /// The id in the record header.
        got: u16,
    },
    /// A fixed-size body (END_REQUEST, UNKNOWN_TYPE) that is shorter than the spec says.
    #[error("FastCGI {} record body is {len} bytes, needs 8", type_name(*.record_type))]
    BodyTooShort {
        /// The record's type byte.
        record_type: u8,
        /// The content length actually received.
        len: usize,
    },
    /// STDOUT or STDERR data after the empty record that ended that stream.
    #[error("FastCGI {} data after the end of that stream", type_name(*.0))]
    DataAfterStreamEnd(u8),
    /// A well-formed record that an application has no business sending to a web server.
    #[error("unexpected FastCGI {} record from the application", type_name(*.0))]
    UnexpectedRecord(u8),
    /// A name or value longer than the 31-bit length field can express.
    #[error("FastCGI name or value of {0} bytes is too long to encode")]
    PairTooLong(usize),
}

/// One decoded record, as the web server side sees it. Streams are delivered piecewise: an
/// empty record ends its stream and is reported as the `*End` variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A non-empty piece of the CGI response.
    Stdout(Bytes),
    /// The empty STDOUT record: the application wrote its whole response.
    StdoutEnd,
    /// A non-empty piece of error output.
    Stderr(Bytes),
    /// The empty STDERR record.
    StderrEnd,
    /// The request is over; `protocol_status` is one of the `FCGI_*` statuses above.
    EndRequest {
        /// The application's exit status (PHP-FPM always sends 0).
        app_status: u32,
        /// Whether the request completed or was rejected, and why.
        protocol_status: u8,
    },
    /// Name-value pairs completed by this GET_VALUES_RESULT record.
    GetValuesResult(Vec<(Bytes, Bytes)>),
    /// The application did not understand the management record type it names.
    UnknownType(u8),
    /// A known record type that only a web server sends (BEGIN_REQUEST, PARAMS, STDIN, ...).
    /// Test applications decode requests with this.
    Other {
        /// The record's type byte.
        record_type: u8,
        /// The record's request id.
        request_id: u16,
        /// The record's content, padding removed. Empty content ends a stream.
        content: Bytes,
    },
}

/// Streaming decoder for the records of one request (plus management records, id 0).
///
/// Feed it any slices: call [`Decoder::decode`] after appending bytes to a `BytesMut` until it
/// returns `Ok(None)`, then read more. A record is returned once its content has arrived; its
/// padding is skipped whenever it arrives.
#[derive(Debug)]
pub struct Decoder {
    request_id: u16,
    padding_left: usize,
    stdout_ended: bool,
    stderr_ended: bool,
    pairs: PairDecoder,
}

impl Decoder {
    /// A decoder that accepts records for `request_id` and management records.
    pub fn new(request_id: u16) -> Self {
        Decoder {
            request_id,
            padding_left: 0,
            stdout_ended: false,
            stderr_ended: false,
            pairs: PairDecoder::default(),
        }
    }

    /// Takes the next complete record off the front of `buf`, or `Ok(None)` if more bytes are
    /// needed. Bytes of a record that is not complete yet stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, RecordError> {
        loop {
            if self.padding_left > 0 {
                let skip = self.padding_left.min(buf.len());
                buf.advance(skip);
                self.padding_left -= skip;
                if self.padding_left > 0 {
                    return Ok(None);
                }
            }
            // Check the version as soon as one byte is here: a peer that answers "HTTP/1.1 400"
            // and closes should be reported as HTTP, not as a short read.
            match buf.first() {
                None => return Ok(None),
                Some(&version) if version != FCGI_VERSION_1 => {
                    return Err(RecordError::BadVersion(version))
                }
                Some(_) => {}
            }
            if buf.len() < FCGI_HEADER_LEN {
                return Ok(None);
            }
            let record_type = buf[1];
            let request_id = u16::from_be_bytes([buf[2], buf[3]]);
            let content_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            let padding_len = usize::from(buf[6]);
            self.check_header(record_type, request_id)?;
            if buf.len() < FCGI_HEADER_LEN + content_len {
                buf.reserve(FCGI_HEADER_LEN + content_len + padding_len - buf.len());
                return Ok(None);
            }
            buf.advance(FCGI_HEADER_LEN);
            let content = buf.split_to(content_len).freeze();
            self.padding_left = padding_len;
            if let Some(record) = self.record(record_type, request_id, content)? {
                return Ok(Some(record));
            }
        }
    }

    /// Whether the last record's padding has not all arrived yet: the stream is mid-record
    /// and cannot carry another request.
    pub fn padding_pending(&self) -> bool {
        self.padding_left > 0
    }

    fn check_header(&self, record_type: u8, request_id: u16) -> Result<(), RecordError> {
        if record_type == 0 || record_type > FCGI_MAXTYPE {
            return Err(RecordError::InvalidType(record_type));
        }
        let expected = match record_type {
            FCGI_GET_VALUES | FCGI_GET_VALUES_RESULT | FCGI_UNKNOWN_TYPE => FCGI_NULL_REQUEST_ID,
            _ => self.request_id,
        };
        if request_id != expected {
            return Err(RecordError::UnexpectedRequestId {
                record_type,
                expected,
                got: request_id,
            });
        }
        Ok(())
    }

    /// Turns one record into a [`Record`]; `None` for records that carry nothing (a repeated
    /// end-of-stream record).
    fn record(
        &mut self,
        record_type: u8,
        request_id: u16,
        content: Bytes,
    ) -> Result<Option<Record>, RecordError> {
        let record = match record_type {
            FCGI_STDOUT => {
                return stream(&mut self.stdout_ended, record_type, content)
                    .map(|r| r.map(|c| c.map_or(Record::StdoutEnd, Record::Stdout)))
            }
            FCGI_STDERR => {
                return stream(&mut self.stderr_ended, record_type, content)
                    .map(|r| r.map(|c| c.map_or(Record::StderrEnd, Record::Stderr)))
            }
            FCGI_END_REQUEST => {
                let body = fixed_body(record_type, &content)?;
                Record::EndRequest {
                    app_status: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    protocol_status: body[4],
                }
            }
            FCGI_UNKNOWN_TYPE => Record::UnknownType(fixed_body(record_type, &content)?[0]),
            FCGI_GET_VALUES_RESULT => {
                self.pairs.push(&content);
                Record::GetValuesResult(self.pairs.by_ref().collect())
            }
            _ => Record::Other {
                record_type,
                request_id,
                content,
            },
        };
        Ok(Some(record))
    }
}

/// One step of a STDOUT/STDERR stream: `Some(Some(data))`, `Some(None)` for its end, or `None`
/// for a repeated empty record, which is harmless and skipped.
fn stream(
    ended: &mut bool,
    record_type: u8,
    content: Bytes,
) -> Result<Option<Option<Bytes>>, RecordError> {
    match (*ended, content.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => Err(RecordError::DataAfterStreamEnd(record_type)),
        (false, true) => {
            *ended = true;
            Ok(Some(None))
        }
        (false, false) => Ok(Some(Some(content))),
    }
}

/// END_REQUEST and UNKNOWN_TYPE bodies are 8 bytes; a shorter one is an error, not a guess.
fn fixed_body(record_type: u8, content: &[u8]) -> Result<&[u8], RecordError> {
    if content.len() < 8 {
        return Err(RecordError::BodyTooShort {
            record_type,
            len: content.len(),
        });
    }
    Ok(content)
}

/// Incremental decoder of name-value pairs (spec §3.4) for streams whose pairs may be split
/// across records: push each record's content, then iterate the pairs completed so far.
#[derive(Debug, Default)]
pub struct PairDecoder {
    buf: BytesMut,
}

impl PairDecoder {
    /// Appends the content of the next record of the stream.
    pub fn push(&mut self, content: &[u8]) {
        self.buf.extend_from_slice(content);
    }

    /// Whether no partial pair is waiting for more bytes (a finished stream must end so).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl Iterator for PairDecoder {
    type Item = (Bytes, Bytes);

    /// The next complete pair, or `None` until more bytes are pushed.
    fn next(&mut self) -> Option<(Bytes, Bytes)> {
        let (name_len, at) = read_len(&self.buf, 0)?;
        let (value_len, at) = read_len(&self.buf, at)?;
        if self.buf.len() - at < name_len.checked_add(value_len)? {
            return None;
        }
        self.buf.advance(at);
        let name = self.buf.split_to(name_len).freeze();
        let value = self.buf.split_to(value_len).freeze();
        Some((name, value))
    }
}

/// Reads a 1- or 4-byte length at `at`: returns it and the offset after it.
fn read_len(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *buf.get(at)?;
    if first & 0x80 == 0 {
        return Some((usize::from(first), at + 1));
    }
    let bytes = buf.get(at..at + 4)?;
    let len = u32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
    Some((usize::try_from(len).ok()?, at + 4))
}

/// Appends one record: header, `content` (at most 65535 bytes), and padding to a multiple of 8.
/// Every encoder below uses it; test applications use it to script replies.
///
/// # Panics
/// If `content` is longer than [`FCGI_MAX_CONTENT_LEN`]: callers split streams first.
pub fn record(buf: &mut BytesMut, record_type: u8, request_id: u16, content: &[u8]) {
    let padding = padding_for(content.len());
    buf.reserve(FCGI_HEADER_LEN + content.len() + padding);
    put_header(buf, record_type, request_id, content.len());
    buf.put_slice(content);
    buf.put_bytes(0, padding);
}

/// The padding that makes a record of `content_len` bytes a multiple of 8 (the spec's
/// recommendation, and what PHP-FPM and nginx send).
fn padding_for(content_len: usize) -> usize {
    (8 - content_len % 8) % 8
}

/// A record header for `content_len` bytes of content and their padding.
fn put_header(buf: &mut BytesMut, record_type: u8, request_id: u16, content_len: usize) {
    let len = u16::try_from(content_len).expect("callers split content into records");
    buf.put_u8(FCGI_VERSION_1);
    buf.put_u8(record_type);
    buf.put_u16(request_id);
    buf.put_u16(len);
    // The padding is below 8, so the cast is exact.
    buf.put_u8(padding_for(content_len) as u8);
    buf.put_u8(0);
}

/// Writes `data` as records of `record_type`, split at [`CHUNK`] bytes. Writes nothing for
/// empty data: an empty record would end the stream.
fn stream_records(buf: &mut BytesMut, record_type: u8, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(CHUNK) {
        record(buf, record_type, request_id, chunk);
    }
}

/// Appends BEGIN_REQUEST. Without `keep_conn` the application closes the connection after
/// END_REQUEST; with it, the web server owns the connection and may send another request.
pub fn begin_request(buf: &mut BytesMut, request_id: u16, role: u16, keep_conn: bool) {
    let [hi, lo] = role.to_be_bytes();
    let flags = if keep_conn { FCGI_KEEP_CONN } else { 0 };
    record(
        buf,
        FCGI_BEGIN_REQUEST,
        request_id,
        &[hi, lo, flags, 0, 0, 0, 0, 0],
    );
}

/// Appends the whole PARAMS stream: the pairs, split into records (a pair may span two), then
/// the empty record that ends the stream.
pub fn params<'a, I>(buf: &mut BytesMut, request_id: u16, pairs: I) -> Result<(), RecordError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let pairs = pairs.into_iter();
    // About 32 bytes a pair: a typical request's PARAMS without growing the buffer twice.
    let mut encoded = BytesMut::with_capacity(pairs.size_hint().0 * 32);
    for (name, value) in pairs {
        put_pair(&mut encoded, name, value)?;
    }
    encoded_params(buf, request_id, &encoded);
    Ok(())
}

/// Appends the whole PARAMS stream from pairs already in FastCGI's encoding
/// ([`super::Params::encoded`]): split into records (a pair may span two), then the empty
/// record that ends the stream.
pub fn encoded_params(buf: &mut BytesMut, request_id: u16, pairs: &[u8]) {
    stream_records(buf, FCGI_PARAMS, request_id, pairs);
    record(buf, FCGI_PARAMS, request_id, &[]);
}

/// Appends `data` as STDIN records. Empty `data` writes nothing; end the stream with
/// [`stdin_end`].
pub fn stdin(buf: &mut BytesMut, request_id: u16, data: &[u8]) {
    stream_records(buf, FCGI_STDIN, request_id, data);
}

/// Appends the empty STDIN record: the request body is complete.
pub fn stdin_end(buf: &mut BytesMut, request_id: u16) {
    record(buf, FCGI_STDIN, request_id, &[]);
}

/// Appends ABORT_REQUEST, for a client that went away on a connection we keep open.
pub fn abort_request(buf: &mut BytesMut, request_id: u16) {
    record(buf, FCGI_ABORT_REQUEST, request_id, &[]);
}

/// Appends a GET_VALUES management record asking for `names` (values are sent empty).
pub fn get_values(buf: &mut BytesMut, names: &[&str]) -> Result<(), RecordError> {
    let mut encoded = BytesMut::new();
    for name in names {
        put_pair(&mut encoded, name.as_bytes(), &[])?;
    }
    if encoded.len() > FCGI_MAX_CONTENT_LEN {
        // GET_VALUES is one record by the spec, not a stream.
        return Err(RecordError::PairTooLong(encoded.len()));
    }
    record(buf, FCGI_GET_VALUES, FCGI_NULL_REQUEST_ID, &encoded);
    Ok(())
}

/// Appends one name-value pair with 1-byte lengths below 128 and 4-byte lengths (top bit set)
/// from 128 on.
pub fn put_pair(buf: &mut BytesMut, name: &[u8], value: &[u8]) -> Result<(), RecordError> {
    put_len(buf, name.len())?;
    put_len(buf, value.len())?;
    buf.put_slice(name);
    buf.put_slice(value);
    Ok(())
}

fn put_len(buf: &mut BytesMut, len: usize) -> Result<(), RecordError> {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => buf.put_u8(short),
        _ => match u32::try_from(len) {
            Ok(long) if long <= 0x7fff_ffff => buf.put_u32(long | 0x8000_0000),
            _ => return Err(RecordError::PairTooLong(len)),
        },
    }
    Ok(())
}

/// The spec's name for a record type, for error messages.
pub fn type_name(record_type: u8) -> &'static str {
    match record_type {
        FCGI_BEGIN_REQUEST => "BEGIN_REQUEST",
        FCGI_ABORT_REQUEST => "ABORT_REQUEST",
        FCGI_END_REQUEST => "END_REQUEST",
        FCGI_PARAMS => "PARAMS",
        FCGI_STDIN => "STDIN",
        FCGI_STDOUT => "STDOUT",
        FCGI_STDERR => "STDERR",
        FCGI_DATA => "DATA",
        FCGI_GET_VALUES => "GET_VALUES",
        FCGI_GET_VALUES_RESULT => "GET_VALUES_RESULT",
        FCGI_UNKNOWN_TYPE => "UNKNOWN_TYPE",
        _ => "invalid-type",
    }
}

/// Names the protocol a wrong first byte most likely belongs to, as nginx does with
/// "upstream sent unsupported FastCGI protocol version: 72", but saying what 72 means.
fn bad_version_message(version: u8) -> String {
    match version {
        b'H' => "this port speaks HTTP, not FastCGI (version byte 72 = 'H')".to_owned(),
        // 0x15 alert, 0x16 handshake: the first byte of a TLS record.
        0x15 | 0x16 => {
            format!("this port speaks TLS, not FastCGI (version byte {version} = a TLS record)")
        }
        _ => format!("unsupported FastCGI protocol version {version}, expected 1"),
    }
}
