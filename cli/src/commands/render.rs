//! `kproxy render`: print the iptables-restore input for manifests.

use std::io::Write;

use anyhow::Context;
use backend_iptables::{NodePortAddresses, RenderConfig, Renderer};
use proxy_core::IpFamily;

use crate::args::{Family, ProxyMode, RenderArgs};
use crate::input;

/// Loads, builds the state, renders it fully and writes it to stdout.
pub(crate) fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let input = input::load(&args.manifests)?;
    let state = input::build_state(&input, args.ip_family);
    let mut renderer = renderer_for(args, &state)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    renderer.render_full_to(&state, &mut out)?;
    out.flush()?;
    Ok(())
}

/// The renderer the flags describe, for `state`'s family (node IPs default to the Node object's).
pub(crate) fn renderer_for(
    args: &RenderArgs,
    state: &proxy_core::ProxyState,
) -> anyhow::Result<Renderer> {
    match args.proxy_mode {
        ProxyMode::Iptables => {}
    }
    let family = match args.ip_family {
        Family::Ipv4 => IpFamily::V4,
        Family::Ipv6 => IpFamily::V6,
    };
    let mut config = RenderConfig::new(family);
    config.cluster_cidr = args
        .cluster_cidr
        .iter()
        .copied()
        .find(|c| family.contains(&c.ip()));
    config.masquerade_all = args.masquerade_all;
    config.masquerade_bit = args.iptables_masquerade_bit;
    config.localhost_node_ports = !args.no_localhost_nodeports;
    config.node_ips = if args.node_ip.is_empty() {
        state.node().addresses.clone()
    } else {
        args.node_ip
            .iter()
            .copied()
            .filter(|ip| family.contains(ip))
            .collect()
    };
    if !args.nodeport_addresses.is_empty() {
        let mut ips: Vec<_> = config
            .node_ips
            .iter()
            .copied()
            .filter(|ip| args.nodeport_addresses.iter().any(|n| n.contains(*ip)))
            .collect();
        // 127.0.0.1 is a node address for this purpose when a CIDR covers it.
        let loopback = match family {
            IpFamily::V4 => "127.0.0.1".parse().expect("valid"),
            IpFamily::V6 => "::1".parse().expect("valid"),
        };
        if args.nodeport_addresses.iter().any(|n| n.contains(loopback)) {
            ips.push(loopback);
        }
        config.node_port_addresses = NodePortAddresses::Only(ips);
    }
    Renderer::new(config).context("invalid iptables settings")
}
