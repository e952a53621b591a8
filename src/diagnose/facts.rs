//! What explains a step's result beyond its cause: a unix socket's owner and mode against the
//! user running `diagnose`, the sockets next to a missing one, and the certificates a TLS
//! server presents (names, issuer, dates), also when the proxy's verifier refused them.
//! Only read and shown, never used to decide a cause: that stays `classify`'s job.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;
use tokio::time::{timeout_at, Instant};

use crate::config::ServerAddr;
use crate::upstream::connect::Connector;

/// Certificates expiring sooner than this get a warning line.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// Most sockets listed from the directory of a missing one.
const MAX_LISTED: usize = 8;

/// Facts about the unix socket at `path`: whether it exists, its mode and owner, and whether
/// this process may connect to it.
pub(super) fn unix_socket(path: &Path) -> Vec<String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return missing_socket(path),
        Err(e) => return vec![format!("cannot inspect {}: {e}", path.display())],
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return vec![format!(
            "{} exists but is {what}, not a socket",
            path.display()
        )];
    }
    let mode = meta.mode();
    let mut facts = vec![format!(
        "socket {} {}:{}",
        mode_string(mode),
        user_name(meta.uid()),
        group_name(meta.gid())
    )];
    if let Some(me) = Identity::current() {
        facts.push(me.access(meta.uid(), meta.gid(), mode));
    }
    facts
}

/// Facts for a socket path that does not exist: its directory, and the sockets in it (often
/// another PHP version's: `php8.1-fpm.sock` beside a configured `php8.2-fpm.sock`).
fn missing_socket(path: &Path) -> Vec<String> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return vec![format!("{} does not exist", path.display())];
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![format!(
                "directory {} does not exist either: the backend never created it (is it \
                 installed and running?)",
                dir.display()
            )]
        }
        Err(e) => return vec![format!("cannot list {}: {e}", dir.display())],
    };
    let mut sockets: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    sockets.sort();
    if sockets.is_empty() {
        return vec![format!(
            "directory {} exists but holds no socket",
            dir.display()
        )];
    }
    let more = sockets.len().saturating_sub(MAX_LISTED);
    sockets.truncate(MAX_LISTED);
    let mut listed = sockets.join(", ");
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    vec![format!(
        "no such socket; sockets in {}: {listed}",
        dir.display()
    )]
}

/// `srw-rw----` for a socket's mode bits.
pub(super) fn mode_string(mode: u32) -> String {
    let mut out = String::from("s");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// The user and groups this process runs as, from `/proc/self/status` (Linux).
#[derive(Debug)]
pub(super) struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    fn current() -> Option<Identity> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        // `Uid:` and `Gid:` list real, effective, saved and filesystem ids: access checks use
        // the filesystem id (the effective one unless changed).
        let field = |name: &str| -> Option<Vec<u32>> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            Some(
                line[name.len()..]
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            )
        };
        let uid = *field("Uid:")?.get(3)?;
        let gid = *field("Gid:")?.get(3)?;
        Some(Identity {
            uid,
            gid,
            groups: field("Groups:").unwrap_or_default(),
        })
    }

    /// Whether this identity may connect to a socket owned by `owner`:`group` with `mode`:
    /// connecting needs write permission on the socket file (unix(7)).
    pub(super) fn access(&self, owner: u32, group: u32, mode: u32) -> String {
        let me = format!(
            "diagnose runs as {} (uid {})",
            user_name(self.uid),
            self.uid
        );
        if self.uid == 0 {
            return format!(
                "{me}, which ignores socket modes: run it as causeway's user to see what \
                 causeway sees"
            );
        }
        let (class, bit) = if self.uid == owner {
            ("owner", 0o200)
        } else if self.gid == group || self.groups.contains(&group) {
            ("group", 0o020)
        } else {
            ("others", 0o002)
        };
        if mode & bit != 0 {
            format!("{me}: may connect (write permission as {class})")
        } else {
            format!(
                "{me}: may NOT connect: no write permission for {class} (mode {:03o})",
                mode & 0o777
            )
        }
    }
}

fn user_name(uid: u32) -> String {
    id_name("/etc/passwd", uid).unwrap_or_else(|| uid.to_string())
}

fn group_name(gid: u32) -> String {
    id_name("/etc/group", gid).unwrap_or_else(|| gid.to_string())
}

/// The name for `id` in a passwd-style file (`name:x:id:...`).
fn id_name(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.parse().ok()?;
        (found == id).then(|| name.to_string())
    })
}

