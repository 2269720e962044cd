//! The proxy-mode factory: the one place that knows which crate implements which mode.
//!
//! The daemon and every command reach a datapath only through these functions and the
//! [`Proxier`] trait: [`build`] a proxier for a mode and a family, [`render`] a mode's plan for
//! review, [`cleanup_all`] what every mode left. A new mode is a new crate and one arm in each
//! `match` here.

use std::io::Write;
use std::net::IpAddr;

use anyhow::Context;
use ipnetwork::IpNetwork;
use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
use proxy_core::{IpFamily, Proxier, ProxyMode, ProxyState};

use crate::args::IptablesVariant;

/// The modes this build implements.
pub(crate) const BUILT: &[ProxyMode] = &[
    ProxyMode::Iptables,
    ProxyMode::Userspace,
    ProxyMode::Ipvs,
    ProxyMode::Nftables,
];

/// A removal that needs no running proxier; returns what it removed.
pub(crate) type NodeCleanup = fn() -> Result<Vec<String>, proxy_core::ProxierError>;

/// What the runner knows of a mode besides how to build and render it: what the mode leaves on
/// a node, so that any other mode can take the node over from it (the handover) and
/// `--cleanup` can remove it.
#[derive(Debug)]
pub(crate) struct ModeParts {
    /// The mode.
    pub(crate) mode: ProxyMode,
    /// Its iptables chains, if it writes iptables rules.
    pub(crate) iptables: Option<iptables_tool::Footprint>,
    /// Removes what it leaves outside iptables (nft tables; IPVS services, `kube-ipvs0`, ipsets),
    /// run after every mode's leftover iptables rules are gone (they may reference its sets).
    pub(crate) kernel_leftovers: Option<NodeCleanup>,
    /// `kproxy --cleanup` for the mode: everything it created, without a running proxier.
    pub(crate) cleanup_node: NodeCleanup,
}

/// Every built mode's parts, in [`BUILT`]'s order.
pub(crate) const MODES: &[ModeParts] = &[
    ModeParts {
        mode: ProxyMode::Iptables,
        iptables: Some(backend_iptables::FOOTPRINT),
        kernel_leftovers: None,
        cleanup_node: backend_iptables::cleanup_node,
    },
    ModeParts {
        mode: ProxyMode::Userspace,
        iptables: Some(backend_userspace::rules::FOOTPRINT),
        kernel_leftovers: None,
        cleanup_node: backend_userspace::cleanup_node,
    },
    ModeParts {
        mode: ProxyMode::Ipvs,
        iptables: Some(backend_ipvs::rules::FOOTPRINT),
        kernel_leftovers: Some(backend_ipvs::remove_kernel_leftovers),
        cleanup_node: backend_ipvs::cleanup_node,
    },
    ModeParts {
        mode: ProxyMode::Nftables,
        iptables: None,
        kernel_leftovers: Some(backend_nftables::cleanup_node),
        cleanup_node: backend_nftables::cleanup_node,
    },
];

/// The parts of `mode` (a built one).
pub(crate) fn parts(mode: ProxyMode) -> &'static ModeParts {
    MODES
        .iter()
        .find(|p| p.mode == mode)
        .expect("every built mode has its parts")
}

/// The jumps `mode` writes from the built-in chains for `family` with `settings`: what a
/// handover to it keeps.
pub(crate) fn jumps(
    mode: ProxyMode,
    settings: &DatapathSettings,
    family: IpFamily,
) -> Vec<iptables_tool::Jump> {
    match mode {
        ProxyMode::Iptables => backend_iptables::jumps(
            iptables_render_config(settings, family).localhost_node_ports_active(),
        ),
        ProxyMode::Userspace => backend_userspace::rules::JUMPS.to_vec(),
        ProxyMode::Ipvs => backend_ipvs::rules::JUMPS.to_vec(),
        ProxyMode::Nftables => Vec::new(),
    }
}

/// A mode kproxy knows but this build does not implement yet (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "proxy mode {mode} is not available in this build of kproxy; the modes are {all}, and this \
     build has {built}"
)]
pub(crate) struct ModeNotBuilt {
    mode: ProxyMode,
    all: String,
    built: String,
}

