//! The client side: bind listeners, accept connections, serve HTTP/1.1 and HTTP/2, drain.
//!
//! Each accepted connection (TCP or unix, optionally TLS) is served by hyper, HTTP/1.1 or
//! HTTP/2 as ALPN or the first bytes say (`conn`), so one port speaks both versions. Client limits are enforced here where hyper
//! can (header read timeout → 408, header size → 431); body limits live in `proxy`. Shutdown
//! stops accepting, lets in-flight requests finish up to `shutdown_timeout`, then cuts the rest.
//!
//! `causeway run` serves on `server.workers` threads, each with its own single-threaded
//! runtime and, for TCP, its own `SO_REUSEPORT` socket, so the kernel spreads connections over
//! the workers and a connection (and the upstream connections it uses) never changes thread:
//! no work stealing, no cross-thread wakeups on the request path. The calling runtime keeps
//! the control work: signals, reloads, the admin listener, health checks and the pool sweeper.

pub mod conn;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenAddr;
use crate::log::AccessLog;
use crate::proxy::{ClientInfo, Proxy};
use crate::state::State;

/// A bound listener address, as it really is (port 0 resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running proxy: its listeners, its state, and the handles to stop it.
pub struct Running {
    pub bound: Vec<Bound>,
    /// The admin listener's address, when `[admin]` is configured.
    pub admin: Option<SocketAddr>,
    pub state: Arc<ArcSwap<State>>,
    pub access: AccessLog,
    stop_accepting: CancellationToken,
    connections: TaskTracker,
    /// Cancelled on shutdown: connections finish their requests and close.
    drain: CancellationToken,
    background: TaskTracker,
    unix_paths: Vec<PathBuf>,
    /// The worker threads with `Placement::Workers`; stopped when this is dropped.
    workers: Option<WorkerThreads>,
}

/// Where client connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the runtime that calls [`start_on`]: in-process users (tests, the demo).
    Caller,
    /// On this many worker threads, one single-threaded runtime each (`causeway run`).
    Workers(usize),
}

/// How a shutdown went.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight requests.
    Clean,
    /// Some were still busy at `shutdown_timeout` and were cut.
    TimedOut,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound socket not yet registered with any runtime: each copy is handed to one worker.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    /// Registers the socket with `handle`'s event loop: that runtime will accept on it.
    fn register(self, handle: &Handle) -> io::Result<Listener> {
        let _runtime = handle.enter();
        match self {
            StdListener::Tcp(listener) => TcpListener::from_std(listener).map(Listener::Tcp),
            StdListener::Unix(listener) => UnixListener::from_std(listener).map(Listener::Unix),
        }
    }
}

/// Worker threads, each running a single-threaded runtime until stopped.
struct WorkerThreads {
    handles: Vec<Handle>,
    stop: CancellationToken,
    /// One message per worker that has ended (its access-log lines written).
    ended: Mutex<mpsc::Receiver<()>>,
}

/// How long stopping waits for the workers to end and write their last access-log lines.
const WORKER_END_WAIT: Duration = Duration::from_secs(2);

impl WorkerThreads {
    fn start(count: usize) -> io::Result<WorkerThreads> {
        let stop = CancellationToken::new();
        let (ended, ended_rx) = mpsc::channel();
        let mut workers = WorkerThreads {
            handles: Vec::with_capacity(count),
            stop: stop.clone(),
            ended: Mutex::new(ended_rx),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Access-log lines are written in batches, when the worker has nothing to do.
                .on_thread_park(crate::log::flush_batched)
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let ended = ended.clone();
            std::thread::Builder::new()
                .name(format!("causeway-w{index}"))
                .spawn(move || {
                    crate::upstream::pool::set_worker(index);
                    let waiting = crate::log::batch_this_thread();
                    // Serves every task spawned onto this runtime until stopped; dropping the
                    // runtime then cuts whatever connections are left.
                    runtime.block_on(async {
                        // A worker that never runs out of work still writes its lines, a
                        // second after they start waiting at most; an idle one (its lines
                        // written by the park hook) never wakes for this.
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = waiting.lines_waiting() => {}
                            }
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                                    crate::log::flush_batched();
                                }
                            }
                        }
                    });
                    // The lines of the connections cut above too.
                    drop(runtime);
                    crate::log::flush_batched();
                    let _ = ended.send(());
                })?;
        }
        Ok(workers)
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        self.stop.cancel();
        // Waits (boundedly) so the process does not exit before the workers' last lines are
        // written.
        if let Ok(ended) = self.ended.lock() {
            for _ in 0..self.handles.len() {
                if ended.recv_timeout(WORKER_END_WAIT).is_err() {
                    break;
                }
            }
        }
    }
}

