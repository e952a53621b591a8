//! Resolver tests against [`DnsStub`] on loopback. No test asks the system resolver anything:
//! every resolver here names the stub (or a dead loopback port) as its only nameserver.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::time::Instant;

use super::stub::DnsStub;
use super::*;

const TIMEOUT: Duration = Duration::from_millis(300);

/// Settings that ask only `nameserver`, with the test timeout and no hosts file.
fn settings(nameserver: SocketAddr) -> ResolverSettings {
    ResolverSettings {
        nameservers: vec![nameserver],
        timeout: TIMEOUT,
        hosts_file: false,
    }
}

async fn stub_and_resolver() -> (DnsStub, Resolver) {
    let stub = DnsStub::start().await.expect("start the dns stub");
    let resolver = Resolver::new(&settings(stub.addr)).expect("build the resolver");
    (stub, resolver)
}

/// A hosts file of its own for one test, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(contents: &str) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "causeway-hosts-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).expect("write the temporary hosts file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address literal")
}

#[tokio::test]
async fn ok_name_resolves_to_the_stub_address_with_the_port() {
    let (stub, resolver) = stub_and_resolver().await;
    let addrs = resolver.resolve("ok.test", 8080).await.expect("ok.test");
    // The AAAA query gets NOERROR with no answer, which must not turn the A answer into an error.
    assert_eq!(addrs, vec![addr("127.0.0.1:8080")]);
    assert!(stub.queries() >= 1);
}

#[tokio::test]
async fn both_families_come_back_ipv4_first() {
    let stub = DnsStub::start()
        .await
        .expect("start the dns stub")
        .with_record("api.internal", "::1".parse().expect("literal"))
        .with_record("api.internal", "127.0.0.2".parse().expect("literal"));
    let resolver = Resolver::new(&settings(stub.addr)).expect("build the resolver");
    let addrs = resolver.resolve("api.internal", 443).await.expect("lookup");
    assert_eq!(addrs, vec![addr("127.0.0.2:443"), addr("[::1]:443")]);
}

