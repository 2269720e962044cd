//! IPVS mode against a real IPVS kernel: this machine's kernel has none, so `ipvs_in_uml` boots
//! Debian's user-mode-linux kernel (see docs/ipvs.md and the `uml-testbed` crate) and runs the
//! `inside_uml_*` tests of this binary inside it, one after another. They skip nothing: outside
//! the UML kernel they refuse to run.
//!
//! Inside, the UML kernel's root namespace plays the node; pods are network namespaces on a
//! bridge.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use backend_ipvs::client::ListedService;
use backend_ipvs::{IpvsClient, IpvsOp, IpvsOps, IpvsProxier, IpvsSettings, ServerKey, ServiceKey};
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use iptables_tool::{IptablesCmd, Variant};
use kproxy_netlink::ipvs::{RealServer, VirtualService, FWD_MASQ, SVC_F_PERSISTENT};
use proxy_core::datapath::DetectLocalMode;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, Proxier, ProxyState, ServiceFilter,
    ServiceHandler,
};
use uml_testbed::pods::{in_netns, Pods};
use uml_testbed::sh;

const NODE: &str = "node-a";

#[test]
fn ipvs_in_uml() {
    let Some(kernel) = uml_testbed::kernel_or_skip("the IPVS tests") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let out = kernel
        .run_test_binary(&exe, "inside_uml_", |spec| {
            spec.mem_mib = 512;
            spec.timeout = Duration::from_secs(900);
        })
        .expect("the UML kernel ran");
    assert!(
        out.success(),
        "tests inside the UML kernel failed (status {}):\n{}\nconsole:\n{}",
        out.status,
        out.output,
        out.console
    );
    assert!(
        out.output.contains("test result: ok") && !out.output.contains("0 passed"),
        "no test ran inside:\n{}",
        out.output
    );
}

fn require_uml() {
    assert!(
        uml_testbed::inside(),
        "this test needs the IPVS kernel: it runs inside user-mode-linux from `ipvs_in_uml`"
    );
}