/// The summary and certificate lines of an established TLS session.
pub(super) fn tls_session(conn: &ClientConnection, name: &str) -> (String, Vec<String>) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    let mut summary = version;
    if let Some(suite) = conn.negotiated_cipher_suite() {
        summary.push_str(&format!(", {:?}", suite.suite()));
    }
    if let Some(alpn) = conn.alpn_protocol() {
        summary.push_str(&format!(", ALPN {}", String::from_utf8_lossy(alpn)));
    }
    let chain = conn.peer_certificates().unwrap_or(&[]);
    let leaf = chain.first().and_then(|der| Certificate::parse(der));
    match leaf {
        Some(leaf) => summary.push_str(&format!(
            "; certificate for \"{name}\" valid until {}",
            date(leaf.not_after)
        )),
        None => summary.push_str(&format!("; certificate for \"{name}\" verified")),
    }
    (summary, describe_chain(chain))
}

/// One line per certificate, leaf first, with a warning for one about to expire.
pub(super) fn describe_chain(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let mut lines = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let Some(cert) = Certificate::parse(der) else {
            lines.push(format!("certificate {i}: cannot be parsed"));
            continue;
        };
        lines.push(format!("certificate {i}: {}", cert.describe(now)));
        let left = (cert.not_after - now).whole_days();
        if (0..EXPIRY_WARNING_DAYS).contains(&left) && cert.not_before <= now {
            lines.push(format!(
                "certificate {i} expires in {left} days: renew it soon"
            ));
        }
    }
    if chain.is_empty() {
        lines.push("the server presented no certificate".to_string());
    }
    lines
}

/// The parts of an X.509 certificate an operator needs to see.
#[derive(Debug)]
pub(super) struct Certificate {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Certificate {
    pub(super) fn parse(der: &[u8]) -> Option<Certificate> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_string()),
                    GeneralName::IPAddress(ip) => ip_text(ip),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let time = |t: &x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp()).ok()
        };
        Some(Certificate {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_before: time(&cert.validity().not_before)?,
            not_after: time(&cert.validity().not_after)?,
        })
    }

    /// `CN=localhost (names: localhost, 127.0.0.1), issued by CN=x, valid 2025-01-01 to
    /// 2035-01-01 (3650 days left)`.
    pub(super) fn describe(&self, now: OffsetDateTime) -> String {
        let names = if self.names.is_empty() {
            String::new()
        } else {
            format!(" (names: {})", self.names.join(", "))
        };
        let issuer = if self.issuer == self.subject {
            "self-signed".to_string()
        } else {
            format!("issued by {}", self.issuer)
        };
        let when = if now > self.not_after {
            format!("EXPIRED {} days ago", (now - self.not_after).whole_days())
        } else if now < self.not_before {
            format!(
                "NOT VALID YET: {} days to go",
                (self.not_before - now).whole_days()
            )
        } else {
            format!("{} days left", (self.not_after - now).whole_days())
        };
        format!(
            "{}{names}, {issuer}, valid {} to {} ({when})",
            self.subject,
            date(self.not_before),
            date(self.not_after)
        )
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// `2001-01-01`.
fn date(time: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time.format(&format)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// The chain a TLS server presents for `name`, fetched by a second handshake whose verifier
/// only records it and then aborts: used when the proxy's verifier refused the certificate, to
/// show which one and its dates.
pub(super) async fn presented_chain(
    connector: &Connector,
    addr: &ServerAddr,
    addrs: &[SocketAddr],
    name: &str,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let plain = match addr {
        ServerAddr::Unix(path) => connector.connect_unix(path, addr, deadline).await,
        _ => connector.connect_tcp(addrs, addr, deadline).await,
    }
    .map_err(|e| e.detail)?;
    let capture = Arc::new(Capture::default());
    let config = rustls::ClientConfig::builder_with_provider(capture.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // Fails by design: the verifier aborts once it has the chain.
    let handshake = connector.connect(server_name, plain);
    if timeout_at(deadline, handshake).await.is_err() {
        return Err("no certificate within timeouts.connect".to_string());
    }
    let chain = capture
        .chain
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default();
    if chain.is_empty() {
        return Err("the server presented no certificate".to_string());
    }
    let mut lines = vec![format!("presented for \"{name}\":")];
    lines.extend(describe_chain(&chain).into_iter().map(|l| format!("  {l}")));
    Ok(lines)
}

/// A verifier that records the presented chain and refuses it, so no session is ever
/// established with an unverified peer.
#[derive(Debug)]
struct Capture {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl Default for Capture {
    fn default() -> Capture {
        Capture {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            chain: Mutex::new(Vec::new()),
        }
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Err(rustls::Error::General(
            "certificate recorded for inspection".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
