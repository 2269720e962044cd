//! Loading manifests and feeding them through the proxy-core handlers, as the daemon's sources do.

use std::path::PathBuf;

use anyhow::Context;
use fixtures::{LoadError, Manifests};
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeHandler, NodeInfo, PendingChanges, ProxyState,
    ServiceFilter, ServiceHandler,
};

use crate::args::{Family, ManifestArgs};

/// The loaded manifests and the node name to act as.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) manifests: Manifests,
    pub(crate) node_name: String,
    pub(crate) filter: ServiceFilter,
}

/// Loads `-f` paths (or the bundled examples) and settles the node name.
pub(crate) fn load(args: &ManifestArgs) -> anyhow::Result<Input> {
    let mut manifests = if args.files.is_empty() {
        fixtures::examples()
    } else {
        fixtures::load_paths(&args.files)?
    };
    manifests.warn_duplicates();
    for warning in &manifests.warnings {
        tracing::warn!("{warning}");
    }
    let node_name = match (&args.hostname_override, args.files.is_empty()) {
        (Some(n), _) => n.trim().to_lowercase(),
        (None, true) => fixtures::EXAMPLE_NODE.to_owned(),
        (None, false) => {
            host_name().context("cannot tell this host's name; pass --hostname-override")?
        }
    };
    Ok(Input {
        manifests,
        node_name,
        filter: ServiceFilter {
            proxy_name: args.service_proxy_name.clone(),
        },
    })
}

/// Builds the state for one family the way the daemon does: every object through the handlers, then
/// one apply. Conversion warnings are logged (to stderr) as they happen.
pub(crate) fn build_state(input: &Input, family: Family) -> ProxyState {
    let family = match family {
        Family::Ipv4 => IpFamily::V4,
        Family::Ipv6 => IpFamily::V6,
    };
    let mut pending = PendingChanges::new(family, &input.node_name, input.filter.clone());
    for s in &input.manifests.services {
        pending.on_service_add(s);
    }
    for s in &input.manifests.endpoint_slices {
        pending.on_endpoint_slice_add(s);
    }
    for c in &input.manifests.service_cidrs {
        proxy_core::ServiceCidrHandler::on_service_cidr_change(&mut pending, c);
    }
    for n in &input.manifests.nodes {
        pending.on_node_change(n);
    }
    pending.on_service_synced();
    pending.on_endpoint_slice_synced();
    pending.on_node_synced();
    let mut state = ProxyState::new(family, NodeInfo::named(&input.node_name));
    state.apply(&mut pending);
    state
}

/// Whether an error is the user's input being wrong (exit status 2) rather than a failure.
pub(crate) fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<LoadError>().is_some())
}

/// This host's name, lower-cased as kube-proxy does.
fn host_name() -> anyhow::Result<String> {
    let path = PathBuf::from("/proc/sys/kernel/hostname");
    let name =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(name.trim().to_lowercase())
}