/// `ipvsadm` output with every run of blanks made one space, for matching.
fn ipvsadm(args: &str) -> String {
    sh(&format!("ipvsadm {args}"))
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to look at when traffic fails.
fn debug_dump() -> String {
    let run = |c: &str| {
        let o = Command::new("sh").arg("-c").arg(c).output().unwrap();
        format!(
            "$ {c}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    [
        "ipvsadm -Ln --stats",
        "ipvsadm -Lnc",
        "iptables-legacy -t nat -L -v -n",
        "iptables-legacy -t filter -L -v -n",
        "ip addr",
        "ip route",
        "sysctl net.bridge.bridge-nf-call-iptables net.ipv4.vs.conntrack net.ipv4.ip_forward",
        "cat /proc/net/nf_conntrack",
    ]
    .iter()
    .map(|c| run(c))
    .collect::<Vec<_>>()
    .join("\n")
}

fn iptables() -> Box<IptablesCmd> {
    Box::new(IptablesCmd::new(Variant::Legacy, IpFamily::V4))
}

/// Removes whatever an earlier test left.
fn clean() {
    let mut client = IpvsClient::open().unwrap();
    let mut ipset = ipset_tool::IpsetClient::open().unwrap();
    let link = backend_ipvs::link::DummyLink::open("kube-ipvs0").unwrap();
    backend_ipvs::proxier::cleanup_kernel(&mut client, &mut ipset, &mut *iptables(), &link)
        .unwrap();
}

fn svc(addr: &str, protocol: u16, port: u16) -> VirtualService {
    VirtualService {
        address: addr.parse().unwrap(),
        protocol,
        port,
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
    }
}

fn server(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        forward: FWD_MASQ,
    }
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_client_matches_ipvsadm() {
    require_uml();
    clean();
    // Real servers must be routable inside the kernel.
    sh("ip link add srv0 type dummy; ip link set srv0 up; ip addr add 10.244.9.1/24 dev srv0; ip -6 addr add fd00:9::1/64 dev srv0 nodad");
    let mut c = IpvsClient::open().unwrap();
    let tcp = svc("10.96.0.10", 6, 53);
    let mut udp = svc("10.96.0.10", 17, 53);
    udp.flags = SVC_F_PERSISTENT;
    udp.timeout = 10800;
    udp.scheduler = "wrr".into();
    let v6 = svc("fd00::10", 6, 80);
    let ops = vec![
        IpvsOp::AddService(tcp.clone()),
        IpvsOp::AddService(udp.clone()),
        IpvsOp::AddService(v6.clone()),
        IpvsOp::AddServer(ServiceKey::of(&tcp), server("10.244.9.5", 8053, 1)),
        IpvsOp::AddServer(ServiceKey::of(&tcp), server("10.244.9.6", 8053, 1)),
        IpvsOp::AddServer(ServiceKey::of(&udp), server("10.244.9.5", 8053, 1)),
        IpvsOp::AddServer(ServiceKey::of(&v6), server("fd00:9::5", 8080, 1)),
    ];
    let out = c.apply(&ops).unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.applied, 7);
    let listed = ipvsadm("-Ln");
    println!("{listed}");
    for want in [
        "TCP 10.96.0.10:53 rr",
        "-> 10.244.9.5:8053 Masq 1",
        "-> 10.244.9.6:8053 Masq 1",
        "UDP 10.96.0.10:53 wrr persistent 10800",
        "TCP [fd00::10]:80 rr",
        "-> [fd00:9::5]:8080",
    ] {
        assert!(listed.contains(want), "ipvsadm lacks {want:?}:\n{listed}");
    }
    let mut services: Vec<VirtualService> = c
        .list_services()
        .unwrap()
        .into_iter()
        .map(|ListedService { mut service }| {
            service.flags &= !kproxy_netlink::ipvs::SVC_F_HASHED;
            service
        })
        .collect();
    services.sort_by_key(|s| (s.address, s.protocol, s.port));
    assert_eq!(services, vec![tcp.clone(), udp.clone(), v6.clone()]);
    let servers = c.list_servers(&tcp).unwrap();
    assert_eq!(servers.len(), 2);

    // Errors name the service and server; the other operations of the batch still apply.
    let out = c
        .apply(&[
            IpvsOp::AddService(tcp.clone()),
            IpvsOp::UpdateServer(ServiceKey::of(&tcp), server("10.244.9.5", 8053, 0)),
        ])
        .unwrap();
    assert_eq!(out.applied, 1);
    let msg = out.failed[0].to_string();
    assert!(
        msg.contains("adding virtual service TCP 10.96.0.10:53"),
        "{msg}"
    );
    assert!(ipvsadm("-Ln -t 10.96.0.10:53").contains("-> 10.244.9.5:8053 Masq 0"));

    c.apply(&[
        IpvsOp::DeleteServer(ServiceKey::of(&tcp), server("10.244.9.6", 8053, 0)),
        IpvsOp::DeleteService(ServiceKey::of(&udp)),
    ])
    .unwrap();
    let listed = ipvsadm("-Ln");
    assert!(!listed.contains("10.244.9.6"), "{listed}");
    assert!(!listed.contains("UDP"), "{listed}");

    c.set_timeouts(backend_ipvs::Timeouts {
        tcp: 900,
        tcp_fin: 120,
        udp: 300,
    })
    .unwrap();
    assert_eq!(
        c.timeouts().unwrap(),
        backend_ipvs::Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300
        }
    );
    assert!(ipvsadm("-L --timeout").contains("900 120 300"));
    c.flush().unwrap();
    assert!(c.list_services().unwrap().is_empty());
    sh("ip link del srv0");
}

/// A state with `web` (ClusterIP 10.96.0.10:80 → the pods) and `dns` (UDP) on node-a.
struct Cluster {
    pending: PendingChanges,
    state: ProxyState,
}

fn web_slice(pods: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut b = SliceBuilder::new("ns1", "web-1", "web").port("http", 8080, "TCP");
    for p in pods {
        b = b.endpoint(EndpointBuilder::ready(p).node(NODE));
    }
    b.build()
}

