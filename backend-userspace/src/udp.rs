//! The UDP side of a Service port: a session per client address, each with its own socket
//! connected to the endpoint the balancer chose, replies sent back from the Service port's socket,
//! and sessions ended after a period without traffic (`--udp-timeout`).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_core::proxy_port_metrics::PortStats;
use tokio::net::UdpSocket;

use crate::balancer::RoundRobin;

/// The largest datagram carried (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// One Service port's UDP proxy: datagrams from a client go to its session's endpoint, replies go
/// back to the client from the Service port's socket (so REDIRECTed traffic's replies are
/// translated back by conntrack).
#[derive(Debug)]
pub struct UdpProxy {
    socket: Arc<UdpSocket>,
    balancer: Arc<Mutex<RoundRobin>>,
    idle_timeout: Duration,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
    /// What the sessions' activity clocks count from.
    epoch: Instant,
    /// Datagrams dropped because no session could be opened or the send failed.
    dropped: AtomicU64,
    /// The Service port's metrics: sessions as connections, bytes, drops.
    stats: PortStats,
}

/// A client's session: the socket connected to its endpoint and when traffic last passed.
#[derive(Debug, Clone)]
struct Session {
    upstream: Arc<UdpSocket>,
    endpoint: SocketAddr,
    /// Milliseconds since the proxy's epoch at the last datagram, either way.
    last_active: Arc<AtomicU64>,
}

impl UdpProxy {
    /// A proxy serving `socket` (bound to the Service port's proxy port), balancing with
    /// `balancer`, ending sessions after `idle_timeout` without traffic.
    pub fn new(
        socket: UdpSocket,
        balancer: Arc<Mutex<RoundRobin>>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            socket: Arc::new(socket),
            balancer,
            idle_timeout,
            sessions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            dropped: AtomicU64::new(0),
            stats: PortStats::default(),
        }
    }

    /// Counts into `stats` (sessions opened and open, bytes each way, dropped datagrams).
    pub fn with_stats(mut self, stats: PortStats) -> Self {
        self.stats = stats;
        self
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many client sessions are open.
    pub fn sessions(&self) -> usize {
        self.lock_sessions().len()
    }

    /// How many datagrams were dropped (no endpoints, no socket, or the send failed): for the
    /// per-Service-port metric.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Serves datagrams until the socket fails. A datagram whose session cannot be opened (no
    /// endpoints, no socket) is dropped with a warning, as the kernel would drop it.
    pub async fn run(self: Arc<Self>) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, client) = self.socket.recv_from(&mut buf).await?;
            let session = match self.session_for(client).await {
                Ok(s) => s,
                Err(e) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.stats.dropped.inc();
                    tracing::warn!(%client, "UDP datagram dropped: {e}");
                    continue;
                }
            };
            session.last_active.store(self.now_ms(), Ordering::Relaxed);
            if let Err(e) = session.upstream.send(&buf[..len]).await {
                // e.g. ECONNREFUSED from an earlier ICMP unreachable: the next datagram opens a
                // session to another endpoint.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped.inc();
                self.stats.failed_connects.inc();
                tracing::warn!(%client, endpoint = %session.endpoint, "UDP send to endpoint failed: {e}");
                self.end_session(client, &session);
            } else {
                self.stats.bytes_to_endpoint.inc_by(len as u64);
            }
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The client's session, opened (endpoint picked, socket connected, reply task started) when
    /// it has none.
    async fn session_for(self: &Arc<Self>, client: SocketAddr) -> io::Result<Session> {
        if let Some(s) = self.lock_sessions().get(&client) {
            return Ok(s.clone());
        }
        let endpoint = self
            .balancer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_endpoint(client.ip(), Instant::now(), false)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no endpoints"))?;
        let unspecified: SocketAddr = if endpoint.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let upstream = UdpSocket::bind(unspecified).await?;
        upstream.connect(endpoint).await?;
        let session = Session {
            upstream: Arc::new(upstream),
            endpoint,
            last_active: Arc::new(AtomicU64::new(self.now_ms())),
        };
        self.lock_sessions().insert(client, session.clone());
        self.stats.connections.inc();
        self.stats.open.inc();
        tokio::spawn(Arc::clone(self).relay_replies(client, session.clone()));
        Ok(session)
    }

    /// Sends the endpoint's replies back to `client` until the session has been idle for the
    /// timeout (traffic either way counts) or its socket fails.
    async fn relay_replies(self: Arc<Self>, client: SocketAddr, session: Session) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut wait = self.idle_timeout;
        loop {
            match tokio::time::timeout(wait, session.upstream.recv(&mut buf)).await {
                Ok(Ok(len)) => {
                    session.last_active.store(self.now_ms(), Ordering::Relaxed);
                    wait = self.idle_timeout;
                    match self.socket.send_to(&buf[..len], client).await {
                        Ok(_) => {
                            self.stats.bytes_to_client.inc_by(len as u64);
                        }
                        Err(e) => tracing::warn!(%client, "UDP reply to client failed: {e}"),
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(%client, endpoint = %session.endpoint, "UDP session ended: {e}");
                    break;
                }
                Err(_) => {
                    // The client may have sent since: wait out the rest of its idle time.
                    let idle = Duration::from_millis(
                        self.now_ms()
                            .saturating_sub(session.last_active.load(Ordering::Relaxed)),
                    );
                    match self.idle_timeout.checked_sub(idle) {
                        Some(rest) if !rest.is_zero() => wait = rest,
                        _ => break,
                    }
                }
            }
        }
        self.end_session(client, &session);
        self.stats.open.dec();
    }

    /// Removes `client`'s session if it is still `session` (a newer one is left alone).
    fn end_session(&self, client: SocketAddr, session: &Session) {
        let mut sessions = self.lock_sessions();
        if sessions
            .get(&client)
            .is_some_and(|s| Arc::ptr_eq(&s.upstream, &session.upstream))
        {
            sessions.remove(&client);
        }
    }
}
