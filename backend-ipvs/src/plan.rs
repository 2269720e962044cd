//! What IPVS mode programs for a state: per Service port, its virtual services with their real
//! servers, its ipset entries and the addresses it binds to `kube-ipvs0`. A pure function of the
//! state and the node's addresses, shared by `render` and by the proxier (which diffs one port's
//! plan against the last one it programmed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipset_tool::{Entry, PortProtocol};
use kproxy_netlink::ipvs::{RealServer, VirtualService, FWD_MASQ, SVC_F_PERSISTENT, SVC_F_SCHED2};
use proxy_core::model::{Endpoint, Protocol};
use proxy_core::state::ServicePortEntry;
use proxy_core::{IpFamily, ProxyState};

use crate::client::{ServerKey, ServiceKey};
use crate::sets::IpvsSet;

/// The node-wide inputs of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanContext {
    /// The family.
    pub family: IpFamily,
    /// The scheduler (`ipvs.scheduler`, `rr` when empty).
    pub scheduler: String,
    /// The node's name (which endpoints are local).
    pub node_name: String,
    /// The addresses NodePort virtual services answer on (node addresses of the family, not
    /// loopback, not on `kube-ipvs0`).
    pub node_port_ips: Vec<IpAddr>,
    /// Every local address not on `kube-ipvs0`: an external or load-balancer IP that is one of
    /// them is not bound to `kube-ipvs0` (it is the node's already).
    pub node_addresses: BTreeSet<IpAddr>,
    /// The node's primary address, for `loadBalancerSourceRanges` that include the node.
    pub primary_ip: Option<IpAddr>,
}

impl PlanContext {
    fn flags(&self, entry: &ServicePortEntry) -> (u32, u32) {
        let mut flags = 0;
        let mut timeout = 0;
        if let Some(t) = entry.service.affinity_timeout_seconds() {
            flags |= SVC_F_PERSISTENT;
            timeout = t;
        }
        if self.scheduler == "mh" {
            flags |= SVC_F_SCHED2;
        }
        (flags, timeout)
    }
}

/// One virtual service and the real servers it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    /// The virtual service.
    pub service: VirtualService,
    /// Its servers, sorted by address and port.
    pub servers: Vec<RealServer>,
}

/// What one Service port needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPlan {
    /// Virtual services with their servers.
    pub services: Vec<PlannedService>,
    /// ipset entries.
    pub entries: Vec<(IpvsSet, Entry)>,
    /// Addresses to bind to `kube-ipvs0`.
    pub bound: Vec<IpAddr>,
    /// Load-balancer frontends the node itself may not reach (source ranges that exclude it):
    /// `(ip, protocol, port)`, dropped in `KUBE-IPVS-OUT-FILTER`.
    pub no_node_access: Vec<(IpAddr, Protocol, u16)>,
}

/// The IP protocol number IPVS keys services by.
pub fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn set_protocol(p: Protocol) -> PortProtocol {
    match p {
        Protocol::Tcp => PortProtocol::Tcp,
        Protocol::Udp => PortProtocol::Udp,
        Protocol::Sctp => PortProtocol::Sctp,
    }
}

fn servers<'a>(endpoints: impl Iterator<Item = &'a Endpoint>) -> Vec<RealServer> {
    let mut out: Vec<RealServer> = endpoints
        .map(|e| RealServer {
            address: e.ip,
            port: e.port,
            weight: 1,
            forward: FWD_MASQ,
        })
        .collect();
    out.sort_by_key(|r| (r.address, r.port));
    out.dedup_by_key(|r| (r.address, r.port));
    out
}

