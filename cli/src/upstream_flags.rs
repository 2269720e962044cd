//! kube-proxy's remaining flags, accepted under their own names so a DaemonSet's command line works
//! unchanged. Each one either sets its `KubeProxyConfiguration` field (and takes effect), or is
//! refused with exit status 2 saying why — never accepted and ignored without a word. README.md
//! lists them.

use clap::Args;
use proxy_core::config::{GoDuration, KubeProxyConfiguration};

use crate::daemon::settings_error::BadSetting;

fn parse_duration(s: &str) -> Result<GoDuration, String> {
    GoDuration::parse(s).map_err(|e| e.to_string())
}

/// The flags, all optional; absent ones leave the configuration as it is.
#[derive(Debug, Args, Default)]
pub(crate) struct UpstreamFlags {
    /// The IP address for the proxy's own listeners (`bindAddress`).
    #[arg(long, value_name = "IP")]
    pub(crate) bind_address: Option<String>,
    /// Fail to start when a port cannot be bound (`bindAddressHardFail`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) bind_address_hard_fail: Option<bool>,
    /// How often the API watches are re-listed (`configSyncPeriod`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) config_sync_period: Option<GoDuration>,
    /// Conntrack entries per CPU; 0 leaves the limit alone (`conntrack.maxPerCore`).
    #[arg(long, value_name = "N")]
    pub(crate) conntrack_max_per_core: Option<i32>,
    /// The least conntrack entries to allow (`conntrack.min`).
    #[arg(long, value_name = "N")]
    pub(crate) conntrack_min: Option<i32>,
    /// Set `nf_conntrack_tcp_be_liberal`; the INVALID-drop rule is then left out
    /// (`conntrack.tcpBeLiberal`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) conntrack_tcp_be_liberal: Option<bool>,
    /// Timeout of TCP entries in CLOSE_WAIT (`conntrack.tcpCloseWaitTimeout`; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) conntrack_tcp_timeout_close_wait: Option<GoDuration>,
    /// Idle timeout of established TCP entries (`conntrack.tcpEstablishedTimeout`; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) conntrack_tcp_timeout_established: Option<GoDuration>,
    /// Timeout of UDP entries (`conntrack.udpTimeout`; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) conntrack_udp_timeout: Option<GoDuration>,
    /// Timeout of UDP stream entries (`conntrack.udpStreamTimeout`; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) conntrack_udp_timeout_stream: Option<GoDuration>,
    /// Feature gates, `Name=true,Other=false` (`featureGates`).
    #[arg(long, value_name = "GATES")]
    pub(crate) feature_gates: Option<String>,
    /// Accept NodePorts on 127.0.0.1 (`iptables.localhostNodePorts`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) iptables_localhost_nodeports: Option<bool>,
    /// The fwmark bit for masquerading, 0-31 (`iptables.masqueradeBit`).
    #[arg(
        long = "iptables-masquerade-bit",
        value_name = "BIT",
        id = "daemon_iptables_masquerade_bit"
    )]
    pub(crate) iptables_masquerade_bit: Option<i32>,
    /// CIDRs IPVS cleanup leaves alone (`ipvs.excludeCIDRs`).
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub(crate) ipvs_exclude_cidrs: Option<String>,
    /// IPVS minimum sync interval (`ipvs.minSyncPeriod`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ipvs_min_sync_period: Option<GoDuration>,
    /// IPVS full resync period (`ipvs.syncPeriod`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ipvs_sync_period: Option<GoDuration>,
    /// Strict ARP for kube-ipvs0 (`ipvs.strictARP`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) ipvs_strict_arp: Option<bool>,
    /// IPVS TCP idle timeout (`ipvs.tcpTimeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ipvs_tcp_timeout: Option<GoDuration>,
    /// IPVS TCP FIN timeout (`ipvs.tcpFinTimeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ipvs_tcpfin_timeout: Option<GoDuration>,
    /// IPVS UDP timeout (`ipvs.udpTimeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ipvs_udp_timeout: Option<GoDuration>,
    /// Burst of API requests (`clientConnection.burst`).
    #[arg(long, value_name = "N")]
    pub(crate) kube_api_burst: Option<i32>,
    /// Content type of API requests (`clientConnection.contentType`).
    #[arg(long, value_name = "TYPE")]
    pub(crate) kube_api_content_type: Option<String>,
    /// API queries per second (`clientConnection.qps`).
    #[arg(long, value_name = "QPS")]
    pub(crate) kube_api_qps: Option<f32>,
    /// The process's OOM score adjustment, -1000..1000 (`oomScoreAdj`).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) oom_score_adj: Option<i32>,
    /// Port range for the userspace mode's listeners (`portRange`).
    #[arg(long, value_name = "RANGE")]
    pub(crate) proxy_port_range: Option<String>,
    /// How long the userspace mode keeps an idle UDP session, e.g. `250ms`, `2s`
    /// (`udpIdleTimeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) udp_timeout: Option<GoDuration>,
    /// Show metrics hidden since this version (`showHiddenMetricsForVersion`).
    #[arg(long, value_name = "VERSION")]
    pub(crate) show_hidden_metrics_for_version: Option<String>,
    /// Serve profiling handlers (`enableProfiling`): refused, kproxy has none.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) profiling: Option<bool>,
    /// Only do the init step and exit: refused, kproxy has no separate init step.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) init_only: Option<bool>,
    /// Log format: `text` (kproxy's only one; `json` is refused).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) logging_format: Option<String>,
    /// Per-module verbosity: refused (use `RUST_LOG`).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) vmodule: Option<String>,
}

