//! The handover between modes: once the running mode's first sync has landed, remove what other
//! modes (kproxy's or kube-proxy's, which use the same names) left on the node, so none of it
//! keeps steering traffic: another mode's iptables chains and jumps in both variants and both
//! families, the `kube-proxy` nft tables, IPVS virtual services with `kube-ipvs0` and the
//! `KUBE-*` ipsets, the userspace chains. Upstream kube-proxy does the same at start
//! (`platformCleanup`); doing it after the first sync means traffic the new mode serves never
//! meets a moment without rules.
//!
//! What the running mode owns stays: chains of its own (even those another mode shares, such as
//! `nat KUBE-SERVICES`, which its sync has already rewritten) and its jumps. A variant or family
//! it does not write (iptables-legacy when it uses nft, IPv6 on a single-stack node, every
//! variant for nftables mode) keeps nothing of any mode.

use proxy_core::{IpFamily, ProxyMode};

use crate::modes::{self, DatapathSettings, MODES};

/// The handover the runner does once, planned at start (before any sync, so the iptables
/// variant chosen here is the one the proxiers chose).
#[derive(Debug)]
pub(crate) struct Handover {
    mode: ProxyMode,
    /// Per family the mode runs: the variant it writes iptables rules with, and its jumps.
    writes: Vec<(IpFamily, iptables_tool::Variant, Vec<iptables_tool::Jump>)>,
}

impl Handover {
    /// The handover to `mode` on `families` with `settings`.
    pub(crate) fn plan(
        mode: ProxyMode,
        settings: &DatapathSettings,
        families: &[IpFamily],
    ) -> Self {
        let writes = if modes::parts(mode).iptables.is_some() {
            families
                .iter()
                .map(|&f| {
                    (
                        f,
                        modes::iptables_variant(settings, f),
                        modes::jumps(mode, settings, f),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Self { mode, writes }
    }

    /// Removes the other modes' leftovers; returns what was removed, one line per table or
    /// object kind (also logged). Failures are collected: what could be removed is.
    pub(crate) fn run(&self) -> Result<Vec<String>, Vec<String>> {
        let footprints: Vec<iptables_tool::Footprint> =
            MODES.iter().filter_map(|p| p.iptables).collect();
        let own = modes::parts(self.mode).iptables;
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            for variant in [iptables_tool::Variant::Nft, iptables_tool::Variant::Legacy] {
                let mut cmd = iptables_tool::IptablesCmd::new(variant, family);
                // A variant that cannot list the nat table holds nothing: its binaries are
                // missing, or the kernel lacks its backend.
                if iptables_tool::IptablesOps::save(&mut cmd, "nat").is_err() {
                    continue;
                }
                let written = self
                    .writes
                    .iter()
                    .find(|(f, v, _)| *f == family && *v == variant);
                let keep = match (own.as_ref(), written) {
                    (Some(footprint), Some((_, _, jumps))) => {
                        Some(iptables_tool::Keep { footprint, jumps })
                    }
                    _ => None,
                };
                match iptables_tool::remove_leftovers(&mut cmd, keep, &footprints) {
                    Ok(tables) => removed.extend(
                        tables
                            .iter()
                            .map(|t| format!("iptables-{variant} ({family}) {t}")),
                    ),
                    Err(e) => failures.push(format!("iptables-{variant} ({family}): {e}")),
                }
            }
        }
        for parts in MODES.iter().filter(|p| p.mode != self.mode) {
            let Some(leftovers) = parts.kernel_leftovers else {
                continue;
            };
            match leftovers() {
                Ok(what) => removed.extend(what),
                Err(e) => failures.push(format!("{:#}", anyhow::Error::new(e))),
            }
        }
        for what in &removed {
            tracing::info!("handover to {} mode: removed {what}", self.mode);
        }
        if failures.is_empty() {
            Ok(removed)
        } else {
            Err(failures)
        }
    }
}
