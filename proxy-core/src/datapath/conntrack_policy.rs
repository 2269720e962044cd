//! Which conntrack entries a sync leaves stale: the policy, separate from how entries are listed
//! and deleted (ctnetlink, in `kproxy-netlink`).
//!
//! The kernel deletes conntrack entries only by exact tuple, so cleanup is: list the family's
//! entries, pick the stale ones here, delete each. Two rules, upstream's:
//! [`StaleFlows::for_diff`] for a partial sync (the diff's cleanups) and [`StaleFlows::for_state`]
//! for a full sync, e.g. after a restart (every UDP flow to a service that does not go to one of
//! its serving endpoints). [`StaleFlows`] judges one entry at a time, so a dump is judged as it
//! streams. Every mode that NATs UDP (iptables, IPVS, nftables) applies the same policy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::diff::{ConntrackCleanup, ConntrackTarget};
use crate::state::{ProxyState, ServicePortEntry};

/// IANA protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// One conntrack entry, as much of it as cleanup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub protocol: u8,
    /// Original direction: the client.
    pub orig_src: SocketAddr,
    /// Original direction: where the client sent it (a service address before DNAT).
    pub orig_dst: SocketAddr,
    /// Reply direction source: where the packet really went (the endpoint after DNAT).
    pub reply_src: SocketAddr,
    /// Conntrack zone.
    pub zone: u16,
}

impl Flow {
    /// Whether the flow was translated (its reply comes from somewhere other than where it went).
    pub fn is_dnat(&self) -> bool {
        self.reply_src != self.orig_dst
    }
}

/// Decides, one entry at a time, which conntrack entries a sync leaves stale.
///
/// Built once per sync in O(UDP Service ports + cleanups); [`is_stale`](Self::is_stale) is O(1).
/// A dump can then be judged as the kernel streams it, and only the stale entries are kept: memory
/// grows with what is deleted, never with the size of the table.
#[derive(Debug, Default)]
pub struct StaleFlows<'a> {
    /// The diff's cleanups by service address and port: endpoint to match, or any.
    diff_by_ip: HashMap<(IpAddr, u16), Vec<Option<IpAddr>>>,
    /// The diff's cleanups by node port.
    diff_by_node_port: HashMap<u16, Vec<Option<IpAddr>>>,
    /// On a full sync: UDP Service ports by address and port, and by node port.
    state_by_ip: HashMap<(IpAddr, u16), &'a ServicePortEntry>,
    state_by_node_port: HashMap<u16, &'a ServicePortEntry>,
}

impl<'a> StaleFlows<'a> {
    /// The policy after a sync: the diff's cleanups, and on a `full` sync also every entry that
    /// contradicts `state` (a full sync may follow a restart or a failure, when no diff says what
    /// changed).
    pub fn new(state: &'a ProxyState, cleanups: &[ConntrackCleanup], full: bool) -> Self {
        let mut out = Self::for_diff(cleanups);
        if full {
            out.add_state(state);
        }
        out
    }

    /// Upstream's rule for a partial sync: entries to each cleanup's target, all of them or only
    /// those translated to the given endpoint. UDP only.
    pub fn for_diff(cleanups: &[ConntrackCleanup]) -> Self {
        let mut out = Self::default();
        for c in cleanups {
            match c.target {
                ConntrackTarget::ServiceIp { ip, port } => out
                    .diff_by_ip
                    .entry((ip, port))
                    .or_default()
                    .push(c.endpoint),
                ConntrackTarget::NodePort { port } => out
                    .diff_by_node_port
                    .entry(port)
                    .or_default()
                    .push(c.endpoint),
            }
        }
        out
    }

    /// Upstream's rule for a full sync: UDP entries to a service address or node port that were
    /// translated to something that is not a serving endpoint of that service, or were not
    /// translated although the service now has endpoints (created while it had none).
    pub fn for_state(state: &'a ProxyState) -> Self {
        let mut out = Self::default();
        out.add_state(state);
        out
    }

    fn add_state(&mut self, state: &'a ProxyState) {
        for (name, entry) in state.service_ports() {
            if name.protocol != crate::model::Protocol::Udp {
                continue;
            }
            for ip in entry.service.service_ips() {
                self.state_by_ip.insert((ip, entry.service.port), entry);
            }
            if let Some(np) = entry.service.node_port {
                self.state_by_node_port.insert(np, entry);
            }
        }
    }

