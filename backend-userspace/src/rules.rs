//! The userspace mode's iptables rules: REDIRECTs that steer Service traffic to the proxy's
//! listeners, and REJECT/DROP for traffic no listener takes.
//!
//! Chains (upstream's userspace proxier's names, plus one filter chain):
//!
//! | table  | chain                     | hooked from                          | holds |
//! |--------|---------------------------|--------------------------------------|-------|
//! | nat    | `KUBE-PORTALS-CONTAINER`  | PREROUTING (first)                   | cluster, external and load-balancer IPs, from pods and outside |
//! | nat    | `KUBE-PORTALS-HOST`       | OUTPUT (first)                       | the same, from the node itself |
//! | nat    | `KUBE-NODEPORT-CONTAINER` | PREROUTING, to local addresses (last) | node ports, from pods and outside |
//! | nat    | `KUBE-NODEPORT-HOST`      | OUTPUT, to local addresses (last)    | node ports, from the node (localhost too) |
//! | filter | `KUBE-PORTALS-FILTER`     | INPUT, FORWARD, OUTPUT (new connections) | REJECT without endpoints, DROP for a Local policy without local endpoints or outside `loadBalancerSourceRanges` |
//!
//! `REDIRECT` sends a packet to the proxy port on the address it arrived on (loopback for the
//! node's own traffic), so listeners bind the unspecified address. The whole ruleset is small (a
//! few rules per Service port) and is written in one `iptables-restore --noflush` per sync that
//! replaces only these chains.

use std::fmt::Write as _;

use iptables_tool::Jump;
use proxy_core::datapath::NodePortAddresses;
use proxy_core::{IpFamily, ProxyState};

use crate::listeners::Transport;
use crate::plan::{routes, ListenerKey, Route};

/// nat: Service addresses, from pods and from outside (PREROUTING).
pub const PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
/// nat: Service addresses, from the node (OUTPUT).
pub const PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
/// nat: node ports, from pods and from outside (PREROUTING).
pub const NODEPORT_CONTAINER: &str = "KUBE-NODEPORT-CONTAINER";
/// nat: node ports, from the node (OUTPUT).
pub const NODEPORT_HOST: &str = "KUBE-NODEPORT-HOST";
/// filter: REJECT and DROP for traffic no listener takes.
pub const PORTALS_FILTER: &str = "KUBE-PORTALS-FILTER";

/// Every chain this mode owns, with its table.
pub const OWNED_CHAINS: [(&str, &str); 5] = [
    ("nat", PORTALS_CONTAINER),
    ("nat", PORTALS_HOST),
    ("nat", NODEPORT_CONTAINER),
    ("nat", NODEPORT_HOST),
    ("filter", PORTALS_FILTER),
];

/// Whether `(table, chain)` is one of this mode's chains.
fn owns(table: &str, chain: &str) -> bool {
    OWNED_CHAINS.contains(&(table, chain))
}

/// The chains this mode owns, for a handover to or from another mode and for cleanup.
pub const FOOTPRINT: iptables_tool::Footprint = iptables_tool::Footprint {
    mode: "userspace",
    owns,
};

const CLUSTER_IPS: &str = "handle ClusterIPs; NOTE: this must be before the NodePort rules";
const NODE_PORTS: &str = "handle service NodePorts; NOTE: this must be the last rule in the chain";
const NO_LISTENER: &str = "kubernetes service portals without a proxy listener";
const LOCAL: &str = "-m addrtype --dst-type LOCAL";
const NEW: &str = "-m conntrack --ctstate NEW";

/// The jumps, in the order they are ensured. Portals come first in their chain (a Service
/// address must be redirected before other rules see it); node ports last, as upstream's
/// userspace proxier had them, so more specific rules win.
pub const JUMPS: [Jump; 7] = [
    Jump::commented("nat", "PREROUTING", PORTALS_CONTAINER, CLUSTER_IPS),
    Jump::commented("nat", "OUTPUT", PORTALS_HOST, CLUSTER_IPS),
    Jump::commented("nat", "PREROUTING", NODEPORT_CONTAINER, NODE_PORTS)
        .with_matches(LOCAL)
        .matches_first()
        .last(),
    Jump::commented("nat", "OUTPUT", NODEPORT_HOST, NODE_PORTS)
        .with_matches(LOCAL)
        .matches_first()
        .last(),
    Jump::commented("filter", "INPUT", PORTALS_FILTER, NO_LISTENER)
        .with_matches(NEW)
        .matches_first(),
    Jump::commented("filter", "FORWARD", PORTALS_FILTER, NO_LISTENER)
        .with_matches(NEW)
        .matches_first(),
    Jump::commented("filter", "OUTPUT", PORTALS_FILTER, NO_LISTENER)
        .with_matches(NEW)
        .matches_first(),
];

/// How many rules a render wrote, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Rules in the nat table's chains.
    pub nat: usize,
    /// Rules in the filter table's chain.
    pub filter: usize,
}

fn proto(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    }
}

