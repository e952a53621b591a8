//! A tiny UDP DNS server on loopback, for tests and `causeway demo`: each name gives a known answer.
//!
//! It stands where a real nameserver would, so the proxy's `dns_error` and `dns_timeout` paths can
//! run for real without any network. It hand-encodes the few messages it needs (RFC 1035 §4.1);
//! it speaks UDP only, never sets TC, and is no general DNS server: one question, A and AAAA.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Name → addresses answered with NOERROR. Shared with the serving task.
type Records = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// RFC 1035 §4.1.1 response codes the stub sends.
const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;

/// RFC 1035 §3.2.2 record types and §3.2.4 class the stub knows.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// TTL 0: resolvers do not cache the answers, so every lookup reaches the stub and counts in
/// [`DnsStub::queries`], and a record changed mid-test takes effect at once.
const TTL: u32 = 0;

/// A UDP DNS server on `127.0.0.1:0` that answers by name, so tests can provoke each DNS failure.
///
/// - `ok.test` → A 127.0.0.1 (plus whatever [`DnsStub::with_record`] adds)
/// - `nxdomain.test` → NXDOMAIN, `servfail.test` → SERVFAIL, `refused.test` → REFUSED
/// - `nodata.test` → NOERROR with no answer (the name exists, it has no address)
/// - `timeout.test` → no answer at all
/// - any other name → NXDOMAIN
///
/// A name with records but none of the asked type (AAAA for `ok.test`) gets NOERROR with no
/// answer, as a real server would. Names match case-insensitively. Dropping the stub stops it.
#[derive(Debug)]
pub struct DnsStub {
    /// Where it listens: give it to the resolver as a nameserver.
    pub addr: SocketAddr,
    records: Records,
    queries: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DnsStub {
    /// Binds `127.0.0.1:0` and starts answering on a tokio task.
    pub async fn start() -> io::Result<DnsStub> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = socket.local_addr()?;
        let mut records = HashMap::new();
        records.insert("ok.test".to_owned(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let records: Records = Arc::new(Mutex::new(records));
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(socket, records.clone(), queries.clone()));
        Ok(DnsStub {
            addr,
            records,
            queries,
            task,
        })
    }

    /// Adds an address for `name` (A if IPv4, AAAA if IPv6), in addition to any it already has.
    pub fn with_record(self, name: &str, ip: IpAddr) -> DnsStub {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(normalize(name))
            .or_default()
            .push(ip);
        self
    }

    /// How many datagrams arrived so far, answered or not: proves a lookup did (or did not) query.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        // Aborting drops the task and with it the socket, so the port goes quiet.
        self.task.abort();
    }
}