    /// Whether no entry can be stale (no cleanup, no UDP Service port): the dump can be skipped.
    pub fn is_empty(&self) -> bool {
        self.diff_by_ip.is_empty()
            && self.diff_by_node_port.is_empty()
            && self.state_by_ip.is_empty()
            && self.state_by_node_port.is_empty()
    }

    /// Whether `f` is stale.
    pub fn is_stale(&self, f: &Flow) -> bool {
        f.protocol == IPPROTO_UDP && (self.stale_for_diff(f) || self.stale_for_state(f))
    }

    fn stale_for_diff(&self, f: &Flow) -> bool {
        let hit = |rules: Option<&Vec<Option<IpAddr>>>| {
            rules.is_some_and(|rules| {
                rules.iter().any(|ep| match ep {
                    None => true,
                    Some(ep) => f.is_dnat() && f.reply_src.ip() == *ep,
                })
            })
        };
        hit(self.diff_by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())))
            || hit(self.diff_by_node_port.get(&f.orig_dst.port()))
    }

    fn stale_for_state(&self, f: &Flow) -> bool {
        let serving = |entry: &ServicePortEntry, to: SocketAddr| {
            entry
                .endpoints
                .binary_search_by(|e| (e.ip, e.port).cmp(&(to.ip(), to.port())))
                .is_ok_and(|i| entry.endpoints[i].serving)
        };
        if let Some(entry) = self.state_by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())) {
            if f.is_dnat() {
                return !serving(entry, f.reply_src);
            }
            return entry.selection.has_any_endpoints;
        }
        match self.state_by_node_port.get(&f.orig_dst.port()) {
            Some(entry) if f.is_dnat() => !serving(entry, f.reply_src),
            _ => false,
        }
    }
}

/// [`StaleFlows::for_diff`] over a list.
pub fn stale_for_diff(flows: &[Flow], cleanups: &[ConntrackCleanup]) -> Vec<Flow> {
    let policy = StaleFlows::for_diff(cleanups);
    flows
        .iter()
        .filter(|f| policy.is_stale(f))
        .copied()
        .collect()
}

/// [`StaleFlows::for_state`] over a list.
pub fn stale_for_state(flows: &[Flow], state: &ProxyState) -> Vec<Flow> {
    let policy = StaleFlows::for_state(state);
    flows
        .iter()
        .filter(|f| policy.is_stale(f))
        .copied()
        .collect()
}

/// [`StaleFlows::new`] over a list, in the list's order.
pub fn stale_after_sync(
    flows: &[Flow],
    state: &ProxyState,
    cleanups: &[ConntrackCleanup],
    full: bool,
) -> Vec<Flow> {
    let policy = StaleFlows::new(state, cleanups, full);
    flows
        .iter()
        .filter(|f| policy.is_stale(f))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: "10.244.1.99:40000".parse().unwrap(),
            orig_dst: "172.30.0.10:53".parse().unwrap(),
            reply_src: "10.244.2.10:5353".parse().unwrap(),
            zone: 0,
        }
    }

    #[test]
    fn diff_cleanup_selects_by_target_and_endpoint() {
        let f = flow();
        let other_ep = Flow {
            reply_src: "10.244.3.3:5353".parse().unwrap(),
            orig_src: "10.244.1.98:40000".parse().unwrap(),
            ..f
        };
        let tcp = Flow { protocol: 6, ..f };
        let flows = [f, other_ep, tcp];
        let by_endpoint = ConntrackCleanup {
            protocol: crate::model::Protocol::Udp,
            target: ConntrackTarget::ServiceIp {
                ip: "172.30.0.10".parse().unwrap(),
                port: 53,
            },
            endpoint: Some("10.244.2.10".parse().unwrap()),
        };
        assert_eq!(stale_for_diff(&flows, &[by_endpoint]), vec![f]);
        let all = ConntrackCleanup {
            endpoint: None,
            ..by_endpoint
        };
        assert_eq!(stale_for_diff(&flows, &[all]), vec![f, other_ep]);
        let node_port = ConntrackCleanup {
            protocol: crate::model::Protocol::Udp,
            target: ConntrackTarget::NodePort { port: 53 },
            endpoint: None,
        };
        assert_eq!(stale_for_diff(&flows, &[node_port]).len(), 2);
    }
}