impl Cluster {
    fn new(pods: &[&str]) -> Self {
        let mut pending = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
        pending.on_service_add(
            &ServiceBuilder::new("ns1", "web", "10.96.0.10")
                .type_("NodePort")
                .node_port("http", 80, "TCP", 30080)
                .build(),
        );
        pending.on_endpoint_slice_add(&web_slice(pods));
        pending.on_service_add(
            &ServiceBuilder::new("ns1", "dns", "10.96.0.53")
                .port("dns", 53, "UDP")
                .build(),
        );
        pending.on_endpoint_slice_add(
            &SliceBuilder::new("ns1", "dns-1", "dns")
                .port("dns", 5353, "UDP")
                .endpoint(EndpointBuilder::ready(pods[0]).node(NODE))
                .build(),
        );
        let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
        state.apply(&mut pending);
        Self { pending, state }
    }

    fn add(
        &mut self,
        service: &k8s_openapi::api::core::v1::Service,
        slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
    ) -> proxy_core::StateDiff {
        self.pending.on_service_add(service);
        self.pending.on_endpoint_slice_add(slice);
        self.state.apply(&mut self.pending)
    }

    fn set_dns_pod(&mut self, old: &str, new: &str) -> proxy_core::StateDiff {
        let slice = |pod: &str| {
            SliceBuilder::new("ns1", "dns-1", "dns")
                .port("dns", 5353, "UDP")
                .endpoint(EndpointBuilder::ready(pod).node(NODE))
                .build()
        };
        self.pending
            .on_endpoint_slice_update(&slice(old), &slice(new));
        self.state.apply(&mut self.pending)
    }

    fn set_web_pods(&mut self, old: &[&str], new: &[&str]) -> proxy_core::StateDiff {
        self.pending
            .on_endpoint_slice_update(&web_slice(old), &web_slice(new));
        self.state.apply(&mut self.pending)
    }
}

fn proxier() -> IpvsProxier {
    let mut settings = IpvsSettings::new(DetectLocalMode::ClusterCidr(vec!["10.244.0.0/16"
        .parse()
        .unwrap()]));
    settings.drain_check_interval = Duration::from_millis(200);
    IpvsProxier::open(IpFamily::V4, settings, iptables()).unwrap()
}

fn web_key() -> ServiceKey {
    ServiceKey {
        address: "10.96.0.10".parse().unwrap(),
        protocol: 6,
        port: 80,
    }
}

fn servers_of(key: &ServiceKey) -> BTreeMap<ServerKey, u32> {
    let mut c = IpvsClient::open().unwrap();
    let vs = VirtualService {
        address: key.address,
        protocol: key.protocol,
        port: key.port,
        scheduler: String::new(),
        flags: 0,
        timeout: 0,
    };
    c.list_servers(&vs)
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                ServerKey {
                    address: l.server.address,
                    port: l.server.port,
                },
                l.server.weight,
            )
        })
        .collect()
}

/// Connects, reads the pod's name (`podN`) and closes with a reset: IPVS then forgets the
/// connection after its CLOSE timeout (10 s) instead of TIME_WAIT's two minutes, so draining
/// servers are not held up by finished test connections.
fn ask(addr: &str) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut name = [0u8; 4];
    (&s).read_exact(&mut name)?;
    close_with_reset(s);
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Connects to `addr` until a connection reaches `pod` (round robin gets there within a few),
/// and returns it open; the others are closed with a reset.
fn connection_to(addr: &str, pod: &str) -> TcpStream {
    for _ in 0..8 {
        let s = TcpStream::connect(addr).unwrap();
        let mut buf = [0u8; 4];
        (&s).read_exact(&mut buf).unwrap();
        if buf == pod.as_bytes() {
            return s;
        }
        close_with_reset(s);
    }
    panic!("no connection to {addr} reached {pod}");
}

