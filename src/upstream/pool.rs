//! Idle keep-alive connections to one server, and the per-server connection limit.
//!
//! A checkout says whether the connection is fresh or reused and how long it sat idle: that is
//! what lets `classify` name `stale_connection` (the keep-alive race) instead of a plain reset.
//! A connection is never reused past `pool.idle_timeout`, past the upstream's own
//! `Keep-Alive: timeout` minus a margin, past `Keep-Alive: max`, or once hyper saw it close.
//!
//! Idle connections are kept per worker thread (`server.workers`), like nginx's per-process
//! `keepalive`: a connection's I/O is driven by the event loop of the worker that opened it, so
//! handing it to another worker would add a cross-thread wakeup to every request on it. The
//! `max_conns` limit stays one per server for the whole process.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::KEEP_ALIVE_MARGIN;
use super::connect::{Counted, Stream};
use super::exchange::{Conn, KeepAlive, Sender};
use super::Reuse;
use crate::config;

thread_local! {
    /// The worker this thread is (0 outside worker threads): which idle lists it uses.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`; called once when a worker thread starts.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The idle connections of one server, one list per worker.
pub struct Pool {
    settings: config::Pool,
    idle: Box<[PerWorker<Mutex<Vec<Idle>>>]>,
    /// Idle raw transports of FastCGI servers with `fastcgi.keep_conn`.
    raw_idle: Box<[PerWorker<Mutex<Vec<RawIdle>>>]>,
    limit: Option<Arc<Semaphore>>,
}

/// One worker's share, on cache lines of its own: two workers' lists on one line would have
/// every lock by one worker evict the line from the other's core (false sharing), on every
/// checkout and checkin.
#[repr(align(128))]
struct PerWorker<T>(T);

impl<T> std::ops::Deref for PerWorker<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

struct RawIdle {
    io: Counted<Stream>,
    since: Instant,
    expires: Instant,
}

struct Idle {
    conn: Conn,
    since: Instant,
    /// The earliest of our idle timeout and the upstream's keep-alive hint.
    expires: Instant,
}

/// Holds one of the server's `max_conns` slots while a request uses a connection.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Permit {
    /// A permit for a server without a connection limit.
    pub fn unlimited() -> Permit {
        Permit(None)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Pool {
    /// An empty pool for `workers` worker threads; `max_conns` bounds the connections in use
    /// at once across all of them.
    pub fn new(settings: config::Pool, max_conns: Option<usize>, workers: usize) -> Pool {
        let workers = workers.max(1);
        Pool {
            settings,
            idle: (0..workers)
                .map(|_| PerWorker(Mutex::new(Vec::new())))
                .collect(),
            raw_idle: (0..workers)
                .map(|_| PerWorker(Mutex::new(Vec::new())))
                .collect(),
            limit: max_conns.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// This worker's idle list.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[WORKER.with(Cell::get) % self.idle.len()]
    }

    /// This worker's idle FastCGI transports.
    fn raw_idle(&self) -> &Mutex<Vec<RawIdle>> {
        &self.raw_idle[WORKER.with(Cell::get) % self.raw_idle.len()]
    }

    /// Waits up to `queue_timeout` for a connection slot. `Err` carries how long it waited.
    pub async fn acquire(&self, queue_timeout: Duration) -> Result<Permit, Duration> {
        let Some(limit) = &self.limit else {
            return Ok(Permit::unlimited());
        };
        let started = Instant::now();
        match tokio::time::timeout(queue_timeout, limit.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Permit(Some(permit))),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(started.elapsed()),
        }
    }

    /// Takes the most recently used idle connection that is still good at `now`, if any.
    pub fn checkout(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.idle().lock().ok()?;
        while let Some(mut entry) = idle.pop() {
            if entry.expires <= now || !entry.conn.is_usable() {
                continue; // dropped: its socket closes
            }
            let idle_for = now.saturating_duration_since(entry.since);
            if let Sender::H2(sender) = &entry.conn.sender {
                // HTTP/2 multiplexes: keep the connection pooled and hand out a clone.
                let conn = Conn {
                    sender: Sender::H2(sender.clone()),
                    stats: entry.conn.stats.clone(),
                    reuse: Reuse::Pooled { idle: idle_for },
                    uses: entry.conn.uses,
                    expires: entry.conn.expires,
                    max_uses: None,
                };
                idle.push(entry);
                return Some(conn);
            }
            // Not `is_ready()`: hyper flips a connection back to ready a moment after the
            // previous body ended. `exchange` waits for readiness and treats a connection that
            // closes meanwhile as unsent, so the request goes elsewhere.
            let mut conn = entry.conn;
            conn.reuse = Reuse::Pooled { idle: idle_for };
            return Some(conn);
        }
        None
    }

    /// Returns a connection after a clean response, honouring what the response said about
    /// keep-alive: `timeout=N` expires it at N minus [`KEEP_ALIVE_MARGIN`], `max=M` caps its
    /// uses (unless `pool.honor_keep_alive = false`).
    pub fn checkin(&self, mut conn: Conn, keep_alive: KeepAlive) {
        if self.settings.max_idle_per_server == 0 || !conn.may_be_open() {
            return;
        }
        let (expires, max_uses) = if self.settings.honor_keep_alive {
            let expires = keep_alive
                .timeout
                .map(|t| Instant::now() + t.saturating_sub(KEEP_ALIVE_MARGIN));
            (expires, keep_alive.max)
        } else {
            (None, None)
        };
        if let Some(max) = max_uses {
            // `max` counts the requests still allowed after this response (RFC 2068 §19.7.1.1).
            if max == 0 {
                return;
            }
            conn.max_uses = Some(conn.uses + max);
        }
        let now = Instant::now();
        let idle_limit = now + self.settings.idle_timeout;
        let expires = match expires.or(conn.expires) {
            Some(hint) => hint.min(idle_limit),
            None => idle_limit,
        };
        if expires <= now {
            return;
        }
        conn.expires = Some(expires);
        let Ok(mut idle) = self.idle().lock() else {
            return;
        };
        if matches!(conn.sender, Sender::H2(_))
            && idle.iter().any(|e| matches!(e.conn.sender, Sender::H2(_)))
        {
            return; // one shared HTTP/2 connection is enough
        }
        // Expiry only: probing every idle connection on every checkin would cost each request
        // as much as the pool is deep. Closed ones are dropped at checkout and by `sweep`.
        idle.retain(|e| e.expires > now);
        if idle.len() >= self.settings.max_idle_per_server {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: now,
            expires,
        });
    }

    /// Takes the most recently used idle FastCGI transport, with how long it sat idle.
    /// Most recent first: a kept connection pins a PHP-FPM worker, so reusing the warm one
    /// keeps the number of pinned workers at the number of concurrent requests.
    pub fn checkout_raw(&self) -> Option<(Counted<Stream>, Duration)> {
        let now = Instant::now();
        let mut idle = self.raw_idle().lock().ok()?;
        while let Some(entry) = idle.pop() {
            if entry.expires > now {
                return Some((entry.io, now.saturating_duration_since(entry.since)));
            }
        }
        None
    }

    /// Keeps a FastCGI transport after a clean END_REQUEST on a kept connection.
    pub fn checkin_raw(&self, io: Counted<Stream>) {
        if self.settings.max_idle_per_server == 0 {
            return;
        }
        let now = Instant::now();
        let Ok(mut idle) = self.raw_idle().lock() else {
            return;
        };
        idle.retain(|e| e.expires > now);
        if idle.len() >= self.settings.max_idle_per_server {
            idle.remove(0);
        }
        idle.push(RawIdle {
            io,
            since: now,
            expires: now + self.settings.idle_timeout,
        });
    }

    /// Closes idle connections that expired, so they do not hold sockets open (or PHP-FPM
    /// workers pinned) until the next checkout. Called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for list in &self.idle {
            if let Ok(mut idle) = list.lock() {
                idle.retain_mut(|e| e.expires > now && e.conn.is_usable());
            }
        }
        for list in &self.raw_idle {
            if let Ok(mut idle) = list.lock() {
                idle.retain(|e| e.expires > now);
            }
        }
    }

    /// Idle connections right now, over all workers.
    pub fn idle_count(&self) -> usize {
        fn count<T>(lists: &[PerWorker<Mutex<Vec<T>>>]) -> usize {
            lists
                .iter()
                .map(|list| list.lock().map(|idle| idle.len()).unwrap_or(0))
                .sum()
        }
        count(&self.idle) + count(&self.raw_idle)
    }
}
