//! Parsers for the config's value syntaxes: durations (`"1m30s"`), sizes (`"64KiB"`), upstream
//! server addresses, listen addresses and CIDR networks.
//!
//! Each returns a message that quotes the input and shows a correct example, because it ends up
//! after `file:line:col:` in `causeway check`. They know nothing of spans or keys: `validate`
//! adds those.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{IpNet, ListenAddr, ServerAddr};

const DURATION_HINT: &str = "expected a number followed by ms, s, m or h, e.g. \"250ms\"";

/// Parses a duration such as `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"` or `"1.5s"`.
///
/// Bare numbers are refused: `timeout = "5"` could mean seconds or milliseconds, and a proxy
/// that guesses wrong reports the wrong cause. Several parts must go from larger to smaller
/// units (`"1m30s"`, not `"30s1m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration \"{text}\": {why}");
    if text.is_empty() {
        return Err(invalid(DURATION_HINT));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    // Rank of the previous unit, so parts must strictly decrease (h=3 … ms=0).
    let mut previous_rank = u8::MAX;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() {
            return Err(invalid(DURATION_HINT));
        }
        let (rank, unit_nanos): (u8, u128) = match unit {
            "h" => (3, 3_600_000_000_000),
            "m" => (2, 60_000_000_000),
            "s" => (1, 1_000_000_000),
            "ms" => (0, 1_000_000),
            "" if rest.len() == text.len() => {
                return Err(invalid(&format!(
                    "a number needs a unit (ms, s, m or h), e.g. \"{number}s\""
                )))
            }
            _ => return Err(invalid(DURATION_HINT)),
        };
        if rank >= previous_rank {
            return Err(invalid(
                "parts must go from larger to smaller units without repeating, e.g. \"1m30s\"",
            ));
        }
        previous_rank = rank;
        let nanos = decimal_times(number, unit_nanos).ok_or_else(|| invalid(DURATION_HINT))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| invalid("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid("too large"))?;
    // The remainder of a division by 10^9 always fits in u32.
    let subsec = u32::try_from(total % 1_000_000_000).map_err(|_| invalid("too large"))?;
    Ok(Duration::new(secs, subsec))
}

/// `number` (digits, optionally `.digits`) times `unit`, truncated to whole units of `unit`'s
/// base (nanoseconds). `None` if the number is malformed or overflows.
fn decimal_times(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More than nanosecond precision of an hour needs at most 13 digits; ignore the rest.
    let fraction = &fraction[..fraction.len().min(13)];
    let whole: u128 = whole.parse().ok()?;
    let mut value = whole.checked_mul(unit)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        value = value.checked_add(digits.checked_mul(unit)? / scale)?;
    }
    Some(value)
}

/// Parses a size in bytes: `"512"`, `"10KB"` (×1000), `"64KiB"` (×1024), up to GB and GiB.
///
/// Units are case-insensitive (`"64kib"` is 64 KiB); a number without a unit is bytes. Only
/// whole numbers: `"1.5MiB"` is refused rather than rounded in a direction nobody expects.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size \"{text}\": expected a whole number with an optional unit \
             B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. \"64KiB\""
        )
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(invalid());
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid size \"{text}\": too large"))
}

/// Parses an upstream server: `HOST:PORT`, `[V6]:PORT` or `unix:/absolute/path`.
///
/// An IP literal becomes [`ServerAddr::Ip`] (no DNS involved); anything else must be a valid
/// host name and becomes [`ServerAddr::Name`], resolved at connect time. The port is required:
/// guessing 80 would hide a forgotten `:3000`.
pub fn parse_server_addr(text: &str) -> Result<ServerAddr, String> {
    let invalid = |why: &str| format!("invalid server address \"{text}\": {why}");
    if let Some(path) = text.strip_prefix("unix:") {
        return unix_path(path)
            .map(ServerAddr::Unix)
            .map_err(|e| invalid(&e));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(invalid(&format!(
            "write it without \"{scheme}://\" (e.g. \"127.0.0.1:3000\") and set `protocol`"
        )));
    }
    let (host, port) = split_host_port(text).map_err(|e| invalid(&e))?;
    let port = port_number(port, false).map_err(|e| invalid(&e))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerAddr::Ip(SocketAddr::new(ip, port)));
    }
    if !is_host_name(host) {
        return Err(invalid(&format!(
            "\"{host}\" is neither an IP address nor a valid host name"
        )));
    }
    Ok(ServerAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Parses a listen address: `IP:PORT`, `[V6]:PORT` or `unix:/absolute/path`.
///
/// Host names are refused: which interface a name means can change under a running proxy.
/// Port 0 (any free port) is allowed, for tests and `demo`.
pub fn parse_listen_addr(text: &str) -> Result<ListenAddr, String> {
    let invalid = |why: &str| format!("invalid listen address \"{text}\": {why}");
    if let Some(path) = text.strip_prefix("unix:") {
        return unix_path(path)
            .map(ListenAddr::Unix)
            .map_err(|e| invalid(&e));
    }
    let (host, port) = split_host_port(text).map_err(|e| invalid(&e))?;
    let port = port_number(port, true).map_err(|e| invalid(&e))?;
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(ListenAddr::Tcp(SocketAddr::new(ip, port))),
        Err(_) => Err(invalid(
            "expected an IP address, e.g. \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\" \
             (host names are not resolved for listening)",
        )),
    }
}

