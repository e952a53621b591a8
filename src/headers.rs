//! Header rewriting between client and upstream, both directions.
//!
//! Removes hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every field it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`), adds
//! `Via: 1.1 causeway` and the forwarding headers, and decides the request id. It never looks
//! at bodies and never decides routing.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ForwardedMode, IpNet};

/// The pseudonym in our `Via` entries; seeing it on an incoming request means a loop.
pub const VIA_PSEUDONYM: &str = "causeway";

const VIA_VALUE: &str = "1.1 causeway";
/// Our `Via` entry as a field line, as [`AddedFields`] writes it.
const VIA_LINE: &[u8] = b"via: 1.1 causeway\r\n";

/// Header name of the request id, sent upstream and back.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `Keep-Alive` (RFC 2068 §19.7.1): not in `http::header`.
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop fields of one hop. `Trailer` is end-to-end (RFC 9110 §6.6.2) and
/// stays: hyper only sends trailers a response declared in it. `keep_upgrade` keeps `Connection: upgrade` and
/// `Upgrade` for a protocol switch; `keep_te_trailers` keeps `TE: trailers` for HTTP/2.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // One pass over the names says which of the fixed fields are there; most requests carry
    // none, and a response usually only `Connection: keep-alive`.
    let mut present = HopFields::default();
    for name in headers.keys() {
        present.note(name);
    }
    if !present.any() {
        return;
    }
    if present.connection {
        // Fields `Connection` names beyond the fixed ones (rare: the fixed ones and `close`
        // are what peers send), so nothing is allocated for `keep-alive` or `close`.
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !is_hop_by_hop(&name) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    if present.keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if present.proxy_connection {
        headers.remove(&PROXY_CONNECTION);
    }
    if present.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present.te {
        let te_trailers = keep_te_trailers
            && headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if present.upgrade {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(header::UPGRADE);
        }
    }
}

/// The field of a response head, named by `name` (any case), that causeway or hyper's HTTP/1
/// server reads or replaces: framing, `Date` (hyper adds one when the map has none), the
/// hop-by-hop fields [`strip_hop_by_hop`] removes, `Trailer`, and `X-Request-Id`. Every other
/// field can be relayed as the upstream's bytes ([`hyper::ext::RawFields`]).
pub fn response_field_causeway_reads(name: &[u8]) -> Option<HeaderName> {
    let is = |lower: &str| same_token(name, lower.as_bytes());
    match name.len() {
        2 if is("te") => Some(header::TE),
        4 if is("date") => Some(header::DATE),
        7 if is("trailer") => Some(header::TRAILER),
        7 if is("upgrade") => Some(header::UPGRADE),
        10 if is("connection") => Some(header::CONNECTION),
        10 if is("keep-alive") => Some(KEEP_ALIVE.clone()),
        12 if is("x-request-id") => Some(X_REQUEST_ID.clone()),
        14 if is("content-length") => Some(header::CONTENT_LENGTH),
        16 if is("proxy-connection") => Some(PROXY_CONNECTION.clone()),
        17 if is("transfer-encoding") => Some(header::TRANSFER_ENCODING),
        _ => None,
    }
}

/// Whether the token `name` is `lower` (lower-case letters and `-`) in any case. Among token
/// bytes (RFC 9110 §5.6.2) setting bit 5 lower-cases a letter and turns nothing else into a
/// letter or `-`, so one OR per byte compares, with no branch per byte.
fn same_token(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0u8, |diff, (byte, want)| diff | ((byte | 0x20) ^ want))
            == 0
}

/// Which of the fields [`strip_hop_by_hop`] always removes a head carries.
#[derive(Default)]
struct HopFields {
    connection: bool,
    keep_alive: bool,
    proxy_connection: bool,
    te: bool,
    transfer_encoding: bool,
    upgrade: bool,
}

