//! nftables mode's own scenarios on the real datapath (the shared ones run from
//! `datapath.rs`): what `kproxy sync` programs over netlink is what `nft -f` of `kproxy render`
//! gives, read back with `nft list table`; IPv6; traffic to a cluster IP on a port no Service uses
//! is refused; `--cleanup` deletes kproxy's tables and nothing else; the daemon follows changes
//! by incremental syncs and exports each Service port's new-connection counter. Needs root and
//! nft; skips, saying why, elsewhere.

mod testbed;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{counts, wait_for, Bed, Reply, ServiceSpec, NFTABLES, NODE_IP};

const SVC_IP: &str = "172.30.0.10";

fn nft_missing() -> bool {
    let missing = !fixtures::command_exists("nft");
    if missing {
        eprintln!("skipped: nft not installed");
    }
    missing
}

fn bed(test: &str) -> Option<Bed> {
    if nft_missing() {
        return None;
    }
    Bed::three_pods(test)
}

fn web(endpoints: &[(&str, &str, bool)], extra_spec: &str) -> String {
    ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec,
        status: "",
        endpoints,
    }
    .yaml()
}

fn all_ready() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("10.244.1.11", "node-a", true),
        ("10.244.1.12", "node-a", true),
        ("10.244.1.13", "node-b", true),
    ]
}

