//! IPVS mode's iptables rules: a small ruleset whose size does not grow with the Services (the
//! per-Service matching is in the ipsets), in upstream's chains and order.
//!
//! Written with `iptables-restore --noflush`: the `:CHAIN` lines flush kproxy's chains and the
//! rules refill them, atomically per table; the built-in chains' jumps into them are ensured
//! separately (see [`JUMPS`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use iptables_tool::Jump;
use proxy_core::datapath::LocalTrafficDetector;
use proxy_core::model::Protocol;
use proxy_core::IpFamily;

use crate::sets::IpvsSet;

/// The chains IPVS mode owns, per table.
pub const CHAINS: &[(&str, &str)] = &[
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-NODE-PORT"),
    ("nat", "KUBE-LOAD-BALANCER"),
    ("nat", "KUBE-MARK-MASQ"),
    ("filter", "KUBE-FORWARD"),
    ("filter", "KUBE-NODE-PORT"),
    ("filter", "KUBE-PROXY-FIREWALL"),
    ("filter", "KUBE-SOURCE-RANGES-FIREWALL"),
    ("filter", "KUBE-IPVS-FILTER"),
    ("filter", "KUBE-IPVS-OUT-FILTER"),
];

/// The chains IPVS mode owns, for a handover to or from another mode and for cleanup.
pub const FOOTPRINT: iptables_tool::Footprint = iptables_tool::Footprint {
    mode: "ipvs",
    owns: |table, chain| CHAINS.contains(&(table, chain)),
};

const PORTALS: &str = "kubernetes service portals";
const FIREWALL: &str = "kube-proxy firewall rules";
const ACCESS: &str = "kubernetes ipvs access filter";

/// Upstream's jumps, each inserted first in its built-in chain; within a chain they are listed
/// in the order they end up in (upstream prepends each in turn, so its last is first).
pub const JUMPS: &[Jump] = &[
    Jump::commented("nat", "OUTPUT", "KUBE-SERVICES", PORTALS),
    Jump::commented("nat", "PREROUTING", "KUBE-SERVICES", PORTALS),
    Jump::commented(
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "kubernetes postrouting rules",
    ),
    Jump::commented("filter", "FORWARD", "KUBE-PROXY-FIREWALL", FIREWALL),
    Jump::commented(
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "kubernetes forwarding rules",
    ),
    Jump::commented("filter", "INPUT", "KUBE-IPVS-FILTER", ACCESS),
    Jump::commented("filter", "INPUT", "KUBE-PROXY-FIREWALL", FIREWALL),
    Jump::commented(
        "filter",
        "INPUT",
        "KUBE-NODE-PORT",
        "kubernetes health check rules",
    ),
    Jump::commented("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", ACCESS),
];

/// What the ruleset depends on.
#[derive(Clone, Debug)]
pub struct RulesInput<'a> {
    /// The family.
    pub family: IpFamily,
    /// Sets with members (rules matching an empty set are left out, as upstream does).
    pub non_empty: &'a BTreeSet<IpvsSet>,
    /// `masqueradeAll`.
    pub masquerade_all: bool,
    /// How local (pod) traffic is recognised.
    pub detector: &'a LocalTrafficDetector,
    /// `iptables.masqueradeBit`.
    pub masquerade_bit: u8,
    /// Load-balancer frontends the node may not reach.
    pub no_node_access: &'a BTreeSet<(IpAddr, Protocol, u16)>,
}

fn detector_args(d: &LocalTrafficDetector) -> Option<String> {
    match d {
        LocalTrafficDetector::None => None,
        LocalTrafficDetector::SourceCidr(net) => Some(format!("! -s {net}")),
        LocalTrafficDetector::InputInterface(name) => Some(format!("! -i {name}")),
        LocalTrafficDetector::InputInterfacePrefix(p) => Some(format!("! -i {p}+")),
    }
}

