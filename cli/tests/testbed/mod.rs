//! A network test bed in namespaces: a node with a bridge for its pods, pods running small TCP and
//! UDP servers that answer with their own name, and a client outside the cluster.
//!
//! ```text
//!  client ns                node ns (kproxy's rules)                  pod ns (one per pod)
//!  eth0 192.168.56.2 ── veth ── 192.168.56.10   kbr0 10.244.1.1/24 ── veth ── eth0 10.244.1.x
//! ```
//!
//! Every namespace is deleted when the bed is dropped, also when the test panics. Tests need root
//! and iproute2/iptables; without them [`Bed::new`] returns `None` after printing why.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// The node's address towards the client.
pub const NODE_IP: &str = "192.168.56.10";
/// The client's address.
pub const CLIENT_IP: &str = "192.168.56.2";
/// The pods' gateway on the node.
pub const POD_GATEWAY: &str = "10.244.1.1";
/// The node's IPv6 address towards the client.
pub const NODE_IP6: &str = "fd00:56::10";
/// The client's IPv6 address.
pub const CLIENT_IP6: &str = "fd00:56::2";
/// The pods' IPv6 gateway on the node.
pub const POD_GATEWAY6: &str = "fd00:244:1::1";

/// A pod's IPv6 address: `10.244.1.N` → `fd00:244:1::N` (N in decimal digits).
pub fn pod_ip6(ip4: &str) -> String {
    format!(
        "fd00:244:1::{}",
        ip4.rsplit('.').next().expect("dotted quad")
    )
}

/// The node kproxy acts as.
pub const NODE_NAME: &str = "node-a";
/// TCP port every pod serves.
pub const TCP_PORT: u16 = 8080;
/// UDP port every pod serves.
pub const UDP_PORT: u16 = 5353;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why datapath tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !fixtures::running_as_root() {
        return Some("not root".into());
    }
    ["ip", "iptables-nft-restore", "iptables-legacy-restore"]
        .into_iter()
        .find(|tool| !fixtures::command_exists(tool))
        .map(|tool| format!("{tool} not installed"))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self, String> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn output(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Moves the calling thread into the namespace (for threads dedicated to it).
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A pod: a namespace with an address on the node's bridge and servers on TCP and UDP.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip: String,
    pub ns: Netns,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How a connection attempt ended.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Reply {
    /// The server answered `name peer-ip`.
    Answer { pod: String, peer: String },
    /// Connection refused (a REJECT, or nothing listening).
    Refused,
    /// No answer within the timeout (a DROP).
    Timeout,
    /// Anything else.
    Error(String),
}

impl Reply {
    /// The answering pod's name, if any.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Reply::Answer { pod, .. } => Some(pod),
            _ => None,
        }
    }
}

/// The bed: node, client and pods.
#[derive(Debug)]
pub struct Bed {
    pub tag: String,
    pub pods: Vec<Pod>,
    pub client: Netns,
    pub upstream: Netns,
    pub node: Netns,
    pub dir: PathBuf,
}

