//! DNS for upstream host names, with errors typed enough for RFC 9209: `dns_error` with an
//! rcode, or `dns_timeout`.
//!
//! The first step of `upstream::connect`: a host name becomes addresses here, then TCP takes over.
//! hickory-resolver does the lookups; this file pins its options (one try, one timeout for the
//! whole lookup, the hosts file first) and turns its `NetError` into a [`ResolveError`] an
//! operator can act on. Which `Cause` that is stays `classify`'s decision, not this file's.

pub mod stub;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

/// The hosts file read when [`ResolverSettings::hosts_file`] is on.
const HOSTS_PATH: &str = "/etc/hosts";

/// Cached responses. A proxy resolves a few dozen upstream names, not the whole internet.
const CACHE_SIZE: u64 = 1_024;

/// Longest a negative answer is believed: a name that appears after an NXDOMAIN with a long SOA
/// minimum (often an hour) should start working within seconds, not keep failing with 502.
const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(30);

/// How causeway resolves upstream names: mirrors `config::Resolver` without depending on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Nameservers to ask, in order. Empty: those of the system's resolv.conf, with its search
    /// list.
    pub nameservers: Vec<SocketAddr>,
    /// The whole budget of one `resolve` call, retries and search list included.
    pub timeout: Duration,
    /// Answer from /etc/hosts before asking any nameserver, as getaddrinfo does.
    pub hosts_file: bool,
}

/// Resolves upstream host names into socket addresses, with errors precise enough for RFC 9209.
///
/// Cheap to clone: clones share one cache and one set of nameserver connections.
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dns: TokioResolver,
    /// Read once at startup (a reload builds a new `Resolver`); empty when the file is off.
    hosts: Hosts,
    timeout: Duration,
}

impl Resolver {
    /// Builds a resolver from `settings`; reads resolv.conf if no nameservers are given.
    ///
    /// # Errors
    ///
    /// [`ResolveError::Config`] if the hosts file cannot be read, if no nameservers are given
    /// and the system configuration cannot be read or names none, or if the timeout is zero.
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ResolveError> {
        Resolver::with_hosts_path(settings, Path::new(HOSTS_PATH))
    }

    /// [`Resolver::new`] with another hosts file, so tests need not depend on /etc/hosts.
    fn with_hosts_path(
        settings: &ResolverSettings,
        hosts_path: &Path,
    ) -> Result<Resolver, ResolveError> {
        if settings.timeout.is_zero() {
            return Err(ResolveError::Config(
                "the resolver timeout must be greater than zero".to_owned(),
            ));
        }
        let hosts = if settings.hosts_file {
            read_hosts(hosts_path)?
        } else {
            Hosts::default()
        };
        let (config, mut opts) = if settings.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(system_config_error)?
        } else {
            (
                explicit_config(&settings.nameservers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = settings.timeout;
        // hickory counts *retries* here: 0 means exactly one try, so a silent nameserver costs
        // `timeout` once, not two or three times.
        opts.attempts = 0;
        // Both families at once, IPv4 first: upstreams are mostly reached over IPv4, and a name
        // with only one family must not wait for the other to fail first.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = CACHE_SIZE;
        opts.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
        // The hosts file is consulted here, before hickory (see `hosts_file_addresses`).
        opts.use_hosts_file = ResolveHosts::Never;
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError::Config(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Resolver {
            inner: Arc::new(Inner {
                dns,
                hosts,
                timeout: settings.timeout,
            }),
        })
    }

    /// All addresses for `host`, each with `port`; IPv4 first. IP literals (`[::1]` too) are
    /// returned without any lookup, hosts-file names without any query.
    ///
    /// # Errors
    ///
    /// A [`ResolveError`] saying whether the nameserver was silent, said no (and with which
    /// rcode), could not be reached, or answered something unusable.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = parse_name(host)?;
        if let Some(ips) = self.hosts_file_addresses(&name) {
            return Ok(with_port(ips, port));
        }
        let timeout = self.inner.timeout;
        // hickory bounds each query by `timeout`, but A and AAAA for each search-list name are
        // separate queries: this bounds the lookup as a whole.
        let lookup = match tokio::time::timeout(timeout, self.inner.dns.lookup_ip(name)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(e)) => return Err(ResolveError::from_net(host, timeout, e)),
            Err(_elapsed) => {
                return Err(ResolveError::Timeout {
                    host: host.to_owned(),
                    timeout,
                })
            }
        };
        let addrs = with_port(lookup.iter().collect(), port);
        if addrs.is_empty() {
            // An answer with records but no address (a CNAME to nowhere): RFC 8499 NODATA.
            return Err(ResolveError::Rcode {
                host: host.to_owned(),
                rcode: "NOERROR".to_owned(),
            });
        }
        Ok(addrs)
    }

