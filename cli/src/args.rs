//! The command line, in kube-proxy's spelling where kube-proxy has the flag.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use proxy_core::ProxyMode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kproxy: a kube-proxy replacement.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about)]
pub(crate) struct Cli {
    /// Log verbosity (kube-proxy's `-v`): 0-1 info, 2-3 debug, 4+ trace.
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0)]
    pub(crate) verbosity: u8,

    /// Remove everything kproxy created on this node (every mode, both iptables variants, both IP
    /// families) and exit, like kube-proxy's `--cleanup`.
    #[arg(long)]
    pub(crate) cleanup: bool,

    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the desired state computed from manifests: every Service port, its endpoints and the
    /// endpoint selection for this node. Needs no cluster and no root.
    State(StateArgs),
    /// Print exactly what would be fed to iptables-restore for the Services in manifests (the
    /// bundled examples without -f). Needs no cluster and no root.
    Render(RenderArgs),
    /// Render and apply the rules for manifests once, through the same code path as the daemon,
    /// then exit. Needs root.
    Sync(SyncArgs),
    /// Remove everything kproxy created on this node, as `--cleanup` does.
    Cleanup,
}

/// Which iptables to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum IptablesVariant {
    /// The variant that already holds rules; nft when neither does.
    Auto,
    /// iptables-nft.
    Nft,
    /// iptables-legacy.
    Legacy,
}

/// `kproxy sync`.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) render: RenderArgs,

    /// Which iptables binaries to use.
    #[arg(long, value_enum, default_value_t = IptablesVariant::Auto)]
    pub(crate) iptables_variant: IptablesVariant,
}

/// Parses `--proxy-mode`: any mode kproxy knows (an unknown one lists them; one this build lacks
/// is refused later, with the same list).
fn parse_mode(s: &str) -> Result<ProxyMode, String> {
    s.parse()
        .map_err(|e: proxy_core::UnknownMode| e.to_string())
}

/// `kproxy render`.
#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    #[command(flatten)]
    pub(crate) manifests: ManifestArgs,

    /// Which datapath to render for (iptables, ipvs, nftables, userspace).
    #[arg(long, value_name = "MODE", default_value = "iptables", value_parser = parse_mode)]
    pub(crate) proxy_mode: ProxyMode,

    /// The IP family (iptables-restore for ipv4, ip6tables-restore for ipv6).
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    pub(crate) ip_family: Family,

    /// The pod network(s), comma-separated (kube-proxy's `--cluster-cidr`): traffic from outside
    /// it to a cluster IP is masqueraded. The CIDR of the rendered family is used.
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',', value_parser = parse_cidr)]
    pub(crate) cluster_cidr: Vec<IpNetwork>,

    /// Masquerade all traffic to cluster IPs (kube-proxy's `--masquerade-all`).
    #[arg(long)]
    pub(crate) masquerade_all: bool,

    /// The node's IP (repeatable). Defaults to the addresses of this node's Node object.
    #[arg(long, value_name = "IP")]
    pub(crate) node_ip: Vec<IpAddr>,

    /// Only these node addresses accept NodePorts (kube-proxy's `--nodeport-addresses`,
    /// comma-separated CIDRs matched against the node IPs). Default: every local address.
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',', value_parser = parse_cidr)]
    pub(crate) nodeport_addresses: Vec<IpNetwork>,

    /// The fwmark bit for masquerading (kube-proxy's `--iptables-masquerade-bit`).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub(crate) iptables_masquerade_bit: u8,

    /// Do not accept NodePorts on 127.0.0.1 (kube-proxy's `iptables.localhostNodePorts: false`).
    #[arg(long)]
    pub(crate) no_localhost_nodeports: bool,

    /// Accept NodePorts on 127.0.0.1 (kube-proxy's `--iptables-localhost-nodeports`, default true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) iptables_localhost_nodeports: Option<bool>,

    /// `nf_conntrack_tcp_be_liberal` is set on the node: leave out the rule that drops
    /// conntrack-INVALID packets (kube-proxy's `--conntrack-tcp-be-liberal`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) conntrack_tcp_be_liberal: Option<bool>,

    /// Render for a node without nfacct: no `-m nfacct` counting rules. By default `render`
    /// assumes nfacct, as upstream's own tests do; `sync` and the daemon find out on the node.
    #[arg(long)]
    pub(crate) no_nfacct: bool,

    /// Userspace mode: the listener port range the plan numbers ports from (`begin-end` or
    /// `begin+offset`).
    #[arg(long, value_name = "RANGE", value_parser = parse_port_range)]
    pub(crate) proxy_port_range: Option<std::ops::RangeInclusive<u16>>,

    /// IPVS mode: the scheduler of the virtual services (kube-proxy's `--ipvs-scheduler`; rr).
    #[arg(
        long = "ipvs-scheduler",
        value_name = "NAME",
        id = "render_ipvs_scheduler"
    )]
    pub(crate) ipvs_scheduler: Option<String>,

    #[command(flatten)]
    pub(crate) detect_local: DetectLocalArgs,
}

/// How local pod traffic is recognised (kube-proxy's `--detect-local-mode` and its settings).
#[derive(Debug, Args)]
pub(crate) struct DetectLocalArgs {
    /// ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix.
    #[arg(long, value_name = "MODE")]
    pub(crate) detect_local_mode: Option<String>,

    /// The pods' bridge, for `--detect-local-mode BridgeInterface`.
    #[arg(long, value_name = "NAME")]
    pub(crate) pod_bridge_interface: Option<String>,