impl Bed {
    /// Builds a bed with pods `(name, ip)`; `None` (after printing why) where it cannot run.
    pub fn new(test: &str, pods: &[(&str, &str)]) -> Option<Self> {
        if let Some(why) = skip_reason() {
            eprintln!("skipping datapath test {test}: {why}");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("k{}x{n}", std::process::id() % 100_000);
        Some(Self::build(&tag, pods).unwrap_or_else(|e| panic!("building the test bed: {e}")))
    }

    fn build(tag: &str, pods: &[(&str, &str)]) -> Result<Self, String> {
        let node = Netns::create(format!("{tag}-node"))?;
        let client = Netns::create(format!("{tag}-client"))?;
        let upstream = Netns::create(format!("{tag}-up"))?;
        let dir = std::env::temp_dir().join(format!("kproxy-bed-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut bed = Bed {
            tag: tag.to_owned(),
            pods: Vec::new(),
            client,
            upstream,
            node,
            dir,
        };
        let node = &bed.node;
        node.exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        node.exec(&["ip", "link", "add", "kbr0", "type", "bridge"])?;
        node.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{POD_GATEWAY}/24"),
            "dev",
            "kbr0",
        ])?;
        node.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ])?;
        node.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{POD_GATEWAY6}/64"),
            "dev",
            "kbr0",
            "nodad",
        ])?;
        node.exec(&["ip", "link", "set", "kbr0", "up"])?;
        // The client link.
        sh(&[
            "ip",
            "link",
            "add",
            "vcl",
            "netns",
            &bed.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &bed.client.name,
        ])?;
        node.exec(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "vcl"])?;
        node.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{NODE_IP6}/64"),
            "dev",
            "vcl",
            "nodad",
        ])?;
        node.exec(&["ip", "link", "set", "vcl", "up"])?;
        let client = &bed.client;
        client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ])?;
        client.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{CLIENT_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        client.exec(&["ip", "link", "set", "eth0", "up"])?;
        client.exec(&["ip", "route", "add", "default", "via", NODE_IP])?;
        // `onlink`: the prefix route of a just-raised link may not be there yet.
        client.exec(&[
            "ip", "-6", "route", "add", "default", "via", NODE_IP6, "dev", "eth0", "onlink",
        ])?;
        // Nodes have a default route; without one, unanswered service traffic would get "network
        // unreachable" before the filter rules could REJECT or DROP it. It points at an "upstream"
        // namespace that drops what it gets, not back at the client's segment, which would turn
        // forwarding into ICMP redirects.
        sh(&[
            "ip",
            "link",
            "add",
            "uplink",
            "netns",
            &bed.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &bed.upstream.name,
        ])?;
        bed.node
            .exec(&["ip", "addr", "add", "192.168.99.1/24", "dev", "uplink"])?;
        bed.node.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:99::1/64",
            "dev",
            "uplink",
            "nodad",
        ])?;
        bed.node.exec(&["ip", "link", "set", "uplink", "up"])?;
        bed.upstream
            .exec(&["ip", "addr", "add", "192.168.99.2/24", "dev", "eth0"])?;
        bed.upstream.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:99::2/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        bed.upstream.exec(&["ip", "link", "set", "eth0", "up"])?;
        bed.node
            .exec(&["ip", "route", "add", "default", "via", "192.168.99.2"])?;
        bed.node.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:99::2",
            "dev",
            "uplink",
            "onlink",
        ])?;
        for (i, (name, ip)) in pods.iter().enumerate() {
            let pod = bed.add_pod(i, name, ip)?;
            bed.pods.push(pod);
        }
        Ok(bed)
    }

    fn add_pod(&self, i: usize, name: &str, ip: &str) -> Result<Pod, String> {
        let ns = Netns::create(format!("{}-p{i}", self.tag))?;
        let veth = format!("vp{i}");
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "netns",
            &self.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ])?;
        self.node
            .exec(&["ip", "link", "set", &veth, "master", "kbr0", "up"])?;
        // As kubelet's hairpin-veth mode does: a pod reaching itself through a service gets its
        // packets bridged back out of the port they came in on.
        self.node.exec(&[
            "ip",
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        ns.exec(&["ip", "route", "add", "default", "via", POD_GATEWAY])?;
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", pod_ip6(ip)),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            POD_GATEWAY6,
            "dev",
            "eth0",
            "onlink",
        ])?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            tcp_server(&ns, name, stop.clone()),
            udp_server(&ns, name, stop.clone()),
        ];
        Ok(Pod {
            name: name.to_owned(),
            ip: ip.to_owned(),
            ns,
            stop,
            threads,
        })
    }

    /// Like [`Bed::sync`], for the IPv6 family (ip6tables).
    pub fn sync6(&self, yaml: &str, variant: &str) -> Result<String, String> {
        self.sync_family(yaml, variant, true)
    }

    /// Writes `yaml` as the bed's only manifest and applies it with `kproxy sync` in the node
    /// namespace, with the iptables `variant` (`nft` or `legacy`).
    pub fn sync(&self, yaml: &str, variant: &str) -> Result<String, String> {
        self.sync_family(yaml, variant, false)
    }

    /// `kproxy sync` of `yaml` for one IP family: IPv6 adds `--ip-family ipv6`, the IPv6 cluster
    /// CIDR and the node's IPv6 address.
    fn sync_family(&self, yaml: &str, variant: &str, ipv6: bool) -> Result<String, String> {
        let file = self.dir.join(if ipv6 {
            "manifests6.yaml"
        } else {
            "manifests.yaml"
        });
        std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
        let (cluster_cidr, node_ip) = if ipv6 {
            ("10.244.0.0/16,fd00:244::/32", NODE_IP6)
        } else {
            ("10.244.0.0/16", NODE_IP)
        };
        let mut args = vec!["sync", "-f", file.to_str().expect("utf-8 path")];
        if ipv6 {
            args.extend(["--ip-family", "ipv6"]);
        }
        args.extend([
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            cluster_cidr,
            "--node-ip",
            node_ip,
        ]);
        // "nftables" is kproxy's nftables mode; anything else an iptables variant.
        if variant == NFTABLES {
            args.extend(["--proxy-mode", "nftables"]);
        } else {
            args.extend(["--iptables-variant", variant]);
        }
        self.kproxy(&args)
    }

    /// Runs the kproxy binary in the node namespace; returns stderr on success too.
    pub fn kproxy(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                env!("CARGO_BIN_EXE_kproxy"),
            ])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(stderr)
        } else {
            Err(stderr)
        }
    }

    /// The namespace called `who`: `client`, `node`, or a pod's name.
    pub fn ns(&self, who: &str) -> &Netns {
        match who {
            "client" => &self.client,
            "node" => &self.node,
            pod => {
                &self
                    .pods
                    .iter()
                    .find(|p| p.name == pod)
                    .expect("known pod")
                    .ns
            }
        }
    }

    /// One TCP connection from `who` to `to`.
    pub fn tcp(&self, who: &str, to: &str) -> Reply {
        let ns = self.ns(who).name.clone();
        let to: SocketAddr = to.parse().expect("socket address");
        std::thread::spawn(move || {
            Netns { name: ns.clone() }.enter_and_forget();
            tcp_once(to)
        })
        .join()
        .expect("client thread")
    }

    /// `count` TCP connections from `who` to `to`, one after another.
    pub fn tcp_many(&self, who: &str, to: &str, count: usize) -> Vec<Reply> {
        let ns = self.ns(who).name.clone();
        let to: SocketAddr = to.parse().expect("socket address");
        std::thread::spawn(move || {
            Netns { name: ns.clone() }.enter_and_forget();
            (0..count).map(|_| tcp_once(to)).collect()
        })
        .join()
        .expect("client thread")
    }

    /// A UDP socket living in `who`'s namespace, for several datagrams from the same port.
    pub fn udp_client(&self, who: &str) -> UdpClient {
        UdpClient::new(self.ns(who).name.clone())
    }

    /// Lines of `iptables-<variant>-save` in the node namespace (`nft list ruleset` for
    /// nftables mode).
    pub fn saved(&self, variant: &str) -> String {
        if variant == NFTABLES {
            return self
                .node
                .output(&["nft", "list", "ruleset"])
                .expect("nft list ruleset");
        }
        self.node
            .output(&[&format!("iptables-{variant}-save")])
            .expect("iptables-save")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Netns {
    /// Enters without taking ownership (the bed deletes the namespace).
    fn enter_and_forget(self) {
        self.enter();
        std::mem::forget(self);
    }
}

fn tcp_once(to: SocketAddr) -> Reply {
    match TcpStream::connect_timeout(&to, Duration::from_millis(1500)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
            let mut text = String::new();
            match s.read_to_string(&mut text) {
                Ok(_) => parse_answer(&text),
                Err(e) => Reply::Error(e.to_string()),
            }
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reply::Refused,
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Reply::Timeout
        }
        Err(e) => Reply::Error(e.to_string()),
    }
}

