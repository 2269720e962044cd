//! `kproxy render`: print a mode's plan for manifests (iptables: the iptables-restore input).

use std::io::Write;

use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
use proxy_core::IpFamily;

use crate::args::{Family, RenderArgs};
use crate::daemon::settings_error::BadSetting;
use crate::input;
use crate::modes::{self, DatapathSettings};

/// Loads, builds the state, renders it fully and writes it to stdout.
pub(crate) fn run(args: &RenderArgs) -> anyhow::Result<()> {
    modes::check_built(args.proxy_mode)?;
    let input = input::load(&args.manifests)?;
    let state = input::build_state(&input, args.ip_family);
    let mut settings = settings_for(args)?;
    settings.on_this_node = false;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    modes::render(args.proxy_mode, &state, &settings, &mut out)?;
    out.flush()?;
    Ok(())
}

/// The datapath settings the flags describe.
pub(crate) fn settings_for(args: &RenderArgs) -> anyhow::Result<DatapathSettings> {
    let family = match args.ip_family {
        Family::Ipv4 => IpFamily::V4,
        Family::Ipv6 => IpFamily::V6,
    };
    let mut s = DatapathSettings::new(args.cluster_cidr.clone());
    let d = &args.detect_local;
    s.detect_local = DetectLocalMode::from_config(
        d.detect_local_mode.as_deref().unwrap_or(""),
        args.cluster_cidr.clone(),
        d.pod_bridge_interface.as_deref().unwrap_or(""),
        d.pod_interface_name_prefix.as_deref().unwrap_or(""),
    )
    .map_err(|e| BadSetting(e.to_string()))?;
    s.masquerade_all = args.masquerade_all;
    s.masquerade_bit = args.iptables_masquerade_bit;
    s.localhost_node_ports =
        !args.no_localhost_nodeports && args.iptables_localhost_nodeports.unwrap_or(true);
    s.conntrack_tcp_liberal = args.conntrack_tcp_be_liberal.unwrap_or(false);
    s.nfacct = !args.no_nfacct;
    s.node_ips = args
        .node_ip
        .iter()
        .copied()
        .filter(|ip| family.contains(ip))
        .collect();
    s.proxy_port_range = args.proxy_port_range.clone();
    if let Some(v) = &args.ipvs_scheduler {
        s.ipvs.scheduler = crate::modes::check_scheduler(v)?;
    }
    s.node_port_addresses = NodePortAddressSpec {
        cidrs: args.nodeport_addresses.clone(),
        primary: false,
    };
    Ok(s)
}