/// The plan of one Service port.
pub fn port_plan(entry: &ServicePortEntry, ctx: &PlanContext) -> PortPlan {
    let svc = &entry.service;
    let protocol = protocol_number(svc.protocol);
    let sp = set_protocol(svc.protocol);
    let (flags, timeout) = ctx.flags(entry);
    let scheduler = if ctx.scheduler.is_empty() {
        "rr".to_owned()
    } else {
        ctx.scheduler.clone()
    };
    let vs = |address: IpAddr, port: u16| VirtualService {
        address,
        protocol,
        port,
        scheduler: scheduler.clone(),
        flags,
        timeout,
    };
    let cluster = servers(entry.cluster_endpoints());
    let local = servers(entry.local_endpoints());
    // Internal traffic: the internal policy's endpoints.
    let internal = if svc.internal_policy_local {
        local.clone()
    } else {
        cluster.clone()
    };
    // External traffic: with a Local policy the local endpoints, or — when this node has none —
    // the cluster's, so pods and the node itself still reach the Service through its external
    // address (IPVS cannot tell them from outside clients; upstream does the same,
    // kubernetes/kubernetes#93456).
    let external = if svc.external_policy_local {
        if local.is_empty() {
            cluster.clone()
        } else {
            local.clone()
        }
    } else {
        cluster.clone()
    };
    let mut plan = PortPlan::default();

    for e in entry.all_reachable_endpoints() {
        if e.is_local(&ctx.node_name) {
            plan.entries.push((
                IpvsSet::LoopBack,
                Entry::IpPortIp {
                    ip: e.ip,
                    protocol: sp,
                    port: e.port,
                    ip2: e.ip,
                },
            ));
        }
    }

    let ip_port = |ip: IpAddr| Entry::IpPort {
        ip,
        protocol: sp,
        port: svc.port,
    };
    plan.entries
        .push((IpvsSet::ClusterIp, ip_port(svc.cluster_ip)));
    plan.services.push(PlannedService {
        service: vs(svc.cluster_ip, svc.port),
        servers: internal,
    });
    plan.bound.push(svc.cluster_ip);

    for &ip in &svc.external_ips {
        let set = if svc.external_policy_local {
            IpvsSet::ExternalIpLocal
        } else {
            IpvsSet::ExternalIp
        };
        plan.entries.push((set, ip_port(ip)));
        plan.services.push(PlannedService {
            service: vs(ip, svc.port),
            servers: external.clone(),
        });
        if !ctx.node_addresses.contains(&ip) {
            plan.bound.push(ip);
        }
    }

    for &ip in &svc.load_balancer_ips {
        plan.entries.push((IpvsSet::LoadBalancer, ip_port(ip)));
        if svc.external_policy_local {
            plan.entries.push((IpvsSet::LoadBalancerLocal, ip_port(ip)));
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            plan.entries.push((IpvsSet::LoadBalancerFw, ip_port(ip)));
            let mut allow_node = false;
            for net in &svc.load_balancer_source_ranges {
                plan.entries.push((
                    IpvsSet::LoadBalancerSourceCidr,
                    Entry::IpPortNet {
                        ip,
                        protocol: sp,
                        port: svc.port,
                        net: *net,
                    },
                ));
                allow_node |= ctx.primary_ip.is_some_and(|n| net.contains(n));
            }
            if allow_node {
                plan.entries.push((
                    IpvsSet::LoadBalancerSourceIp,
                    Entry::IpPortIp {
                        ip,
                        protocol: sp,
                        port: svc.port,
                        ip2: ip,
                    },
                ));
            } else {
                plan.no_node_access.push((ip, svc.protocol, svc.port));
            }
        }
        plan.services.push(PlannedService {
            service: vs(ip, svc.port),
            servers: external.clone(),
        });
        if !ctx.node_addresses.contains(&ip) {
            plan.bound.push(ip);
        }
    }

    if let Some(node_port) = svc.node_port {
        if !ctx.node_port_ips.is_empty() {
            let (all, local_set) = match svc.protocol {
                Protocol::Tcp => (IpvsSet::NodePortTcp, IpvsSet::NodePortLocalTcp),
                Protocol::Udp => (IpvsSet::NodePortUdp, IpvsSet::NodePortLocalUdp),
                Protocol::Sctp => (IpvsSet::NodePortSctp, IpvsSet::NodePortLocalSctp),
            };
            let entries: Vec<Entry> = match svc.protocol {
                Protocol::Sctp => ctx
                    .node_port_ips
                    .iter()
                    .map(|&ip| Entry::IpPort {
                        ip,
                        protocol: sp,
                        port: node_port,
                    })
                    .collect(),
                _ => vec![Entry::Port(node_port)],
            };
            for e in &entries {
                plan.entries.push((all, *e));
                if svc.external_policy_local {
                    plan.entries.push((local_set, *e));
                }
            }
            for &ip in &ctx.node_port_ips {
                plan.services.push(PlannedService {
                    service: vs(ip, node_port),
                    servers: external.clone(),
                });
            }
        }
    }

    if let Some(hc) = svc.health_check_node_port {
        plan.entries
            .push((IpvsSet::HealthCheckNodePort, Entry::Port(hc)));
    }
    plan.bound.sort_unstable();
    plan.bound.dedup();
    plan
}

