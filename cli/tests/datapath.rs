//! iptables mode on the real datapath: `kproxy sync` in a node namespace, real packets from pods,
//! the node and an outside client. Every scenario runs with iptables-nft and iptables-legacy.
//! Needs root (CI is root); skips, saying why, elsewhere.

mod testbed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use testbed::{both_variants, counts, Bed, Reply, ServiceSpec, CLIENT_IP, NODE_IP};

const SVC_IP: &str = "172.30.0.10";

/// Three pods: two on this node, one "on another node" (same bridge, other nodeName).
fn bed(test: &str) -> Option<Bed> {
    Bed::three_pods(test)
}

fn all_ready() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("10.244.1.11", "node-a", true),
        ("10.244.1.12", "node-a", true),
        ("10.244.1.13", "node-b", true),
    ]
}

fn cluster_ip(endpoints: &[(&str, &str, bool)]) -> String {
    ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec: "",
        status: "",
        endpoints,
    }
    .yaml()
}

/// A NodePort Service `web` (node port 30080) with these endpoints.
fn node_port_service(endpoints: &[(&str, &str, bool)]) -> String {
    ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec: "  type: NodePort\n",
        status: "",
        endpoints,
    }
    .yaml()
}

both_variants!(
    cluster_ip_tcp_and_udp_from_pod_and_node,
    spreads_over_all_endpoints,
    node_port_from_outside,
    external_ip_from_outside,
    load_balancer_source_ranges,
    external_traffic_policy_local,
    client_ip_affinity_sticks,
    no_endpoints_is_refused_at_once,
    hairpin_to_own_service,
    removed_endpoint_gets_no_new_connections,
    udp_endpoint_replaced_moves_the_same_socket,
    restart_drops_no_connection,
    cleanup_removes_only_ours,
    one_broken_service_does_not_block_the_others,
    an_external_ip_cannot_take_another_services_cluster_ip,
    node_port_on_localhost,
    ipv6_with_ip6tables,
    local_traffic_detection_modes,
    node_port_addresses_from_interfaces,
    full_sync_leaves_other_owners_counters,
);

/// The same scenarios in kproxy's nftables mode (no iptables rule at all; `cli/tests/nftables.rs`
/// has the scenarios of its own: IPv6, cleanup, the daemon's incremental syncs, `nft list`
/// against the rendering).
mod nftables_mode {
    use super::testbed::NFTABLES;

    macro_rules! nftables_scenarios {
        ($($name:ident),* $(,)?) => {
            $(#[test] fn $name() { super::$name(NFTABLES) })*
        };
    }

    nftables_scenarios!(
        cluster_ip_tcp_and_udp_from_pod_and_node,
        spreads_over_all_endpoints,
        node_port_from_outside,
        external_ip_from_outside,
        load_balancer_source_ranges,
        external_traffic_policy_local,
        client_ip_affinity_sticks,
        no_endpoints_is_refused_at_once,
        hairpin_to_own_service,
        removed_endpoint_gets_no_new_connections,
        udp_endpoint_replaced_moves_the_same_socket,
        restart_drops_no_connection,
        one_broken_service_does_not_block_the_others,
        an_external_ip_cannot_take_another_services_cluster_ip,
    );
}

fn cluster_ip_tcp_and_udp_from_pod_and_node(variant: &str) {
    let Some(bed) = bed("cluster_ip") else { return };
    bed.sync(&cluster_ip(&all_ready()), variant).unwrap();
    let r = bed.tcp("pod-a", &format!("{SVC_IP}:80"));
    assert!(r.pod().is_some(), "{r:?}");
    let r = bed.tcp("node", &format!("{SVC_IP}:80"));
    assert!(r.pod().is_some(), "{r:?}");
    let udp = bed.udp_client("pod-b");
    assert!(udp.ask(&format!("{SVC_IP}:53")).pod().is_some());
    let udp = bed.udp_client("node");
    assert!(udp.ask(&format!("{SVC_IP}:53")).pod().is_some());
}

fn spreads_over_all_endpoints(variant: &str) {
    let Some(bed) = bed("spread") else { return };
    bed.sync(&cluster_ip(&all_ready()), variant).unwrap();
    let replies = bed.tcp_many("client", &format!("{SVC_IP}:80"), 150);
    let c = counts(&replies);
    assert_eq!(c.len(), 3, "every endpoint gets connections: {c:?}");
    for (pod, n) in &c {
        assert!(*n >= 15, "{pod} got only {n} of 150: {c:?}");
    }
}

fn node_port_from_outside(variant: &str) {
    let Some(bed) = bed("nodeport") else { return };
    let yaml = node_port_service(&all_ready());
    bed.sync(&yaml, variant).unwrap();
    let replies = bed.tcp_many("client", &format!("{NODE_IP}:30080"), 30);
    let c = counts(&replies);
    assert!(c.keys().all(|k| k.starts_with("pod-")), "{c:?}");
    // Cluster policy: masqueraded, the pod sees the node, not the client.
    if let Reply::Answer { peer, .. } = &replies[0] {
        assert_ne!(peer, CLIENT_IP);
    }
}

fn external_ip_from_outside(variant: &str) {
    let Some(bed) = bed("externalip") else { return };
    let yaml = ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec: "  externalIPs: [192.168.57.40]\n",
        status: "",
        endpoints: &all_ready(),
    }
    .yaml();
    bed.sync(&yaml, variant).unwrap();
    let r = bed.tcp("client", "192.168.57.40:80");
    assert!(r.pod().is_some(), "{r:?}");
}