/// `nft list table ip kube-proxy` in namespace `ns`.
fn listed(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "ip",
            "kube-proxy",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sync_programs_what_nft_makes_of_the_rendering() {
    let Some(bed) = bed("nftrender") else { return };
    let yaml = format!(
        "{}---\n{}",
        web(&all_ready(), "  type: NodePort\n  sessionAffinity: ClientIP\n"),
        ServiceSpec {
            name: "lb",
            cluster_ip: "172.30.0.20",
            extra_spec: "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerSourceRanges: [192.168.56.0/24]\n",
            status: "status:\n  loadBalancer:\n    ingress: [{ip: 192.168.58.1}]\n",
            endpoints: &[("10.244.1.11", "node-a", true), ("10.244.1.13", "node-b", true)],
        }
        .yaml()
    );
    bed.sync(&yaml, NFTABLES).unwrap();
    let ours = listed(&bed.ns("node").name);

    // The same manifests rendered, and loaded by nft into a scratch namespace.
    let file = testbed::write(&bed.dir, "render-in.yaml", &yaml);
    let rendered = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(["render", "--proxy-mode", "nftables", "-f"])
        .arg(&file)
        .args([
            "--hostname-override",
            testbed::NODE_NAME,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--node-ip",
            NODE_IP,
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    let text = testbed::write(
        &bed.dir,
        "rendered.nft",
        &String::from_utf8_lossy(&rendered.stdout),
    );
    /// The scratch namespace, deleted when dropped — also when the test fails.
    struct Scratch(String);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let scratch = Scratch(format!("kpx-nftr-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &scratch.0])
        .status()
        .unwrap()
        .success());
    let loaded = Command::new("ip")
        .args(["netns", "exec", &scratch.0, "nft", "-f"])
        .arg(&text)
        .status()
        .unwrap();
    assert!(loaded.success());
    let theirs = listed(&scratch.0);
    assert_eq!(
        ours, theirs,
        "nft list of the netlink sync vs of nft -f of the rendering"
    );
    assert!(
        ours.contains("chain service-") && ours.contains("affinity-"),
        "{ours}"
    );
    // And the rules work.
    assert!(bed.tcp("client", &format!("{SVC_IP}:80")).pod().is_some());
}

#[test]
fn an_unused_port_of_a_cluster_ip_is_refused() {
    let Some(bed) = bed("nftunused") else { return };
    bed.sync(&web(&all_ready(), ""), NFTABLES).unwrap();
    assert!(bed.tcp("pod-a", &format!("{SVC_IP}:80")).pod().is_some());
    // Port 81: no Service uses it. Refused at once from a pod (forward) and from the node
    // (output), rather than left to time out.
    assert_eq!(bed.tcp("pod-a", &format!("{SVC_IP}:81")), Reply::Refused);
    assert_eq!(bed.tcp("node", &format!("{SVC_IP}:81")), Reply::Refused);
}

#[test]
fn ipv6_cluster_ip_and_node_port() {
    let Some(bed) = bed("nftipv6") else { return };
    let svc6 = "fd00:30::10";
    let a6 = testbed::pod_ip6("10.244.1.11");
    let b6 = testbed::pod_ip6("10.244.1.12");
    let yaml = |eps: &[&str]| testbed::dual_stack_web(SVC_IP, svc6, eps);
    bed.sync6(&yaml(&[&a6, &b6]), NFTABLES).unwrap();
    let listed6 = bed
        .node
        .output(&["nft", "list", "table", "ip6", "kube-proxy"])
        .unwrap();
    assert!(
        listed6.contains("ip6 daddr . meta l4proto . th dport vmap @service-ips"),
        "{listed6}"
    );
    bed.warm_up_ipv6(&[&a6, &b6]);
    let c = counts(&bed.tcp_many("pod-c", &format!("[{svc6}]:80"), 20));
    assert_eq!(c.len(), 2, "{c:?}");
    let udp = bed.udp_client("pod-c");
    assert!(udp.ask(&format!("[{svc6}]:53")).pod().is_some());
    let r = bed.tcp("client", &format!("[{}]:30080", testbed::NODE_IP6));
    assert!(r.pod().is_some(), "NodePort over IPv6: {r:?}");
    bed.sync6(&yaml(&[]), NFTABLES).unwrap();
    assert_eq!(bed.tcp("pod-c", &format!("[{svc6}]:80")), Reply::Refused);
}

#[test]
fn cleanup_deletes_only_kproxys_tables() {
    let Some(bed) = bed("nftcleanup") else { return };
    bed.node
        .exec(&["nft", "add", "table", "inet", "filter"])
        .unwrap();
    bed.node
        .exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "filter",
            "input",
            "{ type filter hook input priority 0; }",
        ])
        .unwrap();
    bed.node
        .exec(&["nft", "add", "table", "ip", "cni-nat"])
        .unwrap();
    bed.sync(&web(&all_ready(), ""), NFTABLES).unwrap();
    assert!(bed.saved(NFTABLES).contains("table ip kube-proxy"));
    bed.kproxy(&["--cleanup"]).unwrap();
    let left = bed.saved(NFTABLES);
    assert!(
        !left.contains("kube-proxy"),
        "kproxy's table remains:\n{left}"
    );
    assert!(
        left.contains("table inet filter") && left.contains("chain input"),
        "{left}"
    );
    assert!(left.contains("table ip cni-nat"), "{left}");
    assert_ne!(
        bed.tcp("client", &format!("{SVC_IP}:80")).pod(),
        Some("pod-a")
    );
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn daemon_syncs_incrementally_and_exports_service_counters() {
    let Some(bed) = bed("nftdaemon") else { return };
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.yaml");
    std::fs::write(&file, web(&all_ready(), "")).unwrap();
    let _daemon = bed.start_daemon(
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &["--proxy-mode", "nftables"],
    );
    let to = format!("{SVC_IP}:80");
    wait_for("the first sync", || bed.tcp("client", &to).pod().is_some());
    // An endpoint leaves: the change is an incremental sync, and traffic follows it.
    std::fs::write(
        &file,
        web(
            &[
                ("10.244.1.11", "node-a", true),
                ("10.244.1.13", "node-b", true),
            ],
            "",
        ),
    )
    .unwrap();
    wait_for("pod-b to leave", || {
        let c = counts(&bed.tcp_many("client", &to, 12));
        !c.contains_key("pod-b") && c.len() == 2
    });
    let replies = bed.tcp_many("client", &to, 20);
    assert_eq!(replies.len(), 20);
    // The partial sync shows in the metrics, and the Service's counter counts the connections
    // (read every 10 s).
    let line = "kubeproxy_service_new_connections_total{namespace=\"ns1\",service=\"web\",port=\"http\",protocol=\"TCP\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    loop {
        if let Some((200, t)) =
            testbed::http_get(&bed.ns("node").name, "127.0.0.1:10249", "/metrics")
        {
            text = t;
            let partial = metric(
                &text,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
            )
            .unwrap_or(0.0);
            if partial >= 1.0 && metric(&text, line).unwrap_or(0.0) >= 20.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the syncs and counters:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        text.contains("kubeproxy_sync_proxy_objects{kind=\"nftables/chains\"}"),
        "{text}"
    );
}

/// A ServiceCIDR (KEP-1880): traffic to an address of it no Service holds is dropped — from a
/// pod and from the node — while an allocated cluster IP on an unused port is refused. The
/// unallocated address is made real first (pod-c answers on it), so the drop is kproxy's and
/// not a missing route.
#[test]
fn unallocated_addresses_of_a_service_cidr_are_dropped() {
    let Some(bed) = bed("nftcidr") else { return };
    bed.ns("pod-c")
        .exec(&["ip", "addr", "add", "172.30.0.99/32", "dev", "eth0"])
        .unwrap();
    bed.node
        .exec(&["ip", "route", "add", "172.30.0.99/32", "via", "10.244.1.13"])
        .unwrap();
    let unallocated = format!("172.30.0.99:{}", testbed::TCP_PORT);
    bed.sync(&web(&all_ready(), ""), NFTABLES).unwrap();
    assert_eq!(
        bed.tcp("pod-a", &unallocated).pod(),
        Some("pod-c"),
        "without a ServiceCIDR the address is just routed"
    );
    let cidr = "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [172.30.0.0/16]}\n---\n";
    bed.sync(&format!("{cidr}{}", web(&all_ready(), "")), NFTABLES)
        .unwrap();
    let listed = listed(&bed.ns("node").name);
    assert!(
        listed.contains(
            "ip daddr 172.30.0.0/16 drop comment \"Drop traffic to unallocated ClusterIPs\""
        ),
        "{listed}"
    );
    assert_eq!(bed.tcp("pod-a", &unallocated), Reply::Timeout);
    assert_eq!(bed.tcp("node", &unallocated), Reply::Timeout);
    assert_eq!(bed.tcp("pod-a", &format!("{SVC_IP}:81")), Reply::Refused);
    assert!(bed.tcp("pod-a", &format!("{SVC_IP}:80")).pod().is_some());
}

/// Through the API: the daemon in nftables mode watches ServiceCIDRs, so the control plane's
/// default one (its service range, as a real API server creates) becomes the drop rule, and a
/// ServiceCIDR created later is added by a sync.
#[test]
fn the_daemon_watches_service_cidrs_from_the_api() {
    let Some(bed) = bed("nftcidrapi") else { return };
    let app = std::sync::Arc::new(control_plane::api::App::new((
        "10.96.0.0".parse().unwrap(),
        1 << 16,
    )));
    let (_api, addr) = bed.start_control_plane(std::sync::Arc::clone(&app), None);
    let kubeconfig = bed.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, control_plane::kubeconfig(addr)).unwrap();
    let _daemon = bed.start_daemon_kube(&kubeconfig, &["--proxy-mode", "nftables"]);
    let node = bed.ns("node").name.clone();
    let has = |text: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                "nft",
                "list",
                "chain",
                "ip",
                "kube-proxy",
                "cluster-ips-check",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(text))
            .unwrap_or(false)
    };
    wait_for("the default ServiceCIDR's drop rule", || {
        has("ip daddr 10.96.0.0/16 drop")
    });
    app.store
        .lock()
        .unwrap()
        .create(
            "servicecidrs",
            "",
            serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.97.0.0/16"]}}),
        )
        .unwrap();
    wait_for("a new ServiceCIDR's drop rule", || {
        has("ip daddr 10.97.0.0/16 drop")
    });
}

