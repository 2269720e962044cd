//! `--config`, flags over it, `--write-config-to`, and exit status 2 for bad settings.

use std::process::Command;

fn kproxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn write_config_to_prints_the_effective_configuration() {
    let cfg = temp(
        "ok.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16\niptables:\n  syncPeriod: 0s\n",
    );
    let out_path = cfg.with_file_name("effective.yaml");
    let out = kproxy(&[
        "--config",
        cfg.to_str().unwrap(),
        "--iptables-sync-period",
        "45s",
        "--masquerade-all",
        "--write-config-to",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&out_path).unwrap();
    let parsed = proxy_core::config::KubeProxyConfiguration::from_yaml("w", &written).unwrap();
    assert_eq!(
        parsed.iptables.sync_period.to_string(),
        "45s",
        "the flag wins"
    );
    assert!(parsed.iptables.masquerade_all);
    assert_eq!(
        parsed.cluster_cidr, "10.244.0.0/16",
        "the file's value stays"
    );
    assert_eq!(
        parsed.metrics_bind_address, "127.0.0.1:10249",
        "defaults filled in"
    );
}

#[test]
fn bad_settings_exit_2_naming_the_field() {
    let unknown = temp(
        "unknown.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDRs: 10.0.0.0/8\n",
    );
    let out = kproxy(&[
        "--config",
        unknown.to_str().unwrap(),
        "--write-config-to",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clusterCIDRs"));

    let bad_bit = temp(
        "bit.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  masqueradeBit: 40\n",
    );
    let out = kproxy(&[
        "--config",
        bad_bit.to_str().unwrap(),
        "--write-config-to",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("iptables.masqueradeBit"));

    let out = kproxy(&[
        "--cluster-cidr",
        "10.0.0.0",
        "--write-config-to",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clusterCIDR"));

    let out = kproxy(&["--iptables-sync-period", "5 minutes"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn without_any_source_it_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--hostname-override", "n"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no --kubeconfig, --master or in-cluster configuration"),
        "{err}"
    );
}

#[test]
fn bad_master_url_exits_2() {
    let out = kproxy(&["--master", "not a url", "--hostname-override", "n"]);
    assert_eq!(out.status.code(), Some(2));
}
