//! The real `causeway` binary as a child process: a temporary directory for its config and
//! logs, a guard that kills and reaps it on drop, signals, peak memory, and readers for its
//! error log (stderr, captured to a file) and access log (a JSON file).
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("causeway-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test's temp dir");
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes `text` to `path` atomically (write a sibling, then rename), so a reload never reads
/// a half-written file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write the new config");
    std::fs::rename(&tmp, path).expect("rename the new config into place");
}

/// A `[server]` + `[log]` head for a binary config: loopback port 0, the access log as JSON in
/// `dir`, and `server_extra` lines added to `[server]`.
pub fn config_head(dir: &TempDir, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{server_extra}\n\n[log]\nlevel = \"info\"\naccess_log = \"{}\"\naccess_format = \"json\"\n\n",
        dir.join("access.log").display()
    )
}

/// A running `causeway run -c FILE`. Dropping it kills the process and reaps it.
pub struct Causeway {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
    pub access_path: PathBuf,
    pub config_path: PathBuf,
}

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_causeway")
}

impl Causeway {
    /// Writes `config` to `dir/causeway.toml`, starts the binary on it and waits (up to 10 s)
    /// for its "causeway listening" line, which names the port it bound.
    pub fn start(dir: &TempDir, config: &str) -> Causeway {
        let config_path = dir.join("causeway.toml");
        std::fs::write(&config_path, config).expect("write the config file");
        let stderr_path = dir.join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create the stderr file");
        let child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn the causeway binary");
        let pid = child.id();
        let mut causeway = Causeway {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
            access_path: dir.join("access.log"),
            config_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = listening_addr(&causeway.stderr()) {
                causeway.addr = addr;
                return causeway;
            }
            if let Ok(Some(status)) = causeway.child.try_wait() {
                panic!(
                    "causeway exited at start-up with {status}; stderr:\n{}",
                    causeway.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "causeway did not log its listening address within 10 s; stderr:\n{}",
                causeway.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote to stderr (its error log) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid
        );
    }

    /// Waits (bounded) until stderr contains `needle` `count` times or more; panics with the
    /// stderr otherwise.
    pub async fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.stderr().matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stderr did not show {needle:?} ({count}x) within {within:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on causeway") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Peak resident set size (`VmHWM` in /proc/PID/status), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid, "VmHWM:") * 1024
    }

    /// Current resident set size (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS:") * 1024
    }

    /// Every access-log line written so far, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.access_path).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("access line is JSON: {e}: {l}"))
            })
            .collect()
    }

    /// The access-log line of `request_id`, waiting briefly (bounded) for it to be written.
    pub async fn access_line(&self, request_id: &str) -> serde_json::Value {
        for _ in 0..250 {
            let lines: Vec<serde_json::Value> = self
                .access_lines()
                .into_iter()
                .filter(|l| l["request_id"] == request_id)
                .collect();
            if let Some(line) = lines.first() {
                assert_eq!(lines.len(), 1, "one access-log line per request: {lines:?}");
                return line.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no access-log line for {request_id} in {}",
            self.access_path.display()
        );
    }
}

impl Drop for Causeway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `causeway listening listen=Tcp(127.0.0.1:PORT)` line.
fn listening_addr(stderr: &str) -> Option<SocketAddr> {
    let line = stderr.lines().find(|l| l.contains("causeway listening"))?;
    let start = line.find("Tcp(")? + "Tcp(".len();
    let end = start + line[start..].find(')')?;
    line[start..end].parse().ok()
}

/// A `kB` field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {line:?}: {e}"))
}

/// Kills and reaps a child process on drop (a no-op once it has exited and been reaped).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `causeway ARGS...` to completion (bounded: 30 s) and returns status, stdout, stderr.
pub fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = ChildGuard(
        Command::new(binary())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("CAUSEWAY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the causeway binary"),
    );
    // Drain both pipes in threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.0.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait on causeway") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "causeway {args:?} did not finish within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("stdout reader thread");
    let stderr = stderr.join().expect("stderr reader thread");
    (status, stdout, stderr)
}