/// The whole plan of a state, ordered for display and comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Virtual services with their servers.
    pub services: BTreeMap<ServiceKey, (VirtualService, BTreeMap<ServerKey, RealServer>)>,
    /// Set members.
    pub entries: BTreeMap<IpvsSet, BTreeSet<Entry>>,
    /// Addresses on `kube-ipvs0` (also the members of `KUBE-IPVS-IPS`).
    pub bound: BTreeSet<IpAddr>,
    /// Load-balancer frontends the node may not reach.
    pub no_node_access: BTreeSet<(IpAddr, Protocol, u16)>,
}

impl Plan {
    /// The plan of every Service port of `state`.
    pub fn of_state(state: &ProxyState, ctx: &PlanContext) -> Self {
        let mut plan = Self::default();
        for (_, entry) in state.service_ports() {
            plan.add(port_plan(entry, ctx));
        }
        plan.finish();
        plan
    }

    /// Adds one port's plan.
    pub fn add(&mut self, p: PortPlan) {
        for ps in p.services {
            let servers = ps
                .servers
                .into_iter()
                .map(|r| {
                    (
                        ServerKey {
                            address: r.address,
                            port: r.port,
                        },
                        r,
                    )
                })
                .collect();
            self.services
                .insert(ServiceKey::of(&ps.service), (ps.service, servers));
        }
        for (set, e) in p.entries {
            self.entries.entry(set).or_default().insert(e);
        }
        self.bound.extend(p.bound);
        self.no_node_access.extend(p.no_node_access);
    }

    /// Fills `KUBE-IPVS-IPS` from the bound addresses.
    pub fn finish(&mut self) {
        let ips: BTreeSet<Entry> = self.bound.iter().map(|ip| Entry::Ip(*ip)).collect();
        if !ips.is_empty() {
            self.entries.insert(IpvsSet::IpvsIps, ips);
        }
    }

    /// The sets with at least one member.
    pub fn non_empty_sets(&self) -> BTreeSet<IpvsSet> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Writes the virtual and real servers as `ipvsadm -S -n` would print them.
    pub fn write_ipvsadm(&self, out: &mut String) {
        for (key, (vs, servers)) in &self.services {
            let flag = match key.protocol {
                6 => "-t",
                17 => "-u",
                _ => "--sctp-service",
            };
            let addr = ServerKey {
                address: key.address,
                port: key.port,
            };
            let _ = write!(out, "-A {flag} {addr} -s {}", vs.scheduler);
            if vs.flags & SVC_F_PERSISTENT != 0 {
                let _ = write!(out, " -p {}", vs.timeout);
            }
            if vs.flags & SVC_F_SCHED2 != 0 {
                out.push_str(" -b sh-port");
            }
            out.push('\n');
            for (sk, r) in servers {
                let _ = writeln!(out, "-a {flag} {addr} -r {sk} -m -w {}", r.weight);
            }
        }
    }

    /// Writes the set members as `ipset save` lines (`add <set> <entry>`).
    pub fn write_ipsets(&self, family: IpFamily, out: &mut String) {
        for set in IpvsSet::ALL {
            let spec = set.spec(family);
            let _ = writeln!(
                out,
                "create {} {} {}",
                spec.name,
                spec.set_type.name(),
                match spec.port_range {
                    Some((a, b)) => format!("range {a}-{b}"),
                    None => format!("family {}", spec.family),
                }
            );
            for e in self.entries.get(&set).into_iter().flatten() {
                let _ = writeln!(out, "add {} {e}", spec.name);
            }
        }
    }
}
