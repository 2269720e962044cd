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
//!
//! Pipes are borrowed, not owned: a direction takes a pipe from a shared pool only once its
//! socket has data, and gives it back once the pipe is empty again. An idle connection holds its
//! two sockets and no pipe, so 10,000 idle connections cost 20,000 descriptors, not 60,000, and no
//! pipe buffers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use nix::unistd::pipe2;
use prometheus_client::metrics::counter::Counter;
use proxy_core::proxy_port_metrics::PortStats;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The size pipes are grown to (the unprivileged maximum, `fs.pipe-max-size`'s default): fewer,
/// larger splices per byte carried. A pipe that cannot grow keeps the default 64 KiB.
const PIPE_SIZE: usize = 1 << 20;

/// At most this much is moved per splice from a socket: at most what the pipe holds, so a read
/// into an empty pipe never blocks on the pipe.
const CHUNK_DEFAULT: usize = 64 * 1024;

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
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // Wait for data without a pipe; take one only to move what arrived.
        from.ready(Interest::READABLE).await?;
        let pipe = Pipe::take()?;
        let read = match from.try_io(Interest::READABLE, || {
            splice(
                from.as_fd(),
                None,
                pipe.input.as_fd(),
                None,
                pipe.capacity,
                flags,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                continue;
            }
            Err(e) => return Err(e),
        };
        if read == 0 {
            pipe.give_back();
            // EOF from `from`: pass the half-close on. The peer may be gone already (ENOTCONN);
            // nothing is lost then.
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            return Ok(total);
        }
        let mut pending = read;
        while pending > 0 {
            // On an error the pipe is dropped with what it holds: the connection is over.
            let written = retry_when_ready(to, Interest::WRITABLE, || {
                splice(pipe.output.as_fd(), None, to.as_fd(), None, pending, flags)
            })
            .await?;
            pending -= written;
            total += written as u64;
            counted.inc_by(written as u64);
        }
        pipe.give_back();
    }
}

/// A pipe to splice through, from the shared pool.
struct Pipe {
    output: OwnedFd,
    input: OwnedFd,
    /// How many bytes it holds.
    capacity: usize,
}

/// Empty pipes kept for reuse. Bounded: beyond it, returned pipes are closed.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
/// How many empty pipes the pool keeps (enough for that many directions moving data at once).
const POOL_MAX: usize = 1024;

impl Pipe {
    /// An empty pipe: from the pool, or a new one.
    fn take() -> io::Result<Self> {
        if let Some(p) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(p);
        }
        let (output, input) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("pipe2: {e}")))?;
        let size = i32::try_from(PIPE_SIZE).unwrap_or(i32::MAX);
        let capacity = fcntl(&input, FcntlArg::F_SETPIPE_SZ(size))
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(CHUNK_DEFAULT);
        Ok(Self {
            output,
            input,
            capacity,
        })
    }

    /// Returns an empty pipe to the pool (callers only give back pipes they drained).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
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
