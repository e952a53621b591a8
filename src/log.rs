//! The access log: one line per request, JSON (DESIGN.md section 7) or nginx `combined`.
//!
//! A record is filled in as the request moves along and written exactly once: when the
//! response body ends, fails, or is dropped because the client went away. The error log (one
//! WARN per failed attempt) goes through `tracing` and is written where the failure is seen.

use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::cause::Cause;
use crate::config::{AccessFormat, AccessLogTarget};
use crate::upstream::Attempt;

/// Where access-log lines go.
#[derive(Clone)]
pub struct AccessLog {
    format: AccessFormat,
    sink: Arc<Sink>,
}

enum Sink {
    Off,
    Stdout,
    Stderr,
    File {
        path: PathBuf,
        file: Mutex<File>,
    },
    /// Lines kept in memory: for tests and `causeway demo`.
    Memory(Mutex<Vec<String>>),
}

impl AccessLog {
    /// Opens the configured target (a file is opened for append).
    pub fn open(target: &AccessLogTarget, format: AccessFormat) -> io::Result<AccessLog> {
        let sink = match target {
            AccessLogTarget::Off => Sink::Off,
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::File(path) => Sink::File {
                path: path.clone(),
                file: Mutex::new(OpenOptions::new().create(true).append(true).open(path)?),
            },
        };
        Ok(AccessLog {
            format,
            sink: Arc::new(sink),
        })
    }

    /// A log that keeps its lines in memory.
    pub fn memory(format: AccessFormat) -> AccessLog {
        AccessLog {
            format,
            sink: Arc::new(Sink::Memory(Mutex::new(Vec::new()))),
        }
    }

    /// Whether lines are written at all (`access_log = "off"` skips building them).
    pub fn is_enabled(&self) -> bool {
        !matches!(&*self.sink, Sink::Off)
    }

