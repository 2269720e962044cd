//! userspace mode on the real datapath: the daemon (`--proxy-mode userspace`) in a node namespace,
//! real packets from pods, the node and an outside client, REDIRECTed to kproxy's own listeners.
//! Needs root (CI is root); skips, saying why, elsewhere.

mod testbed;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use testbed::{
    both_variants, counts, http_get, wait_for, Bed, Daemon, Reply, ServiceSpec, NODE_IP,
};

const SVC_IP: &str = "172.30.0.10";
const ECHO_PORT: u16 = 9090;

fn bed(test: &str) -> Option<Bed> {
    Bed::three_pods(test)
}

/// The bed's manifests directory, holding `services.yaml` = `yaml`.
fn manifests(bed: &Bed, yaml: &str) -> PathBuf {
    let dir = bed.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("services.yaml"), yaml).unwrap();
    dir
}

fn rewrite(dir: &Path, yaml: &str) {
    std::fs::write(dir.join("services.yaml"), yaml).unwrap();
}

fn daemon(bed: &Bed, dir: &Path, variant: &str, range: &str) -> Daemon {
    bed.start_daemon(
        dir,
        "10.244.0.0/16",
        Stdio::null(),
        &[
            "--proxy-mode",
            "userspace",
            "--iptables-variant",
            variant,
            "--proxy-port-range",
            range,
            "--udp-timeout",
            "5s",
        ],
    )
}

fn web(name: &str, ip: &str, extra: &str, endpoints: &[(&str, &str, bool)]) -> String {
    ServiceSpec {
        name,
        cluster_ip: ip,
        extra_spec: extra,
        status: "",
        endpoints,
    }
    .yaml()
}