fn load_balancer_source_ranges(variant: &str) {
    let Some(bed) = bed("lbranges") else { return };
    let lb = |ranges: &str| {
        ServiceSpec {
            name: "web",
            cluster_ip: SVC_IP,
            extra_spec: &format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [{ranges}]\n"),
            status: "status:\n  loadBalancer:\n    ingress: [{ip: 192.168.58.1}]\n",
            endpoints: &all_ready(),
        }
        .yaml()
    };
    bed.sync(&lb("192.168.56.0/24"), variant).unwrap();
    let r = bed.tcp("client", "192.168.58.1:80");
    assert!(r.pod().is_some(), "allowed source: {r:?}");
    bed.sync(&lb("203.0.113.0/24"), variant).unwrap();
    let r = bed.tcp("client", "192.168.58.1:80");
    assert_eq!(r, Reply::Timeout, "a denied source is dropped");
}

fn external_traffic_policy_local(variant: &str) {
    let Some(bed) = bed("etplocal") else { return };
    let yaml = |endpoints: &[(&str, &str, bool)]| {
        ServiceSpec {
            name: "web",
            cluster_ip: SVC_IP,
            extra_spec: "  type: NodePort\n  externalTrafficPolicy: Local\n",
            status: "",
            endpoints,
        }
        .yaml()
    };
    // One local endpoint (pod-a) and one remote (pod-c).
    bed.sync(
        &yaml(&[
            ("10.244.1.11", "node-a", true),
            ("10.244.1.13", "node-b", true),
        ]),
        variant,
    )
    .unwrap();
    for r in bed.tcp_many("client", &format!("{NODE_IP}:30080"), 20) {
        assert_eq!(
            r,
            Reply::Answer {
                pod: "pod-a".into(),
                peer: CLIENT_IP.into()
            },
            "only the local endpoint, and the client's own address"
        );
    }
    // No local endpoint: dropped.
    bed.sync(&yaml(&[("10.244.1.13", "node-b", true)]), variant)
        .unwrap();
    assert_eq!(
        bed.tcp("client", &format!("{NODE_IP}:30080")),
        Reply::Timeout
    );
}

fn client_ip_affinity_sticks(variant: &str) {
    let Some(bed) = bed("affinity") else { return };
    let yaml = ServiceSpec {
        name: "web",
        cluster_ip: SVC_IP,
        extra_spec: "  sessionAffinity: ClientIP\n",
        status: "",
        endpoints: &all_ready(),
    }
    .yaml();
    bed.sync(&yaml, variant).unwrap();
    let c = counts(&bed.tcp_many("client", &format!("{SVC_IP}:80"), 30));
    assert_eq!(c.len(), 1, "every connection on one endpoint: {c:?}");
    assert!(c.keys().all(|k| k.starts_with("pod-")));
}