fn parse_answer(text: &str) -> Reply {
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(pod), Some(peer)) => Reply::Answer {
            pod: pod.to_owned(),
            peer: peer.to_owned(),
        },
        _ => Reply::Error(format!("unexpected answer {text:?}")),
    }
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket sees IPv4 peers) as IPv4.
fn unmapped(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

fn tcp_server(ns: &Netns, name: &str, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (nsname, name) = (ns.name.clone(), name.to_owned());
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        Netns { name: nsname }.enter_and_forget();
        let listener = TcpListener::bind(("::", TCP_PORT)).expect("bind tcp");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = writeln!(s, "{name} {}", unmapped(peer.ip()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => break,
            }
        }
    });
    ready_rx.recv().expect("tcp server started");
    handle
}

fn udp_server(ns: &Netns, name: &str, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (nsname, name) = (ns.name.clone(), name.to_owned());
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        Netns { name: nsname }.enter_and_forget();
        let socket = UdpSocket::bind(("::", UDP_PORT)).expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name} {}", unmapped(peer.ip())).as_bytes(), peer);
            }
        }
    });
    ready_rx.recv().expect("udp server started");
    handle
}

/// A UDP client socket on its own thread inside a namespace.
pub struct UdpClient {
    requests: mpsc::Sender<SocketAddr>,
    replies: mpsc::Receiver<Reply>,
}

