//! Carrying a TCP connection's bytes between the client and the endpoint with `splice(2)`.
//!
//! Each direction moves data socket → pipe → socket inside the kernel: no userspace buffer, no
//! copy through it, which is what lets a userspace proxy approach a direct connection's
//! throughput. The sockets stay non-blocking under tokio: a splice is tried when tokio reports the
//! socket ready, and `EAGAIN` clears that readiness. The pipe is drained completely before the
//! next read, so `EAGAIN` always means the socket, never the pipe.
//!
//! When one side finishes sending (EOF), the other side's write half is shut down and the other
//! direction carries on: half-closed connections work. Idle connections are never timed out here.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use nix::unistd::pipe2;
use prometheus_client::metrics::counter::Counter;
use proxy_core::proxy_port_metrics::PortStats;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this much is moved per splice: a pipe's default capacity, so a read into an empty pipe
/// never blocks on the pipe.
const CHUNK: usize = 64 * 1024;

/// Bytes carried in each direction of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the endpoint.
    pub client_to_endpoint: u64,
    /// From the endpoint back to the client.
    pub endpoint_to_client: u64,
}

/// Carries bytes both ways between `client` and `endpoint` until both directions have ended
/// (each side sent EOF), or until either fails (a reset), which ends both: the caller then drops
/// the sockets. Returns the bytes carried each way; `stats` counts them as they pass (a
/// long-lived connection shows in the byte counters before it ends).
pub async fn splice_bidirectional(
    client: &TcpStream,
    endpoint: &TcpStream,
    stats: &PortStats,
) -> io::Result<Transferred> {
    let (up, down) = tokio::try_join!(
        one_way(client, endpoint, &stats.bytes_to_endpoint),
        one_way(endpoint, client, &stats.bytes_to_client)
    )?;
    Ok(Transferred {
        client_to_endpoint: up,
        endpoint_to_client: down,
    })
}

/// One direction: `from` → pipe → `to`, until `from` sends EOF; then `to`'s write half is shut
/// down so the far side sees the half-close. Every chunk written is added to `counted`.
async fn one_way(from: &TcpStream, to: &TcpStream, counted: &Counter) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("pipe2: {e}")))?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let read = retry_when_ready(from, Interest::READABLE, || {
            splice(from.as_fd(), None, pipe_in.as_fd(), None, CHUNK, flags)
        })
        .await?;
        if read == 0 {
            // EOF from `from`: pass the half-close on. The peer may be gone already (ENOTCONN);
            // nothing is lost then.
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            return Ok(total);
        }
        let mut pending = read;
        while pending > 0 {
            let written = retry_when_ready(to, Interest::WRITABLE, || {
                splice(pipe_out.as_fd(), None, to.as_fd(), None, pending, flags)
            })
            .await?;
            pending -= written;
            total += written as u64;
            counted.inc_by(written as u64);
        }
    }
}

/// Runs `op` on `socket` once tokio says it is ready for `interest`, again after each `EAGAIN`.
async fn retry_when_ready(
    socket: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> nix::Result<usize>,
) -> io::Result<usize> {
    loop {
        socket.ready(interest).await?;
        match socket.try_io(interest, || op().map_err(io::Error::from)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