fn no_endpoints_is_refused_at_once(variant: &str) {
    let Some(bed) = bed("noendpoints") else {
        return;
    };
    bed.sync(&cluster_ip(&[]), variant).unwrap();
    assert_eq!(bed.tcp("pod-a", &format!("{SVC_IP}:80")), Reply::Refused);
    assert_eq!(bed.tcp("node", &format!("{SVC_IP}:80")), Reply::Refused);
    assert_eq!(bed.tcp("client", &format!("{SVC_IP}:80")), Reply::Refused);
}

fn hairpin_to_own_service(variant: &str) {
    let Some(bed) = bed("hairpin") else { return };
    bed.sync(&cluster_ip(&[("10.244.1.11", "node-a", true)]), variant)
        .unwrap();
    // pod-a is the only endpoint: it reaches itself through the service (masqueraded).
    let r = bed.tcp("pod-a", &format!("{SVC_IP}:80"));
    match r {
        Reply::Answer { pod, peer } => {
            assert_eq!(pod, "pod-a");
            assert_ne!(peer, "10.244.1.11", "hairpin traffic is masqueraded");
        }
        other => panic!("hairpin failed: {other:?}"),
    }
}

fn removed_endpoint_gets_no_new_connections(variant: &str) {
    let Some(bed) = bed("removed") else { return };
    bed.sync(&cluster_ip(&all_ready()), variant).unwrap();
    bed.sync(
        &cluster_ip(&[
            ("10.244.1.11", "node-a", true),
            ("10.244.1.13", "node-b", true),
        ]),
        variant,
    )
    .unwrap();
    let c = counts(&bed.tcp_many("client", &format!("{SVC_IP}:80"), 40));
    assert!(!c.contains_key("pod-b"), "{c:?}");
    assert_eq!(c.len(), 2, "{c:?}");
}

fn udp_endpoint_replaced_moves_the_same_socket(variant: &str) {
    let Some(bed) = bed("udpmove") else { return };
    bed.sync(&cluster_ip(&[("10.244.1.11", "node-a", true)]), variant)
        .unwrap();
    let udp = bed.udp_client("client");
    let to = format!("{SVC_IP}:53");
    assert_eq!(udp.ask(&to).pod(), Some("pod-a"));
    assert_eq!(udp.ask(&to).pod(), Some("pod-a"));
    bed.sync(&cluster_ip(&[("10.244.1.12", "node-a", true)]), variant)
        .unwrap();
    // Same client socket, so the same conntrack tuple: only a conntrack cleanup moves it.
    assert_eq!(udp.ask(&to).pod(), Some("pod-b"));
}

