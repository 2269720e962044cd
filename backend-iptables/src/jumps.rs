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

/// Splits a rule spec into arguments as a shell would for these specs: words separated by
/// spaces, `"quoted words"` kept together without their quotes. For modes that run
/// `iptables -C/-I/-D <chain> <spec>` with a spec written as iptables-save prints it.
pub fn split_spec(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// A mode's jumps and chains, for [`remove_jumps_and_chains`].
#[derive(Clone, Copy, Debug)]
pub struct OwnedRules<'a> {
    /// `(table, built-in chain, spec)` of each jump.
    pub jumps: &'a [(&'a str, &'a str, &'a str)],
    /// `(table, chain)` of each chain the mode owns.
    pub chains: &'a [(&'a str, &'a str)],
}

/// Removes a mode's jumps from the built-in chains (every copy: two runs racing may have inserted
/// one twice) and then its chains (flushed and deleted by one restore per table), whatever wrote
/// them. Errors name the jump or the table; `mode` is whose rules they are.
pub fn remove_jumps_and_chains(
    iptables: &mut dyn crate::IptablesOps,
    mode: proxy_core::ProxyMode,
    owned: OwnedRules<'_>,
) -> Result<(), proxy_core::ProxierError> {
    use std::fmt::Write as _;
    for &(table, from, spec) in owned.jumps {
        let args = split_spec(spec);
        for _ in 0..16 {
            let mut delete = vec!["-t", table, "-D", from];
            delete.extend(&args);
            let deleted = iptables.run(&delete).map_err(|e| {
                proxy_core::ProxierError::new(mode, format!("deleting the jump from {from}"), e)
            })?;
            if !deleted {
                break;
            }
        }
    }
    let mut tables: Vec<&str> = Vec::new();
    for (t, _) in owned.chains {
        if !tables.contains(t) {
            tables.push(t);
        }
    }
    for table in tables {
        let mut text = format!("*{table}\n");
        for (_, chain) in owned.chains.iter().filter(|(t, _)| *t == table) {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for (_, chain) in owned.chains.iter().filter(|(t, _)| *t == table) {
            let _ = writeln!(text, "-X {chain}");
        }
        text.push_str("COMMIT\n");
        iptables
            .restore(&mut |w| w.write_all(text.as_bytes()))
            .map_err(|e| {
                proxy_core::ProxierError::new(
                    mode,
                    format!("deleting the {mode}-mode chains of {table}"),
                    e,
                )
            })?;
    }
    Ok(())
}

/// Runs a mode's iptables cleanup `clean` for every family and iptables variant whose tools can
/// list the nat table (a variant whose binaries are missing, or whose kernel backend is, holds
/// nothing of ours). Returns what was cleaned (`<what>, iptables-<variant> (<family>)`) and the
/// failures, for a mode's `cleanup_node`.
pub fn clean_every_variant(
    what: &str,
    mut clean: impl FnMut(&mut crate::IptablesCmd) -> Result<(), proxy_core::ProxierError>,
) -> (Vec<String>, Vec<String>) {
    use crate::IptablesOps as _;
    let (mut cleaned, mut failures) = (Vec::new(), Vec::new());
    for family in [proxy_core::IpFamily::V4, proxy_core::IpFamily::V6] {
        for variant in [crate::Variant::Nft, crate::Variant::Legacy] {
            let mut cmd = crate::IptablesCmd::new(variant, family);
            if cmd.save("nat").is_err() {
                continue;
            }
            match clean(&mut cmd) {
                Ok(()) => cleaned.push(format!("{what}, iptables-{variant} ({family})")),
                Err(e) => {
                    failures.push(format!("iptables-{variant} ({family}): {e}: {}", e.source))
                }
            }
        }
    }
    (cleaned, failures)
}

#[cfg(test)]
mod split_tests {
    use super::split_spec;

    #[test]
    fn specs_split_like_a_shell() {
        assert_eq!(
            split_spec("-m comment --comment \"a b; c\" -j X"),
            ["-m", "comment", "--comment", "a b; c", "-j", "X"]
        );
    }
}