/// Binds every listener of `state` and serves on the calling runtime.
pub async fn start(state: State, access: AccessLog) -> io::Result<Running> {
    start_on(state, access, Placement::Caller).await
}

/// Binds every listener of `state` and starts serving where `placement` says.
pub async fn start_on(
    state: State,
    access: AccessLog,
    placement: Placement,
) -> io::Result<Running> {
    let server_config = state.config.server.clone();
    let state = Arc::new(ArcSwap::from_pointee(state));
    let acceptor = match &server_config.tls {
        Some(tls) => Some(tls::acceptor(tls)?),
        None => None,
    };
    let copies = match placement {
        Placement::Caller => 1,
        Placement::Workers(count) => count.max(1),
    };
    // One group per configured address, one socket per worker in each.
    let mut groups: Vec<Vec<StdListener>> = Vec::new();
    let mut bound = Vec::new();
    let mut unix_paths = Vec::new();
    for addr in &server_config.listen {
        match addr {
            ListenAddr::Tcp(socket) => {
                let first = bind_tcp(*socket, copies > 1)?;
                // Port 0 resolves on the first bind; the other workers join that port.
                let local = first.local_addr()?;
                let mut group = vec![StdListener::Tcp(first)];
                for _ in 1..copies {
                    group.push(StdListener::Tcp(bind_tcp(local, true)?));
                }
                bound.push(Bound::Tcp(local));
                groups.push(group);
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = std::os::unix::net::UnixListener::bind(path)?;
                listener.set_nonblocking(true)?;
                // A unix socket has no SO_REUSEPORT: every worker accepts on the same one.
                let mut group = Vec::with_capacity(copies);
                for _ in 1..copies {
                    group.push(StdListener::Unix(listener.try_clone()?));
                }
                group.push(StdListener::Unix(listener));
                bound.push(Bound::Unix(path.clone()));
                unix_paths.push(path.clone());
                groups.push(group);
            }
        }
    }
    let workers = match placement {
        Placement::Caller => None,
        Placement::Workers(count) => Some(WorkerThreads::start(count)?),
    };
    let handles = match &workers {
        Some(workers) => workers.handles.clone(),
        None => vec![Handle::current()],
    };
    let admin = match &state.load().config.admin {
        Some(admin) => Some(crate::admin::bind(admin.listen)?),
        None => None,
    };
    let running = Running {
        bound,
        admin: admin.as_ref().map(|l| l.local_addr()).transpose()?,
        state: state.clone(),
        access: access.clone(),
        stop_accepting: CancellationToken::new(),
        connections: TaskTracker::new(),
        drain: CancellationToken::new(),
        background: TaskTracker::new(),
        unix_paths,
        workers,
    };
    let http = Arc::new(conn::Http::new(&server_config));
    for group in groups {
        // `max_connections` is per configured listener, whichever worker accepted.
        let open = Arc::new(AtomicUsize::new(0));
        for (socket, handle) in group.into_iter().zip(handles.iter().cycle()) {
            let accept = AcceptLoop {
                state: state.clone(),
                access: access.clone(),
                http: http.clone(),
                acceptor: acceptor.clone(),
                stop: running.stop_accepting.clone(),
                connections: running.connections.clone(),
                drain: running.drain.clone(),
                open: open.clone(),
                max_connections: server_config.max_connections,
                handshake_timeout: server_config.request_header_timeout,
            };
            let listener = socket.register(handle)?;
            running.background.spawn_on(accept.run(listener), handle);
        }
    }
    if let Some(listener) = admin {
        let (stop, tasks) = (running.stop_accepting.clone(), running.background.clone());
        let serve = crate::admin::serve(listener, state.clone(), stop, tasks);
        running.background.spawn(serve);
    }
    // Idle upstream connections past their expiry are closed even when no request comes.
    let sweeper_state = state.clone();
    let sweeper_stop = running.stop_accepting.clone();
    running.background.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = sweeper_stop.cancelled() => break,
                _ = tick.tick() => sweeper_state.load().sweep_pools(),
            }
        }
    });
    Ok(running)
}