/// The value of the metric line starting with `prefix` (name and labels), from the daemon's
/// /metrics in the node namespace.
fn metric(bed: &Bed, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(&bed.node.name, "127.0.0.1:10249", "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

both_variants!(cluster_ip_node_port_round_robin_reject_and_cleanup);

/// ClusterIP over TCP and UDP from a pod, the node and the client; the node port from the client
/// and from the node; connections spread exactly evenly; without endpoints clients are refused
/// at once; `--cleanup` removes the chains and jumps.
fn cluster_ip_node_port_round_robin_reject_and_cleanup(variant: &str) {
    let Some(bed) = bed("us-basic") else { return };
    let ready = [
        ("10.244.1.11", "node-a", true),
        ("10.244.1.12", "node-a", true),
        ("10.244.1.13", "node-b", true),
    ];
    let dir = manifests(&bed, &web("web", SVC_IP, "  type: NodePort\n", &ready));
    let mut daemon = daemon(&bed, &dir, variant, "40000-40100");
    let node_port = format!("{NODE_IP}:30080");
    let svc = format!("{SVC_IP}:80");
    wait_for("the node port to answer", || {
        bed.tcp("client", &node_port).pod().is_some()
    });

    for who in ["pod-a", "node", "client"] {
        assert!(bed.tcp(who, &svc).pod().is_some(), "TCP from {who}");
    }
    assert!(
        bed.tcp("node", "127.0.0.1:30080").pod().is_some(),
        "node port on localhost"
    );
    for who in ["pod-b", "node"] {
        let udp = bed.udp_client(who);
        let reply = udp.ask(&format!("{SVC_IP}:53"));
        assert!(reply.pod().is_some(), "UDP from {who}: {reply:?}");
        // The session keeps its endpoint.
        assert_eq!(udp.ask(&format!("{SVC_IP}:53")).pod(), reply.pod());
    }

    // One listener, one rotation: 30 connections in a row are exactly 10 per endpoint.
    let c = counts(&bed.tcp_many("client", &svc, 30));
    assert_eq!(
        c,
        BTreeMap::from([
            ("pod-a".to_owned(), 10),
            ("pod-b".to_owned(), 10),
            ("pod-c".to_owned(), 10)
        ]),
        "round-robin"
    );
    let saved = bed.saved(variant);
    assert!(
        saved.contains("-A KUBE-PORTALS-CONTAINER -d 172.30.0.10/32 -p tcp"),
        "{saved}"
    );
    assert!(saved.contains("-j KUBE-NODEPORT-HOST"), "{saved}");

    // No endpoints: REJECT, at once.
    rewrite(&dir, &web("web", SVC_IP, "  type: NodePort\n", &[]));
    wait_for("REJECT without endpoints", || {
        bed.tcp("client", &svc) == Reply::Refused
    });
    assert_eq!(bed.tcp("pod-a", &svc), Reply::Refused);
    assert_eq!(bed.tcp("node", &svc), Reply::Refused);
    assert_eq!(bed.tcp("client", &node_port), Reply::Refused);

    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    bed.kproxy(&["--cleanup"]).expect("cleanup");
    let saved = bed.saved(variant);
    for chain in [
        "KUBE-PORTALS-CONTAINER",
        "KUBE-PORTALS-HOST",
        "KUBE-NODEPORT-CONTAINER",
        "KUBE-NODEPORT-HOST",
        "KUBE-PORTALS-FILTER",
    ] {
        assert!(!saved.contains(chain), "{chain} left: {saved}");
    }
}

/// ClientIP affinity keeps a client on one endpoint; with one endpoint refusing connections (its
/// process gone), every client still succeeds on the other, and the failed attempts are counted.
#[test]
fn affinity_sticks_and_a_dead_endpoint_is_retried() {
    let Some(bed) = bed("us-retry") else { return };
    let two = [
        ("10.244.1.11", "node-a", true),
        ("10.244.1.12", "node-a", true),
    ];
    let yaml = web("sticky", SVC_IP, "  sessionAffinity: ClientIP\n", &two)
        + &web("plain", "172.30.0.11", "", &two);
    let dir = manifests(&bed, &yaml);
    let _daemon = daemon(&bed, &dir, "nft", "40000-40100");
    let sticky = format!("{SVC_IP}:80");
    wait_for("the first sync", || {
        bed.tcp("client", &sticky).pod().is_some()
    });
    let c = counts(&bed.tcp_many("client", &sticky, 20));
    assert_eq!(c.len(), 1, "one endpoint for every connection: {c:?}");

    // pod-a's server is gone: its port refuses.
    bed.ns("pod-a")
        .exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
        .unwrap();
    let c = counts(&bed.tcp_many("client", "172.30.0.11:80", 20));
    assert_eq!(c, BTreeMap::from([("pod-b".to_owned(), 20)]), "retried");
    let failed = metric(
        &bed,
        "kubeproxy_userspace_failed_connects_total{service_port=\"ns1/plain:http\"",
    )
    .expect("failed connects metric");
    assert!(failed >= 1.0, "failed connects counted: {failed}");
    let connections = metric(
        &bed,
        "kubeproxy_userspace_connections_total{service_port=\"ns1/plain:http\"",
    )
    .expect("connections metric");
    assert_eq!(connections, 20.0);
}

/// An endpoint change leaves an established connection working while new connections go to the
/// new endpoint; 1 MiB echoes intact both ways, the client half-closing before reading.
#[test]
fn long_lived_connection_survives_an_endpoint_change_and_a_mebibyte_echoes() {
    let Some(bed) = bed("us-echo") else { return };
    bed.echo_server("pod-a", ECHO_PORT);
    bed.echo_server("pod-b", ECHO_PORT);
    let services = |ip: &str| {
        web("web", SVC_IP, "", &[(ip, "node-a", true)])
            + &web("echo", "172.30.0.12", "", &[(ip, "node-a", true)])
                .replace("targetPort: 8080", &format!("targetPort: {ECHO_PORT}"))
                .replace(
                    &format!("port: {}, protocol: TCP}}", testbed::TCP_PORT),
                    &format!("port: {ECHO_PORT}, protocol: TCP}}"),
                )
    };
    let dir = manifests(&bed, &services("10.244.1.11"));
    let _daemon = daemon(&bed, &dir, "nft", "40000-40100");
    wait_for("the first sync", || {
        bed.tcp("client", &format!("{SVC_IP}:80")).pod() == Some("pod-a")
    });

    let mut long_lived = bed.connect("client", "172.30.0.12:80").expect("connect");
    long_lived
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = |s: &mut std::net::TcpStream, text: &[u8]| {
        s.write_all(text).unwrap();
        let mut back = vec![0; text.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, text);
    };
    echo(&mut long_lived, b"before the change");

    rewrite(&dir, &services("10.244.1.12"));
    wait_for("new connections on pod-b", || {
        bed.tcp("client", &format!("{SVC_IP}:80")).pod() == Some("pod-b")
    });
    echo(&mut long_lived, b"after the change, still on pod-a");

    // 1 MiB (and a bit) through the proxy to pod-b's echo, from a pod.
    let data: Vec<u8> = (0..(1u32 << 20) + 4099)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = bed.connect("pod-c", "172.30.0.12:80").expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let expected = data.len();
    let receiver = std::thread::spawn(move || {
        let mut back = Vec::with_capacity(expected);
        reader.read_to_end(&mut back).map(|_| back)
    });
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let back = receiver.join().unwrap().expect("read the echo");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
    // Bytes are counted just after each splice returns: the last chunk's count may land a moment
    // after the client has read it.
    wait_for("the bytes in the metric", || {
        metric(
            &bed,
            "kubeproxy_userspace_bytes_total{service_port=\"ns1/echo:http\",protocol=\"tcp\",endpoints=\"cluster\",direction=\"to_client\"}",
        )
        .is_some_and(|to_client| to_client >= data.len() as f64)
    });
}

/// A Service port whose listener cannot be bound (the range's only free TCP port is taken) is
/// refused with a metric, while the other Service ports are proxied; once the port is free, the
/// next sync gives it its listener.
#[test]
fn a_port_that_cannot_bind_fails_that_service_port_alone() {
    let Some(bed) = bed("us-taken") else { return };
    // Something else on the node holds TCP 40000.
    let held = {
        let ns = bed.node.name.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("0.0.0.0:40000").unwrap()
        })
        .join()
        .unwrap()
    };
    let one = [("10.244.1.11", "node-a", true)];
    let yaml =
        |extra: &str| web("a", "172.30.0.21", "", &one) + &web("b", "172.30.0.22", extra, &one);
    let dir = manifests(&bed, &yaml(""));
    let _daemon = daemon(&bed, &dir, "nft", "40000-40001");
    // ns1/a:http takes 40001; ns1/b:http finds no free TCP port. UDP ports are another space.
    wait_for("ns1/a to answer", || {
        bed.tcp("client", "172.30.0.21:80").pod().is_some()
    });
    assert_eq!(bed.tcp("client", "172.30.0.22:80"), Reply::Refused);
    assert!(
        bed.udp_client("client")
            .ask("172.30.0.22:53")
            .pod()
            .is_some(),
        "ns1/b's UDP port is proxied"
    );
    let failures = metric(
        &bed,
        "kubeproxy_userspace_listener_failures_total{service_port=\"ns1/b:http\"",
    )
    .expect("listener failure metric");
    assert!(failures >= 1.0);

    // The port is released; the next sync (any change) opens the listener.
    drop(held);
    rewrite(&dir, &yaml("  sessionAffinity: None\n"));
    wait_for("ns1/b to answer", || {
        bed.tcp("client", "172.30.0.22:80").pod().is_some()
    });
}

