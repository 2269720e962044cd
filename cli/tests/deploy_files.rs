//! The deploy manifests parse, and the KubeProxyConfiguration in the ConfigMap is one kproxy loads.

#[test]
fn deploy_manifests_parse_and_the_configmap_config_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kproxy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let config = docs[3]["data"]["config.conf"].as_str().unwrap();
    let c = proxy_core::config::KubeProxyConfiguration::from_yaml("configmap", config).unwrap();
    assert_eq!(c.mode, "iptables");
    let ds = &docs[4]["spec"]["template"]["spec"];
    assert_eq!(ds["hostNetwork"], true);
    let mounts: Vec<&str> = ds["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(mounts.contains(&"/run/xtables.lock") && mounts.contains(&"/lib/modules"));
}