impl UdpClient {
    fn new(ns: String) -> Self {
        let (req_tx, req_rx) = mpsc::channel::<SocketAddr>();
        let (rep_tx, rep_rx) = mpsc::channel();
        std::thread::spawn(move || {
            Netns { name: ns }.enter_and_forget();
            let mut sockets: [Option<UdpSocket>; 2] = [None, None];
            let mut buf = [0u8; 512];
            for to in req_rx {
                let slot = usize::from(to.is_ipv6());
                let socket = sockets[slot].get_or_insert_with(|| {
                    let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
                    let s = UdpSocket::bind(any).expect("bind");
                    s.set_read_timeout(Some(Duration::from_millis(1500)))
                        .expect("timeout");
                    s
                });
                let _ = socket.send_to(b"ping", to);
                let reply = match socket.recv_from(&mut buf) {
                    Ok((n, _)) => parse_answer(&String::from_utf8_lossy(&buf[..n])),
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                    {
                        Reply::Timeout
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reply::Refused,
                    Err(e) => Reply::Error(e.to_string()),
                };
                if rep_tx.send(reply).is_err() {
                    break;
                }
            }
        });
        Self {
            requests: req_tx,
            replies: rep_rx,
        }
    }

    /// Sends one datagram from this client's socket and waits for the answer.
    pub fn ask(&self, to: &str) -> Reply {
        self.requests
            .send(to.parse().expect("address"))
            .expect("udp thread");
        self.replies.recv().expect("udp thread")
    }
}

/// YAML for a Service and its EndpointSlice. `endpoints`: `(ip, node, ready)`.
pub struct ServiceSpec<'a> {
    pub name: &'a str,
    pub cluster_ip: &'a str,
    pub extra_spec: &'a str,
    pub status: &'a str,
    pub endpoints: &'a [(&'a str, &'a str, bool)],
}

impl ServiceSpec<'_> {
    /// The manifests: a Service with `http` (80/TCP → 8080) and `dns` (53/UDP → 5353) ports.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns1}}\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n{extra}  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080{np}}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n{status}---\n",
            name = self.name,
            ip = self.cluster_ip,
            extra = self.extra_spec,
            np = if self.extra_spec.contains("NodePort") || self.extra_spec.contains("LoadBalancer") {
                ", nodePort: 30080"
            } else {
                ""
            },
            status = self.status,
        );
        y.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: ns1\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: {TCP_PORT}, protocol: TCP}}\n- {{name: dns, port: {UDP_PORT}, protocol: UDP}}\nendpoints:\n",
            name = self.name
        ));
        for (ip, node, ready) in self.endpoints {
            y.push_str(&format!(
                "- addresses: [{ip}]\n  nodeName: {node}\n  conditions: {{ready: {ready}}}\n"
            ));
        }
        if self.endpoints.is_empty() {
            y.push_str("[]\n");
            y = y.replace("endpoints:\n[]\n", "endpoints: []\n");
        }
        y.push_str("---\n");
        y
    }
}

