//! Opening a connection to one upstream server: DNS → TCP or unix → TLS, each step classified.
//!
//! The whole sequence runs under `timeouts.connect`; a deadline hit names the step that was
//! running. The socket is wrapped in [`Counted`] so `exchange` can tell "no response byte ever
//! arrived" from "part of a head arrived", which hyper does not report.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{sleep, timeout_at, Instant, Sleep};
use tokio_rustls::TlsConnector;

use super::exchange::{self, Conn};
use super::{BoxError, UpstreamError};
use crate::cause::Cause;
use crate::classify;
use crate::config::{self, Protocol, ServerAddr};
use crate::resolve::Resolver;

/// Opens connections for one upstream group.
#[derive(Clone)]
pub struct Connector {
    resolver: Resolver,
    tls: Option<TlsSettings>,
    protocol: Protocol,
    connect_timeout: Duration,
    max_response_header: usize,
}

#[derive(Clone)]
struct TlsSettings {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// Builds the connector, loading the TLS trust settings once.
    pub fn new(config: &config::Upstream, resolver: Resolver) -> Result<Connector, BoxError> {
        let tls = if config.protocol.uses_tls() {
            let alpn: &[&[u8]] = if config.protocol.is_http2() {
                &[b"h2"]
            } else {
                &[b"http/1.1"]
            };
            let client = client_tls_config(&config.tls, alpn)?;
            Some(TlsSettings {
                connector: TlsConnector::from(Arc::new(client)),
                server_name: config.tls.server_name.clone(),
            })
        } else {
            None
        };
        Ok(Connector {
            resolver,
            tls,
            protocol: config.protocol,
            connect_timeout: config.timeouts.connect,
            max_response_header: config.max_response_header,
        })
    }

    /// Connects to `addr` and performs the protocol handshake, within `timeouts.connect`.
    pub async fn connect(&self, addr: &ServerAddr, upgrades: bool) -> Result<Conn, UpstreamError> {
        let deadline = Instant::now() + self.connect_timeout;
        let stream = self.open(addr, deadline).await?;
        exchange::handshake(stream, self.protocol, self.max_response_header, upgrades)
            .await
            .map_err(|e| classify::handshake_error(&e, addr))
    }

    /// Opens the transport (with TLS when configured) for any protocol, FastCGI included.
    pub async fn open(
        &self,
        addr: &ServerAddr,
        deadline: Instant,
    ) -> Result<Counted<Stream>, UpstreamError> {
        let plain = match addr {
            ServerAddr::Unix(path) => self.connect_unix(path, addr, deadline).await?,
            ServerAddr::Ip(socket) => self.connect_tcp(&[*socket], addr, deadline).await?,
            ServerAddr::Name { host, port } => {
                let addrs = self.resolve(host, *port, deadline).await?;
                self.connect_tcp(&addrs, addr, deadline).await?
            }
        };
        let stream = self.tls(plain, addr, deadline).await?;
        Ok(Counted::new(stream))
    }

