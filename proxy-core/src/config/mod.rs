//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`): kube-proxy's configuration file,
//! with upstream's defaults, strict parsing and validation.
//!
//! Operators keep their existing file: every field kube-proxy's v1alpha1 knows (across the versions
//! still in use) is accepted; an unknown field is an error naming it, never silently ignored, because
//! a typo in a field name would otherwise quietly fall back to a default.

mod duration;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use duration::{GoDuration, InvalidDuration};

/// The API group/version of the file.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The kind of the file.
pub const KIND: &str = "KubeProxyConfiguration";

/// kube-proxy's configuration. Field names and defaults are upstream's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubeProxyConfiguration {
    /// Must be `kubeproxy.config.k8s.io/v1alpha1`.
    pub api_version: String,
    /// Must be `KubeProxyConfiguration`.
    pub kind: String,
    /// Feature gates by name.
    #[serde(deserialize_with = "null_as_default")]
    pub feature_gates: BTreeMap<String, bool>,
    /// Address for the proxy's own listeners (`0.0.0.0`).
    pub bind_address: String,
    /// Treat a failure to bind a port as fatal.
    pub bind_address_hard_fail: bool,
    /// Where `/healthz` and `/livez` listen (`0.0.0.0:10256`).
    pub healthz_bind_address: String,
    /// Where `/metrics` listens (`127.0.0.1:10249`).
    pub metrics_bind_address: String,
    /// Serve profiling handlers on the metrics server.
    pub enable_profiling: bool,
    /// The pod network(s), comma-separated: off-cluster traffic to cluster IPs is masqueraded.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// The node name to use instead of the host name.
    pub hostname_override: String,
    /// How to reach the API server.
    pub client_connection: ClientConnection,
    /// iptables mode settings.
    pub iptables: IptablesSettings,
    /// IPVS mode settings.
    pub ipvs: IpvsSettings,
    /// nftables mode settings.
    pub nftables: NftablesSettings,
    /// Windows settings (accepted, unused on Linux).
    #[serde(deserialize_with = "null_as_default")]
    pub winkernel: BTreeMap<String, serde_json_like::Value>,
    /// Logging settings (accepted; `-v` is the flag kproxy honours).
    #[serde(deserialize_with = "null_as_default")]
    pub logging: BTreeMap<String, serde_json_like::Value>,
    /// The process's oom_score_adj, in [-1000, 1000].
    pub oom_score_adj: Option<i32>,
    /// `iptables`, `ipvs`, `nftables`, or empty for the default (iptables).
    pub mode: String,
    /// The userspace mode's listener ports: `begin-end`, `begin+offset`, or empty for ephemeral
    /// ports.
    pub port_range: String,
    /// How long the userspace mode keeps an idle UDP session (`--udp-timeout`; default 250ms).
    pub udp_idle_timeout: GoDuration,
    /// conntrack settings.
    pub conntrack: ConntrackSettings,
    /// How often the API watches are re-listed.
    pub config_sync_period: GoDuration,
    /// CIDRs (or `primary`) selecting the node addresses that accept NodePorts; empty = all.
    #[serde(deserialize_with = "null_as_default")]
    pub node_port_addresses: Vec<String>,
    /// Show metrics hidden since this version.
    pub show_hidden_metrics_for_version: String,
    /// How to tell local traffic: `ClusterCIDR` (default), `NodeCIDR`, `BridgeInterface`,
    /// `InterfaceNamePrefix`.
    pub detect_local_mode: String,
    /// Settings for `detectLocalMode`.
    pub detect_local: DetectLocal,
    /// Mode-independent full resync period (newer kube-proxy; overrides the per-mode one when set).
    pub sync_period: Option<GoDuration>,
    /// Mode-independent minimum sync interval (newer kube-proxy).
    pub min_sync_period: Option<GoDuration>,
}

/// Generic values for sections kproxy accepts but does not interpret.
pub mod serde_json_like {
    /// Any YAML value.
    pub type Value = serde_json::Value;
}

