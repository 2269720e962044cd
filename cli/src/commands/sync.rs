//! `kproxy sync`: render and apply once, through the proxier the daemon uses.

use anyhow::Context;
use backend_iptables::conntrack::{ConntrackOps, NetlinkConntrack};
use backend_iptables::{detect_variant, IptablesCmd, IptablesProxier, Variant};
use proxy_core::{IpFamily, Proxier};

use crate::args::{Family, IptablesVariant, SyncArgs};
use crate::commands::render::renderer_for;
use crate::input;

/// Loads manifests, builds the state, and applies it with a fresh [`IptablesProxier`]: a full sync,
/// exactly what the daemon's first sync does (including deleting chains a previous run left).
pub(crate) fn run(args: &SyncArgs) -> anyhow::Result<()> {
    let input = input::load(&args.render.manifests)?;
    let state = input::build_state(&input, args.render.ip_family);
    let family = match args.render.ip_family {
        Family::Ipv4 => IpFamily::V4,
        Family::Ipv6 => IpFamily::V6,
    };
    let variant = match args.iptables_variant {
        IptablesVariant::Auto => detect_variant(family),
        IptablesVariant::Nft => Variant::Nft,
        IptablesVariant::Legacy => Variant::Legacy,
    };
    let renderer = renderer_for(&args.render, &state)?;
    let conntrack = match NetlinkConntrack::open() {
        Ok(c) => Some(Box::new(c) as Box<dyn ConntrackOps>),
        Err(e) => {
            tracing::warn!("conntrack cleanup disabled: {e}");
            None
        }
    };
    let mut proxier = IptablesProxier::new(
        renderer,
        Box::new(IptablesCmd::new(variant, family)),
        conntrack,
    );
    let diff = state.resync_diff();
    let report = proxier
        .sync(&state, &diff)
        .with_context(|| format!("applying rules with iptables-{variant}"))?;
    tracing::info!(
        "synced {} service ports ({} rules) with iptables-{variant}",
        state.len(),
        report.objects_written
    );
    Ok(())
}