/// Parses a network for `trusted_proxies`: `10.0.0.0/8`, `::1` (one address), `fd00::/8`.
///
/// Host bits below the prefix are cleared (`10.1.2.3/8` means `10.0.0.0/8`), as nginx's
/// `set_real_ip_from` does after warning about them.
pub fn parse_ip_net(text: &str) -> Result<IpNet, String> {
    let invalid = |why: &str| format!("invalid network \"{text}\": {why}");
    let hint = "expected an IP address or CIDR, e.g. \"10.0.0.0/8\" or \"::1\"";
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| invalid(hint))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
            Ok(p) if p <= max => p,
            _ => return Err(invalid(&format!("prefix length must be 0 to {max}"))),
        },
        Some(_) => return Err(invalid(hint)),
    };
    Ok(IpNet {
        addr: mask(addr, prefix),
        prefix,
    })
}

impl IpNet {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// `addr` with every bit after the first `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits
                .checked_shr(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            let masked = kept
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(masked.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits
                .checked_shr(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            let masked = kept
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    /// See [`parse_server_addr`].
    fn from_str(text: &str) -> Result<Self, String> {
        parse_server_addr(text)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    /// See [`parse_listen_addr`].
    fn from_str(text: &str) -> Result<Self, String> {
        parse_listen_addr(text)
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// See [`parse_ip_net`].
    fn from_str(text: &str) -> Result<Self, String> {
        parse_ip_net(text)
    }
}

/// The path of `unix:PATH`, which must be absolute: a relative socket path would depend on
/// the directory the proxy happened to start in.
fn unix_path(path: &str) -> Result<PathBuf, String> {
    if path.starts_with("//") {
        return Err("write unix:/path with a single slash, e.g. \"unix:/run/app.sock\"".into());
    }
    if !path.starts_with('/') {
        return Err("a unix socket path must be absolute, e.g. \"unix:/run/app.sock\"".into());
    }
    Ok(PathBuf::from(path))
}

/// Splits `host:port` or `[v6]:port`; the brackets are removed from the host.
fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("missing \"]\" after the IPv6 address")?;
        let port = after
            .strip_prefix(':')
            .ok_or("missing port after \"]\", e.g. \"[::1]:8080\"")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"{host}\" is not an IPv6 address"));
        }
        return Ok((host, port));
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("an IPv6 address needs brackets, e.g. \"[::1]:8080\"".into())
        }
        Some(("", _)) => Err("missing host before the port".into()),
        Some((host, port)) => Ok((host, port)),
        None => Err(format!(
            "missing port: write HOST:PORT, e.g. \"{}:80\"",
            if text.is_empty() { "localhost" } else { text }
        )),
    }
}

/// A port number; 0 only where the OS may pick one (`allow_zero`).
fn port_number(port: &str, allow_zero: bool) -> Result<u16, String> {
    let min = u16::from(!allow_zero);
    match port.parse::<u16>() {
        Ok(p) if p >= min && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!(
            "port \"{port}\" must be a number from {min} to 65535"
        )),
    }
}

