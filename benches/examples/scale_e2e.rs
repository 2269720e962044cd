//! The whole path at scale: the control plane loaded with N Services × M endpoints over HTTP, the
//! kproxy daemon (release build) started against it in a node network namespace, and what an
//! operator would measure: time to the first complete sync (the probe answers and the daemon
//! reports its first full sync done), RSS after it and at peak, and how long
//! an endpoint change takes from the API write to a working rule — from the daemon's own
//! `network_programming_duration_seconds` and from a real packet. Needs root.
//!
//! Run: `cargo build --release -p kproxy && cargo run --release -p kproxy-benches --example scale_e2e -- <mode> <variant> <N>... [--endpoints M] [--changes K]`
//! e.g. `-- iptables legacy 5000 10000 20000`. Modes add their rows with the same command;
//! `-- nftables netlink …` runs nftables mode (the variant is only a label there);
//! `-- ipvs legacy …` runs the whole harness inside the user-mode-linux kernel (uml-testbed), as
//! this machine's kernel has no IPVS.
//!
//! ```text
//!  node ns: control plane (127.0.0.1), kproxy   10.99.0.1 ── veth ── 10.99.0.2, 10.99.0.3 pod ns
//! ```
//!
//! A probe Service (172.30.250.1:80) has one endpoint, flipped between the pod's two addresses;
//! the pod answers with the address it was reached on, so a connection from the node shows which
//! rule is in force. The daemon runs with kube-proxy's defaults (minSyncPeriod 1 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const NODE: &str = kproxy_benches::BENCH_NODE;
const NODE_IP: &str = "10.99.0.1";
const POD_IPS: [&str; 2] = ["10.99.0.2", "10.99.0.3"];
const PROBE_IP: &str = "172.30.250.1";

fn sh(args: &[&str]) {
    let ok = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(ok.success(), "{} failed", args.join(" "));
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// The node and pod namespaces, deleted on drop.
struct Namespaces {
    node: String,
    pod: String,
}

impl Namespaces {
    fn new(tag: &str) -> Self {
        let ns = Self {
            node: format!("se{tag}-node"),
            pod: format!("se{tag}-pod"),
        };
        for n in [&ns.node, &ns.pod] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "link", "add", "vpod", "netns", &ns.node, "type", "veth", "peer", "name", "eth0",
            "netns", &ns.pod,
        ]);
        sh(&[
            "ip",
            "-n",
            &ns.node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "vpod",
        ]);
        sh(&["ip", "-n", &ns.node, "link", "set", "vpod", "up"]);
        for ip in POD_IPS {
            sh(&[
                "ip",
                "-n",
                &ns.pod,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
        }
        sh(&["ip", "-n", &ns.pod, "link", "set", "eth0", "up"]);
        sh(&[
            "ip", "-n", &ns.pod, "route", "add", "default", "via", NODE_IP,
        ]);
        // Nodes have a default route: without one, a connection to a cluster IP fails its route
        // lookup before the DNAT rules are reached.
        sh(&[
            "ip", "-n", &ns.node, "route", "add", "default", "dev", "vpod",
        ]);
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The pod's server: answers each connection with the address it was reached on.
fn start_pod_server(pod: &str) {
    let pod = pod.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&pod);
        let l = TcpListener::bind("0.0.0.0:8080").unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let local = s
                .local_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(local.as_bytes());
        }
    });
    rx.recv().unwrap();
}

/// Which pod address answers the probe Service from the node, if any.
fn probe() -> Option<String> {
    let to: SocketAddr = format!("{PROBE_IP}:80").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How many full syncs the daemon has finished (`sync_full_proxy_rules_duration_seconds_count`).
/// The probe answering is not enough for IPVS mode: its first sync programs Services one message
/// at a time, and the probe's may come early.
fn full_syncs(metrics: SocketAddr) -> Option<u64> {
    metric(
        &scrape(metrics)?,
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
    )?
    .parse()
    .ok()
}

/// The daemon's /metrics text.
fn scrape(metrics: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(metrics).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the sample `name` (no labels) in /metrics text.
fn metric<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
}

/// `network_programming_duration_seconds` (sum, count) from the daemon's /metrics.
fn programming(metrics: SocketAddr) -> Option<(f64, u64)> {
    let text = scrape(metrics)?;
    Some((
        metric(&text, "kubeproxy_network_programming_duration_seconds_sum")?
            .parse()
            .ok()?,
        metric(
            &text,
            "kubeproxy_network_programming_duration_seconds_count",
        )?
        .parse()
        .ok()?,
    ))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slice_patch(ip: &str) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {
            "endpoints.kubernetes.io/last-change-trigger-time": proxy_core::rfc3339::format(SystemTime::now()),
        }},
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": NODE}],
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    services: usize,
    load: Duration,
    first_sync: Duration,
    rss_mib: f64,
    peak_mib: f64,
    metric_ms: f64,
    packet_ms: f64,
}

