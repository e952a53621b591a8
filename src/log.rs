//! The access log: one line per request, JSON (DESIGN.md section 7) or nginx `combined`.
//!
//! A record is filled in as the request moves along and written exactly once: when the
//! response body ends, fails, or is dropped because the client went away. The error log (one
//! WARN per failed attempt) goes through `tracing` and is written where the failure is seen.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

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
        let result = match &*self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => io::stdout().lock().write_all(line.as_bytes()),
            Sink::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Sink::File { file, .. } => match file.lock() {
                Ok(mut file) => file.write_all(line.as_bytes()),
                Err(_) => Ok(()),
            },
            Sink::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    line.pop();
                    lines.push(line);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the access log");
        }
    }
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

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl AccessRecord {
    /// The JSON form, fields as DESIGN.md section 7 names them.
    pub fn to_json(&self) -> String {
        let line = JsonLine {
            ts: httpdate_rfc3339(self.time),
            request_id: &self.request_id,
            client: &self.client,
            method: &self.method,
            host: &self.host,
            path: &self.path,
            status: self.status,
            upstream_status: self.upstream_status,
            cause: self.cause.map(Cause::name),
            upstream: self.upstream.as_deref(),
            server: self.server.as_deref(),
            attempts: self
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
            connect_ms: self.connect.map(millis),
            header_ms: self.header.map(millis),
            total_ms: millis(self.total),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
            fastcgi_stderr: self.fastcgi_stderr.as_deref(),
        };
        // Sized for a typical line: growing from serde_json's default 128 bytes reallocated
        // three times per line.
        let mut out = Vec::with_capacity(512);
        match serde_json::to_writer(&mut out, &line) {
            Ok(()) => {
                String::from_utf8(out).unwrap_or_else(|e| format!("{{\"log_error\":\"{e}\"}}"))
            }
            Err(e) => format!("{{\"log_error\":\"{e}\"}}"),
        }
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
}
