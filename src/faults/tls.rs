//! TLS faults: a CA and a set of broken server certificates, generated at start-up with rcgen,
//! and a rustls certificate resolver that picks one by SNI. The TLS listener serves the same
//! paths as the plain one; only the handshake differs. Nothing here is trusted by anyone but a
//! client given `ca.pem`: a proxy pointed at it must be configured with that CA.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// SNI for a CA-signed certificate that expired in 2001.
pub(super) const EXPIRED: &str = "expired.localhost";
/// SNI for a CA-signed certificate valid only from 2099.
pub(super) const NOT_YET_VALID: &str = "not-yet-valid.localhost";
/// SNI for a certificate signed by itself, not by the CA.
pub(super) const SELF_SIGNED: &str = "self-signed.localhost";
/// SNI for a CA-signed certificate whose only name is `other.example`.
pub(super) const WRONG_NAME: &str = "wrong-name.localhost";
/// SNI for which no certificate is chosen: rustls aborts with an `access_denied` alert.
pub(super) const ALERT: &str = "alert.localhost";

/// What each SNI name does, for `describe()`. Any other name, or none, gets a good certificate
/// for `localhost`, `127.0.0.1` and `::1`.
pub(super) const NAMES: &[(&str, &str)] = &[
    (EXPIRED, "CA-signed, expired 2001-01-01"),
    (NOT_YET_VALID, "CA-signed, valid from 2099"),
    (SELF_SIGNED, "self-signed (unknown issuer)"),
    (WRONG_NAME, "CA-signed for other.example only"),
    (
        ALERT,
        "no certificate: handshake fails with an access_denied alert",
    ),
];

/// The TLS side of the faults server: its rustls config and the CA that signed its certificates.
#[derive(Debug)]
pub(super) struct TlsSetup {
    /// Server config with the SNI resolver and ALPN `http/1.1`.
    pub(super) config: Arc<ServerConfig>,
    /// The CA certificate, PEM.
    pub(super) ca_pem: String,
}

/// Chooses a certificate by SNI (see [`NAMES`]).
#[derive(Debug)]
struct SniResolver {
    good: Arc<CertifiedKey>,
    expired: Arc<CertifiedKey>,
    not_yet_valid: Arc<CertifiedKey>,
    self_signed: Arc<CertifiedKey>,
    wrong_name: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or("");
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        let key = if is(EXPIRED) {
            &self.expired
        } else if is(NOT_YET_VALID) {
            &self.not_yet_valid
        } else if is(SELF_SIGNED) {
            &self.self_signed
        } else if is(WRONG_NAME) {
            &self.wrong_name
        } else if is(ALERT) {
            // rustls answers a resolver's None with a fatal access_denied alert (server/hs.rs).
            return None;
        } else {
            &self.good
        };
        Some(Arc::clone(key))
    }
}

fn cert_error(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("faults: generating a test certificate: {e}"))
}

fn rustls_error(e: rustls::Error) -> io::Error {
    io::Error::other(format!("faults: building the TLS config: {e}"))
}

/// Certificate parameters for a server certificate naming `names`, valid from `from` to `until`.
fn leaf_params(
    names: &[&str],
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> io::Result<CertificateParams> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).map_err(cert_error)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.not_before = from;
    params.not_after = until;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// A rustls certified key from an rcgen certificate and its key pair.
fn certified(
    cert: rcgen::Certificate,
    key: &KeyPair,
    provider: &CryptoProvider,
) -> io::Result<Arc<CertifiedKey>> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(vec![cert.der().clone()], key, provider);
    Ok(Arc::new(certified.map_err(rustls_error)?))
}