/// Writes the iptables-restore input for `state` into `out` (cleared first): both tables, every
/// chain declared (which empties it), then its rules. `proxy_port` gives the port of each open
/// listener; traffic for a listener that has none (its bind failed) is REJECTed rather than
/// steered into a closed port, while every other Service port is proxied. Node ports answer on
/// `node_ports` (`nodePortAddresses`: every local address, or only those listed). `filter` is
/// scratch for the filter table's rules (collected while the nat rules are written, so the state
/// is walked once); callers that sync keep it between syncs so its capacity is reused.
pub fn render(
    state: &ProxyState,
    proxy_port: impl Fn(&ListenerKey) -> Option<u16>,
    node_ports: &NodePortAddresses,
    out: &mut String,
    filter: &mut String,
) -> RuleCounts {
    out.clear();
    filter.clear();
    let host_len = match state.family() {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let mut counts = RuleCounts::default();
    out.push_str("*nat\n");
    for (_, chain) in OWNED_CHAINS.iter().filter(|(t, _)| *t == "nat") {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for (name, entry) in state.service_ports() {
        let Some(r) = routes(entry) else { continue };
        let svc = &*entry.service;
        let p = proto(r.transport);
        // A listener whose port could not be bound is refused like a port without endpoints:
        // clients fail at once instead of waiting on an address nothing answers.
        let target = |route: Route| -> Result<u16, (&'static str, &'static str)> {
            match route {
                Route::Listener(set) => proxy_port(&ListenerKey {
                    port: name.clone(),
                    endpoints: set,
                })
                .ok_or(("REJECT", " has no proxy listener")),
                Route::Reject => Err(("REJECT", " has no endpoints")),
                Route::Drop => Err(("DROP", " has no local endpoints")),
            }
        };
        // Traffic to one address of the Service port.
        let mut address = |ip: std::net::IpAddr,
                           route: Route,
                           sources: &[ipnetwork::IpNetwork],
                           what: &str| {
            match target(route) {
                Ok(port) => {
                    for chain in [PORTALS_CONTAINER, PORTALS_HOST] {
                        let mut each_source = |src: Option<&ipnetwork::IpNetwork>| {
                            let _ = write!(out, "-A {chain}");
                            if let Some(src) = src {
                                let _ = write!(out, " -s {src}");
                            }
                            let _ = writeln!(
                                    out,
                                    " -d {ip}/{host_len} -p {p} -m comment --comment \"{name}{what}\" -m {p} --dport {} -j REDIRECT --to-ports {port}",
                                    svc.port
                                );
                            counts.nat += 1;
                        };
                        if sources.is_empty() {
                            each_source(None);
                        } else {
                            sources.iter().for_each(|s| each_source(Some(s)));
                        }
                    }
                    if !sources.is_empty() {
                        // Sources outside the ranges were not redirected: drop them.
                        let _ = writeln!(
                                filter,
                                "-A {PORTALS_FILTER} -d {ip}/{host_len} -p {p} -m comment --comment \"{name}{what} outside loadBalancerSourceRanges\" -m {p} --dport {} -j DROP",
                                svc.port
                            );
                        counts.filter += 1;
                    }
                }
                Err((verdict, why)) => {
                    let _ = writeln!(
                            filter,
                            "-A {PORTALS_FILTER} -d {ip}/{host_len} -p {p} -m comment --comment \"{name}{what}{why}\" -m {p} --dport {} -j {verdict}",
                            svc.port
                        );
                    counts.filter += 1;
                }
            }
        };
        address(svc.cluster_ip, r.internal, &[], " cluster IP");
        if let Some(external) = r.external {
            for ip in &svc.external_ips {
                address(*ip, external, &[], " external IP");
            }
            for ip in &svc.load_balancer_ips {
                address(
                    *ip,
                    external,
                    &svc.load_balancer_source_ranges,
                    " loadbalancer IP",
                );
            }
            if let Some(node_port) = svc.node_port {
                // `-d` per selected address, or none (the jump already matched a local address).
                let destinations: Vec<String> = match node_ports {
                    NodePortAddresses::All => vec![String::new()],
                    NodePortAddresses::Only(ips) => ips
                        .iter()
                        .map(|ip| format!(" -d {ip}/{host_len}"))
                        .collect(),
                };
                for dst in &destinations {
                    match target(external) {
                        Ok(port) => {
                            for chain in [NODEPORT_CONTAINER, NODEPORT_HOST] {
                                let _ = writeln!(
                                    out,
                                    "-A {chain}{dst} -p {p} -m comment --comment \"{name}\" -m {p} --dport {node_port} -j REDIRECT --to-ports {port}"
                                );
                                counts.nat += 1;
                            }
                        }
                        Err((verdict, why)) => {
                            let _ = writeln!(
                                filter,
                                "-A {PORTALS_FILTER}{dst} -p {p} -m addrtype --dst-type LOCAL -m comment --comment \"{name} node port{why}\" -m {p} --dport {node_port} -j {verdict}",
                            );
                            counts.filter += 1;
                        }
                    }
                }
            }
        }
    }
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(out, ":{PORTALS_FILTER} - [0:0]");
    out.push_str(filter);
    out.push_str("COMMIT\n");
    counts
}