/// Whether `host` is a usable DNS name (RFC 1123 labels; `_` allowed, as docker-compose service
/// names use it). An all-numeric last label is refused: it is a mistyped IP, not a name.
pub(crate) fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        let good = [
            ("250ms", ms(250)),
            ("5s", ms(5_000)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("1.5s", ms(1_500)),
            ("0.25m", ms(15_000)),
            ("1.5ms", Duration::from_micros(1_500)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in good {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "", "5", "5 secs", "5sec", "s", "1.s", ".5s", "1..5s", "-1s", "5S", "30s1m", "1s1s",
            "1m 30s", "1d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn duration_messages_quote_the_input_and_show_an_example() {
        assert_eq!(
            parse_duration("5 secs").unwrap_err(),
            "invalid duration \"5 secs\": expected a number followed by ms, s, m or h, e.g. \"250ms\""
        );
        assert_eq!(
            parse_duration("5").unwrap_err(),
            "invalid duration \"5\": a number needs a unit (ms, s, m or h), e.g. \"5s\""
        );
        assert_eq!(
            parse_duration("30s1m").unwrap_err(),
            "invalid duration \"30s1m\": parts must go from larger to smaller units without \
             repeating, e.g. \"1m30s\""
        );
        assert_eq!(
            parse_duration("99999999999999999999h").unwrap_err(),
            "invalid duration \"99999999999999999999h\": too large"
        );
    }

    #[test]
    fn sizes() {
        let good = [
            ("512", 512),
            ("0", 0),
            ("512B", 512),
            ("10KB", 10_000),
            ("10kb", 10_000),
            ("2MB", 2_000_000),
            ("1GB", 1_000_000_000),
            ("64KiB", 65_536),
            ("64kib", 65_536),
            ("10MiB", 10 << 20),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
        ];
        for (text, want) in good {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "KiB", "1k", "1.5MiB", "64 KiB", "-1", "10TB", "1KiBs"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            parse_size("1k").unwrap_err(),
            "invalid size \"1k\": expected a whole number with an optional unit B, KB, MB, GB \
             (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. \"64KiB\""
        );
        assert_eq!(
            parse_size("99999999999GiB").unwrap_err(),
            "invalid size \"99999999999GiB\": too large"
        );
    }

    #[test]
    fn server_addresses() {
        let ip = |s: &str| ServerAddr::Ip(s.parse().unwrap());
        let name = |host: &str, port| ServerAddr::Name {
            host: host.into(),
            port,
        };
        let good = [
            ("127.0.0.1:3000", ip("127.0.0.1:3000")),
            ("[::1]:8080", ip("[::1]:8080")),
            ("localhost:80", name("localhost", 80)),
            ("API.Internal:443", name("api.internal", 443)),
            ("php_fpm:9000", name("php_fpm", 9000)),
            ("unix:/x", ServerAddr::Unix("/x".into())),
            (
                "unix:/run/php/php8.2-fpm.sock",
                ServerAddr::Unix("/run/php/php8.2-fpm.sock".into()),
            ),
        ];
        for (text, want) in good {
            assert_eq!(parse_server_addr(text), Ok(want.clone()), "{text}");
            assert_eq!(want.to_string().parse::<ServerAddr>(), Ok(want));
        }
        let bad = [
            (
                "localhost",
                "missing port: write HOST:PORT, e.g. \"localhost:80\"",
            ),
            (
                "127.0.0.1",
                "missing port: write HOST:PORT, e.g. \"127.0.0.1:80\"",
            ),
            (
                "::1:80",
                "an IPv6 address needs brackets, e.g. \"[::1]:8080\"",
            ),
            ("[::1]", "missing port after \"]\", e.g. \"[::1]:8080\""),
            ("[nope]:80", "\"nope\" is not an IPv6 address"),
            ("host:0", "port \"0\" must be a number from 1 to 65535"),
            (
                "host:70000",
                "port \"70000\" must be a number from 1 to 65535",
            ),
            ("host:+80", "port \"+80\" must be a number from 1 to 65535"),
            (":80", "missing host before the port"),
            (
                "bad host:80",
                "\"bad host\" is neither an IP address nor a valid host name",
            ),
            (
                "300.1.1.1:80",
                "\"300.1.1.1\" is neither an IP address nor a valid host name",
            ),
            (
                "unix:run/x.sock",
                "a unix socket path must be absolute, e.g. \"unix:/run/app.sock\"",
            ),
            (
                "unix://run/x.sock",
                "write unix:/path with a single slash, e.g. \"unix:/run/app.sock\"",
            ),
            (
                "http://127.0.0.1:3000",
                "write it without \"http://\" (e.g. \"127.0.0.1:3000\") and set `protocol`",
            ),
        ];
        for (text, why) in bad {
            assert_eq!(
                parse_server_addr(text),
                Err(format!("invalid server address \"{text}\": {why}")),
            );
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:8080"),
            Ok(ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_listen_addr("[::]:0"),
            Ok(ListenAddr::Tcp("[::]:0".parse().unwrap()))
        );
        assert_eq!(
            parse_listen_addr("unix:/run/causeway.sock"),
            Ok(ListenAddr::Unix("/run/causeway.sock".into()))
        );
        assert_eq!(
            parse_listen_addr("localhost:8080").unwrap_err(),
            "invalid listen address \"localhost:8080\": expected an IP address, e.g. \
             \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\" (host names are not resolved \
             for listening)"
        );
        assert!(parse_listen_addr("8080").is_err());
        assert!(parse_listen_addr("unix:causeway.sock").is_err());
    }

    #[test]
    fn networks() {
        let net = |s: &str| parse_ip_net(s).unwrap();
        assert_eq!(
            net("10.0.0.0/8"),
            IpNet {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        assert_eq!(net("10.1.2.3/8"), net("10.0.0.0/8"));
        assert_eq!(net("::1").prefix, 128);
        assert_eq!(net("127.0.0.1").prefix, 32);
        assert_eq!(net("0.0.0.0/0").prefix, 0);
        assert!(net("10.0.0.0/8").contains("10.200.1.1".parse().unwrap()));
        assert!(net("10.0.0.0/8").contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("10.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert_eq!(
            parse_ip_net("10.0.0.0/33").unwrap_err(),
            "invalid network \"10.0.0.0/33\": prefix length must be 0 to 32"
        );
        assert!(parse_ip_net("10.0.0.0/").is_err());
        assert!(parse_ip_net("example.com").is_err());
    }
}