/// IPv6 through ip6tables: the daemon runs a proxier per family (dual-stack cluster CIDRs), the
/// IPv6 one REDIRECTs the IPv6 cluster IP and node port to listeners on `::`.
#[test]
fn ipv6_cluster_ip_node_port_and_udp() {
    let Some(bed) = bed("us-ipv6") else { return };
    let svc6 = "fd00:30::10";
    let a6 = testbed::pod_ip6("10.244.1.11");
    let b6 = testbed::pod_ip6("10.244.1.12");
    let dir = manifests(&bed, &testbed::dual_stack_web(SVC_IP, svc6, &[&a6, &b6]));
    bed.warm_up_ipv6(&[&a6, &b6]);
    let _daemon = bed.start_daemon(
        &dir,
        "10.244.0.0/16,fd00:244::/32",
        Stdio::null(),
        &[
            "--proxy-mode",
            "userspace",
            "--iptables-variant",
            "nft",
            "--proxy-port-range",
            "40000-40100",
        ],
    );
    let to = format!("[{svc6}]:80");
    wait_for("the IPv6 cluster IP to answer", || {
        bed.tcp("pod-c", &to).pod().is_some()
    });
    let c = counts(&bed.tcp_many("pod-c", &to, 20));
    assert_eq!(
        c,
        BTreeMap::from([("pod-a".to_owned(), 10), ("pod-b".to_owned(), 10)]),
        "round-robin over IPv6"
    );
    assert!(bed.tcp("node", &to).pod().is_some(), "from the node");
    let r = bed.tcp("client", &format!("[{}]:30080", testbed::NODE_IP6));
    assert!(r.pod().is_some(), "node port over IPv6: {r:?}");
    let udp = bed.udp_client("pod-c");
    assert!(
        udp.ask(&format!("[{svc6}]:53")).pod().is_some(),
        "UDP over IPv6"
    );
    let saved = bed.node.output(&["ip6tables-nft-save"]).unwrap();
    assert!(
        saved.contains("-A KUBE-PORTALS-CONTAINER -d fd00:30::10/128"),
        "{saved}"
    );
}

