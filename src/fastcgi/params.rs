//! The PARAMS list (the CGI environment) for one request, built as nginx's `fastcgi.conf` does,
//! with the PATH_INFO split and the path checks that nginx leaves to the configuration
//! (research/ecosystem.md §2). Pure apart from one `stat` for `try_files`.
//!
//! The script path is decided here, before any connection: a path that could run the wrong
//! file is refused with a [`ScriptPathError`] (400 or 404), never passed on for PHP to guess.
//! Symlinks inside `root` are followed, as nginx does by default; only the lexical path is
//! checked to stay under `root`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::uri::Authority;
use http::{HeaderMap, Method, StatusCode, Version};

/// `SERVER_SOFTWARE`, like nginx's `nginx/$nginx_version`.
pub const SERVER_SOFTWARE: &str = concat!("causeway/", env!("CARGO_PKG_VERSION"));

/// Headers that describe one hop and must not reach the application as HTTP_* (RFC 9110 §7.6.1),
/// plus `proxy` (httpoxy, CVE-2016-5385: HTTP_PROXY is read as an outbound proxy). A `match`
/// rather than a list: it is asked for every field of every request.
fn is_not_forwarded(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
            | "proxy"
    )
}

/// How one FastCGI upstream maps URIs to scripts (`fastcgi = { ... }` in the config).
#[derive(Clone, Debug)]
pub struct FastCgiSettings {
    /// The document root on the application's file system; SCRIPT_FILENAME lies under it.
    pub root: PathBuf,
    /// Script run for a URI ending in `/` (nginx's `fastcgi_index`), e.g. `index.php`.
    pub index: String,
    /// Check that the script is a file before sending it (nginx's `try_files $uri =404`), so
    /// PHP's `cgi.fix_pathinfo` never falls back to running another file.
    pub try_files: bool,
    /// WordPress-style fallback: a path with no existing script runs `/index` with the
    /// original REQUEST_URI instead of answering 404.
    pub front_controller: bool,
    /// Extra params from the config, sent last (PHP-FPM keeps the last of duplicate names).
    pub params: Vec<(String, String)>,
}

/// What the proxy knows about the request that PARAMS describe.
#[derive(Clone, Copy, Debug)]
pub struct RequestMeta<'a> {
    /// The request method.
    pub method: &'a Method,
    /// Path and query exactly as received, e.g. `/a%20b.php/x?q=1` (origin form).
    pub target: &'a str,
    /// The client's HTTP version, for SERVER_PROTOCOL.
    pub version: Version,
    /// The client's request headers; most become HTTP_* params.
    pub headers: &'a HeaderMap,
    /// The effective authority (RFC 9112 §3.2.2: the target's, else Host); gives HTTP_HOST and
    /// SERVER_NAME, so a raw Host header never contradicts it.
    pub authority: &'a Authority,
    /// The client's address; `None` on a unix listener.
    pub client: Option<SocketAddr>,
    /// The listener's local address; `None` on a unix listener.
    pub server: Option<SocketAddr>,
    /// Whether the client connection is TLS (HTTPS=on, REQUEST_SCHEME=https).
    pub https: bool,
    /// The request body's length as it will be sent on STDIN; PHP-FPM reads no more than this.
    pub content_length: Option<u64>,
}

/// Why a URI cannot be mapped to a script. The proxy answers with [`ScriptPathError::status`]
/// and does not contact the upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptPathError {
    /// The target does not start with `/` (e.g. `*` or an absolute URI).
    #[error("request target is not an absolute path")]
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in the path")]
    BadPercentEncoding,
    /// `%2F` or `%5C`: an encoded separator would split differently after decoding.
    #[error("encoded slash or backslash in the path")]
    EncodedSlash,
    /// The decoded path is not UTF-8.
    #[error("path is not UTF-8 after percent-decoding")]
    NotUtf8,
    /// A backslash, which some systems treat as a separator.
    #[error("backslash in the path")]
    Backslash,
    /// NUL, CR, LF or another control byte (CVE-2019-11043 started with `%0a`).
    #[error("control character in the path")]
    ControlCharacter,
    /// A `..` segment.
    #[error("'..' segment in the path")]
    DotDot,
    /// The script file would lie outside `root` (only a bad `index` setting can cause this).
    #[error("script path escapes the document root")]
    RootEscape,
    /// No `.php` segment, not a directory, and no front controller configured.
    #[error("path does not name a PHP script")]
    NotAScript,
    /// `try_files` found no file at SCRIPT_FILENAME.
    #[error("script {0} does not exist")]
    ScriptNotFound(PathBuf),
}

