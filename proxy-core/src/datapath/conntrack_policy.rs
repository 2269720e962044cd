//! Which conntrack entries a sync leaves stale: the policy, separate from how entries are listed
//! and deleted (ctnetlink, in `kproxy-netlink`).
//!
//! The kernel deletes conntrack entries only by exact tuple, so cleanup is: list the family's
//! entries, pick the stale ones here, delete each. Two rules, upstream's:
//! [`stale_for_diff`] for a partial sync (the diff's cleanups) and [`stale_for_state`] for a full
//! sync, e.g. after a restart (every UDP flow to a service that does not go to one of its serving
//! endpoints). Every mode that NATs UDP (iptables, IPVS, nftables) applies the same policy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::diff::{ConntrackCleanup, ConntrackTarget};
use crate::state::ProxyState;

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

/// Entries the diff's cleanups name: flows to each target, all of them or only those translated to
/// the given endpoint. UDP only.
pub fn stale_for_diff(flows: &[Flow], cleanups: &[ConntrackCleanup]) -> Vec<Flow> {
    let mut by_ip: HashMap<(IpAddr, u16), Vec<Option<IpAddr>>> = HashMap::new();
    let mut by_node_port: HashMap<u16, Vec<Option<IpAddr>>> = HashMap::new();
    for c in cleanups {
        match c.target {
            ConntrackTarget::ServiceIp { ip, port } => {
                by_ip.entry((ip, port)).or_default().push(c.endpoint)
            }
            ConntrackTarget::NodePort { port } => {
                by_node_port.entry(port).or_default().push(c.endpoint)
            }
        }
    }
    let hit = |rules: Option<&Vec<Option<IpAddr>>>, flow: &Flow| {
        rules.is_some_and(|rules| {
            rules.iter().any(|ep| match ep {
                None => true,
                Some(ep) => flow.is_dnat() && flow.reply_src.ip() == *ep,
            })
        })
    };
    flows
        .iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .filter(|f| {
            hit(by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())), f)
                || hit(by_node_port.get(&f.orig_dst.port()), f)
        })
        .copied()
        .collect()
}

/// Entries that contradict `state`: UDP flows to a service address or node port that were
/// translated to something that is not a serving endpoint of that service, or were not translated
/// although the service now has endpoints (created while it had none). Used on full syncs, when no
/// diff says what changed (a restart).
pub fn stale_for_state(flows: &[Flow], state: &ProxyState) -> Vec<Flow> {
    let mut by_ip = HashMap::new();
    let mut by_node_port = HashMap::new();
    for (name, entry) in state.service_ports() {
        if name.protocol != crate::model::Protocol::Udp {
            continue;
        }
        for ip in entry.service.service_ips() {
            by_ip.insert((ip, entry.service.port), entry);
        }
        if let Some(np) = entry.service.node_port {
            by_node_port.insert(np, entry);
        }
    }
    let serving = |entry: &crate::state::ServicePortEntry, to: SocketAddr| {
        entry
            .endpoints
            .binary_search_by(|e| (e.ip, e.port).cmp(&(to.ip(), to.port())))
            .is_ok_and(|i| entry.endpoints[i].serving)
    };
    flows
        .iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .filter(|f| {
            if let Some(entry) = by_ip.get(&(f.orig_dst.ip(), f.orig_dst.port())) {
                if f.is_dnat() {
                    return !serving(entry, f.reply_src);
                }
                return entry.selection.has_any_endpoints;
            }
            match by_node_port.get(&f.orig_dst.port()) {
                Some(entry) if f.is_dnat() => !serving(entry, f.reply_src),
                _ => false,
            }
        })
        .copied()
        .collect()
}

/// The entries to delete after a sync: the diff's cleanups, and on a full sync also every entry
/// that contradicts the state (a full sync may follow a restart or a failure, when no diff says
/// what changed). Sorted and unique.
pub fn stale_after_sync(
    flows: &[Flow],
    state: &ProxyState,
    cleanups: &[ConntrackCleanup],
    full: bool,
) -> Vec<Flow> {
    let mut stale = stale_for_diff(flows, cleanups);
    if full {
        stale.extend(stale_for_state(flows, state));
        stale.sort_unstable_by_key(|f| (f.orig_src, f.orig_dst, f.zone, f.reply_src, f.protocol));
        stale.dedup();
    }
    stale
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
