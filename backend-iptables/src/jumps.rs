//! The jumps from the built-in chains into kproxy's chains.
//!
//! These are not part of the restore text (a restore must never flush a built-in chain); the
//! applier ensures them one by one, and the packet-flow evaluator uses the same list to enter
//! kproxy's chains the way the kernel does.

use crate::render::{Table, KUBE_FIREWALL, KUBE_FORWARD, KUBE_POSTROUTING};

pub use iptables_tool::Jump;

const NEW: &str = "-m conntrack --ctstate NEW";

/// Every jump, in the order each built-in chain should hold them (first = evaluated first).
/// `with_localnet_guard` adds the KUBE-FIREWALL jumps (IPv4 with localhost NodePorts).
pub fn jump_rules(with_localnet_guard: bool) -> Vec<Jump> {
    let j = |table: Table, from, to, comment, matches| Jump {
        table: table.name(),
        from,
        to,
        comment,
        matches,
        matches_first: false,
        position: iptables_tool::Position::First,
    };
    let lb = Some("kubernetes load balancer firewall");
    let portals = Some("kubernetes service portals");
    let external = Some("kubernetes externally-visible service portals");
    let mut rules = vec![
        j(Table::Filter, "INPUT", "KUBE-PROXY-FIREWALL", lb, NEW),
        j(
            Table::Filter,
            "INPUT",
            "KUBE-NODEPORTS",
            Some("kubernetes health check service ports"),
            "",
        ),
        j(
            Table::Filter,
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            external,
            NEW,
        ),
        j(Table::Filter, "FORWARD", "KUBE-PROXY-FIREWALL", lb, NEW),
        j(
            Table::Filter,
            "FORWARD",
            KUBE_FORWARD,
            Some("kubernetes forwarding rules"),
            "",
        ),
        j(Table::Filter, "FORWARD", "KUBE-SERVICES", portals, NEW),
        j(
            Table::Filter,
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            external,
            NEW,
        ),
        j(Table::Filter, "OUTPUT", "KUBE-PROXY-FIREWALL", lb, NEW),
        j(Table::Filter, "OUTPUT", "KUBE-SERVICES", portals, NEW),
        j(Table::Nat, "PREROUTING", "KUBE-SERVICES", portals, ""),
        j(Table::Nat, "OUTPUT", "KUBE-SERVICES", portals, ""),
        j(
            Table::Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            Some("kubernetes postrouting rules"),
            "",
        ),
    ];
    if with_localnet_guard {
        rules.push(j(Table::Filter, "INPUT", KUBE_FIREWALL, None, ""));
        rules.push(j(Table::Filter, "OUTPUT", KUBE_FIREWALL, None, ""));
    }
    rules
}