impl ScriptPathError {
    /// 404 when the path is fine but names no script, 400 when the path itself is refused.
    pub fn status(&self) -> StatusCode {
        match self {
            ScriptPathError::NotAScript | ScriptPathError::ScriptNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ScriptPathError::NotOriginForm
            | ScriptPathError::BadPercentEncoding
            | ScriptPathError::EncodedSlash
            | ScriptPathError::NotUtf8
            | ScriptPathError::Backslash
            | ScriptPathError::ControlCharacter
            | ScriptPathError::DotDot
            | ScriptPathError::RootEscape => StatusCode::BAD_REQUEST,
        }
    }
}

/// The PARAMS pairs in the order they will be sent. Values are bytes: header values and file
/// names need not be UTF-8. All pairs share one buffer, already in FastCGI's name-value pair
/// encoding: a request sends about thirty, and encoding them again into the records cost as
/// much as building them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Every pair as sent (FastCGI 1.0 §3.4): name length, value length, name, value.
    bytes: Vec<u8>,
    /// Per pair: where its name starts, where its value starts, where its value ends.
    spans: Vec<(usize, usize, usize)>,
    /// A name or value longer than a pair can say (2^31 - 1 bytes): refused when sent.
    too_long: Option<usize>,
}

impl Params {
    /// Room for a typical request's pairs.
    fn for_request() -> Params {
        Params {
            bytes: Vec::with_capacity(1024),
            spans: Vec::with_capacity(40),
            too_long: None,
        }
    }

    /// Appends a pair; a later duplicate wins in PHP-FPM.
    pub fn push(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.push_with(name.as_bytes(), |out| out.extend_from_slice(value.as_ref()));
    }

    /// Appends a pair whose value `write_value` writes in place.
    fn push_with(&mut self, name: &[u8], write_value: impl FnOnce(&mut Vec<u8>)) {
        self.push_written(|out| out.extend_from_slice(name), write_value);
    }

    /// Appends a pair whose name and value are written in place. Their lengths go before
    /// them, so one byte is set aside for each and widened to four (moving the pair by three
    /// bytes each) when a name or value turns out to be 128 bytes or more.
    fn push_written(
        &mut self,
        write_name: impl FnOnce(&mut Vec<u8>),
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let lengths_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        let mut start = self.bytes.len();
        write_name(&mut self.bytes);
        let mut value_start = self.bytes.len();
        write_value(&mut self.bytes);
        let name_len = value_start - start;
        let value_len = self.bytes.len() - value_start;
        match (u8::try_from(name_len), u8::try_from(value_len)) {
            (Ok(name), Ok(value)) if name < 0x80 && value < 0x80 => {
                self.bytes[lengths_at] = name;
                self.bytes[lengths_at + 1] = value;
            }
            _ => {
                let mut lengths = [0u8; 8];
                let mut used = 0;
                for len in [name_len, value_len] {
                    used += self.put_len(&mut lengths[used..], len);
                }
                self.bytes
                    .splice(lengths_at..lengths_at + 2, lengths[..used].iter().copied());
                start += used - 2;
                value_start += used - 2;
            }
        }
        self.spans.push((start, value_start, self.bytes.len()));
    }

    /// Writes a pair length at the start of `out`: one byte below 128, else four with the top
    /// bit set (a length that does not fit 31 bits is noted, and refused when sent). Returns
    /// the bytes written.
    fn put_len(&mut self, out: &mut [u8], len: usize) -> usize {
        match u8::try_from(len) {
            Ok(short) if short < 0x80 => {
                out[0] = short;
                1
            }
            _ => {
                let long = match u32::try_from(len) {
                    Ok(long) if long <= 0x7fff_ffff => long,
                    _ => {
                        self.too_long.get_or_insert(len);
                        0
                    }
                };
                out[..4].copy_from_slice(&(long | 0x8000_0000).to_be_bytes());
                4
            }
        }
    }

