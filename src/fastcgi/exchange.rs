//! What one FastCGI exchange did, shared between the exchange and its caller: bytes each way,
//! whether the request was fully written (retry safety), END_REQUEST's appStatus, and the
//! application's STDERR, bounded. The caller creates it before sending, so it stays readable
//! after a timeout drops the exchange, and the access log reads it after the body ends.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A time not reached yet (see `Stats`).
const NOT_YET: u64 = u64::MAX;

/// Default bound on collected STDERR text: enough for a few PHP messages.
pub const DEFAULT_STDERR_LIMIT: usize = 4 * 1024;

/// Collected STDERR of one request, bounded, shared between the exchange and its caller (the
/// access log's `fastcgi_stderr`). Also in the response's extensions.
#[derive(Clone, Debug)]
pub struct StderrLog(Arc<Mutex<StderrBuf>>);

#[derive(Debug, Default)]
struct StderrBuf {
    bytes: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl StderrLog {
    /// An empty log keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        StderrLog(Arc::new(Mutex::new(StderrBuf {
            bytes: Vec::new(),
            limit,
            dropped: 0,
        })))
    }

    /// Appends output, counting what does not fit.
    pub fn push(&self, data: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = buf.limit.saturating_sub(buf.bytes.len()).min(data.len());
        buf.bytes.extend_from_slice(&data[..room]);
        buf.dropped += (data.len() - room) as u64;
    }

    /// Whether nothing was written to STDERR.
    pub fn is_empty(&self) -> bool {
        let buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buf.bytes.is_empty() && buf.dropped == 0
    }

    /// The text so far (invalid UTF-8 replaced), trimmed, with a marker if some was dropped.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::from_utf8_lossy(&buf.bytes).trim_end().to_owned();
        if buf.dropped > 0 {
            text.push_str(&format!(
                " [stderr truncated: {} bytes dropped]",
                buf.dropped
            ));
        }
        text
    }
}

/// What one exchange did, readable at any time by the caller that created it, including after
/// a timeout dropped the exchange: bytes each way, whether the request was fully written, the
/// app status, and STDERR.
#[derive(Clone, Debug)]
pub struct Exchange {
    stats: Arc<Stats>,
    stderr: StderrLog,
}

#[derive(Debug)]
struct Stats {
    /// When the exchange was created: the times below count from it.
    created: Instant,
    /// Microseconds from `created` to the last write to the stream.
    last_sent_us: AtomicU64,
    /// Microseconds from `created` to the end of the request; `NOT_YET` before.
    written_us: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    ended: AtomicBool,
    app_status: AtomicU32,
    write_error: Mutex<Option<io::ErrorKind>>,
}

impl Exchange {
    /// A fresh record whose STDERR keeps at most `stderr_limit` bytes.
    pub fn new(stderr_limit: usize) -> Self {
        let stats = Stats {
            created: Instant::now(),
            last_sent_us: AtomicU64::new(NOT_YET),
            written_us: AtomicU64::new(NOT_YET),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            app_status: AtomicU32::new(0),
            write_error: Mutex::new(None),
        };
        Exchange {
            stats: Arc::new(stats),
            stderr: StderrLog::new(stderr_limit),
        }
    }

    /// When a byte of the request was last written, if one was: a timeout on write progress
    /// counts from it.
    pub fn last_sent_at(&self) -> Option<Instant> {
        self.at(&self.stats.last_sent_us)
    }

    /// When the whole request had been written and flushed: the header timeout counts from it.
    pub fn written_at(&self) -> Option<Instant> {
        self.at(&self.stats.written_us)
    }

    fn at(&self, us: &AtomicU64) -> Option<Instant> {
        match us.load(Ordering::Relaxed) {
            NOT_YET => None,
            us => Some(self.stats.created + Duration::from_micros(us)),
        }
    }

    fn now_us(&self) -> u64 {
        // Never NOT_YET: that would take 584,000 years.
        (self.stats.created.elapsed().as_micros() as u64).min(NOT_YET - 1)
    }

    /// Bytes written to the stream (records, not payload): 0 means nothing reached the upstream.
    pub fn bytes_sent(&self) -> u64 {
        self.stats.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the stream.
    pub fn bytes_received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::Relaxed)
    }

    /// Whether the whole request, up to the empty STDIN record, was written and flushed.
    pub fn request_written(&self) -> bool {
        self.written_at().is_some()
    }

    /// The kind of the error that stopped writing the request, if one did. Reading goes on
    /// after it, so a caller whose timeout fires while waiting for the head can still tell
    /// `write_failed` from `header_timeout`.
    pub fn write_error(&self) -> Option<io::ErrorKind> {
        let kind = self.stats.write_error.lock();
        *kind.unwrap_or_else(PoisonError::into_inner)
    }

    /// END_REQUEST's appStatus, once it arrived.
    pub fn app_status(&self) -> Option<u32> {
        self.stats
            .ended
            .load(Ordering::Acquire)
            .then(|| self.stats.app_status.load(Ordering::Relaxed))
    }

    /// The STDERR collected so far.
    pub fn stderr(&self) -> &StderrLog {
        &self.stderr
    }

    pub(super) fn add_sent(&self, bytes: usize) {
        self.stats
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats
            .last_sent_us
            .store(self.now_us(), Ordering::Relaxed);
    }

    pub(super) fn add_received(&self, bytes: usize) {
        self.stats
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn mark_request_written(&self) {
        self.stats
            .written_us
            .store(self.now_us(), Ordering::Relaxed);
    }

    pub(super) fn mark_write_error(&self, kind: io::ErrorKind) {
        let lock = self.stats.write_error.lock();
        *lock.unwrap_or_else(PoisonError::into_inner) = Some(kind);
    }

    pub(super) fn mark_ended(&self, app_status: u32) {
        self.stats.app_status.store(app_status, Ordering::Relaxed);
        self.stats.ended.store(true, Ordering::Release);
    }
}
