//! The long-running proxy with the `--manifests` source, on the datapath: it programs rules, follows
//! changes to the files, keeps the last good rules when a file breaks, answers /healthz, /livez and
//! /metrics, and leaves its rules in place on SIGTERM. Needs root; skips elsewhere.

mod testbed;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{wait_for, Bed, Daemon, Reply, ServiceSpec};

const SVC: &str = "172.30.0.10:80";

fn yaml(endpoints: &[(&str, &str, bool)]) -> String {
    let now = proxy_core::rfc3339::format(std::time::SystemTime::now());
    ServiceSpec {
        name: "web",
        cluster_ip: "172.30.0.10",
        extra_spec: "",
        status: "",
        endpoints,
    }
    .yaml()
    .replace(
        "  labels: {kubernetes.io/service-name: web}\n",
        &format!(
            "  labels: {{kubernetes.io/service-name: web}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{now}\"}}\n"
        ),
    )
}

/// GET `path` on `addr` from inside the node namespace; returns (status, body).
fn get(bed: &Bed, addr: &str, path: &str) -> (u16, String) {
    get_from(&bed.node.name, addr, path)
}

/// GET `path` on `addr` from inside namespace `ns`, with a plain HTTP/1.1 client; (status, body).
fn get_from(ns: &str, addr: &str, path: &str) -> (u16, String) {
    try_get_from(ns, addr, path).unwrap_or_else(|| panic!("cannot connect to {addr}"))
}

/// As [`get_from`], or `None` when the connection is refused (nothing listens).
fn try_get_from(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    testbed::http_get(ns, addr, path)
}

/// Starts kproxy (iptables-nft) in the node namespace on the manifests in `dir`, with these
/// cluster CIDRs.
fn start_daemon(bed: &Bed, dir: &std::path::Path, cluster_cidr: &str, stderr: Stdio) -> Daemon {
    start_daemon_with(
        bed,
        dir,
        cluster_cidr,
        stderr,
        &["--iptables-variant", "nft"],
    )
}

/// Starts kproxy in the node namespace with extra flags.
/// The bed's manifests directory holding `web.yaml`: the web Service with one ready endpoint,
/// pod-a on node-a (the starting point of most tests here).
fn web_manifests(bed: &Bed) -> std::path::PathBuf {
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        yaml(&[("10.244.1.11", "node-a", true)]),
    )
    .unwrap();
    dir
}

fn start_daemon_with(
    bed: &Bed,
    dir: &std::path::Path,
    cluster_cidr: &str,
    stderr: Stdio,
    extra: &[&str],
) -> Daemon {
    bed.start_daemon(dir, cluster_cidr, stderr, extra)
}

