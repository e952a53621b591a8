//! A real PHP-FPM pool for the FastCGI tests: a fresh temp dir holding a document root of test
//! scripts (`www/`) and a pool config, and `php-fpm8.2 -F -R -y <dir>/php-fpm.conf` running in
//! the foreground in its own process group. Dropping the guard stops PHP-FPM (SIGTERM, then
//! SIGKILL to the group), reaps it and removes the directory.
//!
//! PHP-FPM is required: on a machine without it every test using this fails with the command
//! that installs it, never skips.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The PHP-FPM binary the tests use.
pub const PHP_FPM: &str = "php-fpm8.2";
/// How to get it on Debian/Ubuntu.
pub const INSTALL: &str = "apt-get install -y php8.2-fpm";

/// The scripts of the document root, relative to `www/`.
pub const SCRIPTS: &[(&str, &str)] = &[
    ("hello.php", "<?php echo \"hello from php\";\n"),
    ("echo.php", "<?php echo file_get_contents('php://input');\n"),
    (
        "info.php",
        r#"<?php
$keys = ['SCRIPT_FILENAME', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_METHOD',
    'REQUEST_URI', 'CONTENT_TYPE', 'CONTENT_LENGTH', 'HTTP_HOST', 'HTTP_X_CUSTOM', 'HTTP_COOKIE',
    'REMOTE_ADDR', 'HTTPS', 'HTTP_PROXY', 'HTTP_X_REQUEST_ID', 'HTTP_TRANSFER_ENCODING',
    'APP_ENV', 'SERVER_PROTOCOL', 'HTTP_X_FORWARDED_FOR', 'HTTP_X_FORWARDED_PROTO', 'HTTP_VIA'];
$out = [];
foreach ($keys as $key) {
    $out[$key] = $_SERVER[$key] ?? null;
}
$out['_GET'] = (object) $_GET;
$out['_COOKIE'] = (object) $_COOKIE;
header('Content-Type: application/json');
echo json_encode($out);
"#,
    ),
    ("redirect.php", "<?php header('Location: /elsewhere');\n"),
    ("fatal.php", "<?php causeway_undefined_function();\n"),
    (
        "sleep.php",
        // `ms` (milliseconds) keeps the queueing tests short; `s` as the brief says.
        "<?php if (isset($_GET['ms'])) { usleep((int)$_GET['ms'] * 1000); } else { sleep((int)($_GET['s'] ?? 3)); } echo \"slept\";\n",
    ),
    (
        // Sends a head and 10 bytes at once, then sleeps before the rest: mid-body failures.
        "partial.php",
        "<?php while (ob_get_level()) { ob_end_flush(); } echo str_repeat('x', 10); flush(); sleep((int)($_GET['s'] ?? 3)); echo \"end\";\n",
    ),
    (
        "bighead.php",
        "<?php header('X-Big: ' . str_repeat('a', (int)($_GET['n'] ?? 100000))); echo \"big\";\n",
    ),
    (
        "index.php",
        "<?php echo \"front controller: \" . $_SERVER['REQUEST_URI'];\n",
    ),
    // Must never run: an "image" with PHP in it, the classic upload attack.
    ("uploads/evil.jpg", "<?php echo \"pwned\";\n"),
];

/// How to configure the pool.
#[derive(Clone, Debug)]
pub struct Pool {
    /// `pm.max_children` (with `pm = static`).
    pub max_children: u32,
    /// `listen.backlog`.
    pub backlog: u32,
    /// `request_terminate_timeout`, as PHP-FPM writes it ("2s"), if any.
    pub terminate_timeout: Option<&'static str>,
    /// Listen on `127.0.0.1:PORT` instead of `<dir>/php.sock`.
    pub tcp: bool,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_children: 2,
            backlog: 511,
            terminate_timeout: None,
            tcp: false,
        }
    }
}

/// Where the pool listens.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running PHP-FPM master and its pool. Dropping it stops and reaps PHP-FPM and removes `dir`.
pub struct PhpFpm {
    child: Option<Child>,
    /// The temp dir: `www/`, `php-fpm.conf`, `fpm.log`, `fpm.out`, the socket.
    pub dir: PathBuf,
    /// The document root.
    pub www: PathBuf,
    pub listen: Listen,
    pub pool: Pool,
}

/// The binary's path, or a panic naming the package to install.
pub fn binary() -> PathBuf {
    let candidates = [
        PathBuf::from("/usr/sbin").join(PHP_FPM),
        PathBuf::from("/usr/local/sbin").join(PHP_FPM),
    ];
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(PHP_FPM))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{PHP_FPM} not found (looked in /usr/sbin, /usr/local/sbin and PATH): these tests \
                 need a real PHP-FPM. Install it with `{INSTALL}` (the CI script .ci/run does)"
            )
        })
}

/// A free loopback port: bind port 0, read it, let it go.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