/// Fails with [`ModeNotBuilt`] unless `mode` is implemented.
pub(crate) fn check_built(mode: ProxyMode) -> Result<(), ModeNotBuilt> {
    if BUILT.contains(&mode) {
        return Ok(());
    }
    Err(ModeNotBuilt {
        mode,
        all: ProxyMode::names(),
        built: BUILT
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// What a mode needs besides the state: kube-proxy's settings, resolved, for every family.
/// Node-derived values are not here: proxiers read them from the state's node at each sync.
#[derive(Clone, Debug)]
pub(crate) struct DatapathSettings {
    /// How local pod traffic is recognised (`detectLocalMode` and its settings).
    pub(crate) detect_local: DetectLocalMode,
    /// `masqueradeAll`.
    pub(crate) masquerade_all: bool,
    /// `iptables.masqueradeBit`.
    pub(crate) masquerade_bit: u8,
    /// `iptables.localhostNodePorts`.
    pub(crate) localhost_node_ports: bool,
    /// `nodePortAddresses`.
    pub(crate) node_port_addresses: NodePortAddressSpec,
    /// `conntrack.tcpBeLiberal`.
    pub(crate) conntrack_tcp_liberal: bool,
    /// Node addresses given on the command line (`render --node-ip`), besides the Node's.
    pub(crate) node_ips: Vec<IpAddr>,
    /// Whether the node has nfacct, for a render of a node that is not this machine; on this
    /// machine the proxier finds out itself.
    pub(crate) nfacct: bool,
    /// Which iptables binaries (modes that write iptables rules).
    pub(crate) iptables_variant: IptablesVariant,
    /// The full resync period (`syncPeriod`): how often a large cluster's full sync may read
    /// the whole nat table to find stale chains.
    pub(crate) sync_period: std::time::Duration,
    /// Whether the node is this machine (match `nodePortAddresses` against its interfaces, clean
    /// conntrack): true for the daemon and `sync`, false for `render`.
    pub(crate) on_this_node: bool,
    /// Userspace mode: the listener ports (`portRange`); `None` for ephemeral ones.
    pub(crate) proxy_port_range: Option<std::ops::RangeInclusive<u16>>,
    /// Userspace mode: how long an idle UDP session lives (`udpIdleTimeout`).
    pub(crate) udp_idle_timeout: std::time::Duration,
    /// IPVS mode's settings (`ipvs.*`).
    pub(crate) ipvs: IpvsDatapath,
}

/// The IPVS schedulers the kernel ships (`ip_vs_<name>` modules); `--ipvs-scheduler` takes one.
pub(crate) const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

/// Checks a scheduler name (empty means `rr`), so a typo fails at start-up rather than on every
/// virtual service the kernel refuses.
pub(crate) fn check_scheduler(name: &str) -> anyhow::Result<String> {
    let name = if name.is_empty() { "rr" } else { name };
    if IPVS_SCHEDULERS.contains(&name) {
        Ok(name.to_owned())
    } else {
        anyhow::bail!(
            "ipvs.scheduler: {name:?} is not an IPVS scheduler (one of {})",
            IPVS_SCHEDULERS.join(", ")
        )
    }
}

/// IPVS mode's settings, resolved from `ipvs.*` and its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IpvsDatapath {
    /// `ipvs.scheduler`.
    pub(crate) scheduler: String,
    /// `ipvs.excludeCIDRs`.
    pub(crate) exclude_cidrs: Vec<IpNetwork>,
    /// `ipvs.strictARP`.
    pub(crate) strict_arp: bool,
    /// `ipvs.tcpTimeout`, `tcpFinTimeout`, `udpTimeout`, whole seconds (0 keeps the kernel's).
    pub(crate) timeouts: backend_ipvs::Timeouts,
}

impl Default for IpvsDatapath {
    fn default() -> Self {
        Self {
            scheduler: "rr".into(),
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            timeouts: backend_ipvs::Timeouts::default(),
        }
    }
}

impl IpvsDatapath {
    /// Validates and converts the configuration's `ipvs` section.
    pub(crate) fn from_config(c: &proxy_core::config::IpvsSettings) -> anyhow::Result<Self> {
        let mut exclude_cidrs = Vec::new();
        for v in &c.exclude_cidrs {
            let net: IpNetwork = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("ipvs.excludeCIDRs: {v:?} is not a CIDR"))?;
            exclude_cidrs.push(net);
        }
        let secs = |field: &str, d: std::time::Duration| -> anyhow::Result<u32> {
            u32::try_from(d.as_secs())
                .map_err(|_| anyhow::anyhow!("ipvs.{field}: {d:?} is too long"))
        };
        Ok(Self {
            scheduler: check_scheduler(&c.scheduler)?,
            exclude_cidrs,
            strict_arp: c.strict_arp,
            timeouts: backend_ipvs::Timeouts {
                tcp: secs("tcpTimeout", c.tcp_timeout.0)?,
                tcp_fin: secs("tcpFinTimeout", c.tcp_fin_timeout.0)?,
                udp: secs("udpTimeout", c.udp_timeout.0)?,
            },
        })
    }
}

impl DatapathSettings {
    /// kube-proxy's defaults with these cluster CIDRs.
    pub(crate) fn new(cluster_cidrs: Vec<IpNetwork>) -> Self {
        Self {
            detect_local: DetectLocalMode::ClusterCidr(cluster_cidrs),
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_node_ports: true,
            node_port_addresses: NodePortAddressSpec::default(),
            conntrack_tcp_liberal: false,
            node_ips: Vec::new(),
            nfacct: false,
            iptables_variant: IptablesVariant::Auto,
            sync_period: std::time::Duration::from_secs(30),
            on_this_node: true,
            proxy_port_range: None,
            udp_idle_timeout: std::time::Duration::from_millis(250),
            ipvs: IpvsDatapath::default(),
        }
    }
}

/// What a mode that serves sockets needs from the process (userspace's listeners); handed to
/// every proxier the factory builds.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProxierContext {
    /// The daemon's tokio runtime, when there is one (`kproxy sync` has none).
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// The per-Service-port proxy metric families (userspace), registered with the daemon's
    /// other metrics.
    pub(crate) port_proxy_metrics: proxy_core::proxy_port_metrics::ProxyPortMetrics,
    /// The per-Service-port traffic families (nftables mode's counters).
    pub(crate) service_traffic_metrics: proxy_core::service_traffic_metrics::ServiceTrafficMetrics,
}

