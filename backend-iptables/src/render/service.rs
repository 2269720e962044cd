//! The rules of one Service port: kube-proxy's per-service logic, written into a [`Sink`].

use std::fmt::Write;
use std::net::IpAddr;

use proxy_core::datapath::{MasqueradeDecision, PortVerdict, TrafficTarget};
use proxy_core::{Endpoint, ServicePortEntry};

use super::names::ServiceNames;
use super::{NodeView, SharedChain, Sink, Table, KUBE_MARK_MASQ, LOCALHOST_NODEPORTS_NFACCT};
use crate::chain_name::{ChainKind, ChainName};

/// What a service render needs besides the entry.
pub(crate) struct Context<'a> {
    /// What the render derived from the node.
    pub(crate) node: &'a NodeView,
    /// Comments are left out of endpoint rules over 1000 endpoints (upstream's large cluster mode).
    pub(crate) large_cluster: bool,
    pub(crate) probabilities: &'a mut Vec<String>,
    pub(crate) spec: &'a mut String,
}

impl Context<'_> {
    /// `1/n` with ten decimals, as kube-proxy prints it; cached.
    fn probability(&mut self, n: usize) -> &str {
        while self.probabilities.len() <= n {
            let k = self.probabilities.len();
            let text = if k == 0 {
                String::new()
            } else {
                format!("{:.10}", 1.0 / k as f64)
            };
            self.probabilities.push(text);
        }
        &self.probabilities[n]
    }
}

/// Appends `-m comment --comment "<text>"`.
fn comment(spec: &mut String, text: std::fmt::Arguments<'_>) {
    spec.push_str("-m comment --comment \"");
    let _ = spec.write_fmt(text);
    spec.push_str("\" ");
}

/// Appends `-m <proto> -p <proto> `.
fn protocol(spec: &mut String, proto: &str) {
    spec.push_str("-m ");
    spec.push_str(proto);
    spec.push_str(" -p ");
    spec.push_str(proto);
    spec.push(' ');
}