/// `clientConnection`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientConnection {
    /// Path to a kubeconfig file.
    pub kubeconfig: String,
    /// `Accept` header for API requests.
    pub accept_content_types: String,
    /// Content type of requests (`application/vnd.kubernetes.protobuf`).
    pub content_type: String,
    /// Queries per second to the API server.
    pub qps: f32,
    /// Burst of queries.
    pub burst: i32,
}

/// `iptables`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IptablesSettings {
    /// The fwmark bit for masquerading, 0-31 (14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all service traffic.
    pub masquerade_all: bool,
    /// Accept NodePorts on localhost (true).
    pub localhost_node_ports: Option<bool>,
    /// Full resync period (30s).
    pub sync_period: GoDuration,
    /// Minimum interval between syncs (1s).
    pub min_sync_period: GoDuration,
}

/// `ipvs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpvsSettings {
    /// Full resync period (30s).
    pub sync_period: GoDuration,
    /// Minimum interval between syncs (0s).
    pub min_sync_period: GoDuration,
    /// IPVS scheduler (`rr` when empty).
    pub scheduler: String,
    /// CIDRs whose virtual servers cleanup leaves alone.
    #[serde(rename = "excludeCIDRs", deserialize_with = "null_as_default")]
    pub exclude_cidrs: Vec<String>,
    /// Set arp_ignore/arp_announce for kube-ipvs0.
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    /// IPVS TCP idle timeout (0: keep the system's).
    pub tcp_timeout: GoDuration,
    /// IPVS TCP FIN timeout (0: keep the system's).
    pub tcp_fin_timeout: GoDuration,
    /// IPVS UDP timeout (0: keep the system's).
    pub udp_timeout: GoDuration,
}

/// `nftables`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NftablesSettings {
    /// The fwmark bit for masquerading (14).
    pub masquerade_bit: Option<i32>,
    /// Masquerade all service traffic.
    pub masquerade_all: bool,
    /// Full resync period (30s).
    pub sync_period: GoDuration,
    /// Minimum interval between syncs (1s).
    pub min_sync_period: GoDuration,
}

/// `conntrack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConntrackSettings {
    /// Conntrack entries per CPU (32768; 0 leaves the limit alone).
    pub max_per_core: Option<i32>,
    /// Minimum conntrack entries (131072).
    pub min: Option<i32>,
    /// Idle timeout of established TCP entries (24h).
    pub tcp_established_timeout: Option<GoDuration>,
    /// Timeout of CLOSE_WAIT entries (1h).
    pub tcp_close_wait_timeout: Option<GoDuration>,
    /// Set `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// UDP entry timeout (0: leave alone).
    pub udp_timeout: GoDuration,
    /// UDP stream entry timeout (0: leave alone).
    pub udp_stream_timeout: GoDuration,
}

/// `detectLocal`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectLocal {
    /// Bridge for `BridgeInterface` mode.
    pub bridge_interface: String,
    /// Interface prefix for `InterfaceNamePrefix` mode.
    pub interface_name_prefix: String,
}

fn secs(s: u64) -> GoDuration {
    GoDuration(Duration::from_secs(s))
}

impl Default for KubeProxyConfiguration {
    /// Upstream's defaults (`SetDefaults_KubeProxyConfiguration`).
    fn default() -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            feature_gates: BTreeMap::new(),
            bind_address: "0.0.0.0".into(),
            bind_address_hard_fail: false,
            healthz_bind_address: "0.0.0.0:10256".into(),
            metrics_bind_address: "127.0.0.1:10249".into(),
            enable_profiling: false,
            cluster_cidr: String::new(),
            hostname_override: String::new(),
            client_connection: ClientConnection::default(),
            iptables: IptablesSettings::default(),
            ipvs: IpvsSettings::default(),
            nftables: NftablesSettings::default(),
            winkernel: BTreeMap::new(),
            logging: BTreeMap::new(),
            oom_score_adj: Some(-999),
            mode: String::new(),
            port_range: String::new(),
            udp_idle_timeout: GoDuration(Duration::from_millis(250)),
            conntrack: ConntrackSettings::default(),
            config_sync_period: secs(15 * 60),
            node_port_addresses: Vec::new(),
            show_hidden_metrics_for_version: String::new(),
            detect_local_mode: "ClusterCIDR".into(),
            detect_local: DetectLocal::default(),
            sync_period: None,
            min_sync_period: None,
        }
    }
}