    /// The last value sent under `name`, for logs and tests.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .rev()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// An upper bound of the PARAMS stream's size in records: the pairs, a header and
    /// padding per 64 KiB, and the empty record that ends the stream. To size the write
    /// buffer once.
    pub fn encoded_len_max(&self) -> usize {
        self.bytes.len() + 16 * (self.bytes.len() / 0xfff8 + 2)
    }

    /// The pairs in FastCGI's encoding, for [`super::record::encoded_params`]; an error if a
    /// name or value is too long for a pair.
    pub fn encoded(&self) -> Result<&[u8], super::record::RecordError> {
        match self.too_long {
            Some(len) => Err(super::record::RecordError::PairTooLong(len)),
            None => Ok(&self.bytes),
        }
    }

    /// The pairs as byte slices (names and values without their lengths).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(start, value, end)| (&self.bytes[start..value], &self.bytes[value..end]))
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// Where a URI leads: the script and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// SCRIPT_NAME: the script's decoded URI path, e.g. `/blog/index.php`.
    pub name: String,
    /// PATH_INFO: the decoded rest after the script, never empty (`None` instead).
    pub path_info: Option<String>,
    /// SCRIPT_FILENAME: `root` + `name`.
    pub filename: PathBuf,
    /// DOCUMENT_URI: the normalised decoded path (`/index.php` after a front-controller fallback).
    pub document_uri: String,
}

/// Whether `path` is a regular file (following symlinks): the `try_files` test.
pub fn script_exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file())
}

/// Builds PARAMS for `meta` under `settings`, checking the script with [`script_exists`].
pub fn build(
    meta: &RequestMeta<'_>,
    settings: &FastCgiSettings,
) -> Result<Params, ScriptPathError> {
    build_with(meta, settings, script_exists)
}

/// [`build`] with the existence test supplied, so tests need no file system.
pub fn build_with(
    meta: &RequestMeta<'_>,
    settings: &FastCgiSettings,
    exists: impl Fn(&Path) -> bool,
) -> Result<Params, ScriptPathError> {
    let path = meta
        .target
        .split_once('?')
        .map_or(meta.target, |(path, _)| path);
    let script = resolve_script(path, settings, exists)?;
    Ok(build_for_script(meta, settings, &script))
}

/// PARAMS for `meta` when its script is already resolved (and checked) by [`resolve_script`]
/// for the same path: the proxy resolves it once, before the request body is read.
pub fn build_for_script(
    meta: &RequestMeta<'_>,
    settings: &FastCgiSettings,
    script: &Script,
) -> Params {
    let query = meta.target.split_once('?').map_or("", |(_, query)| query);
    let mut params = Params::for_request();
    let root = settings.root.as_os_str().as_encoded_bytes();
    params.push(
        "SCRIPT_FILENAME",
        script.filename.as_os_str().as_encoded_bytes(),
    );
    params.push("QUERY_STRING", query);
    params.push("REQUEST_METHOD", meta.method.as_str());
    let content_type = meta.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    params.push("CONTENT_TYPE", content_type.unwrap_or_default());
    params.push_with(b"CONTENT_LENGTH", |out| {
        if let Some(length) = meta.content_length {
            push_decimal(out, length);
        }
    });
    params.push("SCRIPT_NAME", &script.name);
    params.push("REQUEST_URI", meta.target);
    params.push("DOCUMENT_URI", &script.document_uri);
    params.push("DOCUMENT_ROOT", root);
    params.push("SERVER_PROTOCOL", protocol(meta.version));
    params.push("REQUEST_SCHEME", if meta.https { "https" } else { "http" });
    if meta.https {
        params.push("HTTPS", "on");
    }
    params.push("GATEWAY_INTERFACE", "CGI/1.1");
    params.push("SERVER_SOFTWARE", SERVER_SOFTWARE);
    match meta.client {
        Some(client) => {
            params.push_with(b"REMOTE_ADDR", |out| push_ip(out, client.ip()));
            params.push_with(b"REMOTE_PORT", |out| {
                push_decimal(out, u64::from(client.port()))
            });
        }
        // nginx's $remote_addr on a unix listener.
        None => params.push("REMOTE_ADDR", "unix:"),
    }
    match meta.server {
        Some(server) => params.push_with(b"SERVER_ADDR", |out| push_ip(out, server.ip())),
        None => params.push("SERVER_ADDR", "unix:"),
    }
    params.push_with(b"SERVER_PORT", |out| {
        push_decimal(out, u64::from(server_port(meta)))
    });
    params.push("SERVER_NAME", meta.authority.host());
    params.push("REDIRECT_STATUS", "200");
    if let Some(path_info) = &script.path_info {
        params.push("PATH_INFO", path_info);
        let mut root = root;
        while let Some(trimmed) = root.strip_suffix(b"/") {
            root = trimmed;
        }
        params.push_with(b"PATH_TRANSLATED", |out| {
            out.extend_from_slice(root);
            out.extend_from_slice(path_info.as_bytes());
        });
    }
    params.push("HTTP_HOST", meta.authority.as_str());
    push_headers(&mut params, meta.headers);
    for (name, value) in &settings.params {
        params.push(name, value);
    }
    params
}

