//! Connecting a client to an endpoint, moving on to the next one when an endpoint refuses or does
//! not answer: the userspace mode's promise that one dead pod does not fail the client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proxy_core::proxy_port_metrics::PortStats;
use tokio::net::TcpStream;

use crate::balancer::RoundRobin;

/// How many endpoints to try for one client connection, and how long to wait for each: one
/// timeout per attempt, growing (upstream's userspace proxy waited 250 ms, 500 ms, 1 s, 2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The connect timeout of each attempt, in order; their count bounds the attempts.
    pub attempt_timeouts: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeouts: [250, 500, 1000, 2000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}

/// Why no endpoint could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The Service port has no endpoints (the listener should not have accepted: REJECT rules
    /// refuse such ports before they reach the proxy).
    #[error("no endpoints")]
    NoEndpoints,
    /// The retry policy allows no attempt.
    #[error("the retry policy allows no connect attempt")]
    NoAttempts,
    /// Every attempt failed; the last endpoint tried and its error.
    #[error("{attempts} connect attempt(s) failed, the last to {last}: {error}")]
    AllFailed {
        /// How many endpoints were tried.
        attempts: usize,
        /// The last endpoint tried.
        last: SocketAddr,
        /// Its connect error (a timeout is `TimedOut`).
        #[source]
        error: io::Error,
    },
}

/// Connects `client` to an endpoint `balancer` picks. When the connect is refused or times out,
/// the next attempt asks the balancer again with affinity reset (the client then sticks to the
/// endpoint that answered), up to the policy's attempts. Each failure is logged with the endpoint
/// and counted in `stats.failed_connects`.
///
/// The balancer's lock is held only to pick, never across a connect.
pub async fn connect_endpoint(
    balancer: &Mutex<RoundRobin>,
    client: IpAddr,
    policy: &RetryPolicy,
    stats: &PortStats,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut failure = None;
    for (attempt, &timeout) in policy.attempt_timeouts.iter().enumerate() {
        let picked = balancer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_endpoint(client, Instant::now(), attempt > 0);
        let Some(endpoint) = picked else {
            return Err(ConnectError::NoEndpoints);
        };
        let error = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Ok((stream, endpoint)),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        };
        stats.failed_connects.inc();
        tracing::warn!(%client, %endpoint, attempt = attempt + 1, "connect to endpoint failed: {error}");
        failure = Some((attempt + 1, endpoint, error));
    }
    match failure {
        Some((attempts, last, error)) => Err(ConnectError::AllFailed {
            attempts,
            last,
            error,
        }),
        None => Err(ConnectError::NoAttempts),
    }
}