impl Default for ClientConnection {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            accept_content_types: String::new(),
            content_type: "application/vnd.kubernetes.protobuf".into(),
            qps: 5.0,
            burst: 10,
        }
    }
}

impl Default for IptablesSettings {
    fn default() -> Self {
        Self {
            masquerade_bit: Some(14),
            masquerade_all: false,
            localhost_node_ports: Some(true),
            sync_period: secs(30),
            min_sync_period: secs(1),
        }
    }
}

impl Default for IpvsSettings {
    fn default() -> Self {
        Self {
            sync_period: secs(30),
            min_sync_period: GoDuration::default(),
            scheduler: String::new(),
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            tcp_timeout: GoDuration::default(),
            tcp_fin_timeout: GoDuration::default(),
            udp_timeout: GoDuration::default(),
        }
    }
}

impl Default for NftablesSettings {
    fn default() -> Self {
        Self {
            masquerade_bit: Some(14),
            masquerade_all: false,
            sync_period: secs(30),
            min_sync_period: secs(1),
        }
    }
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_per_core: Some(32_768),
            min: Some(131_072),
            tcp_established_timeout: Some(secs(24 * 3600)),
            tcp_close_wait_timeout: Some(secs(3600)),
            tcp_be_liberal: false,
            udp_timeout: GoDuration::default(),
            udp_stream_timeout: GoDuration::default(),
        }
    }
}

/// A configuration that cannot be used, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid YAML or does not fit the schema (unknown field, wrong type, bad duration).
    #[error("{source_name}:{line}: {message}")]
    Parse {
        /// The file (or a name for the text).
        source_name: String,
        /// 1-based line, 0 if unknown.
        line: usize,
        /// What is wrong, as the parser says it (it names the field).
        message: String,
    },
    /// A field has a value kube-proxy would reject.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, in the file's spelling (e.g. `iptables.masqueradeBit`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Parses kube-proxy's port range text: `begin-end` or `begin+offset` (both inclusive), empty