impl HopFields {
    fn note(&mut self, name: &HeaderName) {
        if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::TE {
            self.te = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::UPGRADE {
            self.upgrade = true;
        } else if name == KEEP_ALIVE {
            self.keep_alive = true;
        } else if name == PROXY_CONNECTION {
            self.proxy_connection = true;
        }
    }

    fn any(&self) -> bool {
        self.connection
            || self.keep_alive
            || self.proxy_connection
            || self.te
            || self.transfer_encoding
            || self.upgrade
    }
}

/// The fields [`strip_hop_by_hop`] removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let mut fields = HopFields::default();
    fields.note(name);
    fields.any()
}

/// Whether an incoming `Via` already names us: the request has looped back.
pub fn has_our_via(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            // "1.1 causeway" or "HTTP/1.1 causeway (comment)": the second token is the name.
            entry
                .split_whitespace()
                .nth(1)
                .is_some_and(|name| name.eq_ignore_ascii_case(VIA_PSEUDONYM))
        })
}

/// Which of the fields the proxy looks at a request carries, from one pass over its fields.
///
/// A `HeaderMap` lookup costs about 100 instructions whether or not the field is there, and the
/// proxy asked for ten per request; most requests carry none of these but `Host`. Comparing
/// each field's name with a few standard names is much cheaper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestFields {
    /// How many `Host` field lines (exactly one is valid in HTTP/1.1).
    pub hosts: usize,
    pub accept: bool,
    pub via: bool,
    pub upgrade: bool,
    pub content_length: bool,
    /// `Connection` may name other fields, which the hop-by-hop strip then removes.
    pub connection: bool,
}

impl RequestFields {
    pub fn of(headers: &HeaderMap) -> RequestFields {
        let mut present = RequestFields::default();
        for (name, _) in headers {
            if name == header::HOST {
                present.hosts += 1;
            } else if name == header::ACCEPT {
                present.accept = true;
            } else if name == header::VIA {
                present.via = true;
            } else if name == header::UPGRADE {
                present.upgrade = true;
            } else if name == header::CONTENT_LENGTH {
                present.content_length = true;
            } else if name == header::CONNECTION {
                present.connection = true;
            }
        }
        present
    }
}

/// Whether an incoming request id is sane enough to keep: `[A-Za-z0-9._@-]{1,128}`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// The id for this request: the client's if sane and trusted, else a new UUID v7 (sortable).
pub fn request_id(headers: &HeaderMap, trust: bool) -> String {
    if trust {
        // A walk over the fields, not `get`: a lookup hashes the name byte by byte (it is not
        // one of `http`'s standard names), which costs more than comparing a few names.
        let value = headers
            .iter()
            .find_map(|(name, value)| (name == X_REQUEST_ID).then_some(value));
        if let Some(value) = value {
            if is_valid_request_id(value.as_bytes()) {
                // Checked above: only ASCII bytes.
                return String::from_utf8_lossy(value.as_bytes()).into_owned();
            }
        }
    }
    new_request_id()
}

/// A UUID v7 (RFC 9562: millisecond timestamp, then random bits), so ids sort by time.
///
/// `Uuid::now_v7()` asks the kernel for randomness on every call (one `getrandom` syscall per
/// request, measured); request ids need uniqueness, not secrecy, so the random part comes from
/// a per-thread SplitMix64 generator seeded once from the OS.
pub fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        // RandomState's keys come from the OS; hashing nothing extracts them.
        let state = std::collections::hash_map::RandomState::new();
        std::hash::Hasher::finish(&std::hash::BuildHasher::build_hasher(&state))
    }
    fn next(state: &Cell<u64>) -> u64 {
        // SplitMix64 (Steele, Lea, Flood 2014): full period, good avalanche.
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (a, b) = STATE.with(|state| (next(state), next(state)));
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&a.to_le_bytes());
    random[8..].copy_from_slice(&b.to_le_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Whether `peer` may set forwarding headers that we pass on.
pub fn is_trusted(peer: Option<IpAddr>, trusted: &[IpNet]) -> bool {
    let Some(peer) = peer else {
        // A unix-socket client is local: only a proxy on this machine can reach it.
        return !trusted.is_empty();
    };
    trusted.iter().any(|net| net.contains(peer))
}

/// What the forwarding headers say about the client hop.
pub struct ClientHop<'a> {
    /// The peer address; `None` for unix-socket clients.
    pub peer: Option<IpAddr>,
    /// `peer` as text (`unknown` without one), rendered once per connection.
    pub peer_text: &'a HeaderValue,
    /// `http` or `https` as the client spoke to us.
    pub proto: &'static str,
    /// The Host the client asked for.
    pub host: Option<&'a str>,
    pub trusted: bool,
}