fn restart_drops_no_connection(variant: &str) {
    let Some(bed) = bed("restart") else { return };
    let yaml = cluster_ip(&all_ready());
    bed.sync(&yaml, variant).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let client_ns = bed.ns("client").name.clone();
    let to: std::net::SocketAddr = format!("{SVC_IP}:80").parse().unwrap();
    let stopper = stop.clone();
    let loop_thread = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{client_ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let (mut ok, mut failed) = (0usize, Vec::new());
        while !stopper.load(Ordering::SeqCst) {
            match std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)) {
                Ok(mut s) => {
                    let mut text = String::new();
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                    match std::io::Read::read_to_string(&mut s, &mut text) {
                        Ok(_) if text.starts_with("pod-") => ok += 1,
                        other => failed.push(format!("{other:?} {text:?}")),
                    }
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    // Restart kproxy from scratch several times: each run is a fresh process and a full sync.
    for _ in 0..5 {
        bed.sync(&yaml, variant).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = loop_thread.join().unwrap();
    assert!(ok > 20, "only {ok} connections made");
    assert!(
        failed.is_empty(),
        "{} failed connections: {failed:?}",
        failed.len()
    );
}

fn cleanup_removes_only_ours(variant: &str) {
    let Some(bed) = bed("cleanup") else { return };
    let iptables = format!("iptables-{variant}");
    bed.node
        .exec(&[&iptables, "-t", "nat", "-N", "DOCKER"])
        .unwrap();
    bed.node
        .exec(&[&iptables, "-t", "nat", "-A", "PREROUTING", "-j", "DOCKER"])
        .unwrap();
    bed.node
        .exec(&[&iptables, "-t", "filter", "-N", "CNI-FORWARD"])
        .unwrap();
    bed.sync(&cluster_ip(&all_ready()), variant).unwrap();
    assert!(bed.saved(variant).contains("KUBE-SVC-"));
    bed.kproxy(&["--cleanup"]).unwrap();
    let saved = bed.saved(variant);
    assert!(!saved.contains("KUBE-"), "kproxy's chains remain:\n{saved}");
    assert!(
        saved.contains(":DOCKER") && saved.contains("-A PREROUTING -j DOCKER"),
        "{saved}"
    );
    assert!(saved.contains(":CNI-FORWARD"), "{saved}");
    // The service no longer works, since its rules are gone.
    assert_ne!(
        bed.tcp("client", &format!("{SVC_IP}:80")).pod(),
        Some("pod-a")
    );
}

fn one_broken_service_does_not_block_the_others(variant: &str) {
    let Some(bed) = bed("broken") else { return };
    let mut yaml = cluster_ip(&all_ready());
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.99, ports: [{name: http, port: 0}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: bogus-ip, namespace: ns1}\n\
         spec: {clusterIP: 172.30.0.300, ports: [{name: http, port: 80}]}\n",
    );
    let stderr = bed.sync(&yaml, variant).unwrap();
    assert!(stderr.contains("ns1/broken"), "{stderr}");
    assert!(stderr.contains("ns1/bogus-ip"), "{stderr}");
    assert!(bed.tcp("client", &format!("{SVC_IP}:80")).pod().is_some());
}

/// Frontend ownership: `ext` lists `web`'s cluster IP as an externalIP. It is not programmed
/// (warned naming both Services), so `web`'s cluster IP keeps reaching `web`'s endpoint only,
/// and `ext`'s own cluster IP still works.
fn an_external_ip_cannot_take_another_services_cluster_ip(variant: &str) {
    let Some(bed) = bed("ownership") else { return };
    let mut yaml = cluster_ip(&[("10.244.1.11", "node-a", true)]);
    yaml.push_str(
        &ServiceSpec {
            name: "ext",
            cluster_ip: "172.30.0.20",
            extra_spec: &format!("  externalIPs: [{SVC_IP}]\n"),
            status: "",
            endpoints: &[("10.244.1.12", "node-a", true)],
        }
        .yaml(),
    );
    let stderr = bed.sync(&yaml, variant).unwrap();
    assert!(
        stderr.contains(
            "Service ns1/ext: externalIP 172.30.0.10 is the cluster IP of Service ns1/web"
        ),
        "{stderr}"
    );
    let replies = bed.tcp_many("client", &format!("{SVC_IP}:80"), 10);
    assert!(
        replies.iter().all(|r| r.pod() == Some("pod-a")),
        "{replies:?}"
    );
    assert_eq!(bed.tcp("client", "172.30.0.20:80").pod(), Some("pod-b"));
}

fn node_port_on_localhost(variant: &str) {
    let Some(bed) = bed("localhost") else { return };
    let yaml = node_port_service(&all_ready());
    bed.sync(&yaml, variant).unwrap();
    // kproxy turned route_localnet on (in the node's namespace) and installed the guard.
    let localnet = bed
        .node
        .output(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"])
        .unwrap();
    assert_eq!(localnet.trim(), "1");
    assert!(bed
        .saved(variant)
        .contains("block incoming localnet connections"));
    let r = bed.tcp("node", "127.0.0.1:30080");
    assert!(r.pod().is_some(), "{r:?}");
}

#[test]
fn auto_variant_joins_the_one_that_holds_rules() {
    let Some(bed) = bed("autovariant") else {
        return;
    };
    // Another component already uses iptables-legacy on this node.
    bed.node.exec(&["iptables-legacy", "-N", "OTHER"]).unwrap();
    bed.node
        .exec(&["iptables-legacy", "-A", "INPUT", "-j", "OTHER"])
        .unwrap();
    bed.sync(&cluster_ip(&all_ready()), "auto").unwrap();
    assert!(
        bed.saved("legacy").contains("KUBE-SERVICES"),
        "rules went to legacy"
    );
    assert!(
        !bed.saved("nft").contains("KUBE-SERVICES"),
        "and not to nft"
    );
    assert!(bed.tcp("client", &format!("{SVC_IP}:80")).pod().is_some());
}

#[test]
fn auto_variant_defaults_to_nft() {
    let Some(bed) = bed("autonft") else { return };
    bed.sync(&cluster_ip(&all_ready()), "auto").unwrap();
    assert!(bed.saved("nft").contains("KUBE-SERVICES"));
}

fn ipv6_with_ip6tables(variant: &str) {
    let Some(bed) = bed("ipv6") else { return };
    let svc6 = "fd00:30::10";
    let yaml = |endpoints: &[&str]| testbed::dual_stack_web(SVC_IP, svc6, endpoints);
    let a6 = testbed::pod_ip6("10.244.1.11");
    let b6 = testbed::pod_ip6("10.244.1.12");
    bed.sync6(&yaml(&[&a6, &b6]), variant).unwrap();
    let saved = bed
        .node
        .output(&[&format!("ip6tables-{variant}-save")])
        .unwrap();
    assert!(
        saved.contains("KUBE-SERVICES"),
        "rules went to ip6tables:\n{saved}"
    );
    bed.warm_up_ipv6(&[&a6, &b6]);
    let replies = bed.tcp_many("pod-c", &format!("[{svc6}]:80"), 20);
    let c = counts(&replies);
    assert_eq!(c.len(), 2, "{c:?}");
    // From a pod inside the pod network: not masqueraded.
    assert!(
        replies.iter().all(
            |r| matches!(r, Reply::Answer { peer, .. } if *peer == testbed::pod_ip6("10.244.1.13"))
        ),
        "{replies:?}"
    );
    assert!(c.keys().all(|k| k == "pod-a" || k == "pod-b"), "{c:?}");
    let r = bed.tcp("client", &format!("[{}]:30080", testbed::NODE_IP6));
    assert!(r.pod().is_some(), "NodePort over IPv6: {r:?}");
    let udp = bed.udp_client("pod-c");
    assert!(udp.ask(&format!("[{svc6}]:53")).pod().is_some());
    bed.sync6(&yaml(&[]), variant).unwrap();
    assert_eq!(bed.tcp("pod-c", &format!("[{svc6}]:80")), Reply::Refused);
}

/// `detectLocalMode` decides which pod traffic keeps its source on the way to a cluster IP. With a
/// cluster CIDR that does not hold the pods, ClusterCIDR sees pod traffic as off-cluster and
/// masquerades it (the endpoint sees the node's bridge address); BridgeInterface and
/// InterfaceNamePrefix recognise the pods by their interface, NodeCIDR by the Node's pod CIDR, and
/// leave the pod's address alone — until the Node's pod CIDR no longer holds the pods.
fn local_traffic_detection_modes(variant: &str) {
    let Some(bed) = bed("detectlocal") else {
        return;
    };
    let service = cluster_ip(&[("10.244.1.13", "node-b", true)]);
    let node = |pod_cidr: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nspec: {{podCIDRs: [{pod_cidr}]}}\nstatus: {{addresses: [{{type: InternalIP, address: {NODE_IP}}}]}}\n---\n"
        )
    };
    let peer_seen = |manifests: &str, detect: &[&str]| {
        let file = bed.dir.join("detect.yaml");
        std::fs::write(&file, manifests).unwrap();
        let mut args = vec![
            "sync",
            "-f",
            file.to_str().unwrap(),
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.99.0.0/16",
            "--iptables-variant",
            variant,
        ];
        args.extend_from_slice(detect);
        bed.kproxy(&args).unwrap();
        match bed.tcp("pod-a", &format!("{SVC_IP}:80")) {
            Reply::Answer { pod, peer } => {
                assert_eq!(pod, "pod-c");
                peer
            }
            other => panic!("{detect:?}: {other:?}"),
        }
    };
    let pod_a = "10.244.1.11";
    let gateway = testbed::POD_GATEWAY;
    assert_eq!(
        peer_seen(&service, &[]),
        gateway,
        "ClusterCIDR: not a pod, masqueraded"
    );
    assert_eq!(
        peer_seen(
            &service,
            &[
                "--detect-local-mode",
                "BridgeInterface",
                "--pod-bridge-interface",
                "kbr0"
            ]
        ),
        pod_a
    );
    assert_eq!(
        peer_seen(
            &service,
            &[
                "--detect-local-mode",
                "InterfaceNamePrefix",
                "--pod-interface-name-prefix",
                "kbr"
            ]
        ),
        pod_a
    );
    let with_node = |cidr| format!("{}{service}", node(cidr));
    assert_eq!(
        peer_seen(
            &with_node("10.244.1.0/24"),
            &["--detect-local-mode", "NodeCIDR"]
        ),
        pod_a
    );
    assert_eq!(
        peer_seen(
            &with_node("10.55.0.0/24"),
            &["--detect-local-mode", "NodeCIDR"]
        ),
        gateway,
        "the Node's pod CIDR does not hold the pod: masqueraded"
    );
}

/// `--nodeport-addresses` is matched against the node's real interface addresses (no `--node-ip`,
/// no Node object here): the node's client-facing address takes NodePort traffic, its pod-facing
/// bridge address does not.
fn node_port_addresses_from_interfaces(variant: &str) {
    let Some(bed) = bed("npaddrs") else { return };
    let yaml = node_port_service(&all_ready());
    let file = bed.dir.join("np.yaml");
    std::fs::write(&file, yaml).unwrap();
    bed.kproxy(&[
        "sync",
        "-f",
        file.to_str().unwrap(),
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--nodeport-addresses",
        "192.168.56.0/24",
        "--iptables-variant",
        variant,
    ])
    .unwrap();
    let saved = bed.saved(variant);
    let jumps: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.ends_with("-j KUBE-NODEPORTS"))
        .collect();
    assert_eq!(jumps.len(), 1, "one NodePort address:\n{saved}");
    assert!(
        jumps[0].contains(&format!("-d {NODE_IP}/32 ")),
        "the interface address was selected: {jumps:?}"
    );
    assert!(
        bed.tcp("client", &format!("{NODE_IP}:30080"))
            .pod()
            .is_some(),
        "NodePort on the selected address"
    );
    let gateway = format!("{}:30080", testbed::POD_GATEWAY);
    assert!(
        bed.tcp("pod-a", &gateway).pod().is_none(),
        "no NodePort on an address outside nodePortAddresses"
    );
}