/// Path helper for tests that write extra files.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A child process killed (and reaped) when dropped, also when the test panics.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after 90 s (generous: a loaded CI
/// machine is slow, and a condition that holds returns at once).
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// GET `path` on `addr` from inside namespace `ns` with a plain HTTP/1.1 client: `(status,
/// body)`, or `None` when nothing answers (refused, reset, or cut short).
pub fn http_get(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let ns = ns.to_owned();
    let (addr, path) = (addr.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        Netns { name: ns }.enter_and_forget();
        let mut s = TcpStream::connect(&addr).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.get(9..12)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    })
    .join()
    .expect("http client thread")
}

impl Bed {
    /// Starts the kproxy daemon in the node namespace on the manifests in `dir`, acting as
    /// [`NODE_NAME`] with these cluster CIDRs, syncing without a minimum period, with its health
    /// server on 127.0.0.1:10256, plus `extra` flags.
    pub fn start_daemon(
        &self,
        dir: &Path,
        cluster_cidr: &str,
        stderr: std::process::Stdio,
        extra: &[&str],
    ) -> Daemon {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                env!("CARGO_BIN_EXE_kproxy"),
            ])
            .args([
                "--manifests",
                dir.to_str().expect("utf-8 path"),
                "--hostname-override",
                NODE_NAME,
                "--cluster-cidr",
                cluster_cidr,
                "--iptables-min-sync-period",
                "0",
                "--healthz-bind-address",
                "127.0.0.1:10256",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kproxy");
        Daemon(child)
    }

    /// Starts an echo server on `port` in pod `pod`'s namespace: it sends back what it reads as
    /// it reads it, and half-closes its side once the client has (for long-lived connections
    /// and large payloads; the pods' own servers answer once and close).
    pub fn echo_server(&self, pod: &str, port: u16) {
        let ns = self.ns(pod).name.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            Netns { name: ns }.enter_and_forget();
            let listener = TcpListener::bind(("::", port)).expect("bind echo");
            ready_tx.send(()).expect("ready");
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { break };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        ready_rx.recv().expect("echo server started");
    }

    /// A TCP connection from `who`'s namespace to `to` (connected on a thread in that
    /// namespace; the socket keeps its namespace).
    pub fn connect(&self, who: &str, to: &str) -> std::io::Result<TcpStream> {
        let ns = self.ns(who).name.clone();
        let to: SocketAddr = to.parse().expect("socket address");
        std::thread::spawn(move || {
            Netns { name: ns }.enter_and_forget();
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .join()
        .expect("connect thread")
    }
}

/// A dual-stack NodePort Service `web` (cluster IPs `svc4` and `svc6`; `http` 80/TCP → 8080 with
/// node port 30080, `dns` 53/UDP → 5353) and its IPv6 EndpointSlice with `endpoints` on node-a.
pub fn dual_stack_web(svc4: &str, svc6: &str, endpoints: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns1}}\nspec:\n  \
         clusterIP: {svc4}\n  clusterIPs: [{svc4}, \"{svc6}\"]\n  ipFamilies: [IPv4, IPv6]\n  \
         type: NodePort\n  ports:\n  - {{name: http, port: 80, protocol: TCP, nodePort: 30080}}\n  \
         - {{name: dns, port: 53, protocol: UDP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-v6\n  \
         namespace: ns1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv6\n\
         ports:\n- {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}\n\
         endpoints:\n"
    );
    for ip in endpoints {
        y.push_str(&format!("- addresses: [\"{ip}\"]\n  nodeName: node-a\n"));
    }
    if endpoints.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    y
}

