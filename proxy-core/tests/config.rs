//! The KubeProxyConfiguration file: upstream's files load with upstream's defaults; each invalid
//! field gives an error that names it.

use std::time::Duration;

use proxy_core::config::{ConfigError, KubeProxyConfiguration};

fn load(name: &str) -> KubeProxyConfiguration {
    let path = format!("{}/tests/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    KubeProxyConfiguration::from_yaml(&path, &text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(yaml: &str) -> ConfigError {
    let text = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{yaml}"
    );
    KubeProxyConfiguration::from_yaml("test.yaml", &text).unwrap_err()
}

#[test]
fn kubeadm_file_loads_with_defaults_for_zero_values() {
    let c = load("kubeadm.yaml");
    assert_eq!(c.iptables.sync_period.0, Duration::from_secs(30));
    assert_eq!(c.iptables.min_sync_period.0, Duration::from_secs(1));
    assert_eq!(c.iptables.masquerade_bit, Some(14));
    assert_eq!(c.iptables.localhost_node_ports, Some(true));
    assert_eq!(c.healthz_bind_address, "0.0.0.0:10256");
    assert_eq!(c.metrics_bind_address, "127.0.0.1:10249");
    assert_eq!(c.config_sync_period.0, Duration::from_secs(900));
    assert_eq!(c.conntrack.max_per_core, Some(32_768));
    assert_eq!(
        c.conntrack.tcp_established_timeout.unwrap().0,
        Duration::from_secs(86_400)
    );
    assert_eq!(c.client_connection.qps, 5.0);
    assert_eq!(
        c.client_connection.kubeconfig,
        "/var/lib/kube-proxy/kubeconfig.conf"
    );
    assert_eq!(c.oom_score_adj, Some(-999));
    assert_eq!(c.detect_local_mode, "ClusterCIDR");
    assert_eq!(c.cluster_cidrs().unwrap()[0].to_string(), "10.244.0.0/16");
    assert_eq!(c.effective_sync_period(), Duration::from_secs(30));
}

#[test]
fn explicit_file_loads_as_written() {
    let c = load("explicit.yaml");
    assert_eq!(c.mode, "iptables");
    assert_eq!(c.cluster_cidrs().unwrap().len(), 2);
    assert_eq!(c.node_port_addresses, ["192.168.0.0/16", "127.0.0.0/8"]);
    assert_eq!(c.ipvs.min_sync_period.0, Duration::from_secs(2));
    assert!(c.ipvs.strict_arp);
    assert_eq!(c.feature_gates.get("TopologyAwareHints"), Some(&true));
    assert_eq!(c.hostname_override, "node-1");
}

#[test]
fn an_empty_file_is_all_defaults() {
    let c = KubeProxyConfiguration::from_yaml(
        "empty.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
    )
    .unwrap();
    assert_eq!(c, KubeProxyConfiguration::default());
}

#[test]
fn written_config_reads_back_the_same() {
    let c = load("explicit.yaml");
    let text = c.to_yaml();
    let again = KubeProxyConfiguration::from_yaml("written.yaml", &text).unwrap();
    assert_eq!(c, again);
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let e = error("iptables:\n  syncPeriod: 30s\n  masqueradeBits: 14\n");
    let ConfigError::Parse { line, message, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*line, 5, "{e}");
    assert!(message.contains("masqueradeBits"), "{e}");
    assert!(e.to_string().starts_with("test.yaml:5:"), "{e}");
}

#[test]
fn each_invalid_field_gives_its_error() {
    let cases = [
        ("iptables:\n  syncPeriod: 30 seconds\n", "30 seconds"),
        ("iptables:\n  minSyncPeriod: 5\n", "needs a unit"),
        ("clusterCIDR: 10.244.0.0\n", "clusterCIDR"),
        (
            "clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n",
            "clusterCIDR: at most one CIDR per IP family",
        ),
        (
            "iptables:\n  masqueradeBit: 32\n",
            "iptables.masqueradeBit: 32 is outside 0-31",
        ),
        ("mode: kernelspace\n", "mode: unknown proxy mode"),
        ("nodePortAddresses: [10.0.0.1]\n", "nodePortAddresses[0]"),
        ("healthzBindAddress: localhost\n", "healthzBindAddress"),
        ("bindAddress: 0.0.0.0.0\n", "bindAddress"),
        ("oomScoreAdj: 5000\n", "oomScoreAdj"),
        ("detectLocalMode: Magic\n", "detectLocalMode"),
        (
            "iptables:\n  minSyncPeriod: 1m\n  syncPeriod: 30s\n",
            "iptables.minSyncPeriod",
        ),
        ("conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore"),
        ("portRange: 40000-30000\n", "portRange"),
        ("portRange: lots\n", "portRange"),
        ("udpIdleTimeout: 0s\n", "udpIdleTimeout"),
    ];
    for (yaml, expected) in cases {
        let e = error(yaml).to_string();
        assert!(e.contains(expected), "{yaml:?}: {e}");
    }
    let wrong_kind = KubeProxyConfiguration::from_yaml(
        "x.yaml",
        "apiVersion: componentconfig/v1alpha1\nkind: KubeProxyConfiguration\n",
    )
    .unwrap_err();
    assert!(
        wrong_kind.to_string().starts_with("apiVersion:"),
        "{wrong_kind}"
    );
}

#[test]
fn port_ranges_read_as_kube_proxy_reads_them() {
    use proxy_core::config::parse_port_range;
    assert_eq!(parse_port_range(""), Ok(None));
    assert_eq!(parse_port_range("0-0"), Ok(None));
    assert_eq!(parse_port_range("36000-36100"), Ok(Some(36000..=36100)));
    assert_eq!(parse_port_range("36000+100"), Ok(Some(36000..=36100)));
    assert_eq!(parse_port_range("36000"), Ok(Some(36000..=36000)));
    assert!(parse_port_range("65000+1000").is_err());
    assert!(parse_port_range("0-10").is_err());
}