/// Writes the whole `iptables-restore` input (nat and filter) into `out`, replacing its content.
pub fn render(input: &RulesInput<'_>, out: &mut String) {
    out.clear();
    let fam = input.family;
    let has = |s: IpvsSet| input.non_empty.contains(&s);
    let name = |s: IpvsSet| s.name(fam);
    let mark = format!("{:#08x}", 1u32 << input.masquerade_bit);
    let set_rule = |out: &mut String, chain: &str, proto: Option<&str>, set: IpvsSet, to: &str| {
        let _ = write!(out, "-A {chain}");
        if let Some(p) = proto {
            let _ = write!(out, " -p {p}");
        }
        let _ = writeln!(
            out,
            " -m comment --comment \"{}\" -m set --match-set {} {} -j {to}",
            set.comment(),
            name(set),
            set.match_flags()
        );
    };

    out.push_str("*nat\n");
    for (_, chain) in CHAINS.iter().filter(|(t, _)| *t == "nat") {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let lo = match fam {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1/128",
    };
    let _ = writeln!(out, "-A KUBE-SERVICES -s {lo} -j RETURN");
    let mut filter = String::new();
    for (set, table, chain, proto, to) in [
        (
            IpvsSet::LoopBack,
            "nat",
            "KUBE-POSTROUTING",
            None,
            "MASQUERADE",
        ),
        (
            IpvsSet::LoadBalancer,
            "nat",
            "KUBE-SERVICES",
            None,
            "KUBE-LOAD-BALANCER",
        ),
        (
            IpvsSet::LoadBalancerLocal,
            "nat",
            "KUBE-LOAD-BALANCER",
            None,
            "RETURN",
        ),
        (
            IpvsSet::NodePortLocalTcp,
            "nat",
            "KUBE-NODE-PORT",
            Some("tcp"),
            "RETURN",
        ),
        (
            IpvsSet::NodePortTcp,
            "nat",
            "KUBE-NODE-PORT",
            Some("tcp"),
            "KUBE-MARK-MASQ",
        ),
        (
            IpvsSet::NodePortLocalUdp,
            "nat",
            "KUBE-NODE-PORT",
            Some("udp"),
            "RETURN",
        ),
        (
            IpvsSet::NodePortUdp,
            "nat",
            "KUBE-NODE-PORT",
            Some("udp"),
            "KUBE-MARK-MASQ",
        ),
        (
            IpvsSet::NodePortLocalSctp,
            "nat",
            "KUBE-NODE-PORT",
            Some("sctp"),
            "RETURN",
        ),
        (
            IpvsSet::NodePortSctp,
            "nat",
            "KUBE-NODE-PORT",
            Some("sctp"),
            "KUBE-MARK-MASQ",
        ),
        (
            IpvsSet::LoadBalancerFw,
            "filter",
            "KUBE-PROXY-FIREWALL",
            None,
            "KUBE-SOURCE-RANGES-FIREWALL",
        ),
        (
            IpvsSet::LoadBalancerSourceCidr,
            "filter",
            "KUBE-SOURCE-RANGES-FIREWALL",
            None,
            "RETURN",
        ),
        (
            IpvsSet::LoadBalancerSourceIp,
            "filter",
            "KUBE-SOURCE-RANGES-FIREWALL",
            None,
            "RETURN",
        ),
    ] {
        if has(set) {
            let target = if table == "nat" {
                &mut *out
            } else {
                &mut filter
            };
            set_rule(target, chain, proto, set, to);
        }
    }
    if has(IpvsSet::ClusterIp) {
        let set = IpvsSet::ClusterIp;
        let head = format!(
            "-A KUBE-SERVICES -m comment --comment \"{}\" -m set --match-set {}",
            set.comment(),
            name(set)
        );
        match (input.masquerade_all, detector_args(input.detector)) {
            (true, _) => {
                let _ = writeln!(out, "{head} dst,dst -j KUBE-MARK-MASQ");
            }
            (false, Some(not_local)) => {
                let _ = writeln!(out, "{head} dst,dst {not_local} -j KUBE-MARK-MASQ");
            }
            (false, None) => {
                // Node-originated traffic sourced from a service address (kube-ipvs0 holds them
                // all) towards a service port needs SNAT.
                let _ = writeln!(out, "{head} src,dst -j KUBE-MARK-MASQ");
            }
        }
    }
    for (set, masquerade) in [
        (IpvsSet::ExternalIp, true),
        (IpvsSet::ExternalIpLocal, false),
    ] {
        if !has(set) {
            continue;
        }
        let head = format!(
            "-A KUBE-SERVICES -m comment --comment \"{}\" -m set --match-set {} dst,dst",
            set.comment(),
            name(set)
        );
        if masquerade {
            let _ = writeln!(out, "{head} -j KUBE-MARK-MASQ");
        }
        // From off the machine (not a bridge port, not a local address) and to local addresses
        // stays with IPVS.
        let _ = writeln!(
            out,
            "{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        );
        let _ = writeln!(out, "{head} -m addrtype --dst-type LOCAL -j ACCEPT");
    }
    out.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n");
    out.push_str("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ\n");
    for set in [IpvsSet::ClusterIp, IpvsSet::LoadBalancer] {
        if has(set) {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -m set --match-set {} dst,dst -j ACCEPT",
                name(set)
            );
        }
    }
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {mark}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {mark}\n\
         COMMIT"
    );

    out.push_str("*filter\n");
    for (_, chain) in CHAINS.iter().filter(|(t, _)| *t == "filter") {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&filter);
    out.push_str("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP\n");
    for (ip, protocol, port) in input.no_node_access {
        let _ = writeln!(
            out,
            "-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {} --vport {port} -j DROP",
            protocol.as_lower_str()
        );
    }
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A KUBE-NODE-PORT -m comment --comment \"{}\" -m set --match-set {} dst -j ACCEPT",
        IpvsSet::HealthCheckNodePort.comment(),
        name(IpvsSet::HealthCheckNodePort)
    );
    // Host ports are not reachable through service addresses bound to kube-ipvs0
    // (kubernetes/kubernetes#72236): what no service port claims is rejected.
    for (set, flags) in [
        (IpvsSet::LoadBalancer, "dst,dst"),
        (IpvsSet::ClusterIp, "dst,dst"),
        (IpvsSet::ExternalIp, "dst,dst"),
        (IpvsSet::ExternalIpLocal, "dst,dst"),
        (IpvsSet::HealthCheckNodePort, "dst"),
    ] {
        let _ = writeln!(
            out,
            "-A KUBE-IPVS-FILTER -m set --match-set {} {flags} -j RETURN",
            name(set)
        );
    }
    let _ = writeln!(
        out,
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT\nCOMMIT",
        name(IpvsSet::IpvsIps)
    );
}