/// The decimal digits of `n`.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::config::decimal(n, &mut [0; 20]));
}

/// `ip` as its `Display` writes it; IPv4 without the formatting machinery (~2,000
/// instructions per address through `Display`).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Maps the raw URI path to a script: decode once, refuse what could escape or confuse, split
/// lazily at the first `.php` segment (`^(.+?\.php)(/.*)$`), then apply `try_files` and the
/// front controller.
pub fn resolve_script(
    raw_path: &str,
    settings: &FastCgiSettings,
    exists: impl Fn(&Path) -> bool,
) -> Result<Script, ScriptPathError> {
    let decoded = decode_path(raw_path)?;
    let trailing_slash = decoded.ends_with('/');
    // DOCUMENT_URI: the segments joined again without the empty and `.` ones, as nginx merges
    // slashes and resolves `/./`. SCRIPT_NAME is its prefix up to the first `.php` segment
    // and PATH_INFO the rest, so all three come from one string built in one pass.
    let mut document_uri = String::with_capacity(decoded.len() + 1);
    let mut script_end = None;
    for segment in decoded.split('/').filter(|s| !s.is_empty() && *s != ".") {
        document_uri.push('/');
        document_uri.push_str(segment);
        if script_end.is_none() && segment.ends_with(".php") {
            script_end = Some(document_uri.len());
        }
    }
    if document_uri.is_empty() || trailing_slash {
        document_uri.push('/');
    }
    let candidate = match script_end {
        Some(end) => {
            let path_info = &document_uri[end..];
            let path_info = (!path_info.is_empty()).then(|| path_info.to_owned());
            Some((document_uri[..end].to_owned(), path_info))
        }
        None if trailing_slash => Some((format!("{document_uri}{}", settings.index), None)),
        None => None,
    };
    if let Some((name, path_info)) = candidate {
        let filename = script_filename(&settings.root, &name)?;
        if !settings.try_files || exists(&filename) {
            return Ok(Script {
                name,
                path_info,
                filename,
                document_uri,
            });
        }
        if !settings.front_controller {
            return Err(ScriptPathError::ScriptNotFound(filename));
        }
    } else if !settings.front_controller {
        return Err(ScriptPathError::NotAScript);
    }
    let name = format!("/{}", settings.index);
    let filename = script_filename(&settings.root, &name)?;
    if settings.try_files && !exists(&filename) {
        return Err(ScriptPathError::ScriptNotFound(filename));
    }
    Ok(Script {
        document_uri: name.clone(),
        name,
        path_info: None,
        filename,
    })
}

/// Percent-decodes once and refuses separators, traversal and control bytes. A path without
/// `%` (nearly every request) is checked in place and borrowed.
fn decode_path(raw: &str) -> Result<Cow<'_, str>, ScriptPathError> {
    if !raw.starts_with('/') {
        return Err(ScriptPathError::NotOriginForm);
    }
    let decoded = if raw.contains('%') {
        Cow::Owned(percent_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    // One pass: a backslash or a control byte anywhere, or a `..` segment (two dots with a
    // `/` or an end on each side). The errors keep this order of precedence.
    let bytes = decoded.as_bytes();
    let mut dot_dot = false;
    let mut control = false;
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(ScriptPathError::Backslash),
            b'.' if at > 0 && bytes[at - 1] == b'.' => {
                let starts_segment = at == 1 || bytes[at - 2] == b'/';
                let ends_segment = bytes.get(at + 1).is_none_or(|&next| next == b'/');
                dot_dot |= starts_segment && ends_segment;
            }
            _ => control |= b.is_ascii_control(),
        }
    }
    if control {
        return Err(ScriptPathError::ControlCharacter);
    }
    if dot_dot {
        return Err(ScriptPathError::DotDot);
    }
    Ok(decoded)
}