impl Running {
    /// The first TCP address, for tests and the demo.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.bound.iter().find_map(|b| match b {
            Bound::Tcp(addr) => Some(*addr),
            Bound::Unix(_) => None,
        })
    }

    /// Swaps in a new state; requests already running finish on the old one.
    pub fn swap(&self, state: State) {
        if state.config.server.listen != self.state.load().config.server.listen {
            tracing::warn!("reload: listen addresses changed; restart causeway to apply them");
        }
        let admin = |s: &State| s.config.admin.as_ref().map(|a| a.listen);
        if admin(&state) != admin(&self.state.load()) {
            tracing::warn!("reload: [admin] listen changed; restart causeway to apply it");
        }
        if state.config.server.workers != self.state.load().config.server.workers {
            tracing::warn!("reload: server.workers changed; restart causeway to apply it");
        }
        self.state.store(Arc::new(state));
    }

    /// Stops accepting, waits up to `timeout` for in-flight requests, then cuts the rest.
    pub async fn shutdown(self, timeout: Duration) -> Drained {
        self.stop_accepting.cancel();
        self.background.close();
        self.background.wait().await;
        // The accept loops are gone: no connection is added from here on.
        self.drain.cancel();
        self.connections.close();
        let drained = tokio::time::timeout(timeout, self.connections.wait()).await;
        for path in &self.unix_paths {
            let _ = std::fs::remove_file(path);
        }
        // Stops the worker threads: connections still open past the timeout are cut here.
        drop(self.workers);
        match drained {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::TimedOut,
        }
    }
}

/// A listening TCP socket; `shared` lets every worker bind its own on the same address
/// (`SO_REUSEPORT`: the kernel spreads new connections over them).
fn bind_tcp(addr: SocketAddr, shared: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A socket file left by a previous run would make bind fail; anything else is not ours.
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(_) => Ok(()),
    }
}

struct AcceptLoop {
    state: Arc<ArcSwap<State>>,
    access: AccessLog,
    http: Arc<conn::Http>,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
    connections: TaskTracker,
    drain: CancellationToken,
    open: Arc<AtomicUsize>,
    max_connections: usize,
    handshake_timeout: Duration,
}

impl AcceptLoop {
    async fn run(self, listener: Listener) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => break,
                accepted = accept(&listener) => accepted,
            };
            let (stream, client) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep serving.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.open.load(Ordering::Relaxed) >= self.max_connections {
                tracing::warn!(
                    limit = self.max_connections,
                    "connection refused: server.max_connections reached"
                );
                drop(stream);
                continue;
            }
            self.open.fetch_add(1, Ordering::Relaxed);
            let open = self.open.clone();
            let http = self.http.clone();
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            let access = self.access.clone();
            let drain = self.drain.clone();
            let handshake_timeout = self.handshake_timeout;
            self.connections.spawn(async move {
                let client = ClientInfo {
                    tls: acceptor.is_some(),
                    ..client
                };
                let serve = conn::Serve {
                    proxy: Proxy::new(state, access.clone(), client.clone()),
                    drain,
                    access,
                    client,
                };
                // TLS branches are boxed: their futures are twice the size of a plain one, and
                // every idle plain connection would otherwise pay for it.
                match (stream, acceptor) {
                    (Accepted::Tcp(tcp), Some(acceptor)) => {
                        Box::pin(serve_tls(&http, acceptor, tcp, handshake_timeout, serve)).await
                    }
                    (Accepted::Unix(unix), Some(acceptor)) => {
                        Box::pin(serve_tls(&http, acceptor, unix, handshake_timeout, serve)).await
                    }
                    (Accepted::Tcp(tcp), None) => conn::serve(&http, tcp, None, serve).await,
                    (Accepted::Unix(unix), None) => conn::serve(&http, unix, None, serve).await,
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// The TLS handshake (bounded by `request_header_timeout`), then HTTP as ALPN chose.
async fn serve_tls<I>(
    http: &conn::Http,
    acceptor: TlsAcceptor,
    io: I,
    handshake_timeout: Duration,
    serve: conn::Serve,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(io)) => handshake,
        _ = serve.drain.cancelled() => return, // shutting down: nothing was asked yet
    };
    match handshake {
        Ok(Ok(tls)) => {
            let alpn = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => conn::Protocol::Http2,
                _ => conn::Protocol::Http1,
            };
            conn::serve(http, tls, Some(alpn), serve).await
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "client TLS handshake failed"),
        Err(_) => tracing::debug!("client TLS handshake timed out"),
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Accepted, ClientInfo)> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            Ok((
                Accepted::Tcp(stream),
                ClientInfo::new(Some(peer), local, false),
            ))
        }
        Listener::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            Ok((Accepted::Unix(stream), ClientInfo::new(None, None, false)))
        }
    }
}