/// Rules per table in restore text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCount {
    /// In the nat table.
    pub nat: usize,
    /// In the filter table.
    pub filter: usize,
}

/// Counts the `-A` and `-I` lines of each table in restore text.
pub fn count_rules(text: &str) -> RuleCount {
    let mut count = RuleCount::default();
    let mut nat = false;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            nat = t == "nat";
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            if nat {
                count.nat += 1;
            } else {
                count.filter += 1;
            }
        }
    }
    count
}

/// `rules` (the output of [`render`]) with the missing `jumps` added to their table, after that
/// table's rules (`iptables_tool::jump::write_additions`): restored together, the chains exist
/// before the jumps into them, and a flushed built-in chain gets its jumps back atomically with
/// the rules.
pub fn with_jumps(rules: &str, jumps: &[&Jump]) -> String {
    let mut out = String::with_capacity(rules.len() + jumps.len() * 96);
    let mut table = "";
    for line in rules.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t == "nat" { "nat" } else { "filter" };
        }
        if line == "COMMIT" {
            iptables_tool::jump::write_additions(table, jumps, &mut out);
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_jumps_join_their_tables_restore() {
        let rules =
            "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n";
        let jumps: Vec<&Jump> = JUMPS.iter().filter(|j| j.from != "OUTPUT").collect();
        let text = with_jumps(rules, &jumps);
        let nat = text.split("*filter").next().unwrap();
        assert!(nat.contains("-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"), "{text}");
        assert!(
            nat.trim_end().ends_with("-j KUBE-SERVICES\nCOMMIT"),
            "jumps before COMMIT: {text}"
        );
        assert!(!nat.contains("KUBE-FORWARD"), "{text}");
        assert!(
            text.contains(
                "-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"
            ),
            "{text}"
        );
    }

    #[test]
    fn empty_sets_leave_their_rules_out_and_the_mark_is_upstreams() {
        let mut out = String::new();
        let none = BTreeSet::new();
        let sets: BTreeSet<IpvsSet> = [IpvsSet::ClusterIp].into();
        render(
            &RulesInput {
                family: IpFamily::V4,
                non_empty: &sets,
                masquerade_all: false,
                detector: &LocalTrafficDetector::SourceCidr("10.244.0.0/16".parse().unwrap()),
                masquerade_bit: 14,
                no_node_access: &none,
            },
            &mut out,
        );
        assert!(
            out.contains(
                "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
            ),
            "{out}"
        );
        assert!(
            !out.contains("KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER"),
            "{out}"
        );
        assert!(
            out.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000"),
            "{out}"
        );
    }
}