/// Renders every rule and chain of one Service port.
pub(crate) fn render_service(
    ctx: &mut Context<'_>,
    names: &ServiceNames,
    entry: &ServicePortEntry,
    sink: &mut dyn Sink,
) {
    let svc = &*entry.service;
    let sel = &*entry.selection;
    let name = names.text.as_str();
    let proto = svc.protocol.as_lower_str();

    let cluster_chain = names.chain(ChainKind::Service);
    let local_chain = names.chain(ChainKind::ServiceLocal);
    let external_chain = names.chain(ChainKind::External);
    let firewall_chain = names.chain(ChainKind::Firewall);

    // The decisions are proxy-core's, shared by every mode; this maps them to chains and targets.
    let verdict = PortVerdict::of(entry);
    let has_endpoints = verdict.has_endpoints;
    let uses_cluster_chain = verdict.uses_cluster_endpoints;
    let uses_local_chain = verdict.uses_local_endpoints;
    let chain_for = |target: TrafficTarget| match target {
        TrafficTarget::LocalEndpoints => local_chain,
        _ => cluster_chain,
    };
    let (internal_chain, has_internal) = (chain_for(verdict.internal), verdict.internal.forwards());
    let external_policy_chain = if svc.external_policy_local {
        local_chain
    } else {
        cluster_chain
    };
    let has_external = verdict.external.forwards();
    let uses_external_chain = verdict.external_path;
    let uses_firewall_chain = verdict.source_ranges_apply;
    let lb_chain = if uses_firewall_chain {
        firewall_chain
    } else {
        external_chain
    };

    // What traffic that cannot be served gets, and the comment saying why.
    let (internal_filter, external_filter, filter_comment) = if !has_endpoints {
        ("REJECT", "REJECT", "has no endpoints")
    } else {
        ("DROP", "DROP", "has no local endpoints")
    };

    let cluster_ip = svc.cluster_ip;
    let port = svc.port;

    // The cluster IP.
    {
        let spec = &mut *ctx.spec;
        spec.clear();
        if has_internal {
            comment(spec, format_args!("{name} cluster IP"));
        } else {
            comment(spec, format_args!("{name} {filter_comment}"));
        }
        protocol(spec, proto);
        let _ = write!(spec, "-d {cluster_ip} --dport {port} -j ");
        if has_internal {
            internal_chain.write_to(spec);
            sink.shared(Table::Nat, SharedChain::Services, spec);
        } else {
            spec.push_str(internal_filter);
            sink.shared(Table::Filter, SharedChain::Services, spec);
        }
    }

    // External IPs.
    for ip in &svc.external_ips {
        let spec = &mut *ctx.spec;
        if has_endpoints {
            spec.clear();
            comment(spec, format_args!("{name} external IP"));
            protocol(spec, proto);
            let _ = write!(spec, "-d {ip} --dport {port} -j ");
            external_chain.write_to(spec);
            sink.shared(Table::Nat, SharedChain::Services, spec);
        }
        if !has_external {
            spec.clear();
            comment(spec, format_args!("{name} {filter_comment}"));
            protocol(spec, proto);
            let _ = write!(spec, "-d {ip} --dport {port} -j {external_filter}");
            sink.shared(Table::Filter, SharedChain::ExternalServices, spec);
        }
    }

    // Load-balancer IPs.
    for ip in &svc.load_balancer_ips {
        let spec = &mut *ctx.spec;
        if has_endpoints {
            spec.clear();
            comment(spec, format_args!("{name} loadbalancer IP"));
            protocol(spec, proto);
            let _ = write!(spec, "-d {ip} --dport {port} -j ");
            lb_chain.write_to(spec);
            sink.shared(Table::Nat, SharedChain::Services, spec);
        }
        if uses_firewall_chain {
            spec.clear();
            comment(
                spec,
                format_args!("{name} traffic not accepted by {firewall_chain}"),
            );
            protocol(spec, proto);
            let _ = write!(spec, "-d {ip} --dport {port} -j DROP");
            sink.shared(Table::Filter, SharedChain::ProxyFirewall, spec);
        }
    }
    if !has_external {
        for ip in &svc.load_balancer_ips {
            let spec = &mut *ctx.spec;
            spec.clear();
            comment(spec, format_args!("{name} {filter_comment}"));
            protocol(spec, proto);
            let _ = write!(spec, "-d {ip} --dport {port} -j {external_filter}");
            sink.shared(Table::Filter, SharedChain::ExternalServices, spec);
        }
    }

    // The node port.
    if let Some(node_port) = svc.node_port {
        let spec = &mut *ctx.spec;
        if has_endpoints && ctx.node.count_localhost_node_ports {
            // Localhost NodePort traffic first, through an nfacct counter (upstream's
            // `localhost_nps_accepted_pkts`), then the rule for every address.
            spec.clear();
            let _ = write!(spec, "-m comment --comment {name} ");
            protocol(spec, proto);
            let _ = write!(
                spec,
                "-d 127.0.0.0/8 --dport {node_port} -m nfacct --nfacct-name {LOCALHOST_NODEPORTS_NFACCT} -j "
            );
            external_chain.write_to(spec);
            sink.shared(Table::Nat, SharedChain::NodePorts, spec);
        }
        if has_endpoints {
            spec.clear();
            let _ = write!(spec, "-m comment --comment {name} ");
            protocol(spec, proto);
            let _ = write!(spec, "--dport {node_port} -j ");
            external_chain.write_to(spec);
            sink.shared(Table::Nat, SharedChain::NodePorts, spec);
        }
        if !has_external {
            spec.clear();
            comment(spec, format_args!("{name} {filter_comment}"));
            spec.push_str("-m addrtype --dst-type LOCAL ");
            protocol(spec, proto);
            let _ = write!(spec, "--dport {node_port} -j {external_filter}");
            sink.shared(Table::Filter, SharedChain::ExternalServices, spec);
        }
    }

    // The health-check node port: accepted whether or not there are local endpoints, so the load
    // balancer can ask and be told.
    if let Some(hc) = svc.health_check_node_port {
        let spec = &mut *ctx.spec;
        spec.clear();
        comment(spec, format_args!("{name} health check node port"));
        let _ = write!(spec, "-m tcp -p tcp --dport {hc} -j ACCEPT");
        sink.shared(Table::Filter, SharedChain::NodePorts, spec);
    }

    // External traffic: the EXT chain.
    if uses_external_chain {
        sink.chain(external_chain);
        let spec = &mut *ctx.spec;
        if !svc.external_policy_local {
            spec.clear();
            comment(
                spec,
                format_args!("masquerade traffic for {name} external destinations"),
            );
            let _ = write!(spec, "-j {KUBE_MARK_MASQ}");
            sink.rule(external_chain, spec);
        } else {
            if let Some(local) = &ctx.node.if_local {
                spec.clear();
                comment(
                    spec,
                    format_args!("pod traffic for {name} external destinations"),
                );
                let _ = write!(spec, "{local} -j ");
                cluster_chain.write_to(spec);
                sink.rule(external_chain, spec);
            }
            spec.clear();
            comment(
                spec,
                format_args!("masquerade LOCAL traffic for {name} external destinations"),
            );
            let _ = write!(spec, "-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}");
            sink.rule(external_chain, spec);
            spec.clear();
            comment(
                spec,
                format_args!("route LOCAL traffic for {name} external destinations"),
            );
            spec.push_str("-m addrtype --src-type LOCAL -j ");
            cluster_chain.write_to(spec);
            sink.rule(external_chain, spec);
        }
        if has_external {
            spec.clear();
            spec.push_str("-j ");
            external_policy_chain.write_to(spec);
            sink.rule(external_chain, spec);
        }
    }

    // Source ranges: the FW chain.
    if uses_firewall_chain {
        sink.chain(firewall_chain);
        let allow_from_node = svc
            .load_balancer_source_ranges
            .iter()
            .any(|r| ctx.node.node_ips.iter().any(|ip| r.contains(*ip)));
        let sources = svc
            .load_balancer_source_ranges
            .iter()
            .map(|r| r.to_string())
            .chain(
                allow_from_node
                    .then(|| svc.load_balancer_ips.iter().map(|ip| ip.to_string()))
                    .into_iter()
                    .flatten(),
            );
        for source in sources {
            let spec = &mut *ctx.spec;
            spec.clear();
            comment(spec, format_args!("{name} loadbalancer IP"));
            let _ = write!(spec, "-s {source} -j ");
            external_chain.write_to(spec);
            sink.rule(firewall_chain, spec);
        }
        let spec = &mut *ctx.spec;
        spec.clear();
        comment(
            spec,
            format_args!("other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"),
        );
        spec.pop(); // a rule with no target: nothing follows the comment
        sink.rule(firewall_chain, spec);
    }

    // Masquerade off-cluster traffic to the cluster IP, in the internal chain.
    if has_internal && ctx.node.masquerade != MasqueradeDecision::Never {
        let spec = &mut *ctx.spec;
        spec.clear();
        comment(spec, format_args!("{name} cluster IP"));
        protocol(spec, proto);
        let _ = write!(spec, "-d {cluster_ip} --dport {port} ");
        if ctx.node.masquerade == MasqueradeDecision::OffCluster {
            if let Some(not_local) = &ctx.node.if_not_local {
                let _ = write!(spec, "{not_local} ");
            }
        }
        let _ = write!(spec, "-j {KUBE_MARK_MASQ}");
        // The chain itself is declared with its endpoint jumps below; this rule leads it.
        sink.rule(internal_chain, spec);
    }

    if uses_cluster_chain {
        sink.chain(cluster_chain);
        endpoint_jumps(ctx, names, entry, cluster_chain, &sel.cluster, sink);
    }
    if uses_local_chain {
        sink.chain(local_chain);
        endpoint_jumps(ctx, names, entry, local_chain, &sel.local, sink);
    }

    // One chain per reachable endpoint.
    let affinity = svc.affinity_timeout_seconds().is_some();
    for i in sel.all_reachable() {
        let ep = &entry.endpoints[i as usize];
        let chain = names.endpoint_chain(i as usize, ep.socket_addr());
        sink.chain(chain);
        let spec = &mut *ctx.spec;
        spec.clear();
        if !ctx.large_cluster {
            let _ = write!(spec, "-m comment --comment {name} ");
        }
        spec.push_str("-s ");
        push_ip(spec, ep.ip);
        spec.push_str(" -j ");
        spec.push_str(KUBE_MARK_MASQ);
        sink.rule(chain, spec);
        spec.clear();
        if !ctx.large_cluster {
            let _ = write!(spec, "-m comment --comment {name} ");
        }
        if affinity {
            spec.push_str("-m recent --name ");
            chain.write_to(spec);
            spec.push_str(" --set ");
        }
        protocol(spec, proto);
        spec.push_str("-j DNAT --to-destination ");
        push_socket_addr(spec, ep.ip, ep.port);
        sink.rule(chain, spec);
    }
}