fn iptables_render_config(
    settings: &DatapathSettings,
    family: IpFamily,
) -> backend_iptables::RenderConfig {
    let mut c = backend_iptables::RenderConfig::new(family);
    c.detect_local = settings.detect_local.clone();
    c.masquerade_all = settings.masquerade_all;
    c.masquerade_bit = settings.masquerade_bit;
    c.localhost_node_ports = settings.localhost_node_ports;
    c.node_port_addresses = settings.node_port_addresses.clone();
    c.conntrack_tcp_liberal = settings.conntrack_tcp_liberal;
    // On this machine the proxier turns the counters on once it has created their objects.
    c.nfacct = settings.nfacct && !settings.on_this_node;
    c.node_ips = settings
        .node_ips
        .iter()
        .copied()
        .filter(|ip| family.contains(ip))
        .collect();
    c
}

/// From how many Service ports an automatically chosen iptables-nft advises legacy: measured on 2
/// cores, a full sync with iptables-nft 1.8 takes ~6 s at 5,000 and ~37 s at 20,000, legacy 1.2 s
/// and 9.3 s (BENCHMARKS.md); 10,000 is where nft's full syncs pass ten seconds.
const NFT_ADVICE_FROM_SERVICE_PORTS: usize = 10_000;

/// The iptables variant a mode uses for `family`: the configured one, or (auto) the one that
/// already holds more rules. Detection reads the tables, so it gives the same answer at build
/// and at the handover planned before the first sync.
pub(crate) fn iptables_variant(
    settings: &DatapathSettings,
    family: IpFamily,
) -> iptables_tool::Variant {
    match settings.iptables_variant {
        IptablesVariant::Auto => iptables_tool::detect_variant(family),
        IptablesVariant::Nft => iptables_tool::Variant::Nft,
        IptablesVariant::Legacy => iptables_tool::Variant::Legacy,
    }
}

/// Builds the proxier of `mode` for `family` inside the lifecycle every mode shares
/// ([`proxy_core::ManagedProxier`]: a failed sync makes the next full; UDP conntrack cleanup
/// after each sync on this node). Touches nothing on the node until its first sync.
pub(crate) fn build_managed(
    mode: ProxyMode,
    family: IpFamily,
    settings: &DatapathSettings,
    context: &ProxierContext,
) -> anyhow::Result<proxy_core::ManagedProxier> {
    let proxier = build(mode, family, settings, context)?;
    let mut managed = proxy_core::ManagedProxier::new(proxier, family);
    if settings.on_this_node {
        match kproxy_netlink::ConntrackCleaner::open() {
            Ok(c) => managed = managed.with_conntrack(Box::new(c)),
            Err(e) => tracing::warn!("{family}: UDP conntrack cleanup disabled: {e}"),
        }
    }
    Ok(managed)
}