/// A UDP client that keeps its socket (one conntrack entry): its Service port loses its endpoints,
/// then gets them back on a listener with another proxy port; the same socket is answered again,
/// because the entry REDIRECTing it to the closed port was deleted.
#[test]
fn a_udp_client_keeping_its_socket_follows_a_moved_listener() {
    let Some(bed) = bed("us-udpct") else { return };
    let on = |ip: &str| web("web", SVC_IP, "", &[(ip, "node-a", true)]);
    let dir = manifests(&bed, &on("10.244.1.11"));
    let _daemon = daemon(&bed, &dir, "nft", "40000-40100");
    let svc = format!("{SVC_IP}:80");
    let dns = format!("{SVC_IP}:53");
    wait_for("the first sync", || bed.tcp("client", &svc).pod().is_some());
    let udp = bed.udp_client("pod-c");
    assert_eq!(udp.ask(&dns).pod(), Some("pod-a"));

    rewrite(&dir, &web("web", SVC_IP, "", &[]));
    wait_for("REJECT without endpoints", || {
        bed.tcp("client", &svc) == Reply::Refused
    });
    assert!(udp.ask(&dns).pod().is_none(), "no endpoint answers");

    rewrite(&dir, &on("10.244.1.12"));
    wait_for("pod-b over TCP", || {
        bed.tcp("client", &svc).pod() == Some("pod-b")
    });
    assert_eq!(
        udp.ask(&dns).pod(),
        Some("pod-b"),
        "the same UDP socket reaches the new listener"
    );
}

/// `--nodeport-addresses`: node ports answer on the selected addresses only (here the node's
/// address towards the client), not on the pods' gateway nor on localhost.
#[test]
fn node_ports_answer_only_on_node_port_addresses() {
    let Some(bed) = bed("us-npa") else { return };
    let one = [("10.244.1.11", "node-a", true)];
    let dir = manifests(&bed, &web("web", SVC_IP, "  type: NodePort\n", &one));
    let _daemon = bed.start_daemon(
        &dir,
        "10.244.0.0/16",
        Stdio::null(),
        &[
            "--proxy-mode",
            "userspace",
            "--iptables-variant",
            "nft",
            "--nodeport-addresses",
            "192.168.56.0/24",
        ],
    );
    let node_port = format!("{NODE_IP}:30080");
    wait_for("the node port on the node's address", || {
        bed.tcp("client", &node_port).pod().is_some()
    });
    assert_eq!(bed.tcp("pod-b", &node_port).pod(), Some("pod-a"));
    for (who, to) in [("pod-b", "10.244.1.1:30080"), ("node", "127.0.0.1:30080")] {
        assert!(
            bed.tcp(who, to).pod().is_none(),
            "{to} is not a node port address"
        );
    }
}