/// Upstream's terminating fallback on the real datapath: when every endpoint is terminating but
/// still serving, traffic goes to them rather than being refused; once a ready endpoint exists,
/// only it takes new connections.
#[test]
fn terminating_endpoints_serve_until_a_ready_one_exists() {
    let Some(bed) = bed("nftterm") else { return };
    let terminating = |yaml: String| {
        yaml.replace(
            "conditions: {ready: false}",
            "conditions: {ready: false, serving: true, terminating: true}",
        )
    };
    let to = format!("{SVC_IP}:80");
    bed.sync(
        &terminating(web(
            &[
                ("10.244.1.11", "node-a", false),
                ("10.244.1.12", "node-a", false),
            ],
            "",
        )),
        NFTABLES,
    )
    .unwrap();
    let c = counts(&bed.tcp_many("client", &to, 12));
    assert!(
        c.keys().all(|k| k == "pod-a" || k == "pod-b") && !c.is_empty(),
        "the terminating endpoints serve: {c:?}"
    );
    bed.sync(
        &terminating(web(
            &[
                ("10.244.1.11", "node-a", false),
                ("10.244.1.12", "node-a", false),
                ("10.244.1.13", "node-b", true),
            ],
            "",
        )),
        NFTABLES,
    )
    .unwrap();
    let c = counts(&bed.tcp_many("client", &to, 12));
    assert_eq!(c.keys().collect::<Vec<_>>(), ["pod-c"], "{c:?}");
}