/// Generates the CA and every certificate, and builds the server config.
pub(super) fn setup() -> io::Result<TlsSetup> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = OffsetDateTime::now_utc();
    let (from, until) = (now - Duration::days(1), now + Duration::days(365));

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "causeway faults CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = from;
    ca_params.not_after = now + Duration::days(3650);
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    let ca = Issuer::new(ca_params, ca_key);

    let signed = |params: CertificateParams| -> io::Result<Arc<CertifiedKey>> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &ca).map_err(cert_error)?;
        certified(cert, &key, &provider)
    };
    let good = signed(leaf_params(
        &["localhost", "127.0.0.1", "::1"],
        from,
        until,
    )?)?;
    let old = (
        rcgen::date_time_ymd(2000, 1, 1),
        rcgen::date_time_ymd(2001, 1, 1),
    );
    let expired = signed(leaf_params(&[EXPIRED], old.0, old.1)?)?;
    let future = (
        rcgen::date_time_ymd(2099, 1, 1),
        rcgen::date_time_ymd(2100, 1, 1),
    );
    let not_yet_valid = signed(leaf_params(&[NOT_YET_VALID], future.0, future.1)?)?;
    let wrong_name = signed(leaf_params(&["other.example"], from, until)?)?;
    let self_signed = {
        let key = KeyPair::generate().map_err(cert_error)?;
        let params = leaf_params(&[SELF_SIGNED], from, until)?;
        certified(
            params.self_signed(&key).map_err(cert_error)?,
            &key,
            &provider,
        )?
    };

    let resolver = SniResolver {
        good,
        expired,
        not_yet_valid,
        self_signed,
        wrong_name,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        ca_pem: ca_cert.pem(),
    })
}

#[cfg(test)]
mod tests {
    //! Handshakes against the TLS listener with a rustls client that trusts only `ca_pem`.

    use std::io;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use crate::faults::testing::{exchange, faults, read_until_end};
    use crate::faults::Faults;

    /// Connects to the TLS listener as `name` (SNI, and the name the certificate must match).
    async fn handshake(f: &Faults, name: &str) -> io::Result<TlsStream<TcpStream>> {
        let tls = f.tls.as_ref().expect("tls listener on");
        let ca = CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).expect("ca.pem parses");
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("ca accepted");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = ServerName::try_from(name.to_string()).expect("valid server name");
        let tcp = TcpStream::connect(tls.addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// The rustls error inside a failed handshake.
    async fn handshake_error(name: &str) -> rustls::Error {
        let f = faults().await;
        let err = handshake(&f, name).await.expect_err("handshake must fail");
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        inner
            .cloned()
            .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
    }

    #[tokio::test]
    async fn good_certificate_handshakes_with_http11_and_serves_ok() {
        let f = faults().await;
        for name in ["localhost", "127.0.0.1", "::1"] {
            let mut s = handshake(&f, name).await.expect("good certificate");
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let r = exchange(&mut s, "GET /ok HTTP/1.1\r\n\r\n").await;
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        }
        assert_eq!(f.hits("/ok"), 3);
    }

    #[tokio::test]
    async fn expired_name_gets_an_expired_certificate() {
        let err = handshake_error(super::EXPIRED).await;
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn not_yet_valid_name_gets_a_future_certificate() {
        let err = handshake_error(super::NOT_YET_VALID).await;
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn self_signed_name_gets_an_unknown_issuer() {
        let err = handshake_error(super::SELF_SIGNED).await;
        let expected = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(err, expected);
    }

    #[tokio::test]
    async fn wrong_name_gets_a_certificate_for_another_name() {
        let err = handshake_error(super::WRONG_NAME).await;
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn alert_name_gets_an_access_denied_alert() {
        let err = handshake_error(super::ALERT).await;
        assert_eq!(
            err,
            rustls::Error::AlertReceived(AlertDescription::AccessDenied)
        );
    }

    #[tokio::test]
    async fn reset_over_tls_resets_the_tcp_connection() {
        let f = faults().await;
        let mut s = handshake(&f, "localhost").await.expect("good certificate");
        s.write_all(b"GET /reset HTTP/1.1\r\n\r\n")
            .await
            .expect("sent");
        let (bytes, end) = read_until_end(&mut s).await;
        assert!(bytes.is_empty(), "{bytes:?}");
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn ca_file_holds_the_ca_pem() {
        let f = faults().await;
        let tls = f.tls.as_ref().expect("tls listener on");
        let on_disk = std::fs::read_to_string(&tls.ca_file).expect("ca.pem readable");
        assert_eq!(on_disk, tls.ca_pem);
        assert!(on_disk.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