#[tokio::test]
async fn nxdomain_name_is_rcode_nxdomain() {
    let (stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("nxdomain.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("NXDOMAIN"), "{err:?}");
    assert!(!err.is_timeout());
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "nxdomain.test" failed: NXDOMAIN (no such name)"#
    );
    assert!(stub.queries() >= 1);
}

#[tokio::test]
async fn unknown_name_is_rcode_nxdomain() {
    let (_stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("api.internal", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("NXDOMAIN"), "{err:?}");
}

#[tokio::test]
async fn servfail_name_is_rcode_servfail() {
    let (_stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("servfail.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("SERVFAIL"), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "servfail.test" failed: SERVFAIL (the nameserver failed to resolve it)"#
    );
}

#[tokio::test]
async fn refused_name_is_rcode_refused() {
    let (_stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("refused.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("REFUSED"), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "refused.test" failed: REFUSED (the nameserver refused to answer)"#
    );
}

#[tokio::test]
async fn nodata_name_is_rcode_noerror() {
    let (_stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("nodata.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("NOERROR"), "{err:?}");
    assert!(!err.is_timeout());
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "nodata.test" failed: NOERROR (the name exists but has no address)"#
    );
}

#[tokio::test]
async fn silent_nameserver_is_timeout_after_the_configured_timeout() {
    let (stub, resolver) = stub_and_resolver().await;
    let start = Instant::now();
    let err = resolver.resolve("timeout.test", 80).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.rcode(), None);
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "timeout.test" timed out after 300ms"#
    );
    // One try, not hickory's default of three: close to TIMEOUT, well under 2 × TIMEOUT.
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert!(elapsed < TIMEOUT * 2, "{elapsed:?}");
    assert!(stub.queries() >= 1, "the stub was asked");
}

#[tokio::test]
async fn ip_literals_resolve_without_a_query() {
    let (stub, resolver) = stub_and_resolver().await;
    for (host, expected) in [
        ("127.0.0.1", "127.0.0.1:80"),
        ("10.1.2.3", "10.1.2.3:80"),
        ("::1", "[::1]:80"),
        ("[::1]", "[::1]:80"),
        ("[2001:db8::7]", "[2001:db8::7]:80"),
    ] {
        let addrs = resolver.resolve(host, 80).await.expect(host);
        assert_eq!(addrs, vec![addr(expected)], "{host}");
    }
    assert_eq!(stub.queries(), 0);
}

#[tokio::test]
async fn localhost_resolves_without_a_query_even_without_hosts_file() {
    let (stub, resolver) = stub_and_resolver().await;
    let addrs = resolver
        .resolve("localhost", 3000)
        .await
        .expect("localhost");
    assert!(addrs.contains(&addr("127.0.0.1:3000")), "{addrs:?}");
    assert_eq!(stub.queries(), 0);
}

#[tokio::test]
async fn hosts_file_entry_resolves_without_a_query() {
    let stub = DnsStub::start().await.expect("start the dns stub");
    let hosts = TempFile::with("# test\n10.9.8.7 backend.test backend\n127.0.0.1 localhost\n");
    let settings = ResolverSettings {
        hosts_file: true,
        ..settings(stub.addr)
    };
    let resolver = Resolver::with_hosts_path(&settings, &hosts.0).expect("build the resolver");
    let addrs = resolver.resolve("backend.test", 80).await.expect("hosts");
    assert_eq!(addrs, vec![addr("10.9.8.7:80")]);
    let addrs = resolver.resolve("BACKEND.test.", 80).await.expect("hosts");
    assert_eq!(
        addrs,
        vec![addr("10.9.8.7:80")],
        "case and root dot ignored"
    );
    // Not even the AAAA query that hickory would send for an IPv4-only entry.
    assert_eq!(stub.queries(), 0);
}

#[tokio::test]
async fn hosts_file_off_sends_the_name_to_the_nameserver() {
    let stub = DnsStub::start().await.expect("start the dns stub");
    let hosts = TempFile::with("10.9.8.7 backend.test\n");
    let resolver =
        Resolver::with_hosts_path(&settings(stub.addr), &hosts.0).expect("build the resolver");
    let err = resolver.resolve("backend.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("NXDOMAIN"), "{err:?}");
    assert!(stub.queries() >= 1);
}

#[tokio::test]
async fn missing_hosts_file_is_an_empty_one() {
    let stub = DnsStub::start().await.expect("start the dns stub");
    let settings = ResolverSettings {
        hosts_file: true,
        ..settings(stub.addr)
    };
    let missing = std::env::temp_dir().join("causeway-no-such-hosts-file");
    let resolver = Resolver::with_hosts_path(&settings, &missing).expect("build the resolver");
    let addrs = resolver.resolve("ok.test", 80).await.expect("ok.test");
    assert_eq!(addrs, vec![addr("127.0.0.1:80")]);
}

#[test]
fn unreadable_hosts_file_is_config_error() {
    let settings = ResolverSettings {
        hosts_file: true,
        ..settings(addr("127.0.0.1:53"))
    };
    // A directory opens on Linux but cannot be read as text.
    let err = Resolver::with_hosts_path(&settings, &std::env::temp_dir()).unwrap_err();
    assert!(matches!(err, ResolveError::Config(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("dns resolver configuration: cannot read "),
        "{err}"
    );
}

#[test]
fn zero_timeout_is_config_error() {
    let settings = ResolverSettings {
        timeout: Duration::ZERO,
        ..settings(addr("127.0.0.1:53"))
    };
    let err = Resolver::new(&settings).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dns resolver configuration: the resolver timeout must be greater than zero"
    );
}

#[test]
fn unusable_system_config_error_says_how_to_do_without_it() {
    let err = system_config_error(NetError::from(io::Error::other(
        "no nameservers found in config",
    )));
    assert!(matches!(err, ResolveError::Config(_)));
    assert_eq!(
        err.to_string(),
        "dns resolver configuration: no nameservers are configured and the system \
         configuration (/etc/resolv.conf) cannot be used: io error: no nameservers found in \
         config; set `nameservers` in [resolver]"
    );
}

#[tokio::test]
async fn closed_nameserver_port_is_timeout() {
    // Bind, note the port, close: nothing listens there any more.
    let dead = {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket.local_addr().expect("local addr")
    };
    let resolver = Resolver::new(&settings(dead)).expect("build the resolver");
    let start = Instant::now();
    let err = resolver.resolve("ok.test", 80).await.unwrap_err();
    let elapsed = start.elapsed();
    // Not `Unavailable`: hickory sends from unconnected UDP sockets (send_to/recv_from), so
    // Linux never reports the ICMP port-unreachable to it and the query just goes unanswered.
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert!(elapsed < TIMEOUT * 2, "{elapsed:?}");
}

#[tokio::test]
async fn invalid_name_is_invalid_name_without_a_query() {
    let (stub, resolver) = stub_and_resolver().await;
    for host in ["", ".", "bad..name", &"a".repeat(64)] {
        let err = resolver.resolve(host, 80).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::InvalidName { .. }),
            "{host:?}: {err:?}"
        );
        assert_eq!(err.rcode(), None);
    }
    assert_eq!(stub.queries(), 0);
}

#[test]
fn hickory_errors_sort_into_the_right_variants() {
    let sort = |e: NetError| ResolveError::from_net("h", TIMEOUT, e);
    assert!(sort(NetError::Timeout).is_timeout());
    assert!(sort(NetError::from(io::Error::from(io::ErrorKind::TimedOut))).is_timeout());
    assert!(matches!(
        sort(NetError::from(io::Error::from(
            io::ErrorKind::ConnectionRefused
        ))),
        ResolveError::Unavailable { .. }
    ));
    assert!(matches!(
        sort(NetError::NoConnections),
        ResolveError::Unavailable { .. }
    ));
    assert!(matches!(
        sort(NetError::Truncated),
        ResolveError::BadAnswer { .. }
    ));
    assert_eq!(
        sort(NetError::Dns(DnsError::ResponseCode(ResponseCode::NotImp))).rcode(),
        Some("NOTIMP")
    );
    let no_records = |code| {
        hickory_resolver::net::NoRecords::new(Query::query(Name::root(), RecordType::A), code)
    };
    assert_eq!(
        sort(no_records(ResponseCode::NXDomain).into()).rcode(),
        Some("NXDOMAIN")
    );
    assert_eq!(
        sort(no_records(ResponseCode::NoError).into()).rcode(),
        Some("NOERROR")
    );
}

#[test]
fn unavailable_display_names_the_io_error() {
    let err = ResolveError::from_net(
        "api.internal",
        TIMEOUT,
        NetError::from(io::Error::from(io::ErrorKind::ConnectionRefused)),
    );
    assert_eq!(
        err.to_string(),
        r#"dns lookup of "api.internal" failed: no nameserver could be reached (io error: connection refused)"#
    );
}

#[test]
fn rcode_names_follow_rfc_8499() {
    assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
    assert_eq!(rcode_name(ResponseCode::ServFail), "SERVFAIL");
    assert_eq!(rcode_name(ResponseCode::BADCOOKIE), "BADCOOKIE");
    assert_eq!(rcode_name(ResponseCode::Unknown(4000)), "RCODE4000");
}

#[test]
fn timeout_display_uses_config_units() {
    let err = |timeout| ResolveError::Timeout {
        host: "api.internal".to_owned(),
        timeout,
    };
    assert_eq!(
        err(Duration::from_secs(2)).to_string(),
        r#"dns lookup of "api.internal" timed out after 2s"#
    );
    assert_eq!(
        err(Duration::from_millis(1500)).to_string(),
        r#"dns lookup of "api.internal" timed out after 1500ms"#
    );
}

#[tokio::test]
async fn servfail_is_asked_once_per_address_family() {
    let (stub, resolver) = stub_and_resolver().await;
    let err = resolver.resolve("servfail.test", 80).await.unwrap_err();
    assert_eq!(err.rcode(), Some("SERVFAIL"));
    // One A and one AAAA query. hickory retries a SERVFAIL `attempts` more times (default 2,
    // so 6 queries): causeway's retry policy, not the resolver's, decides about retries.
    assert_eq!(stub.queries(), 2);
}

#[test]
fn builds_outside_a_tokio_runtime() {
    // Config loading runs before (and beside) the runtime; building must not need one.
    let resolver = Resolver::new(&settings(addr("127.0.0.1:53")));
    assert!(resolver.is_ok(), "{resolver:?}");
}