/// (or `0-0`) for none. Port 0 and reversed ranges are refused.
pub fn parse_port_range(text: &str) -> Result<Option<std::ops::RangeInclusive<u16>>, String> {
    let text = text.trim();
    if text.is_empty() || text == "0-0" {
        return Ok(None);
    }
    let bad = || format!("{text:?} is not a port range (begin-end or begin+offset)");
    let port = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
    let (begin, end) = if let Some((b, e)) = text.split_once('-') {
        (port(b)?, port(e)?)
    } else if let Some((b, off)) = text.split_once('+') {
        let b = port(b)?;
        (b, b.checked_add(port(off)?).ok_or_else(bad)?)
    } else {
        let p = port(text)?;
        (p, p)
    };
    if begin == 0 || end < begin {
        return Err(bad());
    }
    Ok(Some(begin..=end))
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl KubeProxyConfiguration {
    /// Parses and validates a configuration file's text; `source_name` names it in errors.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line() as usize);
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default().trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let message = match first.split_once(": ") {
                Some((at, rest)) if at.starts_with("line ") => rest.to_owned(),
                _ => first.to_owned(),
            };
            ConfigError::Parse {
                source_name: source_name.to_owned(),
                line,
                message,
            }
        })?;
        let mut config = config;
        config.apply_defaults();
        config.validate()?;
        Ok(config)
    }

    /// Fills in upstream's defaults where the file has a zero or empty value: kube-proxy treats
    /// `syncPeriod: 0s`, `masqueradeBit: null`, `qps: 0`, … as "unset" (kubeadm writes files full of
    /// them), so kproxy must too.
    pub fn apply_defaults(&mut self) {
        let d = Self::default();
        let zero = GoDuration::default();
        if self.bind_address.is_empty() {
            self.bind_address = d.bind_address;
        }
        if self.healthz_bind_address.is_empty() {
            self.healthz_bind_address = d.healthz_bind_address;
        }
        if self.metrics_bind_address.is_empty() {
            self.metrics_bind_address = d.metrics_bind_address;
        }
        let cc = &mut self.client_connection;
        if cc.content_type.is_empty() {
            cc.content_type = d.client_connection.content_type;
        }
        if cc.qps == 0.0 {
            cc.qps = d.client_connection.qps;
        }
        if cc.burst == 0 {
            cc.burst = d.client_connection.burst;
        }
        let it = &mut self.iptables;
        it.masquerade_bit.get_or_insert(14);
        it.localhost_node_ports.get_or_insert(true);
        if it.sync_period == zero {
            it.sync_period = d.iptables.sync_period;
        }
        if it.min_sync_period == zero {
            it.min_sync_period = d.iptables.min_sync_period;
        }
        if self.ipvs.sync_period == zero {
            self.ipvs.sync_period = d.ipvs.sync_period;
        }
        let nf = &mut self.nftables;
        nf.masquerade_bit.get_or_insert(14);
        if nf.sync_period == zero {
            nf.sync_period = d.nftables.sync_period;
        }
        if nf.min_sync_period == zero {
            nf.min_sync_period = d.nftables.min_sync_period;
        }
        let ct = &mut self.conntrack;
        ct.max_per_core.get_or_insert(32_768);
        ct.min.get_or_insert(131_072);
        ct.tcp_established_timeout
            .get_or_insert(d.conntrack.tcp_established_timeout.unwrap_or_default());
        ct.tcp_close_wait_timeout
            .get_or_insert(d.conntrack.tcp_close_wait_timeout.unwrap_or_default());
        if self.config_sync_period == zero {
            self.config_sync_period = d.config_sync_period;
        }
        self.oom_score_adj.get_or_insert(-999);
        if self.detect_local_mode.is_empty() {
            self.detect_local_mode = d.detect_local_mode;
        }
    }

    /// The configuration as YAML (for `--write-config-to`).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("the configuration is always serialisable")
    }

    /// Checks every field kube-proxy validates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_version != API_VERSION {
            return Err(invalid(
                "apiVersion",
                format!("must be {API_VERSION}, not {:?}", self.api_version),
            ));
        }
        if self.kind != KIND {
            return Err(invalid(
                "kind",
                format!("must be {KIND}, not {:?}", self.kind),
            ));
        }
        if !self.bind_address.is_empty() && self.bind_address.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "bindAddress",
                format!("{:?} is not an IP address", self.bind_address),
            ));
        }
        for (field, value) in [
            ("healthzBindAddress", &self.healthz_bind_address),
            ("metricsBindAddress", &self.metrics_bind_address),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                return Err(invalid(field, format!("{value:?} is not an address:port")));
            }
        }
        self.cluster_cidrs()?;
        for (i, v) in self.node_port_addresses.iter().enumerate() {
            if v != "primary" && parse_cidr(v).is_none() {
                return Err(invalid(
                    &format!("nodePortAddresses[{i}]"),
                    format!("{v:?} is not a CIDR (or \"primary\")"),
                ));
            }
        }
        for (field, bit) in [
            ("iptables.masqueradeBit", self.iptables.masquerade_bit),
            ("nftables.masqueradeBit", self.nftables.masquerade_bit),
        ] {
            if let Some(b) = bit {
                if !(0..=31).contains(&b) {
                    return Err(invalid(field, format!("{b} is outside 0-31")));
                }
            }
        }
        for (field, d) in [
            ("iptables.syncPeriod", self.iptables.sync_period),
            ("ipvs.syncPeriod", self.ipvs.sync_period),
            ("nftables.syncPeriod", self.nftables.sync_period),
            ("configSyncPeriod", self.config_sync_period),
        ] {
            if d.0.is_zero() {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if self.iptables.min_sync_period > self.iptables.sync_period {
            return Err(invalid(
                "iptables.minSyncPeriod",
                format!(
                    "{} is longer than iptables.syncPeriod {}",
                    self.iptables.min_sync_period, self.iptables.sync_period
                ),
            ));
        }
        if let Some(oom) = self.oom_score_adj {
            if !(-1000..=1000).contains(&oom) {
                return Err(invalid(
                    "oomScoreAdj",
                    format!("{oom} is outside -1000..1000"),
                ));
            }
        }
        crate::mode::ProxyMode::from_config(&self.mode)
            .map_err(|e| invalid("mode", e.to_string()))?;
        self.proxy_port_range()?;
        if self.udp_idle_timeout.0.is_zero() {
            return Err(invalid("udpIdleTimeout", "must be greater than 0"));
        }
        if !matches!(
            self.detect_local_mode.as_str(),
            "" | "ClusterCIDR" | "NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix"
        ) {
            return Err(invalid(
                "detectLocalMode",
                format!("unknown mode {:?}", self.detect_local_mode),
            ));
        }
        if let Some(v) = self.conntrack.max_per_core {
            if v < 0 {
                return Err(invalid("conntrack.maxPerCore", "must not be negative"));
            }
        }
        if let Some(v) = self.conntrack.min {
            if v < 0 {
                return Err(invalid("conntrack.min", "must not be negative"));
            }
        }
        if self.client_connection.qps < 0.0 || self.client_connection.burst < 0 {
            return Err(invalid(
                "clientConnection",
                "qps and burst must not be negative",
            ));
        }
        Ok(())
    }

    /// `clusterCIDR` parsed (comma-separated, one per family at most).
    pub fn cluster_cidrs(&self) -> Result<Vec<IpNetwork>, ConfigError> {
        let mut out = Vec::new();
        for part in self
            .cluster_cidr
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let net = parse_cidr(part)
                .ok_or_else(|| invalid("clusterCIDR", format!("{part:?} is not a CIDR")))?;
            if out.iter().any(|n: &IpNetwork| n.is_ipv4() == net.is_ipv4()) {
                return Err(invalid("clusterCIDR", "at most one CIDR per IP family"));
            }
            out.push(net);
        }
        Ok(out)
    }

    /// The userspace mode's listener port range (`portRange`), `None` for ephemeral ports.
    pub fn proxy_port_range(&self) -> Result<Option<std::ops::RangeInclusive<u16>>, ConfigError> {
        parse_port_range(&self.port_range).map_err(|reason| invalid("portRange", reason))
    }

    /// The proxy mode `mode` names (iptables when empty). Call after [`validate`](Self::validate);
    /// an unknown name falls back to iptables here.
    pub fn proxy_mode(&self) -> crate::mode::ProxyMode {
        crate::mode::ProxyMode::from_config(&self.mode).unwrap_or(crate::mode::ProxyMode::Iptables)
    }

    /// The effective full-resync period for `mode` (the mode-independent field wins when set).
    pub fn effective_sync_period(&self) -> Duration {
        if let Some(d) = self.sync_period {
            return d.0;
        }
        match self.mode.as_str() {
            "ipvs" => self.ipvs.sync_period.0,
            "nftables" => self.nftables.sync_period.0,
            _ => self.iptables.sync_period.0,
        }
    }

    /// The effective minimum interval between syncs for `mode`.
    pub fn effective_min_sync_period(&self) -> Duration {
        if let Some(d) = self.min_sync_period {
            return d.0;
        }
        match self.mode.as_str() {
            "ipvs" => self.ipvs.min_sync_period.0,
            "nftables" => self.nftables.min_sync_period.0,
            _ => self.iptables.min_sync_period.0,
        }
    }
}

/// Reads `null` as the type's default, as Go's YAML decoding of a nil slice or map does.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn parse_cidr(s: &str) -> Option<IpNetwork> {
    if !s.contains('/') {
        return None;
    }
    s.trim().parse().ok()
}