    /// The pods' interface name prefix, for `--detect-local-mode InterfaceNamePrefix`.
    #[arg(long, value_name = "PREFIX")]
    pub(crate) pod_interface_name_prefix: Option<String>,
}

/// Parses a CIDR strictly (a bare IP is not a CIDR).
fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR (expected address/prefix)"));
    }
    let net: IpNetwork = s.parse().map_err(|e| format!("{s:?} is not a CIDR: {e}"))?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| e.to_string())
}

/// The IP family to compute the state for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Where the objects come from and which node we are.
#[derive(Debug, Args)]
pub(crate) struct ManifestArgs {
    /// A YAML manifest file or a directory of them (repeatable). Without it, the bundled examples.
    #[arg(short = 'f', long = "filename", value_name = "FILE_OR_DIR")]
    pub(crate) files: Vec<PathBuf>,

    /// The node name to act as (kube-proxy's `--hostname-override`). Defaults to the bundled
    /// examples' node without `-f`, and to this host's name with it.
    #[arg(long, value_name = "NODE")]
    pub(crate) hostname_override: Option<String>,

    /// Program only Services labelled `service.kubernetes.io/service-proxy-name` with this value.
    #[arg(long, value_name = "NAME")]
    pub(crate) service_proxy_name: Option<String>,
}

/// `kproxy state`.
#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    #[command(flatten)]
    pub(crate) manifests: ManifestArgs,

    /// The IP family.
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    pub(crate) ip_family: Family,

    /// The proxy mode the state is for (the state is the same for every mode; a mode this build
    /// lacks is refused, as everywhere).
    #[arg(long, value_name = "MODE", default_value = "iptables", value_parser = parse_mode)]
    pub(crate) proxy_mode: ProxyMode,
}

/// The long-running proxy's flags (kube-proxy's names). Flags override the `--config` file.
#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Write the effective configuration to FILE and exit.
    #[arg(long, value_name = "FILE")]
    pub(crate) write_config_to: Option<PathBuf>,

    /// Watch YAML manifests (a file or directory) instead of an API server; re-syncs when they
    /// change. For clusterless use and tests.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub(crate) manifests: Option<PathBuf>,

    /// A kubeconfig file for the API server (default: clientConnection.kubeconfig, then in-cluster
    /// settings, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,

    /// The API server's address, overriding the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub(crate) master: Option<String>,

    /// The node name to act as.
    #[arg(
        long = "hostname-override",
        value_name = "NODE",
        id = "daemon_hostname_override"
    )]
    pub(crate) hostname_override: Option<String>,

    /// The pod network(s), comma-separated.
    #[arg(
        long = "cluster-cidr",
        value_name = "CIDR[,CIDR]",
        id = "daemon_cluster_cidr"
    )]
    pub(crate) cluster_cidr: Option<String>,

    /// Masquerade all traffic to cluster IPs.
    #[arg(long = "masquerade-all", id = "daemon_masquerade_all")]
    pub(crate) masquerade_all: bool,

    /// Node addresses (CIDRs, comma-separated) that accept NodePorts.
    #[arg(
        long = "nodeport-addresses",
        value_name = "CIDR[,CIDR]",
        id = "daemon_nodeport_addresses"
    )]
    pub(crate) nodeport_addresses: Option<String>,

    /// Where /healthz and /livez listen (default 0.0.0.0:10256).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) healthz_bind_address: Option<String>,

    /// Where /metrics listens (default 127.0.0.1:10249).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics_bind_address: Option<String>,

    /// The full resync period (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) iptables_sync_period: Option<proxy_core::config::GoDuration>,

    /// The minimum interval between syncs (default 1s; 0 syncs every change at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) iptables_min_sync_period: Option<proxy_core::config::GoDuration>,

    /// Program only Services labelled `service.kubernetes.io/service-proxy-name=NAME` (for running
    /// beside another proxy); by default, only Services without that label, like kube-proxy.
    #[arg(
        long = "service-proxy-name",
        value_name = "NAME",
        id = "daemon_service_proxy_name"
    )]
    pub(crate) service_proxy_name: Option<String>,

    /// The IPVS scheduler (kept in the configuration for the ipvs mode).
    #[arg(long, value_name = "NAME")]
    pub(crate) ipvs_scheduler: Option<String>,

    /// The proxy mode: iptables, ipvs, nftables or userspace (default: the config's `mode`, else
    /// iptables).
    #[arg(long = "proxy-mode", value_name = "MODE", value_parser = parse_mode, id = "daemon_proxy_mode")]
    pub(crate) proxy_mode: Option<ProxyMode>,

    /// Which iptables binaries to use.
    #[arg(long = "iptables-variant", value_enum, default_value_t = IptablesVariant::Auto, id = "daemon_iptables_variant")]
    pub(crate) iptables_variant: IptablesVariant,

    /// How local pod traffic is recognised (default: the config's `detectLocalMode` and
    /// `detectLocal` settings).
    #[command(flatten)]
    pub(crate) detect_local: DetectLocalArgs,

    /// kube-proxy's other flags.
    #[command(flatten)]
    pub(crate) upstream: crate::upstream_flags::UpstreamFlags,
}

fn parse_duration(s: &str) -> Result<proxy_core::config::GoDuration, String> {
    proxy_core::config::GoDuration::parse(s).map_err(|e| e.to_string())
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    proxy_core::config::parse_port_range(s)?
        .ok_or_else(|| format!("{s:?} names no ports (give begin-end or begin+offset)"))
}