impl PhpFpm {
    /// Writes the document root and the pool config into a fresh temp dir and starts PHP-FPM;
    /// returns once its socket accepts connections (at most 5 s, else a panic with fpm.log).
    pub fn start(pool: Pool) -> PhpFpm {
        let binary = binary();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: a unix socket path must fit in 108 bytes.
        let dir = std::env::temp_dir().join(format!("cw-php-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let www = dir.join("www");
        for (name, text) in SCRIPTS {
            let path = www.join(name);
            std::fs::create_dir_all(path.parent().expect("script has a parent"))
                .expect("create the document root");
            std::fs::write(&path, text).expect("write a test script");
        }
        let listen = if pool.tcp {
            Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())))
        } else {
            Listen::Unix(dir.join("php.sock"))
        };
        let listen_text = match &listen {
            Listen::Unix(path) => path.display().to_string(),
            Listen::Tcp(addr) => addr.to_string(),
        };
        let mut conf = String::new();
        let d = dir.display();
        let _ = writeln!(conf, "[global]");
        let _ = writeln!(conf, "error_log = {d}/fpm.log");
        let _ = writeln!(conf, "daemonize = no");
        let _ = writeln!(conf, "pid = {d}/fpm.pid");
        let _ = writeln!(conf, "\n[www]");
        let _ = writeln!(conf, "listen = {listen_text}");
        let _ = writeln!(conf, "listen.backlog = {}", pool.backlog);
        let _ = writeln!(conf, "pm = static");
        let _ = writeln!(conf, "pm.max_children = {}", pool.max_children);
        if let Some(timeout) = pool.terminate_timeout {
            let _ = writeln!(conf, "request_terminate_timeout = {timeout}");
        }
        let _ = writeln!(conf, "catch_workers_output = yes");
        let _ = writeln!(conf, "clear_env = no");
        // PHP errors go to the FastCGI STDERR stream ("PHP message: ..."), not to a file and
        // not into the page: error_log is left unset on purpose.
        let _ = writeln!(conf, "php_admin_flag[log_errors] = on");
        let _ = writeln!(conf, "php_admin_flag[display_errors] = off");
        std::fs::write(dir.join("php-fpm.conf"), conf).expect("write php-fpm.conf");
        let out = std::fs::File::create(dir.join("fpm.out")).expect("create fpm.out");
        let err = out.try_clone().expect("clone fpm.out");
        let child = Command::new(&binary)
            .arg("-F")
            .arg("-R")
            .arg("-y")
            .arg(dir.join("php-fpm.conf"))
            // clear_env = no passes the master's environment to PHP: keep it empty, so a
            // HTTP_PROXY or HTTPS in the test runner's environment cannot show up in $_SERVER.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, so the workers can be killed with the master.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e}; install it with `{INSTALL}`",
                    binary.display()
                )
            });
        let mut fpm = PhpFpm {
            child: Some(child),
            dir,
            www,
            listen,
            pool,
        };
        fpm.wait_ready();
        fpm
    }

    /// Polls the listen address until a connection succeeds (≤ 5 s). The probe connection is
    /// closed at once, which a worker reads as EOF and drops.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let ok = match &self.listen {
                Listen::Unix(path) => UnixStream::connect(path).is_ok(),
                Listen::Tcp(addr) => {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                }
            };
            if ok {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{PHP_FPM} exited with {status} before accepting connections\n{}",
                        self.logs()
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                panic!(
                    "{PHP_FPM} did not accept connections on {:?} within 5 s\n{}",
                    self.listen,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `servers = [...]` entry for causeway.
    pub fn server(&self) -> String {
        match &self.listen {
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Tcp(addr) => addr.to_string(),
        }
    }

    /// The unix socket path (panics for a TCP pool).
    pub fn socket(&self) -> &Path {
        match &self.listen {
            Listen::Unix(path) => path,
            Listen::Tcp(addr) => panic!("pool listens on TCP {addr}"),
        }
    }

    /// PHP-FPM's own log (`error_log` of the global section).
    pub fn fpm_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fpm.log")).unwrap_or_default()
    }

    /// Whether fpm.log comes to contain `needle` within `timeout` (the master may write a
    /// line just after the event it describes reached us).
    pub fn log_mentions(&self, needle: &str, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.fpm_log().contains(needle) {
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// fpm.log and PHP-FPM's stdout/stderr, for panic messages.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("fpm.out")).unwrap_or_default();
        format!(
            "--- fpm.log ---\n{}\n--- php-fpm stdout/stderr ---\n{out}",
            self.fpm_log()
        )
    }

    fn signal_group(&self, signal: &str) {
        if let Some(child) = self.child.as_ref() {
            // The group id is the master's pid (process_group(0)).
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg("--")
                .arg(format!("-{}", child.id()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// A clean stop: SIGTERM to the master (which stops its workers and removes its unix
    /// socket), waiting for it to exit; SIGKILL to the group after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self.kill();
    }

    /// A crash: SIGKILL to master and workers at once. The unix socket file stays behind with
    /// nothing listening on it.
    pub fn kill(&mut self) {
        self.signal_group("KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        // The workers are not our children: wait until the last of them, which holds the
        // listening socket too, is gone and connecting is refused (a connection queued before
        // that would be reset, not refused).
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let refused = match &self.listen {
                Listen::Unix(path) => UnixStream::connect(path).is_err(),
                Listen::Tcp(addr) => {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err()
                }
            };
            if refused {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("PHP-FPM workers still accept connections 5 s after SIGKILL");
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