impl UpstreamFlags {
    /// Sets the configuration fields the flags name; a refused flag is a [`BadSetting`].
    pub(crate) fn apply(&self, c: &mut KubeProxyConfiguration) -> Result<(), BadSetting> {
        let refuse = |flag: &str, why: &str| Err(BadSetting(format!("{flag}: {why}")));
        if self.profiling == Some(true) {
            return refuse("--profiling", "kproxy serves no profiling handlers");
        }
        if self.init_only == Some(true) {
            return refuse(
                "--init-only",
                "kproxy has no separate init step (it sets what it needs when it starts)",
            );
        }
        if let Some(f) = self.logging_format.as_deref().filter(|f| *f != "text") {
            return refuse(
                "--logging-format",
                &format!("{f:?} is not supported; kproxy logs text"),
            );
        }
        if self.vmodule.is_some() {
            return refuse(
                "--vmodule",
                "per-module verbosity is set with RUST_LOG in kproxy",
            );
        }
        for (given, flag, note) in [
            (
                self.bind_address.is_some(),
                "--bind-address",
                "kproxy takes the node's addresses from its Node object",
            ),
            (
                self.bind_address_hard_fail.is_some(),
                "--bind-address-hard-fail",
                "kproxy fails to start when it cannot bind its health or metrics address",
            ),
            (
                self.kube_api_qps.is_some() || self.kube_api_burst.is_some(),
                "--kube-api-qps/--kube-api-burst",
                "kproxy's API client does not rate-limit",
            ),
            (
                self.kube_api_content_type.is_some(),
                "--kube-api-content-type",
                "kproxy's API client speaks JSON",
            ),
            (
                self.show_hidden_metrics_for_version.is_some(),
                "--show-hidden-metrics-for-version",
                "kproxy hides no metrics",
            ),
        ] {
            if given {
                tracing::warn!("{flag} is kept in the configuration only: {note}");
            }
        }
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = &$flag {
                    $field = v.clone().into();
                }
            };
        }
        set!(self.bind_address, c.bind_address);
        set!(self.bind_address_hard_fail, c.bind_address_hard_fail);
        set!(self.config_sync_period, c.config_sync_period);
        if let Some(v) = self.conntrack_max_per_core {
            c.conntrack.max_per_core = Some(v);
        }
        if let Some(v) = self.conntrack_min {
            c.conntrack.min = Some(v);
        }
        set!(self.conntrack_tcp_be_liberal, c.conntrack.tcp_be_liberal);
        if let Some(v) = self.conntrack_tcp_timeout_close_wait {
            c.conntrack.tcp_close_wait_timeout = Some(v);
        }
        if let Some(v) = self.conntrack_tcp_timeout_established {
            c.conntrack.tcp_established_timeout = Some(v);
        }
        set!(self.conntrack_udp_timeout, c.conntrack.udp_timeout);
        set!(
            self.conntrack_udp_timeout_stream,
            c.conntrack.udp_stream_timeout
        );
        if let Some(gates) = &self.feature_gates {
            for gate in gates.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                let (name, value) = gate.split_once('=').ok_or_else(|| {
                    BadSetting(format!("--feature-gates: {gate:?} is not Name=true|false"))
                })?;
                let value: bool = value.parse().map_err(|_| {
                    BadSetting(format!("--feature-gates: {gate:?} is not Name=true|false"))
                })?;
                c.feature_gates.insert(name.to_owned(), value);
            }
        }
        if let Some(v) = self.iptables_localhost_nodeports {
            c.iptables.localhost_node_ports = Some(v);
        }
        if let Some(v) = self.iptables_masquerade_bit {
            c.iptables.masquerade_bit = Some(v);
        }
        if let Some(v) = &self.ipvs_exclude_cidrs {
            c.ipvs.exclude_cidrs = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        set!(self.ipvs_min_sync_period, c.ipvs.min_sync_period);
        set!(self.ipvs_sync_period, c.ipvs.sync_period);
        set!(self.ipvs_strict_arp, c.ipvs.strict_arp);
        set!(self.ipvs_tcp_timeout, c.ipvs.tcp_timeout);
        set!(self.ipvs_tcpfin_timeout, c.ipvs.tcp_fin_timeout);
        set!(self.ipvs_udp_timeout, c.ipvs.udp_timeout);
        set!(self.kube_api_burst, c.client_connection.burst);
        set!(self.kube_api_content_type, c.client_connection.content_type);
        set!(self.kube_api_qps, c.client_connection.qps);
        if let Some(v) = self.oom_score_adj {
            c.oom_score_adj = Some(v);
        }
        set!(self.proxy_port_range, c.port_range);
        set!(self.udp_timeout, c.udp_idle_timeout);
        set!(
            self.show_hidden_metrics_for_version,
            c.show_hidden_metrics_for_version
        );
        Ok(())
    }
}
