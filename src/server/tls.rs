//! The HTTPS listener's rustls settings: certificate chain and key from PEM, ALPN h2 + http/1.1.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerTls;

/// Builds the acceptor from `[server] tls = { cert, key }`.
pub fn acceptor(tls: &ServerTls) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| invalid(&format!("cannot read {}", tls.cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&format!("bad certificate in {}", tls.cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| invalid(&format!("cannot read key {}", tls.key.display()), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key do not match", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