/// Lowercase, without the root's trailing dot: the form names are stored and matched in.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Answers datagrams until the task is aborted.
async fn serve(socket: UdpSocket, records: Records, queries: Arc<AtomicU64>) {
    // 512 bytes is the classic UDP limit; hickory's EDNS queries for one name are far smaller.
    let mut buf = [0u8; 512];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // An ICMP error from an earlier reply can surface here on some systems: keep serving.
            Err(_) => continue,
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let reply = {
            let records = records.lock().unwrap_or_else(PoisonError::into_inner);
            answer(&buf[..len], &records)
        };
        if let Some(reply) = reply {
            // A lost reply looks like a timeout to the client, which is what UDP would do anyway.
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The one question of a query (RFC 1035 §4.1.2), parsed.
struct Question {
    /// Normalized name: lowercase labels joined by dots, no trailing dot.
    name: String,
    qtype: u16,
    /// Offset just past the question: `query[12..end]` is echoed in the reply.
    end: usize,
}

/// Builds the reply to one datagram, or `None` to stay silent.
fn answer(query: &[u8], records: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 != 0 {
        return None; // QR set: a response, not a query
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let question = match parse_question(query) {
        Some(question) if qdcount == 1 => question,
        _ => return Some(reply(query, flags, FORMERR, None, &[])),
    };
    let question_bytes = &query[12..question.end];
    let (rcode, addresses) = match question.name.as_str() {
        "timeout.test" => return None,
        "nxdomain.test" => (NXDOMAIN, Vec::new()),
        "servfail.test" => (SERVFAIL, Vec::new()),
        "refused.test" => (REFUSED, Vec::new()),
        "nodata.test" => (NOERROR, Vec::new()),
        name => match records.get(name) {
            Some(ips) => (NOERROR, matching(ips, question.qtype)),
            None => (NXDOMAIN, Vec::new()),
        },
    };
    Some(reply(query, flags, rcode, Some(question_bytes), &addresses))
}

/// The addresses of `ips` that answer a question of type `qtype`.
fn matching(ips: &[IpAddr], qtype: u16) -> Vec<IpAddr> {
    ips.iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(_) => qtype == TYPE_A,
            IpAddr::V6(_) => qtype == TYPE_AAAA,
        })
        .collect()
}

/// Reads the question after the header: labels up to the root, then QTYPE and QCLASS.
fn parse_question(query: &[u8]) -> Option<Question> {
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut wire_len = 1; // the root label's length byte
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // 0xC0 is a compression pointer, 0x40/0x80 are reserved: none belongs in a question.
        if len > 63 {
            return None;
        }
        let label = query.get(pos..pos + len)?;
        wire_len += 1 + len;
        if wire_len > 255 {
            return None; // RFC 1035 §2.3.4: names are at most 255 octets
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let fixed = query.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    if qclass != CLASS_IN {
        return None;
    }
    Some(Question {
        name: labels.join("."),
        qtype,
        end: pos + 4,
    })
}

/// Encodes a reply: same id, QR and RA set, RD and opcode copied, the question echoed if given,
/// then one A or AAAA record per address, named by a pointer to the question (offset 12).
fn reply(
    query: &[u8],
    query_flags: u16,
    rcode: u8,
    question: Option<&[u8]>,
    addresses: &[IpAddr],
) -> Vec<u8> {
    let flags = 0x8000 // QR: response
        | (query_flags & 0x7800) // opcode
        | (query_flags & 0x0100) // RD
        | 0x0080 // RA
        | u16::from(rcode);
    let qdcount: u16 = if question.is_some() { 1 } else { 0 };
    // At most a handful of test addresses: the count always fits.
    let ancount = u16::try_from(addresses.len()).unwrap_or(u16::MAX);

    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    out.extend_from_slice(&0u16.to_be_bytes()); // ARCOUNT
    if let Some(question) = question {
        out.extend_from_slice(question);
    }
    for ip in addresses.iter().take(usize::from(ancount)) {
        out.extend_from_slice(&0xC00Cu16.to_be_bytes()); // name: pointer to the question
        let (rtype, rdata) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        // 4 or 16 bytes.
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::time::Duration;

    use super::*;

    /// A query for `name`/`qtype` as a resolver would send it (id 0x1234, RD set).
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    /// Sends one datagram to the stub and waits (bounded) for its reply.
    async fn exchange(stub: &DnsStub, datagram: &[u8]) -> Option<Vec<u8>> {
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback client socket");
        client
            .send_to(datagram, stub.addr)
            .await
            .expect("send to the stub");
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
            _ => None,
        }
    }

    fn rcode(reply: &[u8]) -> u8 {
        reply[3] & 0x0F
    }

    fn ancount(reply: &[u8]) -> u16 {
        u16::from_be_bytes([reply[6], reply[7]])
    }

    #[tokio::test]
    async fn ok_a_query_gets_same_id_question_and_loopback_address() {
        let stub = DnsStub::start().await.expect("start stub");
        let q = query("OK.test", TYPE_A);
        let reply = exchange(&stub, &q).await.expect("a reply");
        assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
        assert_eq!(reply[2] & 0x80, 0x80, "QR set");
        assert_eq!(reply[2] & 0x01, 0x01, "RD copied");
        assert_eq!(reply[3] & 0x80, 0x80, "RA set");
        assert_eq!(rcode(&reply), NOERROR);
        assert_eq!(ancount(&reply), 1);
        assert_eq!(
            &reply[12..q.len()],
            &q[12..],
            "question echoed byte for byte"
        );
        assert_eq!(&reply[reply.len() - 4..], &[127, 0, 0, 1]);
        assert_eq!(stub.queries(), 1);
    }

    #[tokio::test]
    async fn ok_aaaa_query_is_noerror_without_answer() {
        let stub = DnsStub::start().await.expect("start stub");
        let reply = exchange(&stub, &query("ok.test", TYPE_AAAA))
            .await
            .expect("a reply");
        assert_eq!(rcode(&reply), NOERROR);
        assert_eq!(ancount(&reply), 0);
    }

    #[tokio::test]
    async fn each_special_name_gets_its_rcode() {
        let stub = DnsStub::start().await.expect("start stub");
        for (name, expected) in [
            ("nxdomain.test", NXDOMAIN),
            ("servfail.test", SERVFAIL),
            ("refused.test", REFUSED),
            ("nodata.test", NOERROR),
            ("unknown.example", NXDOMAIN),
        ] {
            let reply = exchange(&stub, &query(name, TYPE_A))
                .await
                .expect("a reply");
            assert_eq!(rcode(&reply), expected, "{name}");
            assert_eq!(ancount(&reply), 0, "{name}");
        }
    }

    #[tokio::test]
    async fn timeout_name_gets_no_reply_but_is_counted() {
        let stub = DnsStub::start().await.expect("start stub");
        assert!(exchange(&stub, &query("timeout.test", TYPE_A))
            .await
            .is_none());
        assert_eq!(stub.queries(), 1);
    }

    #[tokio::test]
    async fn added_ipv6_record_answers_aaaa() {
        let stub = DnsStub::start()
            .await
            .expect("start stub")
            .with_record("api.internal.", "::1".parse().expect("literal"));
        let reply = exchange(&stub, &query("api.internal", TYPE_AAAA))
            .await
            .expect("a reply");
        assert_eq!(ancount(&reply), 1);
        assert_eq!(&reply[reply.len() - 16..], &Ipv6Addr::LOCALHOST.octets());
    }

    #[tokio::test]
    async fn compressed_question_name_is_formerr() {
        let stub = DnsStub::start().await.expect("start stub");
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        let reply = exchange(&stub, &q).await.expect("a reply");
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(rcode(&reply), FORMERR);
    }

    #[tokio::test]
    async fn dropping_the_stub_frees_its_port() {
        let stub = DnsStub::start().await.expect("start stub");
        let addr = stub.addr;
        drop(stub);
        // The abort takes effect when the runtime next polls the task: retry a bounded number
        // of times.
        let mut bound = false;
        for _ in 0..100 {
            if UdpSocket::bind(addr).await.is_ok() {
                bound = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(bound, "{addr} still in use after the stub was dropped");
    }
}
