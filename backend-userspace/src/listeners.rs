//! The proxy's sockets: one listener per Service port, opened, updated and closed to match what
//! the proxier wants.
//!
//! Ports come from `--proxy-port-range` (or are ephemeral). Endpoint and affinity changes update
//! the port's balancer in place: the listener stays, and connections already carried are not
//! touched (each runs in its own task). A removed Service port closes its listener; its
//! established connections finish on their own. A port that cannot be bound is reported for that
//! Service port alone; the others are still served.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_core::proxy_port_metrics::PortStats;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::balancer::RoundRobin;
use crate::connect::{connect_endpoint, RetryPolicy};
use crate::splice::splice_bidirectional;
use crate::udp::UdpProxy;

/// The transport a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// A TCP listener; each connection is spliced to an endpoint.
    Tcp,
    /// A UDP socket; each client address gets a session.
    Udp,
}

/// What one Service port needs from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// TCP or UDP.
    pub transport: Transport,
    /// The endpoints to balance over, in proxy-core's order.
    pub endpoints: Vec<SocketAddr>,
    /// ClientIP affinity timeout, when the Service asks for it.
    pub affinity: Option<Duration>,
}

/// How the proxy's listeners behave.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The address listeners bind (the node's, or `0.0.0.0`).
    pub bind: IpAddr,
    /// `--proxy-port-range`; `None`: ephemeral ports.
    pub port_range: Option<RangeInclusive<u16>>,
    /// `--udp-timeout`: how long an idle UDP session lives.
    pub udp_timeout: Duration,
    /// Connect attempts for TCP clients.
    pub retry: RetryPolicy,
}

/// What an [`apply`](Listeners::apply) did.
#[derive(Debug)]
pub struct ApplyReport<K> {
    /// Service ports that got a listener, with its port.
    pub opened: Vec<(K, u16)>,
    /// Service ports whose endpoints or affinity changed (listener kept).
    pub updated: Vec<K>,
    /// Service ports whose listener was closed.
    pub closed: Vec<K>,
    /// Service ports that could not get a listener, and why.
    pub failed: Vec<(K, io::Error)>,
}

/// Where a new listener's counters come from (the metric families, keyed by Service port).
type StatsFor<K> = Box<dyn Fn(&K, Transport) -> PortStats + Send + Sync>;

/// The open listeners, keyed by Service port (`K`, e.g. proxy-core's `ServicePortName`).
pub struct Listeners<K> {
    settings: ListenerSettings,
    runtime: Handle,
    stats_for: StatsFor<K>,
    open: BTreeMap<K, Open>,
    /// Where the next port search in the range starts (spreads reuse of freed ports).
    next_port: u16,
}

#[derive(Debug)]
struct Open {
    spec: ListenerSpec,
    port: u16,
    balancer: Arc<Mutex<RoundRobin>>,
    task: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // Closes the listener; connections already accepted run in their own tasks.
        self.task.abort();
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for Listeners<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("settings", &self.settings)
            .field("open", &self.open)
            .field("next_port", &self.next_port)
            .finish_non_exhaustive()
    }
}

impl<K: Ord + Clone + Display> Listeners<K> {
    /// No listeners yet; they will be served on `runtime`.
    pub fn new(settings: ListenerSettings, runtime: Handle) -> Self {
        let next_port = settings.port_range.as_ref().map_or(0, |r| *r.start());
        Self {
            settings,
            runtime,
            stats_for: Box::new(|_, _| PortStats::default()),
            open: BTreeMap::new(),
            next_port,
        }
    }

    /// Counts each new listener's traffic into the counters `stats_for` gives for its Service
    /// port (the metric families); without it, counters nobody reads.
    pub fn with_stats(
        mut self,
        stats_for: impl Fn(&K, Transport) -> PortStats + Send + Sync + 'static,
    ) -> Self {
        self.stats_for = Box::new(stats_for);
        self
    }

    /// The port serving `key`, if it has a listener.
    pub fn port_of(&self, key: &K) -> Option<u16> {
        self.open.get(key).map(|o| o.port)
    }

    /// How many listeners are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Makes the open listeners match `desired`: new Service ports get a listener, changed
    /// ones an updated balancer (a changed transport gets a new listener), missing ones are
    /// closed. O(listeners + desired).
    pub fn apply(
        &mut self,
        desired: impl IntoIterator<Item = (K, ListenerSpec)>,
    ) -> ApplyReport<K> {
        let mut report = ApplyReport {
            opened: Vec::new(),
            updated: Vec::new(),
            closed: Vec::new(),
            failed: Vec::new(),
        };
        let mut previous = std::mem::take(&mut self.open);
        for (key, spec) in desired {
            match previous.remove(&key) {
                Some(open) if open.spec == spec => {
                    self.open.insert(key, open);
                }
                Some(mut open) if open.spec.transport == spec.transport => {
                    {
                        let mut rr = open.balancer.lock().unwrap_or_else(|e| e.into_inner());
                        if open.spec.affinity != spec.affinity {
                            *rr = RoundRobin::new(spec.affinity);
                        }
                        rr.set_endpoints(spec.endpoints.clone());
                    }
                    open.spec = spec;
                    report.updated.push(key.clone());
                    self.open.insert(key, open);
                }
                replaced => {
                    // New, or a different transport: a fresh listener (the old one closes when
                    // dropped, after the new one is bound so its port is not reused at once).
                    match self.open_listener(&key, spec) {
                        Ok(open) => {
                            report.opened.push((key.clone(), open.port));
                            self.open.insert(key, open);
                        }
                        Err(e) => {
                            tracing::warn!(service_port = %key, "cannot open a proxy listener: {e}");
                            report.failed.push((key, e));
                        }
                    }
                    drop(replaced);
                }
            }
        }
        report.closed.extend(previous.into_keys());
        report
    }