/// The jumps from a SVC or SVL chain to its endpoints: affinity checks first, then the random spread
/// (probability 1/(n-i) for endpoint i; the last one unconditional).
fn endpoint_jumps(
    ctx: &mut Context<'_>,
    names: &ServiceNames,
    entry: &ServicePortEntry,
    chain: ChainName,
    selected: &[u32],
    sink: &mut dyn Sink,
) {
    let name = names.text.as_str();
    let endpoint = |i: u32| -> &Endpoint { &entry.endpoints[i as usize] };
    if let Some(timeout) = entry.service.affinity_timeout_seconds() {
        for &i in selected {
            let addr = endpoint(i).socket_addr();
            let target = names.endpoint_chain(i as usize, addr);
            let spec = &mut *ctx.spec;
            spec.clear();
            if !ctx.large_cluster {
                comment(spec, format_args!("{name} -> {addr}"));
            }
            spec.push_str("-m recent --name ");
            target.write_to(spec);
            let _ = write!(spec, " --rcheck --seconds {timeout} --reap -j ");
            target.write_to(spec);
            sink.rule(chain, spec);
        }
    }
    let n = selected.len();
    ctx.probability(n); // fills the cache up to n
    let (spec, probabilities) = (&mut *ctx.spec, &*ctx.probabilities);
    for (k, &i) in selected.iter().enumerate() {
        let addr = endpoint(i).socket_addr();
        let target = names.endpoint_chain(i as usize, addr);
        spec.clear();
        if !ctx.large_cluster {
            comment(spec, format_args!("{name} -> {addr}"));
        }
        if k + 1 < n {
            spec.push_str("-m statistic --mode random --probability ");
            spec.push_str(&probabilities[n - k]);
            spec.push(' ');
        }
        spec.push_str("-j ");
        target.write_to(spec);
        sink.rule(chain, spec);
    }
}

/// Appends an address as iptables expects it, without going through `fmt` for IPv4 (the common
/// case, written hundreds of thousands of times per full render).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_small(out, u32::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `ip:port`, or `[ip]:port` for IPv6.
fn push_socket_addr(out: &mut String, ip: IpAddr, port: u16) {
    if ip.is_ipv6() {
        out.push('[');
        push_ip(out, ip);
        out.push(']');
    } else {
        push_ip(out, ip);
    }
    out.push(':');
    push_small(out, u32::from(port));
}

/// Appends a decimal number below 100,000.
fn push_small(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_address_writing_matches_display() {
        for s in [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "172.30.48.58",
            "fd00::1",
            "::",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
            for port in [0u16, 7, 80, 65535] {
                let mut out = String::new();
                push_socket_addr(&mut out, ip, port);
                assert_eq!(out, std::net::SocketAddr::new(ip, port).to_string());
            }
        }
    }
}
