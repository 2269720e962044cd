//! What the userspace mode wants for a state: which listeners exist (one per Service port and
//! endpoint set) and where each kind of traffic to a Service port goes.
//!
//! Both the listeners and the REDIRECT rules are derived here from proxy-core's
//! [`PortVerdict`], so this mode rejects, drops and forwards exactly the traffic iptables mode
//! does.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use proxy_core::datapath::{PortVerdict, TrafficTarget};
use proxy_core::proxy_port_metrics::ProxyPortLabels;
use proxy_core::{Protocol, ServicePortEntry, ServicePortName};

use crate::listeners::{ListenerSpec, Transport};

/// Which endpoints a listener balances over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSet {
    /// Every usable endpoint in the cluster (Cluster traffic policy).
    Cluster,
    /// This node's endpoints only (a Local traffic policy).
    Local,
}

impl EndpointSet {
    /// `cluster` or `local`, for labels and the plan.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSet::Cluster => "cluster",
            EndpointSet::Local => "local",
        }
    }
}

/// One listener: a Service port and the endpoint set it balances over. A Service port whose
/// internal and external traffic policies pick different sets has two.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    /// The Service port.
    pub port: ServicePortName,
    /// The endpoints it balances over.
    pub endpoints: EndpointSet,
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.endpoints {
            EndpointSet::Cluster => write!(f, "{}", self.port),
            EndpointSet::Local => write!(f, "{} (local endpoints)", self.port),
        }
    }
}

impl ListenerKey {
    /// The metric labels of this listener's counters.
    pub fn labels(&self, transport: Transport) -> ProxyPortLabels {
        ProxyPortLabels {
            service_port: self.port.to_string(),
            protocol: match transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            },
            endpoints: self.endpoints.as_str(),
        }
    }
}

/// Where one kind of traffic to a Service port goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the listener balancing over this endpoint set (a REDIRECT to its port).
    Listener(EndpointSet),
    /// Refused at once: the Service port has no endpoints (REJECT).
    Reject,
    /// Dropped: a Local policy with no endpoint on this node, so the client tries another.
    Drop,
}

impl Route {
    fn of(target: TrafficTarget) -> Self {
        match target {
            TrafficTarget::ClusterEndpoints => Route::Listener(EndpointSet::Cluster),
            TrafficTarget::LocalEndpoints => Route::Listener(EndpointSet::Local),
            TrafficTarget::Reject => Route::Reject,
            TrafficTarget::Drop => Route::Drop,
        }
    }
}

/// The routes of one Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRoutes {
    /// The transport its listeners serve.
    pub transport: Transport,
    /// Traffic to the cluster IP.
    pub internal: Route,
    /// Traffic to node ports, external IPs and load-balancer IPs, when the port has any.
    pub external: Option<Route>,
}

/// The routes of `entry`, or `None` for a protocol the userspace proxy cannot carry (SCTP).
pub fn routes(entry: &ServicePortEntry) -> Option<PortRoutes> {
    let transport = match entry.service.protocol {
        Protocol::Tcp => Transport::Tcp,
        Protocol::Udp => Transport::Udp,
        Protocol::Sctp => return None,
    };
    let verdict = PortVerdict::of(entry);
    Some(PortRoutes {
        transport,
        internal: Route::of(verdict.internal),
        external: entry
            .service
            .externally_accessible()
            .then(|| Route::of(verdict.external)),
    })
}

/// The listener specs `entry` needs, keyed (at most two: one per endpoint set its routes use).
/// Ports without endpoints keep no listener: REJECT refuses their clients before any socket.
pub fn listeners(
    name: &ServicePortName,
    entry: &ServicePortEntry,
    routes: &PortRoutes,
    mut add: impl FnMut(ListenerKey, ListenerSpec),
) {
    let affinity = entry
        .service
        .affinity_timeout_seconds()
        .map(|s| Duration::from_secs(u64::from(s)));
    let mut sets = [None, None];
    for route in std::iter::once(routes.internal).chain(routes.external) {
        if let Route::Listener(set) = route {
            sets[set as usize] = Some(set);
        }
    }
    for set in sets.into_iter().flatten() {
        let endpoints: Vec<SocketAddr> = match set {
            EndpointSet::Cluster => entry
                .cluster_endpoints()
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect(),
            EndpointSet::Local => entry
                .local_endpoints()
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect(),
        };
        add(
            ListenerKey {
                port: name.clone(),
                endpoints: set,
            },
            ListenerSpec {
                transport: routes.transport,
                endpoints,
                affinity,
            },
        );
    }
}

/// Where [`write_plan`] starts numbering without a port range: Linux's first ephemeral port.
pub const FIRST_EPHEMERAL_PORT: u16 = 32768;

/// Writes the userspace mode's plan for `state` (`kproxy render --proxy-mode userspace`): the
/// listeners as comment lines (Service port, endpoint set, transport, proxy port, endpoints,
/// affinity), then the exact iptables-restore input. Ports are numbered in order from the range's
/// start (or [`FIRST_EPHEMERAL_PORT`]), as a node with all of them free would assign them; a
/// listener beyond the range gets none, and so a REJECT, as on a node. Node ports answer on
/// `node_ports`.
pub fn write_plan(
    state: &proxy_core::ProxyState,
    port_range: Option<std::ops::RangeInclusive<u16>>,
    node_ports: &proxy_core::datapath::NodePortAddresses,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    let range = port_range.unwrap_or(FIRST_EPHEMERAL_PORT..=u16::MAX);
    let mut next = Some(*range.start());
    let mut ports: BTreeMap<ListenerKey, u16> = BTreeMap::new();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# userspace proxy listeners (ports numbered from {}; a node assigns free ports from --proxy-port-range)",
        range.start()
    );
    for (name, entry) in state.service_ports() {
        let Some(r) = routes(entry) else {
            let _ = writeln!(text, "# {name}: SCTP, not proxied");
            continue;
        };
        listeners(name, entry, &r, |key, spec| {
            let port = next.filter(|p| range.contains(p));
            next = port.and_then(|p| p.checked_add(1));
            let _ = write!(
                text,
                "# {key} {} -> ",
                match spec.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                }
            );
            match port {
                Some(p) => {
                    let _ = write!(text, "{p}:");
                    ports.insert(key, p);
                }
                None => text.push_str("(no free port):"),
            }
            for e in &spec.endpoints {
                let _ = write!(text, " {e}");
            }
            if let Some(a) = spec.affinity {
                let _ = write!(text, " (ClientIP affinity {}s)", a.as_secs());
            }
            text.push('\n');
        });
    }
    out.write_all(text.as_bytes())?;
    let mut rules = String::new();
    crate::rules::render(
        state,
        |k| ports.get(k).copied(),
        node_ports,
        &mut rules,
        &mut String::new(),
    );
    out.write_all(rules.as_bytes())
}
