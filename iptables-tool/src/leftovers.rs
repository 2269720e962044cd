//! Removing what modes left in the iptables tables: at a handover between modes (the new mode
//! keeps its own chains and jumps, everything another mode owns goes), and for `--cleanup`
//! (nothing is kept).
//!
//! Chains belong to modes by name ([`Footprint`]); a rule belongs to whoever owns the chain it
//! jumps to. Two modes may own the same chain (iptables and IPVS mode both write `nat
//! KUBE-SERVICES`, as upstream does): a chain the new mode owns is never removed, since the new
//! mode's restore has already rewritten it. Removal is one restore per table: the rules elsewhere
//! that jump into a removed chain are deleted, then every removed chain is flushed, then deleted,
//! so chains that jump into each other go together and the table is never left half-cleaned.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::exec::{ExecError, IptablesOps};
use crate::jump::{rule_target, Jump};

/// The tables kproxy's modes write into.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// The built-in chains of those tables.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Which iptables chains a mode owns, by table and name (a function, since iptables mode owns
/// per-Service chains by prefix).
#[derive(Clone, Copy)]
pub struct Footprint {
    /// The mode's name, for logs.
    pub mode: &'static str,
    /// Whether `(table, chain)` is one of the mode's chains.
    pub owns: fn(table: &str, chain: &str) -> bool,
}

impl std::fmt::Debug for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Footprint")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What a mode keeps at a handover: its chains and the exact jumps it writes now.
#[derive(Clone, Copy, Debug)]
pub struct Keep<'a> {
    /// The new mode's chains.
    pub footprint: &'a Footprint,
    /// The jumps the new mode ensures; other rules in built-in chains jumping into its chains
    /// (an old mode's variant of the same jump) are removed once the new mode's own is there.
    pub jumps: &'a [Jump],
}

/// What [`remove_leftovers`] removed from one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The table.
    pub table: &'static str,
    /// The chains deleted.
    pub chains: Vec<String>,
    /// The rules deleted outside those chains, as saved (`<chain> <spec>`).
    pub rules: Vec<String>,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 8;
        write!(f, "{}: {} chain(s)", self.table, self.chains.len())?;
        if !self.chains.is_empty() {
            let names: Vec<&str> = self.chains.iter().take(SHOWN).map(String::as_str).collect();
            write!(f, " ({}", names.join(", "))?;
            if self.chains.len() > SHOWN {
                write!(f, ", … {} more", self.chains.len() - SHOWN)?;
            }
            f.write_str(")")?;
        }
        write!(f, ", {} rule(s) jumping into them", self.rules.len())
    }
}

/// A save or restore that failed while removing leftovers, and in which table.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct LeftoverError {
    /// What was being done, e.g. `iptables-save of the nat table`.
    pub operation: String,
    /// The failed call.
    #[source]
    pub source: ExecError,
}

