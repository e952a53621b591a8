//! `causeway faults`: a deliberately broken upstream (DESIGN.md §6). Each request path
//! reproduces one failure on a real socket, so a proxy in front of it meets the real thing;
//! the connect-phase targets (refused port, missing or full unix socket, full TCP backlog) fail
//! before any request. Integration tests and `causeway demo` start it in-process with [`start`];
//! the CLI uses [`run`]. This file owns listeners, tasks and shutdown; `paths` owns the faults.

mod http;
mod paths;
mod targets;
mod tls;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Receive buffer of accepted TCP connections (Linux doubles it: 32 KiB), so that `/no-read`
/// stalls an upload early. It is set on the listener before `listen()`, because accepted sockets
/// inherit it and setting it afterwards is too late for the window already advertised. Measured
/// on loopback: a client with a 16 KiB SO_SNDBUF stalls after ~60 KiB (~165 KiB without this);
/// with the default send buffer, which loopback's 64 KiB MSS grows to ~4 MiB, only an upload
/// larger than that stalls. Unix sockets have no receive window: there the sender's buffer fills.
const RECV_BUFFER: usize = 16 * 1024;
/// Most connections served at once, over all listeners; beyond it the listeners stop accepting
/// and the kernel's queue holds the rest.
const MAX_CONNECTIONS: usize = 4096;
/// Longest TLS handshake allowed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most distinct paths counted by [`Faults::hits`], so garbage paths cannot grow the map.
const MAX_COUNTED_PATHS: usize = 1024;

/// Where to listen and where to put files (CA certificate, unix socket paths).
#[derive(Clone, Debug)]
pub struct FaultsOptions {
    /// Plain HTTP listener serving every fault path.
    pub listen: SocketAddr,
    /// TLS listener serving the same paths with broken certificates; `None` for none.
    pub tls_listen: Option<SocketAddr>,
    /// Directory for `ca.pem` and the unix sockets; created if missing.
    pub dir: PathBuf,
}

impl FaultsOptions {
    /// Loopback port 0 for both listeners and a fresh directory
    /// (`<temp>/causeway-faults-<pid>-<n>`), so tests and the demo can run side by side.
    pub fn loopback() -> FaultsOptions {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        FaultsOptions {
            listen: loopback,
            tls_listen: Some(loopback),
            dir: std::env::temp_dir().join(format!("causeway-faults-{}-{n}", std::process::id())),
        }
    }
}

/// The TLS listener and the CA a client must trust to reach its good certificate.
#[derive(Clone, Debug)]
pub struct TlsTargets {
    /// The TLS listener; SNI picks the broken certificate (see `describe()`).
    pub addr: SocketAddr,
    /// The CA certificate, written as PEM into the options' directory.
    pub ca_file: PathBuf,
    /// The same CA certificate, PEM, for in-process clients.
    pub ca_pem: String,
}

/// Counters shared by every connection task, so tests can tell whether a request reached the
/// upstream and whether a pool reused connections.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    hits: Mutex<HashMap<String, u64>>,
}

impl Stats {
    fn hit(&self, path: &str) {
        let mut hits = self
            .hits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = hits.get_mut(path) {
            *n += 1;
        } else if hits.len() < MAX_COUNTED_PATHS {
            hits.insert(path.to_string(), 1);
        }
    }
}

/// Files and the directory created by [`start`], removed when the server goes away (also when
/// `start` fails half-way).
#[derive(Debug, Default)]
struct Cleanup {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir); // only if empty: never delete what we did not make
        }
    }
}

/// A running faults server. Dropping it or calling [`Faults::shutdown`] stops every task and
/// removes the files it created.
#[derive(Debug)]
pub struct Faults {
    /// Plain HTTP listener serving every fault path; also the plain port to point an `https`
    /// upstream at (`tls_handshake_failed`: the upstream is not speaking TLS).
    pub http: SocketAddr,
    /// The TLS listener, if asked for.
    pub tls: Option<TlsTargets>,
    /// A loopback port where nothing listens (`connect_refused`).
    pub refused: SocketAddr,
    /// A unix socket path that does not exist (`socket_not_found`).
    pub missing_socket: PathBuf,
    /// A loopback TCP listener whose accept queue is full: a new connect times out
    /// (`connect_timeout`).
    pub backlog_full: SocketAddr,
    /// A unix listener whose queue is full: a new connect fails with EAGAIN
    /// (`socket_backlog_full`).
    pub backlog_full_unix: PathBuf,
    /// A unix listener serving the same fault paths as `http`.
    pub unix: PathBuf,
    /// A unix socket with mode 000 (`socket_permission_denied`). `None` when this process
    /// runs as root: root ignores file modes, so EACCES cannot be produced.
    pub permission_denied_socket: Option<PathBuf>,
    token: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    /// Listeners that never accept and the connections filling their queues: only held, so
    /// they close when the server is dropped.
    _held: Vec<Socket>,
    /// Dropped last: removes the files once every socket is closed.
    _cleanup: Cleanup,
}