/// The fields causeway adds to a request for the upstream hop: `Via`, the forwarding fields
/// and `X-Request-Id`, rendered once as HTTP/1.1 field lines.
///
/// Kept beside the request's header map, not in it: causeway's own HTTP/1.1 client copies the
/// lines after the map's fields ([`AddedFields::write_lines`]), which saves a map insertion
/// each (~260 instructions apiece: these names are not among `http`'s standard ones and are
/// hashed byte by byte). The paths that hand the map to someone else (hyper's client, FastCGI)
/// put them in it with [`AddedFields::insert_into`]. Lines rather than values: 24 bytes in the
/// request's context instead of ~250, which is moved with every future that holds it.
#[derive(Clone, Debug, Default)]
pub struct AddedFields {
    /// `name: value` CRLF, each value checked as a field value.
    lines: Vec<u8>,
}

impl AddedFields {
    /// `Via`, the forwarding fields `mode` asks for, and `request_id`, for the hop `hop`
    /// describes. Removes from `headers` what these replace: the request's own
    /// `X-Request-Id`, and forwarding fields that may not pass on. Incoming forwarding values
    /// survive only from trusted peers (appended to, or kept); otherwise they are replaced, so
    /// a client cannot forge its address.
    pub fn for_hop(
        headers: &mut HeaderMap,
        mode: ForwardedMode,
        hop: &ClientHop<'_>,
        request_id: Option<&HeaderValue>,
        to: AddTo,
    ) -> AddedFields {
        // Which of the replaced fields arrived: one pass over the names, so a request without
        // any (the usual one) costs no lookups for them.
        let mut arrived = ForwardingFields::default();
        for name in headers.keys() {
            arrived.note(name);
        }
        if arrived.x_request_id {
            headers.remove(&X_REQUEST_ID);
        }
        if !hop.trusted {
            arrived.remove_from(headers);
            arrived = ForwardingFields::default();
        }
        let to_map = to == AddTo::Map;
        let mut added = AddedFields {
            lines: if to_map {
                Vec::new()
            } else {
                Vec::with_capacity(192)
            },
        };
        // Our Via entry goes after any the request carries (RFC 9110 §7.6.3).
        if to_map {
            headers.append(header::VIA, HeaderValue::from_static(VIA_VALUE));
        } else {
            added.lines.extend_from_slice(VIA_LINE);
        }
        let peer = hop.peer_text.to_str().unwrap_or("unknown");
        if matches!(mode, ForwardedMode::Xff | ForwardedMode::Both) {
            let previous = if arrived.x_forwarded_for {
                headers.remove(&X_FORWARDED_FOR)
            } else {
                None
            };
            match previous.as_ref().and_then(|v| v.to_str().ok()) {
                Some(previous) if !previous.trim().is_empty() => {
                    let joined = format!("{previous}, {peer}");
                    added.push(to_map, headers, &XFF, Value::Text(joined.as_bytes()));
                }
                _ => added.push(to_map, headers, &XFF, Value::Field(hop.peer_text)),
            }
            if !arrived.x_forwarded_proto {
                added.push(to_map, headers, &XFP, Value::Static(hop.proto));
            }
            if let (Some(host), false) = (hop.host, arrived.x_forwarded_host) {
                // The one value not taken from a field value: checked, left out if it could
                // not be one (the URI and Host parsers do not let such a host through).
                if is_field_value(host.as_bytes()) {
                    added.push(to_map, headers, &XFH, Value::Text(host.as_bytes()));
                }
            }
        } else {
            ForwardingFields {
                forwarded: false,
                ..arrived
            }
            .remove_from(headers);
        }
        if matches!(mode, ForwardedMode::Rfc7239 | ForwardedMode::Both) {
            // RFC 7239 §6: IPv6 nodes are bracketed and the value quoted.
            let node = match hop.peer {
                Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
                _ => peer.to_string(),
            };
            let mut element = format!("for={node};proto={}", hop.proto);
            if let Some(host) = hop.host {
                if host
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                {
                    element.push_str(&format!(";host=\"{host}\""));
                }
            }
            let previous = if arrived.forwarded {
                headers.remove(&FORWARDED)
            } else {
                None
            };
            let value = match previous.as_ref().and_then(|v| v.to_str().ok()) {
                Some(previous) if !previous.trim().is_empty() => format!("{previous}, {element}"),
                _ => element,
            };
            added.push(to_map, headers, &FWD, Value::Text(value.as_bytes()));
        } else if arrived.forwarded {
            headers.remove(&FORWARDED);
        }
        if let Some(id) = request_id {
            added.push(to_map, headers, &XRID, Value::Field(id));
        }
        added
    }