fn close_with_reset(s: TcpStream) {
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_sync_one_change_and_graceful_termination() {
    require_uml();
    clean();
    let pods = Pods::start(&[2, 3, 4]);
    let mut cluster = Cluster::new(&["10.244.1.2", "10.244.1.3"]);
    let mut p = proxier();
    let diff = cluster.state.resync_diff();
    let report = p.sync(&cluster.state, &diff).unwrap();
    assert!(report.full);
    // Upstream's sysctls; conn_reuse_mode is left at the kernel's 1 on 6.1 (the 1-second SYN
    // delay on reused source ports was fixed in 5.9, kubernetes/kubernetes#93297).
    for (name, want) in [
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/vs/conn_reuse_mode", "1"),
    ] {
        let have = std::fs::read_to_string(format!("/proc/sys/{name}")).unwrap();
        assert_eq!(have.trim(), want, "{name}");
    }
    let listed = ipvsadm("-Ln");
    println!("{listed}");
    assert!(listed.contains("TCP 10.96.0.10:80 rr"), "{listed}");
    assert!(listed.contains("UDP 10.96.0.53:53 rr"), "{listed}");
    assert!(
        listed.contains(":30080 rr"),
        "node port on the node's addresses:\n{listed}"
    );
    let addrs = sh("ip -4 addr show dev kube-ipvs0");
    assert!(
        addrs.contains("10.96.0.10/32") && addrs.contains("10.96.0.53/32"),
        "{addrs}"
    );
    let sets = sh("ipset list KUBE-CLUSTER-IP");
    assert!(
        sets.contains("10.96.0.10,tcp:80") && sets.contains("10.96.0.53,udp:53"),
        "{sets}"
    );
    assert!(sh("ipset list KUBE-NODE-PORT-TCP").contains("30080"));
    assert!(sh("iptables-legacy -t nat -S KUBE-SERVICES")
        .contains("--match-set KUBE-CLUSTER-IP dst,dst"));
    assert!(sh("iptables-legacy -t nat -S PREROUTING").contains("-j KUBE-SERVICES"));

    // Round robin over both pods, from the node.
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        *seen.entry(ask("10.96.0.10:80").unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("pod2".into(), 5), ("pod3".into(), 5)])
    );

    // One endpoint added: one message per virtual service of `web` (cluster IP and node ports).
    let web_vs = sh("ipvsadm -Ln | grep -c -E ':(80|30080) rr'")
        .trim()
        .parse::<u64>()
        .unwrap();
    let before = p.ipvs_messages_sent();
    let diff = cluster.set_web_pods(
        &["10.244.1.2", "10.244.1.3"],
        &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
    );
    let report = p.sync(&cluster.state, &diff).unwrap();
    assert!(!report.full);
    let sent = p.ipvs_messages_sent() - before;
    println!("one added endpoint: {sent} IPVS messages for {web_vs} virtual services");
    assert_eq!(
        sent, web_vs,
        "one AddServer per virtual service of the Service, nothing else"
    );
    assert_eq!(servers_of(&web_key()).len(), 3);

    // A long-lived connection to pod4 keeps it draining: weight 0, still there.
    let held = connection_to("10.96.0.10:80", "pod4");
    let before = p.ipvs_messages_sent();
    let diff = cluster.set_web_pods(
        &["10.244.1.2", "10.244.1.3", "10.244.1.4"],
        &["10.244.1.2", "10.244.1.3"],
    );
    p.sync(&cluster.state, &diff).unwrap();
    println!(
        "one removed endpoint: {} IPVS messages",
        p.ipvs_messages_sent() - before
    );
    let pod4 = ServerKey {
        address: "10.244.1.4".parse().unwrap(),
        port: 8080,
    };
    assert_eq!(
        servers_of(&web_key()).get(&pod4),
        Some(&0),
        "weight 0 while connected"
    );
    assert!(p.is_terminating(&web_key(), &pod4));
    for _ in 0..6 {
        assert_ne!(
            ask("10.96.0.10:80").unwrap(),
            "pod4",
            "no new connection to a weight-0 server"
        );
    }
    p.housekeeping().unwrap();
    assert_eq!(
        servers_of(&web_key()).get(&pod4),
        Some(&0),
        "still draining"
    );
    // Closed with a reset, the connection leaves IPVS's table after its CLOSE timeout (10 s;
    // a FIN would leave it in TIME_WAIT for two minutes).
    close_with_reset(held);
    let mut gone = false;
    let waited = std::time::Instant::now();
    for _ in 0..300 {
        p.housekeeping().unwrap();
        if !servers_of(&web_key()).contains_key(&pod4) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        gone,
        "the drained server was deleted: {:?}",
        servers_of(&web_key())
    );
    assert!(!p.is_terminating(&web_key(), &pod4));
    println!(
        "drained and deleted {:?} after the connection closed",
        waited.elapsed()
    );

    // A restart adopts a weight-0 server left behind instead of deleting it or leaving it
    // (kubernetes/kubernetes#57841). The previous run had started draining pod4, which still
    // carries a connection; a second leftover (pod3's port 9090) has none.
    drop(p);
    let mut c = IpvsClient::open().unwrap();
    let web = VirtualService {
        address: "10.96.0.10".parse().unwrap(),
        protocol: 6,
        port: 80,
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
    };
    c.apply(&[
        IpvsOp::AddServer(ServiceKey::of(&web), server("10.244.1.4", 8080, 1)),
        IpvsOp::AddServer(ServiceKey::of(&web), server("10.244.1.3", 9090, 0)),
    ])
    .unwrap();
    let held = connection_to("10.96.0.10:80", "pod4");
    c.apply(&[IpvsOp::UpdateServer(
        ServiceKey::of(&web),
        server("10.244.1.4", 8080, 0),
    )])
    .unwrap();
    let mut p2 = proxier();
    let diff = cluster.state.resync_diff();
    p2.sync(&cluster.state, &diff).unwrap();
    let after_restart = servers_of(&web_key());
    let leftover = ServerKey {
        address: "10.244.1.3".parse().unwrap(),
        port: 9090,
    };
    assert!(
        !after_restart.contains_key(&leftover),
        "a leftover weight-0 server without connections goes at the first sync: {after_restart:?}"
    );
    assert_eq!(
        after_restart.get(&pod4),
        Some(&0),
        "a leftover with a connection stays, at weight 0"
    );
    assert!(p2.is_terminating(&web_key(), &pod4), "and is drained");
    close_with_reset(held);
    let mut gone = false;
    for _ in 0..120 {
        p2.housekeeping().unwrap();
        if !servers_of(&web_key()).contains_key(&pod4) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(gone, "the adopted server is deleted once drained");
    drop(pods);
    p2.cleanup().unwrap();
    assert!(IpvsClient::open()
        .unwrap()
        .list_services()
        .unwrap()
        .is_empty());
    assert!(!sh("ip link").contains("kube-ipvs0"));
    assert!(!sh("iptables-legacy-save").contains("KUBE-"));
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_hairpin_and_host_ports_on_service_addresses() {
    require_uml();
    clean();
    let _pods = Pods::start(&[2, 3]);
    let mut cluster = Cluster::new(&["10.244.1.2", "10.244.1.3"]);
    let mut p = proxier();
    let diff = cluster.state.resync_diff();
    p.sync(&cluster.state, &diff).unwrap();
    // A pod reaches the Service, itself included (masqueraded through KUBE-LOOP-BACK).
    let answers = in_netns("pod2", || {
        (0..6)
            .map(|_| ask("10.96.0.10:80").map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    if answers.iter().any(|a| a.is_err()) {
        println!("{}", debug_dump());
    }
    let answers: Vec<String> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert!(answers.iter().any(|a| a == "pod2"), "hairpin: {answers:?}");
    assert!(answers.iter().any(|a| a == "pod3"), "{answers:?}");
    assert!(sh("ipset list KUBE-LOOP-BACK").contains("10.244.1.2,tcp:8080,10.244.1.2"));
    // A host port is not reachable on a service address (kubernetes/kubernetes#72236).
    let host = TcpListener::bind("0.0.0.0:9999").unwrap();
    let from_pod = in_netns("pod3", || {
        TcpStream::connect_timeout(&"10.96.0.10:9999".parse().unwrap(), Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(
        from_pod,
        Err(std::io::ErrorKind::ConnectionRefused),
        "REJECTed by KUBE-IPVS-FILTER"
    );
    let direct = in_netns("pod3", || TcpStream::connect("10.244.1.1:9999").is_ok());
    assert!(direct, "the host port itself answers on the node's address");
    drop(host);

    // A LoadBalancer IP with externalTrafficPolicy: Local and no endpoint on this node is still
    // reachable from inside the cluster (kubernetes/kubernetes#93456).
    let lb = ServiceBuilder::new("ns1", "lb", "10.96.0.20")
        .type_("LoadBalancer")
        .node_port("http", 80, "TCP", 30090)
        .ingress_ip("203.0.113.50")
        .external_traffic_local()
        .health_check_node_port(32100)
        .build();
    let lb_slice = SliceBuilder::new("ns1", "lb-1", "lb")
        .port("http", 8080, "TCP")
        .endpoint(EndpointBuilder::ready("10.244.1.3").node("node-b"))
        .build();
    let diff = cluster.add(&lb, &lb_slice);
    p.sync(&cluster.state, &diff).unwrap();
    let via_lb = in_netns("pod2", || ask("203.0.113.50:80").map_err(|e| e.to_string()));
    assert_eq!(via_lb.as_deref(), Ok("pod3"), "{}", ipvsadm("-Ln"));
    assert!(sh("ipset list KUBE-LOAD-BALANCER-LOCAL").contains("203.0.113.50,tcp:80"));
    assert!(sh("ipset list KUBE-HEALTH-CHECK-NODE-PORT").contains("32100"));

    // A Service the kernel refuses (a multicast endpoint: "address not unicast") is logged and counted;
    // every other Service keeps working.
    let broken = ServiceBuilder::new("ns1", "broken", "10.96.0.30")
        .port("http", 80, "TCP")
        .build();
    let broken_slice = SliceBuilder::new("ns1", "broken-1", "broken")
        .port("http", 8080, "TCP")
        .endpoint(EndpointBuilder::ready("239.1.2.3").node("node-b"))
        .build();
    let diff = cluster.add(&broken, &broken_slice);
    let report = p.sync(&cluster.state, &diff).unwrap();
    let refused = report
        .owned
        .iter()
        .find(|c| c.kind == "ipvs/refused")
        .map(|c| c.count);
    assert_eq!(refused, Some(1), "{report:?}");
    assert!(ipvsadm("-Ln").contains("TCP 10.96.0.30:80 rr"));
    assert_eq!(
        ask("10.96.0.10:80").map(|a| a.starts_with("pod")).ok(),
        Some(true)
    );
    p.cleanup().unwrap();
}

#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_ipv6_cluster_ip_round_robin() {
    require_uml();
    clean();
    let _pods = Pods::start(&[2, 3]);
    let mut pending = PendingChanges::new(IpFamily::V6, NODE, ServiceFilter::default());
    pending.on_service_add(
        &ServiceBuilder::new("ns1", "web6", "fd00:96::10")
            .port("http", 80, "TCP")
            .build(),
    );
    pending.on_endpoint_slice_add(
        &SliceBuilder::new("ns1", "web6-1", "web6")
            .address_type("IPv6")
            .port("http", 8080, "TCP")
            .endpoint(EndpointBuilder::ready("fd00:244:1::2").node(NODE))
            .endpoint(EndpointBuilder::ready("fd00:244:1::3").node(NODE))
            .build(),
    );
    let mut state = ProxyState::new(IpFamily::V6, NodeInfo::named(NODE));
    state.apply(&mut pending);
    let mut settings = IpvsSettings::new(DetectLocalMode::ClusterCidr(vec!["fd00:244::/32"
        .parse()
        .unwrap()]));
    settings.drain_check_interval = Duration::from_millis(200);
    let mut p = IpvsProxier::open(
        IpFamily::V6,
        settings,
        Box::new(IptablesCmd::new(Variant::Legacy, IpFamily::V6)),
    )
    .unwrap();
    p.sync(&state, &state.resync_diff()).unwrap();
    let listed = ipvsadm("-Ln");
    assert!(listed.contains("TCP [fd00:96::10]:80 rr"), "{listed}");
    assert!(sh("ip -6 addr show dev kube-ipvs0").contains("fd00:96::10/128"));
    assert!(sh("ipset list KUBE-6-CLUSTER-IP").contains("fd00:96::10,tcp:80"));
    assert!(sh("ip6tables-legacy -t nat -S KUBE-SERVICES").contains("KUBE-6-CLUSTER-IP"));
    let mut seen = BTreeMap::new();
    for _ in 0..6 {
        let answer = ask("[fd00:96::10]:80");
        if answer.is_err() {
            println!("{}", debug_dump());
        }
        *seen.entry(answer.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("pod2".into(), 3), ("pod3".into(), 3)])
    );
    p.cleanup().unwrap();
}

/// One of IPVS mode's sets recreated by someone with another type (`hash:ip` for
/// `KUBE-CLUSTER-IP`): the next full sync replaces that one set and syncs everything else,
/// instead of failing at the sets phase every time.
#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_an_ipset_recreated_with_another_type_is_replaced() {
    require_uml();
    clean();
    let _pods = Pods::start(&[2]);
    let cluster = Cluster::new(&["10.244.1.2"]);
    let mut p = proxier();
    p.sync(&cluster.state, &cluster.state.resync_diff())
        .unwrap();
    sh("iptables-legacy -t nat -F && iptables-legacy -t filter -F && ipset destroy KUBE-CLUSTER-IP && \
        ipset create KUBE-CLUSTER-IP hash:ip");
    let report = p.sync(&cluster.state, &cluster.state.resync_diff());
    assert!(
        report.is_ok(),
        "{:?}",
        report.err().map(|e| format!("{e}: {}", e.source))
    );
    let header = sh("ipset list -t KUBE-CLUSTER-IP");
    assert!(header.contains("Type: hash:ip,port"), "{header}");
    let members = sh("ipset list KUBE-CLUSTER-IP");
    assert!(members.contains("10.96.0.10,tcp:80"), "{members}");
    assert_eq!(ask("10.96.0.10:80").unwrap(), "pod2");
    // And the sync after that has nothing to repair.
    p.sync(&cluster.state, &cluster.state.resync_diff())
        .unwrap();
    clean();
}

/// A UDP client that keeps its socket across the removal of its endpoint reaches the new one,
/// through the lifecycle every mode shares: kproxy deletes the conntrack entry that still
/// translates to the old endpoint (counted by `deleted_flows`), not only IPVS's own expiry.
#[test]
#[ignore = "runs inside the UML kernel (ipvs_in_uml)"]
fn inside_uml_a_udp_client_keeping_its_socket_reaches_the_new_endpoint() {
    require_uml();
    clean();
    let _pods = Pods::start(&[2, 3]);
    let mut cluster = Cluster::new(&["10.244.1.2"]);
    let mut p = proxy_core::ManagedProxier::new(Box::new(proxier()), IpFamily::V4)
        .with_conntrack(Box::new(kproxy_netlink::ConntrackCleaner::open().unwrap()));
    p.sync(&cluster.state, &cluster.state.resync_diff())
        .unwrap();
    let client = UdpSocket::bind("0.0.0.0:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let ask_udp = |client: &UdpSocket| -> Option<String> {
        for _ in 0..20 {
            client.send_to(b"who", "10.96.0.53:53").unwrap();
            let mut buf = [0u8; 16];
            if let Ok((n, _)) = client.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    };
    assert_eq!(ask_udp(&client).as_deref(), Some("pod2"));
    let before = p.deleted_flows();
    let diff = cluster.set_dns_pod("10.244.1.2", "10.244.1.3");
    p.sync(&cluster.state, &diff).unwrap();
    assert!(
        p.deleted_flows() > before,
        "the entry translating to the removed endpoint was deleted by kproxy"
    );
    assert_eq!(
        ask_udp(&client).as_deref(),
        Some("pod3"),
        "the same socket moved"
    );
    clean();
}