    /// The hosts-file addresses of `name`, IPv4 first, or `None` if the file does not list it.
    ///
    /// Done here rather than by hickory because hickory, given a name listed with only an IPv4
    /// address, still sends the AAAA query: with the nameserver down, every lookup of a
    /// hosts-file name would then wait for the timeout.
    fn hosts_file_addresses(&self, name: &Name) -> Option<Vec<IpAddr>> {
        let mut ips = Vec::new();
        for record_type in [RecordType::A, RecordType::AAAA] {
            let query = Query::query(name.clone(), record_type);
            if let Some(lookup) = self.inner.hosts.lookup_static_host(&query) {
                ips.extend(lookup.answers().iter().filter_map(|r| r.data.ip_addr()));
            }
        }
        (!ips.is_empty()).then_some(ips)
    }
}

/// Why a host name did not become addresses. Each variant maps to one RFC 9209 parameter set.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver did not answer within the timeout: RFC 9209 `dns_timeout`.
    #[error("dns lookup of {host:?} timed out after {}", Seconds(*.timeout))]
    Timeout { host: String, timeout: Duration },

    /// A nameserver answered with a response code: `dns_error` with `rcode`. `rcode` is the
    /// RFC 8499 name ("NXDOMAIN", "SERVFAIL", "REFUSED"…); NODATA (the name exists, it has no
    /// address) is "NOERROR".
    #[error("dns lookup of {host:?} failed: {rcode} ({})", rcode_meaning(.rcode))]
    Rcode { host: String, rcode: String },

    /// No nameserver could be reached at all (io error, no connection): `dns_error`, no rcode.
    /// A nameserver's closed UDP port is *not* this on Linux but `Timeout`: hickory's sockets are
    /// unconnected, so the ICMP port-unreachable never reaches it.
    #[error("dns lookup of {host:?} failed: no nameserver could be reached ({source})")]
    Unavailable { host: String, source: NetError },

    /// A nameserver answered, but not with anything usable (malformed, truncated twice, DNSSEC
    /// bogus…): `dns_error`, no rcode.
    #[error("dns lookup of {host:?} failed: the nameserver's answer was unusable ({source})")]
    BadAnswer { host: String, source: NetError },

    /// The host is not a valid DNS name, so nothing was asked. Config validation should have
    /// caught it; kept apart so it is never blamed on a nameserver.
    #[error("dns lookup of {host:?} failed: not a valid host name ({reason})")]
    InvalidName { host: String, reason: String },

    /// The resolver could not be set up (hosts file, resolv.conf, timeout).
    #[error("dns resolver configuration: {0}")]
    Config(String),
}

impl ResolveError {
    /// True for RFC 9209 `dns_timeout` (504); every other variant is `dns_error` (502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ResolveError::Timeout { .. })
    }

    /// The RFC 8499 rcode name for the `rcode` parameter of `dns_error`, when a nameserver gave one.
    pub fn rcode(&self) -> Option<&str> {
        match self {
            ResolveError::Rcode { rcode, .. } => Some(rcode),
            _ => None,
        }
    }

    /// Sorts hickory's error into ours. hickory's enums are `non_exhaustive`: whatever it adds
    /// later lands in `BadAnswer`, never in `Timeout` or `Rcode`, which need evidence.
    fn from_net(host: &str, timeout: Duration, err: NetError) -> ResolveError {
        let host = host.to_owned();
        match &err {
            NetError::Timeout => ResolveError::Timeout { host, timeout },
            NetError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                ResolveError::Timeout { host, timeout }
            }
            NetError::Dns(DnsError::NoRecordsFound(no_records)) => ResolveError::Rcode {
                host,
                rcode: rcode_name(no_records.response_code),
            },
            NetError::Dns(DnsError::ResponseCode(code)) => ResolveError::Rcode {
                host,
                rcode: rcode_name(*code),
            },
            NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
                ResolveError::Unavailable { host, source: err }
            }
            _ => ResolveError::BadAnswer { host, source: err },
        }
    }
}