    fn open_listener(&mut self, key: &K, spec: ListenerSpec) -> io::Result<Open> {
        let (socket, port) = self.bind(spec.transport)?;
        let mut rr = RoundRobin::new(spec.affinity);
        rr.set_endpoints(spec.endpoints.clone());
        let balancer = Arc::new(Mutex::new(rr));
        let stats = (self.stats_for)(key, spec.transport);
        let _entered = self.runtime.enter();
        let task = match socket {
            Bound::Tcp(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let served = key.to_string();
                let retry = self.settings.retry.clone();
                self.runtime.spawn(serve_tcp(
                    listener,
                    Arc::clone(&balancer),
                    retry,
                    served,
                    stats,
                ))
            }
            Bound::Udp(socket) => {
                let socket = tokio::net::UdpSocket::from_std(socket)?;
                let proxy = Arc::new(
                    UdpProxy::new(socket, Arc::clone(&balancer), self.settings.udp_timeout)
                        .with_stats(stats),
                );
                let served = key.to_string();
                self.runtime.spawn(async move {
                    if let Err(e) = proxy.run().await {
                        tracing::warn!(service_port = %served, "UDP proxy stopped: {e}");
                    }
                })
            }
        };
        Ok(Open {
            spec,
            port,
            balancer,
            task,
        })
    }

    /// Binds a socket on a port from the range (the first free one from where the last search
    /// ended), or an ephemeral one. Ports of our own listeners are found taken by the kernel,
    /// like anyone else's: no scan of the open listeners.
    fn bind(&mut self, transport: Transport) -> io::Result<(Bound, u16)> {
        let Some(range) = self.settings.port_range.clone() else {
            return Bound::new(transport, SocketAddr::new(self.settings.bind, 0));
        };
        let size = usize::from(range.end() - range.start()) + 1;
        let mut last_error = None;
        for i in 0..size {
            let offset = (usize::from(self.next_port - range.start()) + i) % size;
            let port = range.start() + offset as u16;
            match Bound::new(transport, SocketAddr::new(self.settings.bind, port)) {
                Ok(bound) => {
                    self.next_port = if port == *range.end() {
                        *range.start()
                    } else {
                        port + 1
                    };
                    return Ok(bound);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no free {transport:?} port in {}-{}{}",
                range.start(),
                range.end(),
                last_error
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ),
        ))
    }
}

/// A socket bound (std, non-blocking) before it is handed to tokio.
enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Bound {
    fn new(transport: Transport, at: SocketAddr) -> io::Result<(Self, u16)> {
        let (bound, port) = match transport {
            Transport::Tcp => {
                let l = std::net::TcpListener::bind(at)?;
                let port = l.local_addr()?.port();
                (Bound::Tcp(l), port)
            }
            Transport::Udp => {
                let s = std::net::UdpSocket::bind(at)?;
                let port = s.local_addr()?.port();
                (Bound::Udp(s), port)
            }
        };
        match &bound {
            Bound::Tcp(l) => l.set_nonblocking(true)?,
            Bound::Udp(s) => s.set_nonblocking(true)?,
        }
        Ok((bound, port))
    }
}

/// Accepts clients and carries each to an endpoint in its own task.
async fn serve_tcp(
    listener: tokio::net::TcpListener,
    balancer: Arc<Mutex<RoundRobin>>,
    retry: RetryPolicy,
    served: String,
    stats: PortStats,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: keep serving after a pause rather than spin.
                tracing::warn!(service_port = %served, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let balancer = Arc::clone(&balancer);
        let retry = retry.clone();
        let served = served.clone();
        let stats = stats.clone();
        stats.connections.inc();
        stats.open.inc();
        tokio::spawn(async move {
            match connect_endpoint(&balancer, peer.ip(), &retry, &stats).await {
                Ok((endpoint, _)) => {
                    if let Err(e) = splice_bidirectional(&client, &endpoint, &stats).await {
                        tracing::debug!(service_port = %served, %peer, "connection ended: {e}");
                    }
                }
                Err(e) => {
                    stats.dropped.inc();
                    tracing::warn!(service_port = %served, %peer, "client dropped: {e}");
                }
            }
            stats.open.dec();
        });
    }
}