    /// The lines written so far to a memory log (empty for other sinks).
    pub fn lines(&self) -> Vec<String> {
        match &*self.sink {
            Sink::Memory(lines) => lines.lock().map(|l| l.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Reopens a file target (SIGUSR1, after log rotation).
    pub fn reopen(&self) -> io::Result<()> {
        if let Sink::File { path, file } = &*self.sink {
            let fresh = OpenOptions::new().create(true).append(true).open(path)?;
            if let Ok(mut file) = file.lock() {
                *file = fresh;
            }
        }
        Ok(())
    }

    /// Writes one record.
    pub fn write(&self, record: &AccessRecord) {
        if matches!(&*self.sink, Sink::Off) {
            return;
        }
        let mut line = match self.format {
            AccessFormat::Json => record.to_json(),
            AccessFormat::Combined => record.to_combined(),
        };
        line.push('\n');
        if let Sink::Memory(lines) = &*self.sink {
            if let Ok(mut lines) = lines.lock() {
                line.pop();
                lines.push(line);
            }
            return;
        }
        if !self.batched(&line) {
            self.sink.write_all(line.as_bytes());
        }
    }

    /// Adds `line` to this thread's batch, if the thread batches (see [`batch_this_thread`]).
    fn batched(&self, line: &str) -> bool {
        BATCH
            .try_with(|batch| {
                let Ok(mut batch) = batch.try_borrow_mut() else {
                    return false;
                };
                let Some(batch) = batch.as_mut() else {
                    return false;
                };
                if !batch
                    .sink
                    .as_ref()
                    .is_some_and(|sink| Arc::ptr_eq(sink, &self.sink))
                {
                    // Another log (a reload changed it): what was batched goes to its own.
                    batch.flush();
                    batch.sink = Some(self.sink.clone());
                }
                if batch.bytes.capacity() == 0 {
                    // Allocated by the first line: a worker with the log off holds nothing.
                    batch.bytes.reserve(BATCH_MAX);
                }
                if batch.bytes.is_empty() {
                    // The worker's flush timer runs only while lines wait (see `Batch::waiting`).
                    batch.waiting.notify_one();
                }
                batch.bytes.extend_from_slice(line.as_bytes());
                if batch.bytes.len() >= BATCH_MAX {
                    batch.flush();
                }
                true
            })
            .unwrap_or(false)
    }
}

impl Sink {
    /// Writes whole lines in one call; an error is reported in the error log.
    fn write_all(&self, bytes: &[u8]) {
        let result = match self {
            Sink::Off | Sink::Memory(_) => Ok(()),
            Sink::Stdout => io::stdout().lock().write_all(bytes),
            Sink::Stderr => io::stderr().lock().write_all(bytes),
            Sink::File { file, .. } => match file.lock() {
                Ok(mut file) => file.write_all(bytes),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the access log");
        }
    }
}

/// The most bytes of lines a worker holds before writing them.
const BATCH_MAX: usize = 32 * 1024;

thread_local! {
    /// This thread's unwritten access-log lines; `None` on threads that write each line.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Lines formatted on one worker thread and not yet written, all for one sink.
struct Batch {
    sink: Option<Arc<Sink>>,
    bytes: Vec<u8>,
    /// Signalled when lines start waiting in an empty batch: the worker then writes them
    /// within a second even if it never goes idle, and an idle worker never wakes for it.
    waiting: Arc<Notify>,
}

impl Batch {
    fn flush(&mut self) {
        if let Some(sink) = &self.sink {
            if !self.bytes.is_empty() {
                sink.write_all(&self.bytes);
            }
        }
        self.bytes.clear();
    }
}

/// Makes this thread batch its access-log lines instead of writing each: one `write` per
/// line, under a lock shared by the workers, is a system call per request on top of the
/// proxying (BENCHMARKS.md: under load, 1,415 writes carried 20,787 lines). A worker calls [`flush_batched`] whenever it is about to wait for events
/// (its runtime's park hook), a second after lines start waiting in an empty batch, and when
/// it ends; a batch is also written once it holds 32 KiB. So a line reaches the log as soon
/// as the worker is idle, and within a second under any load, like nginx's
/// `access_log ... buffer= flush=1s` but on by itself; an idle worker has no timer to wake.
///
/// Returns the signal that lines started waiting ([`LinesWaiting`]).
pub fn batch_this_thread() -> LinesWaiting {
    let waiting = Arc::new(Notify::new());
    BATCH.with(|batch| {
        *batch.borrow_mut() = Some(Batch {
            sink: None,
            bytes: Vec::new(),
            waiting: waiting.clone(),
        });
    });
    LinesWaiting(waiting)
}

/// A batching thread's signal that lines wait to be written, from [`batch_this_thread`].
pub struct LinesWaiting(Arc<Notify>);

impl LinesWaiting {
    /// Resolves once lines have started waiting in the batch since the last time it
    /// resolved (at once if they did in between).
    pub async fn lines_waiting(&self) {
        self.0.notified().await;
    }
}

/// Writes the lines this thread has batched, if any.
pub fn flush_batched() {
    let _ = BATCH.try_with(|batch| {
        if let Ok(mut batch) = batch.try_borrow_mut() {
            if let Some(batch) = batch.as_mut() {
                batch.flush();
            }
        }
    });
}

/// Everything one access-log line says about a request.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub request_id: String,
    /// Client address (`ip:port`, or `unix` for unix-socket clients).
    pub client: String,
    pub method: String,
    pub host: String,
    /// Path and query as requested.
    pub path: String,
    pub version: &'static str,
    /// The status the client got (499 when it left first).
    pub status: u16,
    /// What the upstream sent; `None` when causeway generated the response.
    pub upstream_status: Option<u16>,
    pub cause: Option<Cause>,
    pub upstream: Option<String>,
    pub server: Option<String>,
    pub attempts: Vec<Attempt>,
    pub connect: Option<Duration>,
    pub header: Option<Duration>,
    pub total: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub fastcgi_stderr: Option<String>,
}

impl AccessRecord {
    /// The record of a request as it arrives: who asked for what; the outcome is filled in
    /// as the request goes.
    pub fn arriving(
        request_id: String,
        client: String,
        method: String,
        host: String,
        path: String,
        version: &'static str,
    ) -> AccessRecord {
        AccessRecord {
            time: SystemTime::now(),
            request_id,
            client,
            method,
            host,
            path,
            version,
            status: 0,
            upstream_status: None,
            cause: None,
            upstream: None,
            server: None,
            attempts: Vec::new(),
            connect: None,
            header: None,
            total: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            complete: false,
            referer: None,
            user_agent: None,
            fastcgi_stderr: None,
        }
    }
}

/// `,"name":` then `value` as a JSON string.
fn json_field_str(out: &mut String, name: &str, value: &str) {
    json_name(out, name);
    json_str(out, value);
}

/// `,"name":` then the string, or `null`.
fn json_field_opt_str(out: &mut String, name: &str, value: Option<&str>) {
    json_name(out, name);
    match value {
        Some(value) => json_str(out, value),
        None => out.push_str("null"),
    }
}

/// `,"name":` then the number, or `null`.
fn json_field_u64(out: &mut String, name: &str, value: Option<u64>) {
    json_name(out, name);
    match value {
        Some(value) => {
            let _ = fmt::Write::write_fmt(out, format_args!("{value}"));
        }
        None => out.push_str("null"),
    }
}

fn json_field_bool(out: &mut String, name: &str, value: bool) {
    json_name(out, name);
    out.push_str(if value { "true" } else { "false" });
}

/// `,"name":` (field names here never need escaping).
fn json_name(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

/// `value` as a JSON string, escaped as serde_json escapes it: `"`, `\\`, the five short
/// control escapes, other control bytes as `\u00xx`; everything else (DEL, non-ASCII) as is.
fn json_str(out: &mut String, value: &str) {
    out.push('"');
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !value.bytes().any(needs_escape) {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl AccessRecord {
    /// The JSON form, fields as DESIGN.md section 7 names them, in this order. Written by hand
    /// rather than through serde: the same bytes (the tests compare the two) at a third of
    /// the instructions, and this runs once per request with the access log on.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("{\"ts\":\"");
        out.push_str(&httpdate_rfc3339(self.time));
        out.push('"');
        json_field_str(&mut out, "request_id", &self.request_id);
        json_field_str(&mut out, "client", &self.client);
        json_field_str(&mut out, "method", &self.method);
        json_field_str(&mut out, "host", &self.host);
        json_field_str(&mut out, "path", &self.path);
        json_field_u64(&mut out, "status", Some(u64::from(self.status)));
        json_field_u64(
            &mut out,
            "upstream_status",
            self.upstream_status.map(u64::from),
        );
        json_field_opt_str(&mut out, "cause", self.cause.map(Cause::name));
        json_field_opt_str(&mut out, "upstream", self.upstream.as_deref());
        json_field_opt_str(&mut out, "server", self.server.as_deref());
        out.push_str(",\"attempts\":[");
        let mut server = String::with_capacity(24);
        for (i, attempt) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            server.clear();
            let _ = fmt::Write::write_fmt(&mut server, format_args!("{}", attempt.server));
            out.push_str("{\"server\":");
            json_str(&mut out, &server);
            json_field_opt_str(&mut out, "cause", attempt.cause.map(Cause::name));
            json_field_bool(&mut out, "reused", attempt.reuse.is_reused());
            json_field_u64(&mut out, "idle_ms", Some(attempt.reuse.idle_ms()));
            json_field_u64(&mut out, "ms", Some(millis(attempt.elapsed)));
            out.push('}');
        }
        out.push(']');
        json_field_u64(&mut out, "connect_ms", self.connect.map(millis));
        json_field_u64(&mut out, "header_ms", self.header.map(millis));
        json_field_u64(&mut out, "total_ms", Some(millis(self.total)));
        json_field_u64(&mut out, "bytes_in", Some(self.bytes_in));
        json_field_u64(&mut out, "bytes_out", Some(self.bytes_out));
        json_field_bool(&mut out, "complete", self.complete);
        if let Some(stderr) = self.fastcgi_stderr.as_deref() {
            json_field_str(&mut out, "fastcgi_stderr", stderr);
        }
        out.push('}');
        out
    }

    /// nginx's `combined` format, byte for byte:
    /// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`.
    pub fn to_combined(&self) -> String {
        let addr = self
            .client
            .rsplit_once(':')
            .map(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&self.client);
        format!(
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
            addr,
            time_local(self.time),
            escape_combined(&self.method),
            escape_combined(&self.path),
            self.version,
            self.status,
            self.bytes_out,
            escape_combined(self.referer.as_deref().unwrap_or("-")),
            escape_combined(self.user_agent.as_deref().unwrap_or("-")),
        )
    }
}

/// nginx escapes `"`, `\` and bytes outside printable ASCII as `\xHH` in its default log.
fn escape_combined(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// RFC 3339 UTC with milliseconds: `2026-11-23T10:34:06.123Z`.
fn httpdate_rfc3339(time: SystemTime) -> String {
    thread_local! {
        /// The last second formatted on this thread, `YYYY-MM-DDTHH:MM:SS`: formatting a date
        /// costs ~1,800 instructions, and a busy proxy logs many lines per second.
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    SECOND.with(|cell| {
        let mut second = cell.borrow_mut();
        if second.0 != secs {
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            second.1 = time::OffsetDateTime::from(time)
                .format(&format)
                .unwrap_or_else(|_| "1970-01-01T00:00:00".to_string());
            second.0 = secs;
        }
        let mut text = String::with_capacity(second.1.len() + 5);
        text.push_str(&second.1);
        text.push('.');
        text.push(char::from(b'0' + (millis / 100) as u8));
        text.push(char::from(b'0' + (millis / 10 % 10) as u8));
        text.push(char::from(b'0' + (millis % 10) as u8));
        text.push('Z');
        text
    })
}

/// nginx's `$time_local`, in UTC: `23/Nov/2026:10:34:06 +0000`.
fn time_local(time: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(time)
        .format(&format)
        .unwrap_or_else(|_| "01/Jan/1970:00:00:00 +0000".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line as serde_json writes it: what `to_json` must reproduce byte for byte.
    fn serde_line(record: &AccessRecord) -> String {
        use serde::Serialize;
        #[derive(Serialize)]
        struct JsonLine<'a> {
            ts: String,
            request_id: &'a str,
            client: &'a str,
            method: &'a str,
            host: &'a str,
            path: &'a str,
            status: u16,
            upstream_status: Option<u16>,
            cause: Option<&'static str>,
            upstream: Option<&'a str>,
            server: Option<&'a str>,
            attempts: Vec<JsonAttempt>,
            connect_ms: Option<u64>,
            header_ms: Option<u64>,
            total_ms: u64,
            bytes_in: u64,
            bytes_out: u64,
            complete: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            fastcgi_stderr: Option<&'a str>,
        }

        #[derive(Serialize)]
        struct JsonAttempt {
            server: String,
            cause: Option<&'static str>,
            reused: bool,
            idle_ms: u64,
            ms: u64,
        }
        let line = JsonLine {
            ts: httpdate_rfc3339(record.time),
            request_id: &record.request_id,
            client: &record.client,
            method: &record.method,
            host: &record.host,
            path: &record.path,
            status: record.status,
            upstream_status: record.upstream_status,
            cause: record.cause.map(Cause::name),
            upstream: record.upstream.as_deref(),
            server: record.server.as_deref(),
            attempts: record
                .attempts
                .iter()
                .map(|a| JsonAttempt {
                    server: a.server.to_string(),
                    cause: a.cause.map(Cause::name),
                    reused: a.reuse.is_reused(),
                    idle_ms: a.reuse.idle_ms(),
                    ms: millis(a.elapsed),
                })
                .collect(),
            connect_ms: record.connect.map(millis),
            header_ms: record.header.map(millis),
            total_ms: millis(record.total),
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            complete: record.complete,
            fastcgi_stderr: record.fastcgi_stderr.as_deref(),
        };
        serde_json::to_string(&line).expect("serializes")
    }

    #[test]
    fn json_line_is_byte_for_byte_what_serde_json_writes() {
        let plain = record();
        assert_eq!(plain.to_json(), serde_line(&plain));
        let mut odd = record();
        odd.path = "/a\"b\\c\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}/é/😀?q=1".into();
        odd.host = "h\"ost".into();
        odd.upstream_status = Some(200);
        odd.cause = None;
        odd.upstream = None;
        odd.connect = Some(Duration::from_micros(1500));
        odd.attempts.clear();
        odd.fastcgi_stderr = Some("PHP Warning: \"x\"\nline 2".into());
        assert_eq!(odd.to_json(), serde_line(&odd));
        let mut many = record();
        many.attempts = vec![
            Attempt {
                server: crate::config::ServerAddr::Ip(([127, 0, 0, 1], 3000).into()),
                cause: Some(Cause::StaleConnection),
                reuse: crate::upstream::Reuse::Pooled {
                    idle: Duration::from_millis(4999),
                },
                elapsed: Duration::from_micros(250),
            },
            Attempt {
                server: crate::config::ServerAddr::Unix("/run/php/fpm.sock".into()),
                cause: None,
                reuse: crate::upstream::Reuse::Fresh,
                elapsed: Duration::from_millis(12),
            },
        ];
        assert_eq!(many.to_json(), serde_line(&many));
    }

    #[test]
    fn timestamps_match_the_full_format_across_seconds() {
        let full = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // The same second twice (the cached part), the next one, and a leap day.
        for (secs, millis) in [
            (1_795_430_046, 7),
            (1_795_430_046, 999),
            (1_795_430_047, 0),
            (1_709_164_800, 123),
        ] {
            let time =
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            let expected = time::OffsetDateTime::from(time)
                .format(&full)
                .expect("formats");
            assert_eq!(httpdate_rfc3339(time), expected);
        }
    }

    fn record() -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_430_046),
            request_id: "rid".into(),
            client: "127.0.0.1:50000".into(),
            method: "GET".into(),
            host: "example.com".into(),
            path: "/a?b=\"c\"".into(),
            version: "HTTP/1.1",
            status: 502,
            upstream_status: None,
            cause: Some(Cause::ConnectRefused),
            upstream: Some("node".into()),
            server: Some("127.0.0.1:3000".into()),
            attempts: Vec::new(),
            connect: None,
            header: None,
            total: Duration::from_millis(3),
            bytes_in: 0,
            bytes_out: 120,
            complete: true,
            referer: None,
            user_agent: Some("curl/8".into()),
            fastcgi_stderr: None,
        }
    }

    #[test]
    fn json_line_has_design_fields() {
        let value: serde_json::Value =
            serde_json::from_str(&record().to_json()).expect("valid json");
        assert_eq!(value["cause"], "connect_refused");
        assert_eq!(value["status"], 502);
        assert!(value["upstream_status"].is_null());
        assert_eq!(value["complete"], true);
        for field in [
            "ts",
            "request_id",
            "client",
            "method",
            "host",
            "path",
            "upstream",
            "server",
            "attempts",
            "connect_ms",
            "header_ms",
            "total_ms",
            "bytes_in",
            "bytes_out",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
    }

    #[test]
    fn combined_line_matches_nginx() {
        assert_eq!(
            record().to_combined(),
            "127.0.0.1 - - [23/Nov/2026:10:34:06 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 502 120 \"-\" \"curl/8\""
        );
    }

    #[test]
    fn a_batching_thread_writes_its_lines_together_when_flushed() {
        let path = std::env::temp_dir().join(format!("causeway-batch-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&AccessLogTarget::File(path.clone()), AccessFormat::Json)
            .expect("open the log file");
        let read = {
            let path = path.clone();
            move || std::fs::read_to_string(&path).unwrap_or_default()
        };
        // A thread that does not batch (the default) writes each line at once.
        log.write(&record());
        assert_eq!(read().lines().count(), 1);
        let batched = {
            let log = log.clone();
            let read = read.clone();
            std::thread::spawn(move || {
                batch_this_thread();
                log.write(&record());
                log.write(&record());
                let before_flush = read().lines().count();
                flush_batched();
                (before_flush, read().lines().count())
            })
            .join()
            .expect("thread")
        };
        assert_eq!(batched, (1, 3), "held until the flush, then all written");
        // The flush timer's signal: given by the first line into an empty batch only.
        let signals = {
            let log = log.clone();
            std::thread::spawn(move || {
                use futures_util::FutureExt as _;
                let waiting = batch_this_thread();
                let quiet = waiting.lines_waiting().now_or_never().is_some();
                log.write(&record());
                log.write(&record());
                let first = waiting.lines_waiting().now_or_never().is_some();
                let again = waiting.lines_waiting().now_or_never().is_some();
                flush_batched();
                let after_flush = waiting.lines_waiting().now_or_never().is_some();
                log.write(&record());
                let next = waiting.lines_waiting().now_or_never().is_some();
                flush_batched();
                (quiet, first, again, after_flush, next)
            })
            .join()
            .expect("thread")
        };
        assert_eq!(
            signals,
            (false, true, false, false, true),
            "signalled once per batch that starts filling, never when idle"
        );
        assert!(
            read().lines().all(|l| l == record().to_json()),
            "whole lines"
        );
        let _ = std::fs::remove_file(&path);
    }
}