/// `raw` with every `%XX` decoded; an encoded `/` or `\\` is refused, not decoded.
fn percent_decode(raw: &str) -> Result<String, ScriptPathError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = match bytes[at] {
            b'%' => {
                let hex = bytes
                    .get(at + 1..at + 3)
                    .ok_or(ScriptPathError::BadPercentEncoding)?;
                let value = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(hi, lo)| (hi << 4) | lo)
                    .ok_or(ScriptPathError::BadPercentEncoding)?;
                if value == b'/' || value == b'\\' {
                    return Err(ScriptPathError::EncodedSlash);
                }
                at += 3;
                value
            }
            other => {
                at += 1;
                other
            }
        };
        decoded.push(byte);
    }
    String::from_utf8(decoded).map_err(|_| ScriptPathError::NotUtf8)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `root` + the script's URI path, which must be `/` and plain segments: a bad `index` could
/// hold `..`, `./` or an absolute path. Plain segments (none empty, `.` or `..`) joined to
/// `root` are all normal components under it, so no path walk is needed to prove it.
fn script_filename(root: &Path, name: &str) -> Result<PathBuf, ScriptPathError> {
    let relative = name.strip_prefix('/').ok_or(ScriptPathError::RootEscape)?;
    let plain = relative
        .split('/')
        .all(|segment| !matches!(segment, "" | "." | ".."));
    if !plain {
        return Err(ScriptPathError::RootEscape);
    }
    let mut filename = PathBuf::with_capacity(root.as_os_str().len() + 1 + relative.len());
    filename.push(root);
    filename.push(relative);
    Ok(filename)
}

/// nginx's `$server_protocol`.
fn protocol(version: Version) -> &'static str {
    if version == Version::HTTP_09 {
        "HTTP/0.9"
    } else if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else if version == Version::HTTP_2 {
        "HTTP/2.0"
    } else if version == Version::HTTP_3 {
        "HTTP/3.0"
    } else {
        "HTTP/1.1"
    }
}

/// The listener's port; on a unix listener, the authority's port or the scheme's default.
fn server_port(meta: &RequestMeta<'_>) -> u16 {
    match (meta.server, meta.authority.port_u16()) {
        (Some(server), _) => server.port(),
        (None, Some(port)) => port,
        (None, None) if meta.https => 443,
        (None, None) => 80,
    }
}

/// Every forwardable request header as HTTP_*: names upper-cased with `-` → `_`; repeated
/// headers joined with ", " (Cookie with "; ", RFC 9113 §8.2.3).
fn push_headers(params: &mut Params, headers: &HeaderMap) {
    let named_by_connection: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    // `iter` yields every value, and the values of one name one after another: one pass, no
    // lookup per name.
    let mut values = headers.iter().peekable();
    while let Some((name, value)) = values.next() {
        let name_str = name.as_str();
        let skip = *name == HOST
            || *name == CONTENT_TYPE
            || *name == CONTENT_LENGTH
            || is_not_forwarded(name_str)
            || named_by_connection.iter().any(|n| n == name_str)
            // Only letters, digits and '-' (nginx's `ignore_invalid_headers`): `_` would make
            // `X_Forwarded_For` collide with `X-Forwarded-For` after mapping.
            || !name_str
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if skip {
            while values.next_if(|(next, _)| *next == name).is_some() {}
            continue;
        }
        let separator: &[u8] = if *name == COOKIE { b"; " } else { b", " };
        let write_name = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"HTTP_");
            let start = out.len();
            out.extend_from_slice(name_str.as_bytes());
            for b in &mut out[start..] {
                *b = if *b == b'-' {
                    b'_'
                } else {
                    b.to_ascii_uppercase()
                };
            }
        };
        let write_value = |out: &mut Vec<u8>| {
            out.extend_from_slice(value.as_bytes());
            while let Some((_, more)) = values.next_if(|(next, _)| *next == name) {
                out.extend_from_slice(separator);
                out.extend_from_slice(more.as_bytes());
            }
        };
        params.push_written(write_name, write_value);
    }
}