    /// The DNS step of [`Connector::open`], public so `diagnose` can time each step.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        match timeout_at(deadline, self.resolver.resolve(host, port)).await {
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(classify::dns_error(e, host)),
            Err(_) => Err(UpstreamError::new(
                Cause::DnsTimeout,
                format!(
                    "dns lookup of \"{host}\" not answered within the connect timeout ({})",
                    fmt_duration(self.connect_timeout)
                ),
            )),
        }
    }

    /// The TLS step of [`Connector::open`]: a handshake when the protocol uses TLS, else the
    /// stream unchanged.
    pub async fn tls(
        &self,
        plain: Stream,
        server: &ServerAddr,
        deadline: Instant,
    ) -> Result<Stream, UpstreamError> {
        match &self.tls {
            None => Ok(plain),
            Some(tls) => self.handshake_tls(tls, plain, server, deadline).await,
        }
    }

    /// The name sent as SNI and checked in the certificate: `tls.server_name`, else the
    /// server's host, else `localhost`.
    pub fn tls_name(&self, server: &ServerAddr) -> String {
        self.tls
            .as_ref()
            .and_then(|tls| tls.server_name.clone())
            .or_else(|| server.host())
            .unwrap_or_else(|| "localhost".to_string())
    }

    /// The TCP step of [`Connector::open`]: the first of `addrs` that accepts.
    pub async fn connect_tcp(
        &self,
        addrs: &[SocketAddr],
        server: &ServerAddr,
        deadline: Instant,
    ) -> Result<Stream, UpstreamError> {
        let mut last_error = None;
        for socket in addrs {
            match timeout_at(deadline, TcpStream::connect(socket)).await {
                Ok(Ok(stream)) => {
                    // Small requests must not wait for Nagle; the proxy batches writes itself.
                    let _ = stream.set_nodelay(true);
                    return Ok(Stream::Tcp(stream));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => return Err(self.connect_timed_out(server, "TCP connect")),
            }
        }
        let error = last_error
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
        Err(classify::connect_error(error, server))
    }

    /// The unix-socket step of [`Connector::open`].
    pub async fn connect_unix(
        &self,
        path: &Path,
        server: &ServerAddr,
        deadline: Instant,
    ) -> Result<Stream, UpstreamError> {
        match timeout_at(deadline, connect_unix(path)).await {
            Ok(Ok(stream)) => Ok(Stream::Unix(stream)),
            Ok(Err(e)) => Err(classify::connect_error(e, server)),
            Err(_) => Err(self.connect_timed_out(server, "unix socket connect")),
        }
    }

    async fn handshake_tls(
        &self,
        tls: &TlsSettings,
        plain: Stream,
        server: &ServerAddr,
        deadline: Instant,
    ) -> Result<Stream, UpstreamError> {
        let name = self.tls_name(server);
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            UpstreamError::new(
                Cause::TlsHandshakeFailed,
                format!("\"{name}\" is not a valid TLS server name: {e}"),
            )
            .with_hint("set tls.server_name to the name in the upstream's certificate")
        })?;
        match timeout_at(deadline, tls.connector.connect(server_name, plain)).await {
            Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(classify::tls_error(e, &name)),
            Err(_) => Err(self.connect_timed_out(server, "TLS handshake")),
        }
    }

    fn connect_timed_out(&self, server: &ServerAddr, step: &str) -> UpstreamError {
        UpstreamError::new(
            Cause::ConnectTimeout,
            format!(
                "{step} to {server} not done within {} (timeouts.connect)",
                fmt_duration(self.connect_timeout)
            ),
        )
        .with_hint("the server's accept backlog is full or a firewall drops SYNs; check that it is up and not overloaded")
    }
}

/// Formats a duration as the config writes it (`250ms`, `3s`).
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// rustls client settings for an `https` upstream: built-in roots plus `tls.ca`, or no
/// verification at all when `insecure_skip_verify` is set.
pub fn client_tls_config(
    tls: &config::UpstreamTls,
    alpn: &[&[u8]],
) -> Result<ClientConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &tls.ca {
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!("tls.insecure_skip_verify is set: upstream certificates are NOT verified");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The verifier behind `insecure_skip_verify`: accepts any certificate, still checks
/// handshake signatures so the session is at least encrypted to the presented key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An upstream transport: TCP, unix, or TLS over either.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bytes seen on one connection, shared between the IO and the exchange that reads it.
#[derive(Debug, Default)]
pub struct IoStats {
    pub read: AtomicU64,
    pub written: AtomicU64,
    /// A write failed because the upstream closed or reset the connection (see
    /// [`Counted::hold_write_errors`]): whatever hyper reports afterwards, the request did not
    /// get through.
    pub write_failed: OnceLock<io::ErrorKind>,
}

/// An IO that counts the bytes read and written, so an exchange knows whether any response
/// byte arrived before a failure (hyper does not say).
pub struct Counted<T> {
    inner: T,
    stats: Arc<IoStats>,
    /// Whether a write error is held back while an answer may still be read.
    hold_write_errors: bool,
    held: Option<Box<HeldWrite>>,
}

/// A write error held back (see [`Counted::hold_write_errors`]).
struct HeldWrite {
    kind: io::ErrorKind,
    /// Reset whenever a byte is read; the error is released when it fires.
    quiet: Pin<Box<Sleep>>,
    read_seen: u64,
    /// The read side reached EOF or failed: nothing more can come.
    read_ended: bool,
}

/// How long, once a write to the upstream failed, to wait for an answer it may have sent
/// before (or for the rest of it): both HTTP/1.1 clients use it.
pub const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(100);

impl<T> Counted<T> {
    /// Wraps `inner` with fresh counters.
    pub fn new(inner: T) -> Counted<T> {
        Counted {
            inner,
            stats: Arc::new(IoStats::default()),
            hold_write_errors: false,
            held: None,
        }
    }

    /// For hyper's client, which gives up on the first write error even when the upstream has
    /// already answered: a backend may send 413 (or 401, or a redirect) as soon as it has the
    /// head of an upload and close, and that answer must be relayed, not replaced by a 502.
    /// From now on, a write that fails because the upstream closed or reset the connection
    /// reports nothing until reading has ended or gone quiet for [`EARLY_ANSWER_WAIT`], so hyper
    /// reads the answer first; the failure is recorded in [`IoStats::write_failed`].
    pub fn hold_write_errors(&mut self) {
        self.hold_write_errors = true;
    }

    /// The counters, readable while the IO is owned by hyper.
    pub fn stats(&self) -> Arc<IoStats> {
        self.stats.clone()
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The outcome of a write, with an error from a closed or reset connection held back
    /// when [`Counted::hold_write_errors`] asked for it.
    fn checked<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(Err(error)) if self.hold_write_errors && peer_gone(&error) => {
                let _ = self.stats.write_failed.set(error.kind());
                self.held = Some(Box::new(HeldWrite {
                    kind: error.kind(),
                    quiet: Box::pin(sleep(EARLY_ANSWER_WAIT)),
                    read_seen: self.stats.read.load(Ordering::Relaxed),
                    read_ended: false,
                }));
                self.poll_held(cx)
            }
            other => other,
        }
    }

    /// Pending while a held write error waits; then the error, for every later write too.
    fn poll_held<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(held) = self.held.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let read = self.stats.read.load(Ordering::Relaxed);
        if read != held.read_seen {
            held.read_seen = read;
            held.quiet
                .as_mut()
                .reset(Instant::now() + EARLY_ANSWER_WAIT);
        }
        if held.read_ended || held.quiet.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(held.kind.into()));
        }
        Poll::Pending
    }
}