fn run(mode: &str, variant: &str, services: usize, endpoints: usize, changes: usize) -> Row {
    let ns = Namespaces::new(&format!("{}", std::process::id() % 100_000));
    start_pod_server(&ns.pod);
    let (mode, variant, node) = (mode.to_owned(), variant.to_owned(), ns.node.clone());
    // Everything else runs on a thread inside the node namespace: the control plane's sockets, the
    // clients, the probes, and the daemon it starts.
    std::thread::spawn(move || {
        enter(&node);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = Arc::new(control_plane::api::App::new((
                "172.30.0.0".parse().unwrap(),
                1 << 16,
            )));
            tokio::spawn(control_plane::serve_app(listener, app));
            let client = kube::Client::try_from(kube::Config::new(
                format!("http://{addr}").parse().unwrap(),
            ))
            .unwrap();
            let pp = PostParams::default();
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let ns1: Namespace =
                serde_json::from_value(json!({"metadata": {"name": fixtures::SCALE_NAMESPACE}})).unwrap();
            namespaces.create(&pp, &ns1).await.unwrap();
            let nodes: Api<Node> = Api::all(client.clone());
            let node_obj: Node = serde_json::from_value(json!({
                "metadata": {"name": NODE},
                "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
            }))
            .unwrap();
            nodes.create(&pp, &node_obj).await.unwrap();
            let svcs: Api<Service> = Api::namespaced(client.clone(), fixtures::SCALE_NAMESPACE);
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), fixtures::SCALE_NAMESPACE);

            let t = Instant::now();
            let config = fixtures::ScaleConfig::new(services, endpoints);
            for i in 0..services {
                let (svc, slice) = fixtures::generate_one(&config, i);
                svcs.create(&pp, &svc).await.unwrap();
                slices.create(&pp, &slice).await.unwrap();
            }
            let probe_svc: Service = serde_json::from_value(json!({
                "metadata": {"name": "probe", "namespace": fixtures::SCALE_NAMESPACE},
                "spec": {"clusterIP": PROBE_IP, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }))
            .unwrap();
            svcs.create(&pp, &probe_svc).await.unwrap();
            let probe_slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "probe-1", "namespace": fixtures::SCALE_NAMESPACE,
                             "labels": {"kubernetes.io/service-name": "probe"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [POD_IPS[0]], "conditions": {"ready": true}, "nodeName": NODE}],
            }))
            .unwrap();
            slices.create(&pp, &probe_slice).await.unwrap();
            let load = t.elapsed();

            let dir = std::env::temp_dir().join(format!("kproxy-scale-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, control_plane::kubeconfig(addr)).unwrap();
            let bin = std::env::var("KPROXY_BIN").unwrap_or_else(|_| {
                concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/kproxy").to_owned()
            });
            let started = Instant::now();
            // nftables mode speaks netlink: no iptables variant to choose.
            let mut mode_args = vec!["--proxy-mode", mode.as_str()];
            if mode != "nftables" {
                mode_args.extend(["--iptables-variant", variant.as_str()]);
            }
            let daemon = Daemon(
                Command::new(bin)
                    .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
                    .args(["--hostname-override", NODE, "--cluster-cidr", "10.0.0.0/8"])
                    .args(&mode_args)
                    .args(["--metrics-bind-address", "127.0.0.1:10249"])
                    .args(["--healthz-bind-address", "127.0.0.1:10256"])
                    .stdout(Stdio::null())
                    // SCALE_E2E_DAEMON_LOG=<file>: the daemon's log (with RUST_LOG) for a look
                    // at where a slow change spends its time.
                    .stderr(match std::env::var_os("SCALE_E2E_DAEMON_LOG") {
                        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                        None => Stdio::null(),
                    })
                    .spawn()
                    .expect("start kproxy (cargo build --release -p kproxy)"),
            );
            let pid = daemon.0.id();
            let first_sync = tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                let metrics: SocketAddr = "127.0.0.1:10249".parse().unwrap();
                while Instant::now() < deadline {
                    if probe().as_deref() == Some(POD_IPS[0])
                        && full_syncs(metrics).is_some_and(|n| n >= 1)
                    {
                        return started.elapsed();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!("no first sync within 10 minutes");
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let rss_mib = status_kib(pid, "VmRSS:") as f64 / 1024.0;

            let metrics: SocketAddr = "127.0.0.1:10249".parse().unwrap();
            let mut metric_ms = Vec::new();
            let mut packet_ms = Vec::new();
            for k in 0..changes {
                let to = POD_IPS[(k + 1) % 2];
                let before = tokio::task::spawn_blocking(move || programming(metrics))
                    .await
                    .unwrap()
                    .unwrap_or((0.0, 0));
                slices
                    .patch("probe-1", &PatchParams::default(), &Patch::Merge(slice_patch(to)))
                    .await
                    .unwrap();
                let written = Instant::now();
                let took = tokio::task::spawn_blocking(move || {
                    let deadline = Instant::now() + Duration::from_secs(300);
                    while Instant::now() < deadline {
                        if probe().as_deref() == Some(to) {
                            return written.elapsed();
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    panic!("the endpoint change never reached the rules");
                })
                .await
                .unwrap();
                packet_ms.push(took.as_secs_f64() * 1e3);
                // The daemon records the metric just after the rules are in: wait for it.
                let after = tokio::task::spawn_blocking(move || loop {
                    if let Some(a) = programming(metrics).filter(|a| a.1 > before.1) {
                        return a;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                })
                .await
                .unwrap();
                metric_ms.push((after.0 - before.0) / (after.1 - before.1) as f64 * 1e3);
                // Let the next change wait out minSyncPeriod, as separate changes would.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let peak_mib = status_kib(pid, "VmHWM:") as f64 / 1024.0;
            drop(daemon);
            let _ = std::fs::remove_dir_all(&dir);
            Row {
                services,
                load,
                first_sync,
                rss_mib,
                peak_mib,
                metric_ms: median(metric_ms),
                packet_ms: median(packet_ms),
            }
        })
    })
    .join()
    .expect("run")
}

fn main() {
    // IPVS mode needs a kernel with IPVS: the whole harness (control plane, daemon, pod) then runs
    // inside the user-mode-linux kernel, with the rules through iptables-legacy.
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("ipvs") && !uml_testbed::inside() {
        let kernel = uml_testbed::UmlKernel::find().unwrap_or_else(|why| {
            eprintln!("scale_e2e ipvs needs the UML kernel: {why}");
            std::process::exit(2)
        });
        let mut spec = uml_testbed::RunSpec::new(std::env::current_exe().expect("exe"), all);
        spec.mem_mib = 4096;
        spec.timeout = Duration::from_secs(3 * 3600);
        let out = kernel.run(&spec).expect("UML run");
        print!("{}", out.output);
        std::process::exit(out.status);
    }
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "iptables".into());
    let variant = args.next().unwrap_or_else(|| "legacy".into());
    let mut sizes = Vec::new();
    let (mut endpoints, mut changes) = (10, 5);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--endpoints" => endpoints = args.next().unwrap().parse().unwrap(),
            "--changes" => changes = args.next().unwrap().parse().unwrap(),
            n => sizes.push(n.parse::<usize>().expect("a Service count")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![5_000, 10_000, 20_000];
    }
    println!("| mode | Services × endpoints | load over HTTP | first complete sync | RSS after | RSS peak | write → rule (metric, median) | write → rule (packet, median) |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let r = run(&mode, &variant, n, endpoints, changes);
        println!(
            "| {mode} {variant} | {} × {endpoints} | {:.1} s | {:.1} s | {:.0} MiB | {:.0} MiB | {:.0} ms | {:.0} ms |",
            r.services,
            r.load.as_secs_f64(),
            r.first_sync.as_secs_f64(),
            r.rss_mib,
            r.peak_mib,
            r.metric_ms,
            r.packet_ms,
        );
    }
    println!("({changes} endpoint changes each, 1.5 s apart; kproxy with kube-proxy's defaults)");
}