/// The mnemonic of RFC 6895 §2.3 / RFC 8499 for a response code; `RCODE<n>` for an unassigned
/// one (after RFC 3597's `TYPE<n>`).
fn rcode_name(code: ResponseCode) -> String {
    use ResponseCode::*;
    let name = match code {
        NoError => "NOERROR",
        FormErr => "FORMERR",
        ServFail => "SERVFAIL",
        NXDomain => "NXDOMAIN",
        NotImp => "NOTIMP",
        Refused => "REFUSED",
        YXDomain => "YXDOMAIN",
        YXRRSet => "YXRRSET",
        NXRRSet => "NXRRSET",
        NotAuth => "NOTAUTH",
        NotZone => "NOTZONE",
        BADVERS => "BADVERS",
        BADSIG => "BADSIG",
        BADKEY => "BADKEY",
        BADTIME => "BADTIME",
        BADMODE => "BADMODE",
        BADNAME => "BADNAME",
        BADALG => "BADALG",
        BADTRUNC => "BADTRUNC",
        BADCOOKIE => "BADCOOKIE",
        Unknown(n) => return format!("RCODE{n}"),
    };
    name.to_owned()
}

/// What an rcode means for the operator reading the error log.
fn rcode_meaning(rcode: &str) -> &'static str {
    match rcode {
        "NXDOMAIN" => "no such name",
        "NOERROR" => "the name exists but has no address",
        "SERVFAIL" => "the nameserver failed to resolve it",
        "REFUSED" => "the nameserver refused to answer",
        "FORMERR" => "the nameserver could not parse the query",
        "NOTIMP" => "the nameserver does not support the query",
        _ => "unexpected response code",
    }
}

/// A timeout as the config spells it: `2s`, `250ms`.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

/// `host` as an IP address, if it is one; `[::1]` as a URI writes IPv6 is accepted too.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse().ok()
}

/// `host` as a DNS name (IDNA for non-ASCII), or why it is not one.
fn parse_name(host: &str) -> Result<Name, ResolveError> {
    let invalid = |reason: String| ResolveError::InvalidName {
        host: host.to_owned(),
        reason,
    };
    // hickory reads "" and "." as the root, which has no address anyone means.
    if host.trim_end_matches('.').is_empty() {
        return Err(invalid("empty name".to_owned()));
    }
    Name::from_utf8(host).map_err(|e| invalid(e.to_string()))
}

fn with_port(ips: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// One hickory nameserver per address: UDP first, TCP only for a truncated answer.
fn explicit_config(nameservers: &[SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            server
        })
        .collect();
    // No search list: a configured upstream name is meant as written (as nginx's `resolver`).
    ResolverConfig::from_parts(None, Vec::new(), servers)
}

/// The hosts file at `path`; a missing file is an empty one (as glibc treats it).
fn read_hosts(path: &Path) -> Result<Hosts, ResolveError> {
    let unreadable =
        |e: io::Error| ResolveError::Config(format!("cannot read {}: {e}", path.display()));
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Hosts::default()),
        Err(e) => return Err(unreadable(e)),
    };
    let mut hosts = Hosts::default();
    hosts.read_hosts_conf(file).map_err(unreadable)?;
    Ok(hosts)
}

/// The error for a system configuration that cannot be used, saying how to do without it.
fn system_config_error(e: NetError) -> ResolveError {
    ResolveError::Config(format!(
        "no nameservers are configured and the system configuration (/etc/resolv.conf) cannot be \
         used: {e}; set `nameservers` in [resolver]"
    ))
}
