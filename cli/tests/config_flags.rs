//! `--config`, flags over it, `--write-config-to`, and exit status 2 for bad settings.

use std::process::Command;

/// For daemons these tests start in the host's network namespace: zero means "leave it", so the
/// machine's conntrack settings stay as they are (and so does this process's OOM score).
const LEAVE_HOST_CONNTRACK_ALONE: &[&str] = &[
    "--conntrack-max-per-core=0",
    "--conntrack-tcp-timeout-established=0s",
    "--conntrack-tcp-timeout-close-wait=0s",
    "--oom-score-adj=0",
];

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

/// Every way to choose a mode refuses an unknown one with exit status 2 and the list of modes;
/// none of them falls back to iptables without a word. (Every mode kproxy knows is built now;
/// `check_built` keeps refusing a mode a build leaves out the same way.)
#[test]
fn unknown_modes_exit_2_naming_the_modes() {
    let manifests = temp("empty.yaml", "");
    let manifests = manifests.to_str().unwrap();
    let unknown = temp(
        "mode-unknown.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nonesuch\n",
    );
    let nftables = temp(
        "mode-nftables.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--proxy-mode", "nonesuch", "--manifests", manifests],
            "nonesuch",
        ),
        (
            vec![
                "--config",
                unknown.to_str().unwrap(),
                "--manifests",
                manifests,
            ],
            "nonesuch",
        ),
        (vec!["render", "--proxy-mode", "nonesuch"], "nonesuch"),
        (vec!["state", "--proxy-mode", "nonesuch"], "nonesuch"),
        (vec!["sync", "--proxy-mode", "nonesuch"], "nonesuch"),
    ];
    for (args, named) in cases {
        let out = kproxy(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} does not name {named}: {stderr}"
        );
        assert!(
            stderr.contains("iptables, ipvs, nftables, userspace"),
            "{args:?} does not list the modes: {stderr}"
        );
    }
    // The file's mode is the mode; the flag wins over the file: `--proxy-mode iptables` with
    // `mode: nftables` is iptables mode.
    let effective = nftables.with_file_name("effective-nftables.yaml");
    let out = kproxy(&[
        "--config",
        nftables.to_str().unwrap(),
        "--write-config-to",
        effective.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&effective).unwrap();
    assert!(written.contains("mode: nftables"), "{written}");
    let out = kproxy(&[
        "--config",
        nftables.to_str().unwrap(),
        "--proxy-mode",
        "iptables",
        "--write-config-to",
        nftables
            .with_file_name("effective-mode.yaml")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(nftables.with_file_name("effective-mode.yaml")).unwrap();
    assert!(written.contains("mode: iptables"), "{written}");
}

/// A proxier error retrying cannot fix (here: the iptables binaries cannot be run) stops the
/// daemon with exit status 1 and says why, instead of retrying forever.
#[test]
fn a_fatal_proxier_error_stops_the_daemon() {
    let manifests = temp("fatal.yaml", "");
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--manifests",
            manifests.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--iptables-variant",
            "nft",
            "--healthz-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            "127.0.0.1:0",
        ])
        .args(LEAVE_HOST_CONNTRACK_ALONE)
        .env("PATH", "/nonexistent")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot program the datapath") && stderr.contains("cannot run"),
        "{stderr}"
    );
}