#[test]
fn daemon_follows_manifests_and_serves_health_and_metrics() {
    let Some(bed) = Bed::new(
        "daemon",
        &[("pod-a", "10.244.1.11"), ("pod-b", "10.244.1.12")],
    ) else {
        return;
    };
    let dir = web_manifests(&bed);
    let file = dir.join("web.yaml");

    let mut daemon = start_daemon(&bed, &dir, "10.244.0.0/16,fd00:244::/32", Stdio::piped());

    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });

    let (status, body) = get(&bed, "127.0.0.1:10256", "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"healthy\": true") && body.contains("lastUpdated"),
        "{body}"
    );
    let (status, _) = get(&bed, "127.0.0.1:10256", "/livez");
    assert_eq!(status, 200);

    // The manifests change: traffic follows.
    std::fs::write(&file, yaml(&[("10.244.1.12", "node-a", true)])).unwrap();
    wait_for("the new endpoint", || {
        bed.tcp("client", SVC).pod() == Some("pod-b")
    });
    for r in bed.tcp_many("client", SVC, 10) {
        assert_eq!(r.pod(), Some("pod-b"));
    }

    // A broken file: the last good rules stay.
    std::fs::write(&file, "kind: Service\nmetadata: [unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(bed.tcp("client", SVC).pod(), Some("pod-b"));
    std::fs::write(&file, yaml(&[])).unwrap();
    wait_for("REJECT with no endpoints", || {
        bed.tcp("client", SVC) == Reply::Refused
    });

    // The metrics are recorded just after the rules are applied: wait for them, do not race them.
    let partial_syncs = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut metrics = String::new();
    wait_for("changes applied by partial syncs in the metrics", || {
        let (status, text) = get(&bed, "127.0.0.1:10249", "/metrics");
        metrics = text;
        status == 200 && partial_syncs(&metrics) >= 2
    });
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"}",
        "kubeproxy_sync_proxy_rules_iptables_last{table=\"nat\"}",
        "kubeproxy_network_programming_duration_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // SIGTERM: the daemon exits and the rules stay.
    let pid = daemon.0.id().to_string();
    // `ip netns exec` execs kproxy, so the child's pid is kproxy's.
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kproxy did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    daemon
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        stderr.matches("keeping the last good ones").count(),
        1,
        "a broken file is reported once per change, not at every look:\n{stderr}"
    );
    assert!(
        bed.saved("nft").contains("KUBE-SERVICES"),
        "rules left in place"
    );
    assert_eq!(bed.tcp("client", SVC), Reply::Refused, "and still in force");
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local`: its health-check node port answers
/// a real HTTP client outside the node 200 while this node has a ready endpoint, 503 when the only
/// endpoints are elsewhere, 200 again when one comes back; the listener closes with the Service.
#[test]
fn health_check_node_port_follows_local_endpoints() {
    let Some(bed) = Bed::new("hcnp", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.yaml");
    let lb = |endpoints: &[(&str, &str, bool)]| {
        ServiceSpec {
            name: "lb",
            cluster_ip: "172.30.0.20",
            extra_spec: "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
            status: "",
            endpoints,
        }
        .yaml()
    };
    std::fs::write(&file, lb(&[("10.244.1.11", "node-a", true)])).unwrap();
    let _daemon = start_daemon(&bed, &dir, "10.244.0.0/16", Stdio::null());
    let probe = || {
        let addr = format!("{}:32000", testbed::NODE_IP);
        try_get_from(&bed.ns("client").name, &addr, "/healthz")
    };

    let mut last = None;
    wait_for("200 from the health-check node port", || {
        last = probe();
        last.as_ref().is_some_and(|(status, _)| *status == 200)
    });
    let (_, body) = last.clone().unwrap();
    assert!(
        body.contains("\"namespace\":\"ns1\"")
            && body.contains("\"name\":\"lb\"")
            && body.contains("\"localEndpoints\":1"),
        "{body}"
    );

    // The only endpoint is now on another node: the load balancer must skip this one.
    std::fs::write(&file, lb(&[("10.244.1.11", "node-b", true)])).unwrap();
    wait_for("503 without a local endpoint", || {
        last = probe();
        last.as_ref().is_some_and(|(status, _)| *status == 503)
    });
    assert!(
        last.unwrap().1.contains("\"localEndpoints\":0"),
        "the body says why"
    );

    // Back on this node, but not ready: still 503. Ready again: 200.
    std::fs::write(&file, lb(&[("10.244.1.11", "node-a", false)])).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe().map(|(s, _)| s), Some(503), "not ready is not local");
    std::fs::write(&file, lb(&[("10.244.1.11", "node-a", true)])).unwrap();
    wait_for("200 again", || probe().is_some_and(|(s, _)| s == 200));

    // The Service goes away: so does the listener.
    std::fs::write(&file, "").unwrap();
    wait_for("the listener to close", || probe().is_none());
}

fn rules_of(bed: &Bed, variant: &str) -> Vec<String> {
    bed.rules(variant)
}

/// Tampering at random behind the daemon's back — flushed built-in chains (the jumps), emptied
/// per-service chains, deleted canaries, chains kproxy did not write — is repaired: once the
/// tampering stops, the next full sync (every `syncPeriod`, here 1 s) brings the rules back to
/// exactly what the first sync wrote, and traffic flows again.
fn tampered_rules_repair_themselves(variant: &str) {
    let Some(bed) = Bed::new("tamper", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let dir = web_manifests(&bed);
    let _daemon = start_daemon_with(
        &bed,
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &[
            "--iptables-variant",
            variant,
            "--iptables-sync-period",
            "1s",
        ],
    );
    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });
    let fresh = rules_of(&bed, variant);
    let ipt = format!("iptables-{variant}");
    let svc_chain = fresh
        .iter()
        .find_map(|l| l.strip_prefix(":KUBE-SVC-"))
        .map(|c| format!("KUBE-SVC-{c}"))
        .expect("a service chain");

    // The worst single tamper first: no jump into KUBE-SERVICES from outside the node.
    bed.node
        .exec(&[&ipt, "-t", "nat", "-F", "PREROUTING"])
        .unwrap();
    wait_for("the PREROUTING jump to come back", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });

    // Then a soak: 30 random tampers from a fixed seed.
    let tampers: Vec<Vec<String>> = vec![
        vec!["-t", "nat", "-F", "PREROUTING"],
        vec!["-t", "nat", "-F", "OUTPUT"],
        vec!["-t", "nat", "-F", "POSTROUTING"],
        vec!["-t", "filter", "-F", "INPUT"],
        vec!["-t", "filter", "-F", "FORWARD"],
        vec!["-t", "filter", "-F", "OUTPUT"],
        vec!["-t", "nat", "-F", &svc_chain],
        vec!["-t", "nat", "-X", "KUBE-PROXY-CANARY"],
        vec!["-t", "filter", "-X", "KUBE-PROXY-CANARY"],
        vec!["-t", "mangle", "-X", "KUBE-PROXY-CANARY"],
        vec!["-t", "nat", "-N", "KUBE-SEP-ZZZZZZZZZZZZZZZZ"],
        vec!["-t", "nat", "-N", "KUBE-SVC-YYYYYYYYYYYYYYYY"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_owned).collect())
    .collect();
    let mut seed: u64 = 0x5eed;
    for _ in 0..30 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = &tampers[(seed >> 33) as usize % tampers.len()];
        let mut args = vec![ipt.as_str()];
        args.extend(t.iter().map(String::as_str));
        let _ = bed.node.exec(&args); // some fail (already gone): that is tampering too
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("the rules to equal the first sync's", || {
        rules_of(&bed, variant) == fresh
    });
    assert_eq!(bed.tcp("client", SVC).pod(), Some("pod-a"));
}

mod tamper {
    #[test]
    fn nft() {
        super::tampered_rules_repair_themselves("nft")
    }
    #[test]
    fn legacy() {
        super::tampered_rules_repair_themselves("legacy")
    }
}

mod emptied_manifest {
    #[test]
    fn nft() {
        super::an_emptied_manifest_keeps_its_rules_until_it_stays_empty("nft")
    }
    #[test]
    fn legacy() {
        super::an_emptied_manifest_keeps_its_rules_until_it_stays_empty("legacy")
    }
}

/// `: > web.yaml` is the first step of `cat new > web.yaml`: the file's rules stay while it is
/// empty for a moment, and traffic never stops; a file that stays empty does lose them.
fn an_emptied_manifest_keeps_its_rules_until_it_stays_empty(variant: &str) {
    let Some(bed) = Bed::new(
        "emptied",
        &[("pod-a", "10.244.1.11"), ("pod-b", "10.244.1.12")],
    ) else {
        return;
    };
    let dir = web_manifests(&bed);
    let file = dir.join("web.yaml");
    let _daemon = start_daemon_with(
        &bed,
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &["--iptables-variant", variant],
    );
    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });

    std::fs::File::create(&file).unwrap(); // truncate, as a shell's `>` does
    for _ in 0..5 {
        assert_eq!(
            bed.tcp("client", SVC).pod(),
            Some("pod-a"),
            "the emptied file's rules stay"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&file, yaml(&[("10.244.1.12", "node-a", true)])).unwrap();
    wait_for("the rewritten file", || {
        bed.tcp("client", SVC).pod() == Some("pod-b")
    });

    std::fs::File::create(&file).unwrap();
    wait_for("a file that stays empty to lose its Service", || {
        bed.tcp("client", SVC) == Reply::Timeout || bed.tcp("client", SVC) == Reply::Refused
    });
}

/// KEP-3836: a Node the cluster autoscaler is about to remove (its `ToBeDeletedByClusterAutoscaler`
/// taint) makes `/healthz` answer 503 with `nodeEligible: false`, so load balancers drain it;
/// `/livez` stays 200; without the taint, 200 again.
#[test]
fn healthz_drains_a_node_tainted_for_deletion() {
    let Some(bed) = Bed::new("drain", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let dir = web_manifests(&bed);
    let node = |taints: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nspec: {{taints: [{taints}]}}\n")
    };
    let tainted =
        "{key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}";
    std::fs::write(dir.join("node.yaml"), node(tainted)).unwrap();
    let _daemon = start_daemon(&bed, &dir, "10.244.0.0/16", Stdio::null());
    let healthz = || try_get_from(&bed.node.name, "127.0.0.1:10256", "/healthz");
    wait_for("the drained node's healthz", || {
        healthz()
            .is_some_and(|(status, body)| status == 503 && body.contains("\"nodeEligible\": false"))
    });
    assert_eq!(get(&bed, "127.0.0.1:10256", "/livez").0, 200);
    assert_eq!(
        bed.tcp("client", SVC).pod(),
        Some("pod-a"),
        "traffic still flows"
    );
    std::fs::write(
        dir.join("node.yaml"),
        node("{key: other, effect: NoSchedule}"),
    )
    .unwrap();
    wait_for("healthz back to 200", || {
        healthz()
            .is_some_and(|(status, body)| status == 200 && body.contains("\"nodeEligible\": true"))
    });
}

/// The conntrack settings kube-proxy applies at start, in the node's network namespace: TCP and
/// UDP timeouts and `nf_conntrack_tcp_be_liberal` (whose rule then goes).
#[test]
fn conntrack_settings_are_applied_at_start() {
    let Some(bed) = Bed::new("ctset", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let dir = web_manifests(&bed);
    let _daemon = start_daemon_with(
        &bed,
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &[
            "--iptables-variant",
            "nft",
            "--conntrack-tcp-timeout-established",
            "2h",
            "--conntrack-tcp-timeout-close-wait",
            "90s",
            "--conntrack-udp-timeout",
            "45s",
            "--conntrack-tcp-be-liberal",
        ],
    );
    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });
    let sysctl = |name: &str| {
        bed.node
            .output(&["cat", &format!("/proc/sys/net/netfilter/{name}")])
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_established"), "7200");
    assert_eq!(sysctl("nf_conntrack_tcp_timeout_close_wait"), "90");
    assert_eq!(sysctl("nf_conntrack_udp_timeout"), "45");
    assert_eq!(sysctl("nf_conntrack_tcp_be_liberal"), "1");
    assert!(!bed.saved("nft").contains("--ctstate INVALID -j DROP"));
}

/// nfacct on the real datapath: the daemon creates upstream's two counter objects, its rules count
/// into them, and a localhost NodePort connection moves
/// `kubeproxy_iptables_localhost_nodeports_accepted_packets_total` (both iptables variants).
fn nfacct_counts_localhost_node_ports(variant: &str) {
    let Some(bed) = Bed::new("nfacct", &[("pod-a", "10.244.1.11")]) else {
        return;
    };
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let svc = ServiceSpec {
        name: "web",
        cluster_ip: "172.30.0.10",
        extra_spec: "  type: NodePort\n",
        status: "",
        endpoints: &[("10.244.1.11", "node-a", true)],
    }
    .yaml();
    std::fs::write(dir.join("web.yaml"), svc).unwrap();
    let _daemon = start_daemon_with(
        &bed,
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &[
            "--iptables-variant",
            variant,
            "--iptables-sync-period",
            "1s",
        ],
    );
    wait_for("the first sync", || {
        bed.tcp("client", SVC).pod() == Some("pod-a")
    });
    // iptables-save prints `--nfacct-name  NAME` with two spaces: compare words.
    let saved = bed
        .saved(variant)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        saved.contains("--nfacct-name ct_state_invalid_dropped_pkts")
            && saved.contains("--nfacct-name localhost_nps_accepted_pkts"),
        "the counting rules are in:\n{saved}"
    );
    let metric = |name: &str| {
        let (_, text) = get(&bed, "127.0.0.1:10249", "/metrics");
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let counter = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total";
    assert_eq!(metric(counter), 0.0, "nothing counted yet");
    let r = bed.tcp("node", "127.0.0.1:30080");
    assert!(r.pod().is_some(), "a localhost NodePort connection: {r:?}");
    wait_for("the counter in the metrics", || metric(counter) >= 1.0);
}

mod nfacct {
    #[test]
    fn nft() {
        super::nfacct_counts_localhost_node_ports("nft")
    }
    #[test]
    fn legacy() {
        super::nfacct_counts_localhost_node_ports("legacy")
    }
}