impl Bed {
    /// Fresh IPv6 links resolve neighbours slowly at first (DAD of link-local addresses): reaches
    /// each pod address directly from pod-c and from the node once before a test counts replies;
    /// panics if the bed itself cannot.
    pub fn warm_up_ipv6(&self, targets: &[&str]) {
        for target in targets {
            for who in ["pod-c", "node"] {
                let ok = (0..5).any(|_| {
                    self.tcp(who, &format!("[{target}]:{TCP_PORT}"))
                        .pod()
                        .is_some()
                });
                assert!(
                    ok,
                    "{who} cannot reach {target} directly: the test bed is broken"
                );
            }
        }
    }
}

/// How many replies each pod gave (`Timeout`, `Refused`, … counted under their debug text).
pub fn counts(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in replies {
        let key = r.pod().map_or_else(|| format!("{r:?}"), str::to_owned);
        *m.entry(key).or_default() += 1;
    }
    m
}

/// The `variant` that means kproxy's nftables mode in [`Bed::sync`] and [`Bed::saved`].
#[allow(dead_code)]
pub const NFTABLES: &str = "nftables";

/// Declares each named scenario `fn name(variant: &str)` as two tests, `nft::name` and
/// `legacy::name`, one per iptables variant.
#[allow(unused_macros)]
macro_rules! both_variants {
    ($($name:ident),* $(,)?) => {
        mod nft {
            $(#[test] fn $name() { super::$name("nft") })*
        }
        mod legacy {
            $(#[test] fn $name() { super::$name("legacy") })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_variants;

impl Bed {
    /// The usual bed: pods `pod-a` 10.244.1.11, `pod-b` .12 and `pod-c` .13 (tests decide which
    /// are "on this node" through their EndpointSlices' nodeName).
    pub fn three_pods(test: &str) -> Option<Self> {
        Self::new(
            test,
            &[
                ("pod-a", "10.244.1.11"),
                ("pod-b", "10.244.1.12"),
                ("pod-c", "10.244.1.13"),
            ],
        )
    }
}

impl Bed {
    /// Starts the daemon in the node namespace against an API server (`kubeconfig`), acting as
    /// [`NODE_NAME`] with the pods' cluster CIDR, health on 127.0.0.1:10256, metrics on
    /// 127.0.0.1:10249, plus `extra` flags.
    pub fn start_daemon_kube(&self, kubeconfig: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                env!("CARGO_BIN_EXE_kproxy"),
            ])
            .args(["--kubeconfig", kubeconfig.to_str().expect("utf-8 path")])
            .args([
                "--hostname-override",
                NODE_NAME,
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .args(["--healthz-bind-address", "127.0.0.1:10256"])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start kproxy");
        Daemon(child)
    }

    /// The node's rules (`iptables-<variant>-save`) without comments, counters or order: what the
    /// rules are, not when or in which order they were written.
    pub fn rules(&self, variant: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .saved(variant)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.strip_prefix(':') {
                Some(decl) => format!(":{}", decl.split_whitespace().next().unwrap_or_default()),
                None => l.to_owned(),
            })
            .collect();
        lines.sort();
        lines
    }
}

impl Bed {
    /// Serves `app` (the project's control plane) on the node namespace's loopback, at `addr` or a
    /// free port, on a runtime of its own: dropping or shutting down the runtime kills every
    /// connection, and starting again at the same address with the same `app` is an API-server
    /// restart that keeps the objects. Binding is retried for 10 s (the old socket may linger).
    pub fn start_control_plane(
        &self,
        app: Arc<control_plane::api::App>,
        addr: Option<SocketAddr>,
    ) -> (tokio::runtime::Runtime, SocketAddr) {
        let ns = self.node.name.clone();
        std::thread::spawn(move || {
            Netns { name: ns }.enter_and_forget();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let listener = rt.block_on(async {
                let bind = addr.map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
                for _ in 0..100 {
                    if let Ok(l) = tokio::net::TcpListener::bind(&bind).await {
                        return l;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("cannot bind {bind}");
            });
            let addr = listener.local_addr().expect("bound address");
            rt.spawn(control_plane::serve_app(listener, app));
            (rt, addr)
        })
        .join()
        .expect("control plane thread")
    }
}
