//! The effective settings: the `--config` file (or upstream's defaults), overridden by flags.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use proxy_core::config::KubeProxyConfiguration;
use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
use proxy_core::{IpFamily, ProxyMode};

use crate::args::DaemonArgs;
use crate::modes::DatapathSettings;

/// Everything the daemon needs, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) config: KubeProxyConfiguration,
    pub(crate) node_name: String,
    pub(crate) healthz: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) sync_period: Duration,
    pub(crate) min_sync_period: Duration,
    /// The proxy mode (`--proxy-mode`, else the config's `mode`, else iptables).
    pub(crate) mode: ProxyMode,
    /// What the mode's proxiers are built with.
    pub(crate) datapath: DatapathSettings,
    /// Which Services are ours (`--service-proxy-name`).
    pub(crate) filter: proxy_core::ServiceFilter,
    /// The IP families to program: those of the cluster CIDRs (IPv4 when none is set).
    pub(crate) families: Vec<IpFamily>,
}

/// A flag or config value that is invalid (exit status 2).
#[derive(Debug)]
pub(crate) struct BadSetting(pub(crate) String);

impl std::fmt::Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadSetting {}

impl Settings {
    /// Loads `--config`, applies flags, validates.
    pub(crate) fn from_args(args: &DaemonArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                KubeProxyConfiguration::from_yaml(&path.display().to_string(), &text)
                    .map_err(|e| BadSetting(e.to_string()))?
            }
            None => KubeProxyConfiguration::default(),
        };
        if let Some(v) = &args.hostname_override {
            config.hostname_override = v.clone();
        }
        if let Some(v) = &args.cluster_cidr {
            config.cluster_cidr = v.clone();
        }
        if args.masquerade_all {
            config.iptables.masquerade_all = true;
        }
        if let Some(v) = &args.nodeport_addresses {
            config.node_port_addresses = v.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(v) = &args.ipvs_scheduler {
            config.ipvs.scheduler = v.clone();
        }
        if let Some(v) = &args.healthz_bind_address {
            config.healthz_bind_address = v.clone();
        }
        if let Some(mode) = args.proxy_mode {
            config.mode = mode.as_str().to_owned();
        }
        let detect = &args.detect_local;
        if let Some(v) = &detect.detect_local_mode {
            config.detect_local_mode = v.clone();
        }
        if let Some(v) = &detect.pod_bridge_interface {
            config.detect_local.bridge_interface = v.clone();
        }
        if let Some(v) = &detect.pod_interface_name_prefix {
            config.detect_local.interface_name_prefix = v.clone();
        }
        if let Some(v) = &args.metrics_bind_address {
            config.metrics_bind_address = v.clone();
        }
        if let Some(v) = args.iptables_sync_period {
            config.iptables.sync_period = v;
        }
        args.upstream.apply(&mut config)?;
        let mut min_sync_period = None;
        if let Some(v) = args.iptables_min_sync_period {
            // An explicit flag is honoured exactly, zero included (the file's zero means default).
            config.iptables.min_sync_period = v;
            min_sync_period = Some(v.0);
        }
        config.validate().map_err(|e| BadSetting(e.to_string()))?;
        let parse = |field: &str, v: &str| -> anyhow::Result<SocketAddr> {
            v.parse()
                .map_err(|_| BadSetting(format!("{field}: {v:?} is not an address:port")).into())
        };
        let node_name = if config.hostname_override.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the host name")?
                .trim()
                .to_lowercase()
        } else {
            config.hostname_override.trim().to_lowercase()
        };
        let cidrs = config
            .cluster_cidrs()
            .map_err(|e| BadSetting(e.to_string()))?;
        let mut families: Vec<IpFamily> = cidrs.iter().map(|c| IpFamily::of(&c.ip())).collect();
        if families.is_empty() {
            families.push(IpFamily::V4);
        }
        let mode = config.proxy_mode();
        crate::modes::check_built(mode)?;
        let mut datapath = DatapathSettings::new(cidrs.clone());
        datapath.detect_local = DetectLocalMode::from_config(
            &config.detect_local_mode,
            cidrs,
            &config.detect_local.bridge_interface,
            &config.detect_local.interface_name_prefix,
        )
        .map_err(|e| BadSetting(e.to_string()))?;
        datapath.masquerade_all = config.iptables.masquerade_all;
        datapath.masquerade_bit = config.iptables.masquerade_bit.unwrap_or(14) as u8;
        datapath.localhost_node_ports = config.iptables.localhost_node_ports.unwrap_or(true);
        datapath.conntrack_tcp_liberal = config.conntrack.tcp_be_liberal;
        datapath.node_port_addresses = NodePortAddressSpec::parse(&config.node_port_addresses)
            .map_err(|e| BadSetting(e.to_string()))?;
        datapath.iptables_variant = args.iptables_variant;
        datapath.sync_period = config.effective_sync_period();
        datapath.proxy_port_range = config
            .proxy_port_range()
            .map_err(|e| BadSetting(e.to_string()))?;
        datapath.udp_idle_timeout = config.udp_idle_timeout.0;
        datapath.ipvs = crate::modes::IpvsDatapath::from_config(&config.ipvs)
            .map_err(|e| BadSetting(e.to_string()))?;
        Ok(Self {
            filter: proxy_core::ServiceFilter {
                proxy_name: args.service_proxy_name.clone(),
            },
            families,
            healthz: parse("healthzBindAddress", &config.healthz_bind_address)?,
            metrics: parse("metricsBindAddress", &config.metrics_bind_address)?,
            sync_period: config.effective_sync_period(),
            min_sync_period: min_sync_period.unwrap_or_else(|| config.effective_min_sync_period()),
            node_name,
            mode,
            datapath,
            config,
        })
    }
}
