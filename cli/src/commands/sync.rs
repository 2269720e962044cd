//! `kproxy sync`: apply the state of manifests once, through the proxier the daemon uses.

use anyhow::Context;
use proxy_core::{IpFamily, Proxier};

use crate::args::{Family, SyncArgs};
use crate::commands::render::settings_for;
use crate::handover::Handover;
use crate::input;
use crate::modes::{self, ProxierContext};

/// Loads manifests, builds the state, and applies it with a fresh proxier of the chosen mode: a
/// full sync, exactly what the daemon's first sync does (including deleting what a previous run
/// left and no longer needs).
pub(crate) fn run(args: &SyncArgs) -> anyhow::Result<()> {
    let mode = args.render.proxy_mode;
    modes::check_built(mode)?;
    let input = input::load(&args.render.manifests)?;
    let state = input::build_state(&input, args.render.ip_family);
    let family = match args.render.ip_family {
        Family::Ipv4 => IpFamily::V4,
        Family::Ipv6 => IpFamily::V6,
    };
    let mut settings = settings_for(&args.render)?;
    settings.iptables_variant = args.iptables_variant;
    let handover = Handover::plan(mode, &settings, &[family]);
    let mut proxier = modes::build_managed(mode, family, &settings, &ProxierContext::default())?;
    let report = proxier
        .sync(&state, &state.resync_diff())
        .with_context(|| format!("applying the {mode} datapath"))?;
    if let Err(failures) = handover.run() {
        anyhow::bail!(
            "the {mode} datapath is applied, but removing other modes' leftovers failed: {}",
            failures.join("; ")
        );
    }
    tracing::info!(
        "synced {} service ports ({} objects written) in {mode} mode",
        state.len(),
        report.total_written()
    );
    Ok(())
}