    /// Adds one field: a line, or (`to_map`) an entry of `headers` in place of any of that name.
    fn push(&mut self, to_map: bool, headers: &mut HeaderMap, field: &Added, value: Value<'_>) {
        if to_map {
            let value = match value {
                Value::Field(value) => value.clone(),
                Value::Static(text) => HeaderValue::from_static(text),
                Value::Text(text) => match HeaderValue::from_bytes(text) {
                    Ok(value) => value,
                    Err(_) => return,
                },
            };
            headers.insert(field.name, value);
        } else {
            let value = match value {
                Value::Field(value) => value.as_bytes(),
                Value::Static(text) => text.as_bytes(),
                Value::Text(text) => text,
            };
            self.lines.extend_from_slice(field.prefix);
            self.lines.extend_from_slice(value);
            self.lines.extend_from_slice(b"\r\n");
        }
    }

    /// The fields as (name, value), in the order they are written.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines
            .split(|&b| b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line.get(colon + 2..)?))
            })
    }

    /// Writes the fields as HTTP/1.1 field lines (`name: value` CRLF).
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lines);
    }

    /// Puts the fields in `headers`: `Via` after the request's own entries, the others in
    /// place of any the request still carries.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                continue;
            };
            if name == header::VIA {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    }
}

/// Where [`AddedFields::for_hop`] puts the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddTo {
    /// Field lines kept beside the map, for causeway's own HTTP/1.1 client.
    Lines,
    /// The request's map, for a path that builds its message from it (FastCGI's params):
    /// inserting them directly is cheaper than rendering lines and parsing them back.
    Map,
}

/// One field causeway adds: its name for a map, and its lower-case name and ": " as the start
/// of its line.
struct Added {
    name: &'static HeaderName,
    prefix: &'static [u8],
}

impl Added {
    const fn new(name: &'static HeaderName, prefix: &'static [u8]) -> Added {
        Added { name, prefix }
    }
}

static XFF: Added = Added::new(&X_FORWARDED_FOR, b"x-forwarded-for: ");
static XFP: Added = Added::new(&X_FORWARDED_PROTO, b"x-forwarded-proto: ");
static XFH: Added = Added::new(&X_FORWARDED_HOST, b"x-forwarded-host: ");
static FWD: Added = Added::new(&FORWARDED, b"forwarded: ");
static XRID: Added = Added::new(&X_REQUEST_ID, b"x-request-id: ");