/// A full sync (with iptables-nft it starts with a chainless `-S` to load fast) leaves other
/// owners' nat chains, rules and counters exactly as they were.
fn full_sync_leaves_other_owners_counters(variant: &str) {
    let Some(bed) = bed("othercounters") else {
        return;
    };
    let ipt = format!("iptables-{variant}");
    for args in [
        vec![ipt.as_str(), "-t", "nat", "-N", "OTHER-OWNER"],
        vec![
            ipt.as_str(),
            "-t",
            "nat",
            "-A",
            "OTHER-OWNER",
            "-c",
            "7",
            "700",
            "-j",
            "RETURN",
        ],
        vec![
            ipt.as_str(),
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-c",
            "3",
            "300",
            "-s",
            "198.51.100.0/24",
            "-j",
            "RETURN",
        ],
    ] {
        bed.node.exec(&args).unwrap();
    }
    let counted = |saved: &str| -> Vec<String> {
        saved
            .lines()
            .filter(|l| l.contains("OTHER-OWNER") || l.contains("198.51.100.0/24"))
            .map(str::to_owned)
            .collect()
    };
    let save = || {
        bed.node
            .output(&[&format!("{ipt}-save"), "-c", "-t", "nat"])
            .unwrap()
    };
    let before = counted(&save());
    assert!(
        before.iter().any(|l| l.starts_with("[7:700]")),
        "{before:?}"
    );
    bed.sync(&node_port_service(&all_ready()), variant).unwrap();
    bed.sync(&node_port_service(&all_ready()), variant).unwrap(); // and a second full sync
    assert_eq!(
        counted(&save()),
        before,
        "other owners' rules and counters are untouched"
    );
    assert!(bed
        .tcp("client", &format!("{NODE_IP}:30080"))
        .pod()
        .is_some());
}