/// What every accept loop needs to start a connection task.
#[derive(Clone)]
struct Spawner {
    token: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    slots: Arc<Semaphore>,
}

impl Spawner {
    /// Waits for a free connection slot. (`None` only if the semaphore were closed; it never
    /// is: shutdown cancels the accept loop instead.)
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// Counts an accepted connection and serves it in a task that ends at shutdown.
    fn serve<S: http::Transport>(&self, stream: S, slot: OwnedSemaphorePermit) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(&self.stats);
        let task = async move {
            let _slot = slot;
            paths::serve(stream, &stats).await;
        };
        self.tracker
            .spawn(self.token.clone().run_until_cancelled_owned(task));
    }

    /// Like [`Spawner::serve`], after a TLS handshake. A failed handshake (a broken
    /// certificate refused by the client, the `alert.localhost` abort) just ends the task.
    fn serve_tls(&self, stream: TcpStream, acceptor: TlsAcceptor, slot: OwnedSemaphorePermit) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(&self.stats);
        let task = async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => paths::serve(tls, &stats).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "faults: tls handshake failed"),
                Err(_) => tracing::debug!("faults: tls handshake timed out"),
            }
        };
        self.tracker
            .spawn(self.token.clone().run_until_cancelled_owned(task));
    }

    /// Runs `accept_loop` as a task that ends at shutdown.
    fn spawn_loop(&self, accept_loop: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tracker
            .spawn(self.token.clone().run_until_cancelled_owned(accept_loop));
    }
}

