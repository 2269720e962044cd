//! The jumps from the built-in chains into kproxy's chains.
//!
//! These are not part of the restore text (a restore must never flush a built-in chain); the
//! applier ensures them one by one, and the packet-flow evaluator uses the same list to enter
//! kproxy's chains the way the kernel does.

use crate::render::{Table, KUBE_FIREWALL, KUBE_FORWARD, KUBE_POSTROUTING};

/// One `-A <builtin> ... -j <ours>` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpRule {
    /// The table.
    pub table: Table,
    /// The built-in chain (`PREROUTING`, `INPUT`, …).
    pub from: &'static str,
    /// kproxy's chain.
    pub to: &'static str,
    /// The rule's comment, as kube-proxy writes it (`None` for kubelet's guard jump).
    pub comment: Option<&'static str>,
    /// Extra matches, e.g. `-m conntrack --ctstate NEW`.
    pub matches: &'static str,
}

impl JumpRule {
    /// The rule spec after `-A <from> `.
    pub fn spec(&self) -> String {
        let mut s = String::new();
        if let Some(c) = self.comment {
            s.push_str("-m comment --comment \"");
            s.push_str(c);
            s.push_str("\" ");
        }
        if !self.matches.is_empty() {
            s.push_str(self.matches);
            s.push(' ');
        }
        s.push_str("-j ");
        s.push_str(self.to);
        s
    }
}

const NEW: &str = "-m conntrack --ctstate NEW";

/// Every jump, in the order each built-in chain should hold them (first = evaluated first).
/// `with_localnet_guard` adds the KUBE-FIREWALL jumps (IPv4 with localhost NodePorts).
pub fn jump_rules(with_localnet_guard: bool) -> Vec<JumpRule> {
    let j = |table, from, to, comment, matches| JumpRule {
        table,
        from,
        to,
        comment,
        matches,
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