/// Removes from every table the chains any of `modes` owns and `keep` does not, with the rules
/// that jump into them, and the variants of `keep`'s jumps that are not `keep`'s own (only where
/// `keep`'s own is present, so traffic never loses its jump). `keep: None` removes everything
/// `modes` own (`--cleanup`, or a variant or family the running mode does not use). Returns what
/// was removed, per table that had something.
pub fn remove_leftovers(
    iptables: &mut dyn IptablesOps,
    keep: Option<Keep<'_>>,
    modes: &[Footprint],
) -> Result<Vec<Removed>, LeftoverError> {
    let mut out = Vec::new();
    for table in TABLES {
        let saved = iptables.save(table).map_err(|source| LeftoverError {
            operation: format!("iptables-save of the {table} table"),
            source,
        })?;
        let removed = plan_table(table, &saved, keep, modes);
        if removed.chains.is_empty() && removed.rules.is_empty() {
            continue;
        }
        let mut text = format!("*{table}\n");
        for rule in &removed.rules {
            let _ = writeln!(text, "-D {rule}");
        }
        for chain in &removed.chains {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for chain in &removed.chains {
            let _ = writeln!(text, "-X {chain}");
        }
        text.push_str("COMMIT\n");
        iptables
            .restore(&mut |w| w.write_all(text.as_bytes()))
            .map_err(|source| LeftoverError {
                operation: format!("removing leftover chains from the {table} table"),
                source,
            })?;
        out.push(removed);
    }
    Ok(out)
}

/// Decides, from one table's `iptables-save`, what [`remove_leftovers`] removes there.
pub fn plan_table(
    table: &'static str,
    saved: &str,
    keep: Option<Keep<'_>>,
    modes: &[Footprint],
) -> Removed {
    let owned_by_any = |chain: &str| modes.iter().any(|m| (m.owns)(table, chain));
    let kept = |chain: &str| keep.is_some_and(|k| (k.footprint.owns)(table, chain));
    let mut removed = Removed {
        table,
        ..Removed::default()
    };
    for decl in saved.lines().filter_map(|l| l.strip_prefix(':')) {
        let name = decl.split_whitespace().next().unwrap_or_default();
        if owned_by_any(name) && !kept(name) {
            removed.chains.push(name.to_owned());
        }
    }
    let gone: HashSet<&str> = removed.chains.iter().map(String::as_str).collect();
    let rules: Vec<(&str, &str)> = saved
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter_map(|r| Some((r.split_whitespace().next()?, r)))
        .collect();
    // A built-in chain's jump into a kept chain that is one of the new mode's own.
    let is_keeps_jump = |chain: &str, rule: &str| {
        keep.is_some_and(|k| {
            k.jumps.iter().any(|j| {
                j.table == table && j.from == chain && j.is_listed_as(&format!("-A {rule}"))
            })
        })
    };
    for &(chain, rule) in &rules {
        if gone.contains(chain) {
            continue; // flushed with its chain
        }
        let Some(target) = rule_target(rule) else {
            continue;
        };
        let delete = if gone.contains(target) {
            true
        } else if BUILTIN_CHAINS.contains(&chain) && kept(target) && !is_keeps_jump(chain, rule) {
            // Another mode's way into a chain the new mode owns: remove it once the new mode's
            // own jump from this chain to that target is there.
            rules
                .iter()
                .any(|&(c, r)| c == chain && rule_target(r) == Some(target) && is_keeps_jump(c, r))
        } else {
            false
        };
        if delete {
            removed.rules.push(rule.to_owned());
        }
    }
    removed
}

/// Runs `clean` for every family and iptables variant whose tools can list the nat table (a
/// variant whose binaries are missing, or whose kernel backend is, holds nothing of ours).
/// Returns what was cleaned (`<what>, iptables-<variant> (<family>)`) and the failures.
pub fn clean_every_variant<E: std::fmt::Display>(
    what: &str,
    mut clean: impl FnMut(&mut crate::IptablesCmd) -> Result<(), E>,
) -> (Vec<String>, Vec<String>) {
    let (mut cleaned, mut failures) = (Vec::new(), Vec::new());
    for family in [proxy_core::IpFamily::V4, proxy_core::IpFamily::V6] {
        for variant in [crate::Variant::Nft, crate::Variant::Legacy] {
            let mut cmd = crate::IptablesCmd::new(variant, family);
            if cmd.save("nat").is_err() {
                continue;
            }
            match clean(&mut cmd) {
                Ok(()) => cleaned.push(format!("{what}, iptables-{variant} ({family})")),
                Err(e) => failures.push(format!("iptables-{variant} ({family}): {e}")),
            }
        }
    }
    (cleaned, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipvs_owns(table: &str, chain: &str) -> bool {
        matches!(
            (table, chain),
            ("nat", "KUBE-SERVICES") | ("nat", "KUBE-LOAD-BALANCER") | ("filter", "KUBE-FORWARD")
        )
    }
    fn iptables_owns(table: &str, chain: &str) -> bool {
        matches!(table, "nat" | "filter")
            && (matches!(
                chain,
                "KUBE-SERVICES" | "KUBE-FORWARD" | "KUBE-EXTERNAL-SERVICES"
            ) || chain.starts_with("KUBE-SVC-"))
    }
    const IPVS: Footprint = Footprint {
        mode: "ipvs",
        owns: ipvs_owns,
    };
    const IPTABLES: Footprint = Footprint {
        mode: "iptables",
        owns: iptables_owns,
    };

    const NAT: &str = "*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:OUTPUT ACCEPT [0:0]\n\
:KUBE-SERVICES - [0:0]\n\
:KUBE-SVC-ABC - [0:0]\n\
:KUBE-LOAD-BALANCER - [0:0]\n\
:OTHER - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A PREROUTING -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"old portals\" -j KUBE-SERVICES\n\
-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-ABC\n\
-A KUBE-SVC-ABC -j KUBE-LOAD-BALANCER\n\
-A OTHER -j KUBE-SVC-ABC\n\
-A OTHER -j ACCEPT\n\
COMMIT\n";

    #[test]
    fn a_handover_removes_what_only_the_old_mode_owns_and_its_variant_jumps() {
        let jumps = [Jump::commented(
            "nat",
            "PREROUTING",
            "KUBE-SERVICES",
            "kubernetes service portals",
        )];
        let keep = Keep {
            footprint: &IPVS,
            jumps: &jumps,
        };
        let removed = plan_table("nat", NAT, Some(keep), &[IPTABLES, IPVS]);
        assert_eq!(removed.chains, ["KUBE-SVC-ABC"]);
        // The rule of a foreign chain into a removed chain goes; the old variant of the jump
        // goes because the new mode's own is there; OUTPUT's only jump stays (no own one yet).
        assert_eq!(
            removed.rules,
            [
                "PREROUTING -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                "KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-ABC",
                "OTHER -j KUBE-SVC-ABC",
            ]
        );
    }

    #[test]
    fn nothing_kept_removes_every_chain_of_every_mode() {
        let removed = plan_table("nat", NAT, None, &[IPTABLES, IPVS]);
        assert_eq!(
            removed.chains,
            ["KUBE-SERVICES", "KUBE-SVC-ABC", "KUBE-LOAD-BALANCER"]
        );
        assert_eq!(removed.rules.len(), 4, "{:?}", removed.rules);
        assert_eq!(
            removed.to_string(),
            "nat: 3 chain(s) (KUBE-SERVICES, KUBE-SVC-ABC, KUBE-LOAD-BALANCER), 4 rule(s) jumping into them"
        );
    }
}