/// Waits a little after a failed accept (EMFILE, ECONNABORTED) instead of spinning on it.
async fn accept_failed(e: io::Error) {
    tracing::debug!(error = %e, "faults: accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Accepts TCP connections for ever; with an acceptor, serves them over TLS.
async fn accept_tcp(listener: TcpListener, acceptor: Option<TlsAcceptor>, spawner: Spawner) {
    while let Some(slot) = spawner.slot().await {
        match (listener.accept().await, &acceptor) {
            (Ok((stream, _)), None) => spawner.serve(stream, slot),
            (Ok((stream, _)), Some(acceptor)) => spawner.serve_tls(stream, acceptor.clone(), slot),
            (Err(e), _) => accept_failed(e).await,
        }
    }
}

/// Accepts unix-socket connections for ever.
async fn accept_unix(listener: UnixListener, spawner: Spawner) {
    while let Some(slot) = spawner.slot().await {
        match listener.accept().await {
            Ok((stream, _)) => spawner.serve(stream, slot),
            Err(e) => accept_failed(e).await,
        }
    }
}

/// A TCP listener whose accepted sockets get the small [`RECV_BUFFER`].
fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Starts the faults server: binds every listener and target, then serves until shut down.
///
/// # Errors
/// Binding a listener, creating the directory or a file, or generating certificates failed.
pub async fn start(opts: FaultsOptions) -> io::Result<Faults> {
    let mut cleanup = Cleanup::default();
    if !opts.dir.exists() {
        std::fs::create_dir_all(&opts.dir)?;
        cleanup.dir = Some(opts.dir.clone());
    }
    let path = |name: &str| opts.dir.join(name);
    let ip = targets::loopback_ip(opts.listen.ip());
    let mut held = Vec::new();

    let http_listener = tcp_listener(opts.listen)?;
    let unix = path("faults.sock");
    targets::remove_stale_socket(&unix)?;
    let unix_listener = UnixListener::bind(&unix)?;
    cleanup.files.push(unix.clone());

    let tls = match opts.tls_listen {
        None => None,
        Some(addr) => {
            let setup = tls::setup()?;
            let ca_file = path("ca.pem");
            std::fs::write(&ca_file, &setup.ca_pem)?;
            cleanup.files.push(ca_file.clone());
            let listener = tcp_listener(addr)?;
            let targets = TlsTargets {
                addr: listener.local_addr()?,
                ca_file,
                ca_pem: setup.ca_pem,
            };
            Some((targets, listener, TlsAcceptor::from(setup.config)))
        }
    };

    let missing_socket = path("missing.sock");
    targets::remove_stale_socket(&missing_socket)?;
    let backlog_full_unix = path("backlog-full.sock");
    cleanup.files.push(backlog_full_unix.clone());
    targets::backlog_full_unix(&backlog_full_unix, &mut held)?;
    let denied = path("denied.sock");
    cleanup.files.push(denied.clone());
    let permission_denied_socket = targets::permission_denied(&denied, &mut held)?;
    let refused = targets::refused(ip)?;
    let backlog_full = targets::backlog_full(ip, &mut held).await?;

    let spawner = Spawner {
        token: CancellationToken::new(),
        tracker: TaskTracker::new(),
        stats: Arc::default(),
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let http = http_listener.local_addr()?;
    spawner.spawn_loop(accept_tcp(http_listener, None, spawner.clone()));
    spawner.spawn_loop(accept_unix(unix_listener, spawner.clone()));
    let tls = tls.map(|(targets, listener, acceptor)| {
        spawner.spawn_loop(accept_tcp(listener, Some(acceptor), spawner.clone()));
        targets
    });
    Ok(Faults {
        http,
        tls,
        refused,
        missing_socket,
        backlog_full,
        backlog_full_unix,
        unix,
        permission_denied_socket,
        token: spawner.token,
        tracker: spawner.tracker,
        stats: spawner.stats,
        _held: held,
        _cleanup: cleanup,
    })
}

impl Faults {
    /// Connections accepted so far on every listener (plain, unix and TLS together, failed
    /// handshakes included), so a test can tell a reused pooled connection from a new one.
    pub fn connections_accepted(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Requests received so far for `path` (without query, e.g. `/status/502`), on every
    /// listener, so a test can assert that a request never reached the upstream. Counted when
    /// the head is parsed, before the fault runs. Only the first 1024 distinct paths count.
    pub fn hits(&self, path: &str) -> u64 {
        let hits = self
            .stats
            .hits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        hits.get(path).copied().unwrap_or(0)
    }

    /// A human-readable list of the targets and paths, printed by `causeway faults` at start-up
    /// so a user can point a config at them.
    pub fn describe(&self) -> String {
        let mut out = String::from("causeway faults: a deliberately broken upstream\n\n");
        let line = |out: &mut String, name: &str, target: String, what: &str| {
            let _ = writeln!(out, "  {name:<18} {target:<44} {what}");
        };
        out.push_str("targets:\n");
        line(
            &mut out,
            "http",
            self.http.to_string(),
            "every path below (also: plain HTTP for an https upstream)",
        );
        line(&mut out, "unix", unix_addr(&self.unix), "every path below");
        if let Some(tls) = &self.tls {
            line(
                &mut out,
                "https",
                tls.addr.to_string(),
                "every path below; trust the CA below",
            );
            line(
                &mut out,
                "  ca",
                tls.ca_file.display().to_string(),
                "CA of the good certificate",
            );
            for (name, what) in tls::NAMES {
                line(&mut out, "  sni", (*name).to_string(), what);
            }
            line(
                &mut out,
                "  sni",
                "(other / none)".to_string(),
                "good: localhost, 127.0.0.1, ::1",
            );
        }
        line(
            &mut out,
            "refused",
            self.refused.to_string(),
            "nothing listens: connect_refused",
        );
        line(
            &mut out,
            "backlog_full",
            self.backlog_full.to_string(),
            "accept queue full: connect_timeout",
        );
        line(
            &mut out,
            "missing_socket",
            unix_addr(&self.missing_socket),
            "no such file: socket_not_found",
        );
        line(
            &mut out,
            "backlog_full_unix",
            unix_addr(&self.backlog_full_unix),
            "queue full, EAGAIN: socket_backlog_full",
        );
        match &self.permission_denied_socket {
            Some(path) => line(
                &mut out,
                "permission_denied",
                unix_addr(path),
                "mode 000: socket_permission_denied",
            ),
            None => line(
                &mut out,
                "permission_denied",
                "(none)".to_string(),
                "running as root, which ignores file modes",
            ),
        }
        out.push_str("\npaths:\n");
        for (path, what) in paths::PATHS {
            let _ = writeln!(out, "  {path:<28} {what}");
        }
        out
    }

    /// Stops accepting, ends every connection task, waits for them, and removes the files.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        // Tasks see the cancellation at their next poll; `cleanup` then removes the files.
        self.token.cancel();
        self.tracker.close();
    }
}

fn unix_addr(path: &std::path::Path) -> String {
    format!("unix:{}", path.display())
}

/// The CLI entry: start, print [`Faults::describe`], wait for ctrl-c or SIGTERM, shut down.
///
/// # Errors
/// Starting failed (see [`start`]), or the signal handlers could not be installed.
pub async fn run(opts: FaultsOptions) -> io::Result<()> {
    let faults = start(opts).await?;
    println!("{}", faults.describe());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let term = Box::pin(terminate.recv());
    if let futures_util::future::Either::Left((Err(e), _)) =
        futures_util::future::select(ctrl_c, term).await
    {
        faults.shutdown().await;
        return Err(e);
    }
    faults.shutdown().await;
    Ok(())
}