/// A value for [`AddedFields::push`]: a field value already, or text that is one (the bytes of
/// field values joined, or checked with [`is_field_value`]).
enum Value<'a> {
    Field(&'a HeaderValue),
    /// A constant field value (`http`, `https`).
    Static(&'static str),
    Text(&'a [u8]),
}

/// What `HeaderValue` accepts: HTAB, SP, visible ASCII and obs-text; no other control byte.
fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Which of the fields causeway adds or replaces a request head carries.
#[derive(Clone, Copy, Default)]
struct ForwardingFields {
    x_forwarded_for: bool,
    x_forwarded_proto: bool,
    x_forwarded_host: bool,
    forwarded: bool,
    x_request_id: bool,
}

impl ForwardingFields {
    fn note(&mut self, name: &HeaderName) {
        if name == X_FORWARDED_FOR {
            self.x_forwarded_for = true;
        } else if name == X_FORWARDED_PROTO {
            self.x_forwarded_proto = true;
        } else if name == X_FORWARDED_HOST {
            self.x_forwarded_host = true;
        } else if name == FORWARDED {
            self.forwarded = true;
        } else if name == X_REQUEST_ID {
            self.x_request_id = true;
        }
    }

    /// Removes the forwarding fields marked present from `headers`.
    fn remove_from(self, headers: &mut HeaderMap) {
        let fields = [
            (self.x_forwarded_for, &X_FORWARDED_FOR),
            (self.x_forwarded_proto, &X_FORWARDED_PROTO),
            (self.x_forwarded_host, &X_FORWARDED_HOST),
            (self.forwarded, &FORWARDED),
        ];
        for (present, name) in fields {
            if present {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test name"),
                HeaderValue::from_str(value).expect("test value"),
            );
        }
        headers
    }

    #[test]
    fn the_response_fields_causeway_reads_are_known_in_any_case() {
        for name in [
            "te",
            "Date",
            "TRAILER",
            "upgrade",
            "Connection",
            "keep-alive",
            "X-Request-ID",
            "content-length",
            "Proxy-Connection",
            "Transfer-Encoding",
        ] {
            let known = response_field_causeway_reads(name.as_bytes());
            assert_eq!(
                known.as_ref().map(HeaderName::as_str),
                Some(name.to_ascii_lowercase().as_str()),
                "{name}"
            );
        }
        // Same lengths, other names (`_` is a token byte too, and not `-` in any case).
        for name in [
            "tf",
            "dame",
            "trailers",
            "upgrades",
            "connectiom",
            "keep_alive",
            "x-request-ix",
        ] {
            assert!(
                response_field_causeway_reads(name.as_bytes()).is_none(),
                "{name}"
            );
        }
        // Every field the hop-by-hop strip removes is one causeway reads, so none is relayed.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let name = HeaderName::from_static(name);
            assert!(is_hop_by_hop(&name));
            assert!(response_field_causeway_reads(name.as_str().as_bytes()).is_some());
        }
    }

    #[test]
    fn fields_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers, false, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["trailer", "x-kept"]);
    }

    #[test]
    fn any_one_hop_by_hop_field_takes_the_full_path() {
        // No `Connection` at all: the fixed fields still go, the rest stays as it was.
        for name in [
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut headers = map(&[("x-kept", "yes"), (name, "1")]);
            strip_hop_by_hop(&mut headers, false, false);
            let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, vec!["x-kept"], "{name} alone");
        }
        let mut headers = map(&[("connection", "close"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut headers, false, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_survives_for_websocket() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut headers, true, false);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn te_trailers_kept_only_when_asked() {
        let mut headers = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut headers, false, true);
        assert_eq!(headers["te"], "trailers");
        let mut headers = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut headers, false, false);
        assert!(!headers.contains_key("te"));
    }

    #[test]
    fn our_via_is_a_loop_and_others_are_not() {
        assert!(has_our_via(&map(&[("via", "1.0 fred, 1.1 causeway")])));
        assert!(has_our_via(&map(&[("via", "HTTP/1.1 Causeway (x)")])));
        assert!(!has_our_via(&map(&[(
            "via",
            "1.1 nginx, 1.1 causeway-other"
        )])));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(is_valid_request_id(b"abc-123_x.y@z"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        let kept = request_id(&map(&[("x-request-id", "abc")]), true);
        assert_eq!(kept, "abc");
        let replaced = request_id(&map(&[("x-request-id", "bad id")]), true);
        assert_eq!(replaced.len(), 36);
        let parsed = uuid::Uuid::parse_str(&replaced).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7);
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000, "no repeats");
        let untrusted = request_id(&map(&[("x-request-id", "abc")]), false);
        assert_ne!(untrusted, "abc");
    }

    /// The client hop of a peer at `ip` (its text as the connection renders it).
    fn hop(
        ip: &'static str,
        proto: &'static str,
        host: Option<&'static str>,
        trusted: bool,
    ) -> ClientHop<'static> {
        ClientHop {
            peer: Some(ip.parse().expect("test ip")),
            // Leaked: a test's hop lives as long as the test.
            peer_text: Box::leak(Box::new(HeaderValue::from_static(ip))),
            proto,
            host,
            trusted,
        }
    }

    #[test]
    fn request_fields_count_hosts_and_note_the_rest() {
        let present = RequestFields::of(&map(&[
            ("Host", "a"),
            ("host", "b"),
            ("via", "1.0 edge"),
            ("Content-Length", "3"),
            ("x-other", "1"),
        ]));
        assert_eq!(
            present,
            RequestFields {
                hosts: 2,
                via: true,
                content_length: true,
                ..RequestFields::default()
            }
        );
        let present = RequestFields::of(&map(&[
            ("accept", "*/*"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ]));
        assert_eq!(
            present,
            RequestFields {
                accept: true,
                upgrade: true,
                connection: true,
                ..RequestFields::default()
            }
        );
    }

    #[test]
    fn each_added_fields_prefix_is_its_name() {
        for field in [&XFF, &XFP, &XFH, &FWD, &XRID] {
            assert_eq!(field.prefix, format!("{}: ", field.name).as_bytes());
        }
    }

    #[test]
    fn the_via_line_is_our_via_entry() {
        assert_eq!(VIA_LINE, format!("via: {VIA_VALUE}\r\n").as_bytes());
        assert_eq!(VIA_VALUE, format!("1.1 {VIA_PSEUDONYM}"));
    }

    /// What the upstream request's map holds once the added fields are in it.
    fn forward(headers: &mut HeaderMap, mode: ForwardedMode, hop: &ClientHop<'_>) {
        AddedFields::for_hop(headers, mode, hop, None, AddTo::Map);
    }

    #[test]
    fn added_fields_replace_the_request_id_and_follow_the_requests_via() {
        let mut headers = map(&[
            ("via", "1.0 edge"),
            ("x-request-id", "from-client"),
            ("x-kept", "yes"),
        ]);
        let hop = hop("127.0.0.1", "http", Some("a.example"), false);
        let id = HeaderValue::from_static("id-1");
        let added = AddedFields::for_hop(
            &mut headers,
            ForwardedMode::Xff,
            &hop,
            Some(&id),
            AddTo::Lines,
        );
        assert!(
            !headers.contains_key("x-request-id"),
            "the client's id must not pass on beside ours"
        );
        let mut lines = Vec::new();
        added.write_lines(&mut lines);
        assert_eq!(
            String::from_utf8_lossy(&lines),
            "via: 1.1 causeway\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.example\r\nx-request-id: id-1\r\n"
        );
        added.insert_into(&mut headers);
        let via: Vec<_> = headers.get_all("via").iter().collect();
        assert_eq!(via, ["1.0 edge", "1.1 causeway"]);
        assert_eq!(headers["x-request-id"], "id-1");
        assert_eq!(headers["x-forwarded-host"], "a.example");
        assert_eq!(headers["x-kept"], "yes");
    }

    #[test]
    fn a_host_a_field_may_not_carry_is_left_out_not_sent_raw() {
        let mut headers = HeaderMap::new();
        let hop = hop(
            "127.0.0.1",
            "http",
            Some("a.example\r\nx-injected: 1"),
            false,
        );
        let added =
            AddedFields::for_hop(&mut headers, ForwardedMode::Xff, &hop, None, AddTo::Lines);
        let mut lines = Vec::new();
        added.write_lines(&mut lines);
        let lines = String::from_utf8_lossy(&lines);
        assert!(!lines.contains("x-forwarded-host"), "{lines}");
        assert!(!lines.contains("x-injected"), "{lines}");
        assert!(lines.contains("x-forwarded-for: 127.0.0.1\r\n"), "{lines}");
    }

    /// The map's fields as sorted (name, values) for comparing two maps.
    fn fields_of(headers: &HeaderMap) -> Vec<(String, Vec<String>)> {
        let mut fields: Vec<(String, Vec<String>)> = headers
            .keys()
            .map(|name| {
                let values = headers.get_all(name).iter();
                let values = values.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                (name.to_string(), values.collect())
            })
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn lines_put_in_a_map_equal_the_fields_added_to_the_map() {
        let incoming = [
            ("via", "1.0 edge"),
            ("x-request-id", "from-client"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
            ("x-kept", "yes"),
        ];
        let id = HeaderValue::from_static("id-1");
        for trusted in [false, true] {
            for mode in [
                ForwardedMode::Xff,
                ForwardedMode::Rfc7239,
                ForwardedMode::Both,
                ForwardedMode::None,
            ] {
                let hop = hop("::1", "https", Some("a.example"), trusted);
                let mut direct = map(&incoming);
                AddedFields::for_hop(&mut direct, mode, &hop, Some(&id), AddTo::Map);
                let mut via_lines = map(&incoming);
                let added =
                    AddedFields::for_hop(&mut via_lines, mode, &hop, Some(&id), AddTo::Lines);
                added.insert_into(&mut via_lines);
                assert_eq!(
                    fields_of(&direct),
                    fields_of(&via_lines),
                    "{mode:?}, trusted {trusted}"
                );
            }
        }
    }

    #[test]
    fn untrusted_peers_cannot_forge_x_forwarded_for() {
        let mut headers = map(&[("x-forwarded-for", "6.6.6.6")]);
        let hop = hop("127.0.0.1", "http", Some("example.com"), false);
        forward(&mut headers, ForwardedMode::Xff, &hop);
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.com");
    }

    #[test]
    fn trusted_peers_are_appended_to() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.9")]);
        let hop = hop("127.0.0.1", "https", None, true);
        forward(&mut headers, ForwardedMode::Both, &hop);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers["forwarded"], "for=127.0.0.1;proto=https");
    }

    #[test]
    fn the_other_family_is_dropped_even_from_trusted_peers() {
        let incoming = [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.example"),
            ("forwarded", "for=203.0.113.9"),
            ("x-kept", "yes"),
        ];
        let hop = hop("127.0.0.1", "http", None, true);
        let mut headers = map(&incoming);
        forward(&mut headers, ForwardedMode::Rfc7239, &hop);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["forwarded", "via", "x-kept"]);
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.9, for=127.0.0.1;proto=http"
        );

        let mut headers = map(&incoming);
        forward(&mut headers, ForwardedMode::Xff, &hop);
        assert!(!headers.contains_key("forwarded"));
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(
            headers["x-forwarded-proto"], "https",
            "a trusted peer's value stays"
        );
        assert_eq!(headers["x-forwarded-host"], "a.example");
    }

    #[test]
    fn rfc7239_brackets_ipv6() {
        let mut headers = HeaderMap::new();
        let hop = hop("::1", "http", Some("a.example"), false);
        forward(&mut headers, ForwardedMode::Rfc7239, &hop);
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=http;host=\"a.example\""
        );
        assert!(!headers.contains_key("x-forwarded-for"));
    }
}
