//! A real Node.js HTTP server for the keep-alive race tests: a fresh temp dir holding
//! `server.js`, and `node server.js PORT` running as a child process. The server keeps Node's
//! defaults except `server.keepAliveTimeout = 1000` (so it announces `Keep-Alive: timeout=1` and
//! closes an idle connection about 1 s + Node's own `keepAliveTimeoutBuffer` after a response),
//! and a `?busy_ms=N` query that blocks the event loop like a CPU-bound handler.
//! Dropping the guard kills and reaps Node and removes the directory.
//!
//! Node is required: on a machine without it every test using this fails with the command that
//! installs it, never skips.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The Node binary the tests use.
pub const NODE: &str = "node";
/// How to get it on Debian/Ubuntu.
pub const INSTALL: &str = "apt-get install -y nodejs";

/// The server: GET answers `hello from node`, POST answers `got N bytes` (the body length), both
/// 200. `?busy_ms=N` (at most 1000) first blocks the event loop for N ms, as a CPU-bound handler
/// does. Port 0 lets Node pick one; it prints `listening PORT` once it accepts connections.
pub const SERVER_JS: &str = r#"'use strict';
const http = require('http');
const port = Number(process.argv[2] || 0);
const server = http.createServer((req, res) => {
  // `?busy_ms=N`: a CPU-bound handler that blocks the event loop for N ms before answering.
  const busy = Number(new URL(req.url, 'http://node').searchParams.get('busy_ms') || 0);
  if (busy > 0) {
    const until = performance.now() + Math.min(busy, 1000);
    while (performance.now() < until) { /* busy */ }
  }
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => {
    const body = req.method === 'POST' ? `got ${received} bytes\n` : 'hello from node\n';
    res.writeHead(200, {
      'content-type': 'text/plain',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  });
});
// Only this: keepAliveTimeoutBuffer (where Node has it) and everything else stay at defaults.
server.keepAliveTimeout = 1000;
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
"#;

/// A running `node server.js`. Dropping it kills and reaps Node and removes its directory.
pub struct Node {
    child: Option<Child>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

/// `node --version`, or a panic saying how to install Node.
pub fn version() -> String {
    let output = Command::new(NODE)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`{NODE}` not found ({e}): the keep-alive race tests need a real Node.js \
                 backend. Install it with `{INSTALL}` (or run `bash .ci/run`)."
            )
        });
    assert!(
        output.status.success(),
        "`{NODE} --version` failed ({}): install Node.js with `{INSTALL}`",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Node {
    /// Writes `server.js` into a fresh temp dir and starts it on a port Node picks, waiting up
    /// to 10 s for its `listening` line.
    pub fn start() -> Node {
        let version = version();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("causeway-test-node-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Node test dir");
        std::fs::write(dir.join("server.js"), SERVER_JS).expect("write server.js");

        let mut child = Command::new(NODE)
            .arg("server.js")
            .arg("0")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn `{NODE} server.js` ({e}); install Node.js with `{INSTALL}`")
            });
        let stdout = child.stdout.take().expect("Node's stdout is piped");
        let mut stderr = child.stderr.take().expect("Node's stderr is piped");
        let mut node = Node {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };

        // Read stdout in a thread so the wait for "listening" is bounded.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_text = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix("listening ") {
                        let port: u16 = port.trim().parse().expect("Node prints its port");
                        node.addr = SocketAddr::from(([127, 0, 0, 1], port));
                        eprintln!("node {version} listening on {}", node.addr);
                        return node;
                    }
                }
                Err(_) => {
                    node.kill();
                    let stderr = stderr_text.join().unwrap_or_default();
                    panic!(
                        "`{NODE} server.js` did not print \"listening\" within 10 s; stderr:\n{stderr}"
                    );
                }
            }
        }
    }

    /// The server as a causeway `servers` entry.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Measures how long after a response Node really closes an idle keep-alive connection:
/// one GET straight to Node on a raw socket, then the time from the end of the response to
/// EOF (or reset). Also returns the response head, to check the `Keep-Alive` header.
pub fn measure_idle_close(addr: SocketAddr) -> (Duration, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to Node");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    stream
        .write_all(b"GET /calibrate HTTP/1.1\r\nHost: node\r\n\r\n")
        .expect("send a GET to Node");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let response_end = loop {
        let n = stream.read(&mut buf).expect("read Node's response");
        assert!(n > 0, "Node closed before answering");
        received.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("numeric content-length"))
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                break Instant::now();
            }
        }
    };
    let head_end = find(&received, b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    (response_end.elapsed(), head)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