/// Whether a write error means the upstream closed or reset the connection.
fn peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.stats.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(held) = this.held.as_mut() {
            held.read_ended |= matches!(&result, Poll::Ready(Err(_)))
                || (matches!(&result, Poll::Ready(Ok(()))) && n == 0 && buf.remaining() > 0);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        this.checked(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        this.checked(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.checked(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Connects to a unix socket. On Linux a unix-socket `connect` completes or fails (EAGAIN
/// when the listen queue is full) within the call, so tokio's own connect, which then waits
/// for writability and reads `SO_ERROR`, spends a `getsockopt` and a turn of the event loop
/// per connection learning nothing: for FastCGI that is once per request. Where a connect
/// does report "in progress", that wait is still done.
async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    // Linux's value (asm-generic/errno.h), as the errno labels in `classify` assume;
    // `io::ErrorKind::InProgress` is not stable yet.
    const EINPROGRESS: i32 = 115;
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => UnixStream::from_std(socket.into()),
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {
            let stream = UnixStream::from_std(socket.into())?;
            stream.writable().await?;
            match stream.take_error()? {
                Some(e) => Err(e),
                None => Ok(stream),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_held_write_error_lets_the_answer_be_read_first() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Counted::new(near);
        io.hold_write_errors();
        far.write_all(b"HTTP/1.1 413 Content Too Large\r\n\r\n")
            .await
            .expect("answer");
        drop(far);
        // The upstream is gone, but the write waits instead of failing...
        let write = tokio::time::timeout(Duration::from_millis(10), io.write(b"body")).await;
        assert!(write.is_err(), "held: {write:?}");
        assert_eq!(
            io.stats().write_failed.get(),
            Some(&io::ErrorKind::BrokenPipe)
        );
        // ...so the answer is read, and once reading has ended the write fails.
        let mut answer = Vec::new();
        io.read_to_end(&mut answer).await.expect("read the answer");
        assert!(answer.starts_with(b"HTTP/1.1 413"));
        let error = io.write(b"more").await.expect_err("released");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_write_error_is_released_when_nothing_comes() {
        let (near, far) = tokio::io::duplex(1024);
        let mut io = Counted::new(near);
        io.hold_write_errors();
        drop(far);
        let started = Instant::now();
        let error = io.write(b"body").await.expect_err("released");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(started.elapsed(), EARLY_ANSWER_WAIT);
        // Without the hold, the error is immediate.
        let (near, far) = tokio::io::duplex(1024);
        let mut io = Counted::new(near);
        drop(far);
        let started = Instant::now();
        assert!(io.write(b"body").await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(io.stats().write_failed.get(), None);
    }
}
