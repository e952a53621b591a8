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

/// Appends our `Via` entry (RFC 9110 §7.6.3).
pub fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA_VALUE));
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
        if let Some(value) = headers.get(&X_REQUEST_ID) {
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

/// Sets X-Forwarded-* and/or Forwarded. Incoming values survive only from trusted peers;
/// otherwise they are replaced, so a client cannot forge its address.
pub fn add_forwarded(headers: &mut HeaderMap, mode: ForwardedMode, hop: &ClientHop<'_>) {
    // Which forwarding fields arrived: one pass over the names, so a request without any
    // (the usual one) costs no lookups for them.
    let mut arrived = ForwardingFields::default();
    for name in headers.keys() {
        arrived.note(name);
    }
    if !hop.trusted {
        arrived.remove_from(headers);
        arrived = ForwardingFields::default();
    }
    let peer = hop.peer_text.to_str().unwrap_or("unknown");
    if matches!(mode, ForwardedMode::Xff | ForwardedMode::Both) {
        let previous = if arrived.x_forwarded_for {
            headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        match previous {
            Some(previous) if !previous.trim().is_empty() => {
                let xff = format!("{previous}, {peer}");
                set(headers, &X_FORWARDED_FOR, &xff);
            }
            _ => {
                headers.insert(&X_FORWARDED_FOR, hop.peer_text.clone());
            }
        }
        if !arrived.x_forwarded_proto {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
        }
        if let (Some(host), false) = (hop.host, arrived.x_forwarded_host) {
            set(headers, &X_FORWARDED_HOST, host);
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
            headers.get(&FORWARDED).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        let value = match previous {
            Some(previous) if !previous.trim().is_empty() => format!("{previous}, {element}"),
            _ => element,
        };
        set(headers, &FORWARDED, &value);
    } else if arrived.forwarded {
        headers.remove(&FORWARDED);
    }
}

/// Which forwarding fields a request head carries.
#[derive(Clone, Copy, Default)]
struct ForwardingFields {
    x_forwarded_for: bool,
    x_forwarded_proto: bool,
    x_forwarded_host: bool,
    forwarded: bool,
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
        }
    }

    /// Removes the fields marked present from `headers`.
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

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
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
    fn untrusted_peers_cannot_forge_x_forwarded_for() {
        let mut headers = map(&[("x-forwarded-for", "6.6.6.6")]);
        let hop = hop("127.0.0.1", "http", Some("example.com"), false);
        add_forwarded(&mut headers, ForwardedMode::Xff, &hop);
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.com");
    }

    #[test]
    fn trusted_peers_are_appended_to() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.9")]);
        let hop = hop("127.0.0.1", "https", None, true);
        add_forwarded(&mut headers, ForwardedMode::Both, &hop);
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
        add_forwarded(&mut headers, ForwardedMode::Rfc7239, &hop);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["forwarded", "x-kept"]);
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.9, for=127.0.0.1;proto=http"
        );

        let mut headers = map(&incoming);
        add_forwarded(&mut headers, ForwardedMode::Xff, &hop);
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
        add_forwarded(&mut headers, ForwardedMode::Rfc7239, &hop);
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";proto=http;host=\"a.example\""
        );
        assert!(!headers.contains_key("x-forwarded-for"));
    }
}