/// A killed kproxy's `iptables-restore` dies with it, instead of landing its rules after a
/// successor's first sync. Shown with stand-in iptables binaries (a restore that never ends).
#[test]
fn a_killed_daemon_takes_its_restore_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kproxy-fake-iptables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("restore.pid");
    let script = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "iptables-nft-restore",
        &format!("echo $$ > {}\nexec sleep 300", pid_file.display()),
    );
    script("iptables-nft-save", "echo '*nat'; echo COMMIT");
    script("iptables-nft", "exit 0");
    let manifests = temp("killed.yaml", "");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--manifests",
            manifests.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--iptables-variant",
            "nft",
            "--healthz-bind-address",
            "127.0.0.1:0",
            "--metrics-bind-address",
            "127.0.0.1:0",
        ])
        .args(LEAVE_HOST_CONNTRACK_ALONE)
        .env("PATH", path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let restore_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < until,
            "the restore never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    daemon.kill().unwrap(); // SIGKILL: no chance to clean up
    daemon.wait().unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while alive(restore_pid) {
        assert!(
            std::time::Instant::now() < until,
            "the restore outlived kproxy"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// kube-proxy's flags are accepted under their own names and land in the configuration; the few
/// kproxy cannot honour are refused with exit 2 and the reason.
#[test]
fn kube_proxy_flags_are_accepted_or_refused_with_a_reason() {
    let out_path = temp("flags.yaml", "").with_file_name("flags-effective.yaml");
    let out = kproxy(&[
        "--hostname-override",
        "n",
        "--conntrack-tcp-be-liberal",
        "--conntrack-max-per-core=0",
        "--conntrack-min",
        "1000",
        "--conntrack-tcp-timeout-established",
        "2h",
        "--conntrack-tcp-timeout-close-wait",
        "30m",
        "--conntrack-udp-timeout",
        "45s",
        "--conntrack-udp-timeout-stream",
        "2m",
        "--iptables-localhost-nodeports=false",
        "--iptables-masquerade-bit",
        "13",
        "--config-sync-period",
        "10m",
        "--feature-gates",
        "Alpha=true,Beta=false",
        "--ipvs-sync-period",
        "40s",
        "--ipvs-strict-arp",
        "--ipvs-exclude-cidrs",
        "10.0.0.0/8",
        "--oom-score-adj=-500",
        "--proxy-port-range",
        "30000-31000",
        "--write-config-to",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&out_path).unwrap();
    for expected in [
        "tcpBeLiberal: true",
        "maxPerCore: 0",
        "min: 1000",
        "tcpEstablishedTimeout: 2h",
        "tcpCloseWaitTimeout: 30m",
        "udpTimeout: 45s",
        "udpStreamTimeout: 2m",
        "localhostNodePorts: false",
        "masqueradeBit: 13",
        "configSyncPeriod: 10m",
        "Alpha: true",
        "Beta: false",
        "strictARP: true",
        "10.0.0.0/8",
        "oomScoreAdj: -500",
        "portRange: 30000-31000",
    ] {
        assert!(
            written.contains(expected),
            "missing {expected:?} in\n{written}"
        );
    }
    for (flag, why) in [
        ("--profiling", "no profiling handlers"),
        ("--init-only", "no separate init step"),
        ("--logging-format=json", "kproxy logs text"),
        ("--vmodule=x=2", "RUST_LOG"),
        ("--feature-gates=Nope", "Name=true|false"),
    ] {
        let out = kproxy(&[
            "--hostname-override",
            "n",
            flag,
            "--manifests",
            "/nonexistent",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(why), "{flag}: {stderr}");
    }
}

/// IPVS mode on a kernel without IPVS (this machine's): the daemon and `sync` stop with exit
/// status 1 saying the kernel lacks it, rather than retrying; bad `ipvs.*` values exit 2.
#[test]
fn ipvs_mode_without_ipvs_in_the_kernel_stops_with_the_reason() {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("skipping: this kernel has IPVS");
        return;
    }
    let manifests = temp("ipvs-empty.yaml", "");
    let out = kproxy(&[
        "--proxy-mode",
        "ipvs",
        "--manifests",
        manifests.to_str().unwrap(),
        "--healthz-bind-address",
        "127.0.0.1:0",
        "--metrics-bind-address",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no IPVS") || stderr.contains("vs/conntrack"),
        "{stderr}"
    );
    for (flag, value) in [
        ("--ipvs-exclude-cidrs", "10.0.0.0/33"),
        ("--ipvs-scheduler", "fastest"),
    ] {
        let out = kproxy(&[
            "--proxy-mode",
            "ipvs",
            flag,
            value,
            "--manifests",
            manifests.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(value), "{stderr}");
    }
}