/// Builds the bare proxier of `mode` for `family` (the daemon and `sync` go through
/// [`build_managed`]). Touches nothing on the node until its first sync.
pub(crate) fn build(
    mode: ProxyMode,
    family: IpFamily,
    settings: &DatapathSettings,
    context: &ProxierContext,
) -> anyhow::Result<Box<dyn Proxier>> {
    check_built(mode)?;
    match mode {
        ProxyMode::Iptables => {
            let renderer =
                backend_iptables::Renderer::new(iptables_render_config(settings, family))
                    .context("invalid iptables settings")?;
            let variant = iptables_variant(settings, family);
            tracing::info!("{family}: using iptables-{variant}");
            let mut proxier = backend_iptables::IptablesProxier::new(
                renderer,
                Box::new(iptables_tool::IptablesCmd::new(variant, family)),
            )
            .with_interface_addresses(settings.on_this_node)
            .with_chain_scan_interval(settings.sync_period)
            .with_list_first(variant == iptables_tool::Variant::Nft);
            if settings.iptables_variant == IptablesVariant::Auto
                && variant == iptables_tool::Variant::Nft
            {
                proxier = proxier.with_scale_advice(NFT_ADVICE_FROM_SERVICE_PORTS);
            }
            if settings.on_this_node {
                match kproxy_netlink::nfacct::NetlinkNfacct::open() {
                    Ok(n) => proxier = proxier.with_nfacct(Box::new(n)),
                    Err(e) => tracing::warn!("nfacct counters disabled: {e}"),
                }
            }
            Ok(Box::new(proxier))
        }
        ProxyMode::Userspace => {
            let Some(runtime) = context.runtime.clone() else {
                anyhow::bail!(
                    "userspace mode carries connections in kproxy's own process, so it runs only \
                     as the daemon (kproxy --proxy-mode userspace …), not as a one-shot sync"
                );
            };
            let variant = iptables_variant(settings, family);
            tracing::info!("{family}: userspace proxy, REDIRECT rules with iptables-{variant}");
            let listener_settings = backend_userspace::ListenerSettings {
                bind: match family {
                    IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                },
                port_range: settings.proxy_port_range.clone(),
                udp_timeout: settings.udp_idle_timeout,
                retry: backend_userspace::RetryPolicy::default(),
            };
            let proxier = backend_userspace::UserspaceProxier::new(
                listener_settings,
                runtime,
                Box::new(iptables_tool::IptablesCmd::new(variant, family)),
                context.port_proxy_metrics.clone(),
            )
            .with_node_port_addresses(settings.node_port_addresses.clone());
            Ok(Box::new(proxier))
        }
        ProxyMode::Ipvs => {
            let variant = iptables_variant(settings, family);
            tracing::info!("{family}: IPVS, its iptables rules with iptables-{variant}");
            let proxier = backend_ipvs::IpvsProxier::open(
                family,
                ipvs_settings(settings),
                Box::new(iptables_tool::IptablesCmd::new(variant, family)),
            )
            .map_err(|e| anyhow::anyhow!("{e}: {}", e.source))?;
            Ok(Box::new(proxier))
        }
        ProxyMode::Nftables => {
            tracing::info!(
                "{family}: nftables over netlink, table {}",
                backend_nftables::names::TABLE
            );
            let proxier =
                backend_nftables::NftablesProxier::open(family, nftables_settings(settings))
                    .map_err(|e| anyhow::anyhow!("{e}: {}", e.source))?
                    .with_traffic_metrics(context.service_traffic_metrics.clone());
            Ok(Box::new(proxier))
        }
    }
}

fn nftables_settings(settings: &DatapathSettings) -> backend_nftables::NftablesSettings {
    let mut s = backend_nftables::NftablesSettings::new(settings.detect_local.clone());
    s.masquerade_all = settings.masquerade_all;
    s.masquerade_bit = settings.masquerade_bit;
    s.node_port_addresses = settings.node_port_addresses.clone();
    s.node_ips = settings.node_ips.clone();
    s
}

