//! Connect-phase targets: addresses and unix paths where `connect()` itself fails in one chosen
//! way (refused, no such socket, backlog full, permission denied). No request ever reaches them;
//! they exist so a proxy's connect step meets the real errno. Everything stays on loopback.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::TcpStream;

/// How long a probe connect may take before the accept queue counts as full. On loopback a
/// connect to a listener with room completes in microseconds; a dropped SYN is retried only
/// after a second.
const FILL_PROBE: Duration = Duration::from_millis(200);
/// Most filler connections made before giving up on filling a queue.
const MAX_FILLERS: usize = 64;

/// The loopback address the targets use: the listen address if it is loopback, else 127.0.0.1.
pub(super) fn loopback_ip(listen: IpAddr) -> IpAddr {
    if listen.is_loopback() {
        listen
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// A loopback port where nothing listens: bound to learn a free port, then closed. Another
/// process could take the port later; on a test machine that is unlikely, and the describe
/// text says what the port is for.
pub(super) fn refused(ip: IpAddr) -> io::Result<SocketAddr> {
    std::net::TcpListener::bind((ip, 0))?.local_addr()
}

/// A TCP listener that never accepts, with `listen(0)` and its accept queue filled by
/// connections kept in `held`. Linux then drops new SYNs (`tcp_conn_request`: accept queue
/// full), so a new connect times out instead of failing. (With the non-default
/// `net.ipv4.tcp_abort_on_overflow = 1` it would answer RST instead; the probe below would
/// then fail with ConnectionRefused and `start` with it.)
pub(super) async fn backlog_full(ip: IpAddr, held: &mut Vec<Socket>) -> io::Result<SocketAddr> {
    let listener = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )?;
    listener.bind(&SocketAddr::new(ip, 0).into())?;
    listener.listen(0)?;
    let addr = listener
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("backlog listener has no inet address"))?;
    held.push(listener);
    for _ in 0..MAX_FILLERS {
        match tokio::time::timeout(FILL_PROBE, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(Socket::from(stream.into_std()?)),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(addr), // SYN dropped: the queue is full
        }
    }
    Err(io::Error::other("could not fill the TCP accept queue"))
}

/// Removes a socket file left by an earlier run at `path`; anything else there is left alone
/// (and bind will say so).
pub(super) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn unix_listener(path: &Path, backlog: i32) -> io::Result<Socket> {
    remove_stale_socket(path)?;
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    listener.bind(&SockAddr::unix(path)?)?;
    listener.listen(backlog)?;
    Ok(listener)
}

/// Connects without blocking; a unix connect either completes at once or fails at once.
fn unix_connect(path: &Path) -> io::Result<Socket> {
    let client = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    client.set_nonblocking(true)?;
    client.connect(&SockAddr::unix(path)?)?;
    Ok(client)
}

/// A unix listener at `path` with `listen(1)` that never accepts, its queue filled by
/// connections kept in `held`, so a new non-blocking connect fails with EAGAIN (`WouldBlock`),
/// as PHP-FPM's socket does when every worker is busy and its backlog is full.
pub(super) fn backlog_full_unix(path: &Path, held: &mut Vec<Socket>) -> io::Result<()> {
    held.push(unix_listener(path, 1)?);
    for _ in 0..MAX_FILLERS {
        match unix_connect(path) {
            Ok(filler) => held.push(filler),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not fill the unix listen queue"))
}

/// A unix listener at `path` whose socket file has mode 000, so connect() fails with EACCES.
/// Root (more exactly CAP_DAC_OVERRIDE) ignores file modes: a probe connect tells, and then
/// there is no such target (`None`) and the file is removed.
pub(super) fn permission_denied(
    path: &Path,
    held: &mut Vec<Socket>,
) -> io::Result<Option<PathBuf>> {
    let listener = unix_listener(path, 16)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000))?;
    match unix_connect(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            held.push(listener);
            Ok(Some(path.to_path_buf()))
        }
        Ok(_) | Err(_) => {
            drop(listener);
            std::fs::remove_file(path)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each connect-phase target fails the way its name says, for a tokio client.

    use std::io;
    use std::time::Duration;

    use tokio::net::{TcpStream, UnixStream};
    use tokio::time::timeout;

    use crate::faults::testing::faults;

    #[tokio::test]
    async fn refused_target_refuses() {
        let f = faults().await;
        let err = TcpStream::connect(f.refused)
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn missing_socket_is_not_found() {
        let f = faults().await;
        let err = UnixStream::connect(&f.missing_socket)
            .await
            .expect_err("no such socket");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn backlog_full_connect_times_out() {
        let f = faults().await;
        assert!(f.backlog_full.ip().is_loopback());
        let attempt = timeout(
            Duration::from_millis(300),
            TcpStream::connect(f.backlog_full),
        )
        .await;
        assert!(attempt.is_err(), "connect must hang, got {attempt:?}");
    }

    #[tokio::test]
    async fn backlog_full_unix_connect_would_block() {
        let f = faults().await;
        let err = UnixStream::connect(&f.backlog_full_unix)
            .await
            .expect_err("queue is full");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    /// Whether this process runs with effective uid 0, from /proc (no libc needed).
    fn running_as_root() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid_line = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or("");
        uid_line.split_whitespace().nth(1) == Some("0")
    }

    #[tokio::test]
    async fn permission_denied_socket_exists_exactly_when_not_root() {
        let f = faults().await;
        match &f.permission_denied_socket {
            Some(path) => {
                let err = UnixStream::connect(path).await.expect_err("mode 000");
                assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            }
            None => assert!(running_as_root(), "only root cannot be denied"),
        }
    }
}