fn ipvs_settings(settings: &DatapathSettings) -> backend_ipvs::IpvsSettings {
    let mut s = backend_ipvs::IpvsSettings::new(settings.detect_local.clone());
    s.scheduler = settings.ipvs.scheduler.clone();
    s.exclude_cidrs = settings.ipvs.exclude_cidrs.clone();
    s.strict_arp = settings.ipvs.strict_arp;
    s.timeouts = settings.ipvs.timeouts;
    s.masquerade_all = settings.masquerade_all;
    s.masquerade_bit = settings.masquerade_bit;
    s.node_port_addresses = settings.node_port_addresses.clone();
    s
}

/// Writes `mode`'s plan for `state` (iptables: the exact iptables-restore input; userspace: the
/// listeners as comments, then its iptables-restore input; ipvs: the virtual and real servers as
/// `ipvsadm -S`, the ipset members as `ipset save`, then the iptables-restore input).
pub(crate) fn render(
    mode: ProxyMode,
    state: &ProxyState,
    settings: &DatapathSettings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    check_built(mode)?;
    match mode {
        ProxyMode::Iptables => {
            let mut renderer =
                backend_iptables::Renderer::new(iptables_render_config(settings, state.family()))
                    .context("invalid iptables settings")?;
            renderer.render_full_to(state, out)?;
            Ok(())
        }
        ProxyMode::Userspace => {
            let node_ports = settings.node_port_addresses.select(
                state.family(),
                &settings.node_ips,
                state.node(),
            );
            backend_userspace::plan::write_plan(
                state,
                settings.proxy_port_range.clone(),
                &node_ports,
                out,
            )?;
            Ok(())
        }
        ProxyMode::Ipvs => {
            let family = state.family();
            let ctx = backend_ipvs::plan::PlanContext {
                family,
                scheduler: settings.ipvs.scheduler.clone(),
                node_name: state.node().name.clone(),
                node_port_ips: node_port_ips(settings, state),
                node_addresses: settings.node_ips.iter().copied().collect(),
                primary_ip: state.node().primary_address(family),
            };
            backend_ipvs::render::write_plan(state, &ctx, &ipvs_settings(settings), out)?;
            Ok(())
        }
        ProxyMode::Nftables => {
            let mut addrs = settings.node_ips.clone();
            if addrs.is_empty() {
                addrs = state.node().addresses.clone();
            }
            let ctx = backend_nftables::proxier::plan_context(
                state.family(),
                &nftables_settings(settings),
                state,
                Some(&addrs),
            );
            let mut text = String::new();
            backend_nftables::render::write_ruleset(state, &ctx, &mut text);
            out.write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

/// The addresses a render puts NodePort virtual services on: the node's addresses (`--node-ip`,
/// else its Node's) that `nodePortAddresses` selects, without loopback.
fn node_port_ips(settings: &DatapathSettings, state: &ProxyState) -> Vec<IpAddr> {
    let family = state.family();
    let mut addrs: Vec<IpAddr> = settings.node_ips.clone();
    if addrs.is_empty() {
        addrs = state.node().addresses.clone();
    }
    let picked = match settings
        .node_port_addresses
        .select(family, &addrs, state.node())
    {
        proxy_core::datapath::NodePortAddresses::All => addrs,
        proxy_core::datapath::NodePortAddresses::Only(list) => list,
    };
    picked
        .into_iter()
        .filter(|ip| family.contains(ip) && !ip.is_loopback())
        .collect()
}

/// Removes what every mode created on this node (`kproxy --cleanup`), without a running proxier.
/// Every mode's cleanup runs even if one fails; the failures are reported together.
pub(crate) fn cleanup_all() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for parts in MODES {
        let mode = parts.mode;
        match (parts.cleanup_node)() {
            Ok(cleaned) => {
                for what in cleaned {
                    tracing::info!("{mode}: cleaned up {what}");
                }
            }
            Err(e) => failures.push(format!("{:#}", anyhow::Error::new(e))),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup incomplete:\n{}", failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_is_built() {
        for mode in [
            ProxyMode::Iptables,
            ProxyMode::Ipvs,
            ProxyMode::Nftables,
            ProxyMode::Userspace,
        ] {
            assert!(check_built(mode).is_ok(), "{mode}");
            assert_eq!(parts(mode).mode, mode);
        }
        assert_eq!(MODES.len(), BUILT.len());
    }
}
